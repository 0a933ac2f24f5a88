"""Padding-free (packed) batches and their per-sequence response log-probs.

`pack` concatenates tokenised sequences into one row with no padding: position ids
restart at 0 for every sequence, and per-token segment ids say which sequence a token
belongs to. `packed_logps` runs the model once over the packed row and returns, per
sequence, the summed log-probability of its response tokens and their count: the same
quantities as the padded path (`trainers.logprobs.batch_logps`), for fewer FLOPs.

Attention never crosses sequences. `enable_packed_attention` switches a model to a
registered attention function (`gsil_packed_<sdpa|eager>`) that, for a packed call
(one carrying `cu_seq_lens_*`), runs Flash-Attention varlen on CUDA
(`torch.nn.attention.varlen`) and, elsewhere, exact causal SDPA per sequence; every
other call (generation, padded batches) goes to the model's original attention, so
nothing else changes. Without the switch, transformers itself builds a
block-diagonal causal mask from the restarting position ids (masking_utils
`find_packed_sequence_indices`), which is also exact but spends T x T attention.

The log-prob head is chunked and fused: only positions that predict a response token
go through the LM head, `chunk` tokens at a time, and the backward recomputes each
chunk's logits instead of keeping the [tokens, vocab] matrix (memory O(chunk x V)).
"""

from __future__ import annotations

import contextvars
import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from gsil_bench.core.errors import ConfigError
from gsil_bench.core.scoring import Batch, causal_lm

PACKED_PREFIX = "gsil_packed_"
BRANCH_KWARG = "gsil_group_masks"  # shared prompts: each group's attention mask (group_masks), to the attention
_PACKED_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("gsil_packed_call", default=False)


class EncodedLike(Protocol):
    """What `pack` needs of an encoded example (trainers.data.EncodedSeq satisfies it)."""

    input_ids: Sequence[int]
    response_start: int


@dataclass
class PackedBatch:
    """N sequences concatenated into one row of T tokens, no padding."""

    input_ids: torch.Tensor  # [1, T] token ids
    position_ids: torch.Tensor  # [1, T] restarting at 0 for every sequence
    segment_ids: torch.Tensor  # [T] index of the sequence each token belongs to
    response_mask: torch.Tensor  # [T] True where the token is a scored response token
    cu_seqlens: torch.Tensor  # [N + 1] int32 cumulative sequence lengths
    max_seqlen: int
    pred_index: torch.Tensor  # [M] positions whose hidden state predicts a response token
    targets: torch.Tensor  # [M] the response tokens they predict
    target_segment: torch.Tensor  # [M] the sequence of each target
    # shared prompts (`pack(..., share_prompts=True)`): per token, 0 for a group's shared prompt, k >= 1 for its
    # k-th branch (one sequence's last prompt token and response); cu_seqlens then bound groups, not sequences
    branch_ids: torch.Tensor | None = None
    num_sequences: int | None = None  # with branch_ids: how many sequences (cu_seqlens counts groups)

    @property
    def n_seqs(self) -> int:
        if self.num_sequences is not None:
            return self.num_sequences
        return int(self.cu_seqlens.numel() - 1)

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def lengths(self) -> list[int]:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()

    def to(self, device: torch.device | str) -> PackedBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[key] = value.to(device, non_blocking=True)
        return PackedBatch(**moved)


def _fields(seq: Any, index: int) -> tuple[list[int], int]:
    if isinstance(seq, dict):
        ids, start = seq.get("input_ids"), seq.get("response_start")
    elif isinstance(seq, tuple):
        ids, start = seq
    else:
        ids, start = getattr(seq, "input_ids", None), getattr(seq, "response_start", None)
    if ids is None or start is None:
        raise TypeError(f"pack: sequence {index} has no input_ids/response_start (got {type(seq).__name__})")
    ids = list(ids)
    if not ids:
        raise ValueError(f"pack: sequence {index} is empty")
    if not 1 <= int(start) <= len(ids):
        raise ValueError(
            f"pack: sequence {index}: response_start={start} must be in [1, {len(ids)}] "
            "(at least one prompt token precedes the response)"
        )
    return ids, int(start)


def pack(seqs: Sequence[Any], *, share_prompts: bool = False) -> PackedBatch:
    """Pack encoded sequences (objects, dicts or (input_ids, response_start) tuples)
    into one padding-free row. Response token t of a sequence is scored from the
    hidden state at t - 1 of the same sequence, as in the padded path.

    `share_prompts`: sequences with the same prompt tokens (at least 2) form one group: the prompt
    but its last token once (positions 0..P-2), then per sequence a branch, its last prompt token
    and its response (positions P-1...), attending to the shared part and to itself only
    (`branch_ids`), so each prompt runs once; the sums are the unshared ones up to float rounding."""
    if not seqs:
        raise ValueError("pack: no sequences")
    if share_prompts:
        return _pack_shared(seqs)
    ids: list[int] = []
    pos: list[int] = []
    seg: list[int] = []
    resp: list[bool] = []
    cu = [0]
    for i, seq in enumerate(seqs):
        tokens, start = _fields(seq, i)
        n = len(tokens)
        ids.extend(tokens)
        pos.extend(range(n))
        seg.extend([i] * n)
        resp.extend([False] * start + [True] * (n - start))
        cu.append(cu[-1] + n)
    return _batch(ids, pos, seg, resp, cu)


def _batch(ids: list[int], pos: list[int], seg: list[int], resp: list[bool], cu: list[int],
           branch: list[int] | None = None) -> PackedBatch:
    """The PackedBatch of one packed row's per-token lists (`cu`: sequence, or group, boundaries)."""
    segment_ids = torch.tensor(seg, dtype=torch.long)
    return _packed(torch.tensor(ids, dtype=torch.long)[None], torch.tensor(pos, dtype=torch.long)[None], segment_ids,
                   torch.tensor(resp, dtype=torch.bool), torch.tensor(cu, dtype=torch.int32),
                   None if branch is None else torch.tensor(branch, dtype=torch.long),
                   None if branch is None else int(segment_ids.max()) + 1)


def _packed(input_ids: torch.Tensor, position_ids: torch.Tensor, seg: torch.Tensor, resp: torch.Tensor,
            cu: torch.Tensor, branch: torch.Tensor | None, n: int | None) -> PackedBatch:
    """A PackedBatch from its row tensors ([1, T] ids and positions, [T] sequence index and response mask):
    response token t is predicted from position t - 1 (a branch starts with its copy of the last prompt token)."""
    target_pos = resp.nonzero().squeeze(1)
    return PackedBatch(
        input_ids=input_ids, position_ids=position_ids, segment_ids=seg, response_mask=resp, cu_seqlens=cu,
        max_seqlen=int((cu[1:] - cu[:-1]).max()), pred_index=target_pos - 1, targets=input_ids[0, target_pos],
        target_segment=seg[target_pos], branch_ids=branch, num_sequences=n,
    )


def _pack_shared(seqs: Sequence[Any]) -> PackedBatch:
    fields_ = [_fields(seq, i) for i, seq in enumerate(seqs)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (tokens, start) in enumerate(fields_):
        key = tuple(tokens[:start]) if start >= 2 else (-1 - i,)  # a 1-token prompt: a group of its own
        groups.setdefault(key, []).append(i)
    ids: list[int] = []
    pos: list[int] = []
    seg: list[int] = []
    resp: list[bool] = []
    branch: list[int] = []
    cu = [0]
    for members in groups.values():
        tokens, start = fields_[members[0]]
        shared = start - 1  # the prompt but its last token
        ids.extend(tokens[:shared])
        pos.extend(range(shared))
        seg.extend([members[0]] * shared)
        resp.extend([False] * shared)
        branch.extend([0] * shared)
        for k, i in enumerate(members, start=1):
            tokens, start = fields_[i]
            part = tokens[shared:]  # the last prompt token, then the response
            ids.extend(part)
            pos.extend(range(shared, shared + len(part)))
            seg.extend([i] * len(part))
            resp.extend([False] + [True] * (len(part) - 1))
            branch.extend([k] * len(part))
        cu.append(len(ids))
    return _batch(ids, pos, seg, resp, cu, branch)


def branch_mask(branch: torch.Tensor) -> torch.Tensor:
    """[L, L] bool, True where query i may attend key j in a group of shared prompts: j <= i, and j in
    the shared prompt (branch 0) or in i's own branch."""
    n = branch.shape[0]
    causal = torch.ones((n, n), dtype=torch.bool, device=branch.device).tril()
    return causal & ((branch[None, :] == 0) | (branch[None, :] == branch[:, None]))


def group_masks(packed: PackedBatch) -> list[torch.Tensor | None]:
    """Per group of a shared-prompt batch, its `branch_mask`, or None for a group of one sequence (plain
    causal attention): built once per forward, read by every layer's attention."""
    assert packed.branch_ids is not None
    cu = packed.cu_seqlens.tolist()
    out: list[torch.Tensor | None] = []
    for s, e in zip(cu[:-1], cu[1:]):
        b = packed.branch_ids[s:e]
        out.append(branch_mask(b) if int(b.max()) > 1 else None)
    return out


# --- chunked, fused log-prob head ---------------------------------------------------


class _ChunkedLogProb(torch.autograd.Function):
    """log softmax(h @ W^T + b)[target] per row, `chunk` rows at a time; the backward
    recomputes each chunk's logits from h, so no [rows, vocab] tensor is kept."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk: int) -> torch.Tensor:
        acc = torch.promote_types(h.dtype, torch.float32)  # float32, or float64 for float64 inputs
        out = torch.empty(h.shape[0], dtype=acc, device=h.device)
        lse_all = torch.empty_like(out)
        for s in range(0, h.shape[0], chunk):
            logits = F.linear(h[s : s + chunk], weight, bias).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            out[s : s + chunk] = logits.gather(1, targets[s : s + chunk, None]).squeeze(1) - lse
            lse_all[s : s + chunk] = lse
        ctx.save_for_backward(h, weight, bias, targets, lse_all)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        h, weight, bias, targets, lse_all = ctx.saved_tensors
        chunk = ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(h) if need_h else None
        single = h.shape[0] <= chunk  # one chunk: write the weight gradient directly in its dtype
        grad_w = None
        if need_w and not single:
            grad_w = torch.zeros(weight.shape, dtype=lse_all.dtype, device=weight.device)
        grad_b = torch.zeros(bias.shape, dtype=lse_all.dtype, device=bias.device) if need_b else None
        for s in range(0, h.shape[0], chunk):
            h_c, g = h[s : s + chunk], grad_out[s : s + chunk].to(lse_all.dtype)
            logits = F.linear(h_c, weight, bias).to(lse_all.dtype)
            # d logp[t] / d logits = onehot(t) - softmax(logits)
            dlogits = torch.exp(logits - lse_all[s : s + chunk, None]).mul_(-g[:, None])
            dlogits.scatter_add_(1, targets[s : s + chunk, None], g[:, None])
            dlogits = dlogits.to(h.dtype)
            if grad_h is not None:
                grad_h[s : s + chunk] = dlogits @ weight
            if need_w:
                part = dlogits.t() @ h_c  # [V, d] in the weight's dtype, fp32 accumulation inside
                if grad_w is None:
                    grad_w = part
                else:
                    grad_w.add_(part)
            if grad_b is not None:
                grad_b.add_(dlogits.sum(0))
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None,
            None,
        )


def token_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Per-row log-probability of `targets` under a linear LM head, chunked: [M] float32."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    weight: torch.Tensor = head.weight  # type: ignore[assignment]
    bias: torch.Tensor | None = getattr(head, "bias", None)
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32) + 0 * weight.sum()
    return _ChunkedLogProb.apply(hidden, weight, bias, targets, chunk)  # type: ignore[no-any-return]


# --- per-sequence attention for packed rows ------------------------------------------


def _varlen_fn() -> Callable[..., Any] | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.9
        return None
    return varlen_attn


def _cuda_varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu: torch.Tensor,
                 max_len: int, scale: float | None) -> torch.Tensor | None:
    """Flash-Attention varlen on [T, H, D] tensors; None where it is unavailable."""
    fn = _varlen_fn()
    if fn is None or not query.is_cuda or query.dtype not in (torch.float16, torch.bfloat16):
        return None
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {"scale": scale}
    if query.shape[1] != key.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            rep = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    if "is_causal" in params:
        kwargs["is_causal"] = True
    else:
        kwargs["window_size"] = (-1, 0)
    return fn(query, key, value, cu, cu, max_len, max_len, **kwargs)


def _segment_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu: list[int],
                  scale: float | None, masks: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Exact causal attention per sequence (with `masks`: per group of shared prompts, its `group_masks`
    entry), [1, H, T, D] in, [1, T, H, D] out."""
    rep = query.shape[1] // key.shape[1]
    if rep > 1:
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    parts = []
    for g, (s, e) in enumerate(zip(cu[:-1], cu[1:])):
        q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
        mask = None if masks is None else masks[g]
        if mask is None:  # one sequence: plain causal attention
            parts.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale))
        else:
            parts.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale))
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous()


def _packed_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      cu: torch.Tensor, max_len: int, scale: float | None,
                      masks: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
    if query.shape[0] != 1:
        raise ValueError(f"packed attention expects one packed row, got batch {query.shape[0]}")
    if masks is None:  # Flash-Attention varlen keeps whole sequences apart; branches need their masks
        q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, H, D]
        out = _cuda_varlen(q, k, v, cu.to(query.device, torch.int32), max_len, scale)
        if out is not None:
            return out.unsqueeze(0)
    return _segment_sdpa(query, key, value, cu.tolist(), scale, masks)


def _make_attention(base: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        cu = kwargs.get("cu_seq_lens_q")
        if cu is not None and getattr(module, "is_causal", True):
            if dropout:
                raise ValueError("packed attention does not support attention dropout")
            return _packed_attention(module, query, key, value, cu, int(kwargs["max_length_q"]), scaling,
                                     kwargs.get(BRANCH_KWARG)), None
        return _base_attention(module, base)(module, query, key, value, attention_mask,
                                             scaling=scaling, dropout=dropout, **kwargs)

    attention.__name__ = f"{PACKED_PREFIX}{base}"
    return attention


def _base_attention(module: Any, base: str) -> Callable[..., Any]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base == "eager":  # each model family defines its own eager attention
        return sys.modules[type(module).__module__].eager_attention_forward  # type: ignore[no-any-return]
    return ALL_ATTENTION_FUNCTIONS[base]  # type: ignore[no-any-return]


def _make_mask(base: str) -> Callable[..., Any]:
    def mask(*args: Any, **kwargs: Any) -> Any:
        if _PACKED_CALL.get():
            return None  # packed calls carry cu_seq_lens; the attention itself keeps sequences apart
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

        return ALL_MASK_ATTENTION_FUNCTIONS[base](*args, **kwargs)

    return mask


_REGISTERED: set[str] = set()


def enable_packed_attention(model: Any) -> str:
    """Switch `model` to gsil-bench's packed-aware attention (idempotent); return its name.

    Non-packed calls still run the original implementation (sdpa or eager). Models on
    flash_attention_2/3 or flex keep theirs: transformers already handles packed
    position ids there. The switch is permanent so that gradient-checkpoint recomputation
    in the backward sees the same attention as the forward."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    current = model.config._attn_implementation or "eager"
    if current.startswith(PACKED_PREFIX) or current not in ("sdpa", "eager"):
        return str(current)
    name = PACKED_PREFIX + current
    if name not in _REGISTERED:
        AttentionInterface.register(name, _make_attention(current))
        AttentionMaskInterface.register(name, _make_mask(current))
        _REGISTERED.add(name)
    model.set_attn_implementation(name)
    return name


@contextmanager
def _packed_call() -> Iterator[None]:
    token = _PACKED_CALL.set(True)
    try:
        yield
    finally:
        _PACKED_CALL.reset(token)


def _split_model(model: Any) -> tuple[Any, torch.nn.Module]:
    """(backbone returning last_hidden_state, linear LM head), through PEFT wrappers."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    text_cfg = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(text_cfg, attr, None) not in (None, 1.0):
            raise NotImplementedError(f"packed_logps: models with {attr} are not supported; use the padded path")
    backbone = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    head = inner.get_output_embeddings()
    if backbone is None or head is None or not hasattr(head, "weight"):
        raise NotImplementedError(f"packed_logps: {type(inner).__name__} has no backbone + linear LM head")
    return backbone, head


def packed_logps(model: Any, packed: PackedBatch, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs per packed sequence and their token counts.

    Returns (logps_sum [N] float32, n_tokens [N] long) on the model's device, like
    `trainers.logprobs.batch_logps` on the equivalent padded batch. `chunk`: tokens per
    chunk of the LM head (memory O(chunk x vocab))."""
    backbone, head = _split_model(model)
    impl = enable_packed_attention(model)
    device: torch.device = head.weight.device  # type: ignore[assignment]
    packed = packed.to(device)
    kwargs: dict[str, Any] = {}
    if impl.startswith(PACKED_PREFIX) or impl.startswith("flash_attention"):
        kwargs = {"cu_seq_lens_q": packed.cu_seqlens, "cu_seq_lens_k": packed.cu_seqlens,
                  "max_length_q": packed.max_seqlen, "max_length_k": packed.max_seqlen}
    if packed.branch_ids is not None:
        if not impl.startswith(PACKED_PREFIX):
            raise ConfigError(f"shared.train.share_prompts: needs sdpa or eager attention, the model runs {impl!r} "
                              "(which keeps whole sequences apart, not branches); set share_prompts: false")
        kwargs[BRANCH_KWARG] = group_masks(packed)
    with _packed_call():
        hidden = backbone(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False,
                          **kwargs).last_hidden_state
    h = hidden[0].index_select(0, packed.pred_index)
    logp = token_logprobs(h, head, packed.targets, chunk)
    n = packed.n_seqs
    logps_sum = torch.zeros(n, dtype=torch.float32, device=device).index_add(0, packed.target_segment, logp)
    n_tokens = torch.bincount(packed.target_segment, minlength=n)
    return logps_sum, n_tokens


# --- the training loop's Batch (core.scoring; the "packed" collator of trainers.data) ---------------


def collate_packed(seqs: Sequence[Any], pad_id: int) -> Batch:
    """The "packed" collator: a one-row `trainers.data.Batch` with restarting position ids
    and per-token sequence indices (`pad_id` is unused: nothing is padded). Its log-probs
    must go through `batch_packed_logps` (an attention mask cannot keep sequences apart)."""
    return _as_batch(pack(seqs))


def collate_packed_shared(seqs: Sequence[Any], pad_id: int) -> Batch:
    """The "packed-shared" collator (train.share_prompts): `collate_packed` with the sequences that share
    their prompt grouped (`pack(..., share_prompts=True)`); `Batch.branch_index` carries the branches, and
    `Batch.tokens` counts every sequence's own tokens (its prompt included), as unshared."""
    return _as_batch(pack(seqs, share_prompts=True), sum(len(_fields(q, i)[0]) for i, q in enumerate(seqs)))


def _as_batch(p: PackedBatch, sequence_tokens: int | None = None) -> Batch:
    return Batch(input_ids=p.input_ids, attention_mask=torch.ones_like(p.input_ids),
                 response_mask=p.response_mask[None].long(), position_ids=p.position_ids,
                 sequence_index=p.segment_ids[None], num_sequences=p.n_seqs,
                 branch_index=None if p.branch_ids is None else p.branch_ids[None], sequence_tokens=sequence_tokens)


def from_batch(batch: Any) -> PackedBatch:
    """A `PackedBatch` from a one-row `trainers.data.Batch` made by `collate_packed` (or, with
    `branch_index`, `collate_packed_shared`: its groups start where positions restart)."""
    if batch.sequence_index is None or batch.position_ids is None or batch.input_ids.shape[0] != 1:
        raise ValueError("from_batch: expected a one-row packed Batch (position_ids and sequence_index set)")
    seg, resp = batch.sequence_index[0], batch.response_mask[0].bool()
    branch = getattr(batch, "branch_index", None)
    if branch is not None:
        pos = batch.position_ids[0]
        starts = (pos == 0).nonzero().squeeze(1)
        if starts.numel() == 0 or int(starts[0]) != 0 or bool((seg < 0).any()):
            raise ValueError("from_batch: a shared-prompt batch starts a group at position 0 and has no padding")
        cu = torch.cat([starts, torch.tensor([pos.numel()], device=pos.device)]).to(torch.int32)
        n = batch.num_sequences if batch.num_sequences is not None else int(seg.max()) + 1
        return _packed(batch.input_ids, batch.position_ids, seg, resp, cu, branch[0], n)
    if bool((seg < 0).any()) or bool((seg[1:] < seg[:-1]).any()):
        raise ValueError("from_batch: sequence_index must be non-negative and non-decreasing (no padding)")
    n = batch.num_sequences if batch.num_sequences is not None else int(seg.max()) + 1
    cu = torch.zeros(n + 1, dtype=torch.int32, device=seg.device)
    cu[1:] = torch.bincount(seg, minlength=n).cumsum(0)
    return _packed(batch.input_ids, batch.position_ids, seg, resp, cu, None, None)


def batch_packed_logps(model: Any, batch: Any, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`packed_logps` for a packed `trainers.data.Batch` (what `trainers.logprobs.forward_logps`
    calls when `batch.sequence_index` is set), the model taken out of its wrappers (core.scoring.causal_lm)."""
    return packed_logps(causal_lm(model), from_batch(batch), chunk)
