"""The report's figure toolkit: every figure module draws with these, and a new figure
(docs/extending.md) uses nothing else.

- `plt`: pyplot on the Agg backend (the one `matplotlib.use("Agg")` of the package: figures are
  files, never windows);
- `grid(n)`: a figure of n panels (2 columns for 4, else up to 3 per row), the spare cells hidden;
- `layout(fig, axes)`: axis labels wrapped to their panel, panels laid out tightly and `legend`,
  the one legend below the panels, inside the canvas;
- `save(fig, path)`: PNG at 300 dpi with PDF and SVG beside it, each written atomically and with
  no date in its metadata (a figure's bytes depend on its data only), then `figure_problems`
  logged as warnings;
- `figure_problems(fig)`: what a reviewer would object to in a drawn figure: a panel with no data,
  a panel without title or axis labels, tick labels printed over one another, text that leaves
  the canvas (a label longer than its panel, a legend below the figure's edge).
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

from gsil_bench.core.io import atomic_path

__all__ = ["DPI", "figure_problems", "grid", "layout", "legend", "plt", "save"]

matplotlib.use("Agg")  # pyplot picks its backend when the first figure is made, so after its import is early enough
matplotlib.rcParams["svg.hashsalt"] = "gsil-bench"
log = logging.getLogger(__name__)
DPI = 300
FORMATS = {".png": {"Software": None}, ".pdf": {"CreationDate": None, "Producer": None},
           ".svg": {"Date": None}}  # metadata left out so a figure's bytes depend on its data only
SLACK = 1.0  # pixels a text may pass the canvas edge by (rounding of its extent)


def grid(n: int, width: float = 4.2, height: float = 3.2) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure of `n` panels of `width` x `height` inches, in rows of 3 (of 2 for 4 panels)."""
    cols = 2 if n == 4 else min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def layout(fig: plt.Figure, axes: list[plt.Axes]) -> None:
    """Lay the panels out tightly with the one legend below them (`legend`), then wrap every axis
    label longer than its panel (and lay out again): nothing is left outside the canvas."""
    fig.tight_layout()
    bottom = legend(fig, axes)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # Agg
    wrapped = [_wrap(label, room, renderer) for ax in fig.axes if ax.get_visible()
               for label, room in ((ax.yaxis.label, ax.get_window_extent(renderer).height),
                                   (ax.xaxis.label, ax.get_window_extent(renderer).width))]
    if any(wrapped):
        fig.tight_layout(rect=(0, bottom, 1, 1))


def _wrap(label: Text, room: float, renderer: Any) -> bool:
    """Break `label` into 2 (else 3) lines when it is longer than `room` pixels along its axis."""
    text = label.get_text()
    vertical = label.get_rotation() % 180 == 90

    def length() -> float:
        box = label.get_window_extent(renderer)
        return float(box.height if vertical else box.width)

    if not text or length() <= room:
        return False
    for lines in (2, 3):
        label.set_text(textwrap.fill(text, width=-(-len(text) // lines) + 3, break_on_hyphens=False,
                                     break_long_words=False))
        if length() <= room:
            break
    return True


def legend(fig: plt.Figure, axes: list[plt.Axes]) -> float:
    """One legend below the panels with every label any panel drew, the panels moved up to make room
    for it (so it stays inside the canvas); as many columns as fit the figure's width, 6 at most.
    Returns the share of the figure's height it takes (0 without labels)."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not labels:
        return 0.0
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    for ncol in range(min(len(labels), 6), 0, -1):
        box = fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False,
                         bbox_to_anchor=(0.5, 0.0), bbox_transform=fig.transFigure)
        extent = box.get_window_extent(renderer)
        if extent.width <= fig.bbox.width or ncol == 1:
            break
        box.remove()
    bottom = min(0.5, extent.height / fig.bbox.height)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return bottom


def save(fig: plt.Figure, path: Path) -> Path:
    """`path` (.png) and the same figure as .pdf and .svg beside it, each written atomically; a
    figure with a problem a reader would see (`figure_problems`) is saved with a warning naming it."""
    for suffix, meta in FORMATS.items():
        with atomic_path(path.with_suffix(suffix)) as tmp:  # two workers may write one run's report at once
            fig.savefig(tmp, format=suffix[1:], dpi=DPI, bbox_inches="tight", metadata=meta)
        if suffix == ".png":  # drawn now: text extents are known
            for problem in figure_problems(fig):
                log.warning("%s: %s", path.name, problem)
    plt.close(fig)
    return path


def figure_problems(fig: plt.Figure) -> list[str]:
    """What a reviewer would object to in a drawn figure: a panel with no data, a panel without title
    or axis labels, tick labels printed over one another, text outside the canvas."""
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
            boxes = [t.get_window_extent(renderer) for t in _tick_labels(axis)]
            if any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]):
                out.append(f"{name}: overlapping {axis.axis_name} tick labels")
    return out + _outside(fig, renderer)


def _tick_labels(axis: Any) -> list[Text]:
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
    found = [("figure", t) for t in fig.texts]
    for leg in fig.legends:
        found += [("legend", t) for t in leg.get_texts()]
    for ax in (a for a in fig.axes if a.get_visible()):
        name = ax.get_title() or "untitled panel"
        found += [(name, t) for t in (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts)]
        found += [(name, t) for axis in (ax.xaxis, ax.yaxis) for t in _tick_labels(axis)]
        legend_box = ax.get_legend()
        if legend_box is not None:
            found += [(name, t) for t in legend_box.get_texts()]
    return [(w, t) for w, t in found if t.get_visible() and t.get_text().strip()]


def _outside(fig: plt.Figure, renderer: Any) -> list[str]:
    """Every text whose extent leaves the figure's canvas (a tight save would grow the image around it:
    a y label longer than its panel is taller than the figure)."""
    edge = fig.bbox
    out = []
    for where, text in _texts(fig):
        box = text.get_window_extent(renderer)
        if (box.x0 < edge.x0 - SLACK or box.y0 < edge.y0 - SLACK or box.x1 > edge.x1 + SLACK
                or box.y1 > edge.y1 + SLACK):
            shown = text.get_text().replace("\n", " ")
            out.append(f"{where}: text outside the canvas: {shown[:60]!r}")
    return out
