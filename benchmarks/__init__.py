"""Benchmarks (python -m benchmarks.training / benchmarks.generation)."""
