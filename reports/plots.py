"""The report's figures of results (drawn and saved with reports.figures: PNG at 300 dpi, with PDF
and SVG beside it):

- `ablation_plot`: the members of every loss family with two or more (GSIL's convex functions, DPO's variants) side by
  side per task with their intervals, against the baseline and the starting model;
- `training_curves`: the loss (one panel per loss family: their scales differ), real and
  generated rewards and classifier accuracy per optimizer step, per method (self-play
  iterations concatenated, each iteration's start marked);
- `iteration_plot`: score against self-play iteration (iteration 0 = the starting model).

Each returns the PNG path, or None when the run holds nothing to draw. A method has one
colour in every figure (`reports.style.method_colors` over the run's methods); axes carry
labels with display names and units; the legend sits below the panels, clear of the x labels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

from gsil_bench.reports.curves import Divergence, divergences, reward_axis, reward_scales
from gsil_bench.reports.figures import NOTE_POINTS, TITLE_POINTS, draw_distinct, grid, layout, plt, save, titled
from gsil_bench.reports.rundata import BASE, RunData, family_of, method_facts
from gsil_bench.reports.stats import Interval
from gsil_bench.reports.style import method_colors, scale
from gsil_bench.reports.tables import Comparison

YLABELS = {"loss": "loss", "rewards/accuracy": "fraction of pairs with r(real) > r(generated)"}
CURVES = (  # (metrics.jsonl key, panel title)
    ("loss", "training loss"),
    ("rewards/real", "reward of real"),
    ("rewards/generated", "reward of generated"),
    ("rewards/accuracy", "classifier accuracy"),
)
def _below(iv: Interval) -> float:
    """Error-bar length below the value (intervals may exclude their value by float rounding)."""
    return max(0.0, iv.value - iv.ci_low)


def _above(iv: Interval) -> float:
    return max(0.0, iv.ci_high - iv.value)


def _scale_for_spread(ax: plt.Axes) -> None:
    """Symmetric-log y axis when the methods' curves differ by more than 20x in size (e.g.
    a token-mean SFT loss beside a summed IPO loss), so every curve stays readable."""
    data = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()]
    sizes = [float(np.nanmax(np.abs(y))) for y in data if y.size]
    sizes = [v for v in sizes if v > 0]
    if len(sizes) > 1 and max(sizes) > 20 * min(sizes):
        lin = 10.0 ** np.floor(np.log10(max(min(sizes), 1e-3)))  # a power of ten: the linear part is one decade
        ax.set_yscale("symlog", linthresh=lin)
        ax.yaxis.set_major_locator(FixedLocator(_symlog_ticks(ax, lin)))
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        ax.yaxis.set_minor_locator(FixedLocator([]))
        ax.set_title(ax.get_title() + " (symlog)", fontsize=TITLE_POINTS)


def _symlog_ticks(ax: plt.Axes, lin: float) -> list[float]:
    """0, then 1-2-5 steps of each decade from linthresh outwards (1-3 steps past three decades, powers
    of ten alone past five), written as plain numbers: every curve has labelled ticks near it, and
    no label sits within a decade of 0's (linthresh is a power of ten: its own decade of space)."""
    lo, hi = (float(v) for v in ax.dataLim.intervaly)
    ticks = [0.0]
    for sign, extent in ((1.0, hi), (-1.0, -lo)):
        if extent < lin:
            continue
        decades = int(np.floor(np.log10(extent / lin))) + 1
        steps = (1, 2, 5) if decades <= 3 else (1, 3) if decades <= 5 else (1,)
        p = lin
        while p <= extent * 1.0001:
            ticks += [sign * p * k for k in steps if p * k <= max(extent * 1.5, p)]
            p *= 10
    return sorted(set(ticks))


def _plain(v: float, _pos: object = None) -> str:
    """A tick label as a plain number (0.5, 20, 1e+04), never 10^x."""
    return "0" if v == 0 else f"{v:g}"


def family_members(run: RunData, family: str) -> list[str]:
    """Unswept methods whose loss declared `family` in the registry (losses.json; sweep variants
    have their own figure, reports.ablation)."""
    facts = method_facts(run)
    return [m for m in run.methods if m != BASE and (facts.get(m) or {}).get("family") == family
            and not (facts.get(m) or {}).get("sweep")]


def ablation_families(run: RunData) -> list[str]:
    """Every loss family with at least two unswept members in the run (a family of one has nothing to
    compare), in the run's method order: the loss-family ablation draws each."""
    facts = method_facts(run)
    fams = list(dict.fromkeys(str((facts.get(m) or {}).get("family")) for m in run.methods
                              if m != BASE and (facts.get(m) or {}).get("family")))
    return [f for f in fams if len(family_members(run, f)) >= 2]


def ablation_plot(comp: Comparison, path: Path, family: str | None = None) -> Path | None:
    """The members of every loss family with two or more unswept members (or of `family`), one row of
    panels per family, one panel per task column, bars with intervals; the baseline and the starting
    model as reference lines."""
    panels = []
    for fam in ([family] if family else ablation_families(comp.run)):
        members = [m for m in family_members(comp.run, fam) if any(k[0] == m for k in comp.cells)]
        cols = [c for c in comp.columns if any(k[0] in members and k[2] == c for k in comp.cells)]  # no empty panels
        panels += [(fam, members, col) for col in cols]
    if not panels:
        return None
    fig, axes = grid(len(panels))
    colors = method_colors(comp.run.methods)
    for ax, (fam, members, col) in zip(axes, panels):  # a task, or task/metric
        xs = np.arange(len(members))
        for x, m in zip(xs, members):
            it = next((k[1] for k in comp.cells if k[0] == m and k[2] == col), None)
            cell = comp.cells.get((m, it, col)) if it is not None else None
            if cell is None:
                continue
            iv, k = cell.interval, scale(comp.facts_of(col))
            err = [[k * _below(iv)], [k * _above(iv)]]
            ax.bar(x, k * iv.value, yerr=err, color=colors[m], capsize=4, edgecolor="black", linewidth=0.5)
        for ref, style in ((comp.baseline, "--"), (BASE, ":")):
            if ref in members:
                continue
            cell = next((c for k, c in comp.cells.items() if k[0] == ref and k[2] == col), None)
            if cell is not None:
                ax.axhline(scale(comp.facts_of(col)) * cell.interval.value, color=colors.get(ref, "black"), linestyle=style,
                           linewidth=1.2, label=ref)
        ax.set_xticks(xs, [m.removeprefix(fam + "-") for m in members], rotation=30, ha="right")
        titled(ax, f"{fam.upper()} family: {comp.run.display(comp.task_of(col))}")
        ax.set_ylabel(comp.label_of(col))
        ax.set_xlabel(f"{fam.upper()} member")
    fig.suptitle(f"loss families: final iteration, {int(100 * (1 - comp.alpha))}% intervals")
    layout(fig, axes, rect_top=0.95)
    return save(fig, path)


def loss_family(run: RunData, method: str) -> str:
    """The family of a method's loss as the loss declared it in the registry (losses.json); a run folder
    without that file: the loss's own name (its own family), never guessed from the name."""
    return family_of(run, method) or run.loss_of(method)


def _concatenated(run: RunData, methods: list[str]) -> tuple[dict[tuple[str, int], list[dict]],
                                                             dict[str, dict[float, int]]]:
    """Each (method, seed)'s curve with its iterations one after another on one step axis (`_x`), and
    per method the steps where an iteration starts -> that iteration (the boundaries drawn on the axis)."""
    curves: dict[tuple[str, int], list[dict]] = {}
    starts: dict[str, dict[float, int]] = {}
    for m in methods:
        for seed in sorted({t.seed for t in run.train if t.method == m}):
            rows: list[dict] = []
            for t in sorted((t for t in run.train if t.method == m and t.seed == seed), key=lambda t: t.iteration):
                offset = rows[-1]["_x"] if rows else 0
                if rows:
                    starts.setdefault(m, {}).setdefault(offset + 0.5, t.iteration)
                rows += [{**r, "_x": offset + int(r.get("step", i + 1))} for i, r in enumerate(t.curve())]
            curves[(m, seed)] = rows
    return curves, starts


def _panels(run: RunData, curves: dict[tuple[str, int], list[dict]]) -> list[tuple[str, str, list[str]]]:
    """(metrics.jsonl key, title, methods) per panel: the loss once per loss family (their scales differ:
    a token-mean NLL beside a summed-log-ratio hinge), each reward once per family too (DPO and SPIN log
    beta*r, GSIL r: reports.curves), then the classifier accuracy for every method."""
    methods = list(dict.fromkeys(m for m, _ in curves))
    has = {key: [m for m in methods if any(key in r for (mm, _), rows in curves.items() if mm == m for r in rows)]
           for key, _ in CURVES}
    panels = []
    for key, title in CURVES[:3]:
        families = list(dict.fromkeys(loss_family(run, m) for m in has[key]))
        panels += [(key, f"{title}: {fam}", [m for m in has[key] if loss_family(run, m) == fam]) for fam in families]
    return panels + [(key, title, has[key]) for key, title in CURVES[3:] if has[key]]


def _mark_iterations(ax: plt.Axes, starts: dict[float, int]) -> None:
    """A dotted line where each self-play iteration starts, labelled at the top."""
    for x, it in sorted(starts.items()):
        ax.axvline(x, color="0.55", linestyle=":", linewidth=0.9, zorder=0)
        ax.text(x, 1.0, f" iter {it}", transform=ax.get_xaxis_transform(), fontsize=NOTE_POINTS, color="0.3",
                va="top", ha="left").set_in_layout(False)


def _draw_curves(ax: plt.Axes, curves: dict[tuple[str, int], list[dict]], key: str, shown: list[str],
                 colors: dict[str, Any]) -> str:
    """Every shown method's curve(s) of `key` (draw_distinct)."""
    pts_of: dict[tuple[str, int], tuple[Any, Any]] = {}
    for (m, seed), rows in curves.items():
        pts = [(r["_x"], r[key]) for r in rows if r.get(key) is not None]
        if pts and m in shown:
            xs, ys = zip(*pts)
            pts_of[(m, seed)] = (xs, ys)
    return draw_distinct(ax, pts_of, colors)


def _mark_divergence(ax: plt.Axes, curves: dict[tuple[str, int], list[dict]], shown: list[str],
                     diverged: list[Divergence]) -> None:
    """A red cross where a shown method's training diverged, and the panel's title says so."""
    hit = []
    for d in diverged:
        if d.method not in shown:
            continue
        rows = [r for r in curves.get((d.method, d.seed), []) if r.get("step") == d.step]
        x = next((r["_x"] for r in rows if r.get("loss") is not None and (r["loss"] == d.value or d.value != d.value)), None)
        if x is not None and math.isfinite(d.value):
            ax.plot([x], [d.value], marker="x", color="#b3261e", markersize=9, markeredgewidth=2, zorder=10)
        hit.append(d.method)
    if hit:
        ax.set_title(ax.get_title() + "\nDIVERGED: " + ", ".join(dict.fromkeys(hit)), color="#b3261e",
                     fontsize=TITLE_POINTS)


def _ylabel(run: RunData, key: str, shown: list[str]) -> str:
    if key in ("rewards/real", "rewards/generated"):
        scales = reward_scales(run)
        return reward_axis("real" if key == "rewards/real" else "generated", [scales.get(m) for m in shown])
    return YLABELS.get(key, key)


def training_curves(run: RunData, path: Path) -> Path | None:
    methods = [m for m in run.methods if any(t.method == m for t in run.train)]
    if not methods:
        return None
    curves, starts = _concatenated(run, methods)
    panels = _panels(run, curves)
    if not panels:
        return None
    fig, axes = grid(len(panels))
    colors = method_colors(run.methods)
    diverged = divergences(run)
    for ax, (key, title, shown) in zip(axes, panels):
        titled(ax, title, _draw_curves(ax, curves, key, shown, colors))
        ax.set_ylabel(_ylabel(run, key, shown))
        if key == "loss":
            _scale_for_spread(ax)
            _mark_divergence(ax, curves, shown, diverged)
        _mark_iterations(ax, {x: it for m in shown for x, it in starts.get(m, {}).items()})
        ax.set_xlabel("optimizer step (iterations concatenated)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    layout(fig, axes)
    return save(fig, path)


def iteration_plot(per_iter: Comparison, path: Path) -> Path | None:
    cells = per_iter.cells
    methods = [m for m in per_iter.run.methods if m != BASE and any(k[0] == m for k in cells)]
    cols = [c for c in per_iter.columns if any(k[0] in methods and k[2] == c for k in cells)]  # no empty panels
    if not methods or not cols:
        return None
    fig, axes = grid(len(cols))
    colors = method_colors(per_iter.run.methods)
    for ax, col in zip(axes, cols):
        k = scale(per_iter.facts_of(col))
        base = next((_scaled(c.interval, k) for (m, _, t), c in cells.items() if m == BASE and t == col), None)
        if base is not None:
            ax.errorbar([0], [base.value], yerr=[[_below(base)], [_above(base)]], color="black", marker="s",
                        markersize=5, capsize=3, label=BASE)
        for j, m in enumerate(methods):
            pts = sorted((it, _scaled(c.interval, k)) for (mm, it, t), c in cells.items() if mm == m and t == col)
            if not pts:
                continue
            dodge = (j - (len(methods) - 1) / 2) * 0.03  # overlapping methods stay visible
            x = np.array([p[0] for p in pts], dtype=float) + dodge
            y = np.array([p[1].value for p in pts])
            err = np.array([[_below(p[1]) for p in pts], [_above(p[1]) for p in pts]])
            ax.errorbar(x, y, yerr=err, color=colors[m], marker="o", markersize=4, capsize=3, linewidth=1.2, label=m)
            if base is not None:  # from the starting model to the first iteration
                ax.plot([0, x[0]], [base.value, y[0]], color=colors[m], linewidth=0.8, linestyle=":")
        ax.set_title(per_iter.run.display(per_iter.task_of(col)))
        ax.set_ylabel(per_iter.label_of(col))
        ax.set_xlabel("self-play iteration (0 = starting model)")
        last = max((k[1] for k in cells), default=1)
        ax.set_xticks(range(last + 1))  # the iterations themselves (a one-point panel gets no fractional ticks)
        ax.set_xlim(-0.5, last + 0.5)
    layout(fig, axes)
    return save(fig, path)


def _scaled(iv: Interval, k: float) -> Interval:
    """An interval in display units (percent for fractions)."""
    return Interval(iv.value * k, iv.ci_low * k, iv.ci_high * k, iv.n, iv.seeds)
