"""The one training loop: every method (SFT, DPO, SPIN, every GSIL member) runs through
`train_iteration`; the loss is the only difference (`ctx.loss`, built once per method).

One call trains one iteration of one method × seed, on `accelerate` (data parallel when
launched with several processes), reading top to bottom:

1. plan: global batch = batch_size × grad_accum × processes; optimizer steps per epoch
   = ceil(examples / global batch) (the last step wraps around to the start of the
   epoch's order); total = steps × epochs, capped by train.max_steps. The data order is a
   permutation seeded by (seed, iteration, epoch).
2. model: the policy (fp32 weights; bf16 autocast where `precision` resolves to bf16; bf16
   weights and compute with an fp32 master copy under `bf16-weights`, `trainers.precision`),
   optional gradient checkpointing and LoRA; AdamW or RMSprop (`OPTIMIZERS`), linear,
   cosine or constant schedule with warm-up (`SCHEDULES`).
3. resume: `iter-<k>/state/` (saved every train.save_every steps) restores weights,
   optimizer, scheduler, RNG and counters; metrics.jsonl is cut back to that step.
4. steps: per micro-batch one forward of the real (+ generated) sequences through
   `trainers.logprobs.batch_logps`, the loss on per-sequence log-probs and the cached
   reference log-probs, backward (gradients synchronised on the last micro-batch only;
   SFT's token mean is over the whole step's tokens, so any split of the global batch into
   micro-batches and processes trains alike);
   clip, step, log one metrics.jsonl line per optimizer step.
5. finish: Hugging Face checkpoint (LoRA merged), summary.json, DONE (written last).
Under FSDP (`trainers.sharding`) the state and the checkpoint are gathered from the shards.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gsil_bench.core.config import TrainConfig
from gsil_bench.core.io import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    hash_obj,
    mark_done,
    read_jsonl,
    recover_path,
)
from gsil_bench.core.progress import Progress
from gsil_bench.core.registry import Registry
from gsil_bench.core.strict import ConfigError
from gsil_bench.trainers.data import COLLATORS, Batch, TrainItem
from gsil_bench.trainers.handoff import offer_trained
from gsil_bench.trainers.heldout import heldout_nll
from gsil_bench.trainers.inputs import MethodContext
from gsil_bench.trainers.logprobs import LogpsModule, batch_logps
from gsil_bench.trainers.losses import LossInputs
from gsil_bench.trainers.precision import MasterCopy, fsdp_master_policy, master_copy
from gsil_bench.trainers.publish import write_model_card
from gsil_bench.trainers.reference import RefLogps, load_causal_lm, weights_dtype
from gsil_bench.trainers.sharding import check_sharding, full_model, is_sharded, load_sharded_state, save_sharded_state
from gsil_bench.trainers.state import kill_hook, load_state, rng_state, save_checkpoint, save_state

log = logging.getLogger(__name__)

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.add("adamw", lambda params, c: torch.optim.AdamW(
    params, lr=c.lr, betas=(c.betas[0], c.betas[1]), eps=c.eps, weight_decay=c.weight_decay))
OPTIMIZERS.add("rmsprop", lambda params, c: torch.optim.RMSprop(
    params, lr=c.lr, alpha=c.alpha, eps=c.eps, weight_decay=c.weight_decay))

# learning-rate multiplier at optimizer step s (0-based) given warm-up and total steps (as transformers' schedules)
SCHEDULES: Registry[Callable[[int, int, int], float]] = Registry("schedule")
SCHEDULES.add("linear", lambda s, w, n: s / max(1, w) if s < w else max(0.0, (n - s) / max(1, n - w)))
SCHEDULES.add("cosine", lambda s, w, n: s / max(1, w) if s < w else 0.5 * (1 + math.cos(math.pi * (s - w) / max(1, n - w))))
SCHEDULES.add("constant", lambda s, w, n: s / max(1, w) if s < w else 1.0)


def warmup_steps(schedule: Any, total: int) -> int:
    """Warm-up optimizer steps: schedule.warmup_steps when set, else ceil(warmup_ratio x total), as
    transformers v4.39.1 (GSIL's requirements.txt) TrainingArguments.get_warmup_steps does
    (`self.warmup_steps if self.warmup_steps > 0 else math.ceil(num_training_steps * self.warmup_ratio)`);
    GSIL scripts/finetune.sh:53-54 passes both --warmup_steps 30 and --warmup_ratio 0.1, so 30 wins."""
    if schedule.warmup_steps:
        return int(schedule.warmup_steps)
    return math.ceil(schedule.warmup_ratio * total)


@dataclass
class LoopRun:
    """Everything one iteration's loop needs (assembled by trainers.api)."""

    ctx: MethodContext
    iteration: int
    folder: Path  # <run_dir>/<method>/seed-<s>/iter-<k>
    init_model: str  # what the policy starts from: the starting model or the previous checkpoint
    items: list[TrainItem]
    ref: RefLogps | None
    key: str  # training-configuration hash; a saved state with another key is not resumed
    summary: dict[str, Any]  # extra summary fields (generated_tokens, hashes, ...)
    tracking: Any = None  # core.tracking.Tracking of this method x seed (train.report_to), or None
    step_offset: int = 0  # optimizer steps of the earlier iterations (trackers get one global step axis)
    heldout: list[Any] | None = None  # encoded held-out slice (train.eval_every), or None


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, iteration: int, epoch: int) -> tuple[int, ...]:
    """The data order of one epoch: a permutation seeded by (seed, iteration, epoch)."""
    g = torch.Generator().manual_seed(int(hash_obj(["order", seed, iteration, epoch]), 16) % (2**63))
    return tuple(torch.randperm(n, generator=g).tolist())


def step_indices(n: int, per_step: int, seed: int, iteration: int, step: int, steps_per_epoch: int) -> list[int]:
    """Example indices of optimizer step `step` (0-based); the last step of an epoch wraps around."""
    epoch, pos = divmod(step, steps_per_epoch)
    order = epoch_order(n, seed, iteration, epoch)
    return [order[(pos * per_step + j) % n] for j in range(per_step)]


def enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing of the decoder layers (any transformers version)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_policy(name: str, ctx: Any, device: Any = None) -> Any:
    """The trainable policy: fp32 weights (bf16 with precision bf16-weights), optional gradient checkpointing and LoRA."""
    t = ctx.cfg.shared.train
    revision = ctx.cfg.shared.model_revision if name == ctx.cfg.shared.model else None
    model = load_causal_lm(name, revision=revision, device=ctx.accelerator.device if device is None else device,
                           dtype=weights_dtype(ctx.precision), private=True)
    model.config.use_cache = False
    if t.gradient_checkpointing:
        enable_checkpointing(model)
    if t.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                          target_modules=list(t.lora.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    model.train()
    return model


def forward_loss(run: LoopRun, model: Any, items: list[TrainItem], device: Any,
                 token_share: float | None = None) -> tuple[Any, int]:
    """One micro-batch: per-sequence log-probs of real (+ generated) in one forward, then the loss
    (`token_share`: see `LossInputs.token_share`)."""
    ctx, t = run.ctx, run.ctx.cfg.shared.train
    pairs = run.ref is not None
    seqs = [it.real for it in items] + ([it.gen for it in items if it.gen is not None] if pairs else [])
    collator = COLLATORS.get(("packed-shared" if t.share_prompts else "packed") if t.packing else "padded")
    batch: Batch = collator(seqs, ctx.tokenizer.pad_token_id).to(device)
    logps, n_tokens = batch_logps(model, batch, t.logprob_chunk)
    b = len(items)
    inputs = LossInputs(logps[:b].float(), real_tokens=n_tokens[:b], token_share=token_share)
    if run.ref is not None:
        ref_real, ref_gen = run.ref.take([it.index for it in items])
        inputs = LossInputs(logps[:b].float(), ref_real.to(device), logps[b:].float(),
                            None if ref_gen is None else ref_gen.to(device), n_tokens[:b], token_share)
    return ctx.loss(inputs), batch.tokens


@dataclass(frozen=True)
class StepPlan:
    """1. How one iteration is cut into optimizer steps: the one plan, which `run --dry-run` prints
    (trainers.api.planned_steps) and the loop follows (`step_plan`)."""

    n: int  # examples
    per_device: int  # micro-batch size
    per_step: int  # global batch: per_device x grad_accum x processes
    steps_per_epoch: int
    total: int  # optimizer steps of the iteration

    @classmethod
    def of(cls, n: int, train: TrainConfig, processes: int) -> StepPlan:
        """`n` examples, the iteration's train settings, the launch's processes."""
        per_step = train.batch_size * train.grad_accum * processes
        steps_per_epoch = math.ceil(n / per_step)
        total = steps_per_epoch * train.epochs
        return cls(n, train.batch_size, per_step, steps_per_epoch,
                   total if train.max_steps is None else min(train.max_steps, total))


@dataclass
class Trainable:
    """2. The policy as the loop drives it, with its optimizer and schedule."""

    model: Any  # the unwrapped policy (what a checkpoint saves)
    wrapped: Any  # LogpsModule(model), prepared by accelerate (DDP or FSDP)
    optimizer: Any
    scheduler: Any
    params: list[Any]  # what the optimizer steps and the loop clips: the trainable parameters (FSDP: their
    #                    shards), or their fp32 master copies (`master`)
    sharded: bool
    master: MasterCopy | None = None  # bf16-weights without sharding: fp32 copies of the bf16 weights


def step_plan(run: LoopRun) -> StepPlan:
    return StepPlan.of(len(run.items), run.ctx.cfg.shared.train, run.ctx.accelerator.num_processes)


def prepare(run: LoopRun, plan: StepPlan) -> Trainable:
    """The policy (seeded), its optimizer and warm-up schedule, prepared by accelerate."""
    from accelerate.utils import set_seed

    ctx, acc, opt = run.ctx, run.ctx.accelerator, run.ctx.cfg.shared.optimizer
    sharded = is_sharded(acc)
    if sharded:
        check_sharding(acc)
    set_seed(int(hash_obj(["init", ctx.seed, run.iteration]), 16) % (2**31))
    model = load_policy(run.init_model, ctx)
    if sharded:
        fsdp_master_policy(acc, model, ctx.precision)  # bf16-weights: fp32 shards, bf16 compute
    master = master_copy(model, ctx.precision, sharded)  # bf16-weights: fp32 copies the optimizer steps
    stepped = master.params if master is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS.get(opt.name)(stepped, opt)
    warmup = warmup_steps(ctx.cfg.shared.schedule, plan.total)
    schedule = SCHEDULES.get(ctx.cfg.shared.schedule.name)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s, warmup, plan.total))
    wrapped, optimizer = acc.prepare(LogpsModule(model, ctx.cfg.shared.train.logprob_chunk), optimizer)
    params = master.params if master is not None else [p for p in wrapped.parameters() if p.requires_grad]
    return Trainable(model, wrapped, optimizer, scheduler, params, sharded, master)  # FSDP: params are shards


def resume(run: LoopRun, tr: Trainable, plan: StepPlan) -> dict[str, Any]:
    """3. The saved state of an interrupted iteration, if any (metrics.jsonl cut back to it)."""
    acc, state_dir, metrics_file = run.ctx.accelerator, run.folder / "state", run.folder / "metrics.jsonl"
    recover_path(state_dir)
    info: dict[str, Any] = {"step": 0, "tokens": 0, "wall_time_s": 0.0}
    if (state_dir / "info.json").is_file():
        info = (load_sharded_state(state_dir, acc, wrapped=tr.wrapped, optimizer=tr.optimizer, scheduler=tr.scheduler)
                if tr.sharded else load_state(state_dir, model=tr.model, optimizer=tr.optimizer,
                                              scheduler=tr.scheduler, process_index=acc.process_index,
                                              master=tr.master))
        if (info.get("key"), info.get("global_batch"), info.get("total")) != (run.key, plan.per_step, plan.total):
            raise ConfigError(f"{state_dir}: saved by a run with another configuration or number of processes "
                              f"(global batch {info.get('global_batch')} vs {plan.per_step}); delete {run.folder} "
                              "to restart")
        log.info("resuming %s from step %d/%d", run.folder, info["step"], plan.total)
    if acc.is_main_process:
        kept = [r for r in read_jsonl(metrics_file, repair=True) if r["step"] <= info["step"]]
        atomic_write_text(metrics_file, "".join(_line(r) for r in kept))
    return info


def optimizer_step(run: LoopRun, tr: Trainable, plan: StepPlan, step: int, info: dict[str, Any]) -> dict[str, Any]:
    """4. One optimizer step over the global batch's micro-batches; returns its metrics record."""
    ctx, acc, t = run.ctx, run.ctx.accelerator, run.ctx.cfg.shared.train
    max_norm = ctx.cfg.shared.optimizer.max_grad_norm
    indices = step_indices(plan.n, plan.per_step, ctx.seed, run.iteration, step, plan.steps_per_epoch)
    sums: dict[str, float] = defaultdict(float)
    tokens = 0  # every process sees the step's global indices: its token count needs no communication
    share = sum(run.items[i].real.n_response for i in indices) / (t.grad_accum * acc.num_processes)
    for micro in range(t.grad_accum):
        at = (micro * acc.num_processes + acc.process_index) * plan.per_device
        items = [run.items[i] for i in indices[at : at + plan.per_device]]
        sync = contextlib.nullcontext() if micro == t.grad_accum - 1 else acc.no_sync(tr.wrapped)
        with sync:
            out, used = forward_loss(run, tr.wrapped, items, acc.device, share)
            acc.backward(out.loss / t.grad_accum)
        tokens += used
        for k, v in {"loss": out.loss, **out.metrics}.items():
            sums[k] += float(v.detach()) / t.grad_accum
    if tr.master is not None:
        tr.master.grads_to_master()  # bf16 gradients (synchronised) to the fp32 copies: clip and step there
    grad_norm = acc.clip_grad_norm_(tr.params, max_norm if max_norm else math.inf)
    lr = tr.scheduler.get_last_lr()[0]
    tr.optimizer.step()
    if tr.master is not None:
        tr.master.write_back()
    tr.scheduler.step()
    tr.optimizer.zero_grad(set_to_none=True)
    means = acc.reduce(torch.tensor(list(sums.values()), device=acc.device), reduction="mean")
    info["tokens"] += int(acc.reduce(torch.tensor(tokens, device=acc.device), reduction="sum"))
    info["step"] = step + 1
    record = {"step": step + 1, "epoch": round((step + 1) / plan.steps_per_epoch, 4), "lr": lr,
              "grad_norm": float(grad_norm), "tokens": info["tokens"], **dict(zip(sums, means.tolist()))}
    if run.heldout and ((step + 1) % (t.eval_every or plan.total) == 0 or step + 1 == plan.total):
        record["eval/nll"] = heldout_nll(tr.wrapped, run.heldout, batch_size=plan.per_device, chunk=t.logprob_chunk,
                                         pad_id=ctx.tokenizer.pad_token_id, device=acc.device)
    return record


def save_progress(run: LoopRun, tr: Trainable, plan: StepPlan, info: dict[str, Any], started: float) -> None:
    """The resumable state after a step (train.save_every): weights, optimizer, schedule, RNG, counters."""
    from accelerate.utils import gather_object

    acc, state_dir = run.ctx.accelerator, run.folder / "state"
    info.update(key=run.key, global_batch=plan.per_step, total=plan.total, wall_time_s=time.time() - started)
    rngs = gather_object([rng_state()])
    if tr.sharded:
        save_sharded_state(state_dir, acc, wrapped=tr.wrapped, optimizer=tr.optimizer, scheduler=tr.scheduler,
                           rng=rngs, info=info)
    elif acc.is_main_process:
        save_state(state_dir, model=acc.unwrap_model(tr.wrapped).model, optimizer=tr.optimizer,
                   scheduler=tr.scheduler, rng=rngs, info=info,
                   weights=tr.master.weights() if tr.master is not None else None)


def train_iteration(run: LoopRun) -> dict[str, Any]:
    """Train one iteration (resuming from its last saved state); returns its summary."""
    ctx, acc, t = run.ctx, run.ctx.accelerator, run.ctx.cfg.shared.train
    plan = step_plan(run)  # 1. plan
    tr = prepare(run, plan)  # 2. model, optimizer, schedule
    info = resume(run, tr, plan)  # 3. resume
    # 4. optimizer steps
    log.info("%s iteration %d: %d examples, global batch %d (%d x %d accumulation x %d processes), %d steps",
             ctx.method.label, run.iteration, plan.n, plan.per_step, plan.per_device, t.grad_accum,
             acc.num_processes, plan.total)
    started = time.time() - info["wall_time_s"]
    bar = Progress(plan.total, f"{ctx.method.label} iter {run.iteration}", initial=info["step"], unit="step")
    record: dict[str, Any] = {}
    for step in range(info["step"], plan.total):
        record = optimizer_step(run, tr, plan, step, info)
        if acc.is_main_process and ((step + 1) % t.log_every == 0 or step + 1 == plan.total or "eval/nll" in record):
            append_jsonl(run.folder / "metrics.jsonl", [record])
            log_step(run, record, plan.total, bar.to_log)
        bar.set_postfix(loss=f"{record['loss']:.4f}")  # before update: the line update may log shows this step's loss
        bar.update(1)
        if (step + 1) % t.save_every == 0 and step + 1 < plan.total:
            save_progress(run, tr, plan, info, started)
        kill_hook("step", step + 1, run.iteration)
    bar.close()
    log.info("%s iteration %d: trained %d steps, %d tokens", ctx.method.label, run.iteration, plan.total,
             info["tokens"])
    # 5. checkpoint, summary, DONE
    info["wall_time_s"] = time.time() - started
    final = (full_model(acc, tr.wrapped, lambda: load_policy(run.init_model, ctx, device="cpu")) if tr.sharded
             else acc.unwrap_model(tr.wrapped).model)
    summary = finish(run, final, plan.total, info, record)
    # accelerate keeps every model it prepared: the next iteration's clipping (FSDP2) would compare its shards with
    # this one's, and this iteration's model and optimizer state would stay in memory
    acc.free_memory()
    return summary


def finish(run: LoopRun, model: Any, total: int, info: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """Write the checkpoint and summary.json, drop the resumable state, then DONE (last)."""
    ctx, acc = run.ctx, run.ctx.accelerator
    if not last and (run.folder / "metrics.jsonl").is_file():  # resumed at the very end
        last = (read_jsonl(run.folder / "metrics.jsonl") or [{}])[-1]
    summary = {
        "method": ctx.method.label, "loss": ctx.method.loss, "params": dict(ctx.method.params),
        "seed": ctx.seed, "iteration": run.iteration, "steps": total, "train_tokens": info["tokens"],
        "wall_time_s": round(info["wall_time_s"], 3), "init_model": run.init_model, "examples": len(run.items),
        "processes": acc.num_processes, "precision": ctx.precision, "train_key": run.key, "final": last,
        **run.summary,
    }
    acc.wait_for_everyone()
    if acc.is_main_process:
        t = ctx.cfg.shared.train
        saved = save_checkpoint(model, ctx.tokenizer, run.folder / "checkpoint", {k: summary[k] for k in (
            "method", "loss", "params", "seed", "iteration", "steps", "init_model")},
            adapter=t.lora is not None and t.lora.save_adapter,
            dtype=torch.bfloat16 if t.checkpoint_dtype == "bf16" else None)
        write_model_card(run.folder / "checkpoint", summary, ctx.cfg)
        atomic_write_json(run.folder / "summary.json", summary)
        kill_hook("finished", run.iteration)
        shutil.rmtree(run.folder / "state", ignore_errors=True)
        mark_done(run.folder, {"key": run.key})
        offer_trained(run.folder / "checkpoint", saved, processes=acc.num_processes, lora=t.lora is not None,
                      checkpointing=t.gradient_checkpointing)  # the next iteration and the evaluation read it here
    acc.wait_for_everyone()
    return summary


def log_step(run: LoopRun, record: dict[str, Any], total: int, to_log: bool) -> None:
    """A logged step: to the trackers (`train/<key>`, global step), and as one log line
    when the progress bar is not drawn (a log file)."""
    if run.tracking is not None:
        run.tracking.log({(k if k.startswith("eval/") else f"train/{k}"): v for k, v in record.items() if k != "step"},
                         run.step_offset + record["step"])
    if to_log:
        extra = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k.startswith("rewards/"))
        log.info("%s iter %d step %d/%d: loss=%.4f lr=%.3g grad_norm=%.4g tokens=%d %s", run.ctx.method.label,
                 run.iteration, record["step"], total, record["loss"], record["lr"], record["grad_norm"],
                 record["tokens"], extra + (f" eval/nll={record['eval/nll']:.4f}" if "eval/nll" in record else ""))


def _line(rec: dict[str, Any]) -> str:
    import json

    return json.dumps(rec) + "\n"
