"""MBPP / MBPP+: reference programs pass, wrong ones fail, EvalPlus input types and oracles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import data_rows, write_jsonl

from gsil_bench.core.config import EvalConfig
from gsil_bench.tasks.api import evaluate
from gsil_bench.tasks.evalplus import mbpp_inputs

CFG = EvalConfig(code_workers=2, code_timeout=5.0)




def _samples(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_mbpp_test_split_and_reference_programs(tmp_path, data_dir):
    rows = {r["task_id"]: r for r in data_rows(data_dir, "mbpp/mbpp.jsonl")}
    recs = [{"task_id": f"Mbpp/{i}", "solution": rows[i]["code"]} for i in range(11, 511)]
    comp = write_jsonl(tmp_path / "ref.jsonl", recs)
    res = evaluate("ref", ["mbpp"], CFG, tmp_path / "out", data_dir=str(data_dir), completions=comp, limit=20)
    assert res["mbpp"]["metrics"]["pass@1"]["value"] == 1.0 and res["mbpp"]["metrics"]["pass@1"]["n"] == 20
    assert [s["id"] for s in _samples(tmp_path / "out/mbpp")] == [f"Mbpp/{i}" for i in range(11, 31)]
    # wrong programs fail, including one that only defines the function with a wrong body
    wrong = [{"task_id": f"Mbpp/{i}", "solution": f"def {rows[i]['test_list'][0].split('(')[0].split()[-1]}(*a):\n"
              "    return None\n"} for i in range(11, 21)]
    res = evaluate("wrong", ["mbpp"], CFG, tmp_path / "out2", data_dir=str(data_dir),
                   completions=write_jsonl(tmp_path / "wrong.jsonl", wrong), limit=10)
    assert res["mbpp"]["metrics"]["pass@1"]["value"] == 0.0


def test_mbpp_setup_code_follows_the_solution(tmp_path, data_dir):
    from gsil_bench.tasks.checker import check
    from gsil_bench.tasks.context import EvalContext
    from gsil_bench.tasks.mbpp import Mbpp
    from gsil_bench.tasks.sandbox import Limits

    problems = {p.id: p for p in Mbpp().load(EvalContext("x", CFG, data_dir=data_dir))}
    assert len(problems) == 500 and min(int(k.split("/")[1]) for k in problems) == 11
    p = problems["Mbpp/367"]
    assert "[BEGIN]" in p.prompt and p.stop == ["[DONE]"] and p.prompt.count("[DONE]") == 3
    job = {"kind": "asserts", "source": p.canonical, "entry": p.entry_point, "tests": p.tests, "setup": p.setup,
           "limits": Limits(timeout=5)}
    assert check(job, "bwrap")["status"] == "passed"


def test_mbpp_plus_input_types_are_restored():
    assert mbpp_inputs("Mbpp/2", [[[3, 4], [5]]]) == [[(3, 4), (5,)]]
    assert mbpp_inputs("Mbpp/124", [[1, "1+2j"]]) == [(1.0, 1 + 2j)]
    assert mbpp_inputs("Mbpp/580", [[[1, [2, 3]], 4]]) == [((1, (2, 3)), 4)]
    assert mbpp_inputs("Mbpp/115", [[[[1], []]]]) == [[[{1}, {}]]]
    assert mbpp_inputs("Mbpp/17", [[5]]) == [[5]]  # no rule: unchanged


def test_mbpp_plus_reference_subset_and_set_oracle(tmp_path, data_dir):
    rows = data_rows(data_dir, "mbpp_plus/MbppPlus.jsonl")[:8]
    recs = [{"task_id": r["task_id"], "solution": r["canonical_solution"]} for r in rows]
    # Mbpp/2 (similar_elements) is compared as a set by EvalPlus: a reordered answer still passes
    assert rows[0]["entry_point"] == "similar_elements"
    recs[0] = {"task_id": "Mbpp/2", "solution": "def similar_elements(a, b):\n"
               "    return tuple(sorted(set(a) & set(b), reverse=True))\n"}
    res = evaluate("ref", ["mbpp_plus"], CFG, tmp_path / "out", data_dir=str(data_dir),
                   completions=write_jsonl(tmp_path / "c.jsonl", recs), limit=8)["mbpp_plus"]
    assert res["metrics"]["pass@1"]["value"] == 1.0 and res["metrics"]["pass@1+"]["value"] == 1.0
    wrong = [{"task_id": r["task_id"], "solution": f"def {r['entry_point']}(*a):\n    return 0\n"} for r in rows]
    res = evaluate("wrong", ["mbpp_plus"], CFG, tmp_path / "out2", data_dir=str(data_dir),
                   completions=write_jsonl(tmp_path / "w.jsonl", wrong), limit=8)["mbpp_plus"]
    assert res["metrics"]["pass@1+"]["value"] == 0.0


@pytest.mark.slow
def test_all_reference_programs_pass_mbpp_and_mbpp_plus(tmp_path, data_dir):
    rows = {r["task_id"]: r for r in data_rows(data_dir, "mbpp/mbpp.jsonl")}
    comp = write_jsonl(tmp_path / "m.jsonl", [{"task_id": f"Mbpp/{i}", "solution": rows[i]["code"]} for i in range(11, 511)])
    cfg = EvalConfig(code_workers=2, code_timeout=20.0)  # Mbpp/123 alone needs 12-14 s on 2 busy cores
    m = evaluate("ref", ["mbpp"], cfg, tmp_path / "o1", data_dir=str(data_dir), completions=comp)["mbpp"]["metrics"]
    assert m["pass@1"]["value"] == 1.0 and m["pass@1"]["n"] == 500
    plus = data_rows(data_dir, "mbpp_plus/MbppPlus.jsonl")
    comp = write_jsonl(tmp_path / "p.jsonl", [{"task_id": r["task_id"], "solution": r["canonical_solution"]} for r in plus])
    m = evaluate("ref", ["mbpp_plus"], cfg, tmp_path / "o2", data_dir=str(data_dir), completions=comp)["mbpp_plus"]
    assert m["metrics"]["pass@1+"]["value"] == 1.0 and m["metrics"]["pass@1+"]["n"] == 378
