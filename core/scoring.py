"""The one scoring path: a (prompt, response) pair encoded as training encodes it, and the
summed log-probs of its response tokens under a causal LM. Training (trainers.data,
trainers.logprobs), reference scoring (trainers.reference) and the held-out tasks
(tasks.heldout) all go through these functions, so what a checkpoint is trained on and
what it is scored on cannot drift apart.

- `encode(tokenizer, prompt, response, ...)` applies the chat template once and returns an
  `EncodedSeq(input_ids, response_start)`: the prompt's tokens an exact prefix of the full
  sequence, the response ending with the end-of-turn token (`<|im_end|>` for ChatML); the
  prompt is truncated from the left to `max_prompt_length`, then the response cut to fit.
- `collate(seqs, pad_id) -> Batch`: right-padded tensors (masks from lengths, never pad ids).
- `sequence_logps(model, batch, chunk) -> (logps_sum [B], n_tokens [B])`: the model body
  once, then the LM head `chunk` positions at a time, each chunk reduced at once to the
  next token's log-prob (logit minus logsumexp, float32) over response positions, so at
  most [B, chunk, vocab] logits exist; with gradients on, each chunk runs under
  non-reentrant activation checkpointing. Logit soft-capping (Gemma 2) and `logit_scale`
  (Cohere) are honoured.
- `score_batches(model, seqs, ...)`: the one batched driver: the same without gradients, in eval mode,
  batched by length (reference log-probs, the held-out NLL during training, the held-out tasks; training
  passes its own forward, which takes packed batches and the module accelerate wrapped).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from gsil_bench.core.errors import ConfigError, DataError
from gsil_bench.core.progress import Progress

Chat = list[dict[str, str]]


# --- tokenisation --------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedSeq:
    """A tokenised (prompt, response): input_ids[:response_start] is the prompt."""

    input_ids: list[int]
    response_start: int
    attention_mask: list[int] | None = None  # per-token attention (0 = masked key); None = all 1 (encoding "spin")

    @property
    def n_response(self) -> int:
        return len(self.input_ids) - self.response_start


def render(tokenizer: Any, prompt: Chat, response: str) -> tuple[str, str]:
    """(prompt text with the generation prompt, full text with the response), chat template applied once."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                        "use a chat (instruct) model or set one on its tokenizer")
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):
        raise DataError("the chat template does not render the conversation as the generation prompt followed "
                        "by the response; cannot mark the response tokens")
    return head, full


def _response_ids(tokenizer: Any, prompt_ids: list[int], head: str, full: str) -> list[int]:
    """Response token ids, from the joint tokenisation when the prompt's tokens are its prefix
    (the usual case: special tokens separate the turns), else from the response text alone."""
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids:
        ids = full_ids[len(prompt_ids):]
    else:
        ids = tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos in ids:  # end at the end-of-turn token (drop the template's trailing newline)
        ids = ids[: len(ids) - ids[::-1].index(eos)]
    else:
        ids = [*ids, eos]
    return ids


def encode(tokenizer: Any, prompt: Chat, response: str, *, max_prompt_length: int, max_length: int,
           max_response_length: int | None = None) -> EncodedSeq:
    """Tokenise a (prompt, response) with the chat template; keep the END of a long prompt
    (left truncation to max_prompt_length), then cut the response to fit max_length (and
    `max_response_length` tokens, when given)."""
    if max_prompt_length >= max_length:
        raise ConfigError(f"shared.train.max_prompt_length ({max_prompt_length}) must be < "
                          f"shared.train.max_length ({max_length})")
    head, full = render(tokenizer, prompt, response)
    prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    response_ids = _response_ids(tokenizer, prompt_ids, head, full)
    prompt_ids = prompt_ids[-max_prompt_length:]
    response_ids = response_ids[: max_length - len(prompt_ids)][:max_response_length]
    return EncodedSeq([*prompt_ids, *response_ids], len(prompt_ids))


# --- batches -------------------------------------------------------------------------


@dataclass
class Batch:
    """Tensors one forward pass reads; rows are sequences (padded collator).

    input_ids, attention_mask: [B, T]; response_mask: [B, T], 1 where the token is a response
    token whose log-prob counts (it is predicted from the positions before it).
    position_ids / sequence_index (optional, [B, T]): for packed (padding-free) batches,
    positions restarting at every sequence and the index of the sequence each token belongs
    to (-1 for padding); with sequence_index set, log-probs are summed per sequence index.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    position_ids: torch.Tensor | None = None
    sequence_index: torch.Tensor | None = None
    num_sequences: int | None = None  # with sequence_index: how many sequences (default: max index + 1)
    branch_index: torch.Tensor | None = None  # [1, T] packed shared prompts (trainers.packing.pack): 0 shared, k branch k
    sequence_tokens: int | None = None  # with shared prompts: the sequences' own tokens (each counts its prompt)

    def to(self, device: Any) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device),
                     move(self.position_ids), move(self.sequence_index), self.num_sequences, move(self.branch_index),
                     self.sequence_tokens)

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens of the batch's sequences (with shared prompts, each sequence counts its
        prompt, as unshared: the logged `tokens` do not depend on train.share_prompts)."""
        if self.sequence_tokens is not None:
            return self.sequence_tokens
        return int(self.attention_mask.sum())


def collate(seqs: Sequence[EncodedSeq], pad_id: int) -> Batch:
    """Right-padded batch: one row per sequence (masks come from lengths, never from pad ids,
    since the pad and end-of-turn tokens are often the same id)."""
    width = max(len(s.input_ids) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    response = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        n = len(s.input_ids)
        input_ids[row, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        attention[row, :n] = 1 if s.attention_mask is None else torch.tensor(s.attention_mask, dtype=torch.long)
        response[row, s.response_start:n] = 1
    return Batch(input_ids, attention, response)



# --- log-probs -----------------------------------------------------------------------


def unwrap(model: Any) -> Any:
    """The module inside DistributedDataParallel / accelerate wrappers (their `.module`): the one unwrap."""
    while hasattr(model, "module"):
        model = model.module
    return model


def causal_lm(model: Any) -> Any:
    """The underlying Hugging Face causal LM (through DDP, `trainers.logprobs.LogpsModule` and peft wrappers)."""
    model = unwrap(model)
    model = getattr(model, "wrapped_lm", model)  # trainers.logprobs.LogpsModule
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
    """(sum of response-token log-probs [B], response token counts [B]) computed chunk-wise, for a
    batch of one sequence per row; with `sequence_index` set, summed per sequence index instead.
    (A packed, padding-free batch goes through trainers.packing: trainers.logprobs.forward_logps.)"""
    logps, mask, first = token_logps(model, batch, chunk)
    if batch.sequence_index is None:
        return logps.sum(dim=1), mask.sum(dim=1)
    n = batch.num_sequences if batch.num_sequences is not None else int(batch.sequence_index.max()) + 1
    index = batch.sequence_index[:, 1:][:, first:]
    keep = index >= 0
    sums = logps.new_zeros(n).index_add(0, index[keep], logps[keep])
    counts = mask.new_zeros(n).index_add(0, index[keep], mask[keep])
    return sums, counts


Forward = Callable[[Any, Batch, int], tuple[torch.Tensor, torch.Tensor]]  # (model, batch, chunk) -> (sums, counts)


def score_batches(model: Any, seqs: Sequence[EncodedSeq], *, pad_id: int = 0, batch_size: int = 4, chunk: int = 128,
                  forward: Forward | None = None, autocast: Callable[[], Any] | None = None, device: Any = None,
                  desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed response log-probs [N] float32, response tokens [N] long) of `seqs` under `model`, teacher-forced:
    the one batched scoring driver (reference log-probs, the held-out NLL during training, the held-out tasks).

    The model in eval mode (its mode restored after), no gradients, right-padded batches of similar lengths
    (longest first: a batch that does not fit fails at once), results in input order. `forward(model, batch,
    chunk)` computes a batch's log-probs (default `sequence_logps`; training passes its own, which also takes
    the module accelerate wrapped), `autocast` a context factory (training's mixed precision), `device` where
    batches go (default: the model's first parameter's), `desc` a progress bar."""
    forward = forward or sequence_logps
    device = device if device is not None else next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].input_ids))
    sums = torch.zeros(len(seqs), dtype=torch.float32)
    counts = torch.zeros(len(seqs), dtype=torch.long)
    was_training = model.training
    model.eval()
    bar = Progress(len(seqs), desc) if desc else None
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                rows = torch.as_tensor(order[start : start + batch_size])
                batch = collate([seqs[i] for i in rows.tolist()], pad_id).to(device)
                with autocast() if autocast is not None else contextlib.nullcontext():
                    logps, n = forward(model, batch, chunk)
                sums[rows], counts[rows] = logps.float().cpu(), n.round().long().cpu()
                if bar is not None:
                    bar.update(len(rows))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return sums, counts
