"""Self-play generation throughput: the Hugging Face backend in its default settings
against gsil-bench's fastest configuration, batch 64, 256 new tokens, and the bound
that memory bandwidth puts on decoding.

    python -m benchmarks.generation --device cpu --quick    # tiny model
    python -m benchmarks.generation --device cuda           # SmolLM2-360M and -1.7B shapes, bf16

Prompts are GSM8K training questions (the self-play prompts), greedy decoding as in the
released recipes. Configurations (all through `core.generation.HFGenerator`):
- `hf-default`: `GenerationConfig()` defaults but batch 64: dynamic cache, `model.generate`;
- `static`: `cache: static`: preallocated cache, gsil-bench's lean decode loop;
- `static-compiled`: `cache: static, compile: true`: the decode step compiled with CUDA
  graphs (GPU only);
- `hf-generate-static` (with --reference): transformers' own `generate` with
  `cache_implementation="static"` (auto-compiled on a GPU), for comparison.
Each is warmed up on the first batch (compilation), then timed over all prompts.
Tokens/s counts generated tokens (up to EOS). The bound: every decode step reads all
weights and the KV cache once, so tokens/s <= batch x bandwidth / bytes per step.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks import common
from gsil_bench.core.config import GenerationConfig
from gsil_bench.core.registry import Registry

CONFIGS: Registry[Callable[[int, int], GenerationConfig]] = Registry("generation benchmark config")
CONFIGS.add("hf-default", lambda b, n: GenerationConfig(batch_size=b, max_new_tokens=n))
CONFIGS.add("static", lambda b, n: GenerationConfig(batch_size=b, max_new_tokens=n, cache="static"))
CONFIGS.add("static-compiled",
            lambda b, n: GenerationConfig(batch_size=b, max_new_tokens=n, cache="static", compile=True))


class HFStaticGenerate:
    """Reference point: transformers' generate with its static cache (auto-compiled on CUDA)."""

    def __init__(self, model: Any, tok: Any, batch: int, max_new: int) -> None:
        self.model, self.tok, self.batch, self.max_new = model, tok, batch, max_new

    def generate(self, prompts: list[Any], **_: Any) -> list[Any]:
        from gsil_bench.core.generation import HFGenerator, left_pad, render_prompt

        helper = HFGenerator(self.model, self.tok, GenerationConfig(max_new_tokens=self.max_new))
        ids = [self.tok(render_prompt(self.tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
        out: list[Any] = []
        for s in range(0, len(ids), self.batch):
            x, m = left_pad(ids[s : s + self.batch], helper._pad_id())
            with torch.no_grad():
                gen = self.model.generate(input_ids=x.to(self.model.device), attention_mask=m.to(self.model.device),
                                          max_new_tokens=self.max_new, do_sample=False, temperature=None,
                                          top_p=None, top_k=None, cache_implementation="static",
                                          pad_token_id=helper._pad_id(), eos_token_id=self.tok.eos_token_id)
            out.extend(helper._completion(row, None) for row in gen[:, x.shape[1] :].tolist())
        return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.generation", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="tiny model (CPU smoke benchmark)")
    p.add_argument("--models", nargs="+", help="model shapes (default: tiny on CPU/--quick, else 360m and 1.7b)")
    p.add_argument("--configs", nargs="+", help="default: hf-default, static (+ static-compiled on a GPU)")
    p.add_argument("--reference", action="store_true", help="also time transformers' generate with a static cache")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--prompts", type=int, help="number of prompts (default 2 batches; 1 with --quick)")
    p.add_argument("--out", help="write results as JSON here")
    return p.parse_args(argv)


def timed(gen: Any, prompts: list[Any], batch: int, device: torch.device) -> tuple[float, list[Any], float]:
    """(warm-up seconds on the first batch, completions of the timed pass, timed seconds)."""
    common.sync(device)
    t0 = time.perf_counter()
    gen.generate(prompts[:batch], desc="warm-up")
    common.sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = gen.generate(prompts, desc="timed")
    common.sync(device)
    return warm, outs, time.perf_counter() - t0


def bench_model(shape: str, configs: list[str], args: argparse.Namespace, device: torch.device,
                ceil: common.Ceilings) -> list[dict[str, Any]]:
    from gsil_bench.core.generation import HFGenerator, render_prompt

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tok = common.load_tokenizer()
    model = common.build_model(shape, tok, device, dtype, seed=0).eval()
    n = args.prompts or (args.batch if args.quick else 2 * args.batch)
    prompts = [[{"role": "user", "content": r["question"]}] for r in common.gsm8k_rows(n)]
    prompt_len = sum(len(tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"]) for p in prompts) / n
    rows, baseline = [], None
    for name in configs + (["hf-generate-static"] if args.reference else []):
        gen = (HFStaticGenerate(model, tok, args.batch, args.max_new_tokens) if name == "hf-generate-static"
               else HFGenerator(model, tok, CONFIGS.get(name)(args.batch, args.max_new_tokens)))
        warm, outs, secs = timed(gen, prompts, args.batch, device)
        tokens = sum(c.tokens for c in outs)
        row = {"model": shape, "config": name, "tokens": tokens, "seconds": secs, "warmup_s": warm,
               "tokens_per_s": tokens / secs}
        if baseline is None:
            baseline = outs
        row["same_as_default"] = sum(a.text == b.text for a, b in zip(outs, baseline)) / len(outs)
        rows.append(row)
        common.log.info("%s %s: %.0f tokens/s (warm-up %.1f s)", shape, name, row["tokens_per_s"], warm)
    bound = bound_tokens_per_s(model.config, args, prompt_len, dtype, ceil)
    params = common.param_count(model.config)
    for row in rows:
        row["bound_tokens_per_s"] = bound
        row["speedup_vs_default"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
        if ceil.matmul_tflops:
            row["mfu"] = row["tokens_per_s"] * 2 * params / 1e12 / ceil.matmul_tflops
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def bound_tokens_per_s(cfg: Any, args: argparse.Namespace, prompt_len: float, dtype: torch.dtype,
                       ceil: common.Ceilings) -> float | None:
    if not ceil.bandwidth_gbs:
        return None
    context = prompt_len + args.max_new_tokens / 2  # average KV length over the decode
    step_bytes = common.decode_bytes(cfg, args.batch, context, torch.finfo(dtype).bits // 8)
    return args.batch * ceil.bandwidth_gbs * 1e9 / step_bytes


def table(rows: list[dict[str, Any]], gpu: bool) -> str:
    head = "| model | config | tokens/s | x default | same text as default | warm-up s | bound tokens/s |"
    head += " MFU |" if gpu else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        bound = f"{r['bound_tokens_per_s']:.0f}" if r["bound_tokens_per_s"] else "n/a"
        line = (f"| {r['model']} | {r['config']} | {r['tokens_per_s']:.0f} | {r['speedup_vs_default']:.2f} | "
                f"{100 * r['same_as_default']:.0f}% | {r['warmup_s']:.1f} | {bound} |")
        lines.append(line + (f" {100 * r['mfu']:.2f}% |" if gpu and "mfu" in r else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.setup_logging()
    started = time.time()
    device = common.pick_device(args.device)
    gpu = device.type == "cuda" and not args.quick
    models = args.models or (["smollm2-360m", "smollm2-1.7b"] if gpu else ["tiny"])
    configs = args.configs or (["hf-default", "static"] + (["static-compiled"] if device.type == "cuda" else []))
    if configs[0] != "hf-default":
        raise SystemExit("--configs: the first configuration must be hf-default (the baseline)")
    ceil = common.measure_ceilings(device)
    rows = [r for shape in models for r in bench_model(shape, configs, args, device, ceil)]
    from gsil_bench.core.provenance import collect

    report = {"command": " ".join(["python -m benchmarks.generation", *(argv or sys.argv[1:])]),
              "hardware": common.hardware_line(device), "ceilings": common.as_dict(ceil), "rows": rows,
              "provenance": collect(vars(args), seed=0, started=started,
                                    data_files={"gsm8k_train": str(common.data_dir() / "gsm8k" / "train.jsonl")})}
    if args.out:
        from gsil_bench.core.io import atomic_write_json

        atomic_write_json(args.out, report)
    print(f"\n{report['hardware']}; batch {args.batch}, {args.max_new_tokens} new tokens, greedy")
    print(f"measured ceilings: bf16 matmul {ceil.matmul_tflops} TFLOP/s, copy {ceil.bandwidth_gbs} GB/s")
    print(table(rows, device.type == "cuda"))
    for shape in models:
        best = max((r for r in rows if r["model"] == shape), key=lambda r: r["speedup_vs_default"])
        print(f"{shape}: fastest={best['config']} speedup_vs_default={best['speedup_vs_default']:.2f}")


if __name__ == "__main__":
    main()
