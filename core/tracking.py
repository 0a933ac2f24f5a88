"""Experiment tracking (`train.report_to`) through accelerate's tracker classes.

`train.report_to: [tensorboard, mlflow]` (also `wandb`, `trackio`) sends every logged
training step (`train/loss`, `train/lr`, `train/grad_norm`, `train/rewards/...`) and every
evaluation score (`eval/<task>/<metric>`, at the global step the checkpoint was saved at)
to one tracker run per method × seed, named `<method>/seed-<s>`. Files stay inside the
run folder unless the tracker is told otherwise:

    <run>/tracking/tensorboard/<method>/seed-<s>/events.out.tfevents.*
    <run>/tracking/mlflow.db  (a local MLflow store, sqlite; $MLFLOW_TRACKING_URI wins)
    <run>/tracking/mlflow_runs.json  (run name -> MLflow run id: a resumed or evaluated
                                      run keeps logging to the same MLflow run)

wandb and trackio read their own settings from the environment (WANDB_MODE=offline, ...).
Only the main process logs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from gsil_bench.core.errors import ConfigError, Problem
from gsil_bench.core.io import atomic_write_text
from gsil_bench.core.registry import did_you_mean

log = logging.getLogger(__name__)
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}  # name -> package


def tracker_problems(report_to: list[str], key: str = "train.report_to") -> list[Problem]:
    """Unknown tracker names and trackers whose package is not installed."""
    from importlib.util import find_spec

    out = []
    for i, name in enumerate(report_to):
        if name not in TRACKERS:
            out.append(Problem(f"{key}[{i}]", f"unknown tracker {name!r}{did_you_mean(name, list(TRACKERS))}; "
                                              f"known: {', '.join(TRACKERS)}"))
        elif find_spec(TRACKERS[name]) is None:
            out.append(Problem(f"{key}[{i}]", f"{name} is not installed (pip install 'gsil-bench[tracking]' "
                                              f"or pip install {TRACKERS[name]})"))
    if len(set(report_to)) != len(report_to):
        out.append(Problem(key, f"a tracker is named twice in {report_to}"))
    return out


def local_mlflow_uri(folder: Path) -> str:
    """The run folder's own MLflow store (sqlite: MLflow's file store is deprecated)."""
    return f"sqlite:///{(Path(folder) / 'mlflow.db').resolve()}"


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a/b": scalar} (trackers take flat hyperparameters)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}/"))
        return out
    value = obj if isinstance(obj, (int, float, str, bool)) else json.dumps(obj)
    return {prefix.rstrip("/"): value}


class Tracking:
    """The tracker run of one method × seed (every tracker in `report_to`)."""

    def __init__(self, report_to: list[str], folder: Path, experiment: str, run_name: str,
                 config: dict[str, Any] | None = None) -> None:
        problems = tracker_problems(report_to)
        if problems:
            raise ConfigError("; ".join(p.render() for p in problems))
        self.folder, self.run_name, self.trackers = Path(folder), run_name, []
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in report_to:
            tracker = getattr(self, f"_{name}")(experiment)
            tracker.start()
            if name == "mlflow":
                self._remember_mlflow_run(tracker.active_run.info.run_id)
            if config:
                tracker.store_init_configuration(_flat(config))
            self.trackers.append(tracker)

    def _tensorboard(self, experiment: str) -> Any:
        from accelerate.tracking import TensorBoardTracker

        return TensorBoardTracker(self.run_name, self.folder / "tensorboard")

    def _mlflow(self, experiment: str) -> Any:
        import mlflow
        from accelerate.tracking import MLflowTracker

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri(local_mlflow_uri(self.folder))
        ids_file = self.folder / "mlflow_runs.json"
        ids = json.loads(ids_file.read_text()) if ids_file.is_file() else {}
        return MLflowTracker(experiment_name=experiment, run_name=self.run_name, run_id=ids.get(self.run_name),
                             logging_dir=(self.folder / "mlartifacts").resolve().as_uri())

    def _remember_mlflow_run(self, run_id: str) -> None:
        ids_file = self.folder / "mlflow_runs.json"
        ids = json.loads(ids_file.read_text()) if ids_file.is_file() else {}
        ids[self.run_name] = run_id
        atomic_write_text(ids_file, json.dumps(ids, indent=1))

    def _wandb(self, experiment: str) -> Any:
        from accelerate.tracking import WandBTracker

        return WandBTracker(experiment, name=self.run_name, dir=str(self.folder))

    def _trackio(self, experiment: str) -> Any:
        from accelerate.tracking import TrackioTracker

        return TrackioTracker(experiment, name=self.run_name)

    def log(self, values: dict[str, Any], step: int) -> None:
        """Numbers only (the others are dropped), at `step`, to every tracker."""
        nums = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(nums, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def open_tracking(report_to: list[str], run_dir: Path, experiment: str, method: str, seed: int,
                  config: dict[str, Any] | None = None) -> Tracking | None:
    """The tracker run of `method` × `seed` under `<run_dir>/tracking/`, or None without trackers."""
    if not report_to:
        return None
    return Tracking(report_to, Path(run_dir) / "tracking", experiment, f"{method}/seed-{seed}", config)


def eval_values(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Tasks' metrics.json contents -> {"eval/<task>/<metric>": value}."""
    out = {}
    for task, rec in results.items():
        for name, m in (rec.get("metrics") or {}).items():
            if isinstance(m, dict) and isinstance(m.get("value"), (int, float)):
                out[f"eval/{task}/{name}"] = float(m["value"])
    return out


def log_eval(report_to: list[str], run_dir: Path, experiment: str, method: str, seed: int | None,
             step: int, results: dict[str, dict[str, Any]]) -> None:
    """Evaluation scores of one checkpoint to its method × seed tracker run, at global step
    `step` (the starting model: the run `base/seed-None`, step 0)."""
    tracking = open_tracking(report_to, run_dir, experiment, method, seed if seed is not None else 0)
    if tracking is None:
        return
    try:
        tracking.log(eval_values(results), step)
    finally:
        tracking.finish()
