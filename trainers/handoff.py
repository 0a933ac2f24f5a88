"""The trained policy handed to the later steps of this process (core.resident), so that the
next iteration (its reference, its self-play generator, the copy it trains) and the checkpoint's
evaluation use the weights already in memory instead of reading the checkpoint back.

`offer_trained` is called right after the checkpoint is written, with the model as saved; the
entry is keyed by the checkpoint folder's files, so it is served only while those files are the
ones just written. It is offered only where the in-memory model is exactly what loading the
checkpoint would give: one process (no sharding), no LoRA (the saved weights are merged ones), no
gradient checkpointing, on the CPU; the packed-attention switch of training
(trainers.packing) is undone first, the model set to eval mode.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gsil_bench.core import resident
from gsil_bench.trainers.packing import PACKED_PREFIX

log = logging.getLogger(__name__)


def offer_trained(checkpoint: Path, model: Any, *, processes: int, lora: bool, checkpointing: bool) -> bool:
    """Keep the policy just saved to `checkpoint` for this process's later steps; True when kept."""
    device = next(model.parameters()).device
    if processes > 1 or lora or checkpointing or device.type != "cpu":
        return False
    impl = model.config._attn_implementation or ""
    if impl.startswith(PACKED_PREFIX):  # as loading the checkpoint gives it: the model's own attention
        model.set_attn_implementation(impl.removeprefix(PACKED_PREFIX))
    model.eval()
    kept = resident.offer(checkpoint, model, model.dtype, device)
    if kept:
        log.debug("%s: kept in memory for the steps that read it", checkpoint)
    return kept
