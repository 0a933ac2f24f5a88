"""gsil-bench trainers."""
