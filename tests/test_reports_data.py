"""Test input for the report code: run folders written in exactly the documented
formats (docs/architecture.md), with per-item scores drawn from a seeded RNG at a
chosen accuracy. These are inputs to tables/plots/compare, never a model's result.

`write_run(root, accuracy=..., ...)` returns the run folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from gsil_bench.core.io import append_jsonl, atomic_write_json, mark_done
from gsil_bench.core.loading import experiment_from_dict
from gsil_bench.tasks.api import make_task
from gsil_bench.tasks.base import facts_of
from gsil_bench.trainers.anatomy import write_loss_facts

METHODS = {"sft": "sft", "spin": "spin", "gsil-logistic": "gsil-logistic", "gsil-hinge": "gsil-hinge"}
SELF_PLAY = {"spin", "gsil-logistic", "gsil-hinge"}
TASKS = {"gsm8k": ("exact_match", 0.0, 1.0), "mt_bench": ("score", 1.0, 10.0)}


def item_scores(task: str, level: float, n: int, rng: np.random.Generator) -> list[float]:
    """Per-item scores: Bernoulli(level) for 0/1 metrics, else a clipped normal around `level`."""
    _, lo, hi = TASKS[task]
    if hi == 1.0:
        return [float(x) for x in (rng.random(n) < level)]
    return [float(np.clip(round(x), lo, hi)) for x in rng.normal(level, 1.5, n)]


def write_eval(folder: Path, task: str, scores: list[float], model: str) -> None:
    metric = TASKS[task][0]
    samples = [{"id": f"{task}-{i}", "prompt": f"question {i}", "output": "answer", "extracted": "x",
                "reference": "y", "scores": {metric: s}} for i, s in enumerate(scores)]
    append_jsonl(folder / "samples.jsonl", samples)
    x = np.asarray(scores)
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
    declared = make_task(task)  # the facts and display name the real task writes
    atomic_write_json(folder / "metrics.json", {
        "task": task, "model": model, "primary": metric, "config": {"limit": len(x)}, "display": declared.info.display,
        "metrics": {metric: {"value": float(x.mean()), "ci_low": float(x.mean() - 1.96 * se),
                             "ci_high": float(x.mean() + 1.96 * se), "n": len(x), "stderr": se,
                             "facts": facts_of(declared, metric).to_json()}},
    })
    mark_done(folder)


def write_train(folder: Path, method: str, seed: int, iteration: int, steps: int, shared_hash: str) -> None:
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "epoch": s / steps, "lr": 1e-6, "loss": 0.7 - 0.02 * s, "grad_norm": 1.0, "tokens": 100 * s}
        if method != "sft":
            row.update({"rewards/real": 0.01 * s, "rewards/generated": -0.01 * s, "rewards/accuracy": 0.5 + 0.05 * s})
        rows.append(row)
    append_jsonl(folder / "metrics.jsonl", rows)
    atomic_write_json(folder / "summary.json", {
        "method": method, "loss": METHODS.get(method, method), "seed": seed, "iteration": iteration, "steps": steps,
        "train_tokens": 100 * steps, "generated_tokens": 0 if method == "sft" else 50 * steps,
        "wall_time_s": 1.5 * steps, "shared_hash": shared_hash, "final": rows[-1],
    })
    mark_done(folder)


def write_run(root: Path, *, name: str = "synthetic", accuracy: dict[str, float] | None = None, seeds=(0,),
              iterations: int = 2, n: int = 200, shared_hash: str = "abc123def4567890", rng_seed: int = 0,
              base_level: float = 0.3, methods: dict[str, str] | None = None) -> Path:
    """A complete run folder. accuracy: method -> level (gsm8k accuracy; mt_bench mean = 10 * level)."""
    methods = methods or METHODS
    accuracy = accuracy or {m: 0.3 + 0.1 * i for i, m in enumerate(methods)}
    rng = np.random.default_rng(rng_seed)
    config = {"name": name, "methods": [{"loss": loss, "name": m} for m, loss in methods.items()],
              "shared": {"model": "tiny", "eval": {"tasks": list(TASKS)}, "iterations": iterations,
                         "seeds": list(seeds)}, "report": {"baseline": "sft", "bootstrap": 500, "alpha": 0.05}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    steps = [{"id": "eval/base/iter-0", "kind": "eval", "method": "base", "iteration": 0, "status": "done"}]
    for task in TASKS:
        level = base_level if task == "gsm8k" else 10 * base_level
        write_eval(root / "eval" / "base" / "iter-0" / task, task, item_scores(task, level, n, rng), "tiny")
    for m, loss in methods.items():
        its = iterations if loss in SELF_PLAY else 1
        for seed in seeds:
            for k in range(1, its + 1):
                write_train(root / m / f"seed-{seed}" / f"iter-{k}", m, seed, k, 4, shared_hash)
                steps.append({"id": f"eval/{m}/seed-{seed}/iter-{k}", "kind": "eval", "method": m, "seed": seed,
                              "iteration": k, "status": "done"})
                for task in TASKS:
                    level = base_level + (accuracy[m] - base_level) * k / its
                    level = level if task == "gsm8k" else 10 * level
                    folder = root / "eval" / m / f"seed-{seed}" / f"iter-{k}" / task
                    write_eval(folder, task, item_scores(task, level, n, rng), str(folder))
    atomic_write_json(root / "plan.json", {"run_id": f"{name}-{rng_seed}", "experiment": name,
                                           "shared_hash": shared_hash, "created": f"2024-10-0{1 + rng_seed % 9}T00:00:00",
                                           "steps": steps})
    # the loss facts the harness writes before a report (families, anatomy), from the registry
    write_loss_facts(experiment_from_dict(config), root)
    return root
