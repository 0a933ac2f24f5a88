"""The shipped loop in the training benchmark: `trainers.loop.train_iteration`, the function
the runner calls, on the same pairs, batch, limits and learning rate as the other contestants.

Unlike the `gsil`/`padded` contestants (a stand-in step written in the benchmark: weights in
the benchmark dtype, plain AdamW), this is what users run: fp32 weights with bf16 autocast
through accelerate where the precision resolves to bf16, the configured optimizer, schedule,
clipping, metrics.jsonl logging and the final checkpoint, with `train.packing` as configured.
Reference log-probs are computed first by `trainers.reference.sequences_logps` (untimed, as
every contestant precomputes them). Step ends come from a global optimizer step hook, so the
loop runs unmodified; the pairs are placed so that the loop's seeded data order gives step s
exactly the pairs the other contestants see at step s.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import common


def _config(spec: dict[str, Any], model_dir: Path, n: int) -> Path:
    path = model_dir.parent / f"loop-{spec['shape']}.yaml"
    path.write_text(f"""name: bench-loop
shared:
  model: {model_dir}
  train_data: {{path: gsm8k/train.jsonl, format: gsm8k, limit: {n}}}
  optimizer: {{name: {spec.get('optimizer', 'adamw')}, lr: {spec['lr']}, weight_decay: 0.0, max_grad_norm: 1.0}}
  schedule: {{name: constant, warmup_ratio: 0.0}}
  train:
    batch_size: {spec['batch']}
    max_length: {spec['max_length']}
    max_prompt_length: {spec['max_prompt_length']}
    packing: {str(spec['packed']).lower()}
    logprob_chunk: {spec.get('loop_chunk', 128)}
    precision: auto
    save_every: 1000000
    log_every: 1
methods:
  - loss: {spec['method']}
""")
    return path


def loop_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time `train_iteration` over warm-up + timed steps; peak memory over the timed steps."""
    from gsil_bench.core.loading import load_experiment
    from gsil_bench.trainers.api import make_accelerator, precision_of
    from gsil_bench.trainers.data import EncodedSeq, TrainItem
    from gsil_bench.trainers.inputs import MethodContext
    from gsil_bench.trainers.loop import LoopRun, epoch_order, train_iteration
    from gsil_bench.trainers.losses import build_loss
    from gsil_bench.trainers.reference import RefLogps, load_causal_lm, reference_logps

    device = torch.device(spec["device"])
    work = Path(spec["pairs"]).parent
    tok = common.load_tokenizer()
    model_dir = work / f"model-{spec['shape']}"
    if not (model_dir / "config.json").is_file():  # the same random weights as the other contestants
        common.build_model(spec["shape"], tok, device, getattr(torch, spec["dtype"]), seed=0).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    pairs = json.loads(Path(spec["pairs"]).read_text())["pairs"]
    total = spec["warmup"] + spec["steps"]
    pairs = pairs[: spec["batch"] * total]
    cfg = load_experiment(_config(spec, model_dir, len(pairs)))
    precision = precision_of(cfg)
    method = cfg.method(spec["method"])
    acc = make_accelerator(precision)
    ctx = MethodContext(cfg, method, build_loss(method.loss, method.params), 0, work, tok, acc, [], [], None, precision)
    # item order[k] = pair k, so that step s trains on pairs s*batch .. (s+1)*batch-1
    order = epoch_order(len(pairs), 0, 1, 0)
    slots: list[dict[str, Any]] = [{}] * len(pairs)
    for k, i in enumerate(order):
        slots[i] = pairs[k]
    items = [TrainItem(i, EncodedSeq(p["real"], p["real_start"]), EncodedSeq(p["gen"], p["gen_start"]))
             for i, p in enumerate(slots)]
    ref_model = load_causal_lm(str(model_dir), revision=None, device=acc.device)
    ref = RefLogps(*reference_logps(ref_model, items, batch_size=spec["batch"], chunk=128,
                                    pad_id=tok.pad_token_id, autocast=acc.autocast))  # as trainers.inputs
    del ref_model
    ends: list[float] = []

    def on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        common.sync(device)
        ends.append(time.perf_counter())
        if len(ends) == spec["warmup"]:
            common.reset_peak(device)

    folder = work / f"loop-{spec['shape']}-{spec['method']}-{'packed' if spec['packed'] else 'padded'}"
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(on_step)
    try:
        summary = train_iteration(LoopRun(ctx, 1, folder, str(model_dir), items, ref, "bench", {}))
    finally:
        handle.remove()
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    from benchmarks.training import step_times

    return {"step_s": step_times(ends, spec["warmup"]), "peak_gib": common.peak_memory_gib(device),
            "loss_first": metrics[0]["loss"], "loss_last": metrics[-1]["loss"], "steps_run": summary["steps"],
            "precision": precision, "optimizer": cfg.shared.optimizer.name, "packing": spec["packed"],
            "step_impl": "gsil_bench.trainers.loop.train_iteration (the shipped loop)"}
