"""`gsil-bench eval`: score a model or checkpoint on GSM8K, HumanEval, MT-Bench or any lm-eval task.

    gsil-bench eval --model embedded:smollm2-135m-instruct --tasks gsm8k,humaneval,mt_bench \\
        --limit 5 --judge http://127.0.0.1:8080/v1 --judge-model gpt-4
    gsil-bench eval --tasks humaneval --completions samples.jsonl
    gsil-bench eval --tasks arc_challenge shared.eval.num_fewshot=25 shared.eval.generation.max_new_tokens=64
    gsil-bench eval --model my-org/my-model --tasks gsm8k,arc_challenge --batch_size auto \
        --num_fewshot gsm8k=5,arc_challenge=25 --output_path out --log_samples      (lm-eval's flag names)

Prints every metric with its 95% interval when done; results are in --output.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from gsil_bench.core.config import DEFAULT_MODEL, ExperimentConfig
from gsil_bench.core.errors import GsilError
from gsil_bench.core.io import FolderBusy, busy_ancestor
from gsil_bench.core.strict import Located
from gsil_bench.harness.commands import add_overrides
from gsil_bench.harness.commands.lm_flags import add_lm_eval_flags, lm_eval_overrides

log = logging.getLogger(__name__)
HELP = "score a model or checkpoint on GSM8K, HumanEval, MT-Bench or any lm-eval task"

REGISTERED = "{registered tasks}"
EVAL_USAGE = f"comma-separated: {REGISTERED}, or any lm-eval task"


class TaskHelp(argparse.RawDescriptionHelpFormatter):
    """`--help` with the registered tasks' names where the help says REGISTERED, read from the registry
    when the help is printed (importing every task costs seconds: not on every command line)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and REGISTERED in text:
            from gsil_bench.tasks.base import TASKS

            text = text.replace(REGISTERED, ", ".join(TASKS.names()))
        return text


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = TaskHelp
    parser.add_argument("--model", default=None, help=f"Hub id, model folder, .gguf or embedded:<name> (default {DEFAULT_MODEL})")
    parser.add_argument("--tasks", default=None, help=f"{EVAL_USAGE} (default: gsm8k,humaneval,mt_bench)")
    parser.add_argument("--limit", type=int, default=None, help="first N items of every task (quick runs; >= 1)")
    parser.add_argument("--output", default=None, help="output folder (default runs/eval/<model>)")
    parser.add_argument("--judge", default=None, help="MT-Bench judge: an http(s) URL (OpenAI-compatible) or a model name (local)")
    parser.add_argument("--judge-model", default=None, help="model name sent to the judge endpoint (default gpt-4)")
    parser.add_argument("--data-dir", default=None, help="benchmark data folder (default $GSIL_DATA_DIR, else the Hub)")
    parser.add_argument("--no-chat-template", action="store_true", help="completion-style prompts even for chat models")
    parser.add_argument("--completions", default=None, help="score these code completions (task_id + completion JSONL)")
    parser.add_argument("--allow-empty", action="store_true",
                        help="exit 0 even when a task's primary metric has no value (shared.eval.allow_empty)")
    parser.add_argument("--config", default=None, help="experiment YAML: take its shared.eval block (and model)")
    add_lm_eval_flags(parser)
    add_overrides(parser)


def eval_config(args: argparse.Namespace) -> tuple[ExperimentConfig, Located]:
    """The experiment an evaluation reads, and where its keys are: --config (or the defaults), the KEY=VALUE
    overrides (the experiment's keys, `shared.eval.*`) and lm-eval's flag names, then the flags (--tasks,
    --judge, ...). Without --config, `--model` is `shared.model` (so `shared.model_revision` pins it); with
    it, the settings are those `run` applies (tasks.api.experiment_eval) and `shared.model` stays the
    experiment's (the held-out reference). Checked by the one validation pass (harness.validate) in `run`."""
    from gsil_bench.core.config import raise_problems
    from gsil_bench.core.loading import experiment_from_dict, parse_experiment
    from gsil_bench.core.strict import apply_overrides, to_plain
    from gsil_bench.tasks.api import experiment_eval

    overrides = list(args.overrides) + lm_eval_overrides(args)
    if args.config:
        parsed, loc, problems = parse_experiment(args.config, overrides)
        raise_problems(problems, loc, parsed)
        assert parsed is not None
        exp, cfg = parsed, experiment_eval(parsed.shared)
    else:
        exp, loc = ExperimentConfig(name="eval", methods=[]), Located("command line")
        loc.mark_overrides(overrides)
        if overrides:
            exp = experiment_from_dict(apply_overrides(to_plain(exp), overrides), "command line", overrides)
        if args.model:
            exp = replace(exp, shared=replace(exp.shared, model=args.model))
        cfg = exp.shared.eval
    if args.no_chat_template:
        cfg = replace(cfg, chat_template=False)
    if args.allow_empty:
        cfg = replace(cfg, allow_empty=True)
    if args.tasks:
        cfg = replace(cfg, tasks=[t.strip() for t in args.tasks.split(",") if t.strip()])
    judge = cfg.judge
    if args.judge:
        if re.match(r"https?://", args.judge):
            judge = replace(judge, backend="openai", base_url=args.judge)
        else:
            judge = replace(judge, backend="hf", model=args.judge)
    if args.judge_model:
        judge = replace(judge, model=args.judge_model)
    return replace(exp, shared=replace(exp.shared, eval=replace(cfg, judge=judge))), loc


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """One line per task and metric: value, 95% interval, n (primary metric first)."""
    rows = [("task", "metric", "value", "95% CI", "n")]
    for task, res in results.items():
        metrics = res.get("metrics", {})
        primary = res.get("primary")
        for name in sorted(metrics, key=lambda k: (k != primary, list(metrics).index(k))):
            m = metrics[name]
            value = "-" if m["value"] is None else f"{m['value']:.4f}"
            ci = "" if m["ci_low"] is None else f"[{m['ci_low']:.4f}, {m['ci_high']:.4f}]"
            rows.append((task + (" (incomplete)" if res.get("incomplete") else ""), name + (" *" if name == primary else ""),
                         value, ci, str(m["n"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def run(args: argparse.Namespace) -> int:
    from gsil_bench.harness.validate import check_output, hub_problem, validate
    from gsil_bench.tasks.api import empty_primaries, evaluate

    if args.limit is not None and args.limit < 1:
        raise GsilError(f"--limit must be a positive number of items, got {args.limit}")
    exp, loc = eval_config(args)
    validate(exp, loc, data_dir=args.data_dir, scope=("eval",) if args.completions else ("model", "eval"))
    shared, cfg = exp.shared, exp.shared.eval
    if args.completions and not (args.model or args.config):
        model = f"completions:{Path(args.completions).name}"
    else:
        model = args.model or shared.model
    if shared.model_revision and model != shared.model:
        log.warning("shared.model_revision pins %s (shared.model), not %s, which is loaded at its default revision",
                    shared.model, model)
    problem = None if args.completions else hub_problem(model, shared.model_revision if model == shared.model else None)
    if problem:  # before any work: one line, no retries
        raise GsilError(f"{'--model' if args.model else 'shared.model'}: {problem}")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-")
    out = Path(args.output or Path("runs") / "eval" / slug)
    busy = busy_ancestor(out)
    if busy is not None:
        raise FolderBusy(busy)
    check_output(out, "--output" if args.output else "output folder")
    results = evaluate(model, list(cfg.tasks), cfg, out, data_dir=args.data_dir or shared.data_dir,
                       limit=args.limit, completions=args.completions, pins=shared.pins())
    sys.stdout.write(format_table(results) + f"\n\nresults: {out}\n")
    empty = [] if cfg.allow_empty else empty_primaries(results)
    if empty:
        sys.stderr.write(f"gsil-bench eval: no result: {'; '.join(empty)} (--allow-empty accepts it)\n")
        return 1
    return 1 if any(r.get("incomplete") for r in results.values()) else 0
