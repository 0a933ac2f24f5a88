"""Named evaluation protocols: tasks scored exactly as the GSIL and SPIN papers scored them.

Each protocol is a registered task (select it in `eval.tasks`) whose settings are fixed and cite the
official file they follow (tests/test_protocols.py pins them byte for byte). `PROTOCOLS` groups them.

- `open_llm_v1` (Open LLM Leaderboard v1, what SPIN and GSIL report; few-shot counts of GSIL
  eval/eval.sh:22,34,47,56-59,70,83 at tengxiao1/GSIL bf269e0 and SPIN README.md:247 at uclaml/SPIN a12ba80):
  `openllm_arc` (arc_challenge, 25-shot, acc_norm), `openllm_hellaswag` (10, acc_norm), `openllm_truthfulqa`
  (truthfulqa_mc2, 0, mc2 = lm-eval 0.4's acc), `openllm_mmlu` (5, acc: the unweighted mean of the 57 subjects, as
  the leaderboard averaged them; `openllm_mmlu_v040`: v0.4.0's size-weighted group, SPIN), `openllm_winogrande` (5, acc),
  `openllm_gsm8k` (5, GSM8K as lm-eval 0.3 scored it, below). No chat template. The reports add their average.
- `openllm_gsm8k`: lm-eval's GSM8K at EleutherAI/lm-evaluation-harness b281b0921b636bc36ad05c0b0b0763bd6dd43463
  (the leaderboard v1's pinned commit, setup.py version 0.3.0; GSIL's eval.sh runs this code base's main.py),
  lm_eval/tasks/gsm8k.py: prompt "Question: ...\\nAnswer:" (:63-67), generation until ":", "Question:",
  "Question" (:82), answer = the "#### (\\-?[0-9\\.\\,]+)" match, stripped, commas removed (:36, :85-91), exact
  string equality with the gold answer extracted the same way (:94-97). lm-eval 0.4's strict-match differs:
  it stops only at "Question:" and also ignores "$" and a trailing "." (lm_eval/tasks/gsm8k/gsm8k.yaml).
- `openllm_gsm8k_v040`: SPIN's GSM8K, lm-eval v0.4.0's gsm8k.yaml (46c7966, lines 1-37): until "\n\n",
  "Question:"; "#### N" filter; exact match ignoring case, ",", "$" and the text before "#### ".
- `humaneval_gsil`: HumanEval as GSIL scored it, through the Eurus scripts (OpenBMB/Eurus
  fd72db1861ef009fede0dbe5bcc9893c9012dacf, eval/Coding/human_eval/evaluate_human_eval.py): the instruction
  of :74-81 in the chat template, then the forced " ```python\\ndef" (:86-90); temperature 0.2 (:23), one
  sample, 1024 new tokens, stop at EOS (:40-43); completion = "def " + the text before the first ``` (:47,
  :119); program = prompt + completion + test + check(entry_point) (eval/utils/execution.py:41-43); 3 s
  timeout (:99).
- `mt_bench_fastchat`: MT-Bench answers as FastChat makes them (lm-sys/FastChat
  0e6d3e4beaab66f4d3f93db72541a4abab8af28d): per-category temperatures (fastchat/llm_judge/common.py:40-50;
  other categories 0.7, gen_model_answer.py:99-102), greedy below 1e-4 (:116-119), 1024 new tokens
  (:234-236), FastChat's conversation template (`eval.fastchat_template`, e.g. zephyr:
  fastchat/conversation.py:2102-2112 rendered by :195-205), special tokens removed and stripped (:161-167);
  judge temperature 0 and 2048 tokens (common.py:167).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any, ClassVar, Literal

from gsil_bench.core.config import JudgeConfig
from gsil_bench.tasks.base import TaskError, TaskInfo, TaskResult, register_task
from gsil_bench.tasks.code import Problem, code_task
from gsil_bench.tasks.context import EvalContext
from gsil_bench.tasks.humaneval import HumanEval
from gsil_bench.tasks.lmeval import LmEvalTask
from gsil_bench.tasks.mt_bench import MTBench
from gsil_bench.tasks.sandbox import Limits, SandboxUnavailable, resolve_mode

log = logging.getLogger(__name__)

# --- Open LLM Leaderboard v1 ----------------------------------------------------------------------

# our task -> (lm-eval task or group, lm-eval YAML (None: a group, by name), few-shot, primary metric)
OPEN_LLM_V1: dict[str, tuple[str, str | None, int, str]] = {
    "openllm_arc": ("arc_challenge", "arc/arc_challenge.yaml", 25, "acc_norm/none"),
    "openllm_hellaswag": ("hellaswag", "hellaswag/hellaswag.yaml", 10, "acc_norm/none"),
    "openllm_truthfulqa": ("truthfulqa_mc2", "truthfulqa/truthfulqa_mc2.yaml", 0, "acc/none"),
    "openllm_mmlu": ("mmlu", None, 5, "subjects/acc/none"),  # the leaderboard's unweighted mean of 57 subjects
    "openllm_winogrande": ("winogrande", "winogrande/default.yaml", 5, "acc/none"),
}

# lm-eval b281b09 lm_eval/tasks/gsm8k.py as an lm-eval 0.4 task config (line numbers in the module docstring)
GSM8K_V03: dict[str, Any] = {
    "task": "gsm8k_v0.3",
    "dataset_path": "openai/gsm8k",
    "dataset_name": "main",
    "output_type": "generate_until",
    "training_split": "train",
    "fewshot_split": "train",
    "test_split": "test",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": " {{answer}}",
    "target_delimiter": "",
    "generation_kwargs": {"until": [":", "Question:", "Question"], "do_sample": False},
    "filter_list": [{"name": "v0.3-extract", "filter": [
        {"function": "regex", "regex_pattern": r"#### (\-?[0-9\.\,]+)", "fallback": "[invalid]"},
        {"function": "take_first"}]}],
    # the reference: its "#### N" number with commas removed; the prediction: the matched number, commas removed
    "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                     "ignore_case": False, "ignore_punctuation": False,
                     "regexes_to_ignore": [",", r"(?s).*#### ", r"^\s+", r"\s+$"]}],
    "num_fewshot": 5,
    "metadata": {"version": 0, "source": "lm-evaluation-harness b281b09 lm_eval/tasks/gsm8k.py"},
}


# SPIN's GSM8K: lm-eval v0.4.0 (46c796644913cd99da7eee868e64f9ed6af33407, SPIN README.md:247)
# lm_eval/tasks/gsm8k/gsm8k.yaml:1-37; lm-eval 0.4.13's own gsm8k.yaml stops at other strings and ignores a trailing "."
GSM8K_V040: dict[str, Any] = {
    "task": "gsm8k_v0.4.0",
    "dataset_path": "openai/gsm8k",  # v0.4.0 says "gsm8k", the same Hub data set under its old name
    "dataset_name": "main",
    "output_type": "generate_until",
    "training_split": "train",
    "fewshot_split": "train",
    "test_split": "test",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{answer}}",
    "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
                     "ignore_punctuation": False, "regexes_to_ignore": [",", r"\$", r"(?s).*#### "]}],
    "generation_kwargs": {"until": ["\n\n", "Question:"], "do_sample": False, "temperature": 0.0},
    "repeats": 1,
    "num_fewshot": 5,
    "filter_list": [{"name": "get-answer", "filter": [
        {"function": "regex", "regex_pattern": r"#### (\-?[0-9\.\,]+)"}, {"function": "take_first"}]}],
    "metadata": {"version": 1.0, "source": "lm-evaluation-harness v0.4.0 lm_eval/tasks/gsm8k/gsm8k.yaml"},
}


# Both harness versions the papers used tokenise every request of a causal LM without special tokens, so without
# BOS (b281b09 lm_eval/models/huggingface.py:343-355 `add_special_tokens`; 46c7966 :610-626 `tok_encode` and
# :628-642 `tok_batch_encode`); lm-eval 0.4.13 left alone follows the tokenizer, which adds BOS on zephyr's
LEADERBOARD_ADD_BOS = False


def _openllm(name: str, lm_task: str, yaml: str | None, fewshot: int, primary: str) -> None:
    mean = "acc/none" if primary.startswith("subjects/") else None
    register_task(lambda: LmEvalTask(name, lm_task, chat=False, primary=primary, yaml=yaml, fewshot=fewshot,
                                     subject_mean=mean, add_bos=LEADERBOARD_ADD_BOS, protocol="open_llm_v1"))


for _name, (_task, _yaml, _shots, _primary) in OPEN_LLM_V1.items():
    _openllm(_name, _task, _yaml, _shots, _primary)


B281B09_SEED = 42  # lm-eval b281b09 lm_eval/evaluator.py:215-217


def b281b09_sampling() -> dict[str, Any]:
    """lm-eval b281b09's few-shot choice as lm-eval 0.4 task-config entries. There, evaluator.py:213-217 shuffles
    the test documents with `random.Random(42)` and :231-240 hands that same generator to every document's
    `fewshot_context`, in the shuffled order, which draws `rnd.sample(training_docs, 5)` (base.py:569-573,
    :683-684); `limit` takes the first documents of the shuffled order. lm-eval 0.4.13 would instead keep the
    file order and draw from a fresh `Random(1234)` per task. Here: `process_docs` shuffles the test split the same
    way, and the sampler replays the generator (a shuffle of as many items, then one sample per document)."""
    import random

    from lm_eval.api.samplers import ContextSampler

    state: dict[str, int] = {}

    def shuffled(dataset: Any) -> Any:
        if str(getattr(dataset, "split", "")) != "test":
            return dataset
        order = list(range(len(dataset)))
        random.Random(B281B09_SEED).shuffle(order)
        state["n_test"] = len(dataset)
        return dataset.select(order)

    class B281b09Sampler(ContextSampler):
        """One generator for the whole task, seeded 42 and advanced by the test documents' shuffle."""

        stream: random.Random | None = None

        def set_rnd(self, rnd: int | None) -> B281b09Sampler:
            self.stream = None  # the seed lm-eval passes (1234) is not b281b09's
            return self

        def sample(self, n: int, eval_doc: Any = None, df: Any = None, **kwargs: Any) -> Any:
            if self.stream is None:
                self.stream = random.Random(B281B09_SEED)
                self.stream.shuffle(list(range(state["n_test"])))
            return self.stream.sample(self.fewshot_docs(), n)

    return {"process_docs": shuffled,
            "fewshot_config": {"sampler": B281b09Sampler, "process_docs": lambda d: d}}  # the pool in file order


class GSM8KV03(LmEvalTask):
    """openllm_gsm8k: GSM8K_V03 with b281b09's few-shot choice (built when the task loads: it imports lm-eval)."""

    def load(self, ctx: EvalContext) -> list[dict[str, Any]]:
        self.config = {**GSM8K_V03, **b281b09_sampling()}
        return super().load(ctx)


@register_task
def _gsm8k_v03() -> LmEvalTask:
    return GSM8KV03("openllm_gsm8k", "gsm8k_v0.3", chat=False, primary="exact_match/v0.3-extract", fewshot=5,
                    config=GSM8K_V03, add_bos=LEADERBOARD_ADD_BOS, protocol="open_llm_v1")


# SPIN's MMLU: lm-eval v0.4.0 weights a group's subtasks by size (lm_eval/evaluator.py:472-519 at 46c7966),
# as 0.4.13's mmlu group does (weight_by_size: True)
register_task(lambda: LmEvalTask("openllm_mmlu_v040", "mmlu", chat=False, primary="mmlu/acc/none", fewshot=5,
                                 add_bos=LEADERBOARD_ADD_BOS, protocol="open_llm_v1_spin"))
register_task(lambda: LmEvalTask("openllm_gsm8k_v040", "gsm8k_v0.4.0", chat=False, primary="exact_match/get-answer",
                                 fewshot=5, config=GSM8K_V040, add_bos=LEADERBOARD_ADD_BOS,
                                 protocol="open_llm_v1_spin"))

PROTOCOLS: dict[str, list[str]] = {
    "open_llm_v1": [*OPEN_LLM_V1, "openllm_gsm8k"],  # GSIL (lm-eval 0.3 GSM8K)
    "open_llm_v1_spin": [*(t for t in OPEN_LLM_V1 if t != "openllm_mmlu"), "openllm_mmlu_v040",
                         "openllm_gsm8k_v040"],  # SPIN (lm-eval v0.4.0's GSM8K and MMLU weighting)
    "humaneval_gsil": ["humaneval_gsil"],
    "mt_bench_fastchat": ["mt_bench_fastchat"],
}

# --- HumanEval as GSIL scored it (Eurus scripts) --------------------------------------------------

# Eurus eval/Coding/human_eval/evaluate_human_eval.py:74-81 and :90
EURUS_INSTRUCTION = ("Write Python code to solve the task.\n"
                     "Write a Python function `{signature}` to solve the following problem: Present code in ```python```\n"
                     "```python\n"
                     "{prompt}"
                     "```\n")
EURUS_PREFIX = " ```python\ndef"
EURUS_SAMPLING = {"temperature": 0.2, "max_new_tokens": 1024, "top_p": 1.0}  # :23, :40-43 (vLLM top_p 1)
EURUS_TIMEOUT = 3.0  # :99
EURUS_BOS = "tokenizer"  # :45 llm.generate(question_list): vLLM tokenises each string with special tokens (BOS)


def eurus_signature(prompt: str, entry_point: str) -> str:
    """evaluate_human_eval.py:50-54 (the entry point is used as a regex there too)."""
    m = re.search(rf"def\s+({entry_point}.*?):\s*\n", prompt)
    if m is None:
        raise TaskError(f"humaneval_gsil: no signature of {entry_point!r} in the prompt")
    return m.group(1)


def eurus_prompt(tokenizer: Any, prompt: str, entry_point: str) -> str:
    """The text the model continues (evaluate_human_eval.py:60-90)."""
    text = EURUS_INSTRUCTION.format(signature=eurus_signature(prompt, entry_point), prompt=prompt)
    msg = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(msg, tokenize=False, add_generation_prompt=True) + EURUS_PREFIX


def eurus_completion(text: str) -> str:
    """evaluate_human_eval.py:47 and :119: the text before the first ```, after "def "."""
    return "def " + text.split("```")[0]


@register_task
class HumanEvalGSIL(HumanEval):
    """HumanEval with the Eurus prompt, sampling and timeout; pass@1 of one sample at temperature 0.2."""

    info: ClassVar[TaskInfo] = code_task(
        "humaneval_gsil", "HumanEval (GSIL protocol)", "HumanEval as the GSIL paper scored it (Eurus scripts: "
        "prompt, one sample at temperature 0.2, timeout)", protocol="humaneval_gsil")

    def problems(self, ctx: EvalContext) -> list[Problem]:
        probs = super().problems(ctx)
        for p in probs:  # execution.py:41-43: prompt + completion + "\n" + test + "\n" + check(entry_point)
            p.tests = p.tests.removesuffix(f"\n\ncheck({p.entry_point})\n") + f"\ncheck({p.entry_point})"
        return probs

    def _limits(self, ctx: EvalContext, canonical_seconds: float = 0.0) -> Limits:
        return Limits(timeout=EURUS_TIMEOUT, memory_mb=ctx.cfg.code_memory_mb)

    def evaluate(self, docs: list[Problem], ctx: EvalContext) -> TaskResult:
        if ctx.completions is not None:
            return super().evaluate(docs, ctx)
        tok = ctx.get_tokenizer()
        prompts = [eurus_prompt(tok, p.prompt, p.entry_point) for p in docs]
        gen = ctx.generator(**EURUS_SAMPLING, bos=EURUS_BOS)
        comps = gen.generate(prompts, stop=[tok.eos_token] if tok.eos_token else None, seed=0, desc=self.name)
        codes = [[p.prompt + eurus_completion(c.text)] for p, c in zip(docs, comps)]
        try:
            mode = resolve_mode(ctx.cfg.code_sandbox)
        except SandboxUnavailable as err:
            raise TaskError(str(err)) from None
        results = self._run(docs, codes, ctx, mode)
        samples = [self._sample(p, prompt, [(c.text, False)], code, r, ctx)
                   for p, prompt, c, code, r in zip(docs, prompts, comps, codes, results)]
        info = {"protocol": "humaneval_gsil", "sampling": EURUS_SAMPLING, "timeout": EURUS_TIMEOUT, "sandbox": mode}
        return TaskResult(samples, self.aggregate(samples, ctx), info=info)


# --- MT-Bench as FastChat runs it -----------------------------------------------------------------

# fastchat/llm_judge/common.py:40-50; any other category: 0.7 (gen_model_answer.py:99-102)
FASTCHAT_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
FASTCHAT_MAX_NEW_TOKENS = 1024  # gen_model_answer.py:234-236
FASTCHAT_JUDGE = {"temperature": 0.0, "max_tokens": 2048}  # common.py:167
FASTCHAT_RATING_RULE: Literal["fastchat"] = "fastchat"  # common.py:175-183: the first [[x]] match (else the first [x]) is the rating
FASTCHAT_BOS = "tokenizer"  # gen_model_answer.py:114: tokenizer([prompt]) adds the tokenizer's special tokens (BOS)
# gen_model_answer.py:86-93 (no --dtype: None) -> fastchat/model/model_adapter.py:226-238: fp32 on the CPU (without
# Intel's extension), fp16 on CUDA
FASTCHAT_DTYPE = {"cpu": "float32", "cuda": "float16"}


def fastchat_temperature(category: str) -> float:
    """The answer temperature of a category; below 1e-4 FastChat decodes greedily (:116-119)."""
    t = FASTCHAT_TEMPERATURE.get(category, 0.7)
    return 0.0 if t < 1e-4 else t


def zephyr_conversation(turns: list[tuple[str, str | None]]) -> str:
    """FastChat's "zephyr" template (conversation.py:2102-2112) rendered by SeparatorStyle.CHATML (:195-205):
    system "<|system|>\\n" + sep "</s>" + "\\n", then role + "\\n" + message + "</s>\\n" per turn; a turn
    without a message (the open assistant turn, or an EMPTY first answer: `if message:` at :198) is role + "\\n"."""
    sep = "</s>"
    out = "<|system|>\n" + sep + "\n"
    for question, answer in turns:
        out += "<|user|>" + "\n" + question + sep + "\n" if question else "<|user|>\n"
        out += "<|assistant|>" + "\n" + (answer + sep + "\n" if answer else "")
    return out


CONVERSATIONS = {"zephyr": (zephyr_conversation, ["</s>"])}  # name -> (renderer, stop strings)


@register_task
class MTBenchFastChat(MTBench):
    """MT-Bench with FastChat's per-category temperatures, answer length, conversation template and judge."""

    info: ClassVar[TaskInfo] = replace(
        MTBench.info, name="mt_bench_fastchat", display="MT-Bench (FastChat)", protocol="mt_bench_fastchat",
        about="MT-Bench with FastChat's per-category temperatures, 1024 tokens, conversation template and judge")

    def load(self, ctx: EvalContext) -> list[dict[str, Any]]:
        name = ctx.cfg.fastchat_template
        if name is not None and name not in CONVERSATIONS:
            raise TaskError(f"eval.fastchat_template: unknown template {name!r}; known: {', '.join(CONVERSATIONS)} "
                            "(or null for the model's chat template)")
        return super().load(ctx)

    def judge_config(self, ctx: EvalContext) -> JudgeConfig:
        return replace(ctx.cfg.judge, temperature=FASTCHAT_JUDGE["temperature"],
                       max_tokens=int(FASTCHAT_JUDGE["max_tokens"]), rating_rule=FASTCHAT_RATING_RULE)

    def _prompts(self, ctx: EvalContext, turns: list[list[tuple[str, str | None]]]) -> tuple[list[Any], list[str] | None]:
        name = ctx.cfg.fastchat_template
        if name is None:  # the model's chat template (FastChat's adapters mostly mirror it)
            return [[m for q, a in t for m in ([{"role": "user", "content": q}] +
                                               ([{"role": "assistant", "content": a}] if a is not None else []))]
                    for t in turns], None
        render, stop = CONVERSATIONS[name]
        return [render(t) for t in turns], stop

    def _answers(self, docs: list[dict[str, Any]], ctx: EvalContext) -> tuple[list[str], list[str]]:
        import torch

        a1: list[str] = [""] * len(docs)
        a2: list[str] = [""] * len(docs)
        special = self._special_tokens(ctx)
        dtypes = {k: getattr(torch, v) for k, v in FASTCHAT_DTYPE.items()} if ctx.cfg.generation.backend == "hf" else {}
        with ctx.model_dtype(dtypes):
            return self._answer_turns(docs, ctx, special, a1, a2)

    def _answer_turns(self, docs: list[dict[str, Any]], ctx: EvalContext, special: list[str], a1: list[str],
                      a2: list[str]) -> tuple[list[str], list[str]]:
        for temp in sorted({fastchat_temperature(d["category"]) for d in docs}):
            idx = [i for i, d in enumerate(docs) if fastchat_temperature(d["category"]) == temp]
            gen = ctx.generator(temperature=temp, max_new_tokens=FASTCHAT_MAX_NEW_TOKENS, bos=FASTCHAT_BOS)
            first, stop = self._prompts(ctx, [[(docs[i]["turns"][0], None)] for i in idx])
            for i, c in zip(idx, gen.generate(first, stop=stop, seed=0, desc=f"{self.name} turn 1 (T={temp})")):
                a1[i] = _clean(c.text, special)
            second, stop = self._prompts(ctx, [[(docs[i]["turns"][0], a1[i]), (docs[i]["turns"][1], None)] for i in idx])
            for i, c in zip(idx, gen.generate(second, stop=stop, seed=0, desc=f"{self.name} turn 2 (T={temp})")):
                a2[i] = _clean(c.text, special)
        return a1, a2

    def _special_tokens(self, ctx: EvalContext) -> list[str]:
        if ctx.cfg.generation.backend == "openai":
            return []
        out: list[str] = []
        for v in ctx.get_tokenizer().special_tokens_map.values():
            out += v if isinstance(v, list) else [v]
        return out

    def evaluate(self, docs: list[dict[str, Any]], ctx: EvalContext) -> TaskResult:
        result = super().evaluate(docs, ctx)
        result.info.update(protocol="mt_bench_fastchat", judge_settings=FASTCHAT_JUDGE,
                           max_new_tokens=FASTCHAT_MAX_NEW_TOKENS, conversation=ctx.cfg.fastchat_template)
        for s in result.samples:
            s.extra["temperature"] = fastchat_temperature(s.extra["category"])
        return result


def _clean(text: str, special: list[str]) -> str:
    """gen_model_answer.py:161-167: every special token removed, then strip()."""
    for tok in special:
        text = text.replace(tok, "")
    return text.strip()

