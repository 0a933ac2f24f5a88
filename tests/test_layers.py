"""The import graph runs one way (docs/architecture.md):

    harness   (CLI, runner, validation)             may import everything below
    trainers | tasks | reports                      each: core and itself only, never each other
    core      (config, registry, errors, layout, io, models, generation, ...)   imports no other layer

Checked statically over the source, function-local imports and importlib calls with a
literal name included, so a lazy import cannot hide an upward or sideways edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("core", "trainers", "tasks", "reports", "harness")
ALLOWED = {
    "core": {"core"},
    "trainers": {"core", "trainers"},
    "tasks": {"core", "tasks"},
    "reports": {"core", "reports"},
    "harness": set(LAYERS),
}


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "gsil_bench":
        parts = parts[1:]
    return parts[0] if parts and parts[0] in LAYERS else None


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in a file, wherever it stands."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from gsil_bench import tasks` names a layer in its imported names
            if node.module == "gsil_bench":
                found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: relative import; use the absolute module name")
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def violations() -> list[str]:
    out = []
    for layer in LAYERS:
        for path in sorted((REPO / layer).rglob("*.py")):
            for line, module in imports_of(path):
                target = _package(module)
                if target is not None and target not in ALLOWED[layer]:
                    out.append(f"{path.relative_to(REPO)}:{line}: {layer} imports {module} ({target})")
    return out


def test_imports_run_one_way():
    assert violations() == []


SCANNED = (*LAYERS, "tests", "benchmarks")  # every folder of Python the repository holds


def bare_imports(paths: list[Path]) -> list[str]:
    """Imports of a layer by its bare folder name (`from tasks.base import TASKS`): the package is
    `gsil_bench.<layer>`; run from the repository's root, the bare name loads a second copy of the
    module with registries of its own (a task registered through it is not in `gsil_bench`'s TASKS)."""
    return [f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line}: bare layer import {module!r}"
            f" (write gsil_bench.{module})"
            for path in paths for line, module in imports_of(path) if module.split(".")[0] in LAYERS]


def test_no_bare_layer_import_in_source_tests_or_benchmarks():
    paths = [p for folder in SCANNED for p in sorted((REPO / folder).rglob("*.py"))]
    assert len(paths) > 150
    assert bare_imports(paths) == []


def test_a_bare_layer_import_is_rejected(tmp_path):
    """The rule has teeth: each form of a bare import is found, the package's own form is not."""
    src = tmp_path / "m.py"
    src.write_text("import core.io\nfrom tasks.base import TASKS\nimport importlib\n"
                   "def f():\n    from reports import plots\n    return importlib.import_module('harness.cli')\n"
                   "from gsil_bench.tasks.base import TASKS as OURS\nimport benchmarks.common\n")
    found = bare_imports([src])
    assert [row.split(": ", 1)[1] for row in found] == [
        f"bare layer import {m!r} (write gsil_bench.{m})" for m in ("core.io", "tasks.base", "reports", "harness.cli")]


def test_the_check_sees_lazy_and_dynamic_imports(tmp_path):
    """The walker is not fooled by an import inside a function or by importlib."""
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from tasks.api import evaluate\n    import importlib\n"
                   "    importlib.import_module('harness.runner')\n    return evaluate\n")
    assert [(line, m) for line, m in imports_of(src) if _package(m)] == [(4, "tasks.api"), (6, "harness.runner")]
    src.write_text("from gsil_bench.reports import tables\nfrom gsil_bench import harness\n")
    assert [_package(m) for _, m in imports_of(src) if _package(m)] == ["reports", "harness"]


def test_every_layer_is_a_package_with_modules():
    for layer in LAYERS:
        assert (REPO / layer / "__init__.py").is_file(), layer
        assert len(list((REPO / layer).glob("*.py"))) >= 2, layer


def test_a_users_own_tasks_or_reports_folder_cannot_shadow_ours(tmp_path):
    """Everything is imported as gsil_bench.*: folders named like our layers in the working
    directory (first on sys.path under `python -m`) are never picked up."""
    import subprocess
    import sys

    for name in ("core", "harness", "trainers", "tasks", "reports", "benchmarks"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise SystemExit('shadowed by the user folder {name}')\n")
    proc = subprocess.run([sys.executable, "-m", "gsil_bench.harness.cli", "eval", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "shadowed" not in proc.stdout + proc.stderr and "KEY=VALUE" in proc.stdout


LAZY = ("harness/commands/",)  # the CLI imports a command's work when the command runs (`--help` stays fast)


def local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every first-party import inside a function: a lazy import, or one hiding a circle."""
    tree = ast.parse(path.read_text(), str(path))
    return [(node.lineno, module) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(fn) if isinstance(node, ast.Import | ast.ImportFrom)
            for module in ([node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])
            if module and _package(module)]


def test_no_function_local_first_party_import_outside_the_cli():
    """An import inside a function hid two circles (core.config <-> core.sweeps, reports.plots <->
    reports.anatomy) behind 42 of them; only the CLI's lazy command imports remain."""
    found = [f"{p.relative_to(REPO)}:{line}: {module}" for layer in LAYERS for p in sorted((REPO / layer).rglob("*.py"))
             if not str(p.relative_to(REPO)).startswith(LAZY) for line, module in local_imports(p)]
    assert found == []


def module_graph() -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports, wherever the import stands (the CLI's lazy
    command imports left out: a command module is a leaf nobody imports)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(p for layer in LAYERS for p in (REPO / layer).rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and _package(node.module):
                base = node.module.removeprefix("gsil_bench.")
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix("gsil_bench.") for a in node.names if _package(a.name)}
        graph[name] = set() if str(path.relative_to(REPO)).startswith(LAZY) else found - {name}
    return graph


MODULES = {".".join(p.relative_to(REPO).with_suffix("").parts) for layer in LAYERS for p in (REPO / layer).rglob("*.py")}


def circles(graph: dict[str, set[str]]) -> list[str]:
    """Every import circle a depth-first walk meets, as `a -> b -> a`."""
    state: dict[str, str] = {}
    found: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(" -> ".join([*stack[stack.index(nxt):], node, nxt] if nxt in stack else [node, nxt]))
            elif nxt in graph and nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_no_import_circle():
    """No circle among the package's modules, counting the imports inside functions (they used to hide
    core.config <-> core.sweeps and reports.plots <-> reports.anatomy); the check finds a planted one."""
    graph = module_graph()
    assert len(graph) > 80 and circles(graph) == []
    planted = {**graph, "core.sweeps": graph["core.sweeps"] | {"core.loading"}}
    assert circles(planted) == ["core.loading -> core.sweeps -> core.loading"]
