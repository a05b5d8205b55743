"""In-process fake external servers for tests and benchmarks (127.0.0.1 only)."""
