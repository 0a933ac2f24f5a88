"""MT-Bench (Zheng et al. 2023): 80 two-turn questions, single-answer grading by an LLM judge.

Protocol (FastChat llm_judge): the model answers turn 1, then turn 2 with its own first
answer in the conversation. The judge rates each turn 1-10 with FastChat's prompts from
<data dir>/mt_bench/judge_prompts.jsonl: turn 1 with `single-v1`, turn 2 with
`single-v1-multi-turn`; math, reasoning and coding questions use `single-math-v1`
(-multi-turn) with the GPT-4 reference answer (reference_answer/gpt-4.jsonl). The rating is
`[[x]]` (else `[x]`); a judgment without one is kept and counted in `missing`; one with
several different ratings (e.g. quoting an answer that contains `[[10]]`) is counted in
`ambiguous` and not scored, unless eval.judge.rating_rule is `fastchat` (FastChat's
first match, for exact comparisons with published numbers).

Metrics: `score` (FastChat's: the mean of all parsed turn ratings; 95% interval by a
question-level cluster bootstrap), `score/turn1`, `score/turn2` (t intervals),
`score/<category>`, `missing` (turns without a rating) and `ambiguous` (turns with
several different ratings). Answers use
EvalConfig.generation (greedy by default; FastChat samples some categories at
temperature 0.7, which this task does not, for reproducible comparisons; the task
`mt_bench_fastchat` in tasks.protocols answers exactly as FastChat does).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from gsil_bench.core.config import JudgeConfig
from gsil_bench.core.facts import MetricFacts
from gsil_bench.tasks.base import Registered, Sample, TaskError, TaskInfo, TaskResult, register_task
from gsil_bench.tasks.context import EvalContext
from gsil_bench.tasks.data import load_rows
from gsil_bench.tasks.judge import HFJudge, Judge, JudgmentStore, make_judge
from gsil_bench.tasks.stats import Metric, cluster_bootstrap, summarize

log = logging.getLogger(__name__)

NEED_REF = ("math", "reasoning", "coding")  # FastChat NEED_REF_CATS (MT-Bench part)
PROMPT_NAMES = {(False, 1): "single-v1", (True, 1): "single-math-v1",
                (False, 2): "single-v1-multi-turn", (True, 2): "single-math-v1-multi-turn"}


class JudgeError(TaskError):
    """The judge produced no judgment at all."""


def _plain(turns: list[tuple[str, str | None]]) -> str:
    """A transcript for models without a chat template."""
    return "".join(f"User: {q}\nAssistant:" + (f" {a}\n" if a is not None else "") for q, a in turns)


METRICS: dict[str, MetricFacts] = {
    "score": MetricFacts("judge score (1-10)", "mean of the judge's 1-10 ratings over the scored turns",
                         tolerance=0.25),
    "missing": MetricFacts("unparsed ratings", "turns whose judgment holds no [[rating]] (not scored)",
                           higher_is_better=False, tolerance=0.0),
    "ambiguous": MetricFacts("ambiguous ratings", "turns whose judgment holds several different ratings "
                             "(not scored)", higher_is_better=False, tolerance=0.0),
}


@register_task
class MTBench(Registered):
    info: ClassVar[TaskInfo] = TaskInfo(
        "mt_bench", display="MT-Bench", primary="score", metrics=METRICS,
        about="80 two-turn questions in 8 categories, each answer rated 1-10 by an LLM judge (FastChat's prompts)")

    def load(self, ctx: EvalContext) -> list[dict[str, Any]]:
        questions = load_rows(ctx, self.name, "mt_bench/question.jsonl", required=("question_id", "category", "turns"))
        prompts = load_rows(ctx, self.name, "mt_bench/judge_prompts.jsonl", required=("name", "prompt_template"))
        refs = load_rows(ctx, self.name, "mt_bench/reference_answer/gpt-4.jsonl", required=("question_id", "choices"))
        self.judge_prompts = {p["name"]: p for p in prompts}
        missing = [n for n in PROMPT_NAMES.values() if n not in self.judge_prompts]
        if missing:
            raise TaskError(f"{self.name}: judge_prompts.jsonl lacks {', '.join(missing)}")
        ref_by_id = {r["question_id"]: r["choices"][0]["turns"] for r in refs}
        docs = []
        for q in questions:
            ref = ref_by_id.get(q["question_id"]) if q["category"] in NEED_REF else None
            if q["category"] in NEED_REF and ref is None:
                raise TaskError(f"{self.name}: no reference answer for question {q['question_id']} ({q['category']})")
            docs.append({**q, "reference": ref})
        return docs

    def _answers(self, docs: list[dict[str, Any]], ctx: EvalContext) -> tuple[list[str], list[str]]:
        gen, chat = ctx.generator(), ctx.chat
        stop = None if chat else ["\nUser:"]
        first = [[{"role": "user", "content": d["turns"][0]}] if chat else _plain([(d["turns"][0], None)]) for d in docs]
        a1 = [c.text.strip() for c in gen.generate(first, stop=stop, desc="mt_bench turn 1")]
        second = [
            [{"role": "user", "content": d["turns"][0]}, {"role": "assistant", "content": a},
             {"role": "user", "content": d["turns"][1]}] if chat
            else _plain([(d["turns"][0], a), (d["turns"][1], None)]) for d, a in zip(docs, a1)
        ]
        a2 = [c.text.strip() for c in gen.generate(second, stop=stop, desc="mt_bench turn 2")]
        return a1, a2

    def judge_messages(self, doc: dict[str, Any], answers: tuple[str, str], turn: int) -> tuple[str, list[dict[str, str]]]:
        """(prompt name, [system, user]) exactly as FastChat builds a single-answer judgment."""
        math = doc["reference"] is not None
        name = PROMPT_NAMES[(math, turn)]
        tpl = self.judge_prompts[name]
        kwargs: dict[str, str] = {}
        if math:
            kwargs["ref_answer_1"] = doc["reference"][0]
            if turn == 2:
                kwargs["ref_answer_2"] = doc["reference"][1]
        if turn == 1:
            user = tpl["prompt_template"].format(question=doc["turns"][0], answer=answers[0], **kwargs)
        else:
            user = tpl["prompt_template"].format(question_1=doc["turns"][0], question_2=doc["turns"][1],
                                                 answer_1=answers[0], answer_2=answers[1], **kwargs)
        return name, [{"role": "system", "content": tpl["system_prompt"]}, {"role": "user", "content": user}]

    def judge_config(self, ctx: EvalContext) -> JudgeConfig:
        """The judge settings (EvalConfig.judge; a protocol may fix some)."""
        return ctx.cfg.judge

    def _judge(self, ctx: EvalContext) -> Judge:
        cfg = self.judge_config(ctx)
        if cfg.backend == "hf" and cfg.model == ctx.model and ctx.model_obj is not None:

            return HFJudge(cfg, *ctx.hf())  # the evaluated model judges itself: reuse the loaded copy
        return make_judge(cfg)

    def evaluate(self, docs: list[dict[str, Any]], ctx: EvalContext) -> TaskResult:
        a1, a2 = self._answers(docs, ctx)
        requests = [self.judge_messages(d, (x, y), t) for d, x, y in zip(docs, a1, a2) for t in (1, 2)]
        store = JudgmentStore(ctx.cache_dir() / "judgments.jsonl")
        records = store.judge_all(self._judge(ctx), self.judge_config(ctx), requests, desc=f"{self.name} judge")
        errors = [r["error"] for r in records if r["error"]]
        if errors and len(errors) == len(records):
            raise JudgeError(f"mt_bench: the judge gave no judgment for any of the {len(records)} requests: "
                             f"{errors[0]}. The model's answers are cached in {ctx.cache_dir()} and are reused "
                             "when you rerun with a working judge (--judge URL_OR_MODEL).")
        samples = []
        for i, d in enumerate(docs):
            j1, j2 = records[2 * i], records[2 * i + 1]
            ratings = [j1["rating"], j2["rating"]]
            scores = {f"turn{t}": r for t, r in ((1, ratings[0]), (2, ratings[1])) if r is not None}
            parsed = [r for r in ratings if r is not None]
            if parsed:
                scores["score"] = sum(parsed) / len(parsed)
            keep = ("prompt_name", "messages", "raw", "rating", "rating_status", "error", "judge")
            judgments = [{k: j[k] for k in keep} for j in (j1, j2)]
            ambiguous = sum(j["rating_status"] == "ambiguous" for j in (j1, j2))
            samples.append(Sample(str(d["question_id"]), d["turns"], [a1[i], a2[i]], ratings, d["reference"], scores,
                                  {"category": d["category"], "missing": 2 - len(parsed) - ambiguous,
                                   "ambiguous": ambiguous, "judgments": judgments}))
        info = {"judge": records[0]["judge"], "judge_errors": len(errors), "rating_rule": self.judge_config(ctx).rating_rule}
        if errors:
            log.warning("mt_bench: %d of %d judgments failed (first: %s)", len(errors), len(records), errors[0])
            info["judge_error"] = errors[0]
        return TaskResult(samples, self.aggregate(samples, ctx), info, complete=not errors)

    def aggregate(self, samples: list[Sample], ctx: EvalContext) -> dict[str, Metric]:
        def ratings(s: Sample) -> list[float]:
            return [r for r in s.extracted if r is not None]

        metrics = {"score": cluster_bootstrap([ratings(s) for s in samples])}
        for t in (1, 2):
            metrics[f"score/turn{t}"] = summarize([s.scores[f"turn{t}"] for s in samples if f"turn{t}" in s.scores], "t")
        for cat in sorted({s.extra["category"] for s in samples}):
            metrics[f"score/{cat}"] = cluster_bootstrap([ratings(s) for s in samples if s.extra["category"] == cat])
        for name in ("missing", "ambiguous"):  # turns not scored: no rating / several different ratings
            count = sum(s.extra.get(name, 0) for s in samples)
            metrics[name] = Metric(float(count), None, None, 2 * len(samples), None, "count", higher_is_better=False)
        return metrics
