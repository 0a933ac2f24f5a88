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
    assert got["iteration_rows"] == 8 and got["cost_rows"] == 4
    assert [i["alt"] for i in got["images"]] == [fig.caption for fig in FIGURES]  # the one list of figures, in order
    for img in got["images"]:
        assert img["ok"] and img["w"] > 300 and img["h"] > 200, img
    assert got["title"].startswith("synthetic")

    shot = tmp_path / "report.png"
    proc = chromium(tmp_path, "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 50_000, proc.stderr[-2000:]
