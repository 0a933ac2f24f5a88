"""gsil-bench core: the foundation every other package builds on.

Configuration schema and strict loading, the registry, the error base class, the
run-folder layout, atomic file I/O, model loading, generation backends, the
OpenAI-compatible client, the data directory and provenance. Nothing here imports
`trainers`, `tasks`, `reports` or `harness` (tests/test_layers.py checks it).
"""
