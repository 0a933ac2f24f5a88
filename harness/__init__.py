"""gsil-bench harness: configuration, models, generation, run store, runner and CLI."""

__version__ = "0.1.0"
