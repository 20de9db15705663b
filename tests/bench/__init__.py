"""fleetd's benchmark suite: `make bench` (or `python -m tests.bench --help`). Not part of the test run."""
