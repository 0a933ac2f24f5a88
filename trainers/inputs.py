"""Inputs of one training iteration for every method: self-play generations and reference log-probs.

For iteration k of a method, `prepare_inputs` returns the `TrainItem`s (real sequence
and, for pairwise losses, the generated or rejected one) and the reference log-probs:

- SFT: the demonstrations only; no reference, no generation.
- DPO with `shared.preference_data`: (chosen, rejected) pairs scored by the starting model.
- Self-play (GSIL, SPIN) and DPO on demonstrations: the reference of iteration k (the
  starting model for k = 1, iteration k-1's checkpoint after) generates one response per
  training prompt through `core.generation.make_generator` (`shared.generation`), then
  scores both responses; the model is freed before training.

Work whose inputs are identical across methods is done once: iteration 1's generations by
the starting model and its log-probs serve SPIN, DPO and every GSIL member. It lives in
`<run_dir>/shared/<hash>/` (hash of the model, precision, token ids and generation
settings), guarded by a file lock and completed by a DONE marker, and is copied into each
iteration folder. Later iterations work in `iter-<k>/inputs/`.

With several processes (accelerate launch), every process generates and scores a shard of
the prompts; the results are gathered to the main process, which alone writes files.
Generations are appended chunk by chunk to `generations.partial.jsonl`, so a killed run
continues where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gsil_bench.core.config import ExperimentConfig, MethodConfig, hash_view
from gsil_bench.core.errors import ConfigError
from gsil_bench.core.generation import make_generator
from gsil_bench.core.io import (
    append_jsonl,
    atomic_path,
    atomic_write_text,
    file_lock,
    hash_obj,
    is_done,
    mark_done,
    read_jsonl,
    sha256_file,
)
from gsil_bench.core.layout import RunLayout
from gsil_bench.trainers.data import EncodedSeq, Example, TrainItem
from gsil_bench.trainers.losses import Loss
from gsil_bench.trainers.official import encode_with, fit, official_response, raw_prompt
from gsil_bench.trainers.reference import (
    RefLogps,
    free_model,
    load_causal_lm,
    load_ref,
    reference_logps,
    save_ref,
    weights_dtype,
)
from gsil_bench.trainers.state import kill_hook

log = logging.getLogger(__name__)


@dataclass
class MethodContext:
    """What every iteration of one method × seed shares (built once by trainers.api)."""

    cfg: ExperimentConfig
    method: MethodConfig
    loss: Loss  # the method's loss, looked up and bound once (again per iteration with per-iteration params)
    seed: int
    run_dir: Path
    tokenizer: Any
    accelerator: Any
    examples: list[Example]  # demonstrations, or preference pairs (DPO on preference data)
    real: list[EncodedSeq]
    rejected: list[EncodedSeq] | None  # preference data: the rejected side
    precision: str  # "bf16", "bf16-weights", "fp16" or "fp32": how models run (part of cache keys)
    encoding: str = "chat"  # DataConfig.encoding of the data in use ("spin": pairs truncated together)


@dataclass
class IterationInputs:
    items: list[TrainItem]
    ref: RefLogps | None
    generated_tokens: int = 0
    inputs_hash: str | None = None


def tokens_digest(seqs: Sequence[EncodedSeq | None]) -> str:
    """sha256 of token ids and response boundaries (fast: bytes, not JSON)."""
    h = hashlib.sha256()
    for s in seqs:
        if s is None:
            h.update(b"none;")
            continue
        h.update(torch.tensor([s.response_start, *s.input_ids], dtype=torch.int64).numpy().tobytes())
        if s.attention_mask is not None:
            h.update(b"mask" + bytes(s.attention_mask))
        h.update(b";")
    return h.hexdigest()


@contextmanager
def main_locked(accelerator: Any, lock_path: Path) -> Iterator[None]:
    """Main process holds an exclusive file lock (another run may share the folder) while
    all processes of this run work inside the block."""
    with file_lock(lock_path) if accelerator.is_main_process else contextlib.nullcontext():
        accelerator.wait_for_everyone()
        try:
            yield
        finally:
            accelerator.wait_for_everyone()


def _load_reference(ctx: MethodContext, name: str) -> Any:
    revision = ctx.cfg.shared.model_revision if name == ctx.cfg.shared.model else None
    return load_causal_lm(name, revision=revision, device=ctx.accelerator.device,
                          dtype=weights_dtype(ctx.precision)).eval()


def _generate(ctx: MethodContext, model: Any, reference: str, work: Path, gen_seed: int) -> None:
    """Generate one response per example (sharded over processes, appended chunk by chunk)."""
    from accelerate.utils import broadcast_object_list, gather_object

    acc, gcfg = ctx.accelerator, ctx.cfg.shared.generation
    partial = work / "generations.partial.jsonl"
    found: list[set[int] | None] = [{r["index"] for r in read_jsonl(partial, repair=True)}] \
        if acc.is_main_process else [None]
    if acc.num_processes > 1:
        broadcast_object_list(found)
    done = found[0] or set()
    todo = [i for i in range(len(ctx.examples)) if i not in done]
    shard = todo[acc.process_index :: acc.num_processes]
    chunk = max(1, gcfg.batch_size) * 4
    generator = make_generator(gcfg, model=model, tokenizer=ctx.tokenizer, model_name=reference,
                               revision=ctx.cfg.shared.pins().get(reference))  # vllm loads the model itself
    template = gcfg.prompt_template
    written = len(done)
    for c in range(math.ceil(math.ceil(len(todo) / acc.num_processes) / chunk)):
        mine = shard[c * chunk : (c + 1) * chunk]
        with acc.autocast():
            prompts = [ctx.examples[i].prompt if template is None else raw_prompt(template, ctx.examples[i].prompt)
                       for i in mine]
            comps = generator.generate(prompts, seed=gen_seed + (mine[0] if mine else 0),
                                       desc="self-play generation") if mine else []
        recs = [{"index": i, "prompt": ctx.examples[i].prompt, "response": _response(ctx, comp.text),
                 "tokens": comp.tokens,
                 "finish_reason": comp.finish_reason, "real": ctx.examples[i].response,
                 **({"prompt_text": text} if template is not None else {})}
                for i, comp, text in zip(mine, comps, prompts)]
        recs = gather_object(recs)
        if acc.is_main_process:
            append_jsonl(partial, recs)
        written += len(recs)
        kill_hook("generated", written)


def _response(ctx: MethodContext, text: str) -> str:
    """The stored response: on the official self-play prompt (generation.prompt_template), the official
    post-processing (EOS text dropped, left-stripped: trainers.official.official_response), whatever the
    backend; the chat-template path keeps the text as decoded."""
    if ctx.cfg.shared.generation.prompt_template is None:
        return text
    return official_response(text, ctx.tokenizer.eos_token)


def _encode_generated(ctx: MethodContext, records: list[dict[str, Any]]) -> list[EncodedSeq]:
    t = ctx.cfg.shared.train
    return [encode_with(ctx.encoding, ctx.tokenizer, r["prompt"], r["response"], max_prompt_length=t.max_prompt_length,
                        max_length=t.max_length) for r in records]


def history_iterations(history: int, iteration: int) -> range:
    """The earlier iterations whose pairs a self-play iteration also trains on: k-history+1..k-1
    (shared.self_play.history; SPIN trains iteration k on k-1's and k's pairs:
    configs/config_iter1.yaml:7-10 at uclaml/SPIN a12ba80)."""
    return range(max(1, iteration - history + 1), iteration)


def history_files(ctx: MethodContext, iteration: int, folder: Path) -> list[Path]:
    """Earlier iterations' generations that iteration k also trains on (`history_iterations`)."""
    if not ctx.loss.self_play:
        return []
    files = [folder.parent / f"iter-{j}" / "generations.jsonl"
             for j in history_iterations(ctx.cfg.shared.self_play.history, iteration)]
    for f in files:
        if not f.is_file():
            raise ConfigError(f"shared.self_play.history: {f} is missing (iteration {iteration} trains on it)")
    return files


def fit_items(ctx: MethodContext, real: list[EncodedSeq], gen: list[EncodedSeq] | None,
              start: int = 0) -> list[TrainItem]:
    """TrainItems numbered from `start`, truncated as the data's encoding rules (see trainers.official)."""
    t = ctx.cfg.shared.train
    items = []
    for i, r in enumerate(real):
        rr, gg = fit(ctx.encoding, r, gen[i] if gen is not None else None, max_prompt_length=t.max_prompt_length,
                     max_length=t.max_length)
        items.append(TrainItem(start + i, rr, gg))
    return items


def _score(ctx: MethodContext, model: Any, items: list[TrainItem], work: Path, key: str) -> None:
    """Reference log-probs of every item, sharded over processes; main writes ref_logps.pt."""
    from accelerate.utils import gather_object

    acc, t = ctx.accelerator, ctx.cfg.shared.train
    mine = items[acc.process_index :: acc.num_processes]
    real, gen = reference_logps(model, mine, batch_size=t.batch_size, chunk=t.logprob_chunk,
                                pad_id=ctx.tokenizer.pad_token_id, autocast=acc.autocast, share_prompts=t.share_prompts)
    rows = [(it.index, float(real[j]), None if gen is None else float(gen[j])) for j, it in enumerate(mine)]
    rows = gather_object(rows)
    if acc.is_main_process:
        rows.sort()
        real_all = torch.tensor([r[1] for r in rows], dtype=torch.float32)
        gen_all = None if rows[0][2] is None else torch.tensor([r[2] for r in rows], dtype=torch.float32)
        save_ref(work / "ref_logps.pt", RefLogps(real_all, gen_all, key))


def _build(ctx: MethodContext, work: Path, reference: str, key: str, generate: bool, gen_seed: int,
           history: list[Path]) -> None:
    """Fill `work` with generations.jsonl (if generating) and ref_logps.pt, then DONE (recording the
    wall time and which method and seed built it: the report's cost table counts shared work once)."""
    acc = ctx.accelerator
    start = time.perf_counter()
    model = _load_reference(ctx, reference)
    if generate:
        _generate(ctx, model, reference, work, gen_seed)
        acc.wait_for_everyone()
        if acc.is_main_process:
            recs = sorted(read_jsonl(work / "generations.partial.jsonl"), key=lambda r: r["index"])
            if [r["index"] for r in recs] != list(range(len(ctx.examples))):
                raise RuntimeError(f"{work}: generations do not cover every example exactly once")
            atomic_write_text(work / "generations.jsonl", "".join(_jsonl_line(r) for r in recs))
            (work / "generations.partial.jsonl").unlink()
        acc.wait_for_everyone()
    items = _items(ctx, work, generate, history)
    _score(ctx, model, items, work, key)
    free_model(model)
    if acc.is_main_process:
        mark_done(work, {"key": key, "reference": reference, "wall_time_s": round(time.perf_counter() - start, 3),
                         "built_by": f"{ctx.method.label}/seed-{ctx.seed}"})


def _jsonl_line(rec: dict[str, Any]) -> str:
    import json

    return json.dumps(rec) + "\n"


def _items(ctx: MethodContext, work: Path, generated: bool, history: list[Path]) -> list[TrainItem]:
    """This iteration's pairs, then each history iteration's (same real responses, older generations)."""
    if generated:
        gen = _encode_generated(ctx, read_jsonl(work / "generations.jsonl"))
    else:
        gen = list(ctx.rejected) if ctx.rejected is not None else []
    items = fit_items(ctx, ctx.real, gen)
    for f in history:
        items += fit_items(ctx, ctx.real, _encode_generated(ctx, read_jsonl(f)), start=len(items))
    return items


def inputs_key(ctx: MethodContext, reference: str, generate: bool, history: list[Path] | None = None) -> str:
    """Hash of everything the iteration inputs depend on (shared across methods when equal)."""
    s = ctx.cfg.shared
    gen = hash_view(s.generation) if generate else None
    sampled = generate and s.generation.temperature > 0
    return hash_obj({
        "reference": reference, "revision": s.model_revision if reference == s.model else None,
        "precision": ctx.precision, "real": tokens_digest(ctx.real),
        "rejected": tokens_digest(ctx.rejected) if ctx.rejected is not None else None,
        "generation": gen, "seed": ctx.seed if sampled else None,
        **({"response": "official_response"} if generate and s.generation.prompt_template is not None else {}),
        **({"history": [sha256_file(f) for f in history]} if history else {}),
        **({"encoding": ctx.encoding, "lengths": [ctx.cfg.shared.train.max_prompt_length,
                                                  ctx.cfg.shared.train.max_length]} if ctx.encoding != "chat" else {}),
    })


def _transfer(work: Path, folder: Path, shared: bool) -> None:
    """Put the iteration's generations.jsonl and ref_logps.pt into its folder: copied from
    the shared folder (it serves other methods too), moved from the iteration's own."""
    for name in ("generations.jsonl", "ref_logps.pt"):
        if (work / name).is_file() and not (folder / name).is_file():
            if shared:
                with atomic_path(folder / name) as tmp:
                    shutil.copyfile(work / name, tmp)
            else:
                (work / name).rename(folder / name)


def prepare_inputs(ctx: MethodContext, iteration: int, reference: str, folder: Path) -> IterationInputs:
    """Items and reference log-probs for `iteration`, trained from / scored by `reference`."""
    acc = ctx.accelerator
    if not ctx.loss.pairs:
        return IterationInputs(fit_items(ctx, ctx.real, None), None)
    generate = ctx.rejected is None
    history = history_files(ctx, iteration, folder)
    key = inputs_key(ctx, reference, generate, history)
    shared = iteration == 1 and reference == ctx.cfg.shared.model
    work = RunLayout(ctx.run_dir).shared_dir(key) if shared else folder / "inputs"
    gen_seed = int(hash_obj([ctx.seed, iteration]), 16) % (2**31)
    if acc.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    with main_locked(acc, work / ".lock"):
        if not is_done(work):
            _build(ctx, work, reference, key, generate, gen_seed, history)
    if acc.is_main_process:
        _transfer(work, folder, shared)
    acc.wait_for_everyone()
    ref = load_ref(folder / "ref_logps.pt", key)
    items = _items(ctx, folder, generate, history)
    tokens = sum(r["tokens"] for r in read_jsonl(folder / "generations.jsonl")) if generate else 0
    return IterationInputs(items, ref, tokens, key)
