"""gsil-bench: one import name for the whole project.

The repository keeps the design card's top-level folders (core/, harness/, trainers/, tasks/,
reports/, benchmarks/); this package maps them under one name, `gsil_bench.core`,
`gsil_bench.trainers`, ... (symbolic links here; real subpackages in a built wheel), so a
user's own folder named `tasks` or `reports` can never shadow ours. It imports nothing itself
(the version is `gsil_bench.harness.__version__`).
"""
