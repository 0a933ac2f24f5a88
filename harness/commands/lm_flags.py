"""lm-evaluation-harness's flag names on `gsil-bench eval`.

A flag that means the same in both tools is accepted under lm-eval's name and becomes the
`KEY=VALUE` override gsil-bench would take (so it goes through the one validation pass and
lands in `metrics.json`'s config like any override); a flag with no same-meaning equivalent
is answered with what gsil-bench does instead, as unknown config keys are answered.

| lm-eval | gsil-bench |
|---|---|
| `--batch_size N`, `auto` | `shared.eval.generation.batch_size=N`; `auto`: `auto_batch_size=true` (on a GPU: from 64 rows, halved on out-of-memory until a batch fits) |
| `--num_fewshot N`, `TASK=N,...` | `shared.eval.num_fewshot` (one count, or one per task) |
| `--output_path DIR` | `--output DIR` |
| `--log_samples` | always on: `samples.jsonl`, and lm-eval's own `samples_<task>_*.jsonl` under `interop/lm_eval/` |
| `--apply_chat_template` | `shared.eval.lm_eval_chat_template=true` (lm-eval tasks; ours use the chat template already) |
| `--revision REV` | `shared.model_revision=REV` |
| `--device cuda:1` | `shared.eval.device=cuda:1` |
| `--gen_kwargs k=v,...` | `shared.eval.lm_eval_gen_kwargs` (lm-eval tasks) plus, for `temperature`, `top_p`, `max_gen_toks`, our tasks' `shared.eval.generation.*` |
| `--seed` | answered: see SEED_ANSWER |
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from gsil_bench.core.errors import GsilError

log = logging.getLogger(__name__)

SEED_ANSWER = ("--seed: gsil-bench eval has no global seed to set: greedy generation is deterministic, the sampled "
               "code completions use seeds 1..shared.eval.samples_per_task and lm-eval tasks run with lm-eval's "
               "default seeds, all recorded in metrics.json; training seeds are shared.seeds (run) or --seed (train)")
MODEL_ARGS_ANSWER = ("--model_args: gsil-bench eval takes the model itself, --model ORG/NAME or a folder (lm-eval's "
                     "pretrained=), with --revision (revision=), --device (device=) and --batch_size; the backend is "
                     "shared.eval.generation.backend (hf, vllm, openai; lm-eval's --model hf|vllm|local-completions)")
# lm-eval's model types: on lm-eval's command line --model names the backend, on ours the model
LM_EVAL_BACKENDS = {"hf": "hf", "huggingface": "hf", "vllm": "vllm", "local-completions": "openai",
                    "local-chat-completions": "openai", "openai-completions": "openai", "openai-chat-completions": "openai"}
# lm-eval gen_kwargs that our own tasks' generation settings mean too
GEN_KWARGS = {"temperature": "temperature", "top_p": "top_p", "max_gen_toks": "max_new_tokens",
              "max_new_tokens": "max_new_tokens"}


def batch_size(text: str) -> str:
    """`N` (>= 1) or `auto` (lm-eval's `auto:N` recomputes N times; ours halves on OOM once and keeps it)."""
    low = text.strip().lower()
    if low == "auto" or low.startswith("auto:"):
        return "auto"
    try:
        n = int(low)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}")
    return str(n)


def num_fewshot(text: str) -> int | dict[str, int]:
    """`5` (every lm-eval task) or `gsm8k=5,arc_challenge=25` (per task)."""
    bad = argparse.ArgumentTypeError(f"expected N or TASK=N,TASK=N (N >= 0), got {text!r}")
    try:
        if "=" not in text:
            value: int | dict[str, int] = int(text)
        else:
            pairs = (part.split("=", 1) for part in text.split(",") if part.strip())
            value = {k.strip(): int(v) for k, v in pairs}
    except ValueError:
        raise bad from None
    if min([value] if isinstance(value, int) else list(value.values()) or [0]) < 0:
        raise bad
    return value


def gen_kwargs(text: str) -> dict[str, Any]:
    """lm-eval's `k=v,k=v` (values read as numbers or booleans where they are)."""
    out: dict[str, Any] = {}
    for part in (p for p in text.split(",") if p.strip()):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE,KEY=VALUE, got {text!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        try:
            out[k] = json.loads(v.lower() if v.lower() in ("true", "false") else v)
        except json.JSONDecodeError:
            out[k] = v
    return out


class _Answer(argparse.Action):
    """An lm-eval flag gsil-bench answers with its own way instead of taking it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        raise GsilError(str(self.const))


def add_lm_eval_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("lm-evaluation-harness flag names (the same meaning as in lm-eval; README, Evaluation)")
    group.add_argument("--batch_size", type=batch_size, default=None, metavar="N|auto",
                       help="generation batch size; auto: the largest that fits (halved on out-of-memory)")
    group.add_argument("--num_fewshot", type=num_fewshot, default=None, metavar="N|TASK=N,...",
                       help="few-shot examples of lm-eval tasks: one count, or one per task")
    group.add_argument("--output_path", default=None, metavar="DIR", help="same as --output")
    group.add_argument("--log_samples", action="store_true", help="accepted: per-item samples are always written")
    group.add_argument("--apply_chat_template", action="store_true",
                       help="lm-eval tasks with the chat template (shared.eval.lm_eval_chat_template=true)")
    group.add_argument("--revision", default=None, help="Hub revision of --model (shared.model_revision)")
    group.add_argument("--device", default=None, help="cuda, cuda:1, cpu, mps (default: cuda when available)")
    group.add_argument("--gen_kwargs", type=gen_kwargs, default=None, metavar="K=V,...",
                       help="generation settings in lm-eval's syntax (temperature, top_p, max_gen_toks, ...)")
    group.add_argument("--seed", nargs="?", action=_Answer, const=SEED_ANSWER, help="answered with gsil-bench's seeds")
    group.add_argument("--model_args", action=_Answer, const=MODEL_ARGS_ANSWER, help="answered: use --model and the flags above")


def lm_eval_overrides(args: argparse.Namespace) -> list[str]:
    """The KEY=VALUE overrides the lm-eval flags given mean (flags not given add nothing)."""
    out: list[str] = []
    if args.model in LM_EVAL_BACKENDS:
        raise GsilError(f"--model {args.model}: on gsil-bench eval --model names the model (ORG/NAME, a folder, a .gguf), "
                        f"not lm-eval's model type; the backend is shared.eval.generation.backend="
                        f"{LM_EVAL_BACKENDS[args.model]}")
    if args.batch_size == "auto":
        out.append("shared.eval.generation.auto_batch_size=true")
    elif args.batch_size is not None:
        out.append(f"shared.eval.generation.batch_size={args.batch_size}")
    if args.num_fewshot is not None:
        out.append(f"shared.eval.num_fewshot={json.dumps(args.num_fewshot)}")
    if args.apply_chat_template:
        out.append("shared.eval.lm_eval_chat_template=true")
    if args.revision:
        out.append(f"shared.model_revision={json.dumps(args.revision)}")
    if args.device:
        out.append(f"shared.eval.device={json.dumps(args.device)}")
    if args.gen_kwargs:
        text = ",".join(f"{k}={v}" for k, v in args.gen_kwargs.items())
        out.append(f"shared.eval.lm_eval_gen_kwargs={json.dumps(text)}")
        out += [f"shared.eval.generation.{GEN_KWARGS[k]}={json.dumps(v)}" for k, v in args.gen_kwargs.items()
                if k in GEN_KWARGS]
    if args.log_samples:
        log.info("--log_samples: per-item samples are always written (samples.jsonl, and lm-eval's own "
                 "samples files under interop/lm_eval/)")
    if args.output_path:
        if args.output and args.output != args.output_path:
            raise GsilError(f"--output {args.output} and --output_path {args.output_path}: give one of them")
        args.output = args.output_path
    return out
