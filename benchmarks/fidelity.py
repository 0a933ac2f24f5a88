"""Measured size of the remaining differences from the official releases, on the embedded model (CPU).

    python -m gsil_bench.benchmarks.fidelity [--items 10] [--stages a,b] [--out benchmarks/results/.../fidelity.json]

The numbers docs/reproduction.md's fidelity table quotes. SmolLM2's tokenizer adds no BOS; "with BOS" means its
own BOS token prepended, as lm-eval 0.4.13 (left alone) and FastChat/vLLM-from-strings do on a tokenizer that
adds one (zephyr's). Measures:
- `leaderboard_bos`: GSM8K (the v0.3 prompt, 5-shot) through lm-eval's HFLM: mean log-likelihood per token of
  the gold answer, and exact match of greedy answers (protocol openllm_gsm8k), without and with BOS;
- `generation_bos`: greedy HumanEval (Eurus prompt) continuations without and with BOS: share identical;
- `self_play_whitespace`: share of greedy self-play responses (the official raw prompt) starting with whitespace,
  which the official post-processing strips;
- `bf16_update_lost`: share of the model's weights, held in bf16, that an update of the given size leaves
  unchanged (RMSprop at lr 5e-7: ~10x lr on the first step, ~lr later);
- `autocast_vs_bf16`: reference log-probs of demonstrations, fp32 weights under bf16 autocast against bf16
  weights (DeepSpeed's bf16 mode): mean |difference| of the summed response log-prob.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch

MODEL = "embedded:smollm2-135m-instruct"


def bos_adding(tok: Any) -> Any:
    """A copy of `tok` whose post-processor prepends its BOS token (as zephyr's does)."""
    from tokenizers import processors

    out = copy.deepcopy(tok)
    bos = out.bos_token
    out.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, out.bos_token_id)])
    return out


def leaderboard_bos(model: Any, tok: Any, data_dir: Path, n: int) -> dict[str, Any]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from gsil_bench.core.io import read_jsonl
    from gsil_bench.tasks.protocols import GSM8K_V03

    train, test = read_jsonl(data_dir / "gsm8k/train.jsonl")[:5], read_jsonl(data_dir / "gsm8k/test.jsonl")[:n]
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in train)
    until = GSM8K_V03["generation_kwargs"]["until"]
    out: dict[str, Any] = {}
    for add_bos in (False, True):
        lm = HFLM(pretrained=model, tokenizer=bos_adding(tok), batch_size=4, device="cpu", add_bos_token=add_bos)
        ctxs = [shots + f"Question: {r['question']}\nAnswer:" for r in test]
        ll = lm.loglikelihood([Instance("loglikelihood", {}, (c, " " + r["answer"]), i)
                               for i, (c, r) in enumerate(zip(ctxs, test))], disable_tqdm=True)
        toks = [len(tok(" " + r["answer"], add_special_tokens=False)["input_ids"]) for r in test]
        gens = lm.generate_until([Instance("generate_until", {}, (c, {"until": until, "max_gen_toks": 64,
                                                                      "do_sample": False}), i)
                                  for i, c in enumerate(ctxs)], disable_tqdm=True)
        correct = [_v03_correct(g, r["answer"]) for g, r in zip(gens, test)]
        out["with_bos" if add_bos else "without_bos"] = {
            "loglik_per_token": sum(x[0] for x in ll) / sum(toks), "exact_match": sum(correct) / len(correct),
            "answers": gens}
    a, b = out["without_bos"]["answers"], out["with_bos"]["answers"]
    out["same_answers"] = sum(x == y for x, y in zip(a, b)) / len(a)
    return out


def _v03_correct(completion: str, answer: str) -> bool:
    import re

    def extract(text: str) -> str:
        m = re.search(r"#### (\-?[0-9\.\,]+)", text)
        return m.group(1).strip().replace(",", "") if m else "[invalid]"

    return extract(completion) == extract(answer)


def _greedy(model: Any, ids: list[int], new: int, eos: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=new, pad_token_id=eos)
    return out[0, len(ids):].tolist()


def generation_bos(model: Any, tok: Any, data_dir: Path, n: int) -> dict[str, Any]:
    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import prompt_ids
    from gsil_bench.core.io import read_jsonl
    from gsil_bench.tasks.protocols import eurus_prompt

    btok = bos_adding(tok)
    same = 0
    problems = read_jsonl(data_dir / "humaneval/HumanEval.jsonl")[:n]
    for p in problems:
        text = eurus_prompt(btok, p["prompt"], p["entry_point"])
        outs = [_greedy(model, prompt_ids(btok, text, GenerationConfig(bos=b)), 48, tok.eos_token_id)
                for b in ("never", "tokenizer")]
        same += outs[0] == outs[1]
    return {"identical_continuations": same / len(problems), "n": len(problems), "new_tokens": 48}


def self_play_whitespace(model: Any, tok: Any, data_dir: Path, n: int) -> dict[str, Any]:
    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import HFGenerator
    from gsil_bench.core.io import read_jsonl
    from gsil_bench.trainers.official import SPIN_PROMPT_TEMPLATE

    rows = read_jsonl(data_dir / "gsm8k/train.jsonl")[:n]
    prompts = [SPIN_PROMPT_TEMPLATE.replace("{prompt}", r["question"]) for r in rows]
    comps = HFGenerator(model, tok, GenerationConfig(max_new_tokens=24, batch_size=8)).generate(prompts)
    lead = [c.text[: len(c.text) - len(c.text.lstrip())] for c in comps]
    return {"leading_whitespace": sum(bool(x) for x in lead) / len(lead), "n": len(lead),
            "examples": sorted({repr(x) for x in lead})}


def bf16_update_lost(model: Any) -> dict[str, float]:
    w = torch.cat([p.detach().flatten() for p in model.parameters()]).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, w.shape, generator=gen).to(torch.float32) * 2 - 1
    return {f"{step:g}": float(((w.float() + step * sign).to(torch.bfloat16) == w).float().mean())
            for step in (5e-7, 5e-6, 1e-4)}


def autocast_vs_bf16(model: Any, tok: Any, data_dir: Path, n: int) -> dict[str, float]:
    from gsil_bench.core.io import read_jsonl
    from gsil_bench.trainers.data import collate, encode
    from gsil_bench.trainers.logprobs import batch_logps

    rows = read_jsonl(data_dir / "gsm8k/train.jsonl")[:n]
    seqs = [encode(tok, [{"role": "user", "content": r["question"]}], r["answer"], max_prompt_length=256,
                   max_length=512) for r in rows]
    batch = collate(seqs, tok.pad_token_id)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = batch_logps(model, batch, 128)[0]
    with torch.no_grad():
        fp32 = batch_logps(model, batch, 128)[0]
        pure = batch_logps(copy.deepcopy(model).to(torch.bfloat16), batch, 128)[0]
    return {"mean_abs_autocast_vs_bf16": float((mixed - pure).abs().mean()),
            "mean_abs_autocast_vs_fp32": float((mixed - fp32).abs().mean()),
            "mean_abs_bf16_vs_fp32": float((pure - fp32).abs().mean()), "mean_logp": float(fp32.mean()), "n": n}


def main(argv: list[str] | None = None) -> int:
    from gsil_bench.core.datadir import data_dir as resolve_data_dir
    from gsil_bench.core.models import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10, help="GSM8K items of leaderboard_bos")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, of: " + ", ".join(STAGES))
    ap.add_argument("--out", default=None, help="a JSON file, updated after every stage (existing stages kept)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    data_dir = resolve_data_dir()
    if data_dir is None:
        raise SystemExit("set GSIL_DATA_DIR to the data directory")
    model, tok = load_model(MODEL, dtype=torch.float32, device="cpu")
    out = Path(args.out) if args.out else None
    result = json.loads(out.read_text()) if out is not None and out.is_file() else {"model": MODEL}
    for stage in args.stages.split(","):
        result[stage] = STAGES[stage](model, tok, data_dir, args.items)
        if out is not None:  # partial results survive a stopped run
            out.write_text(json.dumps(result, indent=1) + "\n")
        print(stage, json.dumps(result[stage]), flush=True)
    return 0


STAGES = {
    "bf16_update_lost": lambda model, tok, data, n: bf16_update_lost(model),
    "autocast_vs_bf16": lambda model, tok, data, n: autocast_vs_bf16(model, tok, data, 8),
    "self_play_whitespace": lambda model, tok, data, n: self_play_whitespace(model, tok, data, 16),
    "generation_bos": lambda model, tok, data, n: generation_bos(model, tok, data, 5),
    "leaderboard_bos": lambda model, tok, data, n: leaderboard_bos(model, tok, data, n),
}


if __name__ == "__main__":
    sys.exit(main())
