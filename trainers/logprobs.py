"""Per-sequence response log-probs for training, without keeping the batch's [B, T, vocab]
logits: core.scoring's computation (the one scoring path), plus packed batches and the module
the training loop hands to accelerate.

`batch_logps(model, batch, chunk) -> (logps_sum [B], n_tokens [B])` is the one forward
every method, the held-out NLL and the packed collator share (the batched no-grad scoring
of reference log-probs and held-out sets is core.scoring.score_batches, given this forward
where the model is the training's):

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

from gsil_bench.core.scoring import Batch, causal_lm, sequence_logps, token_logps, unwrap
from gsil_bench.trainers.packing import batch_packed_logps

__all__ = ["LogpsModule", "batch_logps", "causal_lm", "forward_logps", "full_logits_logps", "token_logps"]


def forward_logps(model: Any, batch: Batch, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs [B], response token counts [B]) computed chunk-wise.

    A packed batch (one row with restarting `position_ids` and `sequence_index`, from the
    "packed" collator) goes through trainers.packing, whose attention stays inside each
    sequence; its head chunk is `chunk` positions per packed sequence, the same memory as a
    padded batch's. Every other batch is core.scoring.sequence_logps's."""
    if batch.sequence_index is not None and batch.position_ids is not None and batch.input_ids.shape[0] == 1:
        n = batch.num_sequences if batch.num_sequences is not None else int(batch.sequence_index.max()) + 1
        logps_sum, counts = batch_packed_logps(model, batch, chunk * max(1, n))
        return logps_sum, counts.to(torch.float32)
    return sequence_logps(model, batch, chunk)


class LogpsModule(torch.nn.Module):
    """A causal LM whose forward returns per-sequence response log-probs; the module the
    training loop hands to `accelerator.prepare` (so DDP hooks see this forward)."""

    def __init__(self, model: Any, chunk: int) -> None:
        super().__init__()
        self.model = model
        self.chunk = chunk

    @property
    def wrapped_lm(self) -> Any:
        """The causal LM inside (core.scoring.causal_lm unwraps it)."""
        return self.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None, sequence_index: torch.Tensor | None = None,
                num_sequences: int | None = None, branch_index: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = Batch(input_ids, attention_mask, response_mask, position_ids, sequence_index, num_sequences,
                      branch_index)
        return forward_logps(self.model, batch, self.chunk)

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
    if isinstance(unwrap(model), LogpsModule):  # the wrapper's forward: DDP's hooks see this call
        return model(batch.input_ids, batch.attention_mask, batch.response_mask, batch.position_ids,
                     batch.sequence_index, batch.num_sequences, batch.branch_index)
    return forward_logps(model, batch, chunk)


def full_logits_logps(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation (tests): the plain full-logits computation."""
    logits = causal_lm(model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = batch.response_mask[:, 1:].float()
    return (logp * mask).sum(dim=1), mask.sum(dim=1)
