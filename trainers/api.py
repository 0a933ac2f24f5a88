"""Train one method × seed of an experiment: the function the runner calls.

`train_method(cfg, method_label, seed, run_dir)` runs every iteration the method needs
(`iteration_plan`: `shared.iterations` for self-play losses, else 1) into

    <run_dir>/<method>/seed-<s>/provenance.json
    <run_dir>/<method>/seed-<s>/iter-<k>/{checkpoint/, metrics.jsonl, generations.jsonl,
                                          ref_logps.pt, summary.json, DONE}
    <run_dir>/shared/<hash>/{generations.jsonl, ref_logps.pt, DONE}   (shared across methods)

and returns one `IterationResult` per iteration. It is idempotent: a finished iteration
(DONE) is skipped, an unfinished one resumes from its last saved state; an iteration
folder trained with a different configuration is an error, never silently reused.
Iteration k starts from iteration k-1's checkpoint, which is also its reference and
(self-play) its generator.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gsil_bench.core.config import DataConfig, ExperimentConfig, for_method, hash_view, iteration_config, shared_hash
from gsil_bench.core.datadir import data_dir as resolve_data_dir
from gsil_bench.core.errors import ConfigError, GsilError
from gsil_bench.core.io import atomic_write_json, hash_obj, is_done, mark_done, read_json
from gsil_bench.core.layout import RunLayout
from gsil_bench.core.models import load_tokenizer, pick_dtype
from gsil_bench.core.provenance import collect
from gsil_bench.core.strict import to_plain
from gsil_bench.core.tracking import open_tracking
from gsil_bench.trainers.data import data_file, load_examples
from gsil_bench.trainers.handbook import HUMANEVAL_FILE, decontaminate
from gsil_bench.trainers.heldout import encode_heldout
from gsil_bench.trainers.inputs import MethodContext, history_iterations, prepare_inputs
from gsil_bench.trainers.loop import LoopRun, StepPlan, train_iteration
from gsil_bench.trainers.losses import LOSSES, build_loss
from gsil_bench.trainers.official import encode_all
from gsil_bench.trainers.sharding import enable_cpu_fsdp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IterationResult:
    """One trained iteration: its number, its checkpoint folder and its iteration folder."""

    iteration: int
    checkpoint: Path
    folder: Path


def iteration_plan(cfg: ExperimentConfig, method_label: str) -> int:
    """Number of training iterations of a method: shared.iterations for self-play losses, else 1."""
    method = cfg.method(method_label)
    return cfg.shared.iterations if LOSSES.self_play(method.loss) else 1


def launch_processes() -> int:
    """The processes of this launch (WORLD_SIZE, which torchrun and accelerate launch set; 1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_data(cfg: ExperimentConfig, method_label: str) -> tuple[str, DataConfig]:
    """The data a method trains on, with its shared key: `preference_data` (chosen, rejected) for a
    pairwise loss that does not self-play when the experiment has it, else `train_data`."""
    loss, s = cfg.method(method_label).loss, cfg.shared
    if s.preference_data is not None and LOSSES.needs_pairs(loss) and not LOSSES.self_play(loss):
        return "preference_data", s.preference_data
    return "train_data", s.train_data


def iteration_items(cfg: ExperimentConfig, method_label: str, iteration: int, examples: int) -> int:
    """The loop's items in an iteration of `examples` training examples: one each, and for a self-play
    loss the pairs of the earlier iterations that shared.self_play.history adds (trainers.inputs)."""
    if not LOSSES.self_play(cfg.method(method_label).loss):
        return examples
    return examples * (1 + len(history_iterations(cfg.shared.self_play.history, iteration)))


def planned_steps(cfg: ExperimentConfig, method_label: str, examples: int, processes: int) -> list[StepPlan]:
    """Each iteration's step plan as the loop makes it: the method's overrides and the iteration's
    schedule applied, its items counted, the launch's processes (`run --dry-run` prints them)."""
    cfg = for_method(cfg, method_label)
    out = []
    for k in range(1, iteration_plan(cfg, method_label) + 1):
        it_cfg, _ = iteration_config(cfg, method_label, k)
        out.append(StepPlan.of(iteration_items(cfg, method_label, k, examples), it_cfg.shared.train, processes))
    return out


def train_key(cfg: ExperimentConfig, method_label: str, seed: int) -> str:
    """Hash of what determines a method's training (evaluation settings, the seed list and
    the number of iterations excluded, so changing them keeps finished iterations)."""
    shared = {k: v for k, v in hash_view(cfg.shared).items() if k not in ("eval", "seeds", "iterations")}
    shared["train"] = {k: v for k, v in shared["train"].items() if k not in NOT_TRAINING}
    method = cfg.method(method_label)
    extra = {k: to_plain(getattr(method, k)) for k in ("per_iteration", "overrides") if getattr(method, k)}
    return hash_obj({"shared": shared, "loss": method.loss, "params": method.params, "seed": seed, **extra})


# train settings that change where results are sent, not the trained weights (kept out of train_key)
NOT_TRAINING = ("report_to", "push_to_hub", "hub_model_id", "eval_every", "eval_data")


def make_accelerator(precision: str) -> Any:
    """The Accelerator of this process (bf16 autocast where the precision resolves to bf16; none under
    bf16-weights, whose weights compute in bf16 and train through an fp32 master copy: trainers.precision)."""
    from datetime import timedelta

    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # cpu=True without CUDA: a multi-process launch (torchrun, accelerate launch --multi_gpu)
    # then becomes data parallel over gloo instead of N independent single-process runs.
    # Generation and reference scoring run before training: give collectives hours, not 30 min.
    kwargs = {"mixed_precision": precision if precision in ("bf16", "fp16") else "no", "cpu": not torch.cuda.is_available(),
              "kwargs_handlers": [InitProcessGroupKwargs(timeout=timedelta(hours=12))]}
    try:
        acc = Accelerator(**kwargs)  # type: ignore[arg-type]
    except ValueError as err:  # a single process already made an Accelerator with other settings (e.g. TRL)
        from accelerate.state import AcceleratorState, PartialState

        if "already been initialized" not in str(err) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        acc = Accelerator(**kwargs)  # type: ignore[arg-type]
    world = launch_processes()
    if _cpu_launch_without_processes():
        raise GsilError(
            "`accelerate launch --cpu --num_processes N` starts a single process (accelerate's multi-CPU "
            "launcher needs MPI and --mpirun_hostfile), so N processes were asked for but one runs. For data "
            "parallel training on CPU use `accelerate launch --multi_gpu --num_processes N -m gsil_bench.harness.cli ...` "
            "or `torchrun --nproc_per_node N -m gsil_bench.harness.cli ...` (without CUDA they form one gloo group)."
        )
    if world != acc.num_processes:
        raise GsilError(f"launched as {world} processes (WORLD_SIZE) but accelerate sees {acc.num_processes}: "
                           "the processes would train independently and overwrite each other's files")
    enable_cpu_fsdp(acc)  # an FSDP launch on CPU shards too (accelerate would fall back to DDP)
    return acc


def _cpu_launch_without_processes() -> bool:
    """accelerate's simple launcher with --cpu and --num_processes > 1 sets MASTER_ADDR and
    ACCELERATE_USE_CPU but starts one process with no WORLD_SIZE: detect that request."""
    env = os.environ
    return (env.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1") and "MASTER_ADDR" in env
            and "WORLD_SIZE" not in env)


def precision_of(cfg: ExperimentConfig) -> str:
    """The training precision the loop runs `cfg` at on this machine: fp16, bf16, bf16-weights or fp32."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.shared.train.precision in ("fp16", "bf16-weights"):
        return cfg.shared.train.precision  # fp16: autocast + loss scaling (accelerate's GradScaler); checks.py requires CUDA
    return "bf16" if pick_dtype(cfg.shared.train.precision, device) == torch.bfloat16 else "fp32"


def build_context(cfg: ExperimentConfig, method_label: str, seed: int, run_dir: Path,
                  data_dir: str | None) -> tuple[Any, dict[str, str]]:
    """Load data and tokenizer once for every iteration; returns (MethodContext, data files)."""

    method, s = cfg.method(method_label), cfg.shared
    root = resolve_data_dir(data_dir, s.data_dir)
    key, data_cfg = training_data(cfg, method_label)
    preference = data_cfg if key == "preference_data" else None
    files = {key: data_file(data_cfg, root)}
    examples = load_examples(data_cfg, root)
    tokenizer = load_tokenizer(s.model, s.model_revision)
    if data_cfg.decontaminate == "humaneval":  # alignment-handbook scripts/run_dpo.py:116-123
        examples = decontaminate(examples, tokenizer, root)
        files["decontaminate"] = root / HUMANEVAL_FILE if root is not None else None
    lengths = {"max_prompt_length": s.train.max_prompt_length, "max_length": s.train.max_length}
    real = encode_all(data_cfg.encoding, tokenizer, examples, **lengths)
    rejected = None
    if preference is not None:
        for ex in examples:
            if ex.rejected is None:
                raise ConfigError(f"{ex.source}: shared.preference_data rows need a rejected response "
                                  f"(format 'preference')")
        rejected = encode_all(data_cfg.encoding, tokenizer, [replace(ex, response=ex.rejected) for ex in examples
                                               if ex.rejected is not None], **lengths)
    precision = precision_of(cfg)
    ctx = MethodContext(cfg, method, build_loss(method.loss, method.params), seed, Path(run_dir), tokenizer,
                        make_accelerator(precision), examples, real, rejected, precision, data_cfg.encoding)
    return ctx, {k: str(v) for k, v in files.items() if v is not None}


def _finished(folder: Path, key: str) -> bool:
    """DONE with the same training key (or a complete checkpoint + summary: mark it DONE)."""
    if is_done(folder):
        done_key = (read_json(folder / "DONE") or {}).get("key")
        if done_key not in (None, key):
            raise ConfigError(f"{folder} was trained with another configuration (key {done_key}, now {key}); "
                              f"use another --output or delete that folder")
        return True
    summary = folder / "summary.json"
    if summary.is_file() and (folder / "checkpoint" / "config.json").is_file():
        if read_json(summary).get("train_key") == key:
            # killed between the checkpoint and DONE: the resumable state (weights + optimizer
            # moments, several times the model's size) is no longer needed
            for leftover in folder.glob("state*"):
                shutil.rmtree(leftover, ignore_errors=True)
            mark_done(folder, {"key": key})
            return True
    return False


def train_method(cfg: ExperimentConfig, method_label: str, seed: int, run_dir: Path, *,
                 data_dir: str | None = None) -> list[IterationResult]:
    """Train every iteration of `method_label` with `seed` under `run_dir`; idempotent."""
    import time


    base_hash = shared_hash(cfg)  # the experiment's shared block; the method's overrides are recorded beside it
    overrides = dict(cfg.method(method_label).overrides)
    cfg = for_method(cfg, method_label)
    started = time.time()
    layout = RunLayout(run_dir)
    key = train_key(cfg, method_label, seed)
    n_iter = iteration_plan(cfg, method_label)
    folders = [layout.iter_dir(method_label, seed, k) for k in range(1, n_iter + 1)]
    results = [IterationResult(k, f / "checkpoint", f) for k, f in enumerate(folders, 1)]
    if all(_finished(f, key) for f in folders):
        return results
    ctx, files = build_context(cfg, method_label, seed, Path(run_dir), data_dir)
    acc = ctx.accelerator
    if acc.is_main_process:
        atomic_write_json(layout.seed_dir(method_label, seed) / "provenance.json", collect(cfg, seed=seed, data_files=files, started=started)
                          | {"method": method_label, "train_key": key, "shared_hash": base_hash,
                             "overrides": overrides})
    tracking = open_tracking(cfg.shared.train.report_to, Path(run_dir), cfg.name, method_label, seed,
                             to_plain(cfg.shared) | {"method": to_plain(cfg.method(method_label))}) \
        if acc.is_main_process else None
    reference, offset = cfg.shared.model, 0
    heldout = encode_heldout(cfg, ctx.tokenizer, resolve_data_dir(data_dir, cfg.shared.data_dir))
    try:
        for k, folder in enumerate(folders, 1):
            if not _finished(folder, key):
                if acc.is_main_process:
                    folder.mkdir(parents=True, exist_ok=True)
                acc.wait_for_everyone()
                it_cfg, it_method = iteration_config(cfg, method_label, k)
                it_ctx = replace(ctx, cfg=it_cfg, method=it_method,  # per-iteration params: the loss bound again
                                 loss=build_loss(it_method.loss, it_method.params))
                inputs = prepare_inputs(it_ctx, k, reference, folder)
                extra = {"generated_tokens": inputs.generated_tokens, "inputs_hash": inputs.inputs_hash,
                         "shared_hash": base_hash, "overrides": overrides, "reference": reference,
                         "lr": it_cfg.shared.optimizer.lr, "epochs": it_cfg.shared.train.epochs,
                         "pairs": len(inputs.items)}
                train_iteration(LoopRun(it_ctx, k, folder, reference, inputs.items, inputs.ref, key, extra,
                                        tracking, offset, heldout))
            offset += int(read_json(folder / "summary.json").get("steps", 0))
            reference = str(folder / "checkpoint")
    finally:
        if tracking is not None:
            tracking.finish()
    return results
