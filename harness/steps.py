"""The two step kinds of a run (registered in harness.plan.STEPS): `train` (every
self-play iteration of one method and seed, through trainers.api) and `eval` (one
model on every task). Each kind says when a step is done (`train_done`, `eval_done`:
its DONE markers, for these settings) and how it runs. Models with identical weights
(e.g. two methods whose first iteration is the same computation, shared by the
trainers) are evaluated once: the eval step copies the finished task folders of the
first evaluation of that model (`fingerprint`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from gsil_bench.core.config import ExperimentConfig, hash_view
from gsil_bench.core.errors import GsilError
from gsil_bench.core.io import atomic_path, atomic_write_json, hash_obj, is_done, read_json
from gsil_bench.core.layout import BASE
from gsil_bench.core.models import model_identity
from gsil_bench.core.tracking import log_eval
from gsil_bench.harness.plan import STEPS, Run, Step, StepKind
from gsil_bench.tasks.api import evaluate, experiment_eval
from gsil_bench.tasks.base import TASKS
from gsil_bench.trainers.api import train_method
from gsil_bench.trainers.publish import hub_revision, push_checkpoint, write_model_card

log = logging.getLogger(__name__)


def eval_dir(run: Run, step: Step) -> Path:
    return run.layout.eval_dir(step.method, step.seed, step.iteration)


def train_done(run: Run, step: Step) -> bool:
    assert step.seed is not None
    return all(is_done(run.layout.iter_dir(step.method, step.seed, k)) for k in range(1, step.iteration + 1))


def _train(run: Run, step: Step) -> None:
    assert step.seed is not None
    train_method(run.cfg, step.method, step.seed, run.root, data_dir=run.data_dir)


def eval_hash(cfg: ExperimentConfig) -> str:
    return hash_obj(hash_view(cfg.shared.eval))


def eval_tasks(run: Run, step: Step) -> list[str]:
    """The tasks of an eval step: a model-free task (its record says so, e.g. the scorer canaries, whose
    result cannot depend on the model) is scored once, on the base step."""
    return [t for t in run.cfg.shared.eval.tasks if step.method == BASE or t not in TASKS or not TASKS.info(t).model_free]


def eval_done(run: Run, step: Step) -> bool:
    """Every task finished, for this model and these evaluation settings."""
    out = eval_dir(run, step)
    if not all(is_done(out / t) for t in eval_tasks(run, step)) or not (out / "model.json").is_file():
        return False
    rec = read_json(out / "model.json")  # "published" is absent from folders written before it existed
    return rec.get("eval_hash") == eval_hash(run.cfg) and not rec.get("stale") and rec.get("published", True)


def _checkpoint(run: Run, step: Step) -> str:
    """What an eval step scores: the starting model, or the iteration's checkpoint
    (trainers.api writes it to <method>/seed-<s>/iter-<k>/checkpoint)."""
    if step.method == BASE:
        return run.cfg.shared.model
    assert step.seed is not None
    path = run.layout.checkpoint(step.method, step.seed, step.iteration)
    if (path / "REMOVED.json").is_file():  # harness.retention refuses such a plan first; a direct call says why
        raise GsilError(f"{path}: its weights were removed by shared.train.keep_checkpoints; evaluating it again "
                        "needs retraining (a new --output)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint of {step.method} seed {step.seed} iteration {step.iteration} "
                                f"not found at {path}")
    return str(path)


def fingerprint(model: str, revision: str | None = None) -> str:
    """The model's identity by content (core.models.model_identity: a checkpoint folder's bytes, training
    state left out; a Hub id by name and revision): equal for identical weights, which are evaluated once."""
    return hash_obj(model_identity(model, revision, contents=True))[:24]


def _model_record(run: Run, step: Step, out: Path) -> dict[str, Any]:
    """The model an eval step scores, its fingerprint and the evaluation settings (model.json)."""
    path = out / "model.json"
    model = _checkpoint(run, step)
    rec = read_json(path) if path.is_file() else {}
    if rec.get("model") != model or not rec.get("fingerprint"):
        rec = {"model": model, "fingerprint": fingerprint(model, run.cfg.shared.model_revision)}
    if rec.get("eval_hash") != eval_hash(run.cfg):
        rec = {**rec, "eval_hash": eval_hash(run.cfg), "stale": [t for t in run.cfg.shared.eval.tasks if is_done(out / t)]}
    atomic_write_json(path, rec)
    return dict(rec)


def _reuse_identical(run: Run, step: Step, rec: dict[str, Any], task: str, out: Path) -> bool:
    """Copy `task` from an earlier evaluation of the same weights with the same
    settings; True if done so."""
    for other in run.steps:
        src_root = eval_dir(run, other)
        if other.kind != "eval" or other.id == step.id or not is_done(src_root / task):
            continue
        src = read_json(src_root / "model.json") if (src_root / "model.json").is_file() else {}
        if (src.get("fingerprint"), src.get("eval_hash")) != (rec["fingerprint"], rec["eval_hash"]) \
                or task in src.get("stale", []):
            continue
        with atomic_path(out / task) as tmp:
            shutil.copytree(src_root / task, tmp)
            atomic_write_json(tmp / "shared_from.json", {"source": str(src_root / task), "fingerprint": rec["fingerprint"]})
        log.info("%s/%s: identical model already evaluated in %s, reused", step.id, task, other.id)
        return True
    return False


def _eval(run: Run, step: Step) -> None:
    """Score the step's model on every task not finished yet with these settings; tasks
    whose settings changed since they finished are recomputed (tasks reuse their caches)."""
    out = eval_dir(run, step)
    out.mkdir(parents=True, exist_ok=True)
    rec = _model_record(run, step, out)
    todo = [t for t in eval_tasks(run, step) if t in rec.get("stale", []) or not is_done(out / t)]
    todo = [t for t in todo if not _reuse_identical(run, step, rec, t, out)]
    if todo:
        evaluate(rec["model"], todo, experiment_eval(run.cfg.shared), out, data_dir=run.data_dir or run.cfg.shared.data_dir,
                 pins=run.cfg.shared.pins())  # a pinned Hub base model, as evaluated and as reference
    missing = [t for t in eval_tasks(run, step) if not is_done(out / t)]
    if missing:
        raise RuntimeError(f"evaluation of {rec['model']} finished without results for {', '.join(missing)}")
    # the step is done only once its scores reached the trackers and the model card: a failure
    # there (a tracker, the Hub) leaves it unfinished, and a rerun redoes that part alone
    atomic_write_json(out / "model.json", {**rec, "stale": [], "published": False})
    _after_eval(run, step, out)
    atomic_write_json(out / "model.json", {**rec, "stale": [], "published": True})


def _after_eval(run: Run, step: Step, out: Path) -> None:
    """The scores go to the trackers (train.report_to, at the checkpoint's global training
    step) and into the checkpoint's model card, which is then pushed (train.push_to_hub)."""
    t = run.cfg.shared.train
    results = {task: read_json(out / task / "metrics.json") for task in eval_tasks(run, step)}
    if step.seed is None:
        log_eval(t.report_to, run.root, run.cfg.name, step.method, step.seed, 0, results)
        return
    folders = [run.layout.iter_dir(step.method, step.seed, k) for k in range(1, step.iteration + 1)]
    log_eval(t.report_to, run.root, run.cfg.name, step.method, step.seed,
             sum(int(read_json(f / "summary.json").get("steps", 0)) for f in folders), results)
    checkpoint = folders[-1] / "checkpoint"
    write_model_card(checkpoint, read_json(folders[-1] / "summary.json"), run.cfg, results)
    if t.push_to_hub and t.hub_model_id:
        push_checkpoint(checkpoint, t.hub_model_id, hub_revision(step.method, step.seed, step.iteration))


STEPS.add("train", StepKind(train_done, _train))
STEPS.add("eval", StepKind(eval_done, _eval))
