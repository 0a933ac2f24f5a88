"""Packed (padding-free) batches give the log-probs, losses and gradients of padded ones.

References are independent of trainers.packing: a per-sequence forward with the full
[T, V] logits and log_softmax, and a right-padded batch with an attention mask.
"""

from __future__ import annotations

import json

import pytest
import torch

from gsil_bench.trainers import data, logprobs
from gsil_bench.trainers.losses import LossInputs, compute_loss
from gsil_bench.trainers.packing import (
    PACKED_PREFIX,
    enable_packed_attention,
    pack,
    packed_logps,
    token_logprobs,
)


def _encode(tok, question: str, answer: str) -> tuple[list[int], int]:
    chat = [{"role": "user", "content": question}]
    prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(chat + [{"role": "assistant", "content": answer}], tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tok(full, add_special_tokens=False)["input_ids"]
    assert f_ids[: len(p_ids)] == p_ids
    return f_ids, len(p_ids)


@pytest.fixture(scope="module")
def gsm8k_seqs(data_dir, tokenizer) -> list[tuple[list[int], int]]:
    """Six real GSM8K demonstrations of different lengths, truncated to keep tests fast."""
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "train.jsonl").open()][:6]
    seqs = [_encode(tokenizer, r["question"], r["answer"]) for r in rows]
    return [(ids[: start + 10 + 13 * i], start) for i, (ids, start) in enumerate(seqs)]


def _reference_logps(model, seqs) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence at a time, full logits, log_softmax: summed response log-probs."""
    sums, counts = [], []
    for ids, start in seqs:
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
        sums.append(logp[start - 1 :].sum())
        counts.append(len(ids) - start)
    return torch.stack(sums), torch.tensor(counts)


def _padded_logps(model, seqs, pad_id: int) -> torch.Tensor:
    """Right-padded batch with an attention mask (the conventional path)."""
    width = max(len(ids) for ids, _ in seqs)
    ids_t = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    resp = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, (ids, start) in enumerate(seqs):
        ids_t[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        resp[row, start : len(ids)] = True
    logits = model(input_ids=ids_t, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids_t[:, 1:, None]).squeeze(2)
    return (logp * resp[:, 1:]).sum(1)


def test_pack_layout():
    p = pack([([5, 6, 7, 8], 2), {"input_ids": [9, 10, 11], "response_start": 1}, ([12, 13], 2)])
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1]]
    assert p.segment_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert p.cu_seqlens.tolist() == [0, 4, 7, 9] and p.max_seqlen == 4 and p.lengths == [4, 3, 2]
    assert p.response_mask.tolist() == [False, False, True, True, False, True, True, False, False]
    assert p.targets.tolist() == [7, 8, 10, 11]
    assert p.pred_index.tolist() == [1, 2, 4, 5]  # each target is predicted from the previous token
    assert p.target_segment.tolist() == [0, 0, 1, 1]
    assert p.n_seqs == 3 and p.n_tokens == 9


@pytest.mark.parametrize(
    ("seqs", "message"),
    [([], "no sequences"), ([([1, 2], 0)], "response_start=0"), ([([], 0)], "empty"),
     ([([1, 2], 3)], r"\[1, 2\]"), ([object()], "sequence 0 has no input_ids")],
)
def test_pack_rejects_bad_input(seqs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        pack(seqs)


def test_chunked_head_matches_log_softmax_and_gradcheck():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=True).double()
    h = torch.randn(7, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (7,))
    got = token_logprobs(h, head, t, chunk=3)
    want = torch.log_softmax(head(h), -1).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # closed-form backward vs finite differences, several chunks (gradient accumulation across chunks)
    from gsil_bench.trainers.packing import _ChunkedLogProb

    def f(h_, w_, b_):
        return _ChunkedLogProb.apply(h_, w_, b_, t, 3)

    w = head.weight.detach().clone().requires_grad_(True)
    b = head.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, c, d: f(a, c, d), (h, w, b), eps=1e-6, atol=1e-4)


def test_packed_equals_per_sequence_and_padded(tiny_model, tokenizer, gsm8k_seqs):
    model = tiny_model.float()
    with torch.no_grad():
        ref_sum, ref_n = _reference_logps(model, gsm8k_seqs)
        padded = _padded_logps(model, gsm8k_seqs, tokenizer.pad_token_id)
        got_sum, got_n = packed_logps(model, pack(gsm8k_seqs), chunk=50)
    assert model.config._attn_implementation == PACKED_PREFIX + "sdpa"
    assert got_n.tolist() == ref_n.tolist()
    torch.testing.assert_close(got_sum, ref_sum, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(padded, ref_sum, rtol=1e-5, atol=1e-4)


def test_no_cross_contamination(tiny_model, gsm8k_seqs):
    """Changing one packed sequence leaves every other sequence's log-probs unchanged."""
    with torch.no_grad():
        base, _ = packed_logps(tiny_model, pack(gsm8k_seqs))
        ids, start = gsm8k_seqs[2]
        changed = list(gsm8k_seqs)
        changed[2] = ([(t * 7 + 3) % 1000 for t in ids], start)
        other, _ = packed_logps(tiny_model, pack(changed))
    keep = [i for i in range(len(gsm8k_seqs)) if i != 2]
    torch.testing.assert_close(other[keep], base[keep], rtol=0, atol=1e-5)
    assert not torch.allclose(other[2], base[2])


def test_native_transformers_packed_mask_agrees(tokenizer, gsm8k_seqs):
    """transformers' own block-diagonal mask (sdpa, restarting position ids) and our
    per-sequence attention give the same hidden states."""
    from gsil_bench.core.models import tiny_llama

    native, ours = tiny_llama(tokenizer), tiny_llama(tokenizer)
    p = pack(gsm8k_seqs)
    enable_packed_attention(ours)
    with torch.no_grad():
        h_native = native.model(input_ids=p.input_ids, position_ids=p.position_ids, use_cache=False).last_hidden_state
        _, _ = packed_logps(ours, p)
        from gsil_bench.trainers.packing import _packed_call

        with _packed_call():
            h_ours = ours.model(input_ids=p.input_ids, position_ids=p.position_ids, use_cache=False,
                                cu_seq_lens_q=p.cu_seqlens, cu_seq_lens_k=p.cu_seqlens,
                                max_length_q=p.max_seqlen, max_length_k=p.max_seqlen).last_hidden_state
    assert native.config._attn_implementation == "sdpa"
    torch.testing.assert_close(h_ours, h_native, rtol=1e-5, atol=1e-5)


def _pair_inputs(seqs):
    real, gen = seqs[0::2], seqs[1::2]
    return real, gen


@pytest.mark.parametrize("loss", ["gsil-logistic", "dpo", "spin", "sft"])
def test_losses_and_gradients_match_padded(tokenizer, gsm8k_seqs, loss):
    """Loss and every parameter gradient: packed path vs padded path, same weights."""
    from gsil_bench.core.models import tiny_llama

    real, gen = _pair_inputs(gsm8k_seqs)
    ref_real, ref_gen = torch.tensor([-80.0, -120.0, -95.0]), torch.tensor([-70.0, -140.0, -90.0])
    n_real = torch.tensor([len(i) - s for i, s in real])

    def run(model, packed: bool):
        model.train()
        if packed:
            logps, _ = packed_logps(model, pack(real + gen), chunk=64)
            pol_real, pol_gen = logps[: len(real)], logps[len(real) :]
        else:
            pol_real = _padded_logps(model, real, tokenizer.pad_token_id)
            pol_gen = _padded_logps(model, gen, tokenizer.pad_token_id)
        out = compute_loss(loss, LossInputs(pol_real, ref_real, pol_gen, ref_gen, n_real))
        model.zero_grad()
        out.loss.backward()
        return out, {k: p.grad.clone() for k, p in model.named_parameters()}

    out_pad, g_pad = run(tiny_llama(tokenizer), packed=False)
    out_pack, g_pack = run(tiny_llama(tokenizer), packed=True)
    torch.testing.assert_close(out_pack.loss, out_pad.loss, rtol=1e-5, atol=1e-6)
    for key, value in out_pad.metrics.items():
        torch.testing.assert_close(out_pack.metrics[key], value, rtol=1e-4, atol=1e-5)
    for name, g in g_pad.items():
        scale = g.abs().max().clamp_min(1e-8)
        assert ((g_pack[name] - g).abs().max() / scale) < 1e-4, name


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
def test_gradient_checkpointing_keeps_sequences_apart(tokenizer, gsm8k_seqs):
    """With gradient checkpointing the backward recomputes attention: gradients must
    equal the non-checkpointed ones (a mask-less recompute would mix sequences)."""
    from gsil_bench.core.models import tiny_llama

    grads = []
    for ckpt in (False, True):
        model = tiny_llama(tokenizer).train()
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # as the loop
        logps, _ = packed_logps(model, pack(gsm8k_seqs), chunk=64)
        (logps * torch.linspace(-1, 1, len(gsm8k_seqs))).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_switch_keeps_padded_and_generation_outputs(tiny_model, tokenizer):
    """After enable_packed_attention, ordinary padded calls and greedy generation are unchanged."""
    ids = torch.tensor([[tokenizer.pad_token_id] * 3 + [10, 20, 30, 40], [11, 21, 31, 41, 51, 61, 71]])
    mask = (torch.arange(7)[None] >= torch.tensor([[3], [0]])).long()
    with torch.no_grad():
        before = tiny_model(input_ids=ids, attention_mask=mask).logits
        gen_before = tiny_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                         pad_token_id=tokenizer.pad_token_id)
        enable_packed_attention(tiny_model)
        after = tiny_model(input_ids=ids, attention_mask=mask).logits
        gen_after = tiny_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                        pad_token_id=tokenizer.pad_token_id)
    torch.testing.assert_close(after, before)
    assert gen_after.tolist() == gen_before.tolist()


def test_eager_base_and_empty_response(tokenizer, gsm8k_seqs):
    from gsil_bench.core.models import tiny_llama

    model = tiny_llama(tokenizer)
    model.set_attn_implementation("eager")
    seqs = list(gsm8k_seqs[:3]) + [(gsm8k_seqs[3][0], len(gsm8k_seqs[3][0]))]  # last: no response tokens
    with torch.no_grad():
        got, n = packed_logps(model, pack(seqs))
        ref, ref_n = _reference_logps(model, seqs)
    assert model.config._attn_implementation == PACKED_PREFIX + "eager"
    assert n.tolist() == ref_n.tolist() and n[-1] == 0 and got[-1] == 0
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_real_model_packed_equals_padded(data_dir, tokenizer, embedded_dir):
    """The real SmolLM2-135M-Instruct: packed == padded summed response log-probs."""
    from gsil_bench.core.models import load_model

    model, tok = load_model("embedded:smollm2-135m-instruct")
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "train.jsonl").open()][:4]
    seqs = [_encode(tok, r["question"], r["answer"]) for r in rows]
    with torch.no_grad():
        padded = _padded_logps(model, seqs, tok.pad_token_id)
        got, n = packed_logps(model, pack(seqs), chunk=128)
    assert n.tolist() == [len(i) - s for i, s in seqs]
    torch.testing.assert_close(got, padded, rtol=1e-4, atol=1e-2)
    assert (got / n < 0).all() and (got / n > -3).all()  # a trained model: about 1 nat/token or less


def test_loop_collator_and_batch_logps_agree(tiny_model, tokenizer, gsm8k_seqs):
    """The registered "packed" collator + batch_packed_logps equal the loop's padded
    trainers.logprobs.batch_logps on the same EncodedSeqs."""
    from gsil_bench.trainers.packing import batch_packed_logps, from_batch

    seqs = [data.EncodedSeq(list(ids), start) for ids, start in gsm8k_seqs]
    batch = data.COLLATORS.get("packed")(seqs, tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 1 and batch.tokens == sum(len(s.input_ids) for s in seqs)
    direct = pack(seqs)
    back = from_batch(batch)
    for name in ("input_ids", "position_ids", "segment_ids", "cu_seqlens", "pred_index", "targets", "target_segment"):
        assert torch.equal(getattr(back, name), getattr(direct, name)), name
    with torch.no_grad():
        got, n = batch_packed_logps(logprobs.LogpsModule(tiny_model, 64), batch, chunk=64)
        want, want_n = logprobs.batch_logps(tiny_model, data.collate(seqs, tokenizer.pad_token_id), 16)
    assert n.tolist() == want_n.long().tolist()
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="one-row packed Batch"):
        from_batch(data.collate(seqs, tokenizer.pad_token_id))
