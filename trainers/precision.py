"""Precision `bf16-weights`: bf16 weights and bf16 compute with an fp32 master copy, as the releases trained.

Both releases train under DeepSpeed ZeRO-3's bf16 mode (GSIL scripts/finetune.sh:20, :26, :48; SPIN
configs/deepspeed_zero3.yaml:9-14 with configs/config.yaml:15): the model holds bf16 weights and runs forward and
backward in bf16, and the optimizer steps an fp32 copy of every weight, then writes it back to the bf16 weights
rounded. Stepping the bf16 weights themselves loses every update below half a bf16 step of the weight: at the
papers' learning rate (5e-7) about 99.7% of the embedded model's weights would never move.

- One device and data parallel (`MasterCopy`): the model holds bf16 weights; the optimizer is built over fp32
  copies of them. Each optimizer step moves the (all-reduced) bf16 gradients into the copies' fp32 `.grad`,
  clips and steps there, and writes the copies back, rounded, into the bf16 weights. The resumable state saves
  the fp32 copies (not the rounded weights), so a resumed run continues exactly.
- FSDP2 (`fsdp_master_policy`): the sharded parameters are fp32 (the bf16 weights cast up exactly) and FSDP2's
  `MixedPrecisionPolicy(param_dtype=bf16)` gathers them in bf16 for compute; gradients reach the fp32 shards,
  which the optimizer steps; the resumable state gathers the fp32 weights. Numerically the same scheme.

No autocast runs under `bf16-weights` (`trainers.api.make_accelerator`): the compute is bf16 because the weights
the model computes with are, as under DeepSpeed (which runs no autocast either).
"""

from __future__ import annotations

from typing import Any

import torch

BF16_WEIGHTS = "bf16-weights"


class MasterCopy:
    """fp32 master copies of a model's low-precision trainable parameters (fp32 ones are stepped directly)."""

    def __init__(self, model: Any) -> None:
        self.named: list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]] = []
        self.params: list[torch.nn.Parameter] = []  # what the optimizer steps and the loop clips, in model order
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if p.dtype == torch.float32:
                self.params.append(p)
                continue
            master = torch.nn.Parameter(p.detach().float().clone())
            self.named.append((name, p, master))
            self.params.append(master)

    def grads_to_master(self) -> None:
        """Move each low-precision gradient (synchronised across processes) to its master's fp32 `.grad`."""
        for _, p, master in self.named:
            master.grad = None if p.grad is None else p.grad.detach().float()
            p.grad = None

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stepped master values into the model's weights (rounded to their dtype)."""
        for _, p, master in self.named:
            p.copy_(master)

    def weights(self) -> dict[str, torch.Tensor]:
        """The fp32 master values by parameter name, on the CPU (what a resumable state saves)."""
        return {name: master.detach().cpu().clone() for name, _, master in self.named}

    @torch.no_grad()
    def load(self, weights: dict[str, torch.Tensor]) -> None:
        """Restore saved master values (`weights()`), and the model's weights from them."""
        for name, p, master in self.named:
            master.copy_(weights[name])
            p.copy_(master)


def master_copy(model: Any, precision: str, sharded: bool) -> MasterCopy | None:
    """The fp32 master copy the optimizer steps under `bf16-weights` without sharding, else None (the
    parameters themselves are stepped: fp32 ones, or FSDP2's fp32 shards, `fsdp_master_policy`)."""
    return MasterCopy(model) if precision == BF16_WEIGHTS and not sharded else None


def fsdp_master_policy(acc: Any, model: Any, precision: str) -> None:
    """Under FSDP2 with `bf16-weights`: fp32 parameters to shard (the bf16 weights cast up, exactly) and a
    MixedPrecisionPolicy that gathers them in bf16 for compute. Call before `accelerator.prepare`."""
    if precision != BF16_WEIGHTS:
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy

    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    # gradients reduced in bf16, as data parallel over bf16 weights (and DeepSpeed's bf16 mode) communicates them
    acc.state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                                        reduce_dtype=torch.bfloat16)
