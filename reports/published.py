"""Published numbers beside ours (`report.published: FILE`).

The file is a CSV with a header `model,iteration,<column>,...`: one row per published model and
self-play iteration (0 = the starting model), one column per task. A column is one of our task names
or a paper's name for it (`COLUMNS`: the Open LLM Leaderboard names, `mt_bench`, `average`); the first of
its candidate tasks that this run evaluated is compared. Leaderboard values are percentages (divided by 100
to match our proportions); MT-Bench is on its 1-10 scale. An empty cell = not reported.

A published row is matched to our row by iteration and model: the model name equal to one of our method
labels (case-insensitive), or, at iteration 0, the starting model (`base`). The table shows, per task, the
published value, ours with its interval, ours minus published, and whether the published value lies in our
interval. `average` is the mean of our six leaderboard values (no interval).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gsil_bench.reports.rundata import BASE, RunData, RunDataError
from gsil_bench.reports.tables import aggregate, fmt

LEADERBOARD = ("arc_challenge", "hellaswag", "truthfulqa_mc2", "mmlu", "winogrande", "gsm8k")  # "average" of these
# published column -> (our candidate tasks, first found wins; divisor turning the published value into ours)
COLUMNS: dict[str, tuple[tuple[str, ...], float]] = {
    "arc_challenge": (("openllm_arc",), 100.0),
    "hellaswag": (("openllm_hellaswag",), 100.0),
    "truthfulqa_mc2": (("openllm_truthfulqa",), 100.0),
    "mmlu": (("openllm_mmlu_v040", "openllm_mmlu"), 100.0),
    "winogrande": (("openllm_winogrande",), 100.0),
    "gsm8k": (("openllm_gsm8k_v040", "openllm_gsm8k", "gsm8k"), 100.0),  # SPIN: lm-eval v0.4.0; GSIL: 0.3
    "humaneval": (("humaneval_gsil", "humaneval"), 100.0),
    "mt_bench": (("mt_bench_fastchat", "mt_bench"), 1.0),
    "average": ((), 100.0),
}


class PublishedError(RunDataError):
    """A malformed published-numbers file; the message names the file and line."""


@dataclass(frozen=True)
class PublishedRow:
    model: str
    iteration: int
    values: dict[str, float]  # column -> value on our scale
    line: int


def load_published(path: Path) -> list[PublishedRow]:
    """Rows of a published-numbers CSV (errors name the file and line)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if header[:2] != ["model", "iteration"]:
            raise PublishedError(f"{path}:1: the header must start with 'model,iteration', got {','.join(header[:2])!r}")
        rows = []
        for rec in reader:
            line = reader.line_num
            try:
                iteration = int(rec["iteration"])
            except (TypeError, ValueError):
                raise PublishedError(f"{path}:{line}: iteration must be an integer, got {rec['iteration']!r}") from None
            values = {}
            for col in header[2:]:
                raw = (rec.get(col) or "").strip()
                if not raw:
                    continue
                try:
                    value = float(raw)
                except ValueError:
                    raise PublishedError(f"{path}:{line}: column {col!r}: not a number: {raw!r}") from None
                values[col] = value / COLUMNS.get(col, ((), 1.0))[1]
            rows.append(PublishedRow(rec["model"], iteration, values, line))
    return rows


def _task_for(run: RunData, column: str) -> str | None:
    candidates = COLUMNS[column][0] if column in COLUMNS else (column,)
    return next((t for t in candidates if t in run.tasks), None)


def _our_method(run: RunData, row: PublishedRow) -> str | None:
    for m in run.methods:
        if m != BASE and m.lower() == row.model.lower():
            return m
    return BASE if row.iteration == 0 and BASE in run.methods else None


def published_frame(run: RunData, rows: list[PublishedRow], *, n_boot: int, alpha: float) -> pd.DataFrame:
    """Long table: one line per (published row, column) with ours, the difference and the interval check."""
    out = []
    for row in rows:
        method = _our_method(run, row)
        ours_by_col: dict[str, float] = {}
        for col, pub in row.values.items():
            rec = {"model": row.model, "iteration": row.iteration, "column": col, "published": pub,
                   "method": method, "task": None, "ours": None, "ci_low": None, "ci_high": None,
                   "diff": None, "in_interval": None}
            task = _task_for(run, col) if col != "average" else None
            res = run.find(method, task, row.iteration) if method and task else []
            if res:
                interval, _ = aggregate(res, n_boot=n_boot, alpha=alpha)
                ours_by_col[col] = interval.value
                rec.update(task=task, ours=interval.value, ci_low=interval.ci_low, ci_high=interval.ci_high,
                           diff=interval.value - pub, in_interval=bool(interval.ci_low <= pub <= interval.ci_high))
            out.append(rec)
        if "average" in row.values and all(c in ours_by_col for c in LEADERBOARD):
            avg = sum(ours_by_col[c] for c in LEADERBOARD) / len(LEADERBOARD)
            for rec in out:
                if rec["model"] == row.model and rec["iteration"] == row.iteration and rec["column"] == "average":
                    rec.update(task="open_llm_v1 average", ours=avg, diff=avg - row.values["average"])
    return pd.DataFrame(out)


def published_display(frame: pd.DataFrame) -> pd.DataFrame:
    """Wide display: a row per published (model, iteration), a cell per column: "ours [lo, hi] − pub = diff ✓/✗"."""
    if frame.empty:
        return frame
    cells: dict[tuple[str, int], dict[str, str]] = {}
    for rec in frame.to_dict("records"):
        key = (rec["model"], rec["iteration"])
        row = cells.setdefault(key, {"published model": rec["model"], "iter": str(rec["iteration"]),
                                     "ours": rec["method"] or "–"})
        if rec["ours"] is None or (isinstance(rec["ours"], float) and math.isnan(rec["ours"])):
            row[rec["column"]] = f"pub {fmt(rec['published'])}; ours –"
            continue
        check = "" if rec["in_interval"] is None or rec["in_interval"] != rec["in_interval"] else (
            " ✓" if rec["in_interval"] else " ✗")
        interval = f" [{fmt(rec['ci_low'])}, {fmt(rec['ci_high'])}]" if rec["ci_low"] is not None and \
            rec["ci_low"] == rec["ci_low"] else ""
        row[rec["column"]] = f"pub {fmt(rec['published'])}; ours {fmt(rec['ours'])}{interval}; Δ {rec['diff']:+.3f}{check}"
    return pd.DataFrame(list(cells.values())).fillna("").set_index("published model")


def resolve_published(run: RunData, spec: str, data_dir: Path | None) -> Path:
    """The published file: absolute, else relative to the data directory, else to the run's config folder."""
    path = Path(spec).expanduser()
    for candidate in ([path] if path.is_absolute() else
                      [p for p in ((data_dir / path) if data_dir else None, run.root / path) if p is not None]):
        if candidate.is_file():
            return candidate
    raise PublishedError(f"report.published: {spec!r} not found (absolute, under the data directory {data_dir}, "
                         f"or under the run folder {run.root})")
