"""What a plan will cost before it runs (`gsil-bench run CONFIG --dry-run`): for each step the model
FLOPs and the time, the peak memory per device, and the disk the run writes.

The model's shape comes from its config.json (a local folder, the converted embedded model, the
Hugging Face cache), else from KNOWN (the paper configs' starting models, from their published
config.json). FLOPs (Kaplan et al. 2020; the PaLM paper's MFU): a forward pass is 2 N per token
(N parameters, embeddings left out), a training step 6 N per token (forward and backward). A
training step processes `global batch` sequences, two per pair for a pairwise loss (the real and
the generated response), each of its mean length in the data (characters / 3.6, capped at
max_length; a generated response at max_new_tokens). Reference log-probs are one forward pass of
every sequence per iteration; a self-play generation decodes a response as long as the demonstrations
(at most max_new_tokens) per example, each decode step costing the larger of its FLOPs and reading the
weights once (decoding is memory-bound); an evaluation decodes eval.generation.max_new_tokens per item
and scores the policy on the real and generated responses (the reference's log-probs are cached).

Time: on this machine (CPU), from a measured throughput: a matmul of the model's width and the
memory bandwidth, measured in well under a second with the torch threads this process will use,
and an achieved fraction of that throughput (CPU_EFFICIENCY, measured against the main job), plus
the time to load the model in every step. On a GPU (`--gpu NAME` below; the paper configs), the
named GPU's dense bf16 peak at GPU_MFU. Peak memory per device: weights, gradients and AdamW's two
fp32 moments (under bf16-weights an fp32 master copy too: beside the bf16 weights on one device or data
parallel, as the fp32 shards themselves under FSDP2, trainers/precision.py), sharded over the
processes for FSDP / ZeRO-3, the frozen reference model for a pairwise loss, and the activations of
one micro-batch (Korthikanti et al. 2022: 34 s b h bytes per layer in 16-bit, without recompute).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsil_bench.core.config import ExperimentConfig
from gsil_bench.core.errors import GsilError
from gsil_bench.core.models import cache_root
from gsil_bench.harness.plan import Step
from gsil_bench.harness.retention import disk_plan
from gsil_bench.tasks.api import TASKS
from gsil_bench.trainers.api import iteration_plan
from gsil_bench.trainers.losses import LOSSES

CHARS_PER_TOKEN = 3.6  # English text and code under a Llama/Mistral-style BPE (tokenizers' usual ~3.5-4)
CPU_EFFICIENCY = 0.5  # achieved / measured matmul throughput of a training step on CPU (the main job: docs)
GPU_MFU = 0.40  # model FLOPs utilisation assumed on a GPU (bf16, FSDP/ZeRO-3)
GPUS = {"H100": 989e12, "A100": 312e12, "H200": 989e12, "L40S": 362e12}  # dense bf16 peak FLOP/s
# the paper configs' starting models (config.json of alignment-handbook/zephyr-7b-sft-full: Mistral-7B)
KNOWN: dict[str, dict[str, Any]] = {
    "alignment-handbook/zephyr-7b-sft-full": {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000,
                                              "intermediate_size": 14336, "num_attention_heads": 32,
                                              "num_key_value_heads": 8, "tie_word_embeddings": False},
}


# the paper configs' training sets (rows, as their dataset cards count them), for a dry run without them at hand
KNOWN_DATA: dict[str, int] = {"hf:HuggingFaceH4/ultrafeedback_binarized:train_prefs": 61135,
                              "hf:UCLA-AGI/SPIN_iter0:train": 49792}


@dataclass(frozen=True)
class Stand:
    """A training example known only by count: its length is taken at max_length (an upper bound)."""

    prompt: str
    response: str


def known_examples(cfg: ExperimentConfig, why: str) -> list[Any]:
    """Stand-ins for a training set not at hand (KNOWN_DATA's count, at most train_data.limit), each as long
    as max_length allows: the plan's steps are exact, its cost an upper bound. Unknown: the error stands."""
    data = cfg.shared.train_data
    if data.path not in KNOWN_DATA:
        raise GsilError(why)
    n = KNOWN_DATA[data.path] if data.limit is None else min(data.limit, KNOWN_DATA[data.path])
    half = "x" * int(cfg.shared.train.max_length * CHARS_PER_TOKEN / 2)
    return [Stand(half, half)] * n


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model: parameters (total, and without embeddings), width, depth."""

    params: int
    body: int  # parameters that do FLOPs per token (embeddings and lm head left out)
    hidden: int
    layers: int
    source: str


def shape_of(cfg: dict[str, Any], source: str) -> Shape:
    """Parameter count of a Llama/Mistral-style decoder from its config.json."""
    h, layers, vocab = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["vocab_size"])
    heads = int(cfg.get("num_attention_heads") or 1)
    head_dim = int(cfg.get("head_dim") or h // heads)
    kv = int(cfg.get("num_key_value_heads") or heads) * head_dim
    inter = int(cfg.get("intermediate_size") or 4 * h)
    per_layer = h * heads * head_dim + 2 * h * kv + heads * head_dim * h + 3 * h * inter + 2 * h
    body = layers * per_layer + h
    emb = vocab * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return Shape(body + emb, body + vocab * h, h, layers, source)  # the lm head does FLOPs per token


def model_shape(name: str, revision: str | None = None) -> Shape | None:
    """The model's shape without loading it (None when its config.json is nowhere at hand)."""
    path = Path(name).expanduser()
    candidates = [path / "config.json"]
    if name.startswith("embedded:"):
        candidates.append(cache_root() / "models" / name.removeprefix("embedded:") / "config.json")
    for c in candidates:
        if c.is_file():
            return shape_of(json.loads(c.read_text()), str(c))
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=revision or None)
        if isinstance(cached, str):
            return shape_of(json.loads(Path(cached).read_text()), cached)
    except Exception:  # noqa: BLE001 - not a Hub id: no cache to look in
        pass
    if name in KNOWN:
        return shape_of(KNOWN[name], f"{name} (its published config.json)")
    return None


@dataclass(frozen=True)
class Machine:
    """Measured here: matmul FLOP/s at the model's width and memory bandwidth (bytes/s), or a named GPU."""

    flops: float
    bandwidth: float
    label: str


def measure(hidden: int, seconds: float = 0.3) -> Machine:
    """A (512 x h) @ (h x 4h) fp32 matmul and a 64 MiB copy, repeated for about `seconds` of this process's
    CPU time each, divided by the threads: the machine's throughput when the run has it to itself (other
    jobs sharing the cores slow a run down; they do not change what it costs)."""
    import torch

    threads = torch.get_num_threads()
    a, b = torch.randn(512, hidden), torch.randn(hidden, 4 * hidden)
    torch.mm(a, b)
    n, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        torch.mm(a, b)
        n += 1
    flops = n * 2 * 512 * hidden * 4 * hidden / (time.process_time() - start) * threads
    src = torch.empty(16 * 2**20)
    dst = torch.empty_like(src)
    m, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        dst.copy_(src)
        m += 1
    bandwidth = m * 2 * src.numel() * 4 / (time.process_time() - start) * threads
    return Machine(flops * CPU_EFFICIENCY, bandwidth,
                   f"this machine, {torch.get_num_threads()} torch thread(s): matmul {flops / 1e9:.1f} GFLOP/s measured "
                   f"x {CPU_EFFICIENCY:g} achieved, memory {bandwidth / 1e9:.1f} GB/s")


def gpu(name: str) -> Machine:
    peak = GPUS[name]
    return Machine(peak * GPU_MFU, 3.35e12, f"one {name} per process at {GPU_MFU:.0%} MFU of {peak / 1e12:.0f} TFLOP/s bf16")


def _response_tokens(examples: list[Any], max_new_tokens: int) -> float:
    """Expected length of a generated response: the demonstrations' mean (a model imitating them answers
    about as long), at most max_new_tokens (decoding stops when every response of a batch ended)."""
    if not examples:
        return float(max_new_tokens)
    mean = sum(len(str(getattr(e, "response", ""))) for e in examples) / len(examples) / CHARS_PER_TOKEN
    return min(float(max_new_tokens), mean)


def _tokens(examples: list[Any], max_length: int) -> float:
    """Mean tokens of a training sequence (prompt + demonstration), from the data's characters."""
    if not examples:
        return float(max_length)
    def text(prompt: Any) -> int:
        if isinstance(prompt, list):
            return sum(len(str(m.get("content", ""))) if isinstance(m, dict) else len(str(m)) for m in prompt)
        return len(str(prompt))

    chars = [text(getattr(e, "prompt", "")) + len(str(getattr(e, "response", ""))) for e in examples]
    template = 20  # a chat template's role markers and generation prompt
    return min(float(max_length), sum(chars) / len(chars) / CHARS_PER_TOKEN + template)


def _decode_time(shape: Shape, machine: Machine, sequences: int, new_tokens: int, batch: int, nbytes: int) -> float:
    """Greedy decoding of `sequences` responses of `new_tokens` tokens in batches: each decode step costs the
    larger of its FLOPs and reading the weights once."""
    steps = math.ceil(sequences / max(1, batch)) * new_tokens
    per = max(2 * shape.body * min(batch, sequences) / machine.flops, shape.params * nbytes / machine.bandwidth)
    return steps * per


@dataclass(frozen=True)
class StepCost:
    step: str
    flops: float
    seconds: float


MODEL_FREE_SECONDS = 10.0  # a model-free task (the scorer canaries: sandboxed programs), scored once


def _train_cost(cfg: ExperimentConfig, st: Step, examples: list[Any], seq: float, n_steps: int, shape: Shape,
                machine: Machine, shared_gen: bool, nbytes: int, processes: int = 1) -> tuple[float, float]:
    """(FLOPs, seconds) of one method x seed: every iteration's optimizer steps, reference log-probs and
    self-play generation (`shared_gen`: this step also makes the starting model's, shared by every method).
    `n_steps` are the launch's optimizer steps (trainers.loop.StepPlan for `processes`), each over the global
    batch: per-process batch x accumulation x processes sequences (the seconds are divided over the processes
    by the caller)."""
    t, g = cfg.shared.train, cfg.shared.generation
    loss = cfg.method(st.method).loss
    pairs = LOSSES.needs_pairs(loss)
    iters = iteration_plan(cfg, st.method)
    new = _response_tokens(examples, g.max_new_tokens)
    prompt = seq - _response_tokens(examples, 10**9)
    gen_seq = min(float(t.max_length), prompt + new)  # prompt + generated response
    second = gen_seq - prompt if t.share_prompts else gen_seq  # train.share_prompts: the pair's prompt runs once
    flops = iters * n_steps * 6 * shape.body * t.batch_size * t.grad_accum * processes * (seq + (second if pairs else 0))
    seconds = flops / machine.flops
    if pairs:
        ref = iters * 2 * shape.body * len(examples) * (seq + second)  # reference log-probs, once per iteration
        generations = (iters - 1 if LOSSES.self_play(loss) else 0) + (1 if shared_gen else 0)
        if cfg.shared.preference_data is not None:
            generations = 0
        flops += ref + generations * 2 * shape.body * len(examples) * new
        seconds += ref / machine.flops + generations * _decode_time(shape, machine, len(examples), round(new),
                                                                    g.batch_size, nbytes)
    return flops, seconds


def _eval_cost(cfg: ExperimentConfig, st: Step, seq: float, shape: Shape, machine: Machine,
               nbytes: int) -> tuple[float, float]:
    """(FLOPs, seconds) of one evaluation step: each model task greedy-decodes its items and scores them
    teacher-forced (policy and reference); a model-free task once, on the starting model's step."""
    ev = cfg.shared.eval
    items, gen = ev.limit or 100, ev.generation
    free = [t for t in ev.tasks if t in TASKS and TASKS.meta(t).get("model_free")]
    model = [t for t in ev.tasks if t not in free]
    scoring = 2 * shape.body * items * (seq + gen.max_new_tokens)  # the policy on real and generated (the
    flops = len(model) * (2 * shape.body * items * gen.max_new_tokens + scoring)  # reference's are cached)
    seconds = len(model) * (_decode_time(shape, machine, items, gen.max_new_tokens, gen.batch_size, nbytes)
                            + scoring / machine.flops)
    return flops, seconds + (MODEL_FREE_SECONDS * len(free) if st.seed is None else 0.0)


def step_costs(cfg: ExperimentConfig, steps: list[Step], examples: list[Any], n_steps: int, shape: Shape,
               machine: Machine, processes: int = 1) -> list[StepCost]:
    """FLOPs and time of every step of the plan (module docstring); time divided over the processes."""
    seq = _tokens(examples, cfg.shared.train.max_length)
    nbytes = 2 if machine.label.startswith("one ") else 4
    load = shape.params * nbytes / machine.bandwidth * 3 + 2.0  # read, convert, place; plus a fixed start
    out, shared_done = [], False
    for st in steps:
        if st.kind == "train":
            pairs = LOSSES.needs_pairs(cfg.method(st.method).loss)
            flops, seconds = _train_cost(cfg, st, examples, seq, n_steps, shape, machine,
                                         pairs and not shared_done, nbytes, processes)
            shared_done = shared_done or pairs
            seconds += load * iteration_plan(cfg, st.method)
        else:
            flops, seconds = _eval_cost(cfg, st, seq, shape, machine, nbytes)
            seconds += load
        out.append(StepCost(st.id, flops, seconds / processes))
    return out


def peak_memory(cfg: ExperimentConfig, shape: Shape, processes: int, sharded: bool, seq: float) -> dict[str, float]:
    """Bytes per device at the peak of a training step, by part (module docstring)."""
    t = cfg.shared.train
    precision = t.precision
    wbytes = 4 if precision in ("fp32", "auto", "fp16") else 2
    shards = processes if sharded else 1
    adam = cfg.shared.optimizer.name == "adamw" or any(
        (m.overrides or {}).get("optimizer.name") == "adamw" for m in cfg.methods)
    parts = {"weights": shape.params * wbytes / shards, "gradients": shape.params * wbytes / shards,
             ("AdamW moments (fp32)" if adam else "RMSprop square average (fp32)"):
             shape.params * (8 if adam else 4) / shards}
    if precision == "bf16-weights":
        # trainers/precision.py: one device / data parallel keep bf16 weights beside an fp32 master copy the
        # optimizer steps; FSDP2 keeps fp32 shards (the master) and gathers them in bf16 per layer for compute
        if sharded:
            del parts["weights"]
            parts = {"weights: fp32 shards (the master copy)": shape.params * 4 / shards, **parts}
        else:
            parts["fp32 master copy"] = shape.params * 4 / shards
    if any(LOSSES.needs_pairs(m.loss) for m in cfg.methods):
        parts["reference model (frozen)"] = shape.params * wbytes / shards
    factor = 34 * (2 if wbytes == 2 else 4) / 2
    act = factor * seq * t.batch_size * shape.hidden * shape.layers
    parts["activations (one micro-batch)"] = act / (8 if t.gradient_checkpointing else 1)
    return parts


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB" if x >= 1e8 else f"{x / 1e6:.0f} MB"


def _time(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def describe_cost(cfg: ExperimentConfig, steps: list[Step], examples: list[Any], n_steps: int,
                  gpu_name: str | None = None, processes: int = 1, sharded: bool = False) -> list[str]:
    """The dry run's cost lines: one per step, then the total, peak memory per device and disk."""
    shape = model_shape(cfg.shared.model, cfg.shared.model_revision)
    if shape is None:
        return [f"cost: the shape of {cfg.shared.model} is unknown here (no config.json at hand): no estimate",
                "  " + disk_plan(cfg)]  # the checkpoints' count under the policy, their size from the files if any
    machine = gpu(gpu_name) if gpu_name else measure(shape.hidden)
    costs = step_costs(cfg, steps, examples, n_steps, shape, machine, processes)
    seq = _tokens(examples, cfg.shared.train.max_length)
    lines = [f"cost estimate ({machine.label}; model {shape.params / 1e6:,.0f}M parameters, {shape.layers} layers, "
             f"width {shape.hidden}, from {shape.source}):"]
    lines += [f"  {c.step}: {c.flops:.2e} model FLOPs, ~{_time(c.seconds)}" for c in costs]
    total = sum(c.seconds for c in costs)
    lines.append(f"  total: {sum(c.flops for c in costs):.2e} model FLOPs, ~{_time(total)} "
                 f"(steps one after another, {processes} process(es); an evaluation step counts each task as "
                 f"{cfg.shared.eval.limit or 100} generated and scored items)")
    mem = peak_memory(cfg, shape, processes, sharded, seq + cfg.shared.generation.max_new_tokens)
    lines.append(f"  peak memory per device ({cfg.shared.train.precision}, {'sharded over ' + str(processes) if sharded else 'unsharded'}): "
                 f"{_gb(sum(mem.values()))} = " + " + ".join(f"{k} {_gb(v)}" for k, v in mem.items()))
    t = cfg.shared.train
    ckpt_bytes = shape.params * (2 if t.checkpoint_dtype == "bf16" or t.precision == "bf16-weights" else 4)  # as saved
    lines.append("  " + disk_plan(cfg, ckpt_bytes))  # what shared.train.keep_checkpoints leaves (harness.retention)
    return lines
