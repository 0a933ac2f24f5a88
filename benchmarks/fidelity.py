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


def s_tokenizer() -> Any:
    """tests/helpers.bos_tokenizer: a Llama-style tokenizer whose BOS is a real `<s>` (id 1), built offline."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import bos_tokenizer

    return bos_tokenizer()


def bos_ids(data_dir: Path, n: int) -> dict[str, Any]:
    """On a `<s>` tokenizer: how the ids each protocol sends differ with and without BOS (every request of the
    leaderboard's GSM8K under lm-eval 0.4.13's default against both papers' harnesses; MT-Bench turn-1 prompts and
    HumanEval prompts as FastChat and Eurus send them against no BOS). "one_leading_bos": the only difference is
    one `<s>` in front."""
    from lm_eval.models.huggingface import HFLM

    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import prompt_ids
    from gsil_bench.core.io import read_jsonl
    from gsil_bench.core.models import tiny_llama
    from gsil_bench.tasks.protocols import eurus_prompt, zephyr_conversation

    tok = s_tokenizer()
    model = tiny_llama(tok)
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n"
                    for r in read_jsonl(data_dir / "gsm8k/train.jsonl")[:5])
    contexts = [shots + f"Question: {r['question']}\nAnswer:" for r in read_jsonl(data_dir / "gsm8k/test.jsonl")]
    default, ours = (HFLM(pretrained=model, tokenizer=tok, batch_size=1, device="cpu", add_bos_token=b)
                     for b in (None, False))
    pairs = {"leaderboard_gsm8k": [(default.tok_encode(c), ours.tok_encode(c)) for c in contexts]}
    mt = [zephyr_conversation([(q["turns"][0], None)]) for q in read_jsonl(data_dir / "mt_bench/question.jsonl")]
    he = [eurus_prompt(tok, p["prompt"], p["entry_point"]) for p in read_jsonl(data_dir / "humaneval/HumanEval.jsonl")]
    for name, prompts in (("mt_bench_turn1", mt), ("humaneval_gsil", he)):
        pairs[name] = [(prompt_ids(tok, p, GenerationConfig(bos="tokenizer")), prompt_ids(tok, p, GenerationConfig()))
                       for p in prompts]
    return {name: {"requests": len(p), "differ": sum(a != b for a, b in p),
                   "one_leading_bos": sum(a == [tok.bos_token_id, *b] for a, b in p)} for name, p in pairs.items()}


def _b281b09_order(n_test: int, n_train: int) -> tuple[list[int], list[list[int]]]:
    """b281b09's test order and each position's five exemplar indices (evaluator.py:213-240, base.py:569-573)."""
    import random

    order, rnd = list(range(n_test)), random.Random(42)
    rnd.shuffle(order)
    return order, [rnd.sample(range(n_train), 5) for _ in order]


def gsm8k_exemplars(model: Any, tok: Any, data_dir: Path, n: int) -> dict[str, Any]:
    """GSM8K v0.3's exemplars: b281b09's choice against lm-eval 0.4.13's default (file order, Random(1234) per
    task), over the whole test set; and on the embedded model, the gold answers' log-likelihood per token on the
    first `n` documents of b281b09's order under each choice (no BOS, as the protocol)."""
    import random

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from gsil_bench.core.io import read_jsonl

    train, test = read_jsonl(data_dir / "gsm8k/train.jsonl"), read_jsonl(data_dir / "gsm8k/test.jsonl")
    order, ours = _b281b09_order(len(test), len(train))
    rnd = random.Random(1234)
    default = [rnd.sample(range(len(train)), 5) for _ in test]  # doc i (file order) gets the i-th draw
    by_doc = dict(zip(order, ours))
    differ = sum(set(by_doc[i]) != set(default[i]) for i in range(len(test)))
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu", add_bos_token=False)
    text = lambda r: f"Question: {r['question']}\nAnswer:"  # noqa: E731
    out: dict[str, Any] = {"test_docs": len(test), "exemplars_differ": differ}
    for name, shots in (("b281b09", [by_doc[i] for i in order[:n]]), ("lm_eval_0.4.13", [default[i] for i in order[:n]])):
        reqs = [Instance("loglikelihood", {}, ("\n\n".join(text(train[j]) + " " + train[j]["answer"] for j in s)
                                               + "\n\n" + text(test[i]), " " + test[i]["answer"]), k)
                for k, (i, s) in enumerate(zip(order[:n], shots))]
        ll = lm.loglikelihood(reqs, disable_tqdm=True)
        toks = sum(len(tok(" " + test[i]["answer"], add_special_tokens=False)["input_ids"]) for i in order[:n])
        out[name] = {"loglik_per_token": sum(x[0] for x in ll) / toks}
    out["difference"] = out["b281b09"]["loglik_per_token"] - out["lm_eval_0.4.13"]["loglik_per_token"]
    return out


def dpo_text(data_dir: Path, n: int) -> dict[str, Any]:
    """The DPO baseline's token ids, the old "chat" encoding against "trl" (handbook + TRL v0.9.6), on a `<s>`
    tokenizer with zephyr's template, for `n` GSM8K rows as UltraFeedback pairs (chosen: the answer; rejected:
    the next row's) at 1024 / 512; and the handbook's HumanEval decontamination on the code data sets here."""
    import json

    from gsil_bench.core.io import read_jsonl
    from gsil_bench.trainers.data import encode
    from gsil_bench.trainers.handbook import contaminated, encode_trl, humaneval_strings, truncate_trl

    tok = s_tokenizer()
    rows = read_jsonl(data_dir / "gsm8k/train.jsonl")[: n + 1]
    old, new, cut = [], [], {"chat": 0, "trl": 0}
    for r, nxt in zip(rows, rows[1:]):
        prompt = [{"role": "user", "content": r["question"]}]
        for a in (r["answer"], nxt["answer"]):
            old.append(encode(tok, prompt, a, max_prompt_length=512, max_length=1024))
            cut["chat"] += old[-1] != encode(tok, prompt, a, max_prompt_length=10**6, max_length=10**7)
        whole = (encode_trl(tok, prompt, r["answer"]), encode_trl(tok, prompt, nxt["answer"]))
        pair = truncate_trl(*whole, max_prompt_length=512, max_length=1024)
        new += list(pair)
        cut["trl"] += sum(a != b for a, b in zip(pair, whole))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    strings = humaneval_strings(data_dir)
    code = {"code_alpaca": [r["output"] for r in json.loads((data_dir / "code_alpaca/code_alpaca_2k.json").read_text())],
            "gpteacher_codegen": [r["response"] for r in
                                  json.loads((data_dir / "gpteacher_codegen/codegen-instruct.json").read_text())]}
    return {"sequences": len(new), "ids_differ": sum(a.input_ids != b.input_ids for a, b in zip(old, new) if b),
            "bos_first": {"chat": mean([s.input_ids[0] == tok.bos_token_id for s in old]),
                          "trl": mean([s is not None and s.input_ids[0] == tok.bos_token_id for s in new])},
            "mean_labels": {"chat": mean([s.n_response for s in old]), "trl": mean([s.n_response for s in new if s])},
            "mean_prompt": {"chat": mean([s.response_start for s in old]), "trl": mean([s.response_start for s in new if s])},
            "truncated": cut,
            "decontaminated": {k: {"rows": len(v), "dropped": sum(contaminated(t, strings) for t in v)}
                               for k, v in code.items()}}


def self_play_decoding(model: Any, tok: Any, data_dir: Path, n: int) -> dict[str, Any]:
    """Greedy self-play responses (the raw SPIN/GSIL prompt, 24 new tokens) as we make them (length-sorted batches
    of 8, special tokens skipped, then the official post-processing) against GSIL gsil/generate.py:43-60 and
    :99-119 (data order, batches of 4 left-padded to a multiple of 8, decoded with every special token kept, then
    `.replace(eos, "").lstrip()`), in fp32 and in bf16 weights."""
    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import HFGenerator
    from gsil_bench.core.io import read_jsonl
    from gsil_bench.trainers.official import SPIN_PROMPT_TEMPLATE, official_response

    prompts = [SPIN_PROMPT_TEMPLATE.replace("{prompt}", r["question"]) for r in read_jsonl(data_dir / "gsm8k/train.jsonl")[:n]]
    out: dict[str, Any] = {"n": n, "new_tokens": 24}
    for name, m in (("fp32", model), ("bf16", copy.deepcopy(model).to(torch.bfloat16))):
        ours = [official_response(c.text, tok.eos_token) for c in
                HFGenerator(m, tok, GenerationConfig(max_new_tokens=24, batch_size=8)).generate(prompts)]
        theirs, specials = [], 0
        tok.padding_side = "left"
        for at in range(0, len(prompts), 4):
            batch = tok(prompts[at : at + 4], padding="longest", pad_to_multiple_of=8, add_special_tokens=False,
                        return_tensors="pt")
            with torch.no_grad():
                gen = m.generate(**batch, do_sample=False, max_new_tokens=24, pad_token_id=tok.eos_token_id)
            for row in tok.batch_decode(gen[:, batch["input_ids"].shape[1]:]):
                specials += any(t in row.replace(tok.eos_token, "") for t in tok.all_special_tokens)
                theirs.append(row.replace(tok.eos_token, "").lstrip())
        tok.padding_side = "right"
        out[name] = {"identical": sum(a == b for a, b in zip(ours, theirs)), "with_other_special_tokens": specials}
    return out


def spin_epochs(model_dir: str, data_dir: Path, n: int) -> dict[str, Any]:
    """SPIN's first round on `n` GSM8K demonstrations with paper-spin's recipe (RMSprop, lr 5e-7, linear, warm-up
    0.1, beta 0.1, 8 pairs per step) on the embedded model, trained 2 epochs (the paper; ours) and 6 (SPIN's scripts):
    the last optimizer step's reward margin r(real) - r(generated) and SPIN loss (its batch of 8 pairs, as the
    loop logs them). fp32 weights and short lengths (256 / 128, 64 new tokens), to fit a CPU."""
    import tempfile

    from gsil_bench.core.io import read_jsonl
    from gsil_bench.core.loading import experiment_from_dict
    from gsil_bench.trainers.api import train_method

    out: dict[str, Any] = {"n": n}
    for epochs in (2, 6):
        shared = {"model": model_dir, "train_data": {"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": n,
                                                     "encoding": "spin"},
                  "optimizer": {"name": "rmsprop", "lr": 5e-7}, "schedule": {"name": "linear", "warmup_ratio": 0.1},
                  "train": {"batch_size": 2, "grad_accum": 4, "epochs": epochs, "max_length": 256,
                            "max_prompt_length": 128, "precision": "fp32", "packing": False, "log_every": 1,
                            "logprob_chunk": 32},
                  "generation": {"prompt_template": "### Instruction: {prompt}\n\n### Response: ", "max_new_tokens": 64,
                                 "batch_size": 8}, "iterations": 1}
        cfg = experiment_from_dict({"name": "epochs", "shared": shared, "methods": [{"loss": "spin", "params": {"beta": 0.1}}]})
        with tempfile.TemporaryDirectory() as tmp:
            (res,) = train_method(cfg, "spin", 0, Path(tmp), data_dir=str(data_dir))
            last = read_jsonl(res.folder / "metrics.jsonl")[-1]
        out[f"epochs_{epochs}"] = {"steps": last["step"], "final_step_margin": last.get("rewards/margin"),
                                   "final_step_loss": last["loss"]}
    return out


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
    "bos_ids": lambda model, tok, data, n: bos_ids(data, n),
    "gsm8k_exemplars": lambda model, tok, data, n: gsm8k_exemplars(model, tok, data, n),
    "dpo_text": lambda model, tok, data, n: dpo_text(data, 200),
    "self_play_decoding": lambda model, tok, data, n: self_play_decoding(model, tok, data, 16),
    "spin_epochs": lambda model, tok, data, n: spin_epochs(MODEL, data, 16),  # 2 steps per epoch
}


if __name__ == "__main__":
    sys.exit(main())
