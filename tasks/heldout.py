"""Held-out likelihood: how the model scores real demonstrations it was not trained on.

Two tasks, one per source of held-out demonstrations in the training format (the chat
template, as `trainers.data.encode` renders a (prompt, response) pair for training):
- `heldout_gsm8k`: GSM8K test questions with their worked solutions (the nightly and
  smoke configs train on GSM8K train rows);
- `heldout_mt_bench`: the first turn of the MT-Bench questions that have a GPT-4
  reference answer (math, reasoning, coding), with that answer.

Per item, teacher-forced and batched (no sampling, so the numbers are exact and paired
item by item across runs):
- `logp_real`: the mean token log-prob of the demonstration's response tokens under the
  model (the primary metric; the log-likelihood of real data that the SPIN and GSIL papers
  track over iterations);
- `logp_gen`: the same for the model's own greedy response to the prompt;
- `margin`: r(real) - r(gen) with r(y) = logp_model(y) - logp_ref(y) summed over the
  response tokens, where the reference is `eval.reference_model` (the experiment's
  starting model; the runner fills it in): GSIL's classifier logit on held-out prompts;
- `accuracy`: margin > 0 (the classifier accuracy of docs/methods.md on held-out prompts).

The reference model's log-probs are computed by loading that model in the same process
and cached append-only, keyed by the reference's identity and the token ids: in
`<eval.cache_dir>/<task>/reference_logps.jsonl` when that is set, else in
`$GSIL_BENCH_CACHE/reference_logps/<identity hash>.jsonl`, so the reference scores each
held-out demonstration once, whichever checkpoint is evaluated. Without a reference model (a plain
`gsil-bench eval` with `eval.reference_model` unset) margin and accuracy are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from gsil_bench.core.io import append_jsonl, hash_obj, read_jsonl
from gsil_bench.core.models import cache_root, load_model, pick_dtype
from gsil_bench.tasks.base import TASKS, Sample, TaskError, TaskResult
from gsil_bench.tasks.context import EvalContext, model_identity
from gsil_bench.tasks.data import load_rows
from gsil_bench.tasks.stats import Metric, summarize

log = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 256  # prompt tokens kept (left-truncated), as training's max_prompt_length
MAX_RESPONSE_TOKENS = 384  # response tokens scored (a longer demonstration is cut)
SCORE_BATCH = 4  # sequences per forward pass (full-vocabulary logits: B x T x V floats)


@dataclass(frozen=True)
class Encoded:
    """A tokenised (prompt, response): input_ids[:start] is the prompt."""

    ids: tuple[int, ...]
    start: int


def encode_pair(tokenizer: Any, question: str, response: str) -> Encoded:
    """The training format: the chat template applied once, the prompt's tokens a prefix of
    the full sequence, the response ending at the end-of-turn token (trainers.data.encode's
    rules, restated here because tasks may not import trainers; a test pins them equal)."""
    if not getattr(tokenizer, "chat_template", None):
        raise TaskError(f"held-out likelihood needs a chat model: tokenizer "
                        f"{getattr(tokenizer, 'name_or_path', '')!r} has no chat template")
    prompt = [{"role": "user", "content": question}]
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):
        raise TaskError("the chat template does not render the conversation as the generation prompt followed "
                        "by the response; cannot mark the response tokens")
    p_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    r_ids = f_ids[len(p_ids):] if f_ids[: len(p_ids)] == p_ids else \
        tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    r_ids = r_ids[: len(r_ids) - r_ids[::-1].index(eos)] if eos in r_ids else [*r_ids, eos]
    p_ids = p_ids[-MAX_PROMPT_TOKENS:]
    return Encoded(tuple(p_ids) + tuple(r_ids[:MAX_RESPONSE_TOKENS]), len(p_ids))


def sequence_logps(model: Any, seqs: Sequence[Encoded], *, batch_size: int = SCORE_BATCH,
                   pad_id: int = 0) -> list[tuple[float, int]]:
    """(summed log-prob of the response tokens, number of response tokens) per sequence,
    teacher-forced, right-padded batches of similar lengths (results in input order). The
    LM head runs on the response positions only: for causal LMs whose logits are the output
    embeddings of the body's last hidden state (Llama, Mistral, Qwen, SmolLM; a test pins
    equality with the full forward pass)."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            part = [seqs[i] for i in order[b : b + batch_size]]
            width = max(len(s.ids) for s in part)
            ids = torch.full((len(part), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for r, s in enumerate(part):
                ids[r, : len(s.ids)] = torch.tensor(s.ids)
                mask[r, : len(s.ids)] = 1
            # the body once, the LM head only on the positions that predict response tokens
            hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            head = model.get_output_embeddings()
            for r, s in enumerate(part):
                logits = head(hidden[r, s.start - 1 : len(s.ids) - 1]).float()
                target = ids[r, s.start : len(s.ids)].to(device)
                total = float(torch.log_softmax(logits, dim=-1).gather(-1, target[:, None]).sum())
                out[order[b + r]] = (total, len(s.ids) - s.start)
    return out


class ReferenceScorer:
    """The reference model's log-probs, loaded lazily and cached by (identity, token ids)."""

    def __init__(self, ctx: EvalContext, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.identity = model_identity(name, ctx.cfg.generation)
        self.path = (ctx.cache_dir() / "reference_logps.jsonl" if ctx.cfg.cache_dir else
                     cache_root() / "reference_logps" / f"{hash_obj(self.identity)[:16]}.jsonl")
        self._model: Any = None

    def _key(self, s: Encoded) -> str:
        return hash_obj({"reference": self.identity, "ids": list(s.ids), "start": s.start})

    def logps(self, seqs: Sequence[Encoded]) -> list[tuple[float, int]]:
        cache = {r["key"]: (r["logp"], r["n"]) for r in read_jsonl(self.path, repair=True)} if self.path.is_file() else {}
        keys = [self._key(s) for s in seqs]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in cache}.items(), key=lambda kv: kv[1])
        if todo:
            log.info("reference %s: scoring %d of %d sequences (%d cached)", self.name, len(todo), len(seqs),
                     len(seqs) - len(todo))
            model = self._load()
            fresh = sequence_logps(model, [seqs[i] for _, i in todo])
            append_jsonl(self.path, ({"key": k, "logp": lp, "n": n} for (k, _), (lp, n) in zip(todo, fresh)))
            cache.update({k: v for (k, _), v in zip(todo, fresh)})
        return [cache[k] for k in keys]

    def _load(self) -> Any:
        if self._model is None:
            mine, _ = self.ctx.hf()
            if self.name == self.ctx.model:  # the model is its own reference (the base model's evaluation)
                self._model = mine
                return mine
            device = str(next(mine.parameters()).device)
            self._model, _ = load_model(self.name, dtype=pick_dtype("auto", device), device=device)
        return self._model


class HeldOutLikelihood:
    """One held-out demonstration set (see the module docstring)."""

    primary: ClassVar[str] = "logp_real"
    reported: ClassVar[tuple[str, ...]] = ("margin",)  # GSIL's classifier on held-out prompts
    applies_limit = False

    def __init__(self, name: str, source: str) -> None:
        self.name, self.source = name, source

    def load(self, ctx: EvalContext) -> list[dict[str, Any]]:
        if self.source == "gsm8k":
            rows = load_rows(ctx, self.name, "gsm8k/test.jsonl", hub=("openai/gsm8k", "main", "test"),
                             required=("question", "answer"))
            return [{"id": f"gsm8k-test-{i}", "question": r["question"], "answer": r["answer"]}
                    for i, r in enumerate(rows)]
        questions = load_rows(ctx, self.name, "mt_bench/question.jsonl", required=("question_id", "turns"))
        refs = load_rows(ctx, self.name, "mt_bench/reference_answer/gpt-4.jsonl", required=("question_id", "choices"))
        ref_by_id = {r["question_id"]: r["choices"][0]["turns"][0] for r in refs}
        return [{"id": f"mt_bench-{q['question_id']}", "question": q["turns"][0], "answer": ref_by_id[q["question_id"]]}
                for q in questions if q["question_id"] in ref_by_id]

    def evaluate(self, docs: list[dict[str, Any]], ctx: EvalContext) -> TaskResult:
        model, tok = ctx.hf()
        chats = [[{"role": "user", "content": d["question"]}] for d in docs]
        own = [c.text.strip() for c in ctx.generator().generate(chats, desc=f"{self.name} greedy")]
        real = [encode_pair(tok, d["question"], d["answer"]) for d in docs]
        gen = [encode_pair(tok, d["question"], o) for d, o in zip(docs, own)]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        lp_real = sequence_logps(model, real, pad_id=pad)
        lp_gen = sequence_logps(model, gen, pad_id=pad)
        ref_name = ctx.cfg.reference_model
        ref_real = ref_gen = None
        if ref_name:
            scorer = ReferenceScorer(ctx, ref_name)
            ref_real, ref_gen = scorer.logps(real), scorer.logps(gen)
        else:
            log.warning("%s: no eval.reference_model, so no margin (the runner sets it to shared.model)", self.name)
        samples = []
        for i, d in enumerate(docs):
            scores = {"logp_real": lp_real[i][0] / lp_real[i][1], "logp_gen": lp_gen[i][0] / lp_gen[i][1]}
            extra: dict[str, Any] = {"tokens_real": lp_real[i][1], "tokens_gen": lp_gen[i][1],
                                     "sum_logp_real": lp_real[i][0], "sum_logp_gen": lp_gen[i][0]}
            if ref_real is not None and ref_gen is not None:
                margin = (lp_real[i][0] - ref_real[i][0]) - (lp_gen[i][0] - ref_gen[i][0])
                scores.update(margin=margin, accuracy=float(margin > 0))
                extra.update(ref_sum_logp_real=ref_real[i][0], ref_sum_logp_gen=ref_gen[i][0])
            samples.append(Sample(d["id"], d["question"], own[i], None, d["answer"], scores, extra))
        info = {"reference_model": ref_name, "max_prompt_tokens": MAX_PROMPT_TOKENS,
                "max_response_tokens": MAX_RESPONSE_TOKENS}
        return TaskResult(samples, self.aggregate(samples, ctx), info)

    def aggregate(self, samples: list[Sample], ctx: EvalContext) -> dict[str, Metric]:
        metrics = {}
        for name in ("logp_real", "logp_gen", "margin", "accuracy"):
            vals = [s.scores[name] for s in samples if name in s.scores]
            if vals:
                metrics[name] = summarize(vals, "wilson" if name == "accuracy" else "t")
        return metrics


TASKS.add("heldout_gsm8k", lambda: HeldOutLikelihood("heldout_gsm8k", "gsm8k"), backend="hf")
TASKS.add("heldout_mt_bench", lambda: HeldOutLikelihood("heldout_mt_bench", "mt_bench"), backend="hf")
