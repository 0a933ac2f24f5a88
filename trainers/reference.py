"""Reference-model log-probs, computed once per iteration before training and cached.

The reference of iteration k (the starting model for k = 1, iteration k-1's checkpoint
after) is fixed for the whole iteration, so the log-probs of every real and generated
response under it are computed up front (`reference_logps`), saved as `ref_logps.pt`
(`save_ref` / `load_ref`, keyed by a hash of the model and the token ids) and the model is
freed before the policy is trained. The same chunked forward as training is used, through the
one scoring driver (`core.scoring.score_batches`) under the same autocast, so the log ratio of
the untrained policy is zero up to float rounding (batches differ in padding).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gsil_bench.core import resident
from gsil_bench.core.errors import FileError
from gsil_bench.core.io import atomic_path
from gsil_bench.core.models import ModelError, check_weights, resolve
from gsil_bench.core.prefix import score_shared
from gsil_bench.core.scoring import EncodedSeq, score_batches
from gsil_bench.trainers.data import TrainItem

log = logging.getLogger(__name__)


@dataclass
class RefLogps:
    """Reference log-probs by example index: real[i], gen[i] (gen is None for SFT)."""

    real: torch.Tensor  # [N] float32
    gen: torch.Tensor | None = None  # [N] float32
    key: str = ""  # hash of what they were computed from

    def take(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return self.real[idx], None if self.gen is None else self.gen[idx]


def sequences_logps(model: Any, seqs: Sequence[EncodedSeq], *, batch_size: int, chunk: int, pad_id: int,
                    autocast: Any = None, desc: str = "reference log-probs") -> torch.Tensor:
    """Summed response log-probs of `seqs` under `model`, [N] float32 (core.scoring.score_batches: eval
    mode, no gradients, batched by length)."""
    return score_batches(model, seqs, pad_id=pad_id, batch_size=batch_size, chunk=chunk, autocast=autocast,
                         desc=desc)[0]


def reference_logps(model: Any, items: Sequence[TrainItem], *, batch_size: int, chunk: int, pad_id: int,
                    autocast: Any = None, share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(real [len(items)], gen [len(items)] or None) in the order of `items`. With `share_prompts`
    (train.share_prompts), a pair's prompt runs once for both responses (core.prefix.score_shared)."""
    if share_prompts and all(it.gen is not None for it in items):
        seqs = [it.real for it in items] + [it.gen for it in items if it.gen is not None]
        with autocast() if autocast is not None else contextlib.nullcontext():
            both = score_shared(model, seqs, batch_size=batch_size, chunk=chunk)
        sums = torch.tensor([lp for lp, _ in both], dtype=torch.float32)
        return sums[: len(items)], sums[len(items) :]
    real = sequences_logps(model, [it.real for it in items], batch_size=batch_size, chunk=chunk, pad_id=pad_id,
                           autocast=autocast, desc="reference log-probs (real)")
    if any(it.gen is None for it in items):
        return real, None
    gen = sequences_logps(model, [it.gen for it in items if it.gen is not None], batch_size=batch_size,
                          chunk=chunk, pad_id=pad_id, autocast=autocast, desc="reference log-probs (generated)")
    return real, gen


def save_ref(path: str | Path, ref: RefLogps) -> None:
    """Write ref_logps.pt atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        torch.save({"real": ref.real, "gen": ref.gen, "key": ref.key}, tmp)


def load_ref(path: str | Path, key: str | None = None) -> RefLogps:
    """Read ref_logps.pt; with `key`, check it was computed from the same inputs."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    ref = RefLogps(data["real"], data["gen"], data.get("key", ""))
    if key is not None and ref.key != key:
        raise FileError(f"{path}: reference log-probs were computed from other inputs (key {ref.key} != {key})")
    return ref


def weights_dtype(precision: str) -> torch.dtype:
    """The dtype models hold their weights in: bf16 for precision "bf16-weights" (as the official runs load them,
    GSIL scripts/finetune.sh:20 and gsil/generate.py:82), else fp32 (mixed precision comes from autocast)."""
    return torch.bfloat16 if precision == "bf16-weights" else torch.float32


def load_causal_lm(name: str, *, revision: str | None, device: Any, dtype: torch.dtype = torch.float32,
                   private: bool = False) -> Any:
    """A causal LM in `dtype` (fp32 by default: mixed precision comes from autocast) on `device`, in eval
    mode, without reloading its tokenizer (trainers.api loads that once per method). A local folder's
    model is shared with the later steps of this process (core.resident: read-only); `private` gives
    one the caller may train."""
    from transformers import AutoModelForCausalLM

    src = resolve(name)

    def load() -> Any:
        try:
            check_weights(src)
            model = AutoModelForCausalLM.from_pretrained(src, revision=revision, dtype=dtype)
        except OSError as err:
            raise ModelError(f"model {name!r}: cannot load ({err})") from None
        return model.to(device).eval()

    return resident.model(src, dtype, device, load, private=private)


def free_model(model: Any) -> None:
    """Drop a model's parameters from memory (and the CUDA cache); a model kept for later steps
    (core.resident) stays."""
    if resident.is_kept(model):
        return
    for p in model.parameters():
        p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
