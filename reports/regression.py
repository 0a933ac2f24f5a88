"""Nightly regression: compare a candidate run against a baseline run.

For every (method, task) in the baseline, the candidate's final iteration is paired
with the baseline's item by item (shared sample ids, scores averaged over seeds) and
the change gets a paired-bootstrap interval. A significant change in the bad
direction larger than `tolerance` is a drop; a result the baseline has and the
candidate lacks is missing. `gsil-bench compare` exits 1 when either is found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from core.io import atomic_write_text  # noqa: E402
from reports import html as H  # noqa: E402
from reports.rundata import RunData, load_run  # noqa: E402
from reports.stats import PairedDiff, paired_bootstrap  # noqa: E402
from reports.tables import aggregate, fmt  # noqa: E402

log = logging.getLogger(__name__)
STATUS_MARK = {"drop": "▼ drop", "gain": "▲ gain", "ok": "ok", "unpaired": "unpaired", "missing": "MISSING"}


@dataclass
class Change:
    method: str
    task: str
    metric: str
    base_iteration: int
    cand_iteration: int | None
    base_value: float
    cand_value: float | None
    diff: PairedDiff | None
    status: str  # drop, gain, ok, unpaired (no shared per-item scores), missing


@dataclass
class CompareResult:
    baseline: RunData
    candidate: RunData
    alpha: float
    n_boot: int
    tolerance: float
    changes: list[Change] = field(default_factory=list)

    @property
    def drops(self) -> list[Change]:
        return [c for c in self.changes if c.status == "drop"]

    @property
    def missing(self) -> list[Change]:
        return [c for c in self.changes if c.status == "missing"]

    @property
    def failed(self) -> bool:
        return bool(self.drops or self.missing)

    @property
    def same_config(self) -> bool:
        return self.baseline.shared_hash == self.candidate.shared_hash


def _status(higher_is_better: bool, d: PairedDiff | None, tolerance: float) -> str:
    if d is None:
        return "unpaired"
    sign = d.sign if higher_is_better else -d.sign
    if sign < 0 and abs(d.diff) > tolerance:
        return "drop"
    return "gain" if sign > 0 and abs(d.diff) > tolerance else "ok"


def compare_runs(baseline: str | Path | RunData, candidate: str | Path | RunData, *, n_boot: int | None = None,
                 alpha: float | None = None, tolerance: float = 0.0) -> CompareResult:
    """Pair every (method, task) of `baseline` with `candidate` (final iterations);
    n_boot/alpha default to the candidate's report block (else 2000 / 0.05)."""
    base = baseline if isinstance(baseline, RunData) else load_run(baseline)
    cand = candidate if isinstance(candidate, RunData) else load_run(candidate)
    rc = cand.config.get("report") or {}
    n_boot = int(n_boot or rc.get("bootstrap") or 2000)
    alpha = float(alpha or rc.get("alpha") or 0.05)
    result = CompareResult(base, cand, alpha, n_boot, tolerance)
    for method in base.methods:
        for task in base.tasks:
            b_res = base.find(method, task)
            if not b_res:
                continue
            b_iv, b_items = aggregate(b_res, n_boot=n_boot, alpha=alpha)
            metric = b_res[0].primary
            c_res = cand.find(method, task)
            if not c_res:
                result.changes.append(Change(method, task, metric, b_res[0].iteration, None, b_iv.value, None,
                                             None, "missing"))
                continue
            c_iv, c_items = aggregate(c_res, n_boot=n_boot, alpha=alpha)
            d = paired_bootstrap(b_items, c_items, n_boot=n_boot, alpha=alpha) if b_items and c_items else None
            result.changes.append(Change(method, task, metric, b_res[0].iteration, c_res[0].iteration, b_iv.value,
                                         c_iv.value, d, _status(b_res[0].higher_is_better, d, tolerance)))
    return result


def changes_frame(result: CompareResult) -> pd.DataFrame:
    rows = []
    for c in result.changes:
        d = c.diff
        rows.append({
            "method": c.method, "task": f"{c.task} ({c.metric})", "baseline": fmt(c.base_value),
            "candidate": fmt(c.cand_value),
            "change [95% CI]": (f"{d.diff:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}]" if d else
                                ("–" if c.cand_value is None else f"{c.cand_value - c.base_value:+.4f} (unpaired)")),
            "p": f"{d.p_value:.3g}" if d else "–", "n shared": d.n if d else 0, "status": STATUS_MARK[c.status],
        })
    return pd.DataFrame(rows)


def _verdict(result: CompareResult) -> str:
    if result.failed:
        parts = []
        if result.drops:
            parts.append(f"{len(result.drops)} significant drop(s): "
                         + ", ".join(f"{c.method}/{c.task}" for c in result.drops))
        if result.missing:
            parts.append(f"{len(result.missing)} missing result(s): "
                         + ", ".join(f"{c.method}/{c.task}" for c in result.missing))
        return "REGRESSION: " + "; ".join(parts)
    return f"no significant drop ({len(result.changes)} method/task pairs compared)"


def _header(result: CompareResult) -> list[str]:
    b, c = result.baseline, result.candidate
    lines = [f"baseline: {b.root} (shared hash {b.shared_hash})", f"candidate: {c.root} (shared hash {c.shared_hash})"]
    if not result.same_config:
        lines.append("WARNING: the shared blocks differ: this is not a like-for-like comparison.")
    lines.append(f"paired bootstrap over shared sample ids, {result.n_boot} resamples, alpha={result.alpha}, "
                 f"tolerance={result.tolerance}")
    return lines


def forest_plot(result: CompareResult, path: Path) -> Path | None:
    pts = [c for c in result.changes if c.diff is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(pts) + 1.2))
    for y, c in enumerate(pts):
        d = c.diff
        assert d is not None
        color = {"drop": "#b3261e", "gain": "#137333"}.get(c.status, "#555555")
        ax.errorbar(d.diff, y, xerr=[[max(0.0, d.diff - d.ci_low)], [max(0.0, d.ci_high - d.diff)]], fmt="o", color=color, capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(pts)), [f"{c.method} / {c.task}" for c in pts])
    ax.invert_yaxis()
    ax.set_xlabel("candidate - baseline (paired, 95% CI)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def write_compare(result: CompareResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write compare.md and compare.html (self-contained) into `out_dir`."""
    out = Path(out_dir)
    frame = changes_frame(result)
    verdict = _verdict(result)
    md = [f"# Regression: {result.candidate.name} vs {result.baseline.name}", "", f"**{verdict}**", ""]
    md += [f"- {line}" for line in _header(result)] + [""]
    md += [frame.to_markdown(index=False, tablefmt="github") if len(frame) else "(nothing to compare)", ""]
    atomic_write_text(out / "compare.md", "\n".join(md))
    fig = forest_plot(result, out / "compare.png")
    cls = "bad" if result.failed else "ok"
    rows = frame.to_html(index=False, table_id="changes", classes="results", border=0) if len(frame) else ""
    body = (f"<h1>Regression: {H.esc(result.candidate.name)} vs {H.esc(result.baseline.name)}</h1>"
            f'<p class="{cls}" id="verdict">{H.esc(verdict)}</p>'
            + "".join(f"<p class=note>{H.esc(line)}</p>" for line in _header(result))
            + rows + H.figure(fig, "change per method and task with its paired 95% interval", "fig-compare"))
    atomic_write_text(out / "compare.html", H.page("gsil-bench compare", body))
    return out / "compare.md", out / "compare.html"
