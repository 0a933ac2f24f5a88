"""How results look in a paper: one colour per method in every figure, display names for
tasks and metrics, and percentages for fractions.

`method_colors(methods)` is computed once from the run's full method list (the starting
model first) and passed to every figure, so a method keeps its colour whether or not it
appears in a given panel. Labels, units and percentages come from the facts each task
declared for its metrics (core.facts, read from metrics.json by reports.rundata):
`column_label("GSM8K", facts)` gives "GSM8K exact match, strict-match (%)"; `number`
writes a fraction as a percentage. Nothing here knows a task or metric by name.
"""

from __future__ import annotations

from gsil_bench.core.facts import MetricFacts

BASE_COLOR = (0.0, 0.0, 0.0, 1.0)
# Okabe-Ito (colour-blind safe) first, then tab20 for long method lists
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#999999"]


def method_colors(methods: list[str], base: str = "base") -> dict[str, str | tuple[float, ...]]:
    """Method -> colour, stable for one run (the starting model is black)."""
    import matplotlib.pyplot as plt

    others = [m for m in methods if m != base]
    extra = plt.get_cmap("tab20")
    colors: dict[str, str | tuple[float, ...]] = {base: BASE_COLOR}
    for i, m in enumerate(others):
        colors[m] = PALETTE[i] if i < len(PALETTE) else extra((i - len(PALETTE)) % extra.N)
    return colors


def metric_text(facts: MetricFacts) -> str:
    """A metric's label with its unit: "exact match, strict-match (%)"."""
    return facts.label + (" (%)" if facts.percent else "")


def column_label(display: str, facts: MetricFacts) -> str:
    """A table header / axis label: the task's display name, the metric's label and unit."""
    return f"{display} {metric_text(facts)}"


def scale(facts: MetricFacts) -> float:
    return 100.0 if facts.percent else 1.0


def number(v: float | None, facts: MetricFacts, signed: bool = False) -> str:
    """A value in the metric's display unit: percentages with one decimal, else 3 significant."""
    if v is None or v != v:
        return "–"
    x = v * scale(facts)
    if facts.percent:
        return f"{x:+.1f}" if signed else f"{x:.1f}"
    spec = "+.3f" if signed else ".3f"
    return format(x, spec) if abs(x) < 10 else format(x, spec.replace("3", "2"))
