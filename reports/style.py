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
# 23 colours, each at least 21 CIELAB units (delta E 1976) from every earlier one and from the starting
# model's black; the first 10 (the ten shipped methods in config order) at least 33 apart. Okabe-Ito
# (colour-blind safe) first, then Paul Tol's and tab20's colours picked greedily for the largest smallest
# distance (lightness below 80, so every colour shows on white). Longer method lists cycle with hues
# spread around the wheel.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#332288", "#661100", "#BBBBBB", "#EE3377",
           "#999933", "#17BECF", "#2CA02C", "#FF9896", "#882255", "#8C564B", "#9467BD", "#D62728", "#56B4E9",
           "#BCBD22", "#7F7F7F", "#117733", "#AA4499", "#C5B0D5"]


def method_colors(methods: list[str], base: str = "base") -> dict[str, str | tuple[float, ...]]:
    """Method -> colour, stable for one run (the starting model is black)."""
    import matplotlib

    others = [m for m in methods if m != base]
    extra = matplotlib.colormaps["hsv"]
    colors: dict[str, str | tuple[float, ...]] = {base: BASE_COLOR}
    for i, m in enumerate(others):
        j = i - len(PALETTE)
        colors[m] = PALETTE[i] if j < 0 else extra((j * 0.381966) % 1.0)  # golden-ratio steps around the hue wheel
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
