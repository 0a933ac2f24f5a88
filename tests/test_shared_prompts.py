"""train.share_prompts: a step's sequences that share their prompt (a pair's real and generated responses)
run it once (trainers.packing.pack(share_prompts=True)), each response attending to the shared prompt and to
itself only. Checked against references independent of trainers.packing (one sequence at a time with full
logits) and the unshared packed path: the same log-probs, losses and gradients (float rounding apart), fewer
tokens through the model, and in the loop the same step losses with fewer tokens received.

Wrong implementations these reject: a branch attending to the other branch of its group (the generated
response would see the real one), branch positions restarting at 0 or continuing after the other branch
(rotary embeddings of other positions), the first response token predicted from the shared prompt's end
instead of the branch's copy of the last prompt token, prompts shared when only their first tokens agree,
a flash-attention model silently ignoring the branches."""

from __future__ import annotations

import pytest
import torch

from gsil_bench.core.models import tiny_llama
from gsil_bench.core.scoring import EncodedSeq, encode
from gsil_bench.trainers import data, logprobs
from gsil_bench.trainers.losses import LossInputs, compute_loss
from gsil_bench.trainers.packing import branch_mask, from_batch, pack, packed_logps

QUESTIONS = ["What is 2 + 2?", "Name a prime number larger than ten, please.", "Say hi."]
REAL = ["Four, since two and two make four.", "Thirteen: its only divisors are one and itself.", "Hi!"]
GEN = ["I think it is 5", "Twelve.", "Hello there, how are you doing today? " * 3]


def _pairs(tok) -> tuple[list[EncodedSeq], list[EncodedSeq]]:
    def enc(q, a):
        return encode(tok, [{"role": "user", "content": q}], a, max_prompt_length=64, max_length=128)

    return [enc(q, a) for q, a in zip(QUESTIONS, REAL)], [enc(q, a) for q, a in zip(QUESTIONS, GEN)]


def _one_at_a_time(model, seqs) -> torch.Tensor:
    """Summed response log-probs, one sequence per forward, full logits and log_softmax."""
    out = []
    for s in seqs:
        logits = model(input_ids=torch.tensor([s.input_ids])).logits[0].float()
        lp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(s.input_ids[1:])[:, None]).squeeze(1)
        out.append(lp[s.response_start - 1 :].sum())
    return torch.stack(out)


def test_layout_groups_a_prompt_once_with_one_branch_per_sequence():
    a, b, c = EncodedSeq([1, 2, 3, 7, 8], 3), EncodedSeq([1, 2, 3, 9], 3), EncodedSeq([1, 2, 4, 5], 3)
    p = pack([a, c, b], share_prompts=True)
    # group 1: [1, 2] shared, then branch a: [3, 7, 8], branch b: [3, 9]; group 2 (prompt [1, 2, 4]): [1, 2] + [4, 5]
    assert p.input_ids[0].tolist() == [1, 2, 3, 7, 8, 3, 9, 1, 2, 4, 5]
    assert p.position_ids[0].tolist() == [0, 1, 2, 3, 4, 2, 3, 0, 1, 2, 3]
    assert p.branch_ids.tolist() == [0, 0, 1, 1, 1, 2, 2, 0, 0, 1, 1]
    assert p.cu_seqlens.tolist() == [0, 7, 11] and p.n_seqs == 3
    assert p.targets.tolist() == [7, 8, 9, 5] and p.pred_index.tolist() == [2, 3, 5, 9]
    assert p.target_segment.tolist() == [0, 0, 2, 1]
    m = branch_mask(p.branch_ids[:7])
    assert m[5].tolist() == [True, True, False, False, False, True, False]  # b's copy of 3: the prompt and itself
    assert m[4].tolist() == [True] * 5 + [False, False]


def test_shared_prompts_give_each_sequences_own_log_probs(tokenizer):
    model = tiny_llama(tokenizer, layers=2, seed=3)
    real, gen = _pairs(tokenizer)
    seqs = [*real, *gen, EncodedSeq(real[0].input_ids, 1)]  # and a sequence whose prompt is 1 token
    with torch.no_grad():
        want = _one_at_a_time(model, seqs)
        got, n = packed_logps(model, pack(seqs, share_prompts=True), chunk=16)
        unshared, _ = packed_logps(model, pack(seqs), chunk=16)
    assert n.tolist() == [s.n_response for s in seqs]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got, unshared, rtol=1e-5, atol=1e-4)
    assert len({round(float(v), 2) for v in want}) == len(seqs)  # every sequence its own number
    prompts = sum(s.response_start for s in real)
    assert pack(seqs, share_prompts=True).n_tokens == pack(seqs).n_tokens - prompts + len(real)


@pytest.mark.parametrize("loss", ["gsil-logistic", "dpo", "sft"])
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_losses_and_gradients_equal_the_unshared_path(tokenizer, loss, checkpointing):
    real, gen = _pairs(tokenizer)
    ref_real, ref_gen = torch.tensor([-80.0, -120.0, -95.0]), torch.tensor([-70.0, -140.0, -90.0])

    def run(share: bool):
        model = tiny_llama(tokenizer, layers=2, seed=3).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        logps, n = packed_logps(model, pack(real + gen, share_prompts=share), chunk=16)
        out = compute_loss(loss, LossInputs(logps[:3], ref_real, logps[3:], ref_gen, n[:3]))
        out.loss.backward()
        return out.loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    (l_plain, g_plain), (l_shared, g_shared) = run(False), run(True)
    torch.testing.assert_close(l_shared, l_plain, rtol=1e-5, atol=1e-6)
    for name, g in g_plain.items():
        assert ((g_shared[name] - g).abs().max() / g.abs().max().clamp_min(1e-8)) < 1e-4, name


def test_the_collator_and_the_wrapped_module_carry_the_branches(tokenizer):
    model = tiny_llama(tokenizer, layers=2, seed=3)
    real, gen = _pairs(tokenizer)
    seqs = [*real, *gen]
    batch = data.COLLATORS.get("packed-shared")(seqs, tokenizer.pad_token_id)
    direct = pack(seqs, share_prompts=True)
    back = from_batch(batch)
    for name in ("input_ids", "position_ids", "segment_ids", "cu_seqlens", "pred_index", "targets",
                 "target_segment", "branch_ids"):
        assert torch.equal(getattr(back, name), getattr(direct, name)), name
    assert batch.input_ids.shape[1] == direct.n_tokens < pack(seqs).n_tokens == batch.tokens  # logged: as unshared
    with torch.no_grad():
        got, n = logprobs.batch_logps(logprobs.LogpsModule(model, 16), batch, 16)
        want = _one_at_a_time(model, seqs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_a_flash_attention_model_is_refused(tokenizer):
    model = tiny_llama(tokenizer, layers=2, seed=3)
    model.config._attn_implementation = "flash_attention_2"  # what the check reads; nothing runs
    real, gen = _pairs(tokenizer)
    with pytest.raises(Exception, match="share_prompts"):
        packed_logps(model, pack([*real, *gen], share_prompts=True), chunk=16)


def test_the_loop_trains_the_same_steps_on_fewer_tokens(tiny_model_dir, data_dir, tmp_path):
    """Two tiny DPO runs, share_prompts false and true: the loss and gradient norm of every step agree, and
    the model received fewer tokens per step (counted at its embedding, not read from the log)."""
    from helpers import make_cfg

    from gsil_bench.core.io import read_jsonl
    from gsil_bench.trainers.api import train_method
    from gsil_bench.trainers.loop import load_policy

    received: dict[bool, list[int]] = {False: [], True: []}
    plain_load = load_policy

    def counting(share):
        def load(*a, **k):
            model = plain_load(*a, **k)
            model.get_input_embeddings().register_forward_hook(
                lambda _m, args, _o: received[share].append(int(args[0].numel())) if torch.is_grad_enabled() else None)
            return model
        return load

    import gsil_bench.trainers.loop as loop

    runs = {}
    for share in (False, True):
        loop.load_policy = counting(share)
        try:
            cfg = make_cfg(tiny_model_dir, [{"loss": "dpo"}], train={"share_prompts": share})
            runs[share] = train_method(cfg, "dpo", 0, tmp_path / str(share))[0]
        finally:
            loop.load_policy = plain_load
    plain, shared = (read_jsonl(runs[s].folder / "metrics.jsonl") for s in (False, True))
    assert len(plain) == len(shared) == 2
    for a, b in zip(plain, shared):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["tokens"] == a["tokens"]  # the sequences' tokens: the nightly compares them at tolerance 0
    assert len(received[True]) == len(received[False]) == 2
    assert all(s < p for s, p in zip(received[True], received[False])), received


def test_reference_log_probs_with_shared_prompts_equal_the_unshared_ones(tokenizer, monkeypatch):
    """trainers.reference with share_prompts runs each pair's prompt once (core.prefix), same numbers."""
    import gsil_bench.core.prefix as prefix
    from gsil_bench.trainers.data import TrainItem
    from gsil_bench.trainers.reference import reference_logps

    model = tiny_llama(tokenizer, layers=2, seed=3)
    real, gen = _pairs(tokenizer)
    items = [TrainItem(i, r, g) for i, (r, g) in enumerate(zip(real, gen))]
    ran: list[int] = []
    plain = prefix._prompts
    monkeypatch.setattr(prefix, "_prompts", lambda body, prompts, *a: ran.append(len(prompts)) or plain(body, prompts, *a))
    want = reference_logps(model, items, batch_size=2, chunk=16, pad_id=tokenizer.pad_token_id)
    assert ran == []
    got = reference_logps(model, items, batch_size=2, chunk=16, pad_id=tokenizer.pad_token_id, share_prompts=True)
    assert sum(ran) == len(QUESTIONS)  # each pair's prompt once
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)
