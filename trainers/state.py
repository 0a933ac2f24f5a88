"""Crash-safe training state: resumable snapshots, final checkpoints, the kill test hook.

- `save_state` writes `iter-<k>/state/` every `train.save_every` optimizer steps: trainable
  weights, optimizer, scheduler, every process's RNG states and the loop's counters (step,
  tokens, wall time). It is written to a temporary folder and swapped in by rename, so a
  crash at any moment leaves either the old or the new snapshot, never a torn one.
- `load_state` restores it; `save_checkpoint` writes the Hugging Face checkpoint (LoRA
  adapters merged first) the same way.
- `kill_hook(event, count)`: when the environment variable GSIL_TEST_KILL is
  "<event>:<count>" (e.g. "step:3", "generated:4"; "step@2:3" for step 3 of iteration 2
  only; "pruned:1" in harness.retention), the process SIGKILLs itself there. The
  resume tests use it to die at a known point exactly as `kill -9` would. GSIL_TEST_PAUSE, in the
  same form, makes the process wait there (up to 10 minutes) for a signal instead: the Ctrl-C tests
  interrupt it at a point they control, never in a race with the run finishing.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import torch

from gsil_bench.core.errors import FileError
from gsil_bench.core.io import atomic_path, atomic_write_json, read_json

KILL_ENV = "GSIL_TEST_KILL"
PAUSE_ENV = "GSIL_TEST_PAUSE"
PAUSE_S = 600


def kill_hook(event: str, count: int, iteration: int | None = None) -> None:
    """SIGKILL this process if GSIL_TEST_KILL is f"{event}:{count}", or f"{event}@{iteration}:{count}"
    to target one self-play iteration (test hook); wait for a signal there if GSIL_TEST_PAUSE is. In a
    multi-process launch only the main process (RANK 0) kills itself, after finishing its own writes;
    the launcher then stops the others."""
    here = (f"{event}:{count}", f"{event}@{iteration}:{count}")
    if os.environ.get("RANK", "0") != "0":
        return
    if os.environ.get(KILL_ENV) in here:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_ENV) in here:  # a signal's handler (Ctrl-C: KeyboardInterrupt) ends the wait
        deadline = time.monotonic() + PAUSE_S
        while time.monotonic() < deadline:
            time.sleep(1)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The parameters being trained (all of them, or only LoRA adapters), on the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_state(dest: Path, *, model: Any, optimizer: Any, scheduler: Any, rng: list[dict[str, Any]],
               info: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> None:
    """Snapshot everything needed to continue exactly (main process only). `weights`: the fp32 master copies
    of bf16 weights (`trainers.precision.MasterCopy.weights`), saved instead of the rounded weights."""
    with atomic_path(dest, folder=True) as tmp:
        torch.save(trainable_state(model) | (weights or {}), tmp / "model.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng, tmp / "rng.pt")
        atomic_write_json(tmp / "info.json", info)


def load_state(src: Path, *, model: Any, optimizer: Any, scheduler: Any, process_index: int,
               master: Any = None) -> dict[str, Any]:
    """Restore a snapshot written by save_state; returns its info (step, tokens, ...). `master`: the run's
    `trainers.precision.MasterCopy`, restored from the saved fp32 values."""
    weights = torch.load(src / "model.pt", map_location="cpu", weights_only=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        raise FileError(f"{src}: saved weights do not match the model's trainable parameters "
                         f"(was LoRA or the model changed?)")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise FileError(f"{src}: unexpected weights {unexpected[:3]}")
    if master is not None:
        master.load(weights)
    optimizer.load_state_dict(torch.load(src / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(src / "scheduler.pt", map_location="cpu", weights_only=False))
    rng = torch.load(src / "rng.pt", map_location="cpu", weights_only=False)
    set_rng_state(rng[process_index])
    return dict(read_json(src / "info.json"))


def save_checkpoint(model: Any, tokenizer: Any, dest: Path, meta: dict[str, Any], *, adapter: bool = False,
                    dtype: torch.dtype | None = None) -> Any:
    """Hugging Face checkpoint that AutoModelForCausalLM.from_pretrained loads; LoRA adapters
    are merged into the weights first (with `adapter`, the adapter alone is also saved to
    `adapter/`, loadable with peft onto the iteration's starting model); `dtype`: the weights
    converted to it first (train.checkpoint_dtype). `meta` is written beside it as gsil_meta.json.
    Returns the model as saved (merged, converted)."""
    with atomic_path(dest, folder=True) as tmp:
        if hasattr(model, "merge_and_unload"):
            if adapter:
                model.save_pretrained(tmp / "adapter", safe_serialization=True)
            model = model.merge_and_unload()
        if dtype is not None and model.dtype != dtype:
            model = model.to(dtype)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "gsil_meta.json", meta)
    return model
