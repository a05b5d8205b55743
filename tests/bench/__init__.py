"""Benchmarks run by bin/bench; they print numbers and are not part of the test suite."""
