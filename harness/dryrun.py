"""`gsil-bench run --dry-run`: the plan of a run without doing any of it.

For every step (train method × seed, evaluate each checkpoint) it says whether it is done
already (skipped), partly done (training resumes from a saved state), or to do, with the
optimizer steps per iteration, the self-play generations it needs, what is reused
(finished iterations, shared iteration-1 inputs under shared/, finished task folders),
and the settings that send results elsewhere (trackers, Hub push). A sweep's variants are
listed with their hashes and the work they share (core.sweeps); the disk the checkpoints take
under `shared.train.keep_checkpoints` (harness.retention), and any step refused because its
checkpoint's weights were removed. Nothing is loaded but the config, the training data files (to
count their examples) and the starting model's weight-file headers (to count its parameters). The
optimizer steps are the loop's own plan (trainers.api.planned_steps: the method's overrides, each
iteration's schedule and self-play history, and the processes of the launch, WORLD_SIZE).
"""

from __future__ import annotations

from pathlib import Path

from gsil_bench.core.config import DataConfig, ExperimentConfig
from gsil_bench.core.datadir import data_dir as resolve_data_dir
from gsil_bench.core.errors import GsilError
from gsil_bench.core.io import hash_obj, is_done, read_json
from gsil_bench.core.layout import BASE, RunLayout
from gsil_bench.core.strict import to_plain
from gsil_bench.core.sweeps import describe_sweeps
from gsil_bench.harness.estimate import describe_cost, known_examples
from gsil_bench.harness.plan import Run, Step, plan_steps
from gsil_bench.harness.retention import blocked
from gsil_bench.harness.steps import eval_done, train_done
from gsil_bench.trainers.api import launch_processes, planned_steps, train_key, training_data
from gsil_bench.trainers.data import load_examples
from gsil_bench.trainers.loop import StepPlan
from gsil_bench.trainers.losses import LOSSES


def _train_line(cfg: ExperimentConfig, layout: RunLayout, step: Step, plans: list[StepPlan], examples: int) -> str:
    assert step.seed is not None
    loss = cfg.method(step.method).loss
    key = train_key(cfg, step.method, step.seed)
    parts = []
    for k, plan in enumerate(plans, 1):
        folder = layout.iter_dir(step.method, step.seed, k)
        if is_done(folder):
            same = (read_json(folder / "DONE") or {}).get("key") in (None, key)
            parts.append(f"iter {k}: done, reused" if same else f"iter {k}: trained with ANOTHER configuration (error)")
        elif (folder / "state" / "info.json").is_file():
            at = read_json(folder / "state" / "info.json").get("step", 0)
            parts.append(f"iter {k}: resumes at step {at}/{plan.total}")
        else:
            gen = ""
            if LOSSES.needs_pairs(loss) and training_data(cfg, step.method)[0] == "train_data":
                gen = (f", generates {examples} responses" if k > 1 else
                       ", the starting model's responses (shared across methods" +
                       (", already generated)" if _shared_done(layout) else f": {examples}, generated once)"))
            parts.append(f"iter {k}: {plan.total} steps{gen}")
    return f"train {step.method} (loss {loss}) seed {step.seed}: " + "; ".join(parts)


def _shared_done(layout: RunLayout) -> bool:
    shared = layout.root / "shared"
    return shared.is_dir() and any(is_done(d) for d in shared.iterdir() if d.is_dir())


def describe(cfg: ExperimentConfig, root: Path, data_dir: str | None = None, gpu_name: str | None = None,
             processes: int = 1, sharded: bool = False) -> list[str]:
    """The plan as lines of text, for the processes of this launch (WORLD_SIZE, or `processes` when more
    than 1), then its cost (harness.estimate: on this machine, or on `gpu_name`)."""
    layout = RunLayout(root)
    run = Run(cfg, Path(root), data_dir, {}, plan_steps(cfg))
    folder = resolve_data_dir(data_dir, cfg.shared.data_dir)
    loaded: dict[str, list] = {}

    def rows(data: DataConfig) -> list:  # each data file read once; a Hub data set offline: its published size
        key = hash_obj(to_plain(data))
        if key not in loaded:
            try:
                loaded[key] = load_examples(data, folder)
            except (GsilError, FileNotFoundError) as err:
                loaded[key] = known_examples(cfg, str(err))
        return loaded[key]

    def examples(data: DataConfig) -> int:
        return len(rows(data))

    processes, t = (processes if processes > 1 else launch_processes()), cfg.shared.train
    examples_list = rows(cfg.shared.train_data)
    n_steps = StepPlan.of(len(examples_list), t, processes).total  # the shared block's plan (the cost estimate's)
    lines = [f"plan of {cfg.name} in {root} ({'exists' if Path(root).is_dir() else 'new'}): "
             f"{len(cfg.methods)} method(s) x {len(cfg.shared.seeds)} seed(s); {examples(cfg.shared.train_data)} "
             f"training examples, global batch {t.batch_size * t.grad_accum * processes} ({t.batch_size} x "
             f"{t.grad_accum} accumulation x {processes} process{'es' if processes > 1 else ''}); "
             f"tasks {', '.join(cfg.shared.eval.tasks)}" + (f" (first {cfg.shared.eval.limit} items)"
                                                            if cfg.shared.eval.limit else "")]
    lines += describe_sweeps(cfg, lambda label: LOSSES.needs_pairs(cfg.method(label).loss))
    todo = 0
    for step in run.steps:
        if step.kind == "train":
            n = examples(training_data(cfg, step.method)[1])
            done = Path(root).is_dir() and train_done(run, step)
            lines.append(("[skip] " if done else "[todo] ")
                         + _train_line(cfg, layout, step, planned_steps(cfg, step.method, n, processes), n))
        else:
            done = Path(root).is_dir() and eval_done(run, step)
            what = "the starting model" if step.method == BASE else f"{step.method} seed {step.seed} iter {step.iteration}"
            out = layout.eval_dir(step.method, step.seed, step.iteration)
            finished = [task for task in cfg.shared.eval.tasks if is_done(out / task)]
            extra = f" ({', '.join(finished)} finished, checked against the settings)" if finished and not done else ""
            lines.append(("[skip] " if done else "[todo] ") + f"evaluate {what}{extra}")
        todo += not done
    if Path(root).is_dir():
        lines += [f"[blocked] {b} (its weights were removed by shared.train.keep_checkpoints: the run refuses)"
                  for b in blocked(run)]
    sinks = ([f"trackers: {', '.join(t.report_to)} (under {Path(root) / 'tracking'})"] if t.report_to else []) + \
        ([f"push to the Hub: {t.hub_model_id} (one branch per method-seed-iteration)"] if t.push_to_hub else [])
    lines += sinks + [f"{todo} of {len(run.steps)} steps to do; then the report in {layout.report_dir}"]
    return lines + describe_cost(cfg, run.steps, examples_list, n_steps, gpu_name, processes, sharded)
