"""The report's figure toolkit: every figure module draws with these, and a new figure
(docs/extending.md) uses nothing else.

- `plt`: pyplot on the Agg backend (the one `matplotlib.use("Agg")` of the package: figures are
  files, never windows);
- `grid(n)`: a figure of n panels (2 columns for 4, else up to 3 per row), the spare cells hidden;
- `layout(fig, axes)`: the one legend below the panels, inside the canvas (the figure grows by its
  height, so it covers no panel), axis labels wrapped to their panel, overprinting symlog ticks thinned;
- `draw_distinct(ax, curves, colors)` and `titled(ax, title, note)`: curves that coincide drawn in
  their own line styles (none hides another) and named in the panel's title;
- `save(fig, path)`: PNG at 300 dpi with PDF and SVG beside it, each written atomically and with
  no date in its metadata (a figure's bytes depend on its data only), `figure_problems` logged as
  warnings;
- `figure_problems(fig)`: what a reviewer would object to in a drawn figure: a panel with no data,
  a panel without title or axis labels, tick labels printed over one another, text that leaves
  the canvas or is smaller than MIN_POINTS, an axis label longer than its panel, a legend over a
  panel or its labels, curves drawn alike over one another.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.text import Text
from matplotlib.ticker import FixedLocator

from gsil_bench.core.io import atomic_path
from gsil_bench.reports.curves import coinciding, same_points

__all__ = ["DPI", "draw_distinct", "figure_problems", "fit_labels", "grid", "layout", "plt", "save",
           "shown_ticklabels", "titled"]

matplotlib.use("Agg")  # pyplot picks its backend when the first figure is made, so after its import is early enough
matplotlib.rcParams["svg.hashsalt"] = "gsil-bench"
log = logging.getLogger(__name__)
DPI = 300
FORMATS = {".png": {"Software": None}, ".pdf": {"CreationDate": None, "Producer": None},
           ".svg": {"Date": None}}  # metadata left out so a figure's bytes depend on its data only
SLACK = 1.0  # pixels a text may pass the canvas edge by (rounding of its extent)
MIN_POINTS = 8.0  # the smallest text a figure may hold (points): the page shows figures near their width
LEGEND_POINTS = 10  # the figure legend's text (points)
NOTE_POINTS = 9  # iteration marks and notes inside panels
TITLE_POINTS = 11  # panel titles (with a note below: coinciding curves)
STYLES = ("-", "--", ":", "-.")  # coinciding curves: each its own line style (and width), so each shows


def grid(n: int, width: float = 4.2, height: float = 3.2) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure of `n` panels of `width` x `height` inches, in rows of 3 (of 2 for 4 panels)."""
    cols = 2 if n == 4 else min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def layout(fig: plt.Figure, axes: list[plt.Axes], rect_top: float = 1.0) -> None:
    """One legend below the panels, inside the canvas, with every label any panel drew: the figure grows
    by the legend's height and the panels are laid out again above it, so it covers none of them;
    axis labels longer than their panel are wrapped (`fit_labels`) and overprinting symlog ticks thinned."""
    fig.tight_layout()
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    share = 0.0
    if labels:
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        for ncol in range(min(len(labels), 6), 0, -1):  # as many columns as fit the canvas's width
            leg = fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=LEGEND_POINTS,
                             frameon=False, bbox_to_anchor=(0.5, 0.005), bbox_transform=fig.transFigure)
            if leg.get_window_extent(renderer).width <= fig.bbox.width * 0.98 or ncol == 1:
                break
            leg.remove()
        width, height = fig.get_size_inches()
        extra = leg.get_window_extent(renderer).height / fig.dpi + 0.15
        fig.set_size_inches(width, height + extra)
        share = extra / (height + extra)
    for _ in range(3):
        fit_labels(fig)
        fig.tight_layout(rect=(0, share, 1, rect_top))
        for ax in fig.axes:
            _thin_ticks(ax)


def fit_labels(fig: plt.Figure) -> None:
    """Wrap every axis label longer than its panel onto more lines (the panel's height, or width, sets
    the line length)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    for ax in (a for a in fig.axes if a.get_visible()):
        box = ax.get_window_extent(renderer)
        for label, room, vertical in ((ax.yaxis.label, box.height, True), (ax.xaxis.label, box.width, False)):
            text = " ".join(label.get_text().split())
            for _ in range(3):
                extent = label.get_window_extent(renderer)
                long = extent.height if vertical else extent.width
                if not text or long <= room * 0.98:
                    break
                lines = label.get_text().count("\n") + 1
                width = max(12, int(len(text) / lines * room / long * 0.95))
                label.set_text("\n".join(textwrap.wrap(text, width, break_on_hyphens=False)))


def _thin_ticks(ax: plt.Axes) -> None:
    """On a symlog axis whose tick labels overprint: keep 0 and the powers of ten, then every second
    one of those, until none overprints."""
    if ax.get_yscale() != "symlog":
        return
    for _ in range(3):
        ax.figure.canvas.draw()  # tick labels move to the locator's ticks when drawn
        renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]
        boxes = [t.get_window_extent(renderer) for t in shown_ticklabels(ax.yaxis)]
        if not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]):
            return
        ticks = [float(t) for t in ax.get_yticks()]
        powers = [t for t in ticks if t == 0 or float(np.log10(abs(t))).is_integer()]
        if powers == ticks:  # already powers only: every second one on each side of 0
            powers = [t for t in ticks if t == 0] + [t for side in (1, -1)
                      for t in sorted((u for u in ticks if u * side > 0), key=abs)[::2]]
        ax.yaxis.set_major_locator(FixedLocator(sorted(powers)))


def draw_distinct(ax: plt.Axes, pts_of: dict[tuple[str, int], tuple[Any, Any]], colors: dict[str, Any]) -> str:
    """One line per (method, seed), labelled once per method. Lines with the same points get their own
    line style and width (widest first, underneath), so none hides another; returns the note that names
    them ("same curve: a = b"), for the panel's title ("" when none coincide)."""
    groups = coinciding({f"{m}|{seed}": xy for (m, seed), xy in pts_of.items()})
    rank = {label: (i, len(g)) for g in groups for i, label in enumerate(g)}
    seeds: dict[str, int] = {}
    for m, seed in pts_of:
        seeds[m] = min(seeds.get(m, seed), seed)
    for (m, seed), (x, y) in pts_of.items():
        i, n = rank.get(f"{m}|{seed}", (0, 1))
        ax.plot(x, y, color=colors.get(m, "grey"), linewidth=1.2 + 1.3 * (n - 1 - i) if n > 1 else 1.2, alpha=0.9,
                linestyle=STYLES[i % len(STYLES)], label=m if seed == seeds[m] else None, zorder=2 + i,
                marker="." if len(x) < 30 and n == 1 else None)
    named = [g for g in groups if len({lab.split("|")[0] for lab in g}) > 1]
    if not named:
        return ""
    return "same curve: " + "; ".join(" = ".join(dict.fromkeys(lab.split("|")[0] for lab in g)) for g in named)


def titled(ax: plt.Axes, title: str, note: str = "") -> None:
    """The panel's title, with a note (coinciding curves) wrapped below it, at one size in every panel."""
    ax.set_title(title + ("\n" + textwrap.fill(f"({note})", 48) if note else ""), fontsize=TITLE_POINTS)


def save(fig: plt.Figure, path: Path) -> Path:
    """`path` (.png) and the same figure as .pdf and .svg beside it, each written atomically; a
    figure with a problem a reader would see (`figure_problems`) is saved with a warning naming it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for problem in figure_problems(fig):  # at the figure's own size: every text where it will be
        log.warning("%s: %s", path.name, problem)
    for suffix, meta in FORMATS.items():
        with atomic_path(path.with_suffix(suffix)) as tmp:  # two workers may write one run's report at once
            fig.savefig(tmp, format=suffix[1:], dpi=DPI, bbox_inches="tight", metadata=meta)
    plt.close(fig)
    return path


def figure_problems(fig: plt.Figure) -> list[str]:
    """What a reviewer would object to in a drawn figure (the module docstring's list)."""
    out = []
    fig.canvas.draw()  # at the figure's own size: a tight save leaves the text where its cropped canvas had it
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # Agg
    for ax in (a for a in fig.axes if a.get_visible()):
        name = ax.get_title() or "untitled panel"
        has_data = any(len(np.atleast_1d(line.get_xdata())) for line in ax.get_lines()) or ax.patches or ax.collections
        if not has_data:
            out.append(f"{name}: empty panel")
        if not (ax.get_title() and ax.get_xlabel() and ax.get_ylabel()):
            out.append(f"{name}: missing title or axis label")
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [t.get_window_extent(renderer) for t in shown_ticklabels(axis)]
            if any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]):
                out.append(f"{name}: overlapping {axis.axis_name} tick labels")
        panel = ax.get_window_extent(renderer)
        if ax.get_ylabel() and ax.yaxis.label.get_window_extent(renderer).height > panel.height * 1.02:
            out.append(f"{name}: y label longer than its panel")
        out += [f"{name}: {p}" for p in _hidden_curves(ax)]
    return out + _text_problems(fig, renderer) + _legend_problems(fig, renderer)


def shown_ticklabels(axis: Any) -> list[Text]:
    """The tick labels an axis draws: those of ticks inside its view (matplotlib keeps labels of ticks
    past the axis limits too, undrawn and wherever they last were)."""
    lo, hi = sorted(axis.get_view_interval())
    slack = (hi - lo) * 1e-9
    locs = axis.get_majorticklocs()
    return [tick.label1 for tick, loc in zip(axis.get_major_ticks(len(locs)), locs)
            if lo - slack <= loc <= hi + slack and tick.label1.get_visible() and tick.label1.get_text()]


def _texts(fig: plt.Figure) -> list[tuple[str, Text]]:
    """(where, text) for every text a figure draws: its own (suptitle), each legend's, and each
    visible panel's title, axis labels, tick labels and annotations."""
    suptitle = getattr(fig, "_suptitle", None)  # the suptitle is kept apart from fig.texts
    found = [("figure", t) for t in [*fig.texts, *([suptitle] if suptitle is not None else [])]]
    for leg in fig.legends:
        found += [("legend", t) for t in leg.get_texts()]
    for ax in (a for a in fig.axes if a.get_visible()):
        name = ax.get_title() or "untitled panel"
        found += [(name, t) for t in (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts)]
        found += [(name, t) for axis in (ax.xaxis, ax.yaxis) for t in shown_ticklabels(axis)]
        legend_box = ax.get_legend()
        if legend_box is not None:
            found += [(name, t) for t in legend_box.get_texts()]
    return [(w, t) for w, t in found if t.get_visible() and t.get_text().strip()]


def _text_problems(fig: plt.Figure, renderer: Any) -> list[str]:
    """Every text whose extent leaves the figure's canvas (a tight save would grow the image around it:
    a y label longer than its panel is taller than the figure), or smaller than MIN_POINTS."""
    edge = fig.bbox
    out = []
    for where, text in _texts(fig):
        box = text.get_window_extent(renderer)
        shown = text.get_text().strip().replace("\n", " ")[:60]
        if (box.x0 < edge.x0 - SLACK or box.y0 < edge.y0 - SLACK or box.x1 > edge.x1 + SLACK
                or box.y1 > edge.y1 + SLACK):
            out.append(f"{where}: text outside the canvas: {shown!r}")
        if text.get_fontsize() < MIN_POINTS:
            out.append(f"{where}: text smaller than {MIN_POINTS:g} pt: {shown!r}")
    return out


def _hidden_curves(ax: plt.Axes) -> list[str]:
    """Lines on one another (reports.curves.same_points over the panel's y span) drawn in the same
    style: only the last drawn shows."""
    lines = [ln for ln in ax.get_lines() if ln.get_visible() and len(np.atleast_1d(ln.get_xdata())) > 1]
    lo, hi = ax.get_ylim()
    out = []
    for i, a in enumerate(lines):
        for b in lines[i + 1:]:
            same_style = (a.get_linestyle(), a.get_linewidth(), a.get_marker()) == (
                b.get_linestyle(), b.get_linewidth(), b.get_marker())
            (xa, ya), (xb, yb) = a.get_data(), b.get_data()
            if same_style and same_points(xa, ya, xb, yb, abs(hi - lo)):
                out.append(f"curve {a.get_label()!r} hidden under {b.get_label()!r}")
    return out


def _legend_problems(fig: plt.Figure, renderer: Any) -> list[str]:
    """A legend (figure's or a panel's) over a visible panel, or over its tick and axis labels."""
    out = []
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in (a for a in fig.axes if a.get_visible()):
            name = ax.get_title() or "untitled panel"
            own = leg.axes is ax and leg in (ax.get_legend(),)
            if not own and box.overlaps(ax.get_window_extent(renderer)):
                out.append(f"legend covers the panel {name!r}")
            texts = [*shown_ticklabels(ax.xaxis), *shown_ticklabels(ax.yaxis), ax.xaxis.label, ax.yaxis.label, ax.title]
            if any(t.get_visible() and t.get_text() and box.overlaps(t.get_window_extent(renderer)) for t in texts):
                out.append(f"legend covers labels of {name!r}")
    return out
