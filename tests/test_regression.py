"""Nightly regression (`gsil-bench compare`): a planted drop fails, an identical pair
passes, missing results fail, gains and noise do not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from test_reports_data import write_run

from gsil_bench.core.io import atomic_write_json, read_jsonl
from gsil_bench.harness.commands import compare
from gsil_bench.reports.regression import compare_runs

FINAL = ("gsil-logistic", "seed-0", "iter-2", "gsm8k")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("nightly") / "night-1", n=300)


def main(argv):
    """`gsil-bench compare ...` in process (the subprocess test goes through the real entry point)."""
    import argparse

    parser = argparse.ArgumentParser()
    compare.configure(parser)
    return compare.run(parser.parse_args(argv[1:]))


def _copy(baseline, tmp_path, name="night-2"):
    dst = tmp_path / name
    shutil.copytree(baseline, dst)
    shutil.rmtree(dst / "report", ignore_errors=True)
    return dst


def flip(run_dir, parts, n_flips, to=0.0):
    """Set `n_flips` items whose score is not `to` to `to`, rewriting samples and metrics consistently."""
    folder = run_dir.joinpath("eval", *parts)
    samples = read_jsonl(folder / "samples.jsonl")
    metric = json.loads((folder / "metrics.json").read_text())["primary"]
    changed = 0
    for s in samples:
        if changed < n_flips and s["scores"][metric] != to:
            s["scores"][metric], changed = to, changed + 1
    assert changed == n_flips
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    x = np.array([s["scores"][metric] for s in samples])
    rec = json.loads((folder / "metrics.json").read_text())
    rec["metrics"][metric].update(value=float(x.mean()), ci_low=float(x.mean() - 0.05), ci_high=float(x.mean() + 0.05))
    atomic_write_json(folder / "metrics.json", rec)


def test_identical_pair_passes(baseline, tmp_path):
    cand = _copy(baseline, tmp_path)
    assert main(["compare", str(baseline), str(cand), "--output", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "no significant drop (10 method/task metrics compared, 7 training trajectories the same)" in md
    assert 'id="verdict"' in (tmp_path / "cmp" / "compare.html").read_text()


def test_planted_regression_fails_the_job(baseline, tmp_path):
    cand = _copy(baseline, tmp_path)
    flip(cand, FINAL, 60)  # 60 of 300 items flipped from correct to wrong
    result = compare_runs(baseline, cand, n_boot=1000)
    drops = result.drops
    assert [(c.method, c.task) for c in drops] == [("gsil-logistic", "gsm8k")]
    assert drops[0].diff.diff == pytest.approx(-60 / 300) and drops[0].diff.n == 300
    assert all(c.status == "ok" for c in result.changes if c not in drops)
    proc = subprocess.run([sys.executable, "-m", "gsil_bench.harness.cli", "compare", str(baseline), str(cand)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "REGRESSION: 1 significant drop(s): gsil-logistic/gsm8k" in proc.stdout
    assert "drop" in (cand / "compare" / "compare.html").read_text()


def test_noise_and_gains_do_not_fail_but_tolerance_and_missing_apply(baseline, tmp_path):
    cand = _copy(baseline, tmp_path)
    flip(cand, FINAL, 2)  # two flips: not significant
    flip(cand, ("sft", "seed-0", "iter-1", "gsm8k"), 60, to=1.0)  # a big gain
    result = compare_runs(baseline, cand, n_boot=1000)
    status = {(c.method, c.task): c.status for c in result.changes}
    assert status[("gsil-logistic", "gsm8k")] == "ok" and status[("sft", "gsm8k")] == "gain"
    assert main(["compare", str(baseline), str(cand)]) == 0
    flip(cand, FINAL, 30)
    assert main(["compare", str(baseline), str(cand)]) == 1
    assert main(["compare", str(baseline), str(cand), "--tolerance", "0.5"]) == 0  # drop of ~0.11 < 0.5
    shutil.rmtree(cand / "eval" / "spin")
    assert main(["compare", str(baseline), str(cand), "--tolerance", "0.5"]) == 1
    assert main(["compare", str(baseline), str(cand), "--tolerance", "0.5", "--allow-missing"]) == 0
    assert "MISSING" in (cand / "compare" / "compare.md").read_text()


def lower_is_better(run_dir, task="gsm8k"):
    """Declare `task`'s primary metric lower-is-better (an error rate, say) in every metrics.json of the run."""
    for path in (run_dir / "eval").rglob(f"{task}/metrics.json"):
        rec = json.loads(path.read_text())
        rec["metrics"][rec["primary"]]["facts"]["higher_is_better"] = False
        atomic_write_json(path, rec)


def test_a_lower_is_better_metric_drops_when_it_rises(baseline, tmp_path):
    """On a metric declared lower-is-better, a significant rise beyond tolerance is the drop (exit 1) and a
    fall is a gain (exit 0); read with the higher-is-better direction, both would be the other way round."""
    base = _copy(baseline, tmp_path, "night-1")
    lower_is_better(base)
    rise, fall = _copy(base, tmp_path, "rise"), _copy(base, tmp_path, "fall")
    flip(rise, FINAL, 60, to=1.0)  # 60 of 300 items up: the error rate rises by 0.2
    flip(fall, FINAL, 60, to=0.0)
    for cand, want, code in ((rise, "drop", 1), (fall, "gain", 0)):
        status = {(c.method, c.task): c.status for c in compare_runs(base, cand, n_boot=1000).changes}
        assert status[("gsil-logistic", "gsm8k")] == want, (
            f"an error rate that {cand.name}s by 0.2 is a {status[('gsil-logistic', 'gsm8k')]}, not a {want}: "
            "compare ignores the metric's declared direction (higher_is_better false)")
        assert {s for k, s in status.items() if k != ("gsil-logistic", "gsm8k")} == {"ok"}
        assert main(["compare", str(base), str(cand)]) == code


def test_different_shared_blocks_are_flagged(baseline, tmp_path):
    other = write_run(tmp_path / "other", n=300, shared_hash="0000000000000000")
    result = compare_runs(baseline, other, n_boot=200)
    assert not result.same_config
    md, _ = __import__("gsil_bench.reports.regression", fromlist=["write_compare"]).write_compare(result, tmp_path / "cmp")
    assert "not a like-for-like comparison" in md.read_text()


def test_compare_against_the_last_indexed_night(baseline, tmp_path):
    from gsil_bench.reports.index import RunIndex

    index = RunIndex(tmp_path / "runs.sqlite")
    first = _copy(baseline, tmp_path, "night-a")
    assert main(["compare", "--last", str(index.path), str(first)]) == compare.NO_BASELINE  # nothing earlier
    index.add_run(first, status="done")
    cand = _copy(baseline, tmp_path, "night-b")
    plan = json.loads((cand / "plan.json").read_text())
    atomic_write_json(cand / "plan.json", {**plan, "run_id": "night-b", "created": "2099-01-01T00:00:00"})
    flip(cand, FINAL, 60)
    assert index.previous_run(cand) == str(first.resolve())
    assert main(["compare", "--last", str(index.path), str(cand)]) == 1
    assert "night-a" in (cand / "compare" / "compare.md").read_text()



def test_copy_and_delete_a_final_result_fails_naming_the_file(baseline, tmp_path, capsys):
    """The nightly's reproduction: copy a run, delete the last iteration's metrics.json. compare used to
    pair the baseline's iteration 2 with the candidate's iteration 1, print a gain and exit 0."""
    cand = _copy(baseline, tmp_path)
    gone = cand.joinpath("eval", *FINAL, "metrics.json")
    gone.unlink()
    result = compare_runs(baseline, cand, n_boot=200)
    (missing,) = result.missing
    assert (missing.method, missing.task, missing.base_iteration, missing.cand_iteration) == \
        ("gsil-logistic", "gsm8k", 2, None)  # never paired with iteration 1
    assert not [c for c in result.changes if (c.method, c.task) == ("gsil-logistic", "gsm8k") and c.status != "missing"]
    capsys.readouterr()
    assert main(["compare", str(baseline), str(cand)]) == 1
    out = capsys.readouterr()
    assert str(gone) in out.out and "does not exist" in out.out  # the verdict names the file
    assert "gain" not in out.out.split("\n")[2]
    # the whole iteration folder gone: the same, naming the file that should be there
    shutil.rmtree(cand.joinpath("eval", *FINAL[:3]))
    assert main(["compare", str(baseline), str(cand)]) == 1
    assert f"candidate: {gone} does not exist" in capsys.readouterr().out


def test_an_edited_result_on_either_side_fails_naming_the_file(baseline, tmp_path, capsys):
    """A metrics.json changed after its DONE marker recorded its digest is not trusted: on the candidate's
    side or on the baseline's, compare exits 1 naming it (the old warning said "recomputing" and compare
    used the other iteration)."""
    from gsil_bench.core.io import mark_done
    from gsil_bench.tasks.base import RESULT_FILES

    for side in ("candidate", "baseline"):
        base, cand = _copy(baseline, tmp_path, f"b-{side}"), _copy(baseline, tmp_path, f"c-{side}")
        folder = (cand if side == "candidate" else base).joinpath("eval", *FINAL)
        mark_done(folder, digest=RESULT_FILES)  # as the task writes it
        rec = json.loads((folder / "metrics.json").read_text())
        rec["metrics"]["exact_match"]["value"] = 1.0
        (folder / "metrics.json").write_text(json.dumps(rec))
        capsys.readouterr()
        assert main(["compare", str(base), str(cand)]) == 1, side
        out = capsys.readouterr()
        assert f"{side}: {folder / 'metrics.json'} changed after it was written" in out.out, out.out
        assert "recomputing" not in out.err
        assert main(["compare", str(base), str(cand), "--allow-missing"]) == 0


def test_a_missing_seed_is_not_averaged_away(tmp_path, capsys):
    """Two seeds on the baseline, one on the candidate: the pair is (method, seed, iteration, task) exactly."""
    base = write_run(tmp_path / "b", seeds=(0, 1), n=60)
    cand = _copy(base, tmp_path, "c")
    shutil.rmtree(cand / "eval" / "sft" / "seed-1")
    missing = compare_runs(base, cand, n_boot=100).missing
    assert {(c.method, c.task) for c in missing} == {("sft", "gsm8k"), ("sft", "mt_bench")}
    assert all(c.why == [f"candidate: {cand}/eval/sft/seed-1/iter-1/{c.task}/metrics.json does not exist"]
               for c in missing)


def test_last_finds_the_original_when_the_candidate_is_a_copy(baseline, tmp_path, capsys):
    """A candidate folder copied from another run shares its plan.json run_id; --last still finds that
    run (keyed by folder, not by the copied id). With no earlier run: one line and exit 3."""
    from gsil_bench.reports.index import RunIndex

    index = RunIndex(tmp_path / "runs.sqlite")
    first = _copy(baseline, tmp_path, "night-a")
    capsys.readouterr()
    assert main(["compare", "--last", str(index.path), str(first)]) == compare.NO_BASELINE
    err = capsys.readouterr().err
    assert err.count("no baseline") == 1 and len(err.strip().splitlines()) == 1, err
    index.add_run(first, status="done")
    cand = _copy(first, tmp_path, "night-b")  # same run_id, same start time
    index.add_run(cand, status="done")  # the finished candidate indexes itself
    assert index.previous_run(cand) == str(first.resolve())
    flip(cand, FINAL, 60)
    assert main(["compare", "--last", str(index.path), str(cand)]) == 1
    assert "night-a" in (cand / "compare" / "compare.md").read_text()


def _shift_scores(run_dir, parts, delta):
    """Add `delta` to every item's primary score (and the metric's value): a float-level change when tiny."""
    folder = run_dir.joinpath("eval", *parts)
    metric = json.loads((folder / "metrics.json").read_text())["primary"]
    samples = read_jsonl(folder / "samples.jsonl")
    for s in samples:
        s["scores"][metric] += delta
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    rec = json.loads((folder / "metrics.json").read_text())
    for k in ("value", "ci_low", "ci_high"):
        rec["metrics"][metric][k] += delta
    atomic_write_json(folder / "metrics.json", rec)


def test_practical_significance_float_level_changes_never_alarm(baseline, tmp_path):
    cand = _copy(baseline, tmp_path)
    _shift_scores(cand, ("spin", "seed-0", "iter-2", "mt_bench"), -1e-9)  # every item lower: significant, tiny
    result = compare_runs(baseline, cand, n_boot=500)
    (change,) = [c for c in result.changes if (c.method, c.task) == ("spin", "mt_bench")]
    assert change.diff.significant() and change.diff.diff == pytest.approx(-1e-9)
    assert change.status == "ok" and not result.failed  # below the default tolerance of MT-Bench scores (0.25)
    assert main(["compare", str(baseline), str(cand)]) == 0
    assert main(["compare", str(baseline), str(cand), "--tolerance", "0"]) == 1  # without one it would alarm
    cfg = yaml.safe_load((cand / "config.yaml").read_text())  # report.tolerance: per metric, by name
    cfg["report"]["tolerance"] = {"mt_bench/score": 1e-12}
    (cand / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert [(c.method, c.task) for c in compare_runs(baseline, cand, n_boot=500).drops] == [("spin", "mt_bench")]


def test_tolerance_lookup_order():
    """report.tolerance by task/metric, then by metric, then the tolerance the task declared (core.facts)."""
    from gsil_bench.core.facts import DEFAULT_TOLERANCE, MetricFacts
    from gsil_bench.reports.regression import tolerance_for
    from gsil_bench.tasks.api import make_task
    from gsil_bench.tasks.base import facts_of

    gsm8k, heldout = make_task("gsm8k"), make_task("heldout_gsm8k")
    strict, margin = facts_of(gsm8k, "exact_match/strict-match"), facts_of(heldout, "margin")
    assert tolerance_for("gsm8k", "exact_match/strict-match", strict) == 0.02
    assert tolerance_for("heldout_gsm8k", "logp_real", facts_of(heldout, "logp_real")) == 0.01
    assert tolerance_for("heldout_gsm8k", "margin", margin) == 0.5
    assert tolerance_for("heldout_gsm8k", "margin", margin, {"margin": 2.0}) == 2.0
    assert tolerance_for("heldout_gsm8k", "margin", margin, {"margin": 2.0, "heldout_gsm8k/margin": 3.0}) == 3.0
    assert tolerance_for("mystery", "thing", MetricFacts.from_json(None, "thing")) == DEFAULT_TOLERANCE


def _edit_curve(run_dir, method, iteration, step, key, value):
    path = run_dir / method / "seed-0" / f"iter-{iteration}" / "metrics.jsonl"
    rows = read_jsonl(path)
    if value is None:
        rows = [r for r in rows if r["step"] != step]
    else:
        rows[step - 1][key] = value(rows[step - 1][key])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_training_trajectories_are_compared_step_by_step(baseline, tmp_path):
    cand = _copy(baseline, tmp_path)
    _edit_curve(cand, "gsil-hinge", 2, 3, "loss", lambda x: x * (1 + 1e-7))  # float-level: the same curve
    _edit_curve(cand, "spin", 1, 1, "rewards/accuracy", lambda x: 1 - x)  # accuracies flip on rounding: not compared
    result = compare_runs(baseline, cand, n_boot=200)
    assert not result.diverged and max(t.max_diff for t in result.trajectories) > 0
    _edit_curve(cand, "gsil-hinge", 2, 3, "loss", lambda x: -x)  # a flipped loss sign
    _edit_curve(cand, "sft", 1, 2, "lr", lambda x: 100 * x)  # a learning rate x100
    result = compare_runs(baseline, cand, n_boot=200)
    div = {(t.method, t.iteration): t for t in result.diverged}
    assert set(div) == {("gsil-hinge", 2), ("sft", 1)}
    assert (div[("gsil-hinge", 2)].key, div[("gsil-hinge", 2)].step) == ("loss", 3)
    assert (div[("sft", 1)].key, div[("sft", 1)].step, div[("sft", 1)].cand_value) == ("lr", 2, pytest.approx(1e-4))
    assert not result.drops and result.failed
    assert main(["compare", str(baseline), str(cand)]) == 1
    md = (cand / "compare" / "compare.md").read_text()
    assert "2 training trajectorie(s) diverged" in md and "loss at step 3" in md
    _edit_curve(cand, "spin", 2, 4, None, None)  # a step fewer
    assert ("spin", 2) in {(t.method, t.iteration) for t in compare_runs(baseline, cand, n_boot=200).diverged}


def test_exact_metrics_drop_on_any_decrease():
    from gsil_bench.reports.regression import _status
    from gsil_bench.reports.stats import PairedDiff

    one_lost = PairedDiff(-1 / 76, -0.04, 0.0, 1.0, 76, 1.0, 75 / 76)  # one canary verdict lost: not significant
    assert not one_lost.significant()
    assert _status(True, one_lost, 0.0, exact=True) == "drop"
    assert _status(True, one_lost, 0.0) == "ok"  # a noisy metric would need significance
    same = PairedDiff(0.0, 0.0, 0.0, 1.0, 76, 1.0, 1.0)
    assert _status(True, same, 0.0, exact=True) == "ok"


def test_importing_the_regression_module_leaves_the_matplotlib_backend_alone():
    """A user's own backend (a notebook's, a GUI's) is not replaced by importing gsil-bench."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import gsil_bench.reports.regression; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "svg"
