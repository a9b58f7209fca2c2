"""tickvault's benchmarks: `python -m bench.run_all` (or `make bench`); results in BENCHMARKS.md.

Speed is shown here, never asserted in tests: the machines are shared and noisy, so every
figure is a median of repeated measurements or a ratio of runs made side by side.
"""
