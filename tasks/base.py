"""The Task interface, the task registry, per-sample records and the task folder.

A task loads its documents (first `limit`), turns them into generation requests,
scores the outputs and aggregates per-item scores into metrics with 95% intervals:

    docs = task.load(ctx)                  # documents, in a stable order
    samples = task.evaluate(docs, ctx)     # requests -> (cached) generations -> scored Samples
    metrics = task.aggregate(samples, ctx) # {name: Metric}

A task declares what is known of it before it runs in one frozen record, `TaskInfo` (name, display
name, description, primary and reported metrics with their facts, how `eval.limit` applies, model-free,
completions, backend), its `info`; `register_task` adds it to `TASKS`, which finds the task modules by
walking the package.

`run_task` drives one task into its folder `<out>/<task>/`: samples.jsonl (one line per
item: id, prompt, output, extracted, reference, scores, plus task fields),
metrics.json (task, model, primary, reported, display, about, metrics {name: value, ci_low, ci_high,
n, stderr, ci_method, higher_is_better, facts (core.facts: label, glossary, percent, exact, tolerance)}, config), provenance.json, then DONE last. A folder whose DONE records the
same evaluation key (model identity + task + limit + settings) and whose result files
still match the digests DONE records is skipped; anything else is recomputed (a changed
file with a warning), reusing the generation/judgment caches.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from gsil_bench.core.config import hash_view
from gsil_bench.core.errors import GsilError
from gsil_bench.core.facts import MetricFacts, lookup, undeclared
from gsil_bench.core.io import (
    append_jsonl,
    atomic_path,
    atomic_write_json,
    hash_obj,
    is_done,
    mark_done,
    read_json,
)
from gsil_bench.core.models import weights_fingerprint
from gsil_bench.core.provenance import collect
from gsil_bench.core.registry import Registry
from gsil_bench.tasks.context import EvalContext
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


Limit = Literal["documents", "lm-eval", "fixed"]
LIMITS: dict[str, str] = {  # how `eval.limit` applies to a task: its declared choice
    "documents": "run_task keeps the task's first `limit` documents",
    "lm-eval": "lm-eval keeps the first `limit` documents of each of its tasks itself (it is given the limit)",
    "fixed": "a fixed set of items that eval.limit does not cut (the scorer canaries)",
}
Backend = Literal["generator", "hf", "lm-eval"]  # generator: eval.generation's backend; hf: a loaded HF model


@dataclass(frozen=True)
class TaskInfo:
    """Everything known of a task before it runs, declared once with the task and read by the runner
    (model-free tasks on the base step only), the evaluation (limit, completions), `metrics.json` and the
    reports (display, about, primary, reported, each metric's facts) and `eval --help` (its name)."""

    name: str
    display: str  # how tables, axes and the glossary name it: "HumanEval+"
    about: str  # one sentence for the report's glossary
    primary: str = ""  # the metric reports lead with ("": the first the task reports, an lm-eval task by its own name)
    reported: tuple[str, ...] = ()  # metrics shown beside the primary (their own column; compared)
    metrics: dict[str, MetricFacts] = field(default_factory=dict)  # a `family/part` metric takes its family's facts
    metric_facts: Callable[[str], MetricFacts | None] | None = None  # open-ended metric names (pass@k, lm-eval's)
    limit: Limit = "documents"  # LIMITS
    model_free: bool = False  # its result cannot depend on the model: the runner scores it once, on the base step
    completions: bool = False  # scores a completions file too (`eval --completions`: the code tasks)
    backend: Backend = "generator"
    protocol: str | None = None  # the named protocol it belongs to (tasks.protocols.PROTOCOLS)

    def facts(self, metric: str) -> MetricFacts | None:
        """The facts declared for `metric` (None when undeclared)."""
        return self.metric_facts(metric) if self.metric_facts is not None else lookup(self.metrics, metric)


class Task(Protocol):
    """What every task provides: its record and the three steps."""

    @property
    def info(self) -> TaskInfo: ...

    def load(self, ctx: EvalContext) -> list[dict[str, Any]]: ...

    def evaluate(self, docs: list[dict[str, Any]], ctx: EvalContext) -> TaskResult | list[Sample]: ...

    def aggregate(self, samples: list[Sample], ctx: EvalContext) -> dict[str, Metric]: ...


class Registered:
    """A task class whose record is a class attribute (`info: ClassVar[TaskInfo] = TaskInfo(...)`); its
    methods may say `self.name` for the record's name."""

    info: ClassVar[TaskInfo]

    @property
    def name(self) -> str:
        return self.info.name


TaskFactory = Callable[[], Task]
STANDALONE = ("sandbox_server",)  # a module of the package that runs in its own interpreter (the sandbox's): never imported


class TaskRegistry(Registry[TaskFactory]):
    """Task name -> factory, with each task's record (`info`). The tasks are found by walking the package:
    every module of gsil_bench.tasks is imported the first time the registry is read, so a task module
    registers itself and nothing has to import it for that (a plugin module registers when it is imported)."""

    def __init__(self) -> None:
        super().__init__("task")
        self._walked = False

    def _walk(self) -> None:
        if not self._walked:
            self._walked = True
            package = importlib.import_module(__name__.rsplit(".", 1)[0])
            for found in pkgutil.iter_modules(package.__path__):
                if found.name not in STANDALONE:
                    importlib.import_module(f"{package.__name__}.{found.name}")

    def get(self, name: str) -> TaskFactory:
        self._walk()
        return super().get(name)

    def meta(self, name: str) -> dict[str, Any]:
        self._walk()
        return super().meta(name)

    def names(self) -> list[str]:
        self._walk()
        return super().names()

    def __contains__(self, name: object) -> bool:
        self._walk()
        return super().__contains__(name)

    def info(self, name: str) -> TaskInfo:
        """The task's record (KeyError with a did-you-mean for an unknown name)."""
        return self.meta(name)["info"]


TASKS = TaskRegistry()


def register_task(task: Any) -> Any:
    """Register a task: a class (`@register_task` above it) or a zero-argument factory whose instances
    carry their record as `info`. The record is read once from a first instance (a task's constructor
    does no work), so `TASKS.info(name)` answers without loading anything else."""
    info = task().info
    TASKS.add(info.name, task, info=info)
    return task


def facts_of(task: Task, name: str, metric: Metric | None = None) -> MetricFacts:
    """The facts `task` declares for its metric `name` (a warning and the defaults when it declares none)."""
    found = task.info.facts(name)
    if found is None:
        log.warning("%s: metric %r has no declared facts (direction, tolerance, display; see docs/extending.md): "
                    "reports show it with the defaults", task.info.name, name)
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
    return hash_obj({"task": task.info.name, "model": ctx.identity(), "config": _config_record(task, ctx)})


def write_result(folder: Path, task: Task, ctx: EvalContext, result: TaskResult, key: str, started: float) -> dict[str, Any]:
    """samples.jsonl, metrics.json, provenance.json (atomic), then DONE when the result is complete."""

    with atomic_path(folder / "samples.jsonl") as tmp:
        append_jsonl(tmp, (s.to_json() for s in result.samples))
    info = task.info
    metrics = {
        "task": info.name, "model": ctx.model, "primary": info.primary or next(iter(result.metrics), ""),
        "reported": list(info.reported), "display": info.display, "about": info.about,
        "metrics": metrics_record(task, result.metrics),
        "n_items": len(result.samples), "config": _config_record(task, ctx) | ran_with(task, ctx), **result.info,
    }
    if ctx.model_obj is not None:  # the weights actually scored (a model served from the wrong place shows here)
        metrics["weights_fingerprint"] = weights_fingerprint(ctx.model_obj)
    if not result.complete:
        metrics["incomplete"] = True
    atomic_write_json(folder / "metrics.json", metrics)
    prov = collect(ctx.cfg, data_files=getattr(ctx, "data_files", {}).get(info.name, {}), started=started)
    prov["model_identity"] = ctx.identity()
    atomic_write_json(folder / "provenance.json", prov)
    if result.complete:
        mark_done(folder, {"key": key, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, digest=RESULT_FILES)
    else:
        (folder / "DONE").unlink(missing_ok=True)
        log.warning("%s: incomplete (see samples.jsonl); rerun to retry the failed items, cached work is reused",
                    info.name)
    return metrics


def run_task(task: Task, ctx: EvalContext, folder: Path) -> dict[str, Any]:
    """Run one task into `folder` unless an identical finished run is already there."""
    key, name = evaluation_key(task, ctx), task.info.name
    if is_done(folder) and (folder / "metrics.json").is_file():
        done = read_json(folder / "DONE")
        if done.get("key") == key:
            log.info("%s: done already (%s), skipping", name, folder)
            return read_json(folder / "metrics.json")
        log.info("%s: %s holds a different evaluation; recomputing (caches are reused)", name, folder)
        (folder / "DONE").unlink()
    started = time.time()
    ctx.task_folder = folder
    docs = task.load(ctx)
    if ctx.limit is not None and task.info.limit == "documents":
        docs = docs[: ctx.limit]
    if not docs:
        raise TaskError(f"{name}: no documents to evaluate")
    out = task.evaluate(docs, ctx)
    result = out if isinstance(out, TaskResult) else TaskResult(out, {})
    if not result.metrics:
        result.metrics = task.aggregate(result.samples, ctx)
    return write_result(folder, task, ctx, result, key, started)
