"""Held-out likelihood: how the model scores real demonstrations it was not trained on.

Two tasks, one per source of held-out demonstrations in the training format (the chat
template, as `trainers.data.encode` renders a (prompt, response) pair for training):
- `heldout_gsm8k`: GSM8K test questions with their worked solutions (the nightly and
  smoke configs train on GSM8K train rows);
- `heldout_mt_bench`: the first turn of the MT-Bench questions that have a GPT-4
  reference answer (math, reasoning, coding), with that answer.

Per item, teacher-forced and batched (no sampling, so the numbers are exact and paired
item by item across runs), encoded by core.scoring, the code training runs, and scored by
core.prefix (core.scoring's head, each prompt through the model once for the demonstration,
the model's own answer and, on the hf backend, the generation of that answer; the reference
keeps its prompts across evaluations):
- `logp_real`: the mean token log-prob of the demonstration's response tokens under the
  model (the primary metric; the log-likelihood of real data that the SPIN and GSIL papers
  track over iterations);
- `logp_gen`: the same for the model's own greedy response to the prompt;
- `margin`: r(real) - r(gen) with r(y) = logp_model(y) - logp_ref(y) summed over the
  response tokens, where the reference is `eval.reference_model` (the experiment's
  starting model; the runner fills it in): GSIL's classifier logit on held-out prompts;
- `accuracy`: margin > 0 (the classifier accuracy of docs/methods.md on held-out prompts).

The reference model's log-probs are computed by loading that model in the same process (once
per process: core.resident keeps it for the next evaluation steps; when the evaluated model is
its own reference, as the starting model's evaluation is, its own log-probs are the reference's)
and cached append-only, keyed by the reference's identity and the token ids: in
`<eval.cache_dir>/<task>/reference_logps.jsonl` when that is set, else in
`$GSIL_BENCH_CACHE/reference_logps/<identity hash>.jsonl`, so the reference scores each
held-out demonstration once, whichever checkpoint is evaluated. Without a reference model (a plain
`gsil-bench eval` with `eval.reference_model` unset) margin and accuracy are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from gsil_bench.core.facts import MetricFacts, proportion
from gsil_bench.core.io import append_jsonl, hash_obj, read_jsonl
from gsil_bench.core.models import cache_root, load_model, pick_dtype
from gsil_bench.core.prefix import Prefixes, score_shared
from gsil_bench.core.scoring import EncodedSeq, encode
from gsil_bench.tasks.base import Sample, TaskError, TaskInfo, TaskResult, register_task
from gsil_bench.tasks.context import EvalContext, model_identity
from gsil_bench.tasks.data import load_rows
from gsil_bench.tasks.stats import Metric, summarize

log = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 256  # prompt tokens kept (left-truncated), as training's max_prompt_length
MAX_RESPONSE_TOKENS = 384  # response tokens scored (a longer demonstration is cut)
SCORE_BATCH = 4  # sequences per forward pass
_PROMPTS: dict[str, Prefixes] = {}  # a reference's computed held-out prompts, per reference (identity, device, dtype)


def encode_pair(tokenizer: Any, question: str, response: str) -> EncodedSeq:
    """A held-out (question, demonstration) as training encodes it (core.scoring.encode, the one
    encoder): the chat template once, the prompt's last MAX_PROMPT_TOKENS, the response's first
    MAX_RESPONSE_TOKENS ending at the end-of-turn token."""
    if not getattr(tokenizer, "chat_template", None):
        raise TaskError(f"held-out likelihood needs a chat model: tokenizer "
                        f"{getattr(tokenizer, 'name_or_path', '')!r} has no chat template")
    return encode(tokenizer, [{"role": "user", "content": question}], response, max_prompt_length=MAX_PROMPT_TOKENS,
                  max_length=MAX_PROMPT_TOKENS + MAX_RESPONSE_TOKENS, max_response_length=MAX_RESPONSE_TOKENS)



class ReferenceScorer:
    """The reference model's log-probs, loaded lazily and cached by (identity, token ids)."""

    def __init__(self, ctx: EvalContext, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.revision = ctx.revision_of(name)  # shared.model_revision pins the reference too
        self.identity = model_identity(name, ctx.cfg.generation, self.revision)
        self.path = (ctx.cache_dir() / "reference_logps.jsonl" if ctx.cfg.cache_dir else
                     cache_root() / "reference_logps" / f"{hash_obj(self.identity)[:16]}.jsonl")
        self._model: Any = None

    def _key(self, s: EncodedSeq) -> str:
        return hash_obj({"reference": self.identity, "ids": list(s.input_ids), "start": s.response_start})

    def _cached(self) -> dict[str, tuple[float, int]]:
        return {r["key"]: (r["logp"], r["n"]) for r in read_jsonl(self.path, repair=True)} if self.path.is_file() else {}

    def is_evaluated(self) -> bool:
        """The reference is the evaluated model itself (the starting model's evaluation)."""
        return self.name == self.ctx.model

    def remember(self, seqs: Sequence[EncodedSeq], logps: Sequence[tuple[float, int]]) -> None:
        """Cache log-probs the evaluated model just computed, when it is the reference: the same
        computation (core.prefix.score_shared), so it is not run twice."""
        assert self.is_evaluated()
        cache = self._cached()
        fresh = {self._key(s): lp for s, lp in zip(seqs, logps)}
        append_jsonl(self.path, ({"key": k, "logp": lp, "n": n} for k, (lp, n) in fresh.items() if k not in cache))

    def logps(self, seqs: Sequence[EncodedSeq]) -> list[tuple[float, int]]:
        cache = self._cached()
        keys = [self._key(s) for s in seqs]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in cache}.items(), key=lambda kv: kv[1])
        if todo:
            log.info("reference %s: scoring %d of %d sequences (%d cached)", self.name, len(todo), len(seqs),
                     len(seqs) - len(todo))
            model = self._load()
            fresh = score_shared(model, [seqs[i] for _, i in todo], batch_size=SCORE_BATCH, keep=self._prompts(model))
            append_jsonl(self.path, ({"key": k, "logp": lp, "n": n} for (k, _), (lp, n) in zip(todo, fresh)))
            cache.update({k: v for (k, _), v in zip(todo, fresh)})
        return [cache[k] for k in keys]

    def _prompts(self, model: Any) -> Prefixes:
        """The reference's computed prompts, kept for the whole process: every checkpoint's evaluation
        asks it about the same held-out prompts (core.prefix)."""
        key = hash_obj([self.identity, str(next(model.parameters()).device), str(next(model.parameters()).dtype)])
        return _PROMPTS.setdefault(key, Prefixes())

    def _load(self) -> Any:
        if self._model is None:
            mine, _ = self.ctx.hf()
            if self.is_evaluated():  # the model is its own reference (the base model's evaluation)
                self._model = mine
                return mine
            device = str(next(mine.parameters()).device)
            self._model, _ = load_model(self.name, revision=self.revision, dtype=pick_dtype("auto", device),
                                        device=device)
        return self._model


class HeldOutLikelihood:
    """One held-out demonstration set (see the module docstring)."""

    METRICS: ClassVar[dict[str, MetricFacts]] = {
        "logp_real": MetricFacts("log-prob of demonstrations (nats/token)", "mean token log-probability the model "
                                 "gives the held-out demonstration, teacher-forced", tolerance=0.01),
        "logp_gen": MetricFacts("log-prob of own answers (nats/token)", "mean token log-probability of the model's "
                                "own greedy answer to the same prompt", tolerance=0.01),
        "margin": MetricFacts("GSIL margin (nats)", "r(real) - r(generated), r = log pi_model - log pi_reference "
                              "summed over the response: GSIL's classifier on held-out prompts", tolerance=0.5),
        "accuracy": proportion("classifier accuracy", "share of held-out prompts with margin > 0"),
    }
    ABOUT = {"gsm8k": "GSM8K test questions with their worked solutions",
             "mt_bench": "MT-Bench first turns with GPT-4's reference answers"}

    def __init__(self, name: str, source: str) -> None:
        self.name, self.source = name, source
        self.info = TaskInfo(
            name, display=f"held-out {'GSM8K' if source == 'gsm8k' else 'MT-Bench'}",
            about=f"likelihood of held-out demonstrations: {self.ABOUT[source]}, no sampling, no judge",
            primary="logp_real", reported=("margin",),  # the margin: GSIL's classifier on held-out prompts
            metrics=self.METRICS, backend="hf")

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
        generator, prompts = ctx.generator(), Prefixes(owner=model)
        with generator.sharing(prompts):  # the hf backend computes each prompt once, for its answer and the scoring
            own = [c.text.strip() for c in generator.generate(chats, desc=f"{self.name} greedy")]
        real = [encode_pair(tok, d["question"], d["answer"]) for d in docs]
        gen = [encode_pair(tok, d["question"], o) for d, o in zip(docs, own)]
        # each prompt once for its two answers (and not again where the generation computed it)
        both = score_shared(model, [*real, *gen], batch_size=SCORE_BATCH, keep=prompts)
        lp_real, lp_gen = both[: len(real)], both[len(real) :]
        ref_name = ctx.cfg.reference_model
        ref_real = ref_gen = None
        if ref_name:
            scorer = ReferenceScorer(ctx, ref_name)
            if scorer.is_evaluated():  # its own reference: its log-probs are the reference's (margin 0), once
                scorer.remember([*real, *gen], [*lp_real, *lp_gen])
                ref_real, ref_gen = lp_real, lp_gen
            else:
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


register_task(lambda: HeldOutLikelihood("heldout_gsm8k", "gsm8k"))
register_task(lambda: HeldOutLikelihood("heldout_mt_bench", "mt_bench"))
