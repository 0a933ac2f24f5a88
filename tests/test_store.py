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
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_trend(tmp_path / "missing.sqlite", tmp_path / "trend")
