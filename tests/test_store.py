"""The SQLite run index and the trend page built from it."""

from __future__ import annotations

import json
import sqlite3

import pytest
from test_reports_data import write_run

from gsil_bench.reports.index import RunIndex, default_index
from gsil_bench.reports.trend import final_scores, write_trend


def test_index_holds_every_metric_and_reindexing_replaces(tmp_path):
    run = write_run(tmp_path / "runs" / "night-1", seeds=(0, 1))
    index = RunIndex(default_index(run))
    assert index.path == tmp_path / "runs" / "runs.sqlite"
    run_id = index.add_run(run)
    # one metric per task (gsm8k, mt_bench) per evaluated model: base 2; sft 2 seeds x 1 iteration x 2 = 4;
    # spin, gsil-logistic, gsil-hinge 3 x 2 seeds x 2 iterations x 2 = 24
    expected = 2 + 4 + 24
    assert len(index.metrics()) == expected
    index.add_run(run)  # a resumed run re-indexed: no duplicates
    rows = index.metrics()
    assert len(rows) == expected and len(index.runs()) == 1
    r = rows[(rows.method == "spin") & (rows.seed == 1) & (rows.iteration == 2) & (rows.task == "gsm8k")].iloc[0]
    metrics = json.loads((run / "eval" / "spin" / "seed-1" / "iter-2" / "gsm8k" / "metrics.json").read_text())
    m = metrics["metrics"]["exact_match"]
    assert (r.value, r.ci_low, r.ci_high, r.n, r.run_id) == (m["value"], m["ci_low"], m["ci_high"], m["n"], run_id)
    assert r.shared_hash == "abc123def4567890" and r.experiment == "synthetic" and r.is_primary == 1
    base = rows[rows.method == "base"]
    assert len(base) == 2 and base.seed.isna().all() and (base.iteration == 0).all()


def test_index_is_plain_sqlite_queryable(tmp_path):
    index = RunIndex(tmp_path / "runs.sqlite")
    for i in range(3):
        index.add_run(write_run(tmp_path / f"night-{i}", rng_seed=i, base_level=0.3 + 0.05 * i))
    con = sqlite3.connect(tmp_path / "runs.sqlite")
    (n_runs,) = con.execute("SELECT COUNT(DISTINCT run_id) FROM metrics WHERE method = 'base'").fetchone()
    con.close()
    assert n_runs == 3
    hist = index.query("SELECT run_id, value FROM metrics WHERE method='base' AND task='gsm8k' ORDER BY run_id")
    assert len(hist) == 3


def test_trend_page(tmp_path):
    index = RunIndex(tmp_path / "runs.sqlite")
    for i in range(3):
        index.add_run(write_run(tmp_path / f"night-{i}", rng_seed=i))
    scores = final_scores(index.metrics(primary_only=True))
    spin = scores[(scores.method == "spin") & (scores.task == "gsm8k")]
    assert len(spin) == 3 and (spin.iteration == 2).all()
    page = write_trend(tmp_path / "runs.sqlite", tmp_path / "trend")
    text = page.read_text()
    assert "synthetic (3 runs)" in text and text.count("data:image/png;base64,") == 1
    assert "| spin" in (tmp_path / "trend" / "trend.md").read_text()
    with pytest.raises(FileNotFoundError, match="no runs of experiment 'nope'"):
        write_trend(tmp_path / "runs.sqlite", tmp_path / "trend", "nope")


def test_trend_page_speaks_the_reports_language(tmp_path, caplog):
    """Display names (not raw task names), the report's colour for each method (the trend page had its
    own order, so its own colours), and a legend that covers neither panels nor dates."""
    import matplotlib.pyplot as plt

    from gsil_bench.reports import trend
    from gsil_bench.reports.rundata import load_run
    from gsil_bench.reports.style import method_colors

    index = RunIndex(tmp_path / "runs.sqlite")
    for i in range(3):
        index.add_run(write_run(tmp_path / f"night-{i}", rng_seed=i))
    scores = final_scores(index.metrics(primary_only=True))
    drawn: dict = {}
    real_savefig = plt.Figure.savefig

    def keep(fig, *a, **k):
        drawn["fig"] = fig
        return real_savefig(fig, *a, **k)

    plt.Figure.savefig = keep
    try:
        with caplog.at_level("WARNING", logger="gsil_bench.reports.trend"):
            trend.trend_plot(scores, "synthetic", tmp_path / "t.png")
    finally:
        plt.Figure.savefig = real_savefig
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # figure_problems: nothing covered
    fig = drawn["fig"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["GSM8K exact match (%)", "MT-Bench judge score (1-10)"], titles
    report_colors = method_colors(load_run(tmp_path / "night-2").methods)
    from matplotlib.colors import to_hex

    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_label() in report_colors:
                assert to_hex(line.get_color()) == to_hex(report_colors[line.get_label()]), line.get_label()
    table = (tmp_path / "trend" / "trend.md") if (tmp_path / "trend").exists() else None
    assert table is None or "gsm8k (" not in table.read_text()
    assert "| GSM8K exact match (%)" in trend.latest_vs_previous(scores, "synthetic").to_markdown(index=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_trend(tmp_path / "missing.sqlite", tmp_path / "trend")
