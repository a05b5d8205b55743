"""Benchmarks are never part of the test suite: pytest collects nothing under tests/bench/ (run them with
bin/bench NAME or bin/bench all)."""

collect_ignore_glob = ["*.py"]
