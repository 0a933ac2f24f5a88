"""MT-Bench: the FastChat protocol (questions, judge prompts, reference answers, turns) and scoring."""

from __future__ import annotations

import json

import pytest

from gsil_bench.core.config import EvalConfig, GenerationConfig, JudgeConfig
from gsil_bench.tasks.base import Sample
from gsil_bench.tasks.context import EvalContext
from gsil_bench.tasks.mt_bench import MTBench, _plain


@pytest.fixture(scope="module")
def loaded(data_dir):
    task = MTBench()
    docs = task.load(EvalContext("x", EvalConfig(), data_dir=data_dir))
    return task, {d["question_id"]: d for d in docs}


def test_questions_and_reference_answers(loaded):
    _, docs = loaded
    assert len(docs) == 80 and sorted(docs) == list(range(81, 161))
    assert all(len(d["turns"]) == 2 for d in docs.values())
    with_ref = [d for d in docs.values() if d["reference"] is not None]
    assert len(with_ref) == 30 and {d["category"] for d in with_ref} == {"math", "reasoning", "coding"}


def test_judge_prompts_are_fastchats(loaded, data_dir):
    task, docs = loaded
    prompts = {json.loads(line)["name"]: json.loads(line) for line in (data_dir / "mt_bench/judge_prompts.jsonl").open()}
    writing, math = docs[81], docs[111]
    assert writing["category"] == "writing" and math["category"] == "math"
    name, msgs = task.judge_messages(writing, ("ANSWER-ONE", "ANSWER-TWO"), 1)
    assert name == "single-v1" and msgs[0] == {"role": "system", "content": prompts["single-v1"]["system_prompt"]}
    assert msgs[1]["content"].endswith(
        f"[Question]\n{writing['turns'][0]}\n\n[The Start of Assistant's Answer]\nANSWER-ONE\n"
        "[The End of Assistant's Answer]")
    name, msgs = task.judge_messages(writing, ("ANSWER-ONE", "ANSWER-TWO"), 2)
    assert name == "single-v1-multi-turn"
    assert f"### User:\n{writing['turns'][1]}\n\n### Assistant A:\nANSWER-TWO" in msgs[1]["content"]
    assert "### Assistant A:\nANSWER-ONE" in msgs[1]["content"]
    name, msgs = task.judge_messages(math, ("A1", "A2"), 1)
    assert name == "single-math-v1"
    assert f"[The Start of Reference Answer]\n{math['reference'][0]}\n[The End of Reference Answer]" in msgs[1]["content"]
    name, msgs = task.judge_messages(math, ("A1", "A2"), 2)
    assert name == "single-math-v1-multi-turn"
    assert f"### Reference answer:\n{math['reference'][1]}" in msgs[1]["content"]


def test_aggregate_is_fastchats_mean_with_missing_counted():
    def s(qid, cat, r1, r2):
        scores = {f"turn{t}": r for t, r in ((1, r1), (2, r2)) if r is not None}
        return Sample(str(qid), [], [], [r1, r2], None, scores,
                      {"category": cat, "missing": [r1, r2].count(None)})

    samples = [s(1, "writing", 8.0, 6.0), s(2, "math", 3.0, None), s(3, "math", None, None), s(4, "writing", 9.0, 10.0)]
    m = MTBench().aggregate(samples, None)
    assert m["score"].value == pytest.approx((8 + 6 + 3 + 9 + 10) / 5) and m["score"].n == 5
    assert m["score/turn1"].value == pytest.approx((8 + 3 + 9) / 3) and m["score/turn2"].value == 8.0
    assert m["score/math"].value == 3.0 and m["score/writing"].value == pytest.approx(33 / 4)
    assert m["missing"].value == 3 and m["missing"].n == 8
    assert m["score"].ci_method == "cluster-bootstrap" and m["score"].ci_low <= m["score"].value <= m["score"].ci_high


def test_second_turn_sees_the_first_answer(tmp_path, data_dir, tiny_model, tokenizer):
    from gsil_bench.tasks.api import evaluate

    cfg = EvalConfig(generation=GenerationConfig(max_new_tokens=6, batch_size=4),
                     judge=JudgeConfig(backend="hf", model="tiny", max_tokens=4))
    res = evaluate("tiny", ["mt_bench"], cfg, tmp_path, data_dir=str(data_dir), limit=2, model_obj=tiny_model,
                   tokenizer=tokenizer)["mt_bench"]
    gens = [json.loads(line) for line in (tmp_path / "mt_bench/cache/generations.jsonl").read_text().splitlines()]
    first = {g["prompt"][0]["content"]: g["text"] for g in gens if len(g["prompt"]) == 1}
    second = [g["prompt"] for g in gens if len(g["prompt"]) == 3]
    assert len(first) == 2 and len(second) == 2
    for conv in second:
        assert conv[1] == {"role": "assistant", "content": first[conv[0]["content"]].strip()}
    samples = [json.loads(line) for line in (tmp_path / "mt_bench/samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == ["81", "82"] and samples[0]["category"] == "writing"
    assert res["metrics"]["missing"]["n"] == 4 and res["judge"] == {"backend": "hf", "model": "tiny"}


def test_plain_transcript_for_models_without_a_chat_template():
    assert _plain([("Hi?", None)]) == "User: Hi?\nAssistant:"
    assert _plain([("Hi?", "Hello."), ("And?", None)]) == "User: Hi?\nAssistant: Hello.\nUser: And?\nAssistant:"
