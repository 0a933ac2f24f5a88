"""The Task interface, the task registry, per-sample records and the task folder.

A task loads its documents (first `limit`), turns them into generation requests,
scores the outputs and aggregates per-item scores into metrics with 95% intervals:

    docs = task.load(ctx)                  # documents, in a stable order
    samples = task.evaluate(docs, ctx)     # requests -> (cached) generations -> scored Samples
    metrics = task.aggregate(samples, ctx) # {name: Metric}

`run_task` drives one task into its folder `<out>/<task>/`: samples.jsonl (one line per
item: id, prompt, output, extracted, reference, scores, plus task fields),
metrics.json (task, model, primary, reported, display, about, metrics {name: value, ci_low, ci_high,
n, stderr, ci_method, higher_is_better, facts (core.facts: label, glossary, percent, exact, tolerance)}, config), provenance.json, then DONE last. A folder whose DONE records the
same evaluation key (model identity + task + limit + settings) and whose result files
still match the digests DONE records is skipped; anything else is recomputed (a changed
file with a warning), reusing the generation/judgment caches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gsil_bench.core.config import hash_view
from gsil_bench.core.errors import GsilError
from gsil_bench.core.facts import MetricFacts, lookup, undeclared
from gsil_bench.core.io import (
    append_jsonl,
    atomic_write_json,
    hash_obj,
    is_done,
    mark_done,
    read_json,
    temp_name,
)
from gsil_bench.core.provenance import collect
from gsil_bench.core.registry import Registry
from gsil_bench.tasks.context import EvalContext, weights_fingerprint
from gsil_bench.tasks.stats import Metric

log = logging.getLogger(__name__)
RESULT_FILES = ("metrics.json", "samples.jsonl")  # their digests are in DONE, checked before reuse


class TaskError(GsilError, ValueError):
    """A task cannot run with the given input; the message says what to fix."""


@dataclass
class Sample:
    """One scored item; `id` is stable across models so runs pair item by item."""

    id: str
    prompt: Any
    output: Any
    extracted: Any
    reference: Any
    scores: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        rec = {"id": self.id, "prompt": self.prompt, "output": self.output, "extracted": self.extracted,
               "reference": self.reference, "scores": self.scores}
        rec.update(self.extra)
        return rec


@dataclass
class TaskResult:
    samples: list[Sample]
    metrics: dict[str, Metric]
    info: dict[str, Any] = field(default_factory=dict)  # task-specific metrics.json fields
    complete: bool = True  # False: some items failed transiently (e.g. judge errors); no DONE, rerun retries


class Task(Protocol):
    """What every registered task provides."""

    @property
    def name(self) -> str: ...

    @property
    def primary(self) -> str: ...  # the metric reports lead with

    @property
    def reported(self) -> tuple[str, ...]: ...  # metrics shown beside the primary (own column; compared)

    # True when the task applies `ctx.limit` itself (lm-eval does); else run_task cuts the documents
    applies_limit: bool

    # Also declared by every task (tests/test_facts.py checks them; docs/extending.md), read with getattr:
    # `display` (how reports name the task, "HumanEval+"), `about` (one sentence for the report's glossary),
    # and the facts of each metric it writes: `METRICS: dict[str, MetricFacts]` (core.facts; a `family/part`
    # metric takes its family's), or `metric_facts(name)` where the names are open-ended (lm-eval's, pass@k).

    def load(self, ctx: EvalContext) -> list[dict[str, Any]]: ...

    def evaluate(self, docs: list[dict[str, Any]], ctx: EvalContext) -> TaskResult | list[Sample]: ...

    def aggregate(self, samples: list[Sample], ctx: EvalContext) -> dict[str, Metric]: ...


TaskFactory = Callable[[], Task]
TASKS: Registry[TaskFactory] = Registry("task")


def register_task(name: str, **meta: Any) -> Callable[[Any], Any]:
    """Class decorator: `@register_task("humaneval", completions=True)`; sets `cls.name`."""

    def deco(cls: Any) -> Any:
        cls.name = name
        cls.applies_limit = bool(getattr(cls, "applies_limit", False))
        cls.reported = tuple(getattr(cls, "reported", ()))
        cls.display = getattr(cls, "display", None) or name
        TASKS.add(name, cls, **meta)
        return cls

    return deco


def facts_of(task: Task, name: str, metric: Metric | None = None) -> MetricFacts:
    """The facts `task` declares for its metric `name` (a warning and the defaults when it declares none)."""
    hook = getattr(task, "metric_facts", None)
    found = hook(name) if callable(hook) else lookup(getattr(task, "METRICS", {}), name)
    if found is None:
        log.warning("%s: metric %r has no declared facts (direction, tolerance, display; see docs/extending.md): "
                    "reports show it with the defaults", task.name, name)
        return undeclared(name, metric.higher_is_better if metric is not None else True)
    return found


def metrics_record(task: Task, metrics: dict[str, Metric]) -> dict[str, Any]:
    """metrics.json's `metrics`: each value with its interval, direction and declared facts."""
    out = {}
    for name, m in metrics.items():
        facts = facts_of(task, name, m)
        out[name] = {**m.to_json(), "higher_is_better": facts.higher_is_better, "facts": facts.to_json()}
    return out


def _config_record(task: Task, ctx: EvalContext) -> dict[str, Any]:
    return {"eval": hash_view(ctx.cfg), "limit": ctx.limit, "data_dir": str(ctx.data_dir) if ctx.data_dir else None,
            "chat": ctx.chat if ctx.completions is None else None,
            "completions": str(ctx.completions) if ctx.completions else None}


def ran_with(task: Task, ctx: EvalContext) -> dict[str, Any]:
    """What a task really ran with, where it differs from the evaluation config (an lm-eval task:
    lm-eval's own generation settings and chat choice), recorded in metrics.json's `config`; the
    evaluation key stays the config's (a finished folder is reused by the settings it was asked for)."""
    fn = getattr(task, "ran_with", None)
    return dict(fn(ctx)) if callable(fn) else {}


def evaluation_key(task: Task, ctx: EvalContext) -> str:
    """What a finished task folder must match to be reused as is."""
    return hash_obj({"task": task.name, "model": ctx.identity(), "config": _config_record(task, ctx)})


def write_result(folder: Path, task: Task, ctx: EvalContext, result: TaskResult, key: str, started: float) -> dict[str, Any]:
    """samples.jsonl, metrics.json, provenance.json (atomic), then DONE when the result is complete."""

    folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(folder / "samples.jsonl")
    append_jsonl(tmp, (s.to_json() for s in result.samples))
    tmp.replace(folder / "samples.jsonl")
    metrics = {
        "task": task.name, "model": ctx.model, "primary": task.primary,
        "reported": list(task.reported), "display": getattr(task, "display", task.name),
        "about": getattr(task, "about", ""), "metrics": metrics_record(task, result.metrics),
        "n_items": len(result.samples), "config": _config_record(task, ctx) | ran_with(task, ctx), **result.info,
    }
    if ctx.model_obj is not None:  # the weights actually scored (a model served from the wrong place shows here)
        metrics["weights_fingerprint"] = weights_fingerprint(ctx.model_obj)
    if not result.complete:
        metrics["incomplete"] = True
    atomic_write_json(folder / "metrics.json", metrics)
    prov = collect(ctx.cfg, data_files=getattr(ctx, "data_files", {}).get(task.name, {}), started=started)
    prov["model_identity"] = ctx.identity()
    atomic_write_json(folder / "provenance.json", prov)
    if result.complete:
        mark_done(folder, {"key": key, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, digest=RESULT_FILES)
    else:
        (folder / "DONE").unlink(missing_ok=True)
        log.warning("%s: incomplete (see samples.jsonl); rerun to retry the failed items, cached work is reused",
                    task.name)
    return metrics


def run_task(task: Task, ctx: EvalContext, folder: Path) -> dict[str, Any]:
    """Run one task into `folder` unless an identical finished run is already there."""
    key = evaluation_key(task, ctx)
    if is_done(folder) and (folder / "metrics.json").is_file():
        done = read_json(folder / "DONE")
        if done.get("key") == key:
            log.info("%s: done already (%s), skipping", task.name, folder)
            return read_json(folder / "metrics.json")
        log.info("%s: %s holds a different evaluation; recomputing (caches are reused)", task.name, folder)
        (folder / "DONE").unlink()
    started = time.time()
    ctx.task_folder = folder
    docs = task.load(ctx)
    if ctx.limit is not None and not task.applies_limit:
        docs = docs[: ctx.limit]
    if not docs:
        raise TaskError(f"{task.name}: no documents to evaluate")
    out = task.evaluate(docs, ctx)
    result = out if isinstance(out, TaskResult) else TaskResult(out, {})
    if not result.metrics:
        result.metrics = task.aggregate(result.samples, ctx)
    return write_result(folder, task, ctx, result, key, started)
