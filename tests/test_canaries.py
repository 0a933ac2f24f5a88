"""Scorer canaries: every known verdict holds with today's scorers, each canary is
sensitive to the scorer change it is there for, and `compare` fails on a lost verdict."""

from __future__ import annotations

import copy
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from test_reports_data import write_run

from gsil_bench.core.config import EvalConfig
from gsil_bench.tasks.canaries import (
    CODE_PROBLEMS,
    code_canaries,
    gsm8k_answers,
    gsm8k_docs,
    last_assert_call,
    lm_eval_verdicts,
)
from gsil_bench.tasks.context import EvalContext
from gsil_bench.tasks.humaneval import HumanEval
from gsil_bench.tasks.sandbox import resolve_mode


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


def _verdicts(task: HumanEval, problems: list, codes: list[str], ctx) -> list[bool]:
    """Each program through the task's own scorer (sandboxed candidate, trusted checker)."""
    results = task._run(problems, [[code] for code in codes], ctx, resolve_mode(ctx.cfg.code_sandbox))
    return [task._passed(r[0], plus=False) for r in results]


def test_code_canaries_are_known_verdicts_and_catch_a_skipped_last_test(data_dir, tmp_path):
    ctx = _ctx(data_dir, tmp_path)
    task = HumanEval()
    cases = code_canaries(task.problems(ctx))
    assert len(cases) == 4 * CODE_PROBLEMS
    got = _verdicts(task, [p for _, p, _, _ in cases], [code for _, _, code, _ in cases], ctx)
    assert got == [expect for *_, expect in cases]
    # with the last test skipped, exactly the wrong-on-last-test programs flip to "passed"
    skipped = []
    for _, p, _, _ in cases:
        q = copy.copy(p)
        q.tests = _drop_last_assert(p.tests)
        skipped.append(q)
    again = _verdicts(task, skipped, [code for _, _, code, _ in cases], ctx)
    flipped = [cid for (cid, *_), ok, r in zip(cases, got, again) if ok != r]
    assert flipped == [cid for cid, *_ in cases if cid.endswith("wrong-on-last-test")]


def test_gsm8k_canaries_through_lm_eval_filters(data_dir, tmp_path):
    docs = gsm8k_docs(_ctx(data_dir, tmp_path))
    cases = [(doc, known, resp) for doc, ans in docs[:2] for _, resp, known in gsm8k_answers(ans)]
    verdicts = lm_eval_verdicts(_ctx(data_dir, tmp_path), [(doc, resp) for doc, _, resp in cases])
    assert verdicts == [known for _, known, _ in cases]
    assert {v["strict-match"] for v in verdicts} == {True, False} and {v["flexible-extract"] for v in verdicts} == {True, False}


@pytest.mark.slow
def test_a_broken_code_scorer_fails_compare(data_dir, tmp_path, monkeypatch):
    from gsil_bench.reports.regression import compare_runs
    from gsil_bench.tasks.api import evaluate

    cfg = EvalConfig(tasks=["scorer_canaries"])
    good = evaluate("embedded:smollm2-135m-instruct", ["scorer_canaries"], cfg, tmp_path / "good")["scorer_canaries"]
    assert good["metrics"]["agreement"]["value"] == 1.0 and good["n_items"] == 4 * CODE_PROBLEMS + 56
    from gsil_bench.tasks import code as task_code

    real = task_code.check_many  # the planted bug: the scorer runs every program without its last test
    monkeypatch.setattr(task_code, "check_many", lambda jobs, *a, **k: real(
        [{**j, "tests": _drop_last_assert(j["tests"])} if j.get("kind") == "asserts" else j for j in jobs], *a, **k))
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
