"""Comparison, per-iteration and cost tables of a run, as Markdown, LaTeX (booktabs)
and HTML.

The comparison table has one row per method (its final iteration; the starting
model as `base`) and one column per task's primary metric, plus one per metric a task reports
beside it (its `reported` in metrics.json: the held-out margin, say; column key `task/metric`).
A cell is the mean with
its 95% interval over examples (one seed: the task's own interval from
metrics.json; several seeds: a two-level bootstrap over seeds and examples), the
best value per column is bold, and ▲/▼ marks a significant gain/drop against the
baseline method by a paired bootstrap over items matched by `id`.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gsil_bench.core.facts import MetricFacts
from gsil_bench.reports.costs import cost_display, cost_frame  # noqa: F401 (the cost table: reports.costs)
from gsil_bench.reports.rundata import BASE, EvalResult, RunData
from gsil_bench.reports.stats import (
    Interval,
    PairedDiff,
    bootstrap_ci,
    hierarchical_ci,
    mean_over_seeds,
    paired_bootstrap,
    seed_interval,
)
from gsil_bench.reports.style import column_label, number

UP, DOWN = "▲", "▼"


@dataclass
class Cell:
    interval: Interval
    metric: str
    higher_is_better: bool = True  # the metric's direction, from metrics.json
    facts: MetricFacts | None = None  # the metric's declared facts (label, percent, ...), from metrics.json
    vs_baseline: PairedDiff | None = None
    best: bool = False

    @property
    def sign(self) -> int:
        """+1/-1: significantly better/worse than the baseline (direction-aware), 0 otherwise."""
        if self.vs_baseline is None:
            return 0
        s = self.vs_baseline.sign
        return s if self.higher_is_better else -s


@dataclass
class Comparison:
    """Methods x tasks cells plus what the table needs to say about them."""

    run: RunData
    baseline: str
    alpha: float
    n_boot: int
    columns: list[str]  # a task (its primary metric) or "task/metric" (a metric the task reports beside it)
    rows: list[tuple[str, int]]  # (method, iteration)
    cells: dict[tuple[str, int, str], Cell] = field(default_factory=dict)  # (method, iteration, column)

    @staticmethod
    def task_of(column: str) -> str:
        return column.split("/", 1)[0]

    def metric_of(self, column: str) -> str:
        task, _, metric = column.partition("/")
        if metric:
            return metric
        for (_, _, c), cell in self.cells.items():
            if c == column:
                return cell.metric
        return next((e.primary for e in self.run.evals if e.task == task), "")

    def facts_of(self, column: str) -> MetricFacts:
        """The declared facts of a column's metric (from the run's metrics.json files)."""
        return self.run.facts(self.task_of(column), self.metric_of(column))

    def label_of(self, column: str) -> str:
        """'<task display name> <metric label> (<unit>)' for headers and axes."""
        return column_label(self.run.display(self.task_of(column)), self.facts_of(column))

    def n_of(self, column: str) -> int:
        return max((c.interval.n for (_, _, col), c in self.cells.items() if col == column), default=0)


def columns_of(run: RunData) -> list[str]:
    """Every task's primary column, each followed by the metrics the task reports beside it."""
    cols: list[str] = []
    for task in run.tasks:
        cols.append(task)
        first = next((e for e in run.evals if e.task == task and e.scored), None)
        if first is not None:
            cols += [f"{task}/{m}" for m in first.shown[1:] if m in first.metrics.get("metrics", {})]
    return cols


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"


def aggregate(results: list[EvalResult], *, n_boot: int, alpha: float,
              metric: str | None = None) -> tuple[Interval, dict[str, float]]:
    """Interval of one (method, iteration, task) over its seeds for `metric` (default: the
    primary), and the seed-averaged per-item scores (empty when samples carry no per-item score)."""
    metric = metric or results[0].primary
    per_seed = [r.item_scores(metric) for r in results]
    items = mean_over_seeds(per_seed) if all(per_seed) else {}
    if len(results) == 1:
        m = results[0].metric(metric)
        if m.get("ci_low") is not None and m.get("ci_high") is not None:
            return Interval(float(m["value"]), float(m["ci_low"]), float(m["ci_high"]), int(m.get("n") or len(items))), items
        if items:
            return bootstrap_ci(list(items.values()), n_boot=n_boot, alpha=alpha), items
        v = float(m["value"])
        return Interval(v, v, v, int(m.get("n") or 0)), items
    if items:
        ids = sorted(items)
        matrix = np.array([[s[i] for i in ids] for s in per_seed])
        return hierarchical_ci(matrix, n_boot=n_boot, alpha=alpha), items
    return seed_interval([float(r.metric(metric)["value"]) for r in results], alpha), items


def _mark_best(comp: Comparison) -> None:
    for column in comp.columns:
        cells = [c for (_, _, col), c in comp.cells.items() if col == column]
        if len(cells) < 2:
            continue
        pick = max if cells[0].higher_is_better else min
        best = pick(c.interval.value for c in cells)
        if all(np.isclose(c.interval.value, best, rtol=0, atol=1e-12) for c in cells):
            continue  # a column where every method ties has no best
        for c in cells:
            c.best = bool(np.isclose(c.interval.value, best, rtol=0, atol=1e-12))


def build_comparison(run: RunData, *, baseline: str = "sft", n_boot: int = 2000, alpha: float = 0.05,
                     per_iteration: bool = False) -> Comparison:
    """Cells for every method at its final iteration (or every iteration when
    `per_iteration`), with paired-bootstrap marks against `baseline`'s final iteration."""
    rows: list[tuple[str, int]] = []
    for method in run.methods:
        its = sorted({e.iteration for e in run.evals if e.method == method})
        rows += [(method, k) for k in (its if per_iteration else its[-1:])]
    comp = Comparison(run, baseline, alpha, n_boot, columns_of(run), rows)
    base_items: dict[str, dict[str, float]] = {}
    if baseline in run.methods:
        for col in comp.columns:
            res = run.find(baseline, comp.task_of(col))
            if res:
                base_items[col] = aggregate(res, n_boot=n_boot, alpha=alpha, metric=comp.metric_of(col))[1]
    for method, it in rows:
        for col in comp.columns:
            res = run.find(method, comp.task_of(col), it)
            metric = comp.metric_of(col)
            if not res or metric not in res[0].metrics.get("metrics", {}):
                continue
            interval, items = aggregate(res, n_boot=n_boot, alpha=alpha, metric=metric)
            facts = res[0].facts(metric)
            cell = Cell(interval, metric, facts.higher_is_better, facts)
            is_base_row = method == baseline and it == run.final_iteration(baseline)
            if not per_iteration and not is_base_row and items and base_items.get(col):
                cell.vs_baseline = paired_bootstrap(base_items[col], items, n_boot=n_boot, alpha=alpha)
            comp.cells[(method, it, col)] = cell
    if not per_iteration:
        _mark_best(comp)
    return comp


# --- rendering ------------------------------------------------------------------------------


def _row_label(comp: Comparison, method: str, it: int, per_iteration: bool) -> str:
    if per_iteration:
        return f"{method} (iter {it})"
    planned = _planned_iterations(comp.run, method)
    if method == BASE or planned is None or planned == it:
        return method
    return f"{method} (iter {it} of {planned})"


def _planned_iterations(run: RunData, method: str) -> int | None:
    steps = [s for s in run.plan.get("steps", []) if s.get("kind") == "eval" and s.get("method") == method]
    return max((int(s.get("iteration", 0)) for s in steps), default=None)


def _cell_text(cell: Cell | None, style: str) -> str:
    if cell is None:
        return "–"
    iv, facts = cell.interval, cell.facts or MetricFacts.from_json(None, cell.metric)
    value, ci = number(iv.value, facts), f"[{number(iv.ci_low, facts)}, {number(iv.ci_high, facts)}]"
    mark = {1: UP, -1: DOWN}.get(cell.sign, "")
    if style == "md":
        v = f"**{value}**" if cell.best else value
        return f"{v} {ci}{(' ' + mark) if mark else ''}"
    if style == "tex":
        v = rf"\textbf{{{value}}}" if cell.best else value
        sup = {1: r"$^{\uparrow}$", -1: r"$^{\downarrow}$"}.get(cell.sign, "")
        return rf"{v}{sup} {{\scriptsize {ci}}}"
    v = f"<strong>{value}</strong>" if cell.best else value
    title = ""
    if cell.vs_baseline is not None:
        d = cell.vs_baseline
        title = f' title="vs baseline: {d.diff:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}], p={d.p_value:.3g}, n={d.n}"'
    cls = {1: "up", -1: "down"}.get(cell.sign, "")
    m = f' <span class="{cls}">{mark}</span>' if mark else ""
    return f'<span class="val"{title}>{v}</span> <span class="ci">{ci}</span>{m}'


def comparison_frame(comp: Comparison, style: str = "md", per_iteration: bool = False) -> pd.DataFrame:
    """Formatted cells: index = row labels, columns = 'task (metric)'."""
    cols = {c: comp.label_of(c) for c in comp.columns}
    data = {
        _row_label(comp, m, it, per_iteration): [_cell_text(comp.cells.get((m, it, c)), style) for c in comp.columns]
        for m, it in comp.rows
    }
    frame = pd.DataFrame.from_dict(data, orient="index", columns=[cols[c] for c in comp.columns])
    frame.index.name = "method"
    return frame


def legend(comp: Comparison) -> str:
    seeds = sorted({c.interval.seeds for c in comp.cells.values()})
    ns = ", ".join(f"{comp.run.display(t)}: n={comp.n_of(t)}" for t in comp.columns if "/" not in t)
    over = "examples" + (" and seeds (two-level bootstrap)" if max(seeds, default=1) > 1 else "")
    marks = (
        f"{UP}/{DOWN}: significantly better/worse than `{comp.baseline}` (paired bootstrap over items matched by id, "
        f"{comp.n_boot} resamples, alpha={comp.alpha})."
        if comp.baseline in comp.run.methods else f"No significance marks: baseline `{comp.baseline}` is not in this run."
    )
    return (f"Mean [{int(round(100 * (1 - comp.alpha)))}% interval over {over}]; {ns}. Bold: best per column. {marks} "
            "–: no score (not evaluated, or no item could be scored, e.g. no parseable judge rating).")


def to_markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(tablefmt="github", disable_numparse=True)


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def latex_caption(comp: Comparison, title: str) -> str:
    """The comparison table's caption in LaTeX: no Markdown, the marks as math arrows."""
    text = _tex_escape(f"{title}: {legend(comp)}".replace("`", ""))
    return text.replace(UP, r"$\uparrow$").replace(DOWN, r"$\downarrow$").replace("–", "--")


def to_latex(frame: pd.DataFrame, caption: str, label: str, escape_caption: bool = True) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); `caption` is escaped unless it is LaTeX already."""
    f = frame.copy()
    f.index = [_tex_escape(str(i)) for i in f.index]
    f.columns = [_tex_escape(str(c)) for c in f.columns]
    f.index.name = None
    styler = f.style
    return styler.to_latex(
        hrules=True, column_format="l" + "c" * len(f.columns), caption=_tex_escape(caption) if escape_caption else caption, label=label,
        position="t", position_float="centering",
    )


def to_html(frame: pd.DataFrame, table_id: str, index_name: str = "method") -> str:
    f = frame.copy()
    f.index = [html.escape(str(i)) for i in f.index]
    f.columns = [html.escape(str(c)) for c in f.columns]
    f = f.rename_axis(index_name).reset_index()
    return f.to_html(escape=False, table_id=table_id, classes="results", border=0, index=False)


def worker_frame(run: RunData) -> pd.DataFrame:
    """Who ran what: per process (host:pid[:rank]), its steps by kind and their wall time."""
    rows: dict[str, dict[str, float]] = {}
    for st in run.plan.get("steps", []):
        if st.get("status") != "done" or not st.get("worker"):
            continue
        row = rows.setdefault(str(st["worker"]), {"train steps": 0, "eval steps": 0, "wall time (s)": 0.0})
        row[f"{st.get('kind', 'eval')} steps"] = row.get(f"{st.get('kind', 'eval')} steps", 0) + 1
        row["wall time (s)"] += float(st.get("wall_time_s") or 0.0)
    frame = pd.DataFrame.from_dict(rows, orient="index")
    if len(frame):
        frame.index.name = "process"
        frame["wall time (s)"] = frame["wall time (s)"].round(1)
    return frame
