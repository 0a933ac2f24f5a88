"""Where the main job's time goes: `gsil-bench run CONFIG` in this process, each kind of work
timed (wall clock and this process's CPU time, user + system over all its threads), every kind
exclusive of the kinds nested inside it, so the rows add up to the whole run.

    python -m benchmarks.mainjob configs/smoke.yaml --output runs/profile-smoke --out smoke-profile.json

The kinds (`KINDS`): imports and start-up, validation, model and tokenizer loads, generation
(evaluation's greedy answers, training's self-play negatives), scoring (the evaluated policy, the
evaluation's reference, training's reference log-probs), optimizer steps, checkpoint and state
writes, fingerprints, result files, the scorer canaries (the sandbox's child processes are counted
apart, as `children`), the report and the index; what no kind covers is `other` of its step kind.
CPU time does not grow when other processes share the cores (wall time does), so it is the figure
to compare between revisions on a busy machine; the JSON also records the load average around
the run. Nothing here is imported by the library; it wraps the library's functions by name, so a
renamed function is reported as `not found` (and its time lands in its caller's row).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

T0_WALL, T0_CPU = time.time(), time.process_time()

Label = str | Callable[[str | None, tuple[Any, ...]], str | None]


class Profile:
    """Exclusive wall and CPU seconds per label: a call's time minus its timed callees'."""

    def __init__(self) -> None:
        self.stack: list[list[Any]] = []  # [label, wall0, cpu0, callees' wall, callees' cpu]
        self.rows: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])

    def add(self, label: str, wall: float, cpu: float, calls: int = 1) -> None:
        row = self.rows[label]
        row[0] += wall
        row[1] += cpu
        row[2] += calls

    def wrap(self, label: Label, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            name = label(self.stack[-1][0] if self.stack else None, args) if callable(label) else label
            if name is None:  # counted in the caller's row
                return fn(*args, **kwargs)
            self.stack.append([name, time.time(), time.process_time(), 0.0, 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                name, w0, c0, cw, cc = self.stack.pop()
                wall, cpu = time.time() - w0, time.process_time() - c0
                self.add(name, wall - cw, cpu - cc)
                if self.stack:
                    self.stack[-1][3] += wall
                    self.stack[-1][4] += cpu

        return timed


def _generation(parent: str | None, _args: tuple[Any, ...]) -> str:
    return "train: self-play generation" if parent and parent.startswith("train") else "eval: greedy generation"


def _score(parent: str | None, _args: tuple[Any, ...]) -> str | None:
    """core.prefix.score_shared: counted in its caller's row under the evaluation's reference scorer and
    training's reference log-probs (train.share_prompts), else the evaluated policy's scoring."""
    return None if parent == "eval: reference scoring" or (parent or "").startswith("train") else "eval: policy scoring"


def _step(_parent: str | None, args: tuple[Any, ...]) -> str:
    return f"{args[1].kind} step: other"


def _load(parent: str | None, _args: tuple[Any, ...]) -> str:
    return "model load (train)" if parent and parent.startswith("train") else "model load (eval)"


# (module, attribute: a function, or Class.method), label
KINDS: list[tuple[str, str, Label]] = [
    ("gsil_bench.harness.runner", "run_experiment", "run: other (plan, provenance, locks)"),
    ("gsil_bench.harness.runner", "_execute", _step),
    ("gsil_bench.harness.validate", "problems", "validation"),
    ("gsil_bench.core.models", "load_model", _load),
    ("gsil_bench.trainers.reference", "load_causal_lm", _load),
    ("gsil_bench.core.models", "load_tokenizer", "tokenizer load"),
    ("gsil_bench.trainers.api", "build_context", "train: context (data, tokenizer, accelerator)"),
    ("gsil_bench.trainers.inputs", "prepare_inputs", "train: inputs (other)"),
    ("gsil_bench.core.generation", "HFGenerator.generate", _generation),
    ("gsil_bench.trainers.reference", "reference_logps", "train: reference log-probs"),
    ("gsil_bench.trainers.loop", "prepare", "train: policy, optimizer (other)"),
    ("gsil_bench.trainers.loop", "optimizer_step", "train: optimizer steps"),
    ("gsil_bench.trainers.state", "save_checkpoint", "checkpoint write"),
    ("gsil_bench.trainers.state", "save_state", "resumable state write"),
    ("gsil_bench.trainers.publish", "write_model_card", "model card"),
    ("gsil_bench.harness.steps", "fingerprint", "checkpoint fingerprint (sha256 of the files)"),
    ("gsil_bench.tasks.context", "weights_fingerprint", "weights fingerprint (in memory)"),
    ("gsil_bench.tasks.heldout", "ReferenceScorer.logps", "eval: reference scoring"),
    ("gsil_bench.core.prefix", "score_shared", _score),  # the held-out tasks' scoring (each prompt once)
    ("gsil_bench.tasks.canaries", "ScorerCanaries.evaluate", "eval: scorer canaries"),
    ("gsil_bench.tasks.base", "write_result", "eval: result files"),
    ("gsil_bench.tasks.interop", "write_interop", "eval: interop files"),
    ("gsil_bench.harness.steps", "_reuse_identical", "eval: reuse of identical weights"),
    ("gsil_bench.trainers.anatomy", "write_loss_facts", "report: loss anatomy"),
    ("gsil_bench.reports.report", "write_report", "report: tables and figures"),
    ("gsil_bench.reports.index", "RunIndex.add_run", "report: run index"),
]


def install(profile: Profile) -> list[str]:
    """Wrap every KINDS entry where the library (and every module that imported it by name) holds
    it; returns the entries not found."""
    import importlib

    missing = []
    for module, attr, label in KINDS:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            missing.append(f"{module}.{attr}")
            continue
        owner_name, _, name = attr.rpartition(".")
        owner = getattr(mod, owner_name, None) if owner_name else mod
        original = getattr(owner, name, None) if owner is not None else None
        if original is None:
            missing.append(f"{module}.{attr}")
            continue
        wrapped = profile.wrap(label, original)
        setattr(owner, name, wrapped)
        if not owner_name:  # `from module import name` elsewhere: the same object, replaced there too
            for other in list(sys.modules.values()):
                if getattr(other, "__name__", "").startswith("gsil_bench") and getattr(other, name, None) is original:
                    setattr(other, name, wrapped)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--output", required=True, help="the run folder (a new one: nothing reused)")
    parser.add_argument("--out", help="write the profile here (JSON)")
    parser.add_argument("overrides", nargs="*")
    args, extra = parser.parse_known_args(argv)  # e.g. -q, --data-dir: the run command's own options
    load_before = os.getloadavg()
    profile = Profile()
    w0, c0 = time.time(), time.process_time()
    import gsil_bench.harness.cli as cli  # noqa: F401  (what `gsil-bench` imports first)
    import gsil_bench.harness.runner  # noqa: F401
    import gsil_bench.reports.report  # noqa: F401
    import gsil_bench.tasks.api  # noqa: F401
    import gsil_bench.trainers.api  # noqa: F401

    profile.add("imports and start-up", time.time() - w0 + (w0 - T0_WALL), time.process_time() - c0 + (c0 - T0_CPU))
    missing = install(profile)
    code = cli.main(["run", args.config, "--output", args.output, *extra, *args.overrides])
    wall, cpu = time.time() - T0_WALL, time.process_time() - T0_CPU
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = sorted(profile.rows.items(), key=lambda kv: -kv[1][1])
    timed_wall, timed_cpu = sum(r[0] for _, r in rows), sum(r[1] for _, r in rows)
    out = {
        "config": args.config, "overrides": args.overrides, "exit": code, "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2), "children_cpu_s": round(kids.ru_utime + kids.ru_stime, 2),
        "untimed": {"wall_s": round(wall - timed_wall, 2), "cpu_s": round(cpu - timed_cpu, 2)},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "torch_threads": _threads(), "not_found": missing, "argv": sys.argv,
        "kinds": {k: {"wall_s": round(r[0], 2), "cpu_s": round(r[1], 2), "calls": int(r[2])} for k, r in rows},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"{'kind':52} {'wall s':>8} {'cpu s':>8} {'calls':>6}")
    for k, r in rows:
        print(f"{k:52} {r[0]:8.1f} {r[1]:8.1f} {int(r[2]):6d}")
    print(f"{'(untimed)':52} {wall - timed_wall:8.1f} {cpu - timed_cpu:8.1f}")
    print(f"{'total (this process)':52} {wall:8.1f} {cpu:8.1f}   children cpu {out['children_cpu_s']} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return code


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
