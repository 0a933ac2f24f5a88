"""Training throughput: gsil-bench's optimizer step vs TRL's DPOTrainer, same model,
same pairs, same batch and sequence limits, in one run.

    python -m benchmarks.training --device cpu --quick      # tiny model, a few minutes on a CPU
    python -m benchmarks.training --device cuda             # SmolLM2-360M and -1.7B shapes, bf16

Data: GSM8K training demonstrations (real) paired with the model's own greedy response
(generated once, cached under runs/bench-cache/). Each contestant runs in its own
subprocess (clean peak memory), on identical batches in identical order:
- `loop:dpo`, `loop-packed:dpo`: the shipped loop itself (`trainers.loop.train_iteration`, what
  the runner calls: fp32 weights + bf16 autocast on a GPU, accelerate, the configured optimizer,
  logging, checkpoint), with `train.packing` false (the default) and true (benchmarks.loop_peer);
- `gsil:<method>`: a stand-in step written here (weights in the benchmark dtype) mirroring the loop's step with padding-free packed batches (trainers.packing):
  one forward of real + generated, the loss from trainers.losses on cached reference
  log-probs, backward, gradient clipping, AdamW step;
- `padded:<method>`: the same step through the loop's padded collator and batch_logps;
- `trl`: trl.DPOTrainer with precompute_ref_log_probs=True (its fastest setting), no
  gradient checkpointing, constant learning rate, the same AdamW and clipping.
Prints a table and, last, `ratio_vs_trl=X`: the shipped loop's DPO pairs/s (`loop-packed:dpo`,
packing being the default) over TRL's, the smallest ratio over the model shapes run; the JSON
also has `ratio_vs_trl_stand_in` (the `gsil:dpo` stand-in's ratio, what earlier runs reported).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import common

METHODS = ("gsil-logistic", "spin", "dpo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="tiny model, few steps (CPU smoke benchmark)")
    p.add_argument("--models", nargs="+", help="model shapes (default: tiny on CPU/--quick, else 360m and 1.7b)")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--contestants", nargs="+", default=["loop", "gsil", "padded", "trl"],
                   help="loop (dpo: trainers.loop.train_iteration itself, packing off and on), gsil (the "
                        "stand-in step, packed, every method), padded (dpo: the stand-in, padded), trl (DPO)")
    p.add_argument("--batch", type=int, help="pairs per optimizer step (default 4 CPU/quick, 16 GPU)")
    p.add_argument("--steps", type=int, help="timed steps (default 3 CPU/quick, 10 GPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 1 CPU/quick, 3 GPU)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-prompt-length", type=int, default=512)
    p.add_argument("--max-new-tokens", type=int, default=256, help="length cap of the model's own responses")
    p.add_argument("--chunk", type=int, default=4096, help="tokens per chunk of the packed log-prob head")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--out", type=Path, help="write all results as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def defaults(args: argparse.Namespace, device: torch.device) -> None:
    gpu = device.type == "cuda" and not args.quick
    args.models = args.models or (["smollm2-360m", "smollm2-1.7b"] if gpu else ["tiny"])
    args.batch = args.batch or (16 if gpu else 4)
    args.steps = args.steps or (10 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)


def dtype_for(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# --- data ------------------------------------------------------------------------------


def prepare_pairs(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker "prepare": GSM8K demonstrations + the model's own greedy responses, encoded
    with the loop's tokenisation; the texts TRL tokenises itself."""
    from gsil_bench.core.scoring import render

    device = torch.device(spec["device"])
    tok = common.load_tokenizer()
    model = common.build_model(spec["shape"], tok, device, getattr(torch, spec["dtype"]), seed=0).eval()
    rows = common.gsm8k_rows(spec["n_pairs"])
    questions = [r["question"] for r in rows]
    key = f"{spec['shape']}-{spec['dtype']}-seed0"
    # the default generate: no compilation to wait for (benchmarks.generation times the fast paths)
    gens = common.own_responses(key, model, tok, questions, max_new_tokens=spec["max_new_tokens"],
                                batch_size=64, fast=False)
    # leading/trailing whitespace would merge with the template's newlines, and TRL and the loop
    # split such a boundary differently; stripped, both train on identical token ids
    gens = [g.strip() or "." for g in gens]
    limits = {"max_prompt_length": spec["max_prompt_length"], "max_length": spec["max_length"]}
    pairs = []
    for row, gen in zip(rows, gens):
        real = common.encode(tok, row["question"], row["answer"], **limits)
        fake = common.encode(tok, row["question"], gen, **limits)
        head, full_real = render(tok, [{"role": "user", "content": row["question"]}], row["answer"])
        _, full_gen = render(tok, [{"role": "user", "content": row["question"]}], gen)
        pairs.append({"real": real.input_ids, "real_start": real.response_start, "gen": fake.input_ids,
                      "gen_start": fake.response_start, "prompt": head,
                      "chosen": _turn(full_real[len(head):], tok.eos_token),
                      "rejected": _turn(full_gen[len(head):], tok.eos_token)})
    return {"pairs": pairs}


def _turn(text: str, eos: str) -> str:
    """The assistant turn up to and including its end-of-turn token (as trainers.data.encode keeps it)."""
    i = text.rfind(eos)
    return text[: i + len(eos)] if i >= 0 else text + eos


def load_pairs(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["pairs"]


def batches_of(pairs: list[dict[str, Any]], batch: int, n: int) -> list[list[dict[str, Any]]]:
    return [pairs[i * batch : (i + 1) * batch] for i in range(n)]


# --- gsil-bench's step ---------------------------------------------------------------------


def _seqs(batch: list[dict[str, Any]]) -> list[Any]:
    from gsil_bench.trainers.data import EncodedSeq

    return [EncodedSeq(p["real"], p["real_start"]) for p in batch] + [EncodedSeq(p["gen"], p["gen_start"])
                                                                       for p in batch]


def _logps(model: Any, seqs: list[Any], packed: bool, chunk: int, pad_id: int, device: torch.device) -> Any:
    if packed:
        from gsil_bench.trainers.packing import pack, packed_logps

        return packed_logps(model, pack(seqs), chunk)
    from gsil_bench.trainers.data import collate
    from gsil_bench.trainers.logprobs import batch_logps

    return batch_logps(model, collate(seqs, pad_id).to(device), 128)


def gsil_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time gsil-bench's optimizer step (packed or padded) for one method."""
    from gsil_bench.trainers.losses import LossInputs, compute_loss

    device, packed = torch.device(spec["device"]), spec["packed"]
    tok = common.load_tokenizer()
    model = common.build_model(spec["shape"], tok, device, getattr(torch, spec["dtype"]), seed=0)
    pairs = load_pairs(Path(spec["pairs"]))
    batches = batches_of(pairs, spec["batch"], spec["warmup"] + spec["steps"])
    b = spec["batch"]
    with torch.no_grad():  # reference log-probs: the starting model, once (as trainers.reference)
        model.eval()
        refs = [_logps(model, _seqs(bt), packed, spec["chunk"], tok.pad_token_id, device)[0] for bt in batches]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], fused=device.type == "cuda")
    losses, ends = [], []
    for i, (bt, ref) in enumerate(zip(batches, refs)):
        if i == spec["warmup"]:
            common.reset_peak(device)
        logps, n_tok = _logps(model, _seqs(bt), packed, spec["chunk"], tok.pad_token_id, device)
        inputs = LossInputs(logps[:b].float(), ref[:b], logps[b:].float(), ref[b:], n_tok[:b])
        out = compute_loss(spec["method"], inputs)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))  # the loop logs every step too
        common.sync(device)
        ends.append(time.perf_counter())
    return {"step_s": step_times(ends, spec["warmup"]), "peak_gib": common.peak_memory_gib(device),
            "loss_first": losses[0],
            "loss_last": losses[-1], "step_impl": "gsil_bench.trainers.packing.packed_logps" if packed else
            "gsil_bench.trainers.logprobs.batch_logps (padded)"}


def step_times(ends: list[float], warmup: int) -> list[float]:
    """Durations of the timed steps: end of step i minus end of step i-1 (data preparation included)."""
    return [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:])] if warmup else []


# --- orchestration --------------------------------------------------------------------------


WORKERS = {"prepare": prepare_pairs, "gsil": gsil_worker}


def run_worker(name: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one worker in a fresh Python process; return its JSON result."""
    spec_path, result_path = workdir / f"{name}.spec.json", workdir / f"{name}.result.json"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    cmd = [sys.executable, "-m", "benchmarks.training", "--worker", spec["kind"], "--spec", str(spec_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.REPO)
    if proc.returncode != 0 or not result_path.is_file():
        raise SystemExit(f"benchmark worker {name} failed (exit {proc.returncode}); its log is above")
    common.log.info("%s done in %.0f s", name, time.perf_counter() - t0)
    return json.loads(result_path.read_text())


def worker_main(args: argparse.Namespace) -> None:
    spec = json.loads(args.spec.read_text())
    torch.manual_seed(0)
    if spec["kind"] == "trl":
        from benchmarks.trl_peer import trl_worker

        result = trl_worker(spec)
    elif spec["kind"] == "loop":
        from benchmarks.loop_peer import loop_worker

        result = loop_worker(spec)
    else:
        result = WORKERS[spec["kind"]](spec)
    if spec["kind"] == "prepare":
        Path(spec["pairs"]).write_text(json.dumps(result))
        result = {"n_pairs": len(result["pairs"])}
    Path(spec["result"]).write_text(json.dumps(result))


def contestants(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for method in args.methods:
        if "gsil" in args.contestants:
            out.append((f"gsil:{method}", {"kind": "gsil", "method": method, "packed": True}))
        if "padded" in args.contestants and method == "dpo":
            out.append((f"padded:{method}", {"kind": "gsil", "method": method, "packed": False}))
        if "loop" in args.contestants and method == "dpo":  # the shipped loop, default and packed
            out.append((f"loop:{method}", {"kind": "loop", "method": method, "packed": False}))
            out.append((f"loop-packed:{method}", {"kind": "loop", "method": method, "packed": True}))
    if "trl" in args.contestants:
        out.append(("trl:dpo", {"kind": "trl", "method": "dpo"}))
    return out


def summarise(result: dict[str, Any], pairs: list[dict[str, Any]], spec: dict[str, Any], cfg: Any,
              ceil: common.Ceilings) -> dict[str, Any]:
    """Rates from per-step times: median step (robust to a busy shared machine) and total."""
    timed = batches_of(pairs, spec["batch"], spec["warmup"] + spec["steps"])[spec["warmup"] :]
    times = result["step_s"]
    if len(times) != len(timed) or not times:
        raise SystemExit(f"{spec['shape']} {spec['kind']}: expected {len(timed)} step times, got {len(times)}")
    toks = [sum(len(p["real"]) + len(p["gen"]) for p in bt) for bt in timed]
    padded = [2 * len(bt) * max(len(p[k]) for p in bt for k in ("real", "gen")) for bt in timed]
    flops = [3 * common.forward_flops(cfg, [len(p[k]) for p in bt for k in ("real", "gen")],
                                      [len(p[k]) - p[k + "_start"] for p in bt for k in ("real", "gen")])
             for bt in timed]
    median = statistics.median
    row = {**result, "examples_per_s": spec["batch"] / median(times),
           "tokens_per_s": median([n / t for n, t in zip(toks, times)]),
           "examples_per_s_total": spec["batch"] * len(times) / sum(times), "tokens": sum(toks),
           "time_s": sum(times), "model_tflops": median([f / t for f, t in zip(flops, times)]) / 1e12,
           "padding_fraction": 1 - sum(toks) / sum(padded)}  # of the same batches right-padded
    if ceil.matmul_tflops:
        row["mfu"] = row["model_tflops"] / ceil.matmul_tflops
    return row


def run_shape(args: argparse.Namespace, shape: str, device: torch.device, ceil: common.Ceilings,
              workdir: Path) -> list[dict[str, Any]]:
    from transformers import LlamaConfig

    base = {"device": str(device), "shape": shape, "dtype": str(dtype_for(device)).removeprefix("torch."),
            "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "max_length": args.max_length,
            "max_prompt_length": args.max_prompt_length, "chunk": args.chunk, "lr": args.lr}
    n_pairs = args.batch * (args.warmup + args.steps)
    pairs_path = workdir / f"pairs-{shape}.json"
    run_worker(f"prepare-{shape}", {**base, "kind": "prepare", "n_pairs": n_pairs, "pairs": str(pairs_path),
                                    "max_new_tokens": args.max_new_tokens}, workdir)
    pairs = load_pairs(pairs_path)
    s = common.SHAPES.get(shape)
    cfg = LlamaConfig(hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
                      num_key_value_heads=s.kv_heads, intermediate_size=s.intermediate, vocab_size=s.vocab)
    rows = []
    for label, extra in contestants(args):
        spec = {**base, **extra, "pairs": str(pairs_path)}
        result = run_worker(f"{shape}-{label.replace(':', '-')}", spec, workdir)
        rows.append({"model": shape, "contestant": label, **summarise(result, pairs, spec, cfg, ceil)})
    return rows


def table(rows: list[dict[str, Any]], gpu: bool) -> str:
    head = ("| model | contestant | pairs/s | tokens/s | peak GiB | median step s | loss first→last |"
            + (" MFU |" if gpu else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        flag = "" if r.get("same_tokens", True) else " (other tokens)"
        line = (f"| {r['model']} | {r['contestant']}{flag} | {r['examples_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                f"{r['peak_gib']:.2f} | {statistics.median(r['step_s']):.3f} | "
                f"{r['loss_first']:.4f}→{r['loss_last']:.4f} |")
        lines.append(line + (f" {100 * r['mfu']:.1f}% |" if gpu and "mfu" in r else ""))
    return "\n".join(lines)


def ratio_vs_trl(rows: list[dict[str, Any]], ours_label: str = "loop-packed:dpo") -> float | None:
    """`ours_label`'s DPO pairs/s over TRL's, the smallest over the model shapes: by default the
    shipped loop with its default packing; "gsil:dpo" gives the stand-in step's ratio."""
    ratios = []
    for model in dict.fromkeys(r["model"] for r in rows):
        ours = [r for r in rows if r["model"] == model and r["contestant"] == ours_label]
        trl = [r for r in rows if r["model"] == model and r["contestant"] == "trl:dpo"]
        if ours and trl:
            ratios.append(ours[0]["examples_per_s"] / trl[0]["examples_per_s"])
    return min(ratios) if ratios else None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        common.setup_logging()
        worker_main(args)
        return
    common.setup_logging()
    started = time.time()
    device = common.pick_device(args.device)
    defaults(args, device)
    ceil = common.measure_ceilings(device)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gsil-bench-train-") as tmp:
        for shape in args.models:
            rows.extend(run_shape(args, shape, device, ceil, Path(tmp)))
    from gsil_bench.core.provenance import collect

    report = {"command": " ".join(["python -m benchmarks.training", *(argv or sys.argv[1:])]),
              "hardware": common.hardware_line(device), "ceilings": common.as_dict(ceil), "rows": rows,
              "ratio_vs_trl": ratio_vs_trl(rows), "ratio_vs_trl_stand_in": ratio_vs_trl(rows, "gsil:dpo"),
              "provenance": collect(vars(args) | {"out": str(args.out), "spec": None}, seed=0,
                                    data_files={"gsm8k_train": str(common.data_dir() / "gsm8k" / "train.jsonl")},
                                    started=started)}
    if args.out:
        from gsil_bench.core.io import atomic_write_json

        atomic_write_json(args.out, report)
    print(f"\n{report['hardware']}; batch {args.batch} pairs, {args.steps} timed steps after {args.warmup}")
    if ceil.matmul_tflops:
        print(f"measured ceilings: bf16 matmul {ceil.matmul_tflops} TFLOP/s, copy {ceil.bandwidth_gbs} GB/s")
    print(table(rows, device.type == "cuda"))
    ratio = report["ratio_vs_trl"]
    stand_in = report["ratio_vs_trl_stand_in"]
    if stand_in is not None:
        print(f"ratio_vs_trl_stand_in={stand_in:.3f} (gsil:dpo, the benchmark's stand-in step)")
    print(f"ratio_vs_trl={ratio:.3f} (loop-packed:dpo, the shipped loop)" if ratio is not None
          else "ratio_vs_trl=n/a (TRL or the loop not run)")


if __name__ == "__main__":
    main()
