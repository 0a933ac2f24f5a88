"""Trend page: every task's primary metric over the runs in a runs.sqlite index.

One figure per experiment: a panel per task, one line per method (its final
iteration, mean over seeds, with the interval when one seed), x = run start time.
A table lists the latest run against the one before it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from gsil_bench.core.io import atomic_write_text
from gsil_bench.reports import html as H
from gsil_bench.reports.figures import plt
from gsil_bench.reports.index import RunIndex
from gsil_bench.reports.style import method_colors
from gsil_bench.reports.tables import fmt

log = logging.getLogger(__name__)


def final_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run, method and task: the final iteration's primary metric, mean over seeds."""
    if frame.empty:
        return frame
    last = frame.groupby(["run_id", "method", "task"])["iteration"].transform("max")
    f = frame[frame["iteration"] == last]
    agg = f.groupby(["experiment", "run_id", "started", "method", "task", "metric", "iteration"], dropna=False).agg(
        value=("value", "mean"), ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean"), seeds=("value", "size"),
    ).reset_index()
    return agg.sort_values(["experiment", "started", "method", "task"]).reset_index(drop=True)


def trend_plot(scores: pd.DataFrame, experiment: str, path: Path) -> Path | None:
    exp = scores[scores["experiment"] == experiment]
    tasks = list(dict.fromkeys(exp["task"]))
    if not tasks:
        return None
    runs = list(dict.fromkeys(exp.sort_values("started")["run_id"]))
    labels = [str(exp[exp["run_id"] == r]["started"].iloc[0])[:16] for r in runs]
    cols = min(len(tasks), 3)
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    methods = list(dict.fromkeys(exp["method"]))
    colors = method_colors(methods)  # the report's palette: one distinct colour per method
    for ax, task in zip(axes.ravel(), tasks):
        t = exp[exp["task"] == task]
        for m in methods:
            s = t[t["method"] == m].set_index("run_id").reindex(runs)
            x = list(range(len(runs)))
            yerr = [(s["value"] - s["ci_low"]).fillna(0).clip(lower=0), (s["ci_high"] - s["value"]).fillna(0).clip(lower=0)]
            ax.errorbar(x, s["value"], yerr=yerr, marker="o", markersize=3, capsize=2, color=colors[m], label=m)
        ax.set_title(f"{task} ({t['metric'].iloc[0]})")
        ax.set_xticks(range(len(runs)), labels, rotation=35, ha="right", fontsize=7)
    for ax in axes.ravel()[len(tasks):]:
        ax.set_visible(False)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"{experiment}: primary metric per run (final iteration)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def latest_vs_previous(scores: pd.DataFrame, experiment: str) -> pd.DataFrame:
    exp = scores[scores["experiment"] == experiment]
    runs = list(dict.fromkeys(exp.sort_values("started")["run_id"]))
    if not runs:
        return pd.DataFrame()
    last = exp[exp["run_id"] == runs[-1]].set_index(["method", "task"])
    prev = exp[exp["run_id"] == runs[-2]].set_index(["method", "task"]) if len(runs) > 1 else None
    rows = []
    for (m, t), r in last.iterrows():
        p = prev["value"].get((m, t)) if prev is not None else None
        rows.append({"method": m, "task": f"{t} ({r['metric']})", "latest": fmt(r["value"]),
                     "previous": fmt(p), "change": "–" if p is None else f"{r['value'] - p:+.4f}"})
    return pd.DataFrame(rows)


def write_trend(index_path: str | Path, out_dir: str | Path, experiment: str | None = None) -> Path:
    """Write trend.html and trend.md for every experiment (or one) in the index."""
    idx_path = Path(index_path)
    if not idx_path.is_file():
        raise FileNotFoundError(f"run index {idx_path} does not exist")
    scores = final_scores(RunIndex(idx_path).metrics(experiment, primary_only=True))
    out = Path(out_dir)
    experiments = list(dict.fromkeys(scores["experiment"])) if not scores.empty else []
    if experiment and experiment not in experiments:
        raise FileNotFoundError(f"{idx_path}: no runs of experiment {experiment!r}")
    body, md = [f"<h1>gsil-bench trend: {H.esc(idx_path)}</h1>"], [f"# Trend ({idx_path})", ""]
    for exp in experiments:
        n_runs = scores[scores["experiment"] == exp]["run_id"].nunique()
        fig = trend_plot(scores, exp, out / "plots" / f"trend-{exp}.png")
        table = latest_vs_previous(scores, exp)
        body.append(H.section(f"{exp} ({n_runs} runs)", H.figure(fig, f"{exp}: metric per run", f"fig-trend-{exp}")
                              + table.to_html(index=False, classes="results", border=0), f"exp-{exp}"))
        md += [f"## {exp} ({n_runs} runs)", "", table.to_markdown(index=False, tablefmt="github"), ""]
    if not experiments:
        body.append("<p class=note>The index holds no metrics yet.</p>")
    atomic_write_text(out / "trend.md", "\n".join(md))
    atomic_write_text(out / "trend.html", H.page("gsil-bench trend", "\n".join(body)))
    return out / "trend.html"
