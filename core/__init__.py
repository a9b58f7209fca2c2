"""What every layer may import, importing nothing of the project itself: India Standard Time,
the clock of every trading day (`core.ist`)."""
