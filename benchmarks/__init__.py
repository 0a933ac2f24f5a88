"""Benchmarks (python -m gsil_bench.benchmarks.training / benchmarks.generation)."""
