"""The held-out likelihood tasks: the training encoder with the task's limits, batched
teacher-forced log-probs (core.scoring.score_batches) checked against an unbatched full-logits
computation, and the margin against the reference model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gsil_bench.core.config import EvalConfig, GenerationConfig
from gsil_bench.core.io import read_json, read_jsonl
from gsil_bench.core.scoring import EncodedSeq, score_batches
from gsil_bench.tasks.api import evaluate
from gsil_bench.tasks.heldout import MAX_RESPONSE_TOKENS, encode_pair


def _eval_cfg(tmp_path, reference=None) -> EvalConfig:
    return EvalConfig(tasks=["heldout_gsm8k"], limit=3, reference_model=reference, cache_dir=str(tmp_path / "cache"),
                      generation=GenerationConfig(max_new_tokens=6, batch_size=3))


def test_encoding_is_the_training_format_with_its_limits(tokenizer, data_dir):
    """The held-out items go through the training encoder (core.scoring.encode): the response ends at
    the end-of-turn token, and a long demonstration is cut at MAX_RESPONSE_TOKENS."""
    row = read_jsonl(data_dir / "gsm8k" / "test.jsonl")[0]
    mine = encode_pair(tokenizer, row["question"], row["answer"])
    assert mine.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(mine.input_ids[mine.response_start:]).startswith(row["answer"][:20])
    long = encode_pair(tokenizer, "Count.", " ".join(str(i) for i in range(2000)))
    assert long.n_response == MAX_RESPONSE_TOKENS


def test_batched_logps_equal_one_sequence_at_a_time(tiny_model, tokenizer):
    texts = [("What is 2+2?", "4"), ("Name a colour.", "Blue is a colour of the sky and the sea."),
             ("Say hi", "Hello there, how are you doing today?")]
    seqs = [encode_pair(tokenizer, q, a) for q, a in texts]
    sums, counts = score_batches(tiny_model, seqs, batch_size=3, pad_id=tokenizer.pad_token_id or 0)
    for s, total, n in zip(seqs, sums.tolist(), counts.tolist()):
        ids = torch.tensor([s.input_ids])
        with torch.no_grad():
            lp = torch.log_softmax(tiny_model(input_ids=ids).logits[0].float(), -1)
        expect = sum(float(lp[t - 1, s.input_ids[t]]) for t in range(s.response_start, len(s.input_ids)))
        assert n == len(s.input_ids) - s.response_start
        assert total == pytest.approx(expect, abs=1e-4)


def test_margin_against_the_reference_and_its_cache(tmp_path, tiny_model_dir, tokenizer, data_dir):
    from gsil_bench.core.models import load_model, save_tiny_llama

    other = save_tiny_llama(tmp_path / "other", tokenizer, seed=7)
    cfg = _eval_cfg(tmp_path, reference=str(other))
    res = evaluate(str(tiny_model_dir), ["heldout_gsm8k"], cfg, tmp_path / "a")["heldout_gsm8k"]
    assert res["primary"] == "logp_real" and res["n_items"] == 3
    samples = read_jsonl(tmp_path / "a" / "heldout_gsm8k" / "samples.jsonl")
    assert [s["id"] for s in samples] == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2"]
    ref_model, _ = load_model(str(other))
    for s in samples:  # the reference's sums, recomputed here independently
        real = encode_pair(tokenizer, s["prompt"], s["reference"])
        gen = encode_pair(tokenizer, s["prompt"], s["output"])
        (r_real, r_gen), (n_real, _) = (t.tolist() for t in score_batches(ref_model, [real, gen], batch_size=1))
        expect = (s["sum_logp_real"] - r_real) - (s["sum_logp_gen"] - r_gen)
        assert s["scores"]["margin"] == pytest.approx(expect, abs=1e-3)
        assert s["scores"]["logp_real"] == pytest.approx(s["sum_logp_real"] / n_real)
        assert s["scores"]["accuracy"] == float(expect > 0)
    cache = tmp_path / "cache" / "heldout_gsm8k" / "reference_logps.jsonl"
    assert len(read_jsonl(cache)) == 6
    # the model as its own reference: every log ratio is 0, so is every margin
    res_self = evaluate(str(tiny_model_dir), ["heldout_gsm8k"], replace(cfg, reference_model=str(tiny_model_dir)),
                        tmp_path / "b")["heldout_gsm8k"]
    assert res_self["metrics"]["margin"]["value"] == 0.0
    assert res_self["metrics"]["logp_real"]["value"] == res["metrics"]["logp_real"]["value"]
    assert len(read_jsonl(cache)) == 12  # a different reference identity: scored again, appended


def test_without_reference_there_is_no_margin(tmp_path, tiny_model_dir, data_dir):
    evaluate(str(tiny_model_dir), ["heldout_mt_bench"], replace(_eval_cfg(tmp_path), tasks=["heldout_mt_bench"]),
             tmp_path / "c")
    metrics = read_json(tmp_path / "c" / "heldout_mt_bench" / "metrics.json")
    assert set(metrics["metrics"]) == {"logp_real", "logp_gen"}
    assert all(s["id"].startswith("mt_bench-") for s in read_jsonl(tmp_path / "c" / "heldout_mt_bench" / "samples.jsonl"))


def test_mean_logp_is_per_token(tiny_model, tokenizer):
    s = EncodedSeq([1, 2, 3, 4, 5], 2)
    (total,), (n,) = (t.tolist() for t in score_batches(tiny_model, [s]))
    assert n == 3 and total < 0


def test_the_prompts_go_through_the_model_once_for_the_answer_and_the_scoring(tmp_path, tiny_model_dir, data_dir,
                                                                             monkeypatch):
    """tasks.heldout hands one store of computed prompts to the generator (HFGenerator.sharing) and to the
    scoring (core.prefix.score_shared): the generation computes the 3 prompts, the scoring none. Rejected: the
    task not sharing (the scoring computes 3 again) or scoring without the store."""
    import gsil_bench.core.prefix as prefix

    ran: list[int] = []
    plain = prefix._prompts
    monkeypatch.setattr(prefix, "_prompts", lambda body, prompts, *a: ran.append(len(prompts)) or plain(body, prompts, *a))
    res = evaluate(str(tiny_model_dir), ["heldout_gsm8k"], _eval_cfg(tmp_path), tmp_path / "d")["heldout_gsm8k"]
    assert res["n_items"] == 3 and ran == [3, 0]
