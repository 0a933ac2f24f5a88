"""core.prefix.score_shared: each distinct prompt through the model once, every response continued
from its keys and values, gives core.scoring.score_batches' numbers (float rounding apart), in input order,
with prompts of different lengths and responses of different lengths in one batch, and a kept
prompt (`Prefixes`) gives the same numbers without running the prompt again. Wrong implementations
these reject: the first response token predicted from the wrong position, continuation positions
restarting at 0 (rotary embeddings of other positions), the left padding of a shorter prompt not
masked, a sequence with its own attention mask scored as if it had none."""

from __future__ import annotations

import pytest
import torch

import gsil_bench.core.prefix as prefix
from gsil_bench.core.models import tiny_llama
from gsil_bench.core.scoring import EncodedSeq, encode, score_batches

QUESTIONS = ["What is 2 + 2?", "Name a prime number larger than ten and explain briefly why it is prime, please.",
             "Say hi."]
ANSWERS = ["4", "Thirteen: it has no divisors but one and itself, so it is prime.", "Hi! " * 12]


def score(model, seqs, batch_size=4) -> list[tuple[float, int]]:
    """The whole-sequence driver's (summed log-prob, tokens) per sequence."""
    sums, counts = score_batches(model, seqs, batch_size=batch_size)
    return list(zip(sums.tolist(), counts.tolist()))


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer, layers=2, seed=3)


def _seqs(tokenizer) -> list[EncodedSeq]:
    out = []
    for q in QUESTIONS:
        for a in ANSWERS:  # every prompt with three responses of different lengths
            out.append(encode(tokenizer, [{"role": "user", "content": q}], a, max_prompt_length=256, max_length=512))
    return out


def test_shared_prompts_score_as_whole_sequences(model, tokenizer):
    seqs = _seqs(tokenizer)
    want = score(model, seqs, batch_size=4)
    got = prefix.score_shared(model, seqs, batch_size=4)
    assert [n for _, n in got] == [n for _, n in want]
    assert all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for (a, _), (b, _) in zip(got, want)), (got, want)
    assert len({round(v, 3) for v, _ in want}) == len(want)  # every sequence its own number: order is checked


def test_kept_prompts_are_not_run_again(model, tokenizer, monkeypatch):
    seqs = _seqs(tokenizer)
    keep = prefix.Prefixes()
    first = prefix.score_shared(model, seqs, keep=keep)
    assert len(keep.items) == len(QUESTIONS)
    ran: list[int] = []
    plain = prefix._prompts
    monkeypatch.setattr(prefix, "_prompts", lambda body, prompts, *a: ran.append(len(prompts)) or plain(body, prompts, *a))
    again = prefix.score_shared(model, list(reversed(seqs)), keep=keep)
    assert ran == [0] and again == list(reversed(first))


def test_a_sequence_with_its_own_attention_mask_is_scored_whole(model, tokenizer):
    s = _seqs(tokenizer)[1]
    mask = [1] * len(s.input_ids)
    mask[s.response_start - 2] = 0  # a prompt token no later position may attend to
    masked = EncodedSeq(s.input_ids, s.response_start, mask)
    got = prefix.score_shared(model, [masked, s])
    assert got[0] == score(model, [masked])[0] and got[0][0] != pytest.approx(got[1][0], abs=1e-6)


def test_the_held_out_task_scores_as_before(model, tokenizer):
    """tasks.heldout's scoring path on real GSM8K-like pairs: the demonstration and an own answer per prompt."""
    from gsil_bench.tasks.heldout import encode_pair

    pairs = [encode_pair(tokenizer, q, a) for q in QUESTIONS for a in (ANSWERS[1], "I do not know.")]
    want = score(model, pairs, batch_size=4)
    got = prefix.score_shared(model, pairs, batch_size=4)
    assert torch.allclose(torch.tensor([g for g, _ in got]), torch.tensor([w for w, _ in want]), rtol=1e-5, atol=1e-4)


# --- generation and scoring sharing their prompts (tasks.heldout: HFGenerator.sharing) -------------------------
# Wrong implementations these reject: the cache of prompts padded one position short or long (the decoding then
# reads keys at the wrong positions: other tokens), a cache holding the last prompt token too (generate would run
# nothing or run it twice), prompts of one model served to another, scoring that runs the shared prompts again.


def _generator(model, tokenizer, **over):
    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import HFGenerator

    return HFGenerator(model, tokenizer, GenerationConfig(**{"max_new_tokens": 12, "temperature": 0.0,
                                                             "batch_size": 3, **over}))


def _lively(tok, seed=5):
    """A tiny random Llama whose greedy answers differ by prompt (the default initialisation repeats one token)."""
    model = tiny_llama(tok, layers=2, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3, generator=g)
    return model


def _received(model):
    """The input ids each forward call of `model`'s body received, in order."""
    seen: list[torch.Tensor] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda _m, args, _o: seen.append(args[0].clone()))
    return seen, handle


@pytest.mark.parametrize("bos", [False, True], ids=["smollm2", "bos-tokenizer"])
def test_generation_continues_from_shared_prompts_with_generates_tokens(tokenizer, bos):
    from helpers import bos_tokenizer

    tok = bos_tokenizer() if bos else tokenizer
    model = _lively(tok)
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    gen = _generator(model, tok)
    plain = gen.generate(chats)
    store = prefix.Prefixes(owner=model)
    seen, handle = _received(model)
    try:
        with gen.sharing(store):
            shared = gen.generate(chats)
    finally:
        handle.remove()
    assert [(c.text, c.tokens) for c in shared] == [(c.text, c.tokens) for c in plain]
    assert len({c.text for c in plain}) == len(plain)  # distinct answers: order is checked too
    # the prompts went through the model once, into the store; generate then received only each prompt's last token
    from gsil_bench.core.prompting import prompt_ids

    ids = [tuple(prompt_ids(tok, c, gen.cfg)) for c in chats]
    assert set(store.items) == set(ids)
    decode_inputs = [s for s in seen if s.shape[1] == 1]
    last_tokens = sorted(int(t) for t in decode_inputs[0][:, 0])
    assert decode_inputs[0].shape[0] == len(chats) and last_tokens == sorted(p[-1] for p in ids)
    assert sum(s.numel() for s in seen if s.shape[1] > 1) >= sum(len(p) for p in ids)  # the prompts, computed once


def test_scoring_reuses_the_generations_prompts(tokenizer):
    from gsil_bench.tasks.heldout import encode_pair

    model = _lively(tokenizer)
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    gen, store = _generator(model, tokenizer), prefix.Prefixes(owner=model)
    with gen.sharing(store):
        own = [c.text.strip() for c in gen.generate(chats)]
    pairs = [encode_pair(tokenizer, q, a) for q, o in zip(QUESTIONS, own) for a in (ANSWERS[1], o)]
    seen, handle = _received(model)
    try:
        got = prefix.score_shared(model, pairs, keep=store)
    finally:
        handle.remove()
    prompt_tokens = sum(p.response_start for p in pairs)
    assert sum(int(s.numel()) for s in seen) <= sum(len(p.input_ids) for p in pairs) - prompt_tokens + 4 * len(pairs)
    want = score(model, pairs)
    assert torch.allclose(torch.tensor([g for g, _ in got]), torch.tensor([w for w, _ in want]), rtol=1e-5, atol=1e-4)


def test_prompts_of_another_model_are_refused(tokenizer):
    model, other = tiny_llama(tokenizer, layers=2, seed=5), tiny_llama(tokenizer, layers=2, seed=6)
    store = prefix.Prefixes(owner=other)
    with pytest.raises(ValueError, match="another model"):
        with _generator(model, tokenizer).sharing(store):
            pass
    with pytest.raises(ValueError, match="another model"):
        prefix.score_shared(model, _seqs(tokenizer), keep=store)
