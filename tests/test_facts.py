"""Metric facts are declared once, by the task (core.facts): every registered task names itself for
reports and declares direction, unit, tolerance and a definition for what it writes; reports and
`compare` read those facts from metrics.json and match nothing by name."""

from __future__ import annotations

import json

import pytest
from test_reports_data import write_run

from gsil_bench.core.facts import MetricFacts, lookup
from gsil_bench.reports import tables
from gsil_bench.reports.regression import compare_runs
from gsil_bench.reports.rundata import load_run
from gsil_bench.tasks.api import make_task
from gsil_bench.tasks.base import LIMITS, TASKS, facts_of

# metrics the tasks write beyond the primary and the reported ones (names from tasks/*.py's aggregate)
WRITTEN = {"humaneval_plus": ["pass@1+", "pass@5", "pass@5+", "pass@1-sampled"], "mt_bench": ["score/turn1", "missing"],
           "scorer_canaries": ["agreement/code"], "heldout_gsm8k": ["logp_gen", "accuracy"],
           "gsm8k": ["exact_match/flexible-extract"], "openllm_mmlu": ["acc/none", "mmlu_anatomy/acc/none"]}


@pytest.mark.parametrize("name", TASKS.names())
def test_every_registered_task_declares_its_name_and_metric_facts(name):
    info = TASKS.info(name)  # the task's one record, as the runner, the reports and `eval --help` read it
    task = make_task(name)
    assert task.info == info and info.name == name and info.limit in LIMITS
    assert info.display and info.display != name and "_" not in info.display, info.display
    assert len(info.about) > 20
    for metric in [info.primary, *info.reported, *WRITTEN.get(name, [])]:
        facts = facts_of(task, metric)
        assert facts.declared and facts.label and len(facts.glossary) > 20, (name, metric)
        assert facts.tolerance >= 0


def test_family_declarations_and_directions():
    mt = make_task("mt_bench")
    assert facts_of(mt, "score/writing").label == "judge score (1-10), writing"
    assert facts_of(mt, "missing").higher_is_better is False and not facts_of(mt, "score").percent
    canary = facts_of(make_task("scorer_canaries"), "agreement/gsm8k")
    assert canary.exact and canary.tolerance == 0 and canary.percent
    assert facts_of(make_task("openllm_mmlu"), "subjects/acc/none").label == "accuracy, mean over subjects"
    assert lookup({}, "anything") is None
    assert MetricFacts.from_json(None, "my_metric") == MetricFacts("my metric", declared=False)


def _redeclare(root, task, **changes):
    """Rewrite every metrics.json of `task` with other declared facts (what a task would write)."""
    for path in (root / "eval").rglob(f"{task}/metrics.json"):
        rec = json.loads(path.read_text())
        for m in rec["metrics"].values():
            m["facts"] = {**m["facts"], **changes}
            m["higher_is_better"] = m["facts"]["higher_is_better"]
        path.write_text(json.dumps(rec))


def test_reports_read_the_declared_facts_not_the_names(tmp_path):
    root = write_run(tmp_path / "r", n=150)
    # mt_bench's "score" declared as a percentage with a label of its own: the table follows the declaration
    _redeclare(root, "mt_bench", percent=True, label="stars")
    comp = tables.build_comparison(load_run(root), baseline="sft", n_boot=200)
    md = tables.to_markdown(tables.comparison_frame(comp, "md"))
    assert "MT-Bench stars (%)" in md and "judge score" not in md
    cell = comp.cells[("spin", 2, "mt_bench")]
    assert f"{100 * cell.interval.value:.1f}" in md
    # direction: declared lower-is-better, the best mark moves to the lowest mean
    _redeclare(root, "gsm8k", higher_is_better=False)
    comp = tables.build_comparison(load_run(root), baseline="sft", n_boot=200)
    best = [m for (m, _, col), c in comp.cells.items() if col == "gsm8k" and c.best]
    lowest = min((c.interval.value, m) for (m, _, col), c in comp.cells.items() if col == "gsm8k")[1]
    assert best == [lowest]


def test_compare_uses_the_declared_tolerance(tmp_path):
    base = write_run(tmp_path / "base", n=300, accuracy={"sft": 0.6, "spin": 0.6, "gsil-logistic": 0.6, "gsil-hinge": 0.6})
    cand = write_run(tmp_path / "cand", n=300, accuracy={"sft": 0.6, "spin": 0.45, "gsil-logistic": 0.6,
                                                          "gsil-hinge": 0.6})
    assert ("spin", "gsm8k") in {(c.method, c.task) for c in compare_runs(base, cand, n_boot=300).drops}
    _redeclare(base, "gsm8k", tolerance=0.5)  # the task declares that a change below 50 points does not matter
    assert ("spin", "gsm8k") not in {(c.method, c.task) for c in compare_runs(base, cand, n_boot=300).drops}


def test_tasks_are_found_by_walking_the_package_and_eval_help_lists_them():
    """No import list: every module of gsil_bench.tasks that registers a task is found (a fresh process
    imports the registry alone), and `eval --help` names each registered task (it named 7 of 20)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from gsil_bench.harness.cli import build_parser

    package = Path(make_task.__code__.co_filename).parent
    registering = sorted(p.stem for p in package.glob("*.py") if re.search(r"^\s*@?register_task\b", p.read_text(), re.M))
    code = ("import sys; from gsil_bench.tasks.base import TASKS; names = TASKS.names(); "
            "print(sorted({sys.modules[TASKS.get(n).__module__].__name__.rsplit('.', 1)[1] for n in names})); "
            "print(names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    modules, names = (eval(line) for line in out.splitlines()[-2:])
    assert modules == [m for m in registering if m != "base"] and names == TASKS.names()
    sub = next(a for a in build_parser()._subparsers._group_actions if hasattr(a, "choices")).choices["eval"]
    help_text = " ".join(sub.format_help().split())
    assert all(re.search(rf"\b{n}\b", help_text) for n in TASKS.names()), help_text
