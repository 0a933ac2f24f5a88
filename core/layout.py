"""The run folder's layout, written once: every writer and reader builds paths here.

    <root>/config.yaml  provenance.json  plan.json  losses.json  .lock
    <root>/shared/<key>/                                 work identical across methods (done once)
    <root>/<method>/seed-<s>/provenance.json
    <root>/<method>/seed-<s>/iter-<k>/                    checkpoint/ metrics.jsonl summary.json DONE ...
    <root>/eval/<method>/seed-<s>/iter-<k>/<task>/        metrics.json samples.jsonl DONE
    <root>/eval/base/iter-0/<task>/                      the starting model, evaluated once
    <root>/report/                                       index.html tables.* plots/

`RunLayout(root)` gives the paths; `eval_task_dirs` and `train_iteration_dirs` walk
them back for readers (reports, the run index).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BASE = "base"  # the starting model's label: evaluated once, as iteration 0
RESERVED = frozenset({BASE, "eval", "report", "shared"})  # names a method label cannot take
_SEED = re.compile(r"^seed-(\d+)$")
_ITER = re.compile(r"^iter-(\d+)$")


@dataclass(frozen=True)
class Where:
    """Which model a folder belongs to: method label, seed (None for base), iteration."""

    method: str
    seed: int | None
    iteration: int
    folder: Path


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def loss_facts(self) -> Path:
        """losses.json: every method's loss family, sweep, hash and anatomy (trainers.anatomy)."""
        return self.root / "losses.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def shared_dir(self, key: str) -> Path:
        return self.root / "shared" / key

    def seed_dir(self, method: str, seed: int) -> Path:
        return self.root / method / f"seed-{seed}"

    def iter_dir(self, method: str, seed: int, iteration: int) -> Path:
        return self.seed_dir(method, seed) / f"iter-{iteration}"

    def checkpoint(self, method: str, seed: int, iteration: int) -> Path:
        return self.iter_dir(method, seed, iteration) / "checkpoint"

    def eval_dir(self, method: str, seed: int | None, iteration: int) -> Path:
        if method == BASE:
            return self.root / "eval" / BASE / "iter-0"
        return self.root / "eval" / method / f"seed-{seed}" / f"iter-{iteration}"

    def eval_task_dirs(self, *markers: str) -> Iterator[tuple[Where, str]]:
        """Every eval/<method>/[seed-<s>/]iter-<k>/<task>/ folder holding a metrics.json (or any of
        `markers`: `eval_task_dirs("metrics.json", "DONE")` also finds a result whose metrics.json is gone)."""
        ev = self.root / "eval"
        if not ev.is_dir():
            return
        found = sorted({p.parent for m in (markers or ("metrics.json",)) for p in ev.glob(f"*/**/{m}")})
        for metrics_path in (d / "metrics.json" for d in found):
            task_dir = metrics_path.parent
            parts = task_dir.relative_to(ev).parts
            if len(parts) not in (3, 4) or parts[0].startswith((".", "_")):
                continue
            seed_m = _SEED.match(parts[1]) if len(parts) == 4 else None
            iter_m = _ITER.match(parts[-2])
            if iter_m is None or (len(parts) == 4 and seed_m is None):
                continue
            seed = int(seed_m.group(1)) if seed_m else None
            yield Where(parts[0], seed, int(iter_m.group(1)), task_dir), parts[-1]

    def train_iteration_dirs(self) -> Iterator[Where]:
        """Every <method>/seed-<s>/iter-<k>/ folder holding a summary.json."""
        for summary_path in sorted(self.root.glob("*/seed-*/iter-*/summary.json")):
            folder = summary_path.parent
            method = folder.parent.parent.name
            seed_m, iter_m = _SEED.match(folder.parent.name), _ITER.match(folder.name)
            if method in RESERVED or seed_m is None or iter_m is None:
                continue
            yield Where(method, int(seed_m.group(1)), int(iter_m.group(1)), folder)
