"""Per-sequence response log-probs without keeping the batch's [B, T, vocab] logits.

`batch_logps(model, batch, chunk) -> (logps_sum [B], n_tokens [B])` is the one forward
every method, the reference computation and the packed collator share:

1. the model body (the decoder without its LM head) runs once and returns hidden states
   [B, T, H];
2. the LM head is applied `chunk` sequence positions at a time; each chunk's logits are
   reduced at once to the log-prob of the next token (logit minus logsumexp, in float32)
   and summed over response positions, so at most [B, chunk, vocab] logits exist at a time;
3. with gradients on, each chunk runs under non-reentrant activation checkpointing, so the
   backward pass recomputes the chunk's logits instead of keeping them.

Only response tokens count (`Batch.response_mask`); prompt-only chunks are skipped. A packed
batch sets `Batch.sequence_index` and `position_ids`; log-probs are then summed per sequence
index (with `Batch.num_sequences` results). `LogpsModule` wraps a causal LM so that this
computation is its `forward`, which is what DistributedDataParallel must wrap.

Logit soft-capping (Gemma 2) and `logit_scale` (Cohere) configs are honoured.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from gsil_bench.core.errors import ConfigError
from gsil_bench.trainers.data import Batch


def causal_lm(model: Any) -> Any:
    """The underlying Hugging Face causal LM (through DDP and peft wrappers)."""
    while hasattr(model, "module"):  # DistributedDataParallel / accelerate wrappers
        model = model.module
    if isinstance(model, LogpsModule):
        model = model.model
    if hasattr(model, "get_base_model"):  # peft: LoRA layers are injected in place
        model = model.get_base_model()
    return model


def _head_fn(lm: Any) -> Any:
    head = lm.get_output_embeddings()
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)

    def chunk_logps(hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # the head's weight, not a call of the head module: under FSDP every module call is a
        # gather of its shards, and processes with different numbers of chunks would deadlock
        logits = torch.nn.functional.linear(hidden, head.weight, getattr(head, "bias", None)).float()
        if scale is not None:
            logits = logits * scale
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)

    return chunk_logps


def token_logps(model: Any, batch: Batch, chunk: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-position log-probs of the next token, masked to response positions: returns
    (logps [B, T-1-first], mask [B, T-1-first], first) where column j is position first+j."""
    if chunk < 1:
        raise ConfigError(f"shared.train.logprob_chunk: must be >= 1, got {chunk}")
    lm = causal_lm(model)
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    if batch.position_ids is not None:
        kwargs["position_ids"] = batch.position_ids
    hidden = lm.base_model(**kwargs).last_hidden_state[:, :-1]  # [B, T-1, H]: position t predicts t+1
    targets = batch.input_ids[:, 1:]
    mask = batch.response_mask[:, 1:].to(torch.float32)
    cols = mask.any(dim=0).nonzero()
    first = int(cols[0]) if len(cols) else mask.shape[1]
    head = _head_fn(lm)
    grad = torch.is_grad_enabled()
    parts = []
    for start in range(first, mask.shape[1], chunk):
        h, y = hidden[:, start : start + chunk], targets[:, start : start + chunk]
        lp = checkpoint(head, h, y, use_reentrant=False) if grad else head(h, y)
        parts.append(lp * mask[:, start : start + chunk])
    if not parts:
        empty = hidden.new_zeros((mask.shape[0], 0), dtype=torch.float32)
        return empty + hidden[:, :0, 0].float(), mask[:, first:], first  # keeps the graph connected
    return torch.cat(parts, dim=1), mask[:, first:], first


def sequence_logps(model: Any, batch: Batch, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs [B], response token counts [B]) computed chunk-wise.

    A packed batch (one row with restarting `position_ids` and `sequence_index`, from the
    "packed" collator) goes through trainers.packing, whose attention stays inside each
    sequence; its head chunk is `chunk` positions per packed sequence, the same memory as a
    padded batch's. Other batches with a `sequence_index` (one sequence per row) are summed
    per index here."""
    n = None
    if batch.sequence_index is not None:
        n = batch.num_sequences if batch.num_sequences is not None else int(batch.sequence_index.max()) + 1
        if batch.position_ids is not None and batch.input_ids.shape[0] == 1:
            from gsil_bench.trainers.packing import batch_packed_logps

            logps_sum, counts = batch_packed_logps(model, batch, chunk * max(1, n))
            return logps_sum, counts.to(torch.float32)
    logps, mask, first = token_logps(model, batch, chunk)
    if batch.sequence_index is None or n is None:
        return logps.sum(dim=1), mask.sum(dim=1)
    index = batch.sequence_index[:, 1:][:, first:]
    keep = index >= 0
    sums = logps.new_zeros(n).index_add(0, index[keep], logps[keep])
    counts = mask.new_zeros(n).index_add(0, index[keep], mask[keep])
    return sums, counts


class LogpsModule(torch.nn.Module):
    """A causal LM whose forward returns per-sequence response log-probs; the module the
    training loop hands to `accelerator.prepare` (so DDP hooks see this forward)."""

    def __init__(self, model: Any, chunk: int) -> None:
        super().__init__()
        self.model = model
        self.chunk = chunk

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None, sequence_index: torch.Tensor | None = None,
                num_sequences: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch = Batch(input_ids, attention_mask, response_mask, position_ids, sequence_index, num_sequences)
        return sequence_logps(self.model, batch, self.chunk)

    # The embedding accessors and `tie_weights` of the wrapped model: accelerate's FSDP2 wrapping
    # looks for them on the module it prepares to keep tied input/output embeddings one parameter
    # (without them a tied model trained under FSDP lost the embedding's gradient and update).
    def get_input_embeddings(self) -> Any:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> Any:
        return self.model.get_output_embeddings()

    def tie_weights(self) -> None:
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights()


def batch_logps(model: Any, batch: Batch, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence response log-prob sums [B] and response token counts [B].

    `model` is a Hugging Face causal LM (optionally peft-wrapped) or a `LogpsModule`
    (optionally wrapped by DDP/accelerate); `batch` a `trainers.data.Batch`."""
    inner = model
    while hasattr(inner, "module"):
        inner = inner.module
    if isinstance(inner, LogpsModule):
        return model(batch.input_ids, batch.attention_mask, batch.response_mask, batch.position_ids,
                     batch.sequence_index, batch.num_sequences)
    return sequence_logps(model, batch, chunk)


def full_logits_logps(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation (tests): the plain full-logits computation."""
    logits = causal_lm(model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = batch.response_mask[:, 1:].float()
    return (logp * mask).sum(dim=1), mask.sum(dim=1)
