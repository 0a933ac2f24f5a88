"""Sharded training (FSDP through accelerate): full weights and optimizer state out of the
shards, for the resumable state and the final Hugging Face checkpoint.

Under data parallel (DDP) every process holds the whole model, so `trainers.state` saves the
main process's copy. Under FSDP each process holds a shard (`DTensor` parameters), so:

- `save_sharded_state` gathers the full trainable weights and the full optimizer state onto
  the main process (a collective: every process calls it) and writes them with the scheduler,
  RNG states and counters, in `trainers.state`'s atomic folder;
- `load_sharded_state` gives every process the saved full state, which it re-shards into
  its own parameters and optimizer (`torch.distributed.checkpoint.state_dict`);
- `full_model` gathers the trained weights into a fresh CPU copy of the policy on the main
  process, which `trainers.state.save_checkpoint` writes (LoRA merged) so that
  `from_pretrained` loads it.

`enable_cpu_fsdp` makes an FSDP launch (`accelerate launch --use_fsdp --fsdp_version 2`) shard
on the CPU too: accelerate keeps a CPU multi-process launch as plain data parallel even when
FSDP was asked for, which would silently train unsharded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from gsil_bench.core.errors import GsilError
from gsil_bench.core.io import atomic_path, atomic_write_json, read_json
from gsil_bench.trainers.state import set_rng_state

PREFIX = "model."  # the loop prepares LogpsModule(model): its state-dict keys start with "model."


def enable_cpu_fsdp(acc: Any) -> None:
    """On a CPU launch that asked for FSDP, switch accelerate from data parallel to FSDP2."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    if acc.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise GsilError("FSDP on the CPU needs FSDP2: launch with `accelerate launch --use_fsdp --fsdp_version 2 "
                        "--num_processes N ...` (only FSDP2 is switched on for CPU launches)")
    from accelerate.state import PartialState

    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = DistributedType.FSDP
    # every later AcceleratorState() copies PartialState's fields back over its own: set both
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_sharded(acc: Any) -> bool:
    """True when parameters are sharded across processes (FSDP, DeepSpeed)."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def check_sharding(acc: Any) -> None:
    """Refuse, before any training, a sharding whose state and checkpoint this module cannot
    gather yet (DeepSpeed, FSDP1), instead of failing at the first save."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP and getattr(acc.state.fsdp_plugin, "fsdp_version", 1) == 2:
        return
    raise GsilError(f"sharded training is supported with FSDP2 only (this launch: {acc.distributed_type}"
                    f"{', FSDP1' if acc.distributed_type == DistributedType.FSDP else ''}): launch with "
                    f"configs/accelerate/fsdp.yaml (fsdp_version: 2) or plain data parallel")


def _full(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(acc: Any, wrapped: Any) -> dict[str, torch.Tensor]:
    """The whole model's weights (keys as the unwrapped model names them) on the main
    process, on the CPU; {} on the others. Every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    check_sharding(acc)
    state = get_model_state_dict(wrapped, options=_full(cpu_offload=True))
    return {k.removeprefix(PREFIX): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def save_sharded_state(dest: Path, acc: Any, *, wrapped: Any, optimizer: Any, scheduler: Any,
                       rng: list[dict[str, Any]], info: dict[str, Any]) -> None:
    """`trainers.state.save_state` for sharded parameters (every process calls it)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    weights = full_state(acc, wrapped)
    optim = get_optimizer_state_dict(wrapped, _inner(optimizer), options=_full(cpu_offload=True))
    trainable = {n.removeprefix(PREFIX) for n, p in wrapped.named_parameters() if p.requires_grad}
    if acc.is_main_process:
        with atomic_path(dest, folder=True) as tmp:
            torch.save({k: v for k, v in weights.items() if k in trainable}, tmp / "model.pt")
            torch.save(optim, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rng, tmp / "rng.pt")
            atomic_write_json(tmp / "info.json", {**info, "sharded": True})
    acc.wait_for_everyone()


def load_sharded_state(src: Path, acc: Any, *, wrapped: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore a `save_sharded_state` snapshot into this process's shards; returns its info."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    info = dict(read_json(src / "info.json"))
    if not info.get("sharded"):
        raise GsilError(f"{src}: saved by an unsharded run; resume it without FSDP, or delete {src.parent}")
    weights = torch.load(src / "model.pt", map_location="cpu", weights_only=True)
    trainable = {n.removeprefix(PREFIX) for n, p in wrapped.named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        raise GsilError(f"{src}: saved weights do not match the model's trainable parameters "
                        f"(was LoRA or the model changed?)")
    set_model_state_dict(wrapped, {PREFIX + k: v for k, v in weights.items()}, options=_full(strict=False))
    optim = torch.load(src / "optimizer.pt", map_location="cpu", weights_only=False)
    set_optimizer_state_dict(wrapped, _inner(optimizer), optim_state_dict=optim, options=_full())
    scheduler.load_state_dict(torch.load(src / "scheduler.pt", map_location="cpu", weights_only=False))
    set_rng_state(torch.load(src / "rng.pt", map_location="cpu", weights_only=False)[acc.process_index])
    return info


def full_model(acc: Any, wrapped: Any, fresh: Any) -> Any:
    """Gather the trained weights into `fresh()` (an unsharded CPU copy of the policy, built on
    the main process only) and return it there; None on the other processes."""
    weights = full_state(acc, wrapped)
    if not acc.is_main_process:
        return None
    model = fresh()
    model.load_state_dict(weights, strict=True)
    return model


def _inner(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's AcceleratedOptimizer."""
    return getattr(optimizer, "optimizer", optimizer)
