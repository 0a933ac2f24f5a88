"""The report page in a real browser: headless Chromium loads report/index.html from
disk (no network), and a probe script (added to a copy of the page) writes into the
DOM what the browser made of it: the comparison table's rows and every figure's
decoded size. A screenshot is taken too.

Needs Debian's `chromium` (.ci/run installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_reports_data import write_run

from gsil_bench.reports.report import FIGURES, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

PROBE = """<script>
window.addEventListener("load", () => {
  const out = {
    comparison_rows: [...document.querySelectorAll("#comparison tbody tr")].map(r => r.cells[0].textContent.trim()),
    iteration_rows: document.querySelectorAll("#iterations tbody tr").length,
    cost_rows: document.querySelectorAll("#costs tbody tr").length,
    images: [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, ok: i.complete})),
    title: document.title,
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome-profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_renders_in_chromium(tmp_path):
    run = write_run(tmp_path / "run", seeds=(0, 1))
    page = write_report(run, n_boot=300)
    probe_page = page.with_name("probe.html")
    probe_page.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    proc = chromium(tmp_path, "--dump-dom", probe_page.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"probe did not run; chromium rc={proc.returncode}, stderr tail:\n{proc.stderr[-2000:]}"
    got = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert got["comparison_rows"] == ["base", "sft", "spin", "gsil-logistic", "gsil-hinge"]
    assert got["iteration_rows"] == 8 and got["cost_rows"] == 5  # four methods and the total
    assert [i["alt"] for i in got["images"]] == [fig.caption for fig in FIGURES]  # the one list of figures, in order
    for img in got["images"]:
        assert img["ok"] and img["w"] > 300 and img["h"] > 200, img
    assert got["title"].startswith("synthetic")

    shot = tmp_path / "report.png"
    proc = chromium(tmp_path, "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 50_000, proc.stderr[-2000:]


LAYOUT_PROBE = """<script>
window.addEventListener("load", () => {
  const width = document.documentElement.clientWidth;
  const tables = [...document.querySelectorAll("table")].map(t => {
    const box = t.parentElement;
    const scrolls = box.classList.contains("scroll") && getComputedStyle(box).overflowX === "auto";
    return {id: t.id || t.className, right: t.getBoundingClientRect().right, width: t.scrollWidth,
            boxRight: box.getBoundingClientRect().right, scrolls: scrolls};
  });
  const images = [...document.images].map(i => ({alt: i.alt, right: i.getBoundingClientRect().right,
                                                 w: i.naturalWidth, ok: i.complete}));
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({width: width, pageWidth: document.documentElement.scrollWidth,
                                    tables: tables, images: images});
  document.body.appendChild(pre);
});
</script>"""


def _layout(tmp_path: Path, page: Path, width: int) -> dict:
    probe_page = page.with_name(f"probe-{width}.html")
    probe_page.write_text(page.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    proc = chromium(tmp_path, f"--window-size={width},3000", "--dump-dom", probe_page.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"probe did not run; chromium rc={proc.returncode}, stderr tail:\n{proc.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_the_main_job_report_fits_the_page_at_two_widths(tmp_path):
    """The main job's report (configs/smoke.yaml's ten methods) as a reviewer opens it: at 1400 px every
    table fits the page (a column of the comparison used to be cut there); at 800 px a table wider than
    the page scrolls in its own box and the page itself never does; every figure loads and fits. The
    figures were drawn without a problem figure_problems finds (unreadable axes, hidden curves, text off
    the canvas, covering legends). Screenshots at both widths are kept in the test's folder for a look."""
    import logging

    from test_report_figures import write_main_job

    problems: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda rec: problems.append(rec.getMessage())  # type: ignore[method-assign]
    logging.getLogger("gsil_bench.reports.plots").addHandler(handler)
    try:
        page = write_report(write_main_job(tmp_path / "smoke"), n_boot=200)
    finally:
        logging.getLogger("gsil_bench.reports.plots").removeHandler(handler)
    assert problems == []
    wide, narrow = _layout(tmp_path, page, 1400), _layout(tmp_path, page, 800)
    for got in (wide, narrow):
        assert got["pageWidth"] <= got["width"], got["pageWidth"]  # the page never scrolls sideways
        for img in got["images"]:
            assert img["ok"] and img["w"] > 300 and img["right"] <= got["width"], img
        for t in got["tables"]:
            fits = t["right"] <= got["width"] + 1
            assert fits or (t["scrolls"] and t["boxRight"] <= got["width"] + 1), t
    ids = {t["id"]: t for t in wide["tables"]}
    for name in ("comparison", "iterations", "costs", "anatomy", "differences", "abbreviations"):
        assert ids[name]["right"] <= wide["width"], ids[name]  # nothing to scroll at 1400 px
    for width in (1400, 800):
        shot = tmp_path / f"report-{width}.png"
        proc = chromium(tmp_path, "--hide-scrollbars", f"--window-size={width},2400", f"--screenshot={shot}",
                        page.as_uri())
        assert shot.is_file() and shot.stat().st_size > 50_000, proc.stderr[-2000:]
