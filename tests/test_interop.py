"""Files other tools read (tasks.interop), read back by those tools themselves:
lm-eval's result helpers and `make_table`, FastChat's `show_result.py`, and EvalPlus's
`evaluate` (which reads our `_eval_results.json`, and in the slow test recomputes every
HumanEval+ verdict itself for a parity check against ours)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from argparse import Namespace

import pytest
from helpers import data_rows, write_jsonl

from gsil_bench.core.config import EvalConfig
from gsil_bench.core.io import atomic_write_json, read_json, read_jsonl
from gsil_bench.tasks.api import evaluate
from gsil_bench.tasks.base import Sample
from gsil_bench.tasks.interop import model_name, write_interop
from gsil_bench.tasks.mt_bench import MTBench

CFG = EvalConfig(code_workers=2, code_timeout=5.0)
BROKEN = ["    raise NotImplementedError\n", "    return None\n", "    return (\n"]


@pytest.fixture(scope="module")
def humaneval_plus(tmp_path_factory, data_dir):
    """12 HumanEval+ problems scored by our sandbox: canonical solutions for 8, broken for 4."""
    tmp = tmp_path_factory.mktemp("hep")
    rows = data_rows(data_dir, "humaneval_plus/HumanEvalPlus.jsonl")[:12]
    recs = [{"task_id": r["task_id"], "completion": r["canonical_solution"] if i % 3 else BROKEN[i % 3]}
            for i, r in enumerate(rows)]
    comp = write_jsonl(tmp / "mixed.jsonl", recs)
    res = evaluate("runs/x/spin/seed-0/iter-2/checkpoint", ["humaneval_plus"], CFG, tmp / "out",
                   data_dir=str(data_dir), completions=comp, limit=12)
    return tmp / "out" / "humaneval_plus", res["humaneval_plus"]


def test_interop_files_are_written_beside_ours(humaneval_plus):
    folder, metrics = humaneval_plus
    inter = folder / "interop"
    assert model_name("runs/x/spin/seed-0/iter-2/checkpoint") == "spin_seed-0_iter-2"
    assert (inter / "evalplus" / "samples.jsonl").is_file()
    assert len(list((inter / "lm_eval" / "spin_seed-0_iter-2").glob("results_*.json"))) == 1
    assert len(list((inter / "lm_eval" / "spin_seed-0_iter-2").glob("samples_humaneval_plus_*.jsonl"))) == 1
    write_interop(folder)  # rewriting replaces, never piles up
    assert len(list((inter / "lm_eval" / "spin_seed-0_iter-2").glob("results_*.json"))) == 1


def test_lm_eval_reads_our_results(humaneval_plus):
    from lm_eval.utils import get_latest_filename, get_results_filenames, get_sample_results_filenames, make_table

    folder, metrics = humaneval_plus
    files = [str(p) for p in (folder / "interop" / "lm_eval" / "spin_seed-0_iter-2").iterdir()]
    results = get_results_filenames(files)
    assert len(results) == 1 and len(get_sample_results_filenames(files)) == 1
    table = make_table(read_json(get_latest_filename(results)))
    cells = {row[5]: row[7] for row in (line.replace(" ", "").split("|") for line in table.splitlines()[2:])}
    for name in ("pass@1", "pass@1+"):
        assert cells[name] == f"{metrics['metrics'][name]['value']:.4f}", table
    assert "|humaneval_plus|gsil-bench|none" in table.replace(" ", "")


def _evalplus_scores(samples_path, capsys) -> dict[str, float]:
    from evalplus.evaluate import evaluate as evalplus_evaluate

    flags = Namespace(samples=str(samples_path), dataset="humaneval", base_only=False, parallel=1,
                      i_just_wanna_run=False, test_details=False, min_time_limit=1.0, gt_time_limit_factor=4.0,
                      mini=False, noextreme=False)
    evalplus_evaluate(flags)
    out = capsys.readouterr().out
    base = re.search(r"humaneval \(base tests\)\s*\n.*?pass@1:\s*([\d.]+)", out, re.S)
    plus = re.search(r"humaneval\+ \(base \+ extra tests\)\s*\n.*?pass@1:\s*([\d.]+)", out, re.S)
    assert base and plus, out
    return {"pass@1": float(base.group(1)), "pass@1+": float(plus.group(1))}


def test_evalplus_reads_our_results(humaneval_plus, capsys):
    pytest.importorskip("evalplus", reason="evalplus is a test dependency (gsil-bench[interop])")
    folder, metrics = humaneval_plus
    got = _evalplus_scores(folder / "interop" / "evalplus" / "samples.jsonl", capsys)
    assert got["pass@1"] == pytest.approx(metrics["metrics"]["pass@1"]["value"], abs=5e-4)
    assert got["pass@1+"] == pytest.approx(metrics["metrics"]["pass@1+"]["value"], abs=5e-4)
    assert got["pass@1"] == pytest.approx(8 / 12, abs=5e-4)


def _mt_bench_folder(tmp_path):
    """An MT-Bench task folder in our format (samples with judgments; metrics by MTBench.aggregate)."""
    ratings = [(8.0, 6.0), (3.0, None), (None, None), (9.0, 10.0), (5.0, 7.0)]
    samples = []
    for i, (r1, r2) in enumerate(ratings):
        judgments = [{"prompt_name": "single-v1" if t == 1 else "single-v1-multi-turn",
                      "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"q{i}-{t}"}],
                      "raw": f"Rating: [[{r:g}]]" if r is not None else "no rating", "rating": r, "error": None,
                      "judge": {"backend": "openai", "model": "gpt-4"}} for t, r in ((1, r1), (2, r2))]
        scores = {f"turn{t}": r for t, r in ((1, r1), (2, r2)) if r is not None}
        samples.append(Sample(str(81 + i), ["Q1", "Q2"], [f"A{i}-1", f"A{i}-2"], [r1, r2], None, scores,
                              {"category": "writing", "missing": [r1, r2].count(None), "judgments": judgments}))
    metrics = MTBench().aggregate(samples, None)
    folder = tmp_path / "mt_bench"
    folder.mkdir()
    (folder / "samples.jsonl").write_text("".join(json.dumps(s.to_json()) + "\n" for s in samples))
    atomic_write_json(folder / "metrics.json", {
        "task": "mt_bench", "model": "runs/x/gsil/seed-1/iter-1/checkpoint", "primary": "score",
        "metrics": {k: m.to_json() for k, m in metrics.items()}, "n_items": len(samples),
        "config": {"eval": {"judge": {"model": "gpt-4"}}}})
    return folder, metrics


def test_fastchat_show_result_reads_our_judgments(tmp_path):
    pytest.importorskip("fastchat", reason="fschat is a test dependency (gsil-bench[interop])")
    folder, metrics = _mt_bench_folder(tmp_path)
    write_interop(folder)
    base = folder / "interop" / "fastchat" / "data" / "mt_bench"
    answers = read_jsonl(base / "model_answer" / "gsil_seed-1_iter-1.jsonl")
    assert answers[0]["choices"][0]["turns"] == ["A0-1", "A0-2"] and answers[0]["question_id"] == 81
    proc = subprocess.run([sys.executable, "-m", "fastchat.llm_judge.show_result", "--mode", "single",
                           "--bench-name", "mt_bench", "--judge-model", "gpt-4"], cwd=folder / "interop" / "fastchat",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sections = dict(re.findall(r"#+ (\w[\w ]*?) #+\n(.*?)(?=\n\n#|\Z)", proc.stdout, re.S))
    first = float(sections["First turn"].split()[-1])
    second = float(sections["Second turn"].split()[-1])
    average = float(sections["Average"].split()[-1])
    assert average == pytest.approx(metrics["score"].value, abs=1e-6)  # FastChat's mean of the parsed ratings
    assert first == pytest.approx(metrics["score/turn1"].value, abs=1e-6)
    assert second == pytest.approx(metrics["score/turn2"].value, abs=1e-6)


# Every problem where EvalPlus (0.2, the pinned version: np.testing.assert_allclose) and our checker
# disagree on the programs below, with the reason. A one-item list against a float expected output:
# assert_allclose broadcasts the scalar and passes it; we require the expected output's type first
# (EvalPlus 0.3's rule) and nested shapes before the tolerance (tasks.checker._same_shape).
MAD_AS_LIST = ("    mean = sum(numbers) / len(numbers)\n"
               "    return [sum(abs(x - mean) for x in numbers) / len(numbers)]\n")
DIFFERENCES = {"HumanEval/4": "a one-item list for a float: EvalPlus 0.2's assert_allclose broadcasts it and passes; "
                              "ours compares the type (and nested shape) first and fails it"}


def _mixed_programs(rows: list[dict]) -> list[dict]:
    """Canonical solutions, broken ones for every fifth problem, and the programs of DIFFERENCES."""
    special = {"HumanEval/4": MAD_AS_LIST}
    return [{"task_id": r["task_id"], "completion": special.get(r["task_id"]) or
             (BROKEN[i % 3] if i % 5 == 0 else r["canonical_solution"])} for i, r in enumerate(rows)]


@pytest.mark.slow
def test_evalplus_recomputes_the_same_verdicts_on_all_164(tmp_path, data_dir):
    """Parity: EvalPlus's own evaluation of the same programs gives the same base and plus verdict as
    our sandbox, problem by problem, except on the problems listed in DIFFERENCES (with the reason)."""
    pytest.importorskip("evalplus")
    rows = data_rows(data_dir, "humaneval_plus/HumanEvalPlus.jsonl")
    comp = write_jsonl(tmp_path / "mixed.jsonl", _mixed_programs(rows))
    evaluate("mixed", ["humaneval_plus"], CFG, tmp_path / "out", data_dir=str(data_dir), completions=comp)
    ours = read_json(tmp_path / "out/humaneval_plus/interop/evalplus/samples_eval_results.json")["eval"]
    theirs_dir = tmp_path / "theirs"
    theirs_dir.mkdir()
    (theirs_dir / "samples.jsonl").write_text(
        (tmp_path / "out/humaneval_plus/interop/evalplus/samples.jsonl").read_text())
    env = {**os.environ, "HUMANEVAL_OVERRIDE_PATH": str(data_dir / "humaneval_plus/HumanEvalPlus.jsonl")}
    proc = subprocess.run([sys.executable, "-m", "evalplus.evaluate", "--dataset", "humaneval", "--samples",
                           str(theirs_dir / "samples.jsonl"), "--parallel", "2",
                           # generous time limits: on a loaded machine EvalPlus's 1 s x 4 would fail slow
                           # canonical programs (our sandbox gives the whole program eval.code_timeout)
                           "--min-time-limit", "10", "--gt-time-limit-factor", "50"], env=env, capture_output=True,
                          text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = read_json(theirs_dir / "samples_eval_results.json")["eval"]
    assert set(theirs) == set(ours)
    verdict = {side: {t: (r[t][0]["base_status"], r[t][0]["plus_status"]) for t in r}
               for side, r in (("ours", ours), ("theirs", theirs))}
    differ = {t: f"ours {verdict['ours'][t]}, EvalPlus {verdict['theirs'][t]}" for t in ours
              if verdict["ours"][t] != verdict["theirs"][t]}
    listing = "\n".join(f"{t}: {d}; known reason: {DIFFERENCES.get(t, 'NONE')}" for t, d in sorted(differ.items()))
    assert set(differ) == set(DIFFERENCES), listing
