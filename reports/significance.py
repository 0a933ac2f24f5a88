"""The differences table: every method against the baseline on every task, with the
difference, its interval, the paired-bootstrap p-value and the p-value after Holm's
correction across all of the table's comparisons (Holm 1979: step-down Bonferroni, which
controls the family-wise error rate without assuming independence).

Values are in the metric's display unit (percentage points for fractions).
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from gsil_bench.core.facts import MetricFacts
from gsil_bench.reports.style import metric_text, number
from gsil_bench.reports.tables import Comparison


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (same order as given): p_(i) * (m - i + 1), made monotone, capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, pvalues[i] * (m - rank)))
        adjusted[i] = running
    return adjusted


def comparisons(comp: Comparison) -> list[dict]:
    """One record per (method, task) compared with the baseline, with Holm's p added."""
    rows: list[dict[str, Any]] = []
    for (method, it, column), cell in comp.cells.items():
        d = cell.vs_baseline
        if d is None:
            continue
        rows.append({"method": method, "iteration": it, "task": comp.task_of(column), "metric": cell.metric, "diff": d.diff,
                     "ci_low": d.ci_low, "ci_high": d.ci_high, "p": d.p_value, "n": d.n,
                     "higher_is_better": cell.higher_is_better,
                     "facts": cell.facts or MetricFacts.from_json(None, cell.metric)})
    for row, adj in zip(rows, holm([float(r["p"]) for r in rows])):
        row["p_holm"] = adj
    return rows


def _p(p: float, style: str = "md") -> str:
    if p < 0.001:
        return {"tex": "$<$0.001", "html": "&lt;0.001"}.get(style, "<0.001")
    return f"{p:.3f}"


def differences_frame(comp: Comparison, style: str = "md") -> pd.DataFrame:
    """Rows (method, task): difference [interval], p, Holm p; significant after Holm in bold."""
    records = []
    for r in comparisons(comp):
        facts = r["facts"]
        diff = number(r["diff"], facts, signed=True)
        ci = f"[{number(r['ci_low'], facts, True)}, {number(r['ci_high'], facts, True)}]"
        sig = r["p_holm"] < comp.alpha
        p_holm = _p(r["p_holm"], style)
        if sig:
            p_holm = {"md": f"**{p_holm}**", "tex": rf"\textbf{{{p_holm}}}", "html": f"<strong>{p_holm}</strong>"}[style]
        name = r["method"] if style != "html" else html.escape(r["method"])
        records.append({"method": name, "task": comp.run.display(r["task"]), "metric": metric_text(facts),
                        f"difference vs {comp.baseline}": diff, f"{int(round(100 * (1 - comp.alpha)))}% interval": ci,
                        "p": _p(r["p"], style), "p (Holm)": p_holm, "n": str(r["n"])})
    return pd.DataFrame(records)


def differences_note(comp: Comparison, style: str = "md") -> str:
    n = len(comparisons(comp))
    base = f"`{comp.baseline}`" if style == "md" else comp.baseline
    return (f"Difference = method minus {base} on the items both scored (percentage points for percentages); "
            f"interval and p from a paired bootstrap ({comp.n_boot} resamples); p (Holm): adjusted across the "
            f"{n} comparisons of this table; bold: significant at alpha={comp.alpha} after adjustment.")
