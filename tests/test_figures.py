"""Figures fit for a paper: a distinct colour for every shipped method (a minimum CIELAB distance,
computed here from the sRGB definition), no panel without data for the plotted methods (a
model-free task scored on the starting model only gets none), and family members picked by the
family each loss declared in the registry, not by its name."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from test_reports_data import write_eval, write_run

from gsil_bench.core.loading import load_experiment
from gsil_bench.reports.report import write_report
from gsil_bench.reports.style import PALETTE, method_colors

REPO = Path(__file__).resolve().parents[1]


def lab(color) -> np.ndarray:
    """sRGB -> CIELAB (D65), IEC 61966-2-1 and CIE 15."""
    rgb = np.array(to_rgb(color))
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ lin
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def min_distance(colors) -> float:
    return min(float(np.linalg.norm(lab(a) - lab(b))) for a, b in combinations(colors, 2))


def test_every_shipped_method_has_a_distinct_colour():
    for config in ("smoke.yaml", "nightly.yaml", "ablation-b.yaml"):
        labels = ["base"] + [m.label for m in load_experiment(REPO / "configs" / config).methods]
        colors = method_colors(labels)
        assert len(colors) == len(labels)
        assert min_distance(colors.values()) >= 30, config  # delta E 1976: 30 is plainly different
    assert min_distance(["#000000", *PALETTE]) >= 20  # 23 methods and the starting model
    assert len({str(c) for c in method_colors([f"m{i}" for i in range(40)]).values()}) == 41  # and base


def test_no_empty_panels_and_members_by_declared_family(tmp_path):
    root = write_run(tmp_path / "r", methods={"sft": "sft", "spin": "spin", "gsil-logistic": "gsil-logistic",
                                              "my-hinge": "gsil-hinge"})
    # a model-free task, scored once on the starting model (as the runner does with the scorer canaries)
    write_eval(root / "eval" / "base" / "iter-0" / "canary", "gsm8k", [1.0] * 10, "tiny")
    write_report(root, n_boot=100)
    plots = root / "report" / "plots"
    for name in ("ablation", "iterations"):
        svg = (plots / f"{name}.svg").read_text()
        assert "canary" not in svg, name  # no panel for a task none of the plotted methods has
        assert "GSM8K" in svg and "MT-Bench" in svg, name
    ablation = (plots / "ablation.svg").read_text()
    colors = method_colors(["base", "sft", "spin", "gsil-logistic", "my-hinge"])
    # "my-hinge" is a GSIL member by its loss's declared family, whatever its label; spin is not
    assert str(colors["my-hinge"]).lower() in ablation and str(colors["spin"]).lower() not in ablation
