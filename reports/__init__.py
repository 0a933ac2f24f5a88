"""gsil-bench reports."""
