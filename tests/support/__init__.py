"""Helpers the tests and benchmarks share (servers that misbehave on purpose, and the like)."""
