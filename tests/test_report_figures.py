"""The report's figures for the main job (configs/smoke.yaml: its ten methods, its tasks), on a run
folder written in the documented formats with the facts the real tasks declare: display names
and units on every axis, no raw task or metric names, one loss panel per loss family, iteration
starts marked, tick labels that do not overprint, a glossary, and no absolute path in the page.
Per-item scores are drawn from a seeded RNG: inputs to the report code, never a model's result."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from gsil_bench.core.io import append_jsonl, atomic_write_json, mark_done
from gsil_bench.core.loading import experiment_from_dict
from gsil_bench.reports import figures, plots
from gsil_bench.reports.figures import plt
from gsil_bench.reports.report import FIGURES, write_report
from gsil_bench.reports.rundata import load_run
from gsil_bench.tasks.api import make_task
from gsil_bench.tasks.base import facts_of
from gsil_bench.trainers.anatomy import write_loss_facts

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
SELF_PLAY = ("spin", "gsil-")
# each loss's value at the first step (sequence log ratios near 0, a = 0.01, b = 2, beta = 0.1): the scales differ
START = {"sft": 1.4, "dpo": 0.69, "dpo-hinge": 1.0, "dpo-ipo": 25.0, "spin": 0.69, "gsil-logistic": 0.25,
         "gsil-brier": 0.79, "gsil-hinge": 3.0, "gsil-kliep": 5.39, "gsil-lsif": -3.7}


def _eval(folder: Path, task: str, values: dict[str, list[float]], primary: str, reported: list[str]) -> None:
    declared = make_task(task)
    n = len(next(iter(values.values())))
    append_jsonl(folder / "samples.jsonl", [{"id": f"{task}-{i}", "prompt": "q", "output": "a", "extracted": "a",
                                              "reference": "r", "scores": {k: v[i] for k, v in values.items()}}
                                             for i in range(n)])
    metrics = {}
    for name, vals in values.items():
        x = np.asarray(vals)
        se = float(x.std(ddof=1) / math.sqrt(n))
        f = facts_of(declared, name)
        metrics[name] = {"value": float(x.mean()), "ci_low": float(x.mean() - 1.96 * se), "n": n, "stderr": se,
                         "ci_high": float(x.mean() + 1.96 * se), "higher_is_better": f.higher_is_better,
                         "facts": f.to_json()}
    atomic_write_json(folder / "metrics.json", {"task": task, "model": "m", "primary": primary, "reported": reported,
                                                "display": declared.info.display, "about": declared.info.about,
                                                "metrics": metrics})
    mark_done(folder)


def _heldout(folder: Path, level: float, rng: np.random.Generator) -> None:
    logp = list(rng.normal(-1.2 + level, 0.3, 16))
    margin = list(rng.normal(10 * level, 2.0, 16))
    _eval(folder, "heldout_gsm8k", {"logp_real": logp, "margin": margin, "accuracy": [float(m > 0) for m in margin]},
          "logp_real", ["margin"])


def _train(folder: Path, loss: str, iteration: int) -> None:
    rows = []
    for s in (1, 2):
        row = {"step": s, "loss": START[loss] * (1 - 0.05 * (s + 2 * iteration)), "lr": 1e-5, "grad_norm": 1.0}
        if loss != "sft":
            row.update({"rewards/real": 0.01 * s, "rewards/generated": -0.01 * s, "rewards/accuracy": 0.5})
        rows.append(row)
    append_jsonl(folder / "metrics.jsonl", rows)
    atomic_write_json(folder / "summary.json", {"method": loss, "loss": loss, "seed": 0, "iteration": iteration,
                                                "steps": 2, "shared_hash": "h", "final": rows[-1]})
    mark_done(folder)


@pytest.fixture(scope="module")
def main_job(tmp_path_factory) -> Path:
    return write_main_job(tmp_path_factory.mktemp("smoke"))


def write_main_job(root: Path) -> Path:
    """The main job's run folder (configs/smoke.yaml's methods and tasks) in the documented formats."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    (root / "config.yaml").write_text(yaml.safe_dump({**SMOKE, "report": {**SMOKE.get("report", {}), "bootstrap": 200}}))
    _heldout(root / "eval" / "base" / "iter-0" / "heldout_gsm8k", 0.0, rng)
    _eval(root / "eval" / "base" / "iter-0" / "scorer_canaries", "scorer_canaries", {"agreement": [1.0] * 20},
          "agreement", [])
    for i, m in enumerate(SMOKE["methods"]):
        loss = m["loss"]
        for it in range(1, 3 if loss.startswith(SELF_PLAY) else 2):
            _train(root / loss / "seed-0" / f"iter-{it}", loss, it)
            _heldout(root / "eval" / loss / "seed-0" / f"iter-{it}" / "heldout_gsm8k", 0.02 * (i + it), rng)
    write_loss_facts(experiment_from_dict(SMOKE), root)  # the families and anatomy the runner writes (losses.json)
    return root


@pytest.fixture(scope="module")
def report(main_job) -> tuple[Path, list[str]]:
    import logging

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda rec: seen.append(rec.getMessage())  # type: ignore[method-assign]
    logging.getLogger("gsil_bench.reports.figures").addHandler(handler)
    try:
        page = write_report(main_job)
    finally:
        logging.getLogger("gsil_bench.reports.figures").removeHandler(handler)
    return page, seen


def _svg_text(path: Path) -> str:
    """The SVG's source followed by its texts as a reader reads them: a label wrapped onto several
    lines (reports.figures.fit_labels) joined back with spaces."""
    text = path.read_text()
    return text + "\n" + " ".join(re.findall(r"<!-- (.*?) -->", text))


def test_every_figure_of_the_main_job_uses_display_names_and_units(report, main_job):
    page, _ = report
    plots_dir = main_job / "report" / "plots"
    for fig in FIGURES:
        assert (plots_dir / f"{fig.key}.png").is_file(), fig.key
    iterations = _svg_text(plots_dir / "iterations.svg")
    assert "held-out GSM8K log-prob of demonstrations (nats/token)" in iterations
    assert "held-out GSM8K GSIL margin (nats)" in iterations
    for svg in (plots_dir / f"{fig.key}.svg" for fig in FIGURES):
        text = _svg_text(svg)
        for raw in ("heldout_gsm8k", "logp_real", "scorer_canaries", "logp real"):  # a raw name, or one de-underscored
            assert raw not in text, (svg.name, raw)


def test_losses_of_each_family_get_their_own_axis_and_iterations_are_marked(report, main_job):
    text = _svg_text(main_job / "report" / "plots" / "training.svg")
    for family in ("sft", "dpo", "spin", "gsil"):
        assert f"training loss: {family}" in text
    assert "iter 2" in text  # the second self-play iteration's start, on the concatenated step axis
    run = load_run(main_job)
    curves, starts = plots._concatenated(run, run.methods)
    self_play = [m["loss"] for m in SMOKE["methods"] if m["loss"].startswith(SELF_PLAY)]
    assert starts == {m: {2.5: 2} for m in self_play}  # after iteration 1's two steps; sft and DPO have one
    panels = plots._panels(run, curves)
    gsil = next(shown for key, title, shown in panels if title == "training loss: gsil")
    assert sorted(gsil) == sorted(m["loss"] for m in SMOKE["methods"] if m["loss"].startswith("gsil"))


def test_no_figure_of_the_main_job_has_overprinted_ticks_or_unlabelled_panels(report):
    _, problems = report
    assert not [p for p in problems if "overlapping" in p or "missing" in p], problems


def test_no_figure_of_the_main_job_has_an_empty_panel(report, main_job):
    from gsil_bench.reports import tables

    _, problems = report
    assert not [p for p in problems if "empty panel" in p], problems  # figure_problems on every saved figure
    run = load_run(main_job)
    comp = tables.build_comparison(run, baseline="sft", n_boot=100)
    members = plots.family_members(run, "gsil")
    assert members and "scorer_canaries" in comp.columns  # the starting model's canaries: a column without members
    fig_cols = [c for c in comp.columns if any((m, it, c) in comp.cells for m in members for it in (1, 2))]
    assert "scorer_canaries" not in fig_cols and fig_cols, fig_cols  # ... which the ablation figure leaves out


def test_the_check_finds_what_a_reviewer_would(tmp_path):
    """figure_problems on figures drawn wrong on purpose: symlog with the smallest curve's size as
    linthresh (0.3, what the report used to choose) and matplotlib's default ticks prints 10^-1 on
    top of 0; an empty panel; a panel with no labels. Our symlog axis on the same curves passes."""
    curves = ([0.3, 0.25, 0.2], [25.0, 20.0, 15.0], [-0.5, -1.0, -2.0])
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, 2.4))
    for y in curves:
        a.plot([0, 1, 2], y)
    a.set_yscale("symlog", linthresh=0.3)
    a.set(title="loss", xlabel="step", ylabel="loss")
    fig.savefig(tmp_path / "bad.png")
    found = figures.figure_problems(fig)
    assert "loss: overlapping y tick labels" in found
    assert "untitled panel: empty panel" in found and "untitled panel: missing title or axis label" in found
    plt.close(fig)
    fig, a = plt.subplots(figsize=(4.2, 2.4))
    for y in curves:
        a.plot([0, 1, 2], y, label=str(y[0]))
    a.set(title="loss", xlabel="step", ylabel="loss")
    plots._scale_for_spread(a)  # ours: a power-of-ten linthresh, no tick within a decade of 0
    figures.layout(fig, [a])  # ours: labels fitted, ticks thinned, the legend below the panel, inside the canvas
    fig.canvas.draw()
    assert a.get_yscale() == "symlog" and figures.figure_problems(fig) == []
    labels = [t.get_text() for t in figures.shown_ticklabels(a.yaxis)]
    assert "0.5" in labels or "0.2" in labels or "1" in labels, labels  # a labelled tick near the small curves
    plt.close(fig)


def test_the_check_finds_text_off_the_canvas_tiny_text_covering_legends_long_labels_and_hidden_curves():
    """The objections of issue 34 planted one by one (each the way the report used to draw it), and
    the report's own way of drawing the same passing: a legend below the panels (inside the canvas),
    a y label wrapped to its panel, coinciding curves in distinct styles."""
    def panel(**kw):
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        ax.set(title="held-out GSM8K", xlabel="step", ylabel=kw.get("ylabel", "loss"))
        return fig, ax

    fig, ax = panel(ylabel="held-out GSM8K log-prob of demonstrations (nats/token)")  # longer than the panel
    ax.plot([0, 1], [0, 1])
    fig.tight_layout()
    fig.canvas.draw()
    assert "held-out GSM8K: y label longer than its panel" in figures.figure_problems(fig)
    figures.layout(fig, [ax])
    fig.canvas.draw()
    assert figures.figure_problems(fig) == []
    plt.close(fig)

    fig, ax = panel()
    for m in ("dpo", "spin"):  # the same curve in the same style: spin hides dpo
        ax.plot([1, 2, 3], [0.7, 0.6, 0.5], color="C0", label=m)
    ax.text(1, 0.55, " iter 2", fontsize=7)  # the old iteration mark
    fig.legend(*ax.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0))  # below the canvas
    fig.canvas.draw()
    found = figures.figure_problems(fig)
    assert "held-out GSM8K: curve 'dpo' hidden under 'spin'" in found
    assert "held-out GSM8K: text smaller than 8 pt: 'iter 2'" in found
    assert "legend: text outside the canvas: 'dpo'" in found and "legend: text outside the canvas: 'spin'" in found
    plt.close(fig)

    fig, ax = panel()
    ax.set_xticks([0, 1, 2], ["2026-12-01 03:00", "2026-12-02 03:00", "2026-12-03 03:00"], rotation=35, ha="right")
    ax.plot([0, 1, 2], [1, 2, 3], label="sft")
    fig.tight_layout()
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, 0.02))  # over the dates, as on the old trend page
    fig.canvas.draw()
    assert "legend covers labels of 'held-out GSM8K'" in figures.figure_problems(fig)
    plt.close(fig)

    fig, ax = panel()  # the report's way: distinct styles for the same curve, the legend below, inside
    note = figures.draw_distinct(ax, {("dpo", 0): ([1, 2, 3], [0.7, 0.6, 0.5]), ("spin", 0): ([1, 2, 3], [0.7, 0.6, 0.5])},
                               {"dpo": "C0", "spin": "C1"})
    figures.titled(ax, "held-out GSM8K", note)
    figures.layout(fig, [ax])
    fig.canvas.draw()
    assert note == "same curve: dpo = spin" and figures.figure_problems(fig) == []


def test_no_figure_of_the_main_job_has_text_outside_its_canvas(report, main_job):
    """The ablation figure's y label ("held-out GSM8K log-prob of demonstrations (nats/token)") used to run
    past the figure's 3.2-inch height; figures.layout wraps it (and every label longer than its panel)."""
    _, problems = report
    assert not [p for p in problems if "outside the canvas" in p], problems
    svg = _svg_text(main_job / "report" / "plots" / "ablation.svg")
    assert "held-out GSM8K log-prob of demonstrations (nats/token)" in svg  # wrapped over lines, not cut


def _panel_with(ylabel: str) -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.bar([0, 1], [1.0, 2.0], label="sft")
    ax.set(title="held-out GSM8K", xlabel="GSIL member (convex function)", ylabel=ylabel)
    return fig, ax


LONG_LABEL = "held-out GSM8K log-prob of demonstrations (nats/token)"  # the main job's ablation label


def test_text_outside_the_canvas_is_found(tmp_path):
    """The wrong layouts the check must reject: the old ablation panel (its label taller than the
    figure) and the old legend (anchored below the figure's bottom edge, kept only by a tight save)."""
    fig, ax = _panel_with(LONG_LABEL)
    fig.tight_layout()
    fig.savefig(tmp_path / "label.png")
    assert any("text outside the canvas" in p and "log-prob" in p for p in figures.figure_problems(fig))
    plt.close(fig)
    fig, ax = _panel_with("log-prob (nats/token)")
    fig.tight_layout()
    fig.legend(*ax.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0))  # the old legend
    fig.savefig(tmp_path / "legend.png")
    assert figures.figure_problems(fig) == ["legend: text outside the canvas: 'sft'"]
    plt.close(fig)
    fig, ax = _panel_with(LONG_LABEL)
    figures.layout(fig, [ax])  # ours: the label wrapped to the panel, the legend inside the canvas
    fig.savefig(tmp_path / "good.png")
    assert figures.figure_problems(fig) == [] and "\n" in ax.get_ylabel()
    plt.close(fig)


def test_the_page_has_a_glossary_and_no_absolute_path(report, main_job):
    page, _ = report
    html = page.read_text()
    assert str(main_job.resolve()) not in html and str(main_job) not in html
    glossary = re.search(r'<table id="glossary".*?</table>', html, re.S).group(0)
    assert "held-out GSM8K" in glossary and "GSIL margin (nats)" in glossary and "scorer canaries" in glossary
    assert "mean token log-probability the model gives the held-out demonstration" in glossary
    for fig in FIGURES:
        assert f'id="{fig.key}-section"' in html
