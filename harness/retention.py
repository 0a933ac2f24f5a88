"""Checkpoints kept by policy (`shared.train.keep_checkpoints`), like the Trainer's `save_total_limit`
but per experiment, and the disk a plan takes.

- `all` (the default): every checkpoint keeps its weights;
- `last`: each method x seed keeps the weights of its last iteration;
- `none`: no checkpoint keeps its weights once nothing planned needs them.

A checkpoint's weights are needed while its evaluation step is not done and while the next
iteration of its method x seed has not finished training (it starts from them, and they are its
reference and self-play generator). Once neither holds and the policy does not keep it, `prune`
removes the weight files (and a LoRA adapter folder) and keeps everything else: config, tokenizer,
model card and gsil_meta.json in `checkpoint/`, the iteration's metrics, summary and generations,
and the evaluation's results. `checkpoint/REMOVED.json` (the policy, the weights' fingerprint as
the evaluation recorded it, the bytes freed) is written before anything is deleted, so a removal
cut short by a kill is recognised, and finished by the next run. The runner prunes after every
step it finishes and when a run opens; a kill at any moment leaves every weight still needed.

`blocked` lists the pending steps that would need weights already removed (a rerun with more
iterations or other evaluation settings after `none` or `last`): `check_plannable` refuses such a
run before any work, naming them, so no step that needs a removed checkpoint is ever planned.
`lost` lists the checkpoints the current policy would keep whose weights an earlier, less keeping
policy removed (a warning: retraining them needs a new --output). `disk_plan` is the dry run's
estimate of the disk the plan takes (the checkpoints; everything else is small beside them).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gsil_bench.core import resident
from gsil_bench.core.config import ExperimentConfig
from gsil_bench.core.errors import ConfigError
from gsil_bench.core.io import atomic_write_json, is_done, read_json
from gsil_bench.core.layout import BASE
from gsil_bench.core.models import ModelError, resolve
from gsil_bench.harness.plan import STEPS, Run, Step, plan_steps
from gsil_bench.trainers.state import kill_hook

log = logging.getLogger(__name__)
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "adapter")
RECORD = "REMOVED.json"


def weight_files(checkpoint: Path) -> list[Path]:
    """The files (and the LoRA adapter folder) that hold a checkpoint's weights."""
    return sorted(p for pattern in WEIGHT_FILES for p in checkpoint.glob(pattern))


def removed(checkpoint: Path) -> dict[str, Any] | None:
    """The removal record of a checkpoint whose weights the policy removed, else None."""
    path = checkpoint / RECORD
    return dict(read_json(path)) if path.is_file() else None


def keeps(policy: str, iteration: int, last: int) -> bool:
    """Whether `policy` keeps the weights of `iteration` (of `last`) once nothing needs them."""
    return policy == "all" or (policy == "last" and iteration == last)


def _checkpoints(run: Run) -> Iterator[tuple[Step, int]]:
    """(train step, iteration) of every checkpoint the plan makes."""
    for step in run.steps:
        if step.kind == "train":
            yield from ((step, k) for k in range(1, step.iteration + 1))


def _eval_step(run: Run, train: Step, k: int) -> Step | None:
    return next((s for s in run.steps if s.kind == "eval" and s.method == train.method and s.seed == train.seed
                 and s.iteration == k), None)


def needed_by(run: Run, train: Step, k: int) -> list[str]:
    """The pending steps that need checkpoint k of `train`'s method x seed."""
    assert train.seed is not None
    out = []
    ev = _eval_step(run, train, k)
    if ev is not None and not STEPS.get("eval").done(run, ev):
        out.append(ev.id)
    if k < train.iteration and not is_done(run.layout.iter_dir(train.method, train.seed, k + 1)):
        out.append(f"{train.id} (iteration {k + 1})")
    return out


def _fingerprint(run: Run, train: Step, k: int) -> str | None:
    """The weights' fingerprint as their evaluation recorded it (model.json)."""
    path = run.layout.eval_dir(train.method, train.seed, k) / "model.json"
    return read_json(path).get("fingerprint") if path.is_file() else None


def prune(run: Run) -> list[Path]:
    """Remove the weights of every finished checkpoint that nothing planned needs and the policy
    does not keep (and drop every such checkpoint from core.resident); returns the folders pruned."""
    policy = run.cfg.shared.train.keep_checkpoints
    out: list[Path] = []
    for train, k in _checkpoints(run):
        assert train.seed is not None
        folder = run.layout.iter_dir(train.method, train.seed, k)
        ckpt = folder / "checkpoint"
        if not is_done(folder) or needed_by(run, train, k):
            continue
        resident.forget(ckpt)  # nothing planned reads it: out of this process's memory too
        files = weight_files(ckpt)
        if not files or keeps(policy, k, train.iteration):
            continue
        if removed(ckpt) is None:  # the record first: a removal cut short is recognised as one
            size = sum(f.stat().st_size for f in files if f.is_file()) + sum(
                g.stat().st_size for f in files if f.is_dir() for g in f.rglob("*") if g.is_file())
            atomic_write_json(ckpt / RECORD, {"policy": policy, "fingerprint": _fingerprint(run, train, k),
                                              "bytes": size, "files": [f.name for f in files],
                                              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        # the tests die here (the record written, the weights not yet removed): "pruned:N" at the run's N-th
        kill_hook("pruned", len(list(run.root.glob(f"*/seed-*/iter-*/checkpoint/{RECORD}"))))
        for f in files:
            if f.is_dir():
                shutil.rmtree(f)
            else:
                f.unlink(missing_ok=True)
        out.append(ckpt)
    if out:
        log.info("keep_checkpoints=%s: removed the weights of %d checkpoint(s) nothing planned needs (%s)", policy,
                 len(out), ", ".join(str(p.relative_to(run.root)) for p in out))
    return out


def blocked(run: Run) -> list[str]:
    """'<step> needs <checkpoint>' for every pending step whose checkpoint's weights were removed."""
    out = []
    for step in run.steps:
        if step.kind == "eval" and step.method != BASE and not STEPS.get("eval").done(run, step):
            assert step.seed is not None
            ckpt = run.layout.checkpoint(step.method, step.seed, step.iteration)
            if removed(ckpt) is not None:
                out.append(f"{step.id} needs {ckpt.relative_to(run.root)}")
        elif step.kind == "train" and not STEPS.get("train").done(run, step):
            assert step.seed is not None
            for k in range(2, step.iteration + 1):
                ckpt = run.layout.checkpoint(step.method, step.seed, k - 1)
                if not is_done(run.layout.iter_dir(step.method, step.seed, k)) and removed(ckpt) is not None:
                    out.append(f"{step.id} (iteration {k}) needs {ckpt.relative_to(run.root)}")
    return out


def check_plannable(run: Run) -> None:
    """Refuse, before any work, a run whose pending steps need removed weights (ConfigError, exit 2)."""
    need = blocked(run)
    if need:
        shown = "; ".join(need[:3]) + (f"; and {len(need) - 3} more" if len(need) > 3 else "")
        raise ConfigError(
            f"{run.root}: {len(need)} planned step(s) need checkpoint weights removed by shared.train.keep_checkpoints "
            f"({shown}); rerun with the settings those checkpoints were trained and evaluated with, or use a new "
            "--output (removed weights are never restored)")


def lost(run: Run) -> list[Path]:
    """Checkpoints the current policy keeps whose weights an earlier policy removed."""
    policy = run.cfg.shared.train.keep_checkpoints
    out = []
    for train, k in _checkpoints(run):
        assert train.seed is not None
        ckpt = run.layout.checkpoint(train.method, train.seed, k)
        rec = removed(ckpt)
        if rec is not None and keeps(policy, k, train.iteration) and not weight_files(ckpt):
            out.append(ckpt)
    return out


def warn_lost(run: Run) -> None:
    gone = lost(run)
    if gone:
        was = sorted({str((removed(p) or {}).get("policy")) for p in gone})
        log.warning("shared.train.keep_checkpoints=%s keeps %d checkpoint(s) whose weights keep_checkpoints=%s "
                    "removed before (%s): their results stay; their weights would need retraining, in a new --output",
                    run.cfg.shared.train.keep_checkpoints, len(gone), "/".join(was),
                    ", ".join(str(p.relative_to(run.root)) for p in gone[:3]) + (" ..." if len(gone) > 3 else ""))


# --- the dry run's disk estimate -------------------------------------------------------------------

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def parameter_count(model: str) -> int | None:
    """Numbers held by a local model folder's safetensors files (read from their headers), else None."""
    try:
        folder = Path(resolve(model))
    except ModelError:
        return None
    total = 0
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    for path in files:
        with open(path, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for name, info in header.items():
            if name != "__metadata__":
                n = 1
                for d in info["shape"]:
                    n *= d
                total += n
    return total or None


def checkpoint_bytes(cfg: ExperimentConfig) -> int | None:
    """The weights of one checkpoint as stored (the training dtype, or bf16), from the starting model's size."""
    n = parameter_count(cfg.shared.model)
    if n is None:
        return None
    t = cfg.shared.train
    per = 2 if t.checkpoint_dtype == "bf16" or t.precision == "bf16-weights" else 4
    return n * per


def simulate(cfg: ExperimentConfig) -> tuple[int, int, int]:
    """(checkpoints written, kept at the end, most on disk at once) when one process runs the plan
    in order, pruning after every step as the runner does."""
    policy, steps = cfg.shared.train.keep_checkpoints, plan_steps(cfg)
    on_disk: set[tuple[str, int, int]] = set()
    evaluated: set[tuple[str, int | None, int]] = set()
    trained: set[tuple[str, int, int]] = set()
    last = {(s.method, s.seed): s.iteration for s in steps if s.kind == "train"}
    written = peak = 0

    def sweep() -> None:
        for m, s, k in list(on_disk):
            n = last[(m, s)]
            if not keeps(policy, k, n) and (m, s, k) in evaluated and (k == n or (m, s, k + 1) in trained):
                on_disk.discard((m, s, k))

    for step in steps:
        if step.kind == "train":
            assert step.seed is not None
            for k in range(1, step.iteration + 1):
                on_disk.add((step.method, step.seed, k))
                trained.add((step.method, step.seed, k))
                written += 1
                peak = max(peak, len(on_disk))
        else:
            evaluated.add((step.method, step.seed, step.iteration))  # type: ignore[arg-type]
        sweep()
    return written, len(on_disk), peak


def disk_plan(cfg: ExperimentConfig, size: float | None = None) -> str:
    """One line for the dry run: the checkpoints' disk at the end and at most, under the policy. `size`: one
    checkpoint's bytes where the caller knows them (harness.estimate, from the model's published config); else
    from the starting model's files."""
    written, kept, peak = simulate(cfg)
    size = size if size is not None else checkpoint_bytes(cfg)
    t = cfg.shared.train

    def gb(n: int) -> str:
        return f"{n * size / 1e9:.2f} GB" if size else "size unknown (the model is not a local folder)"

    each = f"{size / 1e6:.0f} MB each" if size else "size unknown"
    return (f"disk: {written} checkpoint(s) written ({each}, {t.checkpoint_dtype} dtype); "
            f"shared.train.keep_checkpoints={t.keep_checkpoints} keeps {kept} at the end ({gb(kept)}), "
            f"at most {peak} at once ({gb(peak)}, one process), plus the evaluation and training records (small)")
