"""The loss anatomy (trainers.anatomy): w_real = -dL/dr_real and w_gen = dL/dr_gen by autograd
through the registry, against closed forms derived from docs/methods.md's loss table and against the
independent float64 implementation (tests/reference_losses.py); the reward scale measured from a
loss's own metrics; along training from logged rewards; a plugged-in loss gets it for free; the
report's anatomy table and figure; and each loss's declared family."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from reference_losses import reference_loss

from gsil_bench.core.loading import experiment_from_dict
from gsil_bench.trainers.anatomy import loss_facts, reward_scale, weights, write_loss_facts
from gsil_bench.trainers.losses import LOSSES


def s(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# At r = 0 the GSIL logit is z = b on both sides, so with z = a r + b and dz/dr = a (docs/methods.md table):
#   logistic  -log s(z_r) -> -dL/dr_r = a s(-b);          -log s(-z_g) -> dL/dr_g = a s(b)
#   Brier     (s(z_r)-1)^2 -> 2 a s(b) s(-b)^2;            s(z_g)^2   -> 2 a s(b)^2 s(-b)
#   hinge     max(0,1-z_r) -> a if b < 1 else 0;           max(0,1+z_g) -> a if b > -1 else 0
#   KLIEP     -z_r -> a;                                   exp(z_g) -> a e^b
#   LSIF      -exp(z_r) -> a e^b;                          exp(z_g)^2/2 -> a e^(2b)
# Pairwise at m = 0: DPO/SPIN -log s(beta m) -> beta s(0) = beta/2 on both sides; hinge max(0, 1-beta m) -> beta;
# IPO (m - 1/(2 beta))^2 -> 2/(2 beta) = 1/beta. SFT: -logp/T -> 1 per token.
CLOSED = {
    "gsil-logistic": lambda a, b: (a * s(-b), a * s(b)),
    "gsil-brier": lambda a, b: (2 * a * s(b) * s(-b) ** 2, 2 * a * s(b) ** 2 * s(-b)),
    "gsil-hinge": lambda a, b: (a if b < 1 else 0.0, a if b > -1 else 0.0),
    "gsil-kliep": lambda a, b: (a, a * math.exp(b)),
    "gsil-lsif": lambda a, b: (a * math.exp(b), a * math.exp(2 * b)),
}
PAIRWISE = {"dpo": lambda beta: (beta / 2, beta / 2), "spin": lambda beta: (beta / 2, beta / 2),
            "dpo-hinge": lambda beta: (beta, beta), "dpo-ipo": lambda beta: (1 / beta, 1 / beta)}


@pytest.mark.parametrize("a,b", [(0.01, 2.0), (0.01, 0.0), (0.01, 1.0), (0.5, -0.5), (1.0, 0.3)])
def test_gsil_weights_at_zero_equal_the_closed_forms(a, b):
    for name, closed in CLOSED.items():
        w = weights(name, {"a": a, "b": b})
        got, want = (w["w_real"], w["w_gen"]), closed(a, b)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (
            f"{name} at a = {a}, b = {b}: (w_real, w_gen) = {got}, closed form {want}" + _hint(got, want, closed(1.0, b)))


def _hint(got, want, at_one, param: str = "a") -> str:
    """What a wrong anatomy reads like: the sign of dL/dr not flipped for w_real (or flipped for w_gen), or
    the scale parameter dropped (GSIL's a in z = a r + b, the pairwise beta): the closed form at `param` = 1."""
    close = lambda x, y: x == pytest.approx(y, rel=1e-9, abs=1e-15)  # noqa: E731
    if close(got[0], -want[0]) and not close(want[0], 0.0):
        return ": the sign of w_real is wrong (w_real = -dL/dr_real)"
    if close(got[1], -want[1]) and not close(want[1], 0.0):
        return ": the sign of w_gen is wrong (w_gen = +dL/dr_gen)"
    if close(got[0], at_one[0]) and close(got[1], at_one[1]):
        return f": the weights at {param} = 1 (the parameter {param} never reached the loss)"
    return ""


def test_the_released_setting_weighs_the_generated_side():
    """The issue's reading of a = 0.01, b = 2: logistic puts e^2 ~ 7.4x the weight on the generated side,
    hinge none on the real side; at b = 0 logistic is balanced."""
    w = weights("gsil-logistic", {"a": 0.01, "b": 2.0})
    assert w["w_gen"] / w["w_real"] == pytest.approx(math.exp(2.0), rel=1e-12)
    assert weights("gsil-hinge", {"a": 0.01, "b": 2.0})["w_real"] == 0.0
    w0 = weights("gsil-logistic", {"a": 0.01, "b": 0.0})
    assert w0["w_real"] == pytest.approx(w0["w_gen"]) == pytest.approx(0.005)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_pairwise_and_sft_weights_at_zero(beta):
    for name, closed in PAIRWISE.items():
        w = weights(name, {"beta": beta})
        got, want = (w["w_real"], w["w_gen"]), closed(beta)
        assert got == pytest.approx(want, rel=1e-12), (f"{name} at beta = {beta}: (w_real, w_gen) = {got}, closed form "
                                                      f"{want}" + _hint(got, want, closed(1.0), "beta"))
    assert weights("sft", {}) == {"w_real": pytest.approx(1.0), "w_gen": None, "loss": pytest.approx(0.0)}


def test_weights_anywhere_equal_the_independent_implementation():
    rng = np.random.default_rng(0)
    cases = [(n, {"a": a, "b": b}) for n in CLOSED for a, b in ((0.01, 2.0), (0.3, -1.0))]
    cases += [(n, {"beta": beta}) for n in PAIRWISE for beta in (0.1, 1.0)]
    for name, params in cases:
        for r_real, r_gen in rng.normal(0, 3, size=(6, 2)):
            w = weights(name, params, r_real, r_gen)
            ref = reference_loss(name, np.array([r_real]), np.zeros(1), np.array([r_gen]), np.zeros(1), np.ones(1), params)
            assert w["w_real"] == pytest.approx(-ref.grad_real[0], rel=1e-9, abs=1e-12), (name, params)
            assert w["w_gen"] == pytest.approx(ref.grad_gen[0], rel=1e-9, abs=1e-12), (name, params)
            assert w["loss"] == pytest.approx(ref.loss, rel=1e-9)


def test_reward_scale_is_measured_from_the_loss():
    assert reward_scale("gsil-kliep", {"a": 0.01, "b": 2.0}) == pytest.approx(1.0)
    assert reward_scale("dpo", {"beta": 0.25}) == pytest.approx(0.25)  # DPO logs beta * r, as TRL does
    assert reward_scale("sft", {}) is None


def test_a_plugged_in_loss_gets_its_anatomy_and_family(tmp_path, monkeypatch):
    (tmp_path / "anat_plugin.py").write_text(
        "import torch\n"
        "from gsil_bench.trainers.losses import gsil_output, register_loss\n\n"
        "@register_loss('anat-sqhinge', self_play=True, family='gsil')\n"
        "def f(x, *, a: float = 0.01, b: float = 2.0):\n"
        "    z_real, z_gen = a * x.r_real + b, a * x.r_gen + b\n"
        "    return gsil_output(x, torch.relu(1 - z_real) ** 2, torch.relu(1 + z_gen) ** 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = experiment_from_dict({"name": "p", "plugins": ["anat_plugin"], "methods": [
        {"loss": "anat-sqhinge", "params": {"a": 0.5, "b": [0.0, 0.5]}}, {"loss": "sft"}]})
    facts = {m["label"]: m for m in loss_facts(cfg)["methods"]}
    # d/dr (1 - a r - b)^2 = -2a(1 - b) at r = 0; d/dr (1 + a r + b)^2 = 2a(1 + b)
    assert facts["anat-sqhinge[b=0.5]"]["at_zero"]["w_real"] == pytest.approx(2 * 0.5 * 0.5)
    assert facts["anat-sqhinge[b=0.5]"]["at_zero"]["w_gen"] == pytest.approx(2 * 0.5 * 1.5)
    assert facts["anat-sqhinge[b=0]"]["at_zero"]["gen_over_real"] == pytest.approx(1.0)
    assert facts["anat-sqhinge[b=0]"]["family"] == "gsil" and facts["sft"]["family"] == "sft"
    assert facts["anat-sqhinge[b=0]"]["sweep"] == {"params.b": 0.0}


def test_every_shipped_loss_declares_its_family():
    families = {name: LOSSES.family(name) for name in LOSSES.names() if not name.startswith(("test-", "anat-"))}
    shipped = {n: f for n, f in families.items() if n in ("sft", "dpo", "dpo-hinge", "dpo-ipo", "spin")
               or n.startswith("gsil-") and n in CLOSED}
    assert shipped == {"sft": "sft", "dpo": "dpo", "dpo-hinge": "dpo", "dpo-ipo": "dpo", "spin": "spin",
                       **{n: "gsil" for n in CLOSED}}


def test_along_training_reads_the_logged_rewards(tmp_path):
    """Weights at each logged step's mean log ratios, per iteration with its own parameters, steps
    concatenated over iterations; DPO's logged beta * r is divided back to r."""
    cfg = experiment_from_dict({"name": "t", "methods": [{"loss": "gsil-logistic", "params": {"a": 0.1, "b": 1.0}},
                                                          {"loss": "dpo", "params": {"beta": 0.5}}]})
    rows = {"gsil-logistic": [(0.0, 0.0), (2.0, -3.0)], "dpo": [(0.5, -0.5)]}
    for label, pts in rows.items():
        for k in (1, 2):
            folder = tmp_path / label / "seed-0" / f"iter-{k}"
            folder.mkdir(parents=True)
            params = {"a": 0.1, "b": 1.0 if k == 1 else 0.0} if label != "dpo" else {"beta": 0.5}
            (folder / "summary.json").write_text(json.dumps({"params": params, "steps": len(pts)}))
            (folder / "metrics.jsonl").write_text("".join(
                json.dumps({"step": i + 1, "rewards/real": rr, "rewards/generated": rg}) + "\n"
                for i, (rr, rg) in enumerate(pts)))
    write_loss_facts(cfg, tmp_path)
    facts = {m["label"]: m for m in json.loads((tmp_path / "losses.json").read_text())["methods"]}
    gsil = facts["gsil-logistic"]["training"]
    assert [(r["iteration"], r["step"]) for r in gsil] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    last = gsil[-1]  # iteration 2 (b = 0) at r_real = 2, r_gen = -3: a s(-z_r), a s(z_g)
    assert (last["w_real"], last["w_gen"]) == pytest.approx((0.1 * s(-0.2), 0.1 * s(-0.3)), rel=1e-12)
    dpo = facts["dpo"]["training"][0]  # logged 0.5 = beta * r -> r = 1, m = 2: beta s(-beta m) both sides
    assert (dpo["r_real"], dpo["r_gen"]) == pytest.approx((1.0, -1.0))
    assert (dpo["w_real"], dpo["w_gen"]) == pytest.approx((0.5 * s(-1.0), 0.5 * s(-1.0)), rel=1e-12)


def test_the_report_shows_the_anatomy_table_and_figure_for_every_method(tmp_path):
    from test_reports_data import write_run

    from gsil_bench.reports.report import write_report

    root = write_run(tmp_path / "r", methods={"sft": "sft", "dpo": "dpo", "gsil-logistic": "gsil-logistic",
                                              "gsil-hinge": "gsil-hinge"})
    assert yaml.safe_load((root / "config.yaml").read_text())["methods"]  # losses.json written beside it (write_run)
    write_report(root, n_boot=100)
    md = (root / "report" / "tables.md").read_text()
    section = md[md.index("## Loss anatomy"):]
    for method in ("sft", "dpo", "gsil-logistic", "gsil-hinge"):
        assert f"| {method} " in section, method
    # the released GSIL setting: logistic's generated share at r = 0 is e^2 / (1 + e^2)
    row = next(line for line in section.splitlines() if line.startswith("| gsil-logistic "))
    assert f"| {math.exp(2) / (1 + math.exp(2)):.3g} " in row
    html = (root / "report" / "index.html").read_text()
    assert 'id="anatomy"' in html and 'id="fig-anatomy"' in html
    assert (root / "report" / "plots" / "anatomy.svg").is_file()
