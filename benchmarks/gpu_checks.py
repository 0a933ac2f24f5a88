"""Correctness checks of the fast paths on a CUDA GPU, run before the GPU benchmarks.

    python -m benchmarks.gpu_checks --out results.json

1. Packed (Flash-Attention varlen) vs padded (the loop's `batch_logps`) summed response
   log-probs and parameter gradients, bf16, SmolLM2-360M shape, real GSM8K pairs.
2. The compiled static-cache decode step (CUDA graphs) vs the eager static path: greedy
   tokens and per-step logits.
The unit tests check both exactly on the CPU (float32); here the question is whether the
CUDA kernels (varlen attention, compiled graphs) compute the same function in bf16.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import torch

from benchmarks import common

log = logging.getLogger("benchmarks")


def _seqs(tok: Any, n: int) -> list[Any]:
    rows = common.gsm8k_rows(n)
    return [common.encode(tok, r["question"], r["answer"], max_prompt_length=512, max_length=1024) for r in rows]


def check_packed(shape: str = "smollm2-360m", n: int = 16) -> dict[str, Any]:
    import gsil_bench.trainers.packing as packing
    from gsil_bench.trainers.data import collate
    from gsil_bench.trainers.logprobs import batch_logps

    tok = common.load_tokenizer()
    seqs = _seqs(tok, n)
    weights = torch.linspace(-1, 1, n, device="cuda")
    results: dict[str, Any] = {}
    grads = []
    for mode in ("padded", "packed"):
        model = common.build_model(shape, tok, torch.device("cuda"), torch.bfloat16, seed=0).train()
        if mode == "packed":
            calls = {"varlen": 0}
            original = packing._cuda_varlen

            def counting(*a: Any, _orig: Any = original, _calls: dict[str, int] = calls, **k: Any) -> Any:
                out = _orig(*a, **k)
                _calls["varlen"] += out is not None
                return out

            packing._cuda_varlen = counting
            logps, count = packing.packed_logps(model, packing.pack(seqs), 4096)
            packing._cuda_varlen = original
            results["varlen_calls"] = calls["varlen"]
        else:
            logps, count = batch_logps(model, collate(seqs, tok.pad_token_id).to("cuda"), 128)
        (logps.float() * weights).sum().backward()
        grads.append(torch.cat([p.grad.float().flatten() for p in model.parameters()]))
        results[mode] = logps.detach().float().cpu()
        results[f"{mode}_tokens"] = count.cpu().tolist()
        del model
        torch.cuda.empty_cache()
    pad, pk = results.pop("padded"), results.pop("packed")
    g_pad, g_pk = grads
    results.update(
        logps_max_rel_err=float(((pk - pad).abs() / pad.abs()).max()),
        logps_mean_abs=float(pad.abs().mean()),
        same_token_counts=results.pop("padded_tokens") == results.pop("packed_tokens"),
        grad_rel_err=float((g_pk - g_pad).norm() / g_pad.norm()),
        grad_cosine=float(torch.nn.functional.cosine_similarity(g_pk, g_pad, dim=0)),
    )
    results["ok"] = bool(results["same_token_counts"] and results["logps_max_rel_err"] < 2e-2
                         and results["grad_cosine"] > 0.99 and results["varlen_calls"] > 0)
    return results


def check_compiled_decode(shape: str = "smollm2-360m", n: int = 16, new: int = 64) -> dict[str, Any]:
    """Compiled vs eager bf16 decode, each against a float32 copy of the same weights: a random
    model's logits are nearly flat, so greedy paths may part at near-ties; the test is that the
    compiled step is no further from float32 than the eager bf16 step is."""
    import copy

    from gsil_bench.core.generation import StaticDecoder, left_pad, render_prompt

    tok = common.load_tokenizer()
    model = common.build_model(shape, tok, torch.device("cuda"), torch.bfloat16, seed=0).eval()
    fp32 = copy.deepcopy(model).float()
    prompts = [[{"role": "user", "content": r["question"]}] for r in common.gsm8k_rows(n)]
    ids, mask = left_pad([tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts],
                         tok.pad_token_id)
    ids, mask = ids.cuda(), mask.cuda()
    out, scores = {}, {}
    for name, m, compiled in (("fp32", fp32, False), ("eager", model, False), ("compiled", model, True)):
        dec = StaticDecoder(m, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=new,
                            batch_size=n, compile=compiled)
        kept: list[torch.Tensor] = []
        with torch.no_grad():
            if compiled:
                dec.run(ids, mask)  # compile + capture
            out[name] = dec.run(ids, mask, scores=kept).cpu()
        scores[name] = torch.stack(kept).float().cpu()  # [steps, n, vocab]

    def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
        diff = (a != b).any(dim=0).nonzero()
        return int(diff[0]) if len(diff) else new

    steps = min(common_prefix(out["fp32"], out["eager"]), common_prefix(out["fp32"], out["compiled"])) + 1
    err = {k: (scores[k][:steps] - scores["fp32"][:steps]).abs().max().item() for k in ("eager", "compiled")}
    return {"same_rows_compiled_vs_eager": (out["compiled"] == out["eager"]).all(dim=1).float().mean().item(),
            "same_rows_eager_vs_fp32": (out["eager"] == out["fp32"]).all(dim=1).float().mean().item(),
            "compared_steps": steps, "eager_vs_fp32_max_abs": err["eager"],
            "compiled_vs_fp32_max_abs": err["compiled"], "logits_mean_abs": scores["fp32"].abs().mean().item(),
            "ok": err["compiled"] <= 1.5 * err["eager"] + 1e-3}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_checks")
    p.add_argument("--out")
    p.add_argument("--only", nargs="+", choices=["packed_vs_padded", "compiled_decode"])
    args = p.parse_args()
    common.setup_logging()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_checks needs a CUDA GPU")
    report = {}
    for name, fn in (("packed_vs_padded", check_packed), ("compiled_decode", check_compiled_decode)):
        if args.only and name not in args.only:
            continue
        try:
            report[name] = fn()
        except Exception as err:  # report every check, even when one breaks
            log.exception("%s failed", name)
            report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        print(name, json.dumps(report[name]))
    if args.out:
        from gsil_bench.core.io import atomic_write_json

        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
