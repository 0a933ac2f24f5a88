"""The loss anatomy in the report: the weight each method's loss puts on the real and on the
generated side, as a table and a figure, read from `<run>/losses.json` (trainers.anatomy
computes it by autograd through the loss registry; the harness writes it before the report).

    w_real = -dL/dr_real   how hard a step raises the demonstration's log-likelihood
    w_gen  =  dL/dr_gen    how hard it lowers the model's own generation

at r = 0 (the start of every iteration: the policy is its reference) and at the end of
training (the mean log ratios of the last logged step, mean over seeds). The generated share
w_gen / (w_real + w_gen) says which side a loss mostly trains: 0.5 is balanced, 1 is pure
unlikelihood of the model's own text. The same file gives each method's loss family
(`family_of`), which the ablation figures group by.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.ticker import MaxNLocator

from gsil_bench.reports import html as H
from gsil_bench.reports.figures import draw_distinct, layout, plt, save, titled
from gsil_bench.reports.rundata import RunData, family_of, load_facts, method_facts  # noqa: F401 (public here too)
from gsil_bench.reports.style import method_colors
from gsil_bench.reports.tables import to_html, to_markdown

NOTE = ("w_real = -dL/dr_real and w_gen = dL/dr_gen, by autograd through the loss registry; r = log pi - log pi_ref "
        "of the summed response log-probs. \"at r=0\": the start of every iteration (first iteration's parameters); "
        "\"end\": at the last logged step's mean log ratios (mean over seeds, the last iteration's parameters). "
        "gen share = w_gen / (w_real + w_gen): 0.5 balanced, 1 only pushes the model's own generation down. "
        "SFT: per response token. hash: the method's own hash (shared block as it trains, loss, parameters).")


def _share(w_real: float | None, w_gen: float | None) -> float | None:
    if w_gen is None:
        return 0.0 if w_real else None
    total = (w_real or 0.0) + w_gen
    return w_gen / total if total > 0 and (w_real or 0.0) >= 0 and w_gen >= 0 else None


def _end(m: dict[str, Any]) -> tuple[float | None, float | None]:
    rows = m.get("training") or []
    if not rows:
        return None, None
    last: dict[int, dict[str, Any]] = {}
    for r in rows:
        last[int(r["seed"])] = r  # rows are in step order per seed
    ends = list(last.values())
    w_real = sum(r["w_real"] for r in ends) / len(ends)
    w_gen = sum(r["w_gen"] for r in ends) / len(ends) if all(r["w_gen"] is not None for r in ends) else None
    return w_real, w_gen


def _num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3g}"


def anatomy_frame(run: RunData) -> pd.DataFrame:
    """One row per method: family, parameters, both weights at r=0 and at the end, generated share."""
    rows = []
    for label, m in method_facts(run).items():
        z = m.get("at_zero") or {}
        end_real, end_gen = _end(m)
        rows.append({
            "method": label, "family": m.get("family"),
            "params": ", ".join(f"{k}={v:g}" for k, v in (m.get("params") or {}).items()) or "–",
            "w_real at r=0": _num(z.get("w_real")), "w_gen at r=0": _num(z.get("w_gen")),
            "gen share at r=0": _num(_share(z.get("w_real"), z.get("w_gen"))),
            "w_real end": _num(end_real), "w_gen end": _num(end_gen),
            "gen share end": _num(_share(end_real, end_gen)) if end_real is not None else "–",
            "hash": m.get("hash") or "–",  # the method's own hash (core.sweeps.variant_hash)
        })
    return pd.DataFrame(rows).set_index("method") if rows else pd.DataFrame()


def anatomy_plot(run: RunData, path: Path) -> Path | None:
    """Two panels: the generated share at r=0 per method (bars), and along training per method."""
    facts = method_facts(run)
    if not facts:
        return None
    colors = method_colors(run.methods)
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = list(facts)
    for x, label in enumerate(labels):
        z = facts[label].get("at_zero") or {}
        share = _share(z.get("w_real"), z.get("w_gen"))
        if share is not None:
            bar = bars.bar(x, share, color=colors.get(label, "grey"), edgecolor="black", linewidth=0.5, label=label)
            bars.bar_label(bar, [f"{share:.2f}"], fontsize=8, padding=2)  # a zero-height bar shows its 0.00
    bars.axhline(0.5, color="black", linestyle=":", linewidth=1)
    bars.set_xticks(range(len(labels)), labels, rotation=90, fontsize=9)  # upright names would overprint
    bars.set_xlabel("method (its loss at the configured parameters)")
    bars.set_ylim(0, 1.12)  # room for the value above a full bar
    bars.set_ylabel("generated share w_gen/(w_real+w_gen)")
    titled(bars, "weight at the start of an iteration (r = 0)")
    pts_of: dict[tuple[str, int], tuple[Any, Any]] = {}
    for label, m in facts.items():
        by_seed: dict[int, list[tuple[int, float]]] = {}
        for r in m.get("training") or []:
            share = _share(r["w_real"], r["w_gen"])
            if share is not None:
                by_seed.setdefault(int(r["seed"]), []).append((int(r["step"]), share))
        pts_of.update({(label, seed): tuple(zip(*pts)) for seed, pts in by_seed.items()})  # type: ignore[misc]
    note = draw_distinct(curves, pts_of, colors)
    curves.axhline(0.5, color="black", linestyle=":", linewidth=1)
    curves.set_ylim(-0.02, 1.02)
    curves.set_xlabel("optimizer step (iterations concatenated)")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_ylabel("generated share")
    titled(curves, "along training (logged mean log ratios)" if pts_of else "along training: no logged rewards", note)
    layout(fig, [bars])
    return save(fig, path)


def anatomy_markdown(run: RunData) -> str:
    """The '## Loss anatomy' part of tables.md ('' without losses.json)."""
    frame = anatomy_frame(run)
    return "" if frame.empty else "\n".join(["## Loss anatomy", "", to_markdown(frame), "", NOTE, ""])


def sweep_section(sweep_pngs: list[Path]) -> list[str]:
    """The HTML section of the parameter ablations (one figure per swept key), or none."""
    if not sweep_pngs:
        return []
    figs = "".join(H.figure(p, f"metric against {p.stem.removeprefix('sweep-')} per loss member", p.stem)
                   for p in sweep_pngs)
    return [H.section("Parameter ablations", figs, "sweep-section")]


def anatomy_table_html(run: RunData) -> str:
    """The loss-anatomy table and its note for the figure's HTML section ('' without losses.json)."""
    frame = anatomy_frame(run)
    return "" if frame.empty else to_html(frame, "anatomy") + f"<p class=note>{H.esc(NOTE)}</p>"
