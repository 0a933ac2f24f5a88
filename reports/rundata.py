"""Read a run folder into plain records for reports, comparisons and the index.

Layout (docs/architecture.md):
    <run>/config.yaml provenance.json plan.json
    <run>/<method>/seed-<s>/iter-<k>/ metrics.jsonl summary.json DONE
    <run>/eval/<method>/seed-<s>/iter-<k>/<task>/ metrics.json samples.jsonl DONE
    <run>/eval/base/iter-0/<task>/ ...      (the starting model, evaluated once)

Only completed evaluations are read: DONE present and every file digest it records
matching. The others are listed in `RunData.untrusted` with the reason (unfinished, a
result file deleted or changed after it was written), so `compare` can name them. A
malformed file raises RunDataError naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from gsil_bench.core.errors import GsilError
from gsil_bench.core.facts import MetricFacts
from gsil_bench.core.io import done_problem, read_json, read_jsonl, read_jsonl_strict
from gsil_bench.core.layout import BASE, RunLayout
from gsil_bench.core.strict import method_label


class RunDataError(GsilError, ValueError):
    """A run folder file that cannot be read; the message names the file."""




def _load_json(path: Path) -> Any:
    try:
        return read_json(path)
    except json.JSONDecodeError as err:
        raise RunDataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None


@dataclass
class EvalResult:
    """One task scored for one model (method, seed, iteration)."""

    method: str
    seed: int | None  # None: the base model, evaluated once for every seed
    iteration: int
    task: str
    folder: Path
    metrics: dict[str, Any]  # the parsed metrics.json

    @property
    def primary(self) -> str:
        return str(self.metrics.get("primary") or next(iter(self.metrics.get("metrics", {})), ""))

    @property
    def reported(self) -> tuple[str, ...]:
        """Metrics the task reports beside the primary (their own table column; `compare` checks
        them too), as the task declared them in metrics.json. Files written before the field
        existed: the held-out tasks' margin, which `compare` checked by the task's name then."""
        if "reported" in self.metrics:
            return tuple(str(m) for m in self.metrics["reported"] or ())
        return ("margin",) if self.task.startswith("heldout_") else ()

    @property
    def shown(self) -> list[str]:
        """The primary, then the reported metrics: the tables' columns and what `compare` checks."""
        return [self.primary] + [m for m in self.reported if m != self.primary]

    def metric(self, name: str | None = None) -> dict[str, Any]:
        name = name or self.primary
        try:
            return dict(self.metrics["metrics"][name])
        except KeyError:
            raise RunDataError(f"{self.folder / 'metrics.json'}: no metric {name!r}") from None

    def facts(self, name: str | None = None) -> MetricFacts:
        """The facts the task declared for metric `name` (default: primary) in metrics.json: label, glossary,
        direction, percent display, exactness, tolerance (core.facts; older files: the undeclared defaults)."""
        m = self.metric(name)
        return MetricFacts.from_json(m.get("facts"), name or self.primary, bool(m.get("higher_is_better", True)))

    @property
    def display(self) -> str:
        """The task's display name, as it declared it in metrics.json (older files: its name)."""
        return str(self.metrics.get("display") or self.task)

    @property
    def higher_is_better(self) -> bool:
        """The primary metric's direction, as its task declared it in metrics.json
        (files written before the field existed: larger is better)."""
        return bool(self.metric().get("higher_is_better", True))

    @property
    def scored(self) -> bool:
        """The primary metric has a value (a judge that parsed no rating leaves it null)."""
        return (self.metrics.get("metrics", {}).get(self.primary) or {}).get("value") is not None

    def item_scores(self, name: str | None = None) -> dict[str, float]:
        """Per-item scores of metric `name` (default: primary) keyed by sample id;
        empty when samples.jsonl lacks that score."""
        name = name or self.primary
        out: dict[str, float] = {}
        path = self.folder / "samples.jsonl"
        try:
            records = read_jsonl_strict(path) if path.is_file() else []
        except ValueError as err:  # written whole and atomically: a bad line means damage, not a crash
            raise RunDataError(str(err)) from None
        for lineno, rec in enumerate(records, 1):
            scores = rec.get("scores") or {}
            if name not in scores or scores[name] is None:
                continue
            if "id" not in rec:
                raise RunDataError(f"{path}:{lineno}: sample has no 'id'")
            out[str(rec["id"])] = float(scores[name])
        return out


@dataclass(frozen=True)
class Untrusted:
    """An evaluation folder that is not read: unfinished, or a result file missing or changed since written."""

    method: str
    seed: int | None
    iteration: int
    task: str
    folder: Path
    reason: str  # names the file (core.io.done_problem)


@dataclass
class TrainIteration:
    """One training iteration of one method and seed."""

    method: str
    seed: int
    iteration: int
    folder: Path
    summary: dict[str, Any]

    def curve(self) -> list[dict[str, Any]]:
        return read_jsonl(self.folder / "metrics.jsonl")


@dataclass
class RunData:
    """Everything a report needs from one run folder."""

    root: Path
    config: dict[str, Any]
    plan: dict[str, Any]
    provenance: dict[str, Any]
    evals: list[EvalResult] = field(default_factory=list)
    train: list[TrainIteration] = field(default_factory=list)
    untrusted: list[Untrusted] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.root.name)

    @property
    def methods(self) -> list[str]:
        """Labels in config order, then any other method found on disk; base first."""
        labels = [method_label(m) for m in self.config.get("methods", [])]
        found = [e.method for e in self.evals] + [t.method for t in self.train]
        extra = sorted({m for m in found if m not in labels and m != BASE})
        out = labels + extra
        return ([BASE] if any(e.method == BASE for e in self.evals) else []) + out

    def loss_of(self, method: str) -> str:
        for m in self.config.get("methods", []):
            if method_label(m) == method:
                return str(m["loss"])
        return method

    @property
    def tasks(self) -> list[str]:
        configured = list(((self.config.get("shared") or {}).get("eval") or {}).get("tasks") or [])
        found = sorted({e.task for e in self.evals} - set(configured))
        return [t for t in configured if any(e.task == t for e in self.evals)] + found

    @cached_property
    def shared_hash(self) -> str | None:
        return self.plan.get("shared_hash") or (self.provenance.get("shared_hash"))

    def find(self, method: str, task: str, iteration: int | None = None) -> list[EvalResult]:
        """Scored results of `method` on `task` at `iteration` (default: the method's last), all seeds."""
        rows = [e for e in self.evals if e.method == method and e.task == task and e.scored]
        if not rows:
            return []
        it = max(e.iteration for e in rows) if iteration is None else iteration
        return sorted((e for e in rows if e.iteration == it), key=lambda e: e.seed or 0)

    def facts(self, task: str, metric: str) -> MetricFacts:
        """A metric's declared facts, from the first evaluation of `task` that holds it."""
        for e in self.evals:
            if e.task == task and metric in (e.metrics.get("metrics") or {}):
                return e.facts(metric)
        return MetricFacts.from_json(None, metric)

    def display(self, task: str) -> str:
        """A task's display name (from its metrics.json; else its name)."""
        return next((e.display for e in self.evals if e.task == task), task)

    def glossary(self) -> list[tuple[str, str, str]]:
        """(task display, metric label, what it measures) for every task's shown metrics, plus the task's own line."""
        rows: list[tuple[str, str, str]] = []
        for task in self.tasks:
            first = next(e for e in self.evals if e.task == task)
            rows.append((first.display, "", str(first.metrics.get("about") or "")))
            for name in first.shown:
                if name in (first.metrics.get("metrics") or {}):
                    f = first.facts(name)
                    rows.append((first.display, f.label + (" (%)" if f.percent else ""), f.glossary))
        return rows

    def final_iteration(self, method: str) -> int | None:
        its = [e.iteration for e in self.evals if e.method == method]
        return max(its) if its else None

    def results_frame(self) -> pd.DataFrame:
        """Long table: one row per (method, seed, iteration, task, metric)."""
        rows = []
        for e in self.evals:
            for name, m in (e.metrics.get("metrics") or {}).items():
                rows.append({
                    "method": e.method, "seed": e.seed, "iteration": e.iteration, "task": e.task,
                    "metric": name, "primary": name == e.primary, "value": m.get("value"),
                    "ci_low": m.get("ci_low"), "ci_high": m.get("ci_high"), "n": m.get("n"),
                })
        cols = ["method", "seed", "iteration", "task", "metric", "primary", "value", "ci_low", "ci_high", "n"]
        frame = pd.DataFrame(rows, columns=cols)
        frame["seed"] = frame["seed"].astype("Int64")  # integers, blank for the starting model (not 0.0)
        return frame


def _eval_results(root: Path) -> tuple[list[EvalResult], list[Untrusted]]:
    """Every completed task folder under eval/ (the layout walks them), and the folders left out, with why."""
    out: list[EvalResult] = []
    left_out: list[Untrusted] = []
    for where, task in RunLayout(root).eval_task_dirs("metrics.json", "DONE"):
        problem = done_problem(where.folder)
        if problem is None and not (where.folder / "metrics.json").is_file():
            problem = f"{where.folder / 'metrics.json'} does not exist"
        if problem is not None:
            left_out.append(Untrusted(where.method, where.seed, where.iteration, task, where.folder, problem))
            continue
        metrics_path = where.folder / "metrics.json"
        metrics = _load_json(metrics_path)
        if not isinstance(metrics, dict) or not isinstance(metrics.get("metrics"), dict):
            raise RunDataError(f"{metrics_path}: expected an object with a 'metrics' mapping")
        out.append(EvalResult(where.method, where.seed, where.iteration, task, where.folder, metrics))
    return out, left_out


def _train_iterations(root: Path) -> list[TrainIteration]:
    out: list[TrainIteration] = []
    for where in RunLayout(root).train_iteration_dirs():
        summary_path = where.folder / "summary.json"
        summary = _load_json(summary_path)
        if not isinstance(summary, dict):
            raise RunDataError(f"{summary_path}: expected a JSON object")
        out.append(TrainIteration(where.method, where.seed or 0, where.iteration, where.folder, summary))
    return out


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder; raises FileNotFoundError when it is not one."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {root} does not exist")
    layout = RunLayout(root)
    if not layout.config.is_file() and not (root / "eval").is_dir():
        raise FileNotFoundError(f"{root} is not a run folder (no config.yaml and no eval/)")
    config: dict[str, Any] = {}
    if layout.config.is_file():
        try:
            config = yaml.safe_load(layout.config.read_text()) or {}
        except yaml.YAMLError as err:
            raise RunDataError(f"{layout.config}: invalid YAML: {err}") from None
    plan = _load_json(layout.plan) if layout.plan.is_file() else {}
    prov = _load_json(layout.provenance) if layout.provenance.is_file() else {}
    evals, untrusted = _eval_results(root)
    return RunData(root, config, plan, prov, evals, _train_iterations(root), untrusted)


def load_facts(run: RunData) -> dict[str, Any] | None:
    """losses.json of the run, or None (a run folder the harness has not reported yet)."""
    path = RunLayout(run.root).loss_facts
    return read_json(path) if path.is_file() else None


def method_facts(run: RunData) -> dict[str, dict[str, Any]]:
    """label -> that method's facts (empty without losses.json)."""
    facts = load_facts(run) or {}
    return {str(m["label"]): m for m in facts.get("methods", [])}


def family_of(run: RunData, method: str) -> str | None:
    """The method's loss family as its loss declared it in the registry (None when unknown)."""
    fam = method_facts(run).get(method, {}).get("family")
    return str(fam) if fam else None
