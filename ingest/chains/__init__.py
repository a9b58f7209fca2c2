"""The option chains the ingest follows: which contracts (window.py, pure) and the feed's
subscriptions kept to them as the underlying moves and expiries pass (follower.py)."""
