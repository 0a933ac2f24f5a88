"""The one validation pass: every problem of an experiment, found before any work starts.

`load_and_validate(path, overrides)` parses the YAML against the schema (unknown keys,
types, missing keys) and then checks what the registries and the files know: method
labels and losses with their parameters (trainers.checks), the training settings, the
model name (a Hub id must resolve: in the local cache, or on the Hub, asked once with no
retries; `hub_problem`), the data files, the evaluation tasks and their documents (tasks.api).
Every problem is collected and reported together, each with its file:line and key, in one
`ValidationError` (the CLI prints it and exits 2), as torchtune's config validation does.
`output_problem` checks that a command's output folder can be written, before any work.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from gsil_bench.core.config import (
    ExperimentConfig,
    for_method,
    override_problems,
    raise_problems,
    schedule_problems,
    self_play_problems,
)
from gsil_bench.core.datadir import data_dir as resolve_data_dir
from gsil_bench.core.datadir import local_file
from gsil_bench.core.errors import ConfigError, GsilError, Problem
from gsil_bench.core.layout import RESERVED
from gsil_bench.core.loading import parse_experiment
from gsil_bench.core.models import HUB_ID, ModelError, resolve
from gsil_bench.core.registry import did_you_mean
from gsil_bench.core.strict import Located
from gsil_bench.tasks import api as tasks_api
from gsil_bench.tasks.base import TaskError
from gsil_bench.tasks.context import EvalContext
from gsil_bench.trainers.checks import check_method, check_training
from gsil_bench.trainers.data import DATA_FORMATS, DataError, data_file
from gsil_bench.trainers.handbook import HUMANEVAL_FILE

# what a command will do: train (methods, training settings, data), use the model, evaluate (tasks),
# report (the baseline, published rows); `run` does all four, `train` the first two, `eval` the middle two
SCOPES = ("train", "model", "eval", "report")


def _method_problems(cfg: ExperimentConfig) -> list[Problem]:
    out: list[Problem] = []
    if not cfg.methods:
        out.append(Problem("methods", "at least one method is required"))
    seen: set[str] = set()
    for i, m in enumerate(cfg.methods):
        if m.label in RESERVED:
            out.append(Problem(f"methods[{i}]", f"the label {m.label!r} is reserved (run-folder names: "
                                                f"{', '.join(sorted(RESERVED))}); give the method another `name`"))
        if m.label in seen:
            out.append(Problem(f"methods[{i}]", f"duplicate method label {m.label!r}"))
        seen.add(m.label)
        out += check_method(cfg, i, m)
    return out


def _training_problems(cfg: ExperimentConfig) -> list[Problem]:
    """The shared training settings, and each method's own view of them (its explicit overrides)."""
    out = check_training(cfg)
    for m in cfg.methods:
        if m.overrides:
            try:
                view = for_method(cfg, m.label)
            except ConfigError:
                continue  # reported by override_problems
            out += [p for p in check_training(view) if p not in out]
    return out


def _report_problems(cfg: ExperimentConfig, root: Path | None) -> list[Problem]:
    out: list[Problem] = []
    spec = cfg.report.published
    if spec and local_file(spec, root) is None:
        out.append(Problem("report.published", f"{spec!r} not found (absolute, or under the data directory {root})"))
    labels = [m.label for m in cfg.methods]
    if cfg.report.baseline not in [*labels, "base"]:
        out.append(Problem("report.baseline", f"{cfg.report.baseline!r} is not a method label"
                                              f"{did_you_mean(cfg.report.baseline, labels)}; labels: "
                                              f"{', '.join(labels)} (or base)"))
    return out


def _data_problems(cfg: ExperimentConfig, root: Path | None, files: dict[str, str]) -> list[Problem]:
    out: list[Problem] = []
    for key in ("train_data", "preference_data"):
        dcfg = getattr(cfg.shared, key)
        if dcfg is None:
            continue
        try:
            DATA_FORMATS.get(dcfg.format)
        except KeyError as err:
            out.append(Problem(f"shared.{key}.format", err.args[0]))
            continue
        try:
            path = data_file(dcfg, root)
        except (FileNotFoundError, DataError) as err:
            out.append(Problem(f"shared.{key}.path", str(err)))
            continue
        if path is not None:
            files[key] = str(path)
        if dcfg.decontaminate == "humaneval":  # trainers.handbook reads HumanEval from the data directory
            found = root / HUMANEVAL_FILE if root is not None else None
            if found is None or not found.is_file():
                out.append(Problem(f"shared.{key}.decontaminate", f"humaneval needs {HUMANEVAL_FILE} in the data "
                                                                  f"directory ({root or 'none set'})"))
            else:
                files[f"{key}.decontaminate"] = str(found)
    return out


def _task_problems(cfg: ExperimentConfig, root: Path | None, files: dict[str, str]) -> list[Problem]:
    """Task names and settings, then each task's documents load (local files, else the Hub)."""
    ev = cfg.shared.eval
    out = [Problem(f"shared.{p.key}" if p.key else "shared.eval", p.message) for p in tasks_api.task_problems(ev.tasks, ev)]
    if out:
        return out
    ctx = EvalContext(model=cfg.shared.model, cfg=ev, data_dir=root, revision=cfg.shared.model_revision)
    for name in ev.tasks:
        try:
            tasks_api.make_task(name).load(ctx)
        except (KeyError, FileNotFoundError, ValueError, TaskError) as err:
            msg = err.args[0] if isinstance(err, KeyError) else str(err)
            out.append(Problem("shared.eval.tasks", f"{name}: {msg}"))
    files.update({f"eval/{task}/{label}": path for task, fs in ctx.data_files.items() for label, path in fs.items()})
    return out


def hub_problem(name: str, revision: str | None = None) -> str | None:
    """Why the Hub id `name` cannot be loaded (None: it can, or `name` is no Hub id): not in the local
    cache while HF_HUB_OFFLINE is set, or no such repository/revision on the Hub. One request, no
    retries: a model that does not exist is one line before any work, not a storm of retries."""
    if not HUB_ID.match(name) or Path(name).expanduser().exists():
        return None
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json", revision=revision or None), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return (f"model {name!r}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}), and "
                "HF_HUB_OFFLINE is set, so it cannot be downloaded")
    try:
        HfApi().model_info(name, revision=revision or None, timeout=10)
    except GatedRepoError:
        return None  # it exists; loading it needs the user's token (hf auth login), which the load checks
    except RevisionNotFoundError:
        return f"model {name!r}: the Hub has no revision {revision!r} of it (shared.model_revision)"
    except RepositoryNotFoundError:
        return f"model {name!r}: no such model on the Hugging Face Hub (or a private one: hf auth login, $HF_TOKEN)"
    except Exception as err:  # noqa: BLE001 - any network failure: one line, not a traceback
        return (f"model {name!r}: cannot reach the Hugging Face Hub to check it ({type(err).__name__}); "
                "HF_HUB_OFFLINE=1 uses the local cache only")
    return None


def output_problem(folder: str | Path, flag: str = "--output") -> str | None:
    """Why `folder` cannot hold a command's results (None: it can): it is created if needed and
    a probe file is written and removed, so a read-only or misplaced folder fails before any work."""
    path = Path(folder)
    probe = path / f".gsil-write-test-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return f"{flag} {path}: cannot write there ({err.strerror or err})"
    return None


def check_output(folder: str | Path, flag: str = "--output") -> None:
    """output_problem, raised as one line (the CLI exits 2)."""
    problem = output_problem(folder, flag)
    if problem:
        raise GsilError(problem)


def _model_problems(cfg: ExperimentConfig, hub: bool) -> list[Problem]:
    out: list[Problem] = []
    try:
        resolve(cfg.shared.model)
    except ModelError as err:
        return [Problem("shared.model", str(err))]
    if hub:
        problem = hub_problem(cfg.shared.model, cfg.shared.model_revision)
        out += [Problem("shared.model", problem)] if problem else []
    return out


def problems(cfg: ExperimentConfig, *, data_dir: str | None = None, scope: tuple[str, ...] = SCOPES,
             files: dict[str, str] | None = None, hub: bool = False) -> list[Problem]:
    """Every problem the registries and files can find in a schema-valid experiment, for the
    work `scope` names. `files` (if given) receives the data files to hash for provenance.
    `hub`: a Hub model id must resolve (the commands that load the model ask; `hub_problem`)."""
    files = {} if files is None else files
    out = override_problems(cfg) + self_play_problems(cfg) + schedule_problems(cfg)  # the config's own cross-key checks
    if "train" in scope:
        out += _method_problems(cfg) + _training_problems(cfg)
    if "model" in scope:
        out += _model_problems(cfg, hub)
    root = resolve_data_dir(data_dir, cfg.shared.data_dir)
    if "train" in scope:
        out += _data_problems(cfg, root, files)
    if "report" in scope:
        out += _report_problems(cfg, root)
    if "eval" in scope:
        out += _task_problems(cfg, root, files)
    return out


def validate(cfg: ExperimentConfig, loc: Located | None = None, *, data_dir: str | None = None,
             scope: tuple[str, ...] = SCOPES, hub: bool = False) -> dict[str, str]:
    """Raise one ValidationError with every problem; return the data files to hash."""
    files: dict[str, str] = {}
    raise_problems(problems(cfg, data_dir=data_dir, scope=scope, files=files, hub=hub), loc or Located("<config>"))
    return files


def load_and_validate(path: str | Path, overrides: list[str] | None = None, *, data_dir: str | None = None,
                      scope: tuple[str, ...] = SCOPES, hub: bool = True
                      ) -> tuple[ExperimentConfig, Located, dict[str, str]]:
    """Parse and check an experiment in one pass: schema problems and every other problem
    are reported together (a Hub model id included, unless `hub` is false: a dry run).
    Returns (config, where its keys are, data files to hash)."""
    cfg, loc, found = parse_experiment(path, overrides)
    files: dict[str, str] = {}
    if cfg is not None:
        found += problems(cfg, data_dir=data_dir, scope=scope, files=files, hub=hub)
    raise_problems(found, loc, cfg)
    assert cfg is not None
    return cfg, loc, files
