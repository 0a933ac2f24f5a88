"""Experiment tracking (train.report_to) through accelerate's trackers, read back offline
with the trackers' own readers (TensorBoard event files, a local MLflow store), and the
progress lines a log file shows (metrics every log_every steps, periodic progress)."""

from __future__ import annotations

import logging

import pytest
from helpers import make_cfg

from gsil_bench.core.io import read_json, read_jsonl
from gsil_bench.core.progress import Progress, track
from gsil_bench.core.tracking import log_eval, tracker_problems
from gsil_bench.trainers.api import train_method

pytest.importorskip("tensorboard", reason="tensorboard is a test dependency (gsil-bench[tracking])")
mlflow = pytest.importorskip("mlflow", reason="mlflow is a test dependency (gsil-bench[tracking])")
pytest.importorskip("sqlalchemy", reason="MLflow's sqlite store needs sqlalchemy (gsil-bench[tracking])")


def _tb_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[tag] = {e.step: e.value for e in acc.Scalars(tag)}
    return out


@pytest.fixture(scope="module")
def tracked_run(tiny_model_dir, data_dir, tmp_path_factory):
    import os

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    run = tmp_path_factory.mktemp("tracked") / "run"
    cfg = make_cfg(tiny_model_dir, [{"loss": "spin"}], iterations=2,
                   train={"max_steps": 3, "report_to": ["tensorboard", "mlflow"]})
    train_method(cfg, "spin", 0, run)
    return cfg, run


def test_tensorboard_events_hold_every_logged_step(tracked_run):
    cfg, run = tracked_run
    scalars = _tb_scalars(run / "tracking" / "tensorboard" / "spin" / "seed-0")
    steps1 = read_json(run / "spin" / "seed-0" / "iter-1" / "summary.json")["steps"]
    assert steps1 == 2  # 4 examples, batch 2
    for k, offset in ((1, 0), (2, steps1)):  # iteration 2 continues the global step axis
        for rec in read_jsonl(run / "spin" / "seed-0" / f"iter-{k}" / "metrics.jsonl"):
            step = offset + rec["step"]
            assert scalars["train/loss"][step] == pytest.approx(rec["loss"], rel=1e-6)
            assert scalars["train/lr"][step] == pytest.approx(rec["lr"], rel=1e-6)
            assert scalars["train/rewards/margin"][step] == pytest.approx(rec["rewards/margin"], rel=1e-5, abs=1e-7)
    assert sorted(scalars["train/loss"]) == [1, 2, 3, 4]


def test_mlflow_store_holds_the_run_and_eval_scores(tracked_run):
    cfg, run = tracked_run
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(run / 'tracking' / 'mlflow.db').resolve()}")
    (exp,) = [e for e in client.search_experiments() if e.name == cfg.name]
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.run_name == "spin/seed-0"
    history = {m.step: m.value for m in client.get_metric_history(found.info.run_id, "train/loss")}
    metrics = read_jsonl(run / "spin" / "seed-0" / "iter-1" / "metrics.jsonl")
    assert history[1] == pytest.approx(metrics[0]["loss"], rel=1e-6)
    assert found.data.params["optimizer/lr"] == str(cfg.shared.optimizer.lr)
    # evaluation scores join the same MLflow run (its id is remembered) at the checkpoint's step
    scores = {"gsm8k": {"metrics": {"exact_match": {"value": 0.25, "ci_low": 0.1, "ci_high": 0.5}}}}
    log_eval(["tensorboard", "mlflow"], run, cfg.name, "spin", 0, 4, scores)
    (again,) = client.search_runs([exp.experiment_id])
    assert again.info.run_id == found.info.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, "eval/gsm8k/exact_match")] \
        == [(4, 0.25)]
    assert _tb_scalars(run / "tracking" / "tensorboard" / "spin" / "seed-0")["eval/gsm8k/exact_match"] == {4: 0.25}


def test_tracker_names_are_checked():
    problems = tracker_problems(["tensorbord", "mlflow", "mlflow"])
    text = "; ".join(p.render() for p in problems)
    assert "unknown tracker 'tensorbord' (did you mean 'tensorboard'?)" in text
    assert "named twice" in text


def test_log_file_shows_a_metrics_line_per_logged_step(tiny_model_dir, data_dir, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("GSIL_PROGRESS_SECONDS", "0")
    cfg = make_cfg(tiny_model_dir, [{"loss": "sft"}], train_data={"path": "gsm8k/train.jsonl", "format": "gsm8k",
                                                                  "limit": 8}, train={"max_steps": 4, "log_every": 2})
    with caplog.at_level(logging.INFO):
        (res,) = train_method(cfg, "sft", 0, tmp_path)
    lines = [r.getMessage() for r in caplog.records if " step " in r.getMessage() and "loss=" in r.getMessage()]
    metrics = read_jsonl(res.folder / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [2, 4]
    assert len(lines) == 2
    for line, rec in zip(lines, metrics):
        assert line.startswith(f"sft iter 1 step {rec['step']}/4: loss={rec['loss']:.4f}")
    progress = [r.getMessage() for r in caplog.records if r.name == "gsil_bench.core.progress"]
    assert any(m.startswith("sft iter 1: 4/4 (100%) step") for m in progress), progress


def test_progress_lines_are_periodic(caplog, monkeypatch):
    monkeypatch.setenv("GSIL_PROGRESS_SECONDS", "3600")
    with caplog.at_level(logging.INFO, logger="gsil_bench.core.progress"):
        assert list(track(range(5), desc="judge")) == [0, 1, 2, 3, 4]
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and msgs[0].startswith("judge: 5/5 (100%) it,")  # only the final line within the interval
    caplog.clear()
    monkeypatch.setenv("GSIL_PROGRESS_SECONDS", "0")
    with caplog.at_level(logging.INFO, logger="gsil_bench.core.progress"), Progress(4, "execute") as bar:
        bar.update(1)
        bar.update(1)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("execute: 1/4 (25%)") and "left" in msgs[0]
    assert msgs[1].startswith("execute: 2/4 (50%)")


def test_trackers_and_hub_settings_keep_finished_training(tiny_model_dir, data_dir):
    """Adding trackers, a Hub push or held-out evaluation to a run does not retrain what is done."""
    from gsil_bench.trainers.api import train_key

    plain = make_cfg(tiny_model_dir, [{"loss": "sft"}])
    extra = make_cfg(tiny_model_dir, [{"loss": "sft"}], train={"report_to": ["tensorboard"], "push_to_hub": True,
                                                               "hub_model_id": "me/x", "eval_every": 5,
                                                               "eval_data": {"path": "gsm8k/train.jsonl"}})
    assert train_key(plain, "sft", 0) == train_key(extra, "sft", 0)
    assert train_key(plain, "sft", 0) != train_key(make_cfg(tiny_model_dir, [{"loss": "sft"}], train={"epochs": 2}),
                                                   "sft", 0)


def test_run_sends_eval_scores_to_the_tracker_and_the_model_card(tiny_model_dir, data_dir, tmp_path):
    """`run` with report_to: each checkpoint's scores reach its tracker run at the checkpoint's
    global step (the starting model at step 0), and the checkpoint's model card gets them."""
    from gsil_bench.core.loading import experiment_from_dict
    from gsil_bench.harness.runner import run_experiment

    cfg = experiment_from_dict({"name": "trk", "methods": [{"loss": "sft"}], "report": {"bootstrap": 50}, "shared": {
        "model": str(tiny_model_dir), "train_data": {"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": 4},
        "train": {"batch_size": 2, "max_length": 96, "max_prompt_length": 64, "report_to": ["tensorboard"]},
        "eval": {"tasks": ["humaneval"], "limit": 2, "generation": {"max_new_tokens": 8, "batch_size": 2}}}})
    root = tmp_path / "run"
    assert run_experiment(cfg, root, data_dir=str(data_dir)) == 0
    steps = read_json(root / "sft" / "seed-0" / "iter-1" / "summary.json")["steps"]
    metrics = read_json(root / "eval" / "sft" / "seed-0" / "iter-1" / "humaneval" / "metrics.json")["metrics"]
    scalars = _tb_scalars(root / "tracking" / "tensorboard" / "sft" / "seed-0")
    assert scalars["eval/humaneval/pass@1"] == {steps: pytest.approx(metrics["pass@1"]["value"])}
    assert sorted(scalars["train/loss"]) == list(range(1, steps + 1))
    base = _tb_scalars(root / "tracking" / "tensorboard" / "base" / "seed-0")
    assert set(base["eval/humaneval/pass@1"]) == {0}
    card = (root / "sft" / "seed-0" / "iter-1" / "checkpoint" / "README.md").read_text()
    assert f"| humaneval | pass@1 | {metrics['pass@1']['value']:.4g} |" in card
