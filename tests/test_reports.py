"""Report tables, figures and the HTML page, from run folders written in the
documented formats (tests/test_reports_data.py)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from test_reports_data import write_run

from gsil_bench.core.io import atomic_write_json
from gsil_bench.reports import tables
from gsil_bench.reports.report import FIGURES, config_check, write_report
from gsil_bench.reports.rundata import RunDataError, load_run


@pytest.fixture()
def run_dir(tmp_path):
    return write_run(tmp_path / "r", accuracy={"sft": 0.35, "spin": 0.36, "gsil-logistic": 0.7, "gsil-hinge": 0.5})


def _values(run, method, task, iteration=None):
    return [r.metric()["value"] for r in run.find(method, task, iteration)]


def test_load_run_reads_layout_and_skips_unfinished(run_dir):
    unfinished = run_dir / "eval" / "sft" / "seed-0" / "iter-2" / "gsm8k"
    shutil.copytree(run_dir / "eval" / "sft" / "seed-0" / "iter-1" / "gsm8k", unfinished)
    (unfinished / "DONE").unlink()
    run = load_run(run_dir)
    assert run.methods == ["base", "sft", "spin", "gsil-logistic", "gsil-hinge"]
    assert run.tasks == ["gsm8k", "mt_bench"]
    assert run.final_iteration("sft") == 1 and run.final_iteration("spin") == 2
    base = run.find("base", "gsm8k")
    assert len(base) == 1 and base[0].seed is None and base[0].iteration == 0
    assert len(base[0].item_scores()) == 200
    frame = run.results_frame()
    assert len(frame) == 2 * (1 + 1 + 2 + 2 + 2)  # tasks x evaluated models


def test_bad_metrics_file_names_the_file(run_dir):
    bad = run_dir / "eval" / "spin" / "seed-0" / "iter-1" / "gsm8k" / "metrics.json"
    bad.write_text('{"task": "gsm8k", "metrics": ')
    with pytest.raises(RunDataError, match=re.escape(str(bad)) + ":1: invalid JSON"):
        load_run(run_dir)


def test_comparison_single_seed_uses_task_intervals_and_marks(run_dir):
    run = load_run(run_dir)
    comp = tables.build_comparison(run, baseline="sft", n_boot=1000)
    assert comp.rows == [("base", 0), ("sft", 1), ("spin", 2), ("gsil-logistic", 2), ("gsil-hinge", 2)]
    for method, it in comp.rows:
        cell = comp.cells[(method, it, "gsm8k")]
        m = run.find(method, "gsm8k", it)[0].metric()
        assert (cell.interval.value, cell.interval.ci_low, cell.interval.ci_high) == (m["value"], m["ci_low"], m["ci_high"])
    gsm = {m: comp.cells[(m, it, "gsm8k")] for m, it in comp.rows}
    assert gsm["gsil-logistic"].sign == 1 and gsm["gsil-logistic"].best
    assert sum(c.best for c in gsm.values()) == 1
    assert gsm["sft"].vs_baseline is None  # the baseline is not compared with itself
    # the paired difference is the difference of the two means over the shared items
    d = gsm["gsil-logistic"].vs_baseline
    assert d.diff == pytest.approx(gsm["gsil-logistic"].interval.value - gsm["sft"].interval.value)


def test_comparison_several_seeds_averages_seeds(tmp_path):
    run = load_run(write_run(tmp_path / "r", seeds=(0, 1, 2)))
    comp = tables.build_comparison(run, baseline="sft", n_boot=500)
    cell = comp.cells[("spin", 2, "gsm8k")]
    assert cell.interval.seeds == 3
    assert cell.interval.value == pytest.approx(np.mean(_values(run, "spin", "gsm8k")))
    assert cell.interval.ci_low < cell.interval.value < cell.interval.ci_high
    assert "examples and seeds" in tables.legend(comp)


def test_markdown_latex_html_render(run_dir):
    comp = tables.build_comparison(load_run(run_dir), baseline="sft", n_boot=500)
    md = tables.to_markdown(tables.comparison_frame(comp, "md"))
    assert md.count("\n") == 6 and "**" in md and tables.UP in md  # header, rule, 5 rows
    tex = tables.to_latex(tables.comparison_frame(comp, "tex"), "cap", "tab:x")
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{", r"MT-Bench judge score (1-10)", r"$^{\uparrow}$",
                  r"GSM8K exact match (\%)"):
        assert token in tex
    page = tables.to_html(tables.comparison_frame(comp, "html"), "comparison")
    assert page.count("<tr") == 6 and 'id="comparison"' in page and "<strong>" in page


def test_cost_table_totals_over_iterations(tmp_path):
    run = load_run(write_run(tmp_path / "r", seeds=(0, 1)))
    costs = tables.cost_frame(run)
    assert costs.loc["spin", "iterations"] == 2 and costs.loc["sft", "iterations"] == 1
    assert costs.loc["spin", "train tokens"] == 2 * 2 * 400  # two seeds x two iterations of 400 tokens: the work done
    assert costs.loc["sft", "generated tokens"] == 0 and costs.loc["spin", "training (s)"] == 2 * 2 * 6.0
    assert "loss" not in costs.columns  # every method is its loss here: the column would repeat the label


def test_cost_table_counts_shared_work_once_and_sums_to_the_work_done(tmp_path):
    """The starting model's generations are made once (shared/<key>/) and copied into every self-play
    method's first iteration; the old table counted them in every such row (the column's sum about twice
    the generation done) and showed training time only. Now: a shared row, evaluation beside training,
    and every column sums to what the run did."""
    root = write_run(tmp_path / "r", seeds=(0,))
    shared = root / "shared" / "k1"
    shared.mkdir(parents=True)
    (shared / "generations.jsonl").write_text("".join(json.dumps({"index": i, "tokens": 25}) + "\n" for i in range(8)))
    atomic_write_json(shared / "DONE", {"key": "k1", "wall_time_s": 7.0, "built_by": "spin/seed-0"})
    self_play = ("spin", "gsil-logistic", "gsil-hinge")
    for m in self_play:  # iteration 1 of each: inputs copied from shared/k1 (200 tokens), iteration 2: its own 200
        for k in (1, 2):
            path = root / m / "seed-0" / f"iter-{k}" / "summary.json"
            rec = json.loads(path.read_text())
            atomic_write_json(path, {**rec, "inputs_hash": "k1" if k == 1 else f"own-{m}", "generated_tokens": 200})
    plan = json.loads((root / "plan.json").read_text())
    train_s = {"sft": 10.0, "spin": 30.0, "gsil-logistic": 20.0, "gsil-hinge": 21.0}
    steps = [{**st, "wall_time_s": 3.0} for st in plan["steps"]]  # every evaluation: 3 s
    steps += [{"id": f"train/{m}/seed-0", "kind": "train", "method": m, "seed": 0, "status": "done", "wall_time_s": t}
              for m, t in train_s.items()]
    atomic_write_json(root / "plan.json", {**plan, "steps": steps})
    costs = tables.cost_frame(load_run(root))
    from gsil_bench.reports.costs import SHARED

    assert costs.loc[SHARED, "generated tokens"] == 200 and costs.loc[SHARED, "training (s)"] == 7.0
    assert [costs.loc[m, "generated tokens"] for m in self_play] == [200, 200, 200]  # iteration 2 only
    assert costs.loc["spin", "training (s)"] == 23.0  # its step built the shared inputs: 30 - 7
    body = costs.drop(index="total")
    assert costs.loc["total", "generated tokens"] == body["generated tokens"].sum() == 200 + 3 * 200  # the work done
    assert costs.loc["total", "training (s)"] == body["training (s)"].sum() == sum(train_s.values())
    n_eval = sum(st["kind"] == "eval" for st in plan["steps"])
    assert costs.loc["total", "evaluation (s)"] == 3.0 * n_eval and costs.loc["base (starting model)", "evaluation (s)"] == 3.0
    md = (tmp_path / "costs.md")
    md.write_text(tables.to_markdown(tables.cost_display(costs)))
    assert "| total" in md.read_text() and "evaluation (s)" in md.read_text()


def test_a_diverging_training_is_flagged_on_the_page_in_tables_md_and_on_the_console(tmp_path, caplog):
    """dpo-ipo's loss went 25 -> 1804 in two steps in the main job and nothing said so."""
    from gsil_bench.reports.curves import divergences

    root = write_run(tmp_path / "r")
    path = root / "gsil-hinge" / "seed-0" / "iter-2" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[2]["loss"] = 25 * rows[0]["loss"]  # up by more than 10 times its first value at step 3
    rows[3]["loss"] = float("nan")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d,) = divergences(load_run(root))
    assert (d.method, d.iteration, d.step) == ("gsil-hinge", 2, 3)
    with caplog.at_level("WARNING", logger="gsil_bench.reports.report"):
        page = write_report(root, n_boot=100)
    assert any("diverged training: gsil-hinge seed 0 iteration 2" in r.getMessage() for r in caplog.records)
    assert 'id="diverged-section"' in page.read_text() and "gsil-hinge seed 0 iteration 2" in page.read_text()
    assert "**DIVERGED training**: gsil-hinge seed 0 iteration 2" in (root / "report" / "tables.md").read_text()
    rows[2]["loss"] = 1.05 * rows[0]["loss"]  # a small rise is no divergence; NaN is
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d,) = divergences(load_run(root))
    assert d.step == 4 and "nan" in d.text()


def test_the_glossary_explains_every_abbreviation_the_page_uses(tmp_path):
    from gsil_bench.reports.glossary import used

    root = write_run(tmp_path / "r")
    html = write_report(root, n_boot=100).read_text()
    table = re.search(r'<table id="abbreviations".*?</table>', html, re.S).group(0)
    for term in ("SPIN", "GSIL", "Holm", "symlog", "hinge", "logistic"):
        assert f"<td>{term}</td>" in table, term
    assert {t for t, _ in used("gsil-kliep and gsil-lsif beside dpo-ipo")} == {"DPO", "GSIL", "IPO", "KLIEP", "LSIF"}
    assert "## Abbreviations" in (root / "report" / "tables.md").read_text()


def test_config_check_flags_a_method_trained_with_another_shared_block(run_dir):
    ok, text = config_check(load_run(run_dir))
    assert ok and "abc123def4567890" in text
    summary = run_dir / "spin" / "seed-0" / "iter-1" / "summary.json"
    rec = json.loads(summary.read_text())
    atomic_write_json(summary, {**rec, "shared_hash": "ffff"})
    ok, text = config_check(load_run(run_dir))
    assert ok is False and "ffff: spin" in text


def test_write_report_outputs(run_dir):
    page = write_report(run_dir, n_boot=300)
    out = run_dir / "report"
    for name in ("tables.md", "tables.tex", "costs.md", "costs.tex", "results.csv",
                 *(f"plots/{fig.key}.png" for fig in FIGURES)):  # the one list of figures
        assert (out / name).stat().st_size > 0, name
    text = page.read_text()
    assert text.count('src="data:image/png;base64,') == len(FIGURES) and 'id="comparison"' in text and 'id="costs"' in text
    assert 'id="anatomy"' in text and 'id="fig-anatomy"' in text  # the loss anatomy (losses.json)
    assert "http://" not in text and "https://" not in text  # self-contained
    md = (out / "tables.md").read_text()
    assert "identical configuration" in md and "## Every iteration" in md and "gsil-hinge (iter 1)" in md
    first = md
    write_report(run_dir, n_boot=300)
    assert (out / "tables.md").read_text() == first  # deterministic


def test_report_of_a_partial_run_and_a_missing_baseline(tmp_path):
    root = write_run(tmp_path / "r")
    shutil.rmtree(root / "eval" / "spin" / "seed-0" / "iter-2")  # spin's last iteration not evaluated yet
    plan = json.loads((root / "plan.json").read_text())
    for step in plan["steps"]:
        if step["id"] == "eval/spin/seed-0/iter-2":
            step.update(status="failed", error="RuntimeError: out of memory")
    atomic_write_json(root / "plan.json", plan)
    page = write_report(root, baseline="dpo", n_boot=200)
    md = (page.parent / "tables.md").read_text()
    assert "spin (iter 1 of 2)" in md and "Baseline `dpo` is not in this run" in md
    assert 'id="failed"' in page.read_text() and "out of memory" in page.read_text()
    assert tables.UP not in md.split("## Every iteration")[0]


def test_an_unscored_task_shows_a_dash(tmp_path):
    """A judge that parsed no rating leaves the metric null: the cell is '–', nothing breaks."""
    root = write_run(tmp_path / "r")
    for folder in (root / "eval").glob("*/**/mt_bench"):
        rec = json.loads((folder / "metrics.json").read_text())
        rec["metrics"]["score"].update(value=None, ci_low=None, ci_high=None)
        atomic_write_json(folder / "metrics.json", rec)
    md = (write_report(root, n_boot=200).parent / "tables.md").read_text()
    table = md.split("\n\n")[2]
    rows = table.splitlines()[2:]
    assert "MT-Bench judge score (1-10)" in table and len(rows) == 5
    assert all(row.split("|")[-2].strip() == "–" for row in rows)



def _add_reported_metric(run_dir, task="gsm8k", name="margin", shift=None):
    """Give every `task` result a second per-item metric that the task reports beside its primary;
    `shift`: method -> added to that method's items (a planted change)."""
    for metrics_file in run_dir.joinpath("eval").rglob(f"{task}/metrics.json"):
        folder = metrics_file.parent
        method = folder.relative_to(run_dir / "eval").parts[0]
        samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        level = {"base": 0.0, "sft": 30.0}.get(method, 10.0) + (shift or {}).get(method, 0.0)
        for i, s in enumerate(samples):
            s["scores"][name] = level + (i % 5) - 2.0
        (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        x = np.array([s["scores"][name] for s in samples])
        rec = json.loads(metrics_file.read_text())
        rec["reported"] = [name]
        rec["metrics"][name] = {"value": float(x.mean()), "ci_low": float(x.mean() - 0.5),
                                "ci_high": float(x.mean() + 0.5), "n": len(x)}
        atomic_write_json(metrics_file, rec)


def test_reported_metrics_get_their_own_column_and_are_compared(run_dir, tmp_path):
    """A metric a task reports beside its primary (metrics.json `reported`: the held-out margin)
    is a column of the tables, with its own significance marks, and `compare` checks it."""
    from gsil_bench.reports.regression import compare_runs

    _add_reported_metric(run_dir)
    run = load_run(run_dir)
    comp = tables.build_comparison(run, baseline="sft", n_boot=300)
    assert comp.columns == ["gsm8k", "gsm8k/margin", "mt_bench"]
    margin = comp.cells[("gsil-logistic", 2, "gsm8k/margin")]
    assert margin.metric == "margin" and margin.interval.value == pytest.approx(10.0, abs=0.1)
    assert margin.sign == -1  # 10 vs sft's 30 on the same items: significantly below
    assert comp.cells[("gsil-logistic", 2, "gsm8k")].metric == "exact_match"
    header = tables.to_markdown(tables.comparison_frame(comp)).splitlines()[0]
    assert "margin" in header and header.count("|") == 5  # method + 3 columns
    cand = tmp_path / "cand"
    shutil.copytree(run_dir, cand)
    _add_reported_metric(cand, shift={"gsil-logistic": -5.0})
    result = compare_runs(run_dir, cand, n_boot=300)
    assert [(c.method, c.task, c.metric) for c in result.drops] == [("gsil-logistic", "gsm8k", "margin")]


def test_reported_defaults_for_files_written_before_the_field(run_dir):
    run = load_run(run_dir)
    res = run.find("sft", "gsm8k")[0]
    assert res.reported == ()
    res.metrics.pop("reported", None)
    res.task = "heldout_gsm8k"  # held-out results written before `reported`: compare checked their margin
    assert res.reported == ("margin",)
