"""Scorer canaries: every known verdict holds with today's scorers, each canary is
sensitive to the scorer change it is there for, and `compare` fails on a lost verdict."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from test_reports_data import write_run

from core.config import EvalConfig
from tasks.canaries import CODE_PROBLEMS, code_canaries, gsm8k_answers, gsm8k_docs, last_assert_call, lm_eval_verdicts
from tasks.context import EvalContext
from tasks.humaneval import HumanEval
from tasks.sandbox import Limits, run_many


def _ctx(data_dir: Path, tmp_path: Path) -> EvalContext:
    ctx = EvalContext(model="embedded:smollm2-135m-instruct", cfg=EvalConfig(tasks=["scorer_canaries"]),
                      data_dir=data_dir)
    ctx.task_folder = tmp_path / "scorer_canaries"
    return ctx


def _drop_last_assert(tests: str) -> str:
    """The planted scorer bug: the last assert of `check` is not run."""
    lines = tests.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.lstrip().startswith("assert") and "candidate" in line]
    if not hits:
        return tests
    last = hits[-1]
    return "".join(lines[:last] + lines[last + 1:])


def test_last_assert_arguments_are_found():
    tests = "def check(candidate):\n    assert candidate([1, 2], k=3) == 4\n    assert candidate('x') == 'y'\n" \
            "    assert True\n"
    assert last_assert_call(tests) == (["x"], {})
    assert last_assert_call("def check(candidate):\n    for x in range(3):\n        assert candidate(x)\n") is None
    assert last_assert_call("def check(candidate):\n    y = 2\n    assert candidate(y) == 1\n") is None


def test_code_canaries_are_known_verdicts_and_catch_a_skipped_last_test(data_dir, tmp_path):
    cases = code_canaries(HumanEval().problems(_ctx(data_dir, tmp_path)))
    assert len(cases) == 4 * CODE_PROBLEMS
    limits = Limits(timeout=10)
    programs = [code + "\n\n" + p.tests for _, p, code, _ in cases]
    got = [r.passed for r in run_many(programs, limits, desc="canaries")]
    assert got == [expect for *_, expect in cases]
    # with the last test skipped, exactly the wrong-on-last-test programs flip to "passed"
    skipped = [code + "\n\n" + _drop_last_assert(p.tests) for _, p, code, _ in cases]
    flipped = [cid for (cid, *_), ok, r in zip(cases, got, run_many(skipped, limits, desc="skip")) if ok != r.passed]
    assert flipped == [cid for cid, *_ in cases if cid.endswith("wrong-on-last-test")]


def test_gsm8k_canaries_through_lm_eval_filters(data_dir, tmp_path):
    docs = gsm8k_docs(_ctx(data_dir, tmp_path))
    cases = [(doc, known, resp) for doc, ans in docs[:2] for _, resp, known in gsm8k_answers(ans)]
    verdicts = lm_eval_verdicts(_ctx(data_dir, tmp_path), [(doc, resp) for doc, _, resp in cases])
    assert verdicts == [known for _, known, _ in cases]
    assert {v["strict-match"] for v in verdicts} == {True, False} and {v["flexible-extract"] for v in verdicts} == {True, False}


@pytest.mark.slow
def test_a_broken_code_scorer_fails_compare(data_dir, tmp_path, monkeypatch):
    from reports.regression import compare_runs
    from tasks.api import evaluate

    cfg = EvalConfig(tasks=["scorer_canaries"])
    good = evaluate("embedded:smollm2-135m-instruct", ["scorer_canaries"], cfg, tmp_path / "good")["scorer_canaries"]
    assert good["metrics"]["agreement"]["value"] == 1.0 and good["n_items"] == 4 * CODE_PROBLEMS + 56
    import tasks.code

    real = tasks.code.run_many  # the planted bug: the scorer runs every program without its last test
    monkeypatch.setattr(tasks.code, "run_many", lambda sources, *a, **k: real([_drop_last_assert(s) for s in sources],
                                                                              *a, **k))
    bad = evaluate("embedded:smollm2-135m-instruct", ["scorer_canaries"], replace(cfg, limit=1),
                   tmp_path / "bad")["scorer_canaries"]
    assert bad["metrics"]["agreement/code"]["value"] == pytest.approx(1 - CODE_PROBLEMS / (4 * CODE_PROBLEMS))
    runs = []
    for name, src in (("night-1", tmp_path / "good"), ("night-2", tmp_path / "bad")):
        root = write_run(tmp_path / name, n=50)
        shutil.copytree(src / "scorer_canaries", root / "eval" / "sft" / "seed-0" / "iter-1" / "scorer_canaries")
        runs.append(root)
    result = compare_runs(*runs, n_boot=200)
    (change,) = [c for c in result.changes if c.task == "scorer_canaries"]
    assert change.status == "drop" and change.diff.diff == pytest.approx(-CODE_PROBLEMS / (4 * CODE_PROBLEMS + 56))
