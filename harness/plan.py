"""Planning a run: its steps and the state of a run in progress.

The run is a list of steps (plan.json): `eval/base/iter-0`, then per method and
seed `train/<method>/seed-<s>` followed by `eval/<method>/seed-<s>/iter-<k>`. A step
is done when its DONE markers exist on disk (the markers, not plan.json, are the
truth), so a rerun skips finished steps and a run killed at any moment resumes.
`plan_steps(cfg)` lists them; `Run` holds a run's config, folder, plan and steps and
reads each step's status from the disk through its kind (`STEPS`: harness.steps
registers `train` and `eval`); `check_same_experiment` refuses to resume a run folder
with another training configuration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gsil_bench.core.config import ExperimentConfig, MethodConfig, hash_view
from gsil_bench.core.errors import ConfigError
from gsil_bench.core.io import atomic_write_json
from gsil_bench.core.layout import BASE, RunLayout
from gsil_bench.core.loading import experiment_from_dict
from gsil_bench.core.registry import Registry
from gsil_bench.harness.workers import is_claimed, read_record
from gsil_bench.trainers.api import iteration_plan


@dataclass
class Step:
    """One unit of work; `status` is pending, running, done, failed or blocked; `worker`
    the process that ran it (host:pid[:rank]); its record is <step folder>/step.json."""

    id: str
    kind: str  # a STEPS entry: train, eval
    method: str
    seed: int | None
    iteration: int  # train: number of iterations; eval: the iteration evaluated (0 = base)
    depends: str | None = None
    status: str = "pending"
    started: str | None = None
    wall_time_s: float | None = None
    error: str | None = None
    worker: str | None = None


@dataclass
class Run:
    """A run in progress: config, folder, options, and its steps."""

    cfg: ExperimentConfig
    root: Path
    data_dir: str | None
    plan: dict[str, Any]
    steps: list[Step] = field(default_factory=list)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.root)

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def folder(self, step: Step) -> Path:
        """Where a step's claim and record live: the method x seed folder (train) or the eval folder."""
        if step.kind == "train":
            assert step.seed is not None
            return self.layout.seed_dir(step.method, step.seed)
        return self.layout.eval_dir(step.method, step.seed, step.iteration)

    def refresh(self) -> None:
        """Every step's status from the disk: DONE markers, else its record (any process's)."""
        for s in self.steps:
            rec = read_record(self.folder(s))
            for key in ("started", "wall_time_s", "error", "worker"):
                if key in rec:
                    setattr(s, key, rec[key])
            if STEPS.get(s.kind).done(self, s):
                s.status, s.error = "done", None
            elif rec.get("status") == "running" and not is_claimed(self.folder(s)):
                s.status = "pending"  # its process ended without finishing: the next one takes it
            else:
                s.status = rec.get("status", "pending")

    def save_plan(self) -> None:
        if not self.plan.get("run_id"):  # a launch worker before the main process wrote the plan
            return
        self.refresh()
        self.plan["steps"] = [asdict(s) for s in self.steps]
        self.plan["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(self.layout.plan, self.plan)


@dataclass(frozen=True)
class StepKind:
    done: Callable[[Run, Step], bool]
    execute: Callable[[Run, Step], None]


STEPS: Registry[StepKind] = Registry("step kind")


def plan_steps(cfg: ExperimentConfig) -> list[Step]:
    """Every step of an experiment, in execution order."""
    steps = [Step(f"eval/{BASE}/iter-0", "eval", BASE, None, 0)]
    for m in cfg.methods:
        for seed in cfg.shared.seeds:
            n = iteration_plan(cfg, m.label)
            train = Step(f"train/{m.label}/seed-{seed}", "train", m.label, seed, n)
            steps.append(train)
            steps += [Step(f"eval/{m.label}/seed-{seed}/iter-{k}", "eval", m.label, seed, k, depends=train.id)
                      for k in range(1, n + 1)]
    return steps


RESUMABLE_CHANGES = ("eval", "seeds", "iterations")  # shared keys a run folder may change between sessions


def check_same_experiment(cfg: ExperimentConfig, root: Path) -> None:
    """A run folder may be resumed or extended (new methods, seeds, iterations, eval
    settings: finished training is reused, evaluations are redone where their settings
    changed) but not switched to another training configuration."""
    path = RunLayout(root).config
    if not path.is_file():
        return
    try:
        prev = experiment_from_dict(yaml.safe_load(path.read_text()) or {}, str(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: the run folder's config no longer loads ({err}); use a new --output") from None
    old, new = hash_view(prev.shared), hash_view(cfg.shared)  # unhashed keys (keep_checkpoints) may change
    changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
    if changed:
        raise ConfigError(f"{root} was started with another training configuration (shared.{', shared.'.join(changed)} "
                          f"differ from {path}); resume with the same values or use a new --output")
    old_methods: dict[str, MethodConfig] = {m.label: m for m in prev.methods}
    for m in cfg.methods:
        if m.label in old_methods and old_methods[m.label] != m:
            raise ConfigError(f"{root}: method {m.label!r} was run with loss {old_methods[m.label].loss} "
                              f"{old_methods[m.label].params}, now {m.loss} {m.params}; rename it or use a new --output")
