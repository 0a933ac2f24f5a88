"""Publication-ready report output: one colour per method in every figure, PNG (300 dpi)
with PDF and SVG beside it, display names and percentages, the differences table with
Holm-corrected p-values in Markdown, LaTeX and HTML, a clean LaTeX caption, integer seeds,
and the page (with its differences table) as headless Chromium renders it."""

from __future__ import annotations

import json
import re

import pytest
from test_browser import CHROMIUM, chromium
from test_reports_data import write_run

from gsil_bench.reports import significance, tables
from gsil_bench.reports.report import write_report
from gsil_bench.reports.rundata import load_run
from gsil_bench.reports.style import column_label, method_colors, number
from gsil_bench.tasks.api import make_task
from gsil_bench.tasks.base import facts_of


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = write_run(tmp_path_factory.mktemp("pub") / "r", seeds=(0, 1),
                     accuracy={"sft": 0.35, "spin": 0.36, "gsil-logistic": 0.7, "gsil-hinge": 0.5})
    return root, write_report(root, n_boot=300)


def test_holm_matches_its_definition():
    # Holm 1979: sorted p (0.01, 0.02, 0.04, 0.3) x (4, 3, 2, 1) = (0.04, 0.06, 0.08, 0.3), kept monotone
    assert significance.holm([0.04, 0.01, 0.3, 0.02]) == pytest.approx([0.08, 0.04, 0.3, 0.06])
    assert significance.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert significance.holm([0.01, 0.011]) == pytest.approx([0.02, 0.02])  # monotone step-down


def test_a_method_has_one_colour_in_every_figure(report):
    root, _ = report
    run = load_run(root)
    colors = method_colors(run.methods)
    assert colors["base"] == (0.0, 0.0, 0.0, 1.0) and len({str(c) for c in colors.values()}) == len(colors)
    plots = root / "report" / "plots"
    for name in ("ablation", "iterations", "training"):
        svg = (plots / f"{name}.svg").read_text().lower()
        assert colors["gsil-logistic"].lower() in svg and colors["gsil-hinge"].lower() in svg, name
    assert colors["spin"].lower() in (plots / "iterations.svg").read_text().lower()
    assert colors["spin"].lower() not in (plots / "ablation.svg").read_text().lower()  # not a GSIL member


def test_figures_come_as_300_dpi_png_pdf_and_svg_with_axis_labels(report):
    from PIL import Image

    plots = report[0] / "report" / "plots"
    for name in ("ablation", "iterations", "training"):
        assert (plots / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        with Image.open(plots / f"{name}.png") as img:
            assert round(img.info["dpi"][0]) == 300
    svg = (plots / "iterations.svg").read_text()
    for label in ("self-play iteration (0 = starting model)", "GSM8K exact match (%)", "MT-Bench judge score (1-10)"):
        assert label in svg
    assert "GSIL member" in (plots / "ablation.svg").read_text()  # a row of panels per loss family


def test_tables_use_display_names_percentages_and_holm(report):
    root, _ = report
    comp = tables.build_comparison(load_run(root), baseline="sft", n_boot=300)
    rows = significance.comparisons(comp)
    assert len(rows) == 8  # 4 methods (base included) x 2 tasks against sft
    assert [r["p_holm"] for r in rows] == pytest.approx(significance.holm([r["p"] for r in rows]))
    md = (root / "report" / "tables.md").read_text()
    gsm = comp.cells[("gsil-logistic", 2, "gsm8k")].interval
    assert f"**{100 * gsm.value:.1f}** [{100 * gsm.ci_low:.1f}, {100 * gsm.ci_high:.1f}]" in md
    assert "| GSM8K exact match (%)" in md and "## Differences against sft" in md and "p (Holm)" in md
    diff = next(r for r in rows if r["method"] == "gsil-logistic" and r["task"] == "gsm8k")
    assert f"| {number(diff['diff'], diff['facts'], signed=True)} " in md and diff["facts"].percent
    plus = make_task("mbpp_plus")  # labels and units as the task declares them (core.facts)
    assert column_label(plus.info.display, facts_of(plus, "pass@1+")) == "MBPP+ pass@1+ (%)"


def test_latex_caption_is_clean_and_seeds_are_integers(report):
    root, _ = report
    tex = (root / "report" / "tables.tex").read_text()
    caption = re.search(r"\\caption\{(.*?)\}\n", tex).group(1)
    assert "`" not in caption and "up-arrow" not in caption and "▲" not in tex
    assert r"$\uparrow$/$\downarrow$" in caption
    assert r"\label{tab:synthetic-differences}" in tex and "p (Holm)" in tex
    csv = (root / "report" / "results.csv").read_text().splitlines()
    assert any(line.startswith("base,,0,") for line in csv) and any(line.startswith("sft,1,1,") for line in csv)
    assert not any(re.match(r"\w[\w-]*,\d+\.0,", line) for line in csv)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_differences_table_renders_in_chromium(report, tmp_path):
    _, page = report
    probe = page.with_name("probe-diff.html")
    script = ("<script>window.addEventListener('load',()=>{const p=document.createElement('pre');p.id='probe';"
              "p.textContent=JSON.stringify([...document.querySelectorAll('#differences tbody tr')]"
              ".map(r=>[...r.cells].map(c=>c.textContent)));document.body.appendChild(p);});</script>")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    proc = chromium(tmp_path, "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-2000:]
    rows = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<"))
    assert len(rows) == 8 and rows[0][:3] == ["base", "GSM8K", "exact match (%)"]
    assert all(re.fullmatch(r"<?\d\.\d{3}", r[6]) for r in rows)
