"""Scoring sequences that share their prompt: each distinct prompt through the model once.

A held-out demonstration and the model's own answer to the same question (tasks.heldout) are two
sequences with the same prompt tokens; `core.scoring.score` runs the model over the prompt once
for each. `score_shared` computes every distinct prompt once (left-padded batches, its keys and
values kept), then every response as a continuation of its prompt's keys and values (right-padded
batches, the prompts' keys padded on the left and masked), and sums the response tokens'
log-probs with the same chunked head (core.scoring). The numbers are `score`'s up to float
rounding (the same sums in another order: a few 1e-5 nats on a 300-token response, tested).

`Prefixes` keeps computed prompts across calls for one model (the held-out reference, whose
prompts are the same for every checkpoint evaluated; the evaluated model, whose greedy answers
core.generation.HFGenerator.sharing decodes from the same computed prompts, `prompt_cache`),
bounded in bytes. Sequences with their own
attention masks (the official "spin" encoding) or an empty prompt go through `score` unchanged.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gsil_bench.core.scoring import EncodedSeq, _head_fn, causal_lm, score_batches


@dataclass
class Prompt:
    """A prompt's last hidden state (it predicts the first response token) and its keys and values."""

    last: torch.Tensor  # [H]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [kv_heads, P, head_dim] each

    @property
    def length(self) -> int:
        return int(self.kv[0][0].shape[1])

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.kv) + self.last.numel() * self.last.element_size()


class Prefixes:
    """Computed prompts of one model, kept across calls (least recently used out beyond `budget` bytes).
    With `owner`, they are that model's: `score_shared` and the generator refuse them for another model."""

    def __init__(self, budget: int = 512 * 2**20, owner: Any = None) -> None:
        self.budget, self.items = budget, OrderedDict[tuple[int, ...], Prompt]()
        self.owner = owner

    def check_owner(self, model: Any) -> None:
        if self.owner is not None and self.owner is not model:
            raise ValueError("core.prefix: these computed prompts belong to another model")

    def generate_kwargs(self, model: Any, input_ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        """`model.generate`'s cache argument for a batch of left-padded prompts (core.generation.HFGenerator.sharing):
        each prompt from this store, computed into it when new, as one left-padded cache of all but each prompt's
        last token (`prompt_cache`)."""
        keys = [tuple(row[m.bool()].tolist()) for row, m in zip(input_ids, mask)]
        found = fill(model, keys, self)
        return {_cache_kwarg(model): prompt_cache(causal_lm(model), [found[k] for k in keys], input_ids.shape[1] - 1)}

    def get(self, ids: tuple[int, ...]) -> Prompt | None:
        found = self.items.get(ids)
        if found is not None:
            self.items.move_to_end(ids)
        return found

    def put(self, ids: tuple[int, ...], prompt: Prompt) -> None:
        self.items[ids] = prompt
        while len(self.items) > 1 and sum(p.nbytes for p in self.items.values()) > self.budget:
            self.items.popitem(last=False)


def _cache_kwarg(body: Any) -> str:
    """transformers 5 names the key/value cache argument `cache`, 4.x `past_key_values`."""
    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def _prompts(body: Any, prompts: list[tuple[int, ...]], batch_size: int, device: Any) -> list[Prompt]:
    """Run distinct prompts through the model body (left-padded batches) and keep each one's keys and values."""
    out: list[Prompt] = []
    for b in range(0, len(prompts), batch_size):
        rows = prompts[b : b + batch_size]
        width = max(len(p) for p in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, p in enumerate(rows):
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        res = body(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device), use_cache=True)
        cache = getattr(res, "cache", None) or res.past_key_values
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        for r, p in enumerate(rows):
            keep = slice(width - len(p), width)
            out.append(Prompt(res.last_hidden_state[r, -1], [(k[r, :, keep], v[r, :, keep]) for k, v in layers]))
    return out


def _continue(lm: Any, body: Any, rows: list[tuple[Prompt, list[int]]], chunk: int, device: Any) -> list[float]:
    """Summed log-probs of each row's response tokens, continuing from its prompt's keys and values."""
    from transformers import DynamicCache

    head = _head_fn(lm)
    width_p, width_r = max(p.length for p, _ in rows), max(len(r) for _, r in rows)
    ids = torch.zeros((len(rows), width_r), dtype=torch.long)
    mask = torch.zeros((len(rows), width_p + width_r), dtype=torch.long)
    pos = torch.zeros((len(rows), width_r), dtype=torch.long)
    for i, (p, resp) in enumerate(rows):
        ids[i, : len(resp)] = torch.tensor(resp, dtype=torch.long)
        mask[i, width_p - p.length : width_p + len(resp)] = 1
        pos[i] = p.length + torch.arange(width_r)
    kv = []
    for layer in range(len(rows[0][0].kv)):
        ks, vs = [], []
        for p, _ in rows:
            k, v = p.kv[layer]
            pad = (0, 0, width_p - p.length, 0)  # on the left of the sequence axis, masked
            ks.append(torch.nn.functional.pad(k, pad))
            vs.append(torch.nn.functional.pad(v, pad))
        kv.append((torch.stack(ks), torch.stack(vs)))
    cache = DynamicCache(ddp_cache_data=kv, config=lm.config)
    res = body(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
               use_cache=True, **{_cache_kwarg(body): cache})
    hidden = torch.cat([torch.stack([p.last for p, _ in rows])[:, None], res.last_hidden_state[:, :-1]], dim=1)
    targets = ids.to(device)
    counted = (torch.arange(width_r)[None] < torch.tensor([len(r) for _, r in rows])[:, None]).to(device)
    total = torch.zeros(len(rows), dtype=torch.float32, device=device)
    for start in range(0, width_r, chunk):
        lp = head(hidden[:, start : start + chunk], targets[:, start : start + chunk])
        total += (lp * counted[:, start : start + chunk]).sum(dim=1)
    return [float(x) for x in total.tolist()]


def fill(model: Any, wanted: Sequence[tuple[int, ...]], store: Prefixes, batch_size: int = 4) -> dict[tuple[int, ...], Prompt]:
    """Every distinct prompt of `wanted` (token ids), computed by `model` where `store` does not keep it
    (shortest first, left-padded batches of `batch_size`; then kept in `store`)."""
    store.check_owner(model)
    lm = causal_lm(model)
    new = sorted({k for k in wanted if store.get(k) is None}, key=len)
    computed = dict(zip(new, _prompts(lm.base_model, new, batch_size, next(model.parameters()).device)))
    for k, p in computed.items():
        store.put(k, p)
    prompts: dict[tuple[int, ...], Prompt] = {}
    for k in set(wanted):
        found = computed.get(k) or store.get(k)
        assert found is not None  # computed now, or kept (get() above found it)
        prompts[k] = found
    return prompts


def prompt_cache(lm: Any, prompts: Sequence[Prompt], width: int) -> Any:
    """A left-padded key/value cache of `width` positions holding each prompt's keys and values but its
    last token's: with the prompts' ids left-padded to `width + 1`, `model.generate` runs only the last prompt
    token, then decodes (what it would compute from the whole prompt, up to float rounding)."""
    from transformers import DynamicCache

    kv = []
    for layer in range(len(prompts[0].kv)):
        ks, vs = [], []
        for p in prompts:
            k, v = p.kv[layer]
            pad = (0, 0, width - (p.length - 1), 0)  # on the left, masked by the generation's attention mask
            ks.append(torch.nn.functional.pad(k[:, : p.length - 1], pad))
            vs.append(torch.nn.functional.pad(v[:, : p.length - 1], pad))
        kv.append((torch.stack(ks), torch.stack(vs)))
    return DynamicCache(ddp_cache_data=kv, config=lm.config)


@torch.no_grad()
def score_shared(model: Any, seqs: Sequence[EncodedSeq], *, batch_size: int = 4, chunk: int = 128,
                 keep: Prefixes | None = None) -> list[tuple[float, int]]:
    """(summed response log-prob, response tokens) per sequence, as `core.scoring.score`, each distinct
    prompt computed once (and with `keep`, once across calls); results in input order. The model in eval mode
    (its mode restored after), as core.scoring.score_batches, the driver of the sequences scored whole."""
    was_training = model.training
    model.eval()
    try:
        return _score_shared(model, seqs, batch_size, chunk, keep)
    finally:
        model.train(was_training)


def _score_shared(model: Any, seqs: Sequence[EncodedSeq], batch_size: int, chunk: int,
                  keep: Prefixes | None) -> list[tuple[float, int]]:
    plain = [i for i, s in enumerate(seqs) if s.attention_mask is not None or s.response_start == 0]
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    if plain:
        sums, counts = score_batches(model, [seqs[i] for i in plain], batch_size=batch_size, chunk=chunk)
        for i, lp, n in zip(plain, sums.tolist(), counts.tolist()):
            out[i] = (lp, n)
    skip = set(plain)
    todo = [i for i in range(len(seqs)) if i not in skip]
    if not todo:
        return out
    lm = causal_lm(model)
    body, device = lm.base_model, next(model.parameters()).device
    keys = {i: tuple(seqs[i].input_ids[: seqs[i].response_start]) for i in todo}
    prompts = fill(model, list(keys.values()), keep if keep is not None else Prefixes(), batch_size)
    order = sorted(todo, key=lambda i: (seqs[i].n_response, seqs[i].response_start))  # the prompts are computed: batch by response
    for b in range(0, len(order), batch_size):
        rows = order[b : b + batch_size]
        sums = _continue(lm, body, [(prompts[keys[i]], seqs[i].input_ids[seqs[i].response_start:]) for i in rows],
                         chunk, device)
        for i, total in zip(rows, sums):
            out[i] = (total, seqs[i].n_response)
    return out
