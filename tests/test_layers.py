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


def test_the_check_sees_lazy_and_dynamic_imports(tmp_path):
    """The walker is not fooled by an import inside a function or by importlib."""
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from tasks.api import evaluate\n    import importlib\n"
                   "    importlib.import_module('harness.runner')\n    return evaluate\n")
    assert [(line, m) for line, m in imports_of(src) if _package(m)] == [(4, "tasks.api"), (6, "harness.runner")]


def test_every_layer_is_a_package_with_modules():
    for layer in LAYERS:
        assert (REPO / layer / "__init__.py").is_file(), layer
        assert len(list((REPO / layer).glob("*.py"))) >= 2, layer
