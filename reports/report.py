"""`write_report(run_dir)`: the report of one run folder.

Writes <run>/report/:
    index.html   one self-contained page (tables, figures, provenance)
    tables.md    comparison + per-iteration tables (Markdown; deterministic for given scores)
    tables.tex   the same, paper-ready (booktabs)
    costs.md / costs.tex   training cost per method (tokens, wall time)
    published.csv  with report.published: the paper's numbers beside ours (reports.published)
    results.csv  every metric of every evaluation, long format
    plots/<figure>.png (+ .pdf, .svg) for each entry of FIGURES; plots/sweep-<key>.png per swept parameter

FIGURES is the one list of the report's figures: `write_report` draws each, and the HTML
page shows each in its own section, in that order; a new figure is one entry (docs/extending.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from gsil_bench.core.datadir import data_dir
from gsil_bench.core.io import atomic_write_text
from gsil_bench.core.strict import method_label
from gsil_bench.reports import ablation, anatomy, costs, curves, glossary, plots, significance, tables
from gsil_bench.reports import html as H
from gsil_bench.reports.published import load_published, published_display, published_frame, resolve_published
from gsil_bench.reports.rundata import RunData, load_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportInputs:
    """What a figure may draw from: the run, the final-iteration and the per-iteration comparisons."""

    run: RunData
    comp: tables.Comparison
    per_iter: tables.Comparison


@dataclass(frozen=True)
class Figure:
    """One figure of the report: `draw(inputs, png_path)` returns the PNG path, or None when the run holds
    nothing to draw (the HTML section then shows `empty`)."""

    key: str  # report/plots/<key>.png and the HTML ids (fig-<key>, <key>-section)
    title: str  # the HTML section's heading
    caption: str
    empty: str
    draw: Callable[[ReportInputs, Path], Path | None]
    table: Callable[[ReportInputs], str] | None = None  # HTML shown above the figure in its section


FIGURES: list[Figure] = [
    Figure("ablation", "Loss-family ablation", "the members of every loss family with two or more unswept members "
           "(a row of panels per family), per task, final iteration, with intervals",
           "No loss family with two unswept members in this run (swept ones: Parameter ablations).",
           lambda x, p: plots.ablation_plot(x.comp, p)),
    Figure("iterations", "Score against self-play iteration", "score per iteration (0 = starting model)",
           "No evaluated iteration yet.", lambda x, p: plots.iteration_plot(x.per_iter, p)),
    Figure("training", "Training curves", "training metrics per optimizer step, the loss and the rewards per loss "
           "family (rewards as the loss logs them: beta*r for DPO, IPO and SPIN, r for GSIL); dotted lines: iteration "
           "starts; a (symlog) panel has a symmetric-log axis; curves with the same points are drawn in distinct "
           "line styles and named in their panel's title",
           "No training metrics yet.", lambda x, p: plots.training_curves(x.run, p)),
    Figure("anatomy", "Loss anatomy", "generated share of the loss's weight, at the start and along training",
           "No loss facts yet (losses.json).", lambda x, p: anatomy.anatomy_plot(x.run, p),
           table=lambda x: anatomy.anatomy_table_html(x.run)),
]


def config_check(run: RunData) -> tuple[bool | None, str]:
    """Is every trained method's shared-block hash the run's hash? (None: nothing to check)."""
    expected = run.shared_hash
    seen: dict[str, set[str]] = {}
    for t in run.train:
        h = t.summary.get("shared_hash")
        if h:
            seen.setdefault(str(h), set()).add(t.method)
    if not seen:
        return None, f"shared-block hash {expected or 'unknown'} (no training summaries to check)"
    if expected is None and len(seen) == 1:
        expected = next(iter(seen))
    if set(seen) == {expected}:
        methods = sorted(seen[str(expected)])
        return True, f"identical configuration: every method ({len(methods)}) trained with shared-block hash {expected}"
    parts = "; ".join(f"{h}: {', '.join(sorted(ms))}" for h, ms in sorted(seen.items()))
    return False, f"configuration differs between methods (run hash {expected}): {parts}"


def method_overrides(run: RunData) -> str:
    """The shared keys single methods change (methods[i].overrides), for the line beside the hash."""
    parts = [f"{method_label(m)}: " + ", ".join(f"{k}={v}" for k, v in m["overrides"].items())
             for m in run.config.get("methods", []) if m.get("overrides")]
    return "per-method overrides (outside the hash): " + "; ".join(parts) if parts else ""


def published_table(run: RunData, n_boot: int, alpha: float) -> pd.DataFrame | None:
    """report.published beside our values (None when the config names no file)."""
    spec = (run.config.get("report") or {}).get("published")
    if not spec:
        return None
    root = data_dir((run.config.get("shared") or {}).get("data_dir"))
    return published_frame(run, load_published(resolve_published(run, spec, root)), n_boot=n_boot, alpha=alpha)


def _report_options(run: RunData, baseline: str | None, n_boot: int | None, alpha: float | None) -> tuple[str, int, float]:
    rc = run.config.get("report") or {}
    return (baseline or rc.get("baseline") or "sft", int(n_boot or rc.get("bootstrap") or 2000),
            float(alpha or rc.get("alpha") or 0.05))


def _markdown(run: RunData, comp: tables.Comparison, per_iter: tables.Comparison, check: str,
              published: pd.DataFrame | None) -> str:
    lines = [f"# {run.name}: comparison", "", check, ""]
    diverged = curves.divergences(run)
    lines += [f"**DIVERGED training**: {d.text()}" for d in diverged] + ([""] if diverged else [])
    if method_overrides(run):
        lines += [method_overrides(run), ""]
    if comp.baseline not in run.methods:
        lines += [f"Baseline `{comp.baseline}` is not in this run: no significance marks.", ""]
    lines += [tables.to_markdown(tables.comparison_frame(comp, "md")), "", tables.legend(comp), ""]
    diffs = significance.differences_frame(comp, "md")
    if len(diffs):
        lines += [f"## Differences against {comp.baseline}", "", diffs.to_markdown(index=False, tablefmt="github",
                  disable_numparse=True), "", significance.differences_note(comp, "md"), ""]
    lines += ["## Every iteration", "", tables.to_markdown(tables.comparison_frame(per_iter, "md", True)), ""]
    if published is not None:
        lines += ["## Published numbers", "", PUBLISHED_NOTE, ""]
        lines += [tables.to_markdown(published_display(published)) if len(published) else "No published rows.", ""]
    return "\n".join(lines)


PUBLISHED_NOTE = ("pub = the paper's value (percentages as proportions), ours = this run's with its interval, "
                  "Δ = ours − published, ✓/✗ = the published value lies inside/outside our interval.")


def _latex(run: RunData, comp: tables.Comparison, per_iter: tables.Comparison) -> str:
    cap = tables.latex_caption(comp, run.name)
    parts = [
        tables.to_latex(tables.comparison_frame(comp, "tex"), cap, f"tab:{run.name}-comparison", escape_caption=False),
        tables.to_latex(tables.comparison_frame(per_iter, "tex", True), f"{run.name}: every iteration",
                        f"tab:{run.name}-iterations"),
    ]
    diffs = significance.differences_frame(comp, "tex")
    if len(diffs):
        parts.append(tables.to_latex(diffs.set_index("method"), f"{run.name}: "
                                     + significance.differences_note(comp, "tex"), f"tab:{run.name}-differences"))
    return "% needs \\usepackage{booktabs}\n" + "\n".join(parts)


def _provenance_rows(run: RunData, check: tuple[bool | None, str]) -> list[tuple[str, str]]:
    prov: dict[str, Any] = run.provenance
    git = prov.get("git") or {}
    ok, text = check
    cls = {True: "ok", False: "bad"}.get(ok, "note")  # type: ignore[arg-type]
    steps = run.plan.get("steps", [])
    status: dict[str, int] = {}
    for s in steps:
        status[s.get("status", "?")] = status.get(s.get("status", "?"), 0) + 1
    pk = prov.get("packages") or {}
    rows = [
        ("run folder", H.esc(run.root.name) + ' <span class="note">(the paths on this page are relative to it)</span>'),
        ("shared-block hash", f'<code>{H.esc(run.shared_hash or "unknown")}</code> <span class="{cls}">{H.esc(text)}</span>'
         + (f' <span class="note">{H.esc(method_overrides(run))}</span>' if method_overrides(run) else "")),
        ("model", H.esc(((run.config.get("shared") or {}).get("model")) or "?")),
        ("git revision", H.esc(f"{git.get('commit') or 'unknown'}{' (dirty)' if git.get('dirty') else ''}")),
        ("steps", H.esc(", ".join(f"{v} {k}" for k, v in sorted(status.items())) or "no plan.json")),
        ("wall time (all sessions)", H.esc(f"{prov.get('wall_time_s', 0):,.0f} s")),
        ("packages", H.esc(", ".join(f"{k} {v}" for k, v in pk.items() if v))),
        ("hardware", H.esc(", ".join(f"{k}: {v}" for k, v in (prov.get("hardware") or {}).items()))),
        ("data files", H.esc(", ".join(f"{k}: {v.get('sha256', '')[:12]}" for k, v in (prov.get("data") or {}).items()))),
    ]
    return rows


def glossary_html(run: RunData) -> str:
    """Every task of the run with what it measures, and each metric the tables show with its definition
    (as the tasks declared them: core.facts)."""
    rows = "".join(f"<tr><td>{H.esc(task)}</td><td>{H.esc(label) or '<em>the task</em>'}</td><td>{H.esc(text)}</td></tr>"
                   for task, label, text in run.glossary())
    return (f'<table id="glossary" class="meta"><tr><th>task</th><th>metric</th><th>what it measures</th></tr>{rows}'
            "</table>")


def relative(text: str, root: Path) -> str:
    """`text` with paths inside the run folder written relative to it."""
    return text.replace(str(root.resolve()) + "/", "").replace(str(root) + "/", "")


def _html(run: RunData, comp: tables.Comparison, per_iter: tables.Comparison, costs_frame: Any,
          figs: dict[str, Path | None], check: tuple[bool | None, str], published: pd.DataFrame | None,
          extra: list[str] | None = None) -> str:
    body = [f"<h1>{H.esc(run.name)}</h1>", H.meta_table(_provenance_rows(run, check))]
    note = "" if comp.baseline in run.methods else f"<p class=note>Baseline {H.esc(comp.baseline)} is not in this run.</p>"
    body.append(H.section("Comparison", note + tables.to_html(tables.comparison_frame(comp, "html"), "comparison")
                          + f"<p class=note>{H.esc(tables.legend(comp).replace('`', ''))}</p>", "comparison-section"))
    if published is not None:
        shown = tables.to_html(published_display(published), "published") if len(published) else "<p>No rows.</p>"
        body.append(H.section("Published numbers", shown + f"<p class=note>{H.esc(PUBLISHED_NOTE)}</p>",
                              "published-section"))
    diffs = significance.differences_frame(comp, "html")
    if len(diffs):
        body.append(H.section(f"Differences against {comp.baseline}", diffs.to_html(
            escape=False, table_id="differences", classes="results", border=0, index=False)
            + f"<p class=note>{H.esc(significance.differences_note(comp, 'html'))}</p>", "differences-section"))
    inputs = ReportInputs(run, comp, per_iter)
    for fig in FIGURES:
        table = fig.table(inputs) if fig.table else ""
        body.append(H.section(fig.title, table + (H.figure(figs.get(fig.key), fig.caption, f"fig-{fig.key}")
                                                  or f"<p class=note>{H.esc(fig.empty)}</p>"), f"{fig.key}-section"))
    body += extra or []  # the parameter ablations: one figure per swept key (reports.ablation)
    body.append(H.section("Every iteration", tables.to_html(tables.comparison_frame(per_iter, "html", True), "iterations"),
                          "iter-section"))
    body.append(H.section("Metrics", glossary_html(run), "glossary-section"))
    cost_html = (tables.to_html(tables.cost_display(costs_frame), "costs") if len(costs_frame)
                 else "<p class=note>No training summaries yet.</p>")
    workers = tables.worker_frame(run)
    worker_html = ("<h3>Processes</h3>" + tables.to_html(workers, "workers", "process")
                   + "<p class=note>Finished steps per process (host:pid[:rank]) and their wall time.</p>") if len(workers) else ""
    body.append(H.section("Compute", cost_html + f"<p class=note>{H.esc(costs.NOTE)} {H.esc(costs.run_time_note(run, costs_frame))}"
                          "</p>" + worker_html, "cost-section"))
    failed = [st for st in run.plan.get("steps", []) if st.get("status") in ("failed", "blocked", "interrupted")]
    if failed:
        rows = "".join(f"<tr><td>{H.esc(st['id'])}</td><td>{H.esc(st['status'])}</td>"
                       f"<td>{H.esc(relative(st.get('error') or '', run.root))}</td></tr>"
                       for st in failed)
        body.insert(2, H.section("Unfinished steps", '<p class="bad">These steps did not finish; their results are '
                                 "missing below. Rerun the same command to retry them.</p>"
                                 f'<table id="failed"><tr><th>step</th><th>status</th><th>error</th></tr>{rows}</table>',
                                 "failed-section"))
    diverged = curves.divergences(run)
    if diverged:
        items = "".join(f"<li>{H.esc(d.text())}</li>" for d in diverged)
        body.insert(2, H.section("Diverged training", f'<p class="bad">The loss of these trainings ran away '
                                 f"(NaN, infinite, or more than {curves.DIVERGE_FACTOR:g} times its first value): their "
                                 f"scores below come from a broken model.</p><ul id=diverged>{items}</ul>",
                                 "diverged-section"))
    body.append(H.section("Abbreviations", glossary.glossary_table_html(H.visible_text("\n".join(body)))
                          or "<p class=note>None.</p>", "abbreviations-section"))
    body.append(H.details("resolved configuration (config.yaml)", yaml.safe_dump(run.config, sort_keys=False)))
    return H.page(f"{run.name} — gsil-bench report", "\n".join(body))


def write_report(run_dir: str | Path, *, baseline: str | None = None, n_boot: int | None = None,
                 alpha: float | None = None) -> Path:
    """Write <run>/report/ and return the path of index.html."""
    run = load_run(run_dir)
    baseline, n_boot, alpha = _report_options(run, baseline, n_boot, alpha)
    out = run.root / "report"
    comp = tables.build_comparison(run, baseline=baseline, n_boot=n_boot, alpha=alpha)
    per_iter = tables.build_comparison(run, baseline=baseline, n_boot=n_boot, alpha=alpha, per_iteration=True)
    cost_rows = tables.cost_frame(run)
    check = config_check(run)
    for d in curves.divergences(run):  # the console says it too, not only the page
        log.warning("diverged training: %s", d.text())
    for u in run.untrusted:  # unfinished, or a result file deleted or changed after it was written
        log.warning("left out of the report: %s", u.reason)
    published = published_table(run, n_boot, alpha)
    inputs = ReportInputs(run, comp, per_iter)
    figs = {fig.key: fig.draw(inputs, out / "plots" / f"{fig.key}.png") for fig in FIGURES}
    extra = anatomy.sweep_section(ablation.sweep_plots(comp, out / "plots"))
    md = _markdown(run, comp, per_iter, check[1], published) + anatomy.anatomy_markdown(run)
    atomic_write_text(out / "tables.md", md + "\n" + glossary.glossary_markdown(md))
    if published is not None:
        atomic_write_text(out / "published.csv", published.to_csv(index=False))
    atomic_write_text(out / "tables.tex", _latex(run, comp, per_iter))
    if len(cost_rows):
        shown = tables.cost_display(cost_rows)
        atomic_write_text(out / "costs.md", tables.to_markdown(shown) + f"\n\n{costs.NOTE}\n\n{costs.run_time_note(run, cost_rows)}\n")
        atomic_write_text(out / "costs.tex", tables.to_latex(shown, f"{run.name}: training cost", f"tab:{run.name}-cost"))
    atomic_write_text(out / "results.csv", run.results_frame().to_csv(index=False))
    atomic_write_text(out / "index.html", _html(run, comp, per_iter, cost_rows, figs, check, published, extra))
    log.info("report written to %s", out / "index.html")
    return out / "index.html"
