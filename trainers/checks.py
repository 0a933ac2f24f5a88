"""The training settings' checks, as problems for the one validation pass (harness.validate).

Each check returns `Problem(key, message)` values instead of raising, so a config with
several mistakes gets them all in one error. Nothing here loads a model or data.
"""

from __future__ import annotations

import math

from gsil_bench.core.config import ExperimentConfig, MethodConfig
from gsil_bench.core.errors import Problem
from gsil_bench.core.generation import OPENAI_NO_PROMPT_CUT, generation_problems
from gsil_bench.trainers.heldout import heldout_problems
from gsil_bench.trainers.losses import LOSSES
from gsil_bench.trainers.publish import publish_problems


def check_training(cfg: ExperimentConfig) -> list[Problem]:
    """Shared training settings every method uses: batching, lengths, optimizer, generation."""
    s, t = cfg.shared, cfg.shared.train
    out: list[Problem] = []
    for key, value, low in (("batch_size", t.batch_size, 1), ("grad_accum", t.grad_accum, 1), ("epochs", t.epochs, 1),
                            ("save_every", t.save_every, 1), ("log_every", t.log_every, 1),
                            ("logprob_chunk", t.logprob_chunk, 1), ("max_prompt_length", t.max_prompt_length, 1)):
        if value < low:
            out.append(Problem(f"shared.train.{key}", f"must be >= {low}, got {value}"))
    if t.max_steps is not None and t.max_steps < 1:
        out.append(Problem("shared.train.max_steps", f"must be >= 1 or null, got {t.max_steps}"))
    if t.max_prompt_length >= t.max_length:
        out.append(Problem("shared.train.max_prompt_length",
                           f"must be < shared.train.max_length ({t.max_length}), got {t.max_prompt_length}"))
    if not (math.isfinite(s.optimizer.lr) and s.optimizer.lr > 0):
        out.append(Problem("shared.optimizer.lr", f"must be a finite number > 0, got {s.optimizer.lr}"))
    if not 0 <= s.schedule.warmup_ratio <= 1:
        out.append(Problem("shared.schedule.warmup_ratio", f"must be in [0, 1], got {s.schedule.warmup_ratio}"))
    out += generation_problems(s.generation, "shared.generation")
    if s.iterations < 1:
        out.append(Problem("shared.iterations", f"must be >= 1, got {s.iterations}"))
    if not s.seeds:
        out.append(Problem("shared.seeds", "at least one seed is required"))
    if t.packing and "spin" in (s.train_data.encoding, s.preference_data and s.preference_data.encoding):
        out.append(Problem("shared.train.packing", "cannot be combined with encoding 'spin' (its EOS tokens are "
                                                   "masked from attention inside the sequence); set packing: false"))
    if t.share_prompts and not t.packing:
        out.append(Problem("shared.train.share_prompts", "shares prompts inside packed batches: needs packing: true"))
    return out + publish_problems(cfg) + heldout_problems(cfg)


def check_method(cfg: ExperimentConfig, index: int, method: MethodConfig) -> list[Problem]:
    """One method block: its loss is registered, its parameters exist and give a finite
    loss, and a self-play loss has a generator that can follow the policy."""
    key = f"methods[{index}]"
    if method.loss not in LOSSES:
        try:
            LOSSES.get(method.loss)
        except KeyError as err:
            return [Problem(f"{key}.loss", err.args[0])]
    try:
        LOSSES.validate(method.loss, method.params)
    except (TypeError, ValueError) as err:
        return [Problem(f"{key}.params", str(err))]
    for j, it in enumerate(method.per_iteration):  # per-iteration parameters (e.g. SPIN's beta 5.0 at round 4)
        try:
            LOSSES.validate(method.loss, method.params_at(it.iteration))
        except (TypeError, ValueError) as err:
            return [Problem(f"{key}.per_iteration[{j}].params", str(err))]
    if LOSSES.self_play(method.loss) and cfg.shared.iterations > 1 and cfg.shared.generation.backend == "openai":
        return [Problem("shared.generation.backend",
                        "'openai' serves one fixed model, but self-play iteration 2+ must generate with the "
                        "previous iteration's checkpoint; use backend 'hf' or 'vllm' (or shared.iterations: 1)")]
    gen = cfg.shared.generation
    if LOSSES.self_play(method.loss) and gen.backend == "openai" and gen.max_prompt_tokens:
        return [Problem("shared.generation.max_prompt_tokens",
                        f"{OPENAI_NO_PROMPT_CUT} (asked: prompts cut to {gen.max_prompt_tokens} tokens)")]
    return []
