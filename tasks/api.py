"""The evaluation entry point the runner calls for every checkpoint (and `gsil-bench eval` uses).

    evaluate(model, ["gsm8k", "humaneval", "mt_bench"], eval_cfg, out_dir, limit=2)
    -> {"gsm8k": <metrics.json content>, ...}

Each task writes `<out_dir>/<task>/` (see tasks.base) while holding `<out_dir>`'s folder
lock (FolderBusy if another process holds it). Idempotent: a task folder whose DONE
marker records the same evaluation (and intact result files) is skipped. Task names are ours (TASKS, every
task module of the package, found by walking it) or any lm-eval task, checked up front with a did-you-mean. A failing task does not stop the
others; the first error is raised after all tasks ran, so finished work is kept.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from gsil_bench.core.config import EvalConfig, SharedConfig
from gsil_bench.core.datadir import data_dir as resolve_data_dir
from gsil_bench.core.errors import Problem
from gsil_bench.core.generation import generation_problems
from gsil_bench.core.io import folder_lock
from gsil_bench.tasks.base import TASKS, Task, TaskError, run_task
from gsil_bench.tasks.context import EvalContext
from gsil_bench.tasks.interop import write_interop
from gsil_bench.tasks.lmeval import LmEvalTask, check_task_name
from gsil_bench.tasks.sandbox import SandboxUnavailable, resolve_mode

log = logging.getLogger(__name__)


def experiment_eval(shared: SharedConfig) -> EvalConfig:
    """An experiment's evaluation settings as `run` applies them (and `eval --config`): held-out
    likelihood margins are relative to the starting model unless `eval.reference_model` names another."""
    if shared.eval.reference_model is None:
        return replace(shared.eval, reference_model=shared.model)
    return shared.eval


def make_task(name: str) -> Task:
    """Our task by name, else the lm-eval task of that name (pass-through)."""
    if name in TASKS:
        return TASKS.get(name)()
    check_task_name(name, TASKS.names())
    return LmEvalTask(name)  # type: ignore[return-value]


def task_problems(names: list[str], cfg: EvalConfig, completions: Path | None = None) -> list[Problem]:
    """Every problem with the task names and settings (keys relative to the eval block:
    `eval.tasks`, `eval.judge.base_url`, ...), without loading anything."""
    out: list[Problem] = []
    if not names:
        out.append(Problem("eval.tasks", "no tasks given"))
    if len(set(names)) != len(names):
        out.append(Problem("eval.tasks", f"a task is named twice in {names}"))
    for name in names:
        try:
            check_task_name(name, TASKS.names())
        except TaskError as err:
            out.append(Problem("eval.tasks", str(err)))
    if completions is not None:
        bad = [n for n in names if n not in TASKS or not TASKS.info(n).completions]
        if bad:
            code = [n for n in TASKS.names() if TASKS.info(n).completions]
            out.append(Problem("", f"--completions scores code tasks only ({', '.join(code)}), not {', '.join(bad)}"))
        if not completions.is_file():
            out.append(Problem("", f"completions file {completions} not found"))
    if "mt_bench" in names and cfg.judge.backend == "openai" and not cfg.judge.base_url:
        out.append(Problem("eval.judge.base_url",
                           "mt_bench needs a judge: --judge URL (an OpenAI-compatible endpoint) or --judge MODEL "
                           "(a local Hugging Face model), or eval.judge.base_url in the config"))
    out += generation_problems(cfg.generation, "eval.generation")
    if any(n in TASKS and TASKS.info(n).completions for n in names):  # code tasks run model-written code
        try:
            resolve_mode(cfg.code_sandbox)
        except SandboxUnavailable as err:
            out.append(Problem("eval.code_sandbox", str(err)))
    if isinstance(cfg.num_fewshot, dict):  # per task: every key one of the tasks (ours or its lm-eval name)
        known = set(names)
        for n in names:
            try:
                known.add(getattr(make_task(n), "lm_task", n))
            except TaskError:
                continue  # reported above
        unknown = [k for k in cfg.num_fewshot if k not in known]
        if unknown:
            out.append(Problem("eval.num_fewshot", f"{', '.join(unknown)}: not among the tasks ({', '.join(names)})"))
    if cfg.samples_per_task < 1:
        out.append(Problem("eval.samples_per_task", f"must be >= 1, got {cfg.samples_per_task}"))
    if cfg.limit is not None and cfg.limit < 1:
        out.append(Problem("eval.limit", f"must be >= 1 or null, got {cfg.limit}"))
    return out


def check_tasks(names: list[str], cfg: EvalConfig, completions: Path | None = None) -> None:
    """task_problems as one TaskError listing all of them."""
    problems = task_problems(names, cfg, completions)
    if problems:
        raise TaskError("; ".join(p.render() for p in problems))


def evaluate(model: str, task_names: list[str], eval_cfg: EvalConfig, out_dir: Path, *,
             data_dir: str | None = None, limit: int | None = None, model_obj: Any = None,
             tokenizer: Any = None, completions: str | Path | None = None,
             revision: str | None = None, pins: dict[str, str] | None = None) -> dict[str, dict]:
    """Score `model` (a name/folder, optionally already loaded as `model_obj`/`tokenizer`, which
    must then hold that model's weights) on `task_names`; return each task's metrics.json content.
    `completions`: score a code-completions file instead of generating (code tasks only).
    `revision`: the Hub revision of `model`; `pins`: model name -> Hub revision wherever that model
    is loaded (`{shared.model: shared.model_revision}`: the evaluated model and the reference)."""
    comp = Path(completions) if completions is not None else None
    if limit is not None:  # one route: the limit lives in the eval config
        eval_cfg = replace(eval_cfg, limit=limit)
    check_tasks(task_names, eval_cfg, comp)
    ctx = EvalContext(model=model, cfg=eval_cfg, data_dir=resolve_data_dir(data_dir), model_obj=model_obj,
                      tokenizer=tokenizer, completions=comp, revision=revision, pins=dict(pins or {}))
    out_dir = Path(out_dir)
    results: dict[str, dict] = {}
    first_error: BaseException | None = None
    with folder_lock(out_dir):  # the lock `run` takes: two evaluations never write one folder
        for name in task_names:
            try:
                results[name] = run_task(make_task(name), ctx, out_dir / name)
                write_interop(out_dir / name)  # lm-eval / FastChat / EvalPlus files beside ours
            except (TaskError, OSError, RuntimeError, ValueError) as err:
                log.error("%s failed: %s", name, err)
                first_error = first_error or err
    if first_error is not None:
        raise first_error
    return results


def _why_empty(result: dict[str, Any]) -> str:
    """What the per-item records say about an empty primary metric (the judge's failures, for MT-Bench)."""
    metrics = result.get("metrics") or {}
    turns = [f"{int(metrics[k]['value'])} {k}" for k in ("missing", "ambiguous")
             if (metrics.get(k) or {}).get("value")]
    if turns:
        of = (metrics.get("missing") or {}).get("n")
        return f" (no parseable rating: {', '.join(turns)} of {of} turns)"
    return ""


def empty_primaries(results: dict[str, dict[str, Any]]) -> list[str]:
    """One line per result (metrics.json content, keyed by a label) whose primary metric has no
    value: no item was scored (a judge that never gave a parseable rating, a metric lm-eval did not
    report). `eval` and `run` exit 1 on any unless `eval.allow_empty` is set."""
    out = []
    for label, res in results.items():
        primary = res.get("primary")
        metric = (res.get("metrics") or {}).get(primary) if primary else None
        if metric is None or metric.get("value") is None:
            out.append(f"{label}: primary metric {primary or '(none)'!r} has no value for any of its "
                       f"{res.get('n_items', 0)} items{_why_empty(res)}")
    return out
