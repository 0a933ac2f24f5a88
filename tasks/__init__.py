"""gsil-bench tasks."""
