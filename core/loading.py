"""Loading an experiment, in one direction: the YAML file (or a packaged config by name) -> the command
line's `KEY=VALUE` overrides -> sweeps expanded into method variants (core.sweeps) -> the schema
(core.config's dataclasses, every problem collected) -> the plugins imported (their losses and tasks
registered for the checks that follow, harness.validate).

`parse_experiment` collects the problems, `load_experiment` raises them; `experiment_from_dict` loads
plain data (a run folder's config.yaml). The schema itself (core.config) and the sweeps (core.sweeps)
import nothing from here.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import traceback
from pathlib import Path
from typing import Any

from gsil_bench.core.config import ExperimentConfig, raise_problems
from gsil_bench.core.errors import ConfigError, Problem
from gsil_bench.core.registry import did_you_mean
from gsil_bench.core.strict import Located, apply_overrides, build_collecting, load_yaml
from gsil_bench.core.sweeps import expand_sweeps


def packaged_configs() -> dict[str, Path]:
    """The configs shipped inside the package (the repository's configs/), by name: smoke, nightly, ..."""
    folder = Path(importlib.import_module("gsil_bench.configs").__path__[0])
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def config_file(name: str | Path) -> Path:
    """An experiment file: a path, or the name of a packaged config (`gsil-bench run smoke`
    works from an installed wheel, with no checkout)."""
    path = Path(name)
    if path.is_file() or path.suffix or len(path.parts) > 1:
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (or name a packaged config: "
                              f"{', '.join(packaged_configs())})")
        return path
    found = packaged_configs()
    if str(name) not in found:
        raise ConfigError(f"{name}: no such file, nor a packaged config{did_you_mean(str(name), list(found))} "
                          f"(packaged: {', '.join(found)})")
    return found[str(name)]


def parse_experiment(path: str | Path, overrides: list[str] | None = None
                     ) -> tuple[ExperimentConfig | None, Located, list[Problem]]:
    """Parse an experiment YAML (plus `key=value` overrides) against the schema, collecting
    every problem: (the config or None when it cannot be built, where its keys are, the
    problems). `path` may name a packaged config (`smoke`). Sweeps (lists of values) are expanded
    into method variants first (core.sweeps; a malformed sweep raises ConfigError at its file:line).
    Plugins are imported so their losses and tasks exist for the checks that follow (harness.validate)."""
    path = config_file(path)
    data, loc = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if overrides:
        loc.mark_overrides(overrides, data)
        data = apply_overrides(data, overrides)
    data, loc = expand_sweeps(data, loc)
    cfg, problems = build_collecting(ExperimentConfig, data, loc)
    if cfg is not None:
        problems += plugin_problems(cfg.plugins, Path(path).resolve().parent)
        cfg = _data_dir_from(cfg, Path(path), loc)
    return cfg, loc, problems


def _data_dir_from(cfg: ExperimentConfig, path: Path, loc: Located) -> ExperimentConfig:
    """A relative `shared.data_dir` means the same from any working folder: the config file's folder
    is its base (the working folder when the command line gave it: `shared.data_dir=...`)."""
    value = cfg.shared.data_dir
    if not value or Path(value).expanduser().is_absolute():
        return cfg
    given = loc.at("shared.data_dir").startswith("command line")
    base = Path.cwd() if given else path.resolve().parent
    return dataclasses.replace(cfg, shared=dataclasses.replace(cfg.shared, data_dir=str(base / Path(value).expanduser())))



def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment YAML against the schema (every schema problem in one error).
    The checks that need the registries (losses, tasks, data, model) are harness.validate's."""
    cfg, loc, problems = parse_experiment(path, overrides)
    raise_problems(problems, loc, cfg)
    assert cfg is not None
    return cfg


def plugin_problems(modules: list[str], config_dir: Path | None = None) -> list[Problem]:
    """Import plugin modules (which register losses, tasks, ...): from the config file's
    folder, the working directory, or anywhere on sys.path; a module that does not import is
    a problem. The two folders are on sys.path only while the plugins import: the process's
    path is left as it was."""
    added = [d for d in dict.fromkeys(str(p) for p in (config_dir, Path.cwd()) if p) if d not in sys.path]
    sys.path.extend(added)
    out = []
    try:
        for i, name in enumerate(modules):
            try:
                importlib.import_module(name)
            except Exception as err:  # noqa: BLE001 - a plugin's own error is the user's to fix: one line
                out.append(Problem(f"plugins[{i}]", f"cannot import {name!r}: {_plugin_error(err)}"))
    finally:
        for d in added:
            if d in sys.path:
                sys.path.remove(d)
    return out


def _plugin_error(err: BaseException) -> str:
    """A plugin's import error as `file:line: what` (a syntax error's own position, else the
    deepest frame of the failure outside the Python library and gsil-bench)."""
    if isinstance(err, SyntaxError) and err.filename:
        return f"{err.filename}:{err.lineno}: {type(err).__name__}: {err.msg}"
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "importlib" not in f.filename]
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    return f"{where}{type(err).__name__}: {err}"


def import_plugins(modules: list[str], config_dir: Path | None = None, loc: Located | None = None) -> None:
    """plugin_problems, raised as one error."""
    raise_problems(plugin_problems(modules, config_dir), loc or Located("plugins"))


def experiment_from_dict(data: dict[str, Any], source: str = "<dict>", overrides: list[str] | None = None) -> ExperimentConfig:
    """Build an experiment from plain data (e.g. a run folder's config.yaml), sweeps expanded, schema-checked;
    `overrides`: the command line's KEY=VALUE already applied to `data` (errors name them)."""
    loc = Located(source)
    loc.mark_overrides(overrides or [])
    data, loc = expand_sweeps(data, loc)
    cfg, problems = build_collecting(ExperimentConfig, data, loc)
    raise_problems(problems, loc, cfg)
    assert cfg is not None
    import_plugins(cfg.plugins)
    return cfg
