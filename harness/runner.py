"""`gsil-bench run`: train every method for every seed, evaluate every checkpoint
(each self-play iteration, and the starting model once as `base`), write the report
and index the run.

    gsil-bench run CONFIG [--output DIR] [--data-dir DIR] [--index FILE] [KEY=VALUE ...]   (harness/commands/run.py)

The run is a list of steps (plan.json): `eval/base/iter-0`, then per method and
seed `train/<method>/seed-<s>` followed by `eval/<method>/seed-<s>/iter-<k>`. A step
is done when its DONE markers exist on disk (the markers, not plan.json, are the
truth), so a rerun skips finished steps and a run killed at any moment resumes.
Models with identical weights (e.g. two methods whose first iteration is the same
computation, shared by the trainers) are evaluated once: the eval step copies the
finished task folders of the first evaluation of that model.

Everything is validated before any work starts, in one pass (harness.validate): config
keys (file:line), method labels and losses, the report baseline, the model, data files,
eval task names and their documents.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gsil_bench.core.config import ExperimentConfig, MethodConfig, experiment_from_dict, hash_view, shared_hash
from gsil_bench.core.errors import ConfigError
from gsil_bench.core.io import atomic_write_json, atomic_write_text, hash_obj, is_done, read_json
from gsil_bench.core.layout import BASE, RunLayout
from gsil_bench.core.provenance import collect
from gsil_bench.core.registry import Registry
from gsil_bench.core.strict import Located, to_plain
from gsil_bench.core.tracking import log_eval
from gsil_bench.harness.validate import validate
from gsil_bench.harness.workers import is_claimed, read_record, this_worker, work_through, write_record
from gsil_bench.reports.index import RunIndex, default_index
from gsil_bench.reports.report import write_report
from gsil_bench.tasks.api import evaluate, experiment_eval
from gsil_bench.tasks.base import TASKS
from gsil_bench.trainers.anatomy import write_loss_facts
from gsil_bench.trainers.api import iteration_plan, train_method
from gsil_bench.trainers.publish import hub_revision, push_checkpoint, write_model_card

log = logging.getLogger(__name__)
# checkpoint files that are not the model: training state and gsil-bench metadata (paths, labels)
SKIP_IN_FINGERPRINT = ("optimizer", "scheduler", "rng_state", "trainer_state", "training_args", "gsil_meta", "DONE",
                       "README")  # README.md: the model card, rewritten with the scores


@dataclass
class Step:
    """One unit of work; `status` is pending, running, done, failed or blocked; `worker`
    the process that ran it (host:pid[:rank]); its record is <step folder>/step.json."""

    id: str
    kind: str  # a STEPS entry: train, eval
    method: str
    seed: int | None
    iteration: int  # train: number of iterations; eval: the iteration evaluated (0 = base)
    depends: str | None = None
    status: str = "pending"
    started: str | None = None
    wall_time_s: float | None = None
    error: str | None = None
    worker: str | None = None


@dataclass
class Run:
    """A run in progress: config, folder, options, and its steps."""

    cfg: ExperimentConfig
    root: Path
    data_dir: str | None
    plan: dict[str, Any]
    steps: list[Step] = field(default_factory=list)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.root)

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def folder(self, step: Step) -> Path:
        """Where a step's claim and record live: the method x seed folder (train) or the eval folder."""
        if step.kind == "train":
            assert step.seed is not None
            return self.layout.seed_dir(step.method, step.seed)
        return self.layout.eval_dir(step.method, step.seed, step.iteration)

    def refresh(self) -> None:
        """Every step's status from the disk: DONE markers, else its record (any process's)."""
        for s in self.steps:
            rec = read_record(self.folder(s))
            for key in ("started", "wall_time_s", "error", "worker"):
                if key in rec:
                    setattr(s, key, rec[key])
            if STEPS.get(s.kind).done(self, s):
                s.status, s.error = "done", None
            elif rec.get("status") == "running" and not is_claimed(self.folder(s)):
                s.status = "pending"  # its process ended without finishing: the next one takes it
            else:
                s.status = rec.get("status", "pending")

    def save_plan(self) -> None:
        if not self.plan.get("run_id"):  # a launch worker before the main process wrote the plan
            return
        self.refresh()
        self.plan["steps"] = [asdict(s) for s in self.steps]
        self.plan["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(self.layout.plan, self.plan)


@dataclass(frozen=True)
class StepKind:
    done: Callable[[Run, Step], bool]
    execute: Callable[[Run, Step], None]


STEPS: Registry[StepKind] = Registry("step kind")


# --- planning and validation ------------------------------------------------------------------


def plan_steps(cfg: ExperimentConfig) -> list[Step]:
    """Every step of an experiment, in execution order."""
    steps = [Step(f"eval/{BASE}/iter-0", "eval", BASE, None, 0)]
    for m in cfg.methods:
        for seed in cfg.shared.seeds:
            n = iteration_plan(cfg, m.label)
            train = Step(f"train/{m.label}/seed-{seed}", "train", m.label, seed, n)
            steps.append(train)
            steps += [Step(f"eval/{m.label}/seed-{seed}/iter-{k}", "eval", m.label, seed, k, depends=train.id)
                      for k in range(1, n + 1)]
    return steps


RESUMABLE_CHANGES = ("eval", "seeds", "iterations")  # shared keys a run folder may change between sessions


def _check_same_experiment(cfg: ExperimentConfig, root: Path) -> None:
    """A run folder may be resumed or extended (new methods, seeds, iterations, eval
    settings: finished training is reused, evaluations are redone where their settings
    changed) but not switched to another training configuration."""
    path = RunLayout(root).config
    if not path.is_file():
        return
    try:
        prev = experiment_from_dict(yaml.safe_load(path.read_text()) or {}, str(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: the run folder's config no longer loads ({err}); use a new --output") from None
    old, new = to_plain(prev.shared), to_plain(cfg.shared)
    changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
    if changed:
        raise ConfigError(f"{root} was started with another training configuration (shared.{', shared.'.join(changed)} "
                          f"differ from {path}); resume with the same values or use a new --output")
    old_methods: dict[str, MethodConfig] = {m.label: m for m in prev.methods}
    for m in cfg.methods:
        if m.label in old_methods and old_methods[m.label] != m:
            raise ConfigError(f"{root}: method {m.label!r} was run with loss {old_methods[m.label].loss} "
                              f"{old_methods[m.label].params}, now {m.loss} {m.params}; rename it or use a new --output")


# --- the two step kinds -----------------------------------------------------------------------


def _eval_dir(run: Run, step: Step) -> Path:
    return run.layout.eval_dir(step.method, step.seed, step.iteration)


def _train_done(run: Run, step: Step) -> bool:
    assert step.seed is not None
    return all(is_done(run.layout.iter_dir(step.method, step.seed, k)) for k in range(1, step.iteration + 1))


def _train(run: Run, step: Step) -> None:
    assert step.seed is not None
    train_method(run.cfg, step.method, step.seed, run.root, data_dir=run.data_dir)


def _eval_hash(cfg: ExperimentConfig) -> str:
    return hash_obj(hash_view(cfg.shared.eval))


def _tasks(run: Run, step: Step) -> list[str]:
    """The tasks of an eval step: a model-free task (registered with model_free=True, e.g. the
    scorer canaries, whose result cannot depend on the model) is scored once, on the base step."""
    return [t for t in run.cfg.shared.eval.tasks
            if step.method == BASE or t not in TASKS or not TASKS.meta(t).get("model_free")]


def _eval_done(run: Run, step: Step) -> bool:
    """Every task finished, for this model and these evaluation settings."""
    out = _eval_dir(run, step)
    if not all(is_done(out / t) for t in _tasks(run, step)) or not (out / "model.json").is_file():
        return False
    rec = read_json(out / "model.json")  # "published" is absent from folders written before it existed
    return rec.get("eval_hash") == _eval_hash(run.cfg) and not rec.get("stale") and rec.get("published", True)


def _checkpoint(run: Run, step: Step) -> str:
    """What an eval step scores: the starting model, or the iteration's checkpoint
    (trainers.api writes it to <method>/seed-<s>/iter-<k>/checkpoint)."""
    if step.method == BASE:
        return run.cfg.shared.model
    assert step.seed is not None
    path = run.layout.checkpoint(step.method, step.seed, step.iteration)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint of {step.method} seed {step.seed} iteration {step.iteration} "
                                f"not found at {path}")
    return str(path)


def fingerprint(model: str, revision: str | None = None) -> str:
    """Content hash of a checkpoint folder's weights, config and tokenizer (optimizer
    state excluded); a name (Hub id, embedded model) hashes as the name."""
    h = hashlib.sha256()
    path = Path(model)
    if not path.is_dir():
        h.update(f"name:{model}@{revision}".encode())
        return h.hexdigest()[:24]
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(SKIP_IN_FINGERPRINT)):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:24]


def _model_record(run: Run, step: Step, out: Path) -> dict[str, Any]:
    """The model an eval step scores, its fingerprint and the evaluation settings (model.json)."""
    path = out / "model.json"
    model = _checkpoint(run, step)
    rec = read_json(path) if path.is_file() else {}
    if rec.get("model") != model or not rec.get("fingerprint"):
        rec = {"model": model, "fingerprint": fingerprint(model, run.cfg.shared.model_revision)}
    if rec.get("eval_hash") != _eval_hash(run.cfg):
        rec = {**rec, "eval_hash": _eval_hash(run.cfg), "stale": [t for t in run.cfg.shared.eval.tasks if is_done(out / t)]}
    atomic_write_json(path, rec)
    return dict(rec)


def _reuse_identical(run: Run, step: Step, rec: dict[str, Any], task: str, out: Path) -> bool:
    """Copy `task` from an earlier evaluation of the same weights with the same
    settings; True if done so."""
    for other in run.steps:
        src_root = _eval_dir(run, other)
        if other.kind != "eval" or other.id == step.id or not is_done(src_root / task):
            continue
        src = read_json(src_root / "model.json") if (src_root / "model.json").is_file() else {}
        if (src.get("fingerprint"), src.get("eval_hash")) != (rec["fingerprint"], rec["eval_hash"]) \
                or task in src.get("stale", []):
            continue
        tmp = out / f".{task}.copy{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src_root / task, tmp)
        atomic_write_json(tmp / "shared_from.json", {"source": str(src_root / task), "fingerprint": rec["fingerprint"]})
        shutil.rmtree(out / task, ignore_errors=True)
        os.replace(tmp, out / task)
        log.info("%s/%s: identical model already evaluated in %s, reused", step.id, task, other.id)
        return True
    return False


def _eval(run: Run, step: Step) -> None:
    """Score the step's model on every task not finished yet with these settings; tasks
    whose settings changed since they finished are recomputed (tasks reuse their caches)."""
    out = _eval_dir(run, step)
    out.mkdir(parents=True, exist_ok=True)
    rec = _model_record(run, step, out)
    todo = [t for t in _tasks(run, step) if t in rec.get("stale", []) or not is_done(out / t)]
    todo = [t for t in todo if not _reuse_identical(run, step, rec, t, out)]
    if todo:
        evaluate(rec["model"], todo, experiment_eval(run.cfg.shared), out, data_dir=run.data_dir or run.cfg.shared.data_dir,
                 pins=run.cfg.shared.pins())  # a pinned Hub base model, as evaluated and as reference
    missing = [t for t in _tasks(run, step) if not is_done(out / t)]
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
    results = {task: read_json(out / task / "metrics.json") for task in _tasks(run, step)}
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


STEPS.add("train", StepKind(_train_done, _train))
STEPS.add("eval", StepKind(_eval_done, _eval))


# --- execution --------------------------------------------------------------------------------


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(RunLayout(root).lock, "w") as fh:
        try:  # shared: several `gsil-bench run` processes may work through one folder (harness.workers)
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{root}: another gsil-bench run or eval is using this folder") from None
        yield


def _open_run(cfg: ExperimentConfig, root: Path, data_dir: str | None) -> Run:
    _check_same_experiment(cfg, root)
    layout = RunLayout(root)
    old = read_json(layout.plan) if layout.plan.is_file() else {}
    plan = {"run_id": old.get("run_id") or uuid.uuid4().hex, "experiment": cfg.name,
            "created": old.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"), "shared_hash": shared_hash(cfg),
            "status": "running", "sessions": old.get("sessions", 0) + 1}
    run = Run(cfg, root, data_dir, plan, plan_steps(cfg))
    atomic_write_text(layout.config, yaml.safe_dump(to_plain(cfg), sort_keys=False))
    run.save_plan()
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
        if step.kind == "train" and not _train_done(run, step):
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
    with _locked(root):
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
