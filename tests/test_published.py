"""`report.published`: the paper's rows beside ours, with differences and the interval check, on a
fixture run (tests/test_reports_data.py) against the real SPIN table in the data directory."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from test_reports_data import write_run

from gsil_bench.reports.published import PublishedError, load_published
from gsil_bench.reports.report import write_report
from gsil_bench.reports.rundata import load_run


def _with_published(root, spec, **methods_extra):
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["report"]["published"] = spec
    for m in cfg["methods"]:
        m.update(methods_extra.get(m["name"], {}))
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_report_shows_published_rows_and_differences(tmp_path, data_dir):
    root = _with_published(write_run(tmp_path / "r", iterations=2), "published/spin_zephyr_open_llm.csv",
                           sft={"overrides": {"optimizer.name": "adamw"}})
    page = write_report(root)
    run = load_run(root)
    with open(data_dir / "published/spin_zephyr_open_llm.csv") as fh:
        table = {(r["model"], int(r["iteration"])): r for r in csv.DictReader(fh)}
    rows = list(csv.DictReader(open(root / "report/published.csv")))
    by = {(r["model"], int(r["iteration"]), r["column"]): r for r in rows}
    # SPIN iteration 2 (the paper's iteration 1) against our spin iteration 2, on GSM8K
    rec = by[("SPIN", 2, "gsm8k")]
    (ours,) = [json.loads((run.root / "eval/spin/seed-0/iter-2/gsm8k/metrics.json").read_text())]
    m = ours["metrics"]["exact_match"]
    published = float(table[("SPIN", 2)]["gsm8k"]) / 100
    assert float(rec["published"]) == pytest.approx(published)
    assert float(rec["ours"]) == pytest.approx(m["value"])
    assert float(rec["diff"]) == pytest.approx(m["value"] - published)
    assert rec["in_interval"] == str(m["ci_low"] <= published <= m["ci_high"])
    # the starting model row is matched to our base evaluation; MT-Bench stays on its 1-10 scale
    base = by[("zephyr-7b-sft-full", 0, "mt_bench")]
    assert base["method"] == "base" and float(base["published"]) == pytest.approx(5.94)
    # rows or columns we did not evaluate are shown without our value
    assert by[("SPIN", 4, "gsm8k")]["ours"] == "" and by[("SFT-one-more-epoch", 1, "arc_challenge")]["ours"] == ""
    md = (root / "report/tables.md").read_text()
    assert "## Published numbers" in md and "SFT-one-more-epoch" in md and f"pub {published:.3f}" in md
    assert "per-method overrides (outside the hash): sft: optimizer.name=adamw" in md
    html = page.read_text()
    assert 'id="published"' in html and "optimizer.name=adamw" in html


def test_malformed_published_file_names_the_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("model,iteration,gsm8k\nSPIN,1,35.1\nSPIN,two,36.0\n")
    with pytest.raises(PublishedError, match=r"p.csv:3: iteration must be an integer"):
        load_published(path)
    path.write_text("model,iteration,gsm8k\nSPIN,1,high\n")
    with pytest.raises(PublishedError, match=r"p.csv:2: column 'gsm8k': not a number"):
        load_published(path)
    path.write_text("name,gsm8k\nSPIN,1\n")
    with pytest.raises(PublishedError, match=r"p.csv:1: the header must start with 'model,iteration'"):
        load_published(path)


def test_missing_published_file_is_a_clear_error(tmp_path, data_dir):
    root = _with_published(write_run(tmp_path / "r", iterations=1, n=20), "published/nope.csv")
    with pytest.raises(PublishedError, match=r"report.published: 'published/nope.csv' not found"):
        write_report(root)
