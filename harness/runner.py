"""`gsil-bench run`: train every method for every seed, evaluate every checkpoint
(each self-play iteration, and the starting model once as `base`), write the report
and index the run.

    gsil-bench run CONFIG [--output DIR] [--data-dir DIR] [--index FILE] [KEY=VALUE ...]   (harness/commands/run.py)

Three modules: planning (harness.plan: the steps, plan.json, the run's state), the step
kinds (harness.steps: train and eval, when each is done and how it runs) and execution
(here: the run folder's lock, provenance, claiming and running steps in one or several
processes, the report and the index).

Everything is validated before any work starts, in one pass (harness.validate): config
keys (file:line), method labels and losses, the report baseline, the model, data files,
eval task names and their documents.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from gsil_bench.core.config import ExperimentConfig, shared_hash
from gsil_bench.core.io import atomic_write_json, atomic_write_text, folder_lock, read_json
from gsil_bench.core.layout import RunLayout
from gsil_bench.core.provenance import collect
from gsil_bench.core.strict import Located, to_plain
from gsil_bench.harness.plan import STEPS, Run, Step, check_same_experiment, plan_steps
from gsil_bench.harness.retention import check_plannable, prune, warn_lost
from gsil_bench.harness.steps import train_done
from gsil_bench.harness.validate import validate
from gsil_bench.harness.workers import read_record, this_worker, work_through, write_record
from gsil_bench.reports.index import RunIndex, default_index
from gsil_bench.reports.report import write_report
from gsil_bench.trainers.anatomy import write_loss_facts

log = logging.getLogger(__name__)


def _open_run(cfg: ExperimentConfig, root: Path, data_dir: str | None) -> Run:
    check_same_experiment(cfg, root)
    layout = RunLayout(root)
    old = read_json(layout.plan) if layout.plan.is_file() else {}
    plan = {"run_id": old.get("run_id") or uuid.uuid4().hex, "experiment": cfg.name,
            "created": old.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"), "shared_hash": shared_hash(cfg),
            "status": "running", "sessions": old.get("sessions", 0) + 1}
    run = Run(cfg, root, data_dir, plan, plan_steps(cfg))
    check_plannable(run)  # a step that needs weights keep_checkpoints removed is never planned
    atomic_write_text(layout.config, yaml.safe_dump(to_plain(cfg), sort_keys=False))
    run.save_plan()
    warn_lost(run)
    prune(run)  # a run killed between a step's end and its pruning
    return run


@contextmanager
def _marked_if_interrupted(run: Run) -> Iterator[None]:
    """Ctrl-C: plan.json says `interrupted` (the step's own record already does), then the
    KeyboardInterrupt goes on to the CLI; a rerun of the same command resumes."""
    try:
        yield
    except KeyboardInterrupt:
        run.plan["status"] = "interrupted"
        run.save_plan()
        raise


def _write_provenance(run: Run, data_files: dict[str, str], started: float) -> None:
    path = run.layout.provenance
    sessions = read_json(path).get("sessions", []) if path.is_file() else []
    rec = collect(run.cfg, seed=None, data_files=data_files, started=started)
    now = {"time": rec["time"], "argv": rec["argv"], "git": rec["git"], "wall_time_s": rec["wall_time_s"]}
    rec["sessions"] = [s for s in sessions if s.get("time") != now["time"]] + [now]
    rec["wall_time_s"] = round(sum(s.get("wall_time_s", 0) for s in rec["sessions"]), 3)
    rec["shared_hash"] = shared_hash(run.cfg)
    rec["seeds"] = run.cfg.shared.seeds
    atomic_write_json(path, rec)


def _execute(run: Run, step: Step, fail_fast: bool) -> bool:
    """Run one step (claimed by this process), keeping its record; True when it finished."""
    folder, worker = run.folder(step), this_worker().id
    t0 = time.time()
    rec: dict[str, Any] = {"id": step.id, "status": "running", "worker": worker,
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "wall_time_s": None, "error": None}
    write_record(folder, rec)
    log.info("step %s: start (%s)", step.id, worker)
    try:
        STEPS.get(step.kind).execute(run, step)
        rec.update(status="done")
    except KeyboardInterrupt:  # Ctrl-C: marked, then the CLI prints one line and exits 130
        rec.update(status="interrupted", error="interrupted (Ctrl-C); rerun the same command to resume")
        raise
    except Exception as err:  # recorded; the other steps go on unless fail_fast
        rec.update(status="failed", error=f"{type(err).__name__}: {err}")
        log.error("step %s failed:\n%s", step.id, traceback.format_exc())
        if fail_fast:
            raise
    finally:
        rec.update(wall_time_s=round(time.time() - t0, 3), ended=time.time())
        if rec["status"] == "running":  # fail_fast re-raised
            rec["status"] = "failed"
        write_record(folder, rec)
        run.save_plan()
    if rec["status"] == "done":
        prune(run)  # weights nothing planned needs any more (shared.train.keep_checkpoints)
    return rec["status"] == "done"


def _ready(run: Run, step: Step, since: float) -> bool | None:
    """True when the step's training finished; None when it failed this session; else False."""
    if not step.depends:
        return True
    dep = run.step(step.depends)
    if STEPS.get(dep.kind).done(run, dep):
        return True
    rec = read_record(run.folder(dep))
    if rec.get("status") in ("failed", "blocked") and float(rec.get("ended", 0)) >= since:
        write_record(run.folder(step), {"id": step.id, "status": "blocked", "error": f"{dep.id} did not finish",
                                        "ended": time.time(), "worker": this_worker().id})
        return None
    return False


def _work(run: Run, steps: list[Step], since: float, fail_fast: bool) -> None:
    """Claim and run `steps` until none is left to any process (harness.workers)."""
    work_through(steps, folder=run.folder, done=lambda s: STEPS.get(s.kind).done(run, s),
                 ready=lambda s: _ready(run, s, since), execute=lambda s: _execute(run, s, fail_fast), since=since)


def _world() -> tuple[int, int]:
    """(rank, world size) of a multi-process launch (accelerate/torchrun set RANK and WORLD_SIZE)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _launch_worker(cfg: ExperimentConfig, root: Path, data_dir: str | None, since: float) -> int:
    """A non-main process of a multi-process launch: train every unfinished step together with
    the others (train_method distributes it), then claim evaluation steps like every process."""
    plan = read_json(RunLayout(root).plan) if RunLayout(root).plan.is_file() else {}
    run = Run(cfg, root, data_dir, plan, plan_steps(cfg))
    for step in run.steps:
        if step.kind == "train" and not train_done(run, step):
            STEPS.get("train").execute(run, step)
    _use_local_device()
    _work(run, [s for s in run.steps if s.kind == "eval"], since, fail_fast=False)
    return 0


def _use_local_device() -> None:
    """Each process of a launch evaluates on its own GPU (LOCAL_RANK)."""
    import torch

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def run_experiment(cfg: ExperimentConfig, root: str | Path, *, data_dir: str | None = None,
                   index: str | Path | None = None, loc: Located | None = None, fail_fast: bool = False,
                   data_files: dict[str, str] | None = None) -> int:
    """Run (or resume) every step, write the report and index the run. Returns 0 when
    every step finished, 1 when some failed (their results are left out of the report).

    Steps are claimed one at a time (harness.workers), so several processes share the work:
    - under a multi-process launch (accelerate launch, torchrun) every process trains each
      training step together (data parallel; a failure stops the launch), then every process
      claims evaluation steps, and the main process writes the report once none is left;
    - independent `gsil-bench run` processes on the same folder (same config) claim whole
      steps, training included; each writes the report when nothing is left to any of them."""
    started = time.time()
    root = Path(root)
    if data_files is None:  # not validated by the caller (harness.validate.load_and_validate)
        data_files = validate(cfg, loc, data_dir=data_dir)
    rank, world = _world()
    if world > 1 and rank != 0:
        return _launch_worker(cfg, root, data_dir, started)
    with folder_lock(root, shared=True):  # several `run` processes may work through one folder (harness.workers)
        run = _open_run(cfg, root, data_dir)
        _write_provenance(run, data_files, started)
        todo = [s for s in run.steps if s.status != "done"]
        log.info("%s: %d steps, %d done, %d to do", root, len(run.steps), len(run.steps) - len(todo), len(todo))
        with _marked_if_interrupted(run):
            if world > 1:  # training together first, in order; then evaluation claimed step by step
                for step in [s for s in todo if s.kind == "train"]:
                    _execute(run, step, fail_fast=True)
                _use_local_device()
                _work(run, [s for s in todo if s.kind == "eval"], started, fail_fast)
            else:
                _work(run, todo, started, fail_fast)
        run.refresh()  # every step's status from the disk (other processes' steps included)
        failed = [s.id for s in run.steps if s.status in ("failed", "blocked")]
        run.plan["status"] = "failed" if failed else "done"
        run.save_plan()
        _write_provenance(run, data_files, started)
        write_loss_facts(cfg, root)  # families, sweeps and the loss anatomy, for the report
        page = write_report(root)
        RunIndex(index or default_index(root)).add_run(root)
    if failed:
        log.error("%d step(s) did not finish: %s (rerun the same command to retry them)", len(failed), ", ".join(failed))
        return 1
    log.info("done: %s", page)
    return 0
