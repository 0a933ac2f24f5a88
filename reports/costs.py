"""The report's cost table (costs.md / costs.tex / the page's Compute section): the work a run did,
each piece counted once, so the columns add up to the run.

One row per trained method (totals over its seeds and iterations): optimizer steps, training
tokens, the tokens it generated itself (self-play iterations after the first), the wall time of
its training steps (plan.json: loading, its own generation and reference scoring, training) and of
its evaluation steps. One row `shared` for the work identical across methods, done once under
shared/<key>/: the starting model's generations and reference log-probs (a method's first
iteration copies them, so they are not in its row; the time is taken out of the step that built
them). One row `base` for the starting model's evaluation. The `total` row sums the rows.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from gsil_bench.core.io import read_json, read_jsonl
from gsil_bench.reports.rundata import BASE, RunData

SHARED = "shared (starting model's generations, reference log-probs)"
NOTE = ("Totals over seeds and iterations: the work done. generated tokens: the method's own self-play "
        "generations; the starting model's, identical for every method, are counted once in the shared row "
        "(its time taken out of the training step that built them). training/evaluation: wall time of the "
        "run's steps (plan.json; a training step includes loading, generating and reference scoring).")


def _shared_work(run: RunData) -> dict[str, dict[str, Any]]:
    """shared/<key>/ -> its generated tokens, wall time (None for folders written before it was recorded)
    and the method/seed whose step built it."""
    out: dict[str, dict[str, Any]] = {}
    root = run.root / "shared"
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if not (folder / "DONE").is_file():
            continue
        done = read_json(folder / "DONE") or {}
        gens = folder / "generations.jsonl"
        tokens = sum(int(r.get("tokens") or 0) for r in read_jsonl(gens)) if gens.is_file() else 0
        out[folder.name] = {"tokens": tokens, "wall": done.get("wall_time_s"), "by": done.get("built_by")}
    return out


def _step_times(run: RunData) -> dict[tuple[str, str, Any], float]:
    """(kind, method, seed) -> wall time of that finished step in plan.json (seconds)."""
    out: dict[tuple[str, str, Any], float] = {}
    for st in run.plan.get("steps", []):
        if st.get("status") == "done" and st.get("wall_time_s") is not None:
            key = (str(st.get("kind")), str(st.get("method")), st.get("seed"))
            out[key] = out.get(key, 0.0) + float(st["wall_time_s"])
    return out


def cost_frame(run: RunData) -> pd.DataFrame:
    """The cost table (module docstring): one row per method, then shared, base and total."""
    shared = _shared_work(run)
    times = _step_times(run)
    rows = []
    for method in (m for m in run.methods if m != BASE):
        its = [t for t in run.train if t.method == method]
        if not its:
            continue
        own_gen = sum(int(t.summary.get("generated_tokens") or 0) for t in its
                      if str(t.summary.get("inputs_hash")) not in shared)
        built = sum(float(w["wall"] or 0) for w in shared.values()
                    if str(w["by"]).split("/seed-")[0] == method)
        train_s = sum(v for (kind, m, _), v in times.items() if kind == "train" and m == method)
        rows.append({
            "method": method, "loss": run.loss_of(method), "seeds": len({t.seed for t in its}),
            "iterations": max(t.iteration for t in its), "steps": sum(int(t.summary.get("steps") or 0) for t in its),
            "train tokens": sum(int(t.summary.get("train_tokens") or 0) for t in its), "generated tokens": own_gen,
            "training (s)": round(train_s - built, 1) if train_s else
            round(sum(float(t.summary.get("wall_time_s") or 0) for t in its), 1),
            "evaluation (s)": round(sum(v for (kind, m, _), v in times.items() if kind == "eval" and m == method), 1),
        })
    if not rows:
        return pd.DataFrame()
    if shared:
        walls = [w["wall"] for w in shared.values()]
        rows.append({"method": SHARED, "loss": "", "seeds": None, "iterations": None, "steps": 0, "train tokens": 0,
                     "generated tokens": sum(w["tokens"] for w in shared.values()),
                     "training (s)": round(sum(walls), 1) if all(w is not None for w in walls) else float("nan"),
                     "evaluation (s)": 0.0})
    base_eval = sum(v for (kind, m, _), v in times.items() if kind == "eval" and m == BASE)
    if base_eval:
        rows.append({"method": f"{BASE} (starting model)", "loss": "", "seeds": None, "iterations": None, "steps": 0,
                     "train tokens": 0, "generated tokens": 0, "training (s)": 0.0, "evaluation (s)": round(base_eval, 1)})
    frame = pd.DataFrame(rows).set_index("method")
    total = {c: frame[c].sum() for c in ("steps", "train tokens", "generated tokens", "training (s)", "evaluation (s)")}
    frame.loc["total"] = {"loss": "", "seeds": None, "iterations": None, **total}
    if all(str(loss) == str(m) or not loss for m, loss in frame["loss"].items()):
        frame = frame.drop(columns="loss")  # every method is its loss: the column would repeat the label
    return frame


def cost_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The cost table as text: thousands separators, one decimal for seconds, blanks where nothing applies."""
    f = frame.copy().astype(object)
    for col in f.columns:
        if col in ("steps", "train tokens", "generated tokens"):
            f[col] = f[col].map(lambda v: f"{int(v):,}")
        elif col.endswith("(s)"):
            f[col] = f[col].map(lambda v: "–" if v != v else f"{float(v):,.1f}")
        elif col in ("seeds", "iterations"):
            f[col] = f[col].map(lambda v: "" if v is None or v != v else f"{int(v)}")
    return f


def run_time_note(run: RunData, frame: pd.DataFrame) -> str:
    """The run's whole wall time beside the table's sums (the rest: process start, imports, the report)."""
    wall = run.provenance.get("wall_time_s")
    if not wall or frame.empty:
        return ""
    train, ev = float(frame.loc["total", "training (s)"]), float(frame.loc["total", "evaluation (s)"])
    return (f"The run's wall time (all sessions): {float(wall):,.0f} s, of which training {train:,.0f} s and "
            f"evaluation {ev:,.0f} s; the rest is process start, model loading outside the steps and the report.")
