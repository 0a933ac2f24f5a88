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
