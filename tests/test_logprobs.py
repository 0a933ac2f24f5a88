"""Chunked per-sequence log-probs equal the plain full-logits computation (values and
gradients) and never keep [B, T, vocab] logits for the backward pass."""

from __future__ import annotations

import pytest
import torch

from gsil_bench.trainers.data import Batch, EncodedSeq, collate
from gsil_bench.trainers.logprobs import LogpsModule, batch_logps, full_logits_logps


def _seqs(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [EncodedSeq(torch.randint(3, vocab, (length,), generator=g).tolist(), start)
            for length, start in ((23, 9), (17, 4), (30, 21), (11, 10))]


def _batch(vocab, seed=0):
    return collate(_seqs(vocab, seed), pad_id=2)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 3, 8, 128])
def test_chunked_equals_full_logits_values_and_gradients(tiny_model, tokenizer, chunk):
    batch = _batch(len(tokenizer))
    tiny_model.train()
    full, n_full = full_logits_logps(tiny_model, batch)
    full.sum().backward()
    g_full = _grads(tiny_model)
    tiny_model.zero_grad()
    ours, n = batch_logps(tiny_model, batch, chunk)
    ours.sum().backward()
    g_ours = _grads(tiny_model)
    assert n.tolist() == n_full.tolist() == [14.0, 13.0, 9.0, 1.0]  # response tokens (prompt masked)
    assert torch.allclose(ours, full, rtol=1e-5, atol=1e-4)
    assert g_ours.keys() == g_full.keys()
    for k in g_full:
        assert torch.allclose(g_ours[k], g_full[k], rtol=1e-4, atol=1e-6), k


def test_no_vocab_sized_activation_is_kept_for_backward(tiny_model, tokenizer):
    """Every tensor autograd saves during the forward is recorded: the full computation saves
    [B, T, vocab] logits; the chunked one saves none with a vocab-sized last dimension."""
    vocab = len(tokenizer)
    batch = _batch(vocab)
    tiny_model.train()

    def saved_shapes(fn):
        shapes = []

        def pack(t):
            shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return shapes

    full = saved_shapes(lambda: full_logits_logps(tiny_model, batch))
    ours = saved_shapes(lambda: batch_logps(tiny_model, batch, 4))
    assert any(len(s) == 3 and s[-1] == vocab for s in full)
    assert not any(len(s) == 3 and s[-1] == vocab for s in ours)


def test_gradient_checkpointing_lora_and_module_wrapper_agree(tokenizer):
    """Body gradient checkpointing, a peft LoRA wrapper and the LogpsModule (what DDP wraps)
    give the same log-probs as the plain model."""
    from peft import LoraConfig, get_peft_model

    from gsil_bench.core.models import tiny_llama

    batch = _batch(len(tokenizer), seed=1)
    model = tiny_llama(tokenizer, seed=3)
    model.train()
    plain, _ = full_logits_logps(model, batch)
    from gsil_bench.trainers.loop import enable_checkpointing

    enable_checkpointing(model)
    ckpt, _ = batch_logps(model, batch, 5)
    ckpt.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    wrapped, _ = batch_logps(LogpsModule(model, 5), batch, chunk=999)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with_lora, _ = batch_logps(lora, batch, 5)  # LoRA B starts at zero: same function
    for other in (ckpt, wrapped, with_lora):
        assert torch.allclose(other, plain, rtol=1e-5, atol=1e-4)
    with_lora.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.named_parameters() if "lora_B" in n)


def test_logit_softcapping_model(tokenizer):
    """A model whose head soft-caps its logits (Gemma 2) still matches the full computation."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0,
                       pad_token_id=2)
    model = Gemma2ForCausalLM(cfg).eval()
    batch = _batch(len(tokenizer), seed=2)
    full, _ = full_logits_logps(model, batch)
    ours, _ = batch_logps(model, batch, 4)
    assert torch.allclose(ours, full, rtol=1e-5, atol=1e-4)


def test_sequence_index_sums_per_sequence(tiny_model, tokenizer):
    """A packed-style batch: sequence_index maps tokens to sequences; with one sequence per row
    and rows mapped to indices [1, 0, 2, 3], the sums are the row sums permuted."""
    batch = _batch(len(tokenizer), seed=4)
    rows, _ = batch_logps(tiny_model, batch, 4)
    index = torch.tensor([1, 0, 2, 3]).unsqueeze(1).expand_as(batch.input_ids).clone()
    index[batch.attention_mask == 0] = -1
    packed = Batch(batch.input_ids, batch.attention_mask, batch.response_mask, sequence_index=index, num_sequences=4)
    sums, counts = batch_logps(tiny_model, packed, 4)
    assert torch.allclose(sums, rows[[1, 0, 2, 3]]) and counts.tolist() == [13.0, 14.0, 9.0, 1.0]


@pytest.mark.gpu
def test_chunked_on_gpu_matches_and_uses_less_memory(tokenizer):
    """CUDA: equal to the full computation, and the peak memory of forward + backward is lower."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from gsil_bench.core.models import tiny_llama

    model = tiny_llama(tokenizer, layers=2, hidden=128).cuda().train()
    g = torch.Generator().manual_seed(0)
    seqs = [EncodedSeq(torch.randint(3, len(tokenizer), (512 - 20 * i,), generator=g).tolist(), 100 + i)
            for i in range(8)]
    batch = collate(seqs, pad_id=2).to("cuda")
    out = {}
    for name, fn in (("full", lambda: full_logits_logps(model, batch)), ("chunked", lambda: batch_logps(model, batch, 64))):
        model.zero_grad()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        lp, _ = fn()
        lp.sum().backward()
        torch.cuda.synchronize()
        out[name] = (lp.detach(), [p.grad.clone() for p in model.parameters()], torch.cuda.max_memory_allocated() - base)
    (lf, gf, mf), (lc, gc, mc) = out["full"], out["chunked"]
    assert torch.allclose(lc, lf, rtol=1e-5, atol=1e-3)
    assert all((a - b).norm() <= 1e-4 * a.norm() + 1e-8 for a, b in zip(gf, gc))
    assert mc < mf / 2


def test_one_scoring_driver_for_reference_heldout_nll_and_the_tasks(tokenizer):
    """Reference log-probs (trainers.reference), the held-out NLL of training (through the wrapped policy,
    trainers.heldout) and the held-out tasks (tasks.heldout, through core.prefix.score_shared, which scores each
    prompt once and the rest as score_batches) all give core.scoring.score_batches' numbers:
    the same numbers, in eval mode whatever mode the model was in (restored after), without gradients. The
    tasks' old driver left the model in training mode: with attention dropout on, it scored noise."""
    from gsil_bench.core.models import tiny_llama
    from gsil_bench.core.prefix import score_shared  # the held-out tasks' driver (each prompt computed once)
    from gsil_bench.core.scoring import score_batches
    from gsil_bench.trainers.heldout import heldout_nll
    from gsil_bench.trainers.reference import sequences_logps

    model = tiny_llama(tokenizer, seed=3)
    for m in model.modules():
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.5  # training mode would drop attention weights
    model.train()
    seqs = _seqs(len(tokenizer))
    sums, counts = score_batches(model, seqs, batch_size=2, chunk=8)
    assert model.training and not sums.requires_grad
    assert torch.equal(sequences_logps(model, seqs, batch_size=2, chunk=8, pad_id=0), sums)
    shared = score_shared(model, seqs, batch_size=2, chunk=8)
    assert model.training  # restored
    assert [s for s, _ in shared] == pytest.approx(sums.tolist(), abs=1e-4)
    assert [n for _, n in shared] == counts.tolist() == [len(s.input_ids) - s.response_start for s in seqs]
    nll = heldout_nll(LogpsModule(model, 8), seqs, batch_size=2, chunk=8, pad_id=0, device="cpu")
    assert nll == pytest.approx(-float(sums.sum()) / int(counts.sum()), rel=1e-5)
    assert model.training
