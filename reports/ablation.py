"""Parameter ablations: a metric against a swept parameter's value, per loss member.

A sweep (core.sweeps) expands a method into variants such as `gsil-logistic[b=0]`,
`gsil-logistic[b=1]`, ...; losses.json (trainers.anatomy) records each variant's swept keys
and values (`sweep`) and the label it came from (`sweep_of`). For every swept key this draws
one figure, `plots/sweep-<key>.png`: one panel per task column that has results for the
variants, x = the parameter's value, one line per member (the label swept) with its 95%
intervals at the final iteration; the report's baseline and the starting model as reference
lines, and every unswept method of the run as a thin line of its own colour. A grid over two
keys draws one line per member and value of the other key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gsil_bench.reports.anatomy import method_facts
from gsil_bench.reports.figures import grid, layout, plt, save
from gsil_bench.reports.rundata import BASE
from gsil_bench.reports.style import method_colors, scale
from gsil_bench.reports.tables import Cell, Comparison


def swept_keys(facts: dict[str, dict[str, Any]]) -> list[str]:
    """Every swept key of the run, in first-seen order."""
    return list(dict.fromkeys(k for m in facts.values() for k in (m.get("sweep") or {})))


def _text(v: Any) -> str:
    return format(float(v), "g") if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


def _lines(facts: dict[str, dict[str, Any]], key: str) -> dict[str, list[tuple[Any, str]]]:
    """Line name -> [(value of `key`, variant label)], sorted by value."""
    out: dict[str, list[tuple[Any, str]]] = {}
    for label, m in facts.items():
        sweep = m.get("sweep") or {}
        if key not in sweep:
            continue
        others = ",".join(f"{k.rsplit('.', 1)[-1]}={_text(v)}" for k, v in sweep.items() if k != key)
        name = str(m.get("sweep_of") or label) + (f" [{others}]" if others else "")
        out.setdefault(name, []).append((sweep[key], label))
    return {n: sorted(pts, key=lambda p: (isinstance(p[0], str), p[0])) for n, pts in out.items()}


def _cell(comp: Comparison, method: str, col: str) -> Cell | None:
    its = [k[1] for k in comp.cells if k[0] == method and k[2] == col]
    return comp.cells.get((method, max(its), col)) if its else None


def _references(comp: Comparison, facts: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(method, line style): the baseline, the starting model, then every unswept method."""
    refs = [(comp.baseline, "--"), (BASE, ":")]
    refs += [(m, "-.") for m in comp.run.methods if m not in (comp.baseline, BASE)
             and not (facts.get(m) or {}).get("sweep")]
    return [(m, s) for m, s in refs if m in comp.run.methods and not (facts.get(m) or {}).get("sweep")]


def sweep_points(comp: Comparison, col: str, lines: dict[str, list[tuple[Any, str]]]
                 ) -> dict[str, list[tuple[Any, float, float, float]]]:
    """Line -> [(parameter value, value, interval low, interval high)] in display units, for the
    variants with a result in column `col`."""
    k = scale(comp.facts_of(col))
    out: dict[str, list[tuple[Any, float, float, float]]] = {}
    for name, pts in lines.items():
        for v, label in pts:
            cell = _cell(comp, label, col)
            if cell is not None:
                iv = cell.interval
                out.setdefault(name, []).append((v, k * iv.value, k * iv.ci_low, k * iv.ci_high))
    return out


def _panel(ax: plt.Axes, comp: Comparison, col: str, lines: dict[str, list[tuple[Any, str]]],
           facts: dict[str, dict[str, Any]], colors: dict[str, Any], key: str) -> None:
    ticks = sorted({v for pts in lines.values() for v, _ in pts}, key=lambda v: (isinstance(v, str), v))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in ticks)
    points = sweep_points(comp, col, lines)
    for j, (name, pts) in enumerate(points.items()):
        xs = np.array([float(v) if numeric else ticks.index(v) for v, *_ in pts], dtype=float)
        ys = np.array([p[1] for p in pts])
        err = np.array([[max(0.0, p[1] - p[2]) for p in pts], [max(0.0, p[3] - p[1]) for p in pts]])
        dodge = (j - (len(points) - 1) / 2) * 0.02 * (float(xs.max() - xs.min()) or 1.0)
        ax.errorbar(xs + dodge, ys, yerr=err, color=colors.get(lines[name][0][1], "grey"), marker="o", markersize=4,
                    capsize=3, linewidth=1.3, label=name)
    k = scale(comp.facts_of(col))
    for ref, style in _references(comp, facts):
        cell = _cell(comp, ref, col)
        if cell is not None:
            ax.axhline(k * cell.interval.value, color=colors.get(ref, "black"), linestyle=style,
                       linewidth=1.0 if style == "-." else 1.3, label=ref)
    if not numeric:
        ax.set_xticks(range(len(ticks)), [_text(t) for t in ticks])
    elif min(ticks) > 0 and max(ticks) >= 10 * min(ticks):  # a learning rate: decades apart
        ax.set_xscale("log")
    ax.set_title(comp.run.display(comp.task_of(col)))
    ax.set_ylabel(comp.label_of(col))
    ax.set_xlabel(f"{key.rsplit('.', 1)[-1]} ({key})")


def sweep_lines(comp: Comparison) -> dict[str, dict[str, list[tuple[Any, str]]]]:
    """Swept key -> its lines (`_lines`), for every key of the run's sweeps."""
    facts = method_facts(comp.run)
    return {key: _lines(facts, key) for key in swept_keys(facts)}


def sweep_plots(comp: Comparison, out_dir: Path) -> list[Path]:
    """One figure per swept key (none when the run has no sweep)."""
    facts = method_facts(comp.run)
    paths = []
    for key in swept_keys(facts):
        lines = _lines(facts, key)
        variants = {label for pts in lines.values() for _, label in pts}
        cols = [c for c in comp.columns if any(_cell(comp, v, c) is not None for v in variants)]
        if not cols:
            continue
        colors = method_colors(comp.run.methods)  # a line takes its first variant's colour
        fig, axes = grid(len(cols))
        for ax, col in zip(axes, cols):
            _panel(ax, comp, col, lines, facts, colors, key)
        fig.suptitle(f"ablation over {key}: final iteration, {int(100 * (1 - comp.alpha))}% intervals")
        layout(fig, axes)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)
        paths.append(save(fig, out_dir / f"sweep-{safe}.png"))
    return paths
