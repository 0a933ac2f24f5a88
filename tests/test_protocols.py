"""Evaluation protocols pinned against the official files (tasks.protocols cites each line).

Sources: tengxiao1/GSIL bf269e0 eval/eval.sh; EleutherAI/lm-evaluation-harness b281b09 lm_eval/tasks/gsm8k.py;
OpenBMB/Eurus fd72db1 eval/Coding/human_eval/evaluate_human_eval.py and eval/utils/execution.py;
lm-sys/FastChat 0e6d3e4 fastchat/llm_judge/{common.py,gen_model_answer.py} and fastchat/conversation.py.
Leaderboard data sets: small fixtures in each data set's own format, written here (real use reads the Hub).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import ZEPHYR_TEMPLATE, bos_tokenizer

from gsil_bench.core.config import EvalConfig, GenerationConfig
from gsil_bench.tasks.api import evaluate
from gsil_bench.tasks.base import TASKS
from gsil_bench.tasks.protocols import (
    EURUS_SAMPLING,
    EURUS_TIMEOUT,
    FASTCHAT_JUDGE,
    FASTCHAT_MAX_NEW_TOKENS,
    GSM8K_V03,
    PROTOCOLS,
    eurus_completion,
    eurus_prompt,
    fastchat_temperature,
    zephyr_conversation,
)
from gsil_bench.tasks.sandbox import resolve_mode

# GSIL eval/eval.sh (bf269e0), the lines that choose task and few-shot count, verbatim
GSIL_EVAL_SH = """
            --num_fewshot 25 \\
            --tasks arc_challenge \\
            --num_fewshot 5 \\
            --tasks gsm8k \\
            --num_fewshot 5 \\
            --tasks winogrande \\
            --tasks truthfulqa_mc \\
            --num_fewshot 10 \\
            --tasks hellaswag \\
            --num_fewshot 5 \\
            --tasks  hendrycksTest-* \\
"""
# the leaderboard-v1 (lm-eval 0.3) task names -> ours, and the leaderboard's metric of each
V03_NAMES = {"arc_challenge": ("openllm_arc", "acc_norm"), "gsm8k": ("openllm_gsm8k", "acc"),
             "winogrande": ("openllm_winogrande", "acc"), "truthfulqa_mc": ("openllm_truthfulqa", "mc2"),
             "hellaswag": ("openllm_hellaswag", "acc_norm"), "hendrycksTest-*": ("openllm_mmlu", "acc")}
# lm-eval 0.4 names of the leaderboard metrics (truthfulqa_mc2's "acc" is 0.3's mc2)
V04_METRIC = {"acc_norm": "acc_norm", "acc": "acc", "mc2": "acc"}


def _fewshot_by_task() -> dict[str, int]:
    out, shots = {}, 0  # no --num_fewshot before a task: 0 (main.py's default)
    for line in GSIL_EVAL_SH.strip().splitlines():
        words = line.split()
        if words[0] == "--num_fewshot":
            shots = int(words[1])
        else:
            out[words[1]] = shots
            shots = 0
    return out


def test_leaderboard_counts_and_metrics_handed_to_lm_eval():
    shots = _fewshot_by_task()
    assert shots == {"arc_challenge": 25, "gsm8k": 5, "winogrande": 5, "truthfulqa_mc": 0, "hellaswag": 10,
                     "hendrycksTest-*": 5}
    assert sorted(PROTOCOLS["open_llm_v1"]) == sorted(name for name, _ in V03_NAMES.values())
    for v03, (ours, metric) in V03_NAMES.items():
        task = TASKS.get(ours)()
        assert task.fewshot == shots[v03], ours  # handed to simple_evaluate as num_fewshot
        assert task.chat_pref is False  # the leaderboard runs no chat template
        if ours == "openllm_gsm8k":
            assert task.primary == "exact_match/v0.3-extract" and task.config["num_fewshot"] == 5
        else:
            assert task.primary.split("/")[-2] == V04_METRIC[metric], ours
    assert TASKS.get("openllm_truthfulqa")().lm_task == "truthfulqa_mc2"
    mmlu, mmlu_spin = TASKS.get("openllm_mmlu")(), TASKS.get("openllm_mmlu_v040")()
    assert (mmlu.lm_task, mmlu.subject_mean, mmlu.primary) == ("mmlu", "acc/none", "subjects/acc/none")
    assert (mmlu_spin.lm_task, mmlu_spin.fewshot, mmlu_spin.primary) == ("mmlu", 5, "mmlu/acc/none")
    assert sorted(PROTOCOLS["open_llm_v1_spin"]) == sorted(
        ["openllm_arc", "openllm_hellaswag", "openllm_truthfulqa", "openllm_mmlu_v040", "openllm_winogrande",
         "openllm_gsm8k_v040"])


def test_mmlu_subject_mean_is_unweighted():
    """The leaderboard v1 averages the 57 subjects; lm-eval's group weights them by size."""
    from gsil_bench.tasks.lmeval import subject_mean
    from gsil_bench.tasks.stats import Metric

    metrics = {"mmlu/acc/none": Metric(0.5, 0.4, 0.6, 110, 0.05, "t"),  # the group: (0.9*10 + 0.46*100) / 110
               "mmlu_a/acc/none": Metric(0.9, 0.7, 1.0, 10, 0.1, "wilson"),
               "mmlu_b/acc/none": Metric(0.46, 0.36, 0.56, 100, 0.05, "wilson")}
    m = subject_mean(metrics, ["mmlu_a", "mmlu_b"], "acc/none")
    assert m.value == pytest.approx((0.9 + 0.46) / 2) and m.n == 110
    assert m.stderr == pytest.approx((0.1**2 + 0.05**2) ** 0.5 / 2)
    assert m.ci_low == pytest.approx(m.value - 1.959963984540054 * m.stderr)


def _arc_rows(n: int, start: int) -> list[dict]:
    """allenai/ai2_arc ARC-Challenge rows: id, question, choices {text, label}, answerKey."""
    return [{"id": f"Q{start + i}", "question": f"Which number is the largest, {i}?",
             "choices": {"text": [str(i), str(i + 1), str(i + 2), str(i + 3)], "label": ["A", "B", "C", "D"]},
             "answerKey": "D"} for i in range(n)]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_arc_runs_25_shot_acc_norm_on_a_fixture(tmp_path, tiny_model, tokenizer):
    data = tmp_path / "data"
    for split, rows in (("train", _arc_rows(30, 0)), ("validation", _arc_rows(2, 100)), ("test", _arc_rows(3, 200))):
        _write(data / "openllm" / "arc_challenge" / f"{split}.jsonl", rows)
    cfg = EvalConfig(num_fewshot=3, generation=GenerationConfig(batch_size=8))  # the protocol's 25 wins
    out = evaluate("tiny", ["openllm_arc"], cfg, tmp_path / "out", data_dir=str(data), limit=2, model_obj=tiny_model,
                   tokenizer=tokenizer)["openllm_arc"]
    assert out["lm_eval"]["n-shot"] == {"arc_challenge": 25} and out["lm_eval_version"] == "0.4.13"
    assert out["primary"] == "acc_norm/none" and out["metrics"]["acc_norm/none"]["n"] == 2
    samples = [json.loads(x) for x in (tmp_path / "out/openllm_arc/samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"].count("Question:") == 26  # 25 demonstrations + the question
    assert out["lm_eval"]["apply_chat_template"] is False


def _v03_is_correct(completion: str, answer: str) -> bool:
    """lm-eval b281b09 lm_eval/tasks/gsm8k.py:36-37, :85-97, verbatim logic."""
    ans_re, invalid = re.compile(r"#### (\-?[0-9\.\,]+)"), "[invalid]"

    def extract(text: str) -> str:
        match = ans_re.search(text)
        if match:
            return match.group(1).strip().replace(",", "")
        return invalid

    gold = extract(answer)
    assert gold != invalid
    return extract(completion) == gold


@pytest.mark.parametrize("completion", [
    " She sold 48 clips.\n#### 72", " #### 1,234", " #### 72.", " #### $72", " no answer", " #### -3", " ####72",
])
def test_gsm8k_v03_scoring_equals_the_old_harness(completion):
    """lm-eval 0.4's own filter and metric, configured by GSM8K_V03, agree with b281b09's scorer."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    assert GSM8K_V03["generation_kwargs"]["until"] == [":", "Question:", "Question"]  # gsm8k.py:82
    assert GSM8K_V03["doc_to_text"] == "Question: {{question}}\nAnswer:"  # gsm8k.py:63-64
    flt = GSM8K_V03["filter_list"][0]["filter"][0]
    metric = GSM8K_V03["metric_list"][0]
    for gold in ("Natalia sold 48/2 = 24 clips.\n#### 72", "So the total is\n#### 1234", "#### -3"):
        pred = list(RegexFilter(flt["regex_pattern"], fallback=flt["fallback"]).apply([[completion]], [{}]))[0][0]
        ours = exact_match_hf_evaluate([pred], [" " + gold], regexes_to_ignore=metric["regexes_to_ignore"],
                                       ignore_case=metric["ignore_case"],
                                       ignore_punctuation=metric["ignore_punctuation"])["exact_match"]
        assert bool(ours) == _v03_is_correct(completion, gold), (completion, gold)


V03_COMPLETIONS = [" She sold 48 clips.\n#### 72", " #### 1,234", " #### 72.", " #### $72", " no answer", " #### -3",
                   " ####72"]
V03_GOLDS = ["Natalia sold 48/2 = 24 clips.\n#### 72", "So the total is\n#### 1234", "#### -3"]


def _score_with(regexes, ignore_case, completion, gold, fallback="[invalid]"):
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    pred = list(RegexFilter(r"#### (\-?[0-9\.\,]+)", fallback=fallback).apply([[completion]], [{}]))[0][0]
    return bool(exact_match_hf_evaluate([pred], [" " + gold], regexes_to_ignore=regexes, ignore_case=ignore_case,
                                        ignore_punctuation=False)["exact_match"])


def test_wrong_gsm8k_scorers_fail_the_v03_pin():
    """lm-eval 0.4.13's own strict-match rule and two near misses are not b281b09's: each disagrees with the old
    harness on some completion above, so the pin rules them out."""
    wrong = {"lm_eval_0.4.13_strict": ([",", r"\$", r"(?s).*#### ", r"\.$"], False),
             "trailing_dot_ignored": ([",", r"(?s).*#### ", r"\.$", r"^\s+", r"\s+$"], False),
             "no_comma_removal": ([r"(?s).*#### ", r"^\s+", r"\s+$"], False)}
    for name, (regexes, case) in wrong.items():
        assert any(_score_with(regexes, case, c, g) != _v03_is_correct(c, g)
                   for c in V03_COMPLETIONS for g in V03_GOLDS), name


def test_gsm8k_v040_is_spins_yaml():
    """lm-eval v0.4.0 (46c7966, SPIN README.md:247) lm_eval/tasks/gsm8k/gsm8k.yaml, values copied from the file."""
    from gsil_bench.tasks.protocols import GSM8K_V040

    assert GSM8K_V040["generation_kwargs"]["until"] == ["\n\n", "Question:"]  # :23-25
    assert GSM8K_V040["metric_list"][0]["regexes_to_ignore"] == [",", "\\$", "(?s).*#### "]  # :18-21
    assert GSM8K_V040["metric_list"][0]["ignore_case"] is True  # :16
    assert GSM8K_V040["filter_list"][0]["filter"][0]["regex_pattern"] == "#### (\\-?[0-9\\.\\,]+)"  # :34
    assert (GSM8K_V040["doc_to_text"], GSM8K_V040["doc_to_target"], GSM8K_V040["num_fewshot"]) == (
        "Question: {{question}}\nAnswer:", "{{answer}}", 5)  # :10-11, :29
    task = TASKS.get("openllm_gsm8k_v040")()
    assert task.fewshot == 5 and task.primary == "exact_match/get-answer" and task.chat_pref is False
    # the wrong file to follow: lm-eval 0.4.13's own gsm8k.yaml stops elsewhere and ignores a trailing "."
    import yaml

    from gsil_bench.tasks.lmeval import builtin_yaml

    installed = yaml.safe_load(builtin_yaml("gsm8k/gsm8k.yaml").read_text())
    assert installed["generation_kwargs"]["until"] != GSM8K_V040["generation_kwargs"]["until"]
    assert installed["metric_list"][0]["regexes_to_ignore"] != GSM8K_V040["metric_list"][0]["regexes_to_ignore"]


def b281b09_gsm8k_contexts(test_rows: list[dict], train_rows: list[dict], limit: int) -> list[tuple[dict, str]]:
    """lm-eval b281b09, verbatim logic: evaluator.py:213-217 shuffles the test docs with one `random.Random()` seeded
    42, :231-240 walks the first `limit` of them handing that generator to fewshot_context, which takes
    `rnd.sample(self._training_docs, 5)` (base.py:569-573, :683-684) and joins `doc_to_text + doc_to_target` with
    blank lines (:700-709; gsm8k.py:63-67). Returns (doc, context) in evaluation order."""
    import random

    docs = list(test_rows)
    rnd = random.Random()
    rnd.seed(42)
    rnd.shuffle(docs)
    text = lambda d: "Question: " + d["question"] + "\nAnswer:"  # noqa: E731
    out = []
    for doc in docs[:limit]:
        shots = rnd.sample(train_rows, 5)
        out.append((doc, "\n\n".join(text(d) + " " + d["answer"] for d in shots) + "\n\n" + text(doc)))
    return out


def _contexts_drawn(test_rows, train_rows, limit, *, shuffle_seed, sample_seed, first_n=False, advance=True):
    """A wrong few-shot choice, for the pin's teeth (each differs from b281b09's on the first documents)."""
    import random

    docs = list(test_rows)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(docs)
    rnd = random.Random(sample_seed)
    if advance and shuffle_seed is not None:
        rnd.shuffle(list(range(len(test_rows))))
    text = lambda d: "Question: " + d["question"] + "\nAnswer:"  # noqa: E731
    out = []
    for doc in docs[:limit]:
        shots = train_rows[:5] if first_n else rnd.sample(train_rows, 5)
        out.append((doc, "\n\n".join(text(d) + " " + d["answer"] for d in shots) + "\n\n" + text(doc)))
    return out


WRONG_GSM8K_FEWSHOT = {  # (shuffle seed of the test docs, seed of the exemplar draws, first_n, advanced by the shuffle)
    "first_n": {"shuffle_seed": 42, "sample_seed": 42, "first_n": True},
    "lm_eval_0.4_default": {"shuffle_seed": None, "sample_seed": 1234},  # file order, Random(1234) per task
    "fresh_generator_after_shuffle": {"shuffle_seed": 42, "sample_seed": 42, "advance": False},
    "file_order_seed_42": {"shuffle_seed": None, "sample_seed": 42},
}


def test_gsm8k_v03_runs_through_lm_eval_with_b281b09s_exemplars(tmp_path, data_dir, tiny_model, tokenizer):
    """The contexts lm-eval sends to the model are b281b09's, document for document: the same test documents (the
    first `limit` of the shuffled order), each with the five exemplars b281b09's generator draws for it. A sampler
    taking the first five training rows, or lm-eval 0.4.13's Random(1234) over the file order, sends other
    contexts (tests/mutations.py: gsm8k-v03-first-n-exemplars)."""
    cfg = EvalConfig(lm_eval_gen_kwargs="max_gen_toks=16", generation=GenerationConfig(batch_size=4))
    out = evaluate("tiny", ["openllm_gsm8k"], cfg, tmp_path / "out", data_dir=str(data_dir), limit=3,
                   model_obj=tiny_model, tokenizer=tokenizer)["openllm_gsm8k"]
    assert out["lm_eval"]["n-shot"] == {"gsm8k_v0.3": 5} and out["primary"] == "exact_match/v0.3-extract"
    samples = [json.loads(x) for x in (tmp_path / "out/openllm_gsm8k/samples.jsonl").read_text().splitlines()]
    test_rows = [json.loads(x) for x in (data_dir / "gsm8k/test.jsonl").read_text().splitlines()]
    train_rows = [json.loads(x) for x in (data_dir / "gsm8k/train.jsonl").read_text().splitlines()]
    want = b281b09_gsm8k_contexts(test_rows, train_rows, 3)
    assert [s["prompt"] for s in samples] == [ctx for _, ctx in want]
    for s, (row, _) in zip(samples, want):
        assert ":" not in s["output"]  # generation stops at the first colon (gsm8k.py:82)
        assert s["scores"]["exact_match/v0.3-extract"] == float(_v03_is_correct(s["output"], row["answer"]))
    for name, kw in WRONG_GSM8K_FEWSHOT.items():
        assert [c for _, c in _contexts_drawn(test_rows, train_rows, 3, **kw)] != [c for _, c in want], name


def test_lm_eval_task_on_a_later_process_of_a_launch_keeps_its_results(tmp_path, data_dir, tiny_model, tokenizer,
                                                                       monkeypatch):
    """Under `accelerate launch` each process evaluates its own models (harness.runner); on the second process
    (LOCAL_RANK=1) lm-eval 0.4.13 returned no results (its tensor-parallel guard) and every lm-eval task failed
    there (found by tests/test_paper_launch.py's two-process run)."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = EvalConfig(lm_eval_gen_kwargs="max_gen_toks=4", generation=GenerationConfig(batch_size=4))
    out = evaluate("tiny", ["openllm_gsm8k_v040"], cfg, tmp_path / "out", data_dir=str(data_dir), limit=1,
                   model_obj=tiny_model, tokenizer=tokenizer)["openllm_gsm8k_v040"]
    assert out["metrics"]["exact_match/get-answer"]["n"] == 1
    import os

    assert os.environ["LOCAL_RANK"] == "1"  # given back


# --- HumanEval (Eurus) ----------------------------------------------------------------------------

HE_PROMPT = 'from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n    """ Check if any two numbers are closer than threshold.\n    >>> has_close_elements([1.0, 2.0], 0.5)\n    False\n    """\n'  # noqa: E501


# plausible wrong HumanEval prompts (each differs from Eurus's text)
WRONG_EURUS_PROMPTS = {
    "no_forced_prefix": lambda tok: eurus_prompt(tok, HE_PROMPT, "has_close_elements").removesuffix(" ```python\ndef"),
    "prefix_without_space": lambda tok: eurus_prompt(tok, HE_PROMPT, "has_close_elements").replace(
        "\n ```python\ndef", "\n```python\ndef"),
    "raw_prompt_no_chat": lambda tok: HE_PROMPT,
    "signature_with_def": lambda tok: eurus_prompt(tok, HE_PROMPT, "has_close_elements").replace(
        "`has_close_elements(", "`def has_close_elements("),
}


def test_humaneval_prompt_and_sampling_are_eurus(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ZEPHYR_TEMPLATE
    eos = tok.eos_token
    # evaluate_human_eval.py:74-81 with signature "has_close_elements(numbers: List[float], threshold: float) -> bool",
    # in the chat template, then " ```python\ndef" (:90)
    want = ("<|user|>\n"
            "Write Python code to solve the task.\n"
            "Write a Python function `has_close_elements(numbers: List[float], threshold: float) -> bool` to solve "
            "the following problem: Present code in ```python```\n"
            "```python\n" + HE_PROMPT + "```\n" + eos + "\n<|assistant|>\n ```python\ndef")
    assert eurus_prompt(tok, HE_PROMPT, "has_close_elements") == want
    for name, wrong in WRONG_EURUS_PROMPTS.items():
        assert wrong(tok) != want, name
    assert EURUS_SAMPLING == {"temperature": 0.2, "max_new_tokens": 1024, "top_p": 1.0} and EURUS_TIMEOUT == 3.0
    assert eurus_completion(" f(x):\n    return 1\n```\nmore") == "def  f(x):\n    return 1\n"


def test_humaneval_gsil_scores_programs_the_eurus_way(tmp_path, data_dir, tiny_model, tokenizer):
    """A real run on the tiny model (its code fails), then the same problems with a correct reply
    go through the same program construction and sandbox and pass."""
    from gsil_bench.tasks.context import EvalContext

    cfg = EvalConfig(generation=GenerationConfig(batch_size=2), code_workers=1)
    out = evaluate("tiny", ["humaneval_gsil"], cfg, tmp_path / "out", data_dir=str(data_dir), limit=1,
                   model_obj=tiny_model, tokenizer=tokenizer)["humaneval_gsil"]
    assert out["primary"] == "pass@1" and out["metrics"]["pass@1"]["n"] == 1
    sample = json.loads((tmp_path / "out/humaneval_gsil/samples.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].endswith(" ```python\ndef") and sample["extracted"].count("def ") >= 2
    task = TASKS.get("humaneval_gsil")()
    ctx = EvalContext("tiny", replace(cfg, limit=1), data_dir=data_dir, model_obj=tiny_model, tokenizer=tokenizer)
    (problem,) = task.load(ctx)[:1]
    body = problem.canonical[len(problem.prompt):]
    reply = f" {problem.entry_point}(numbers, threshold):\n{body}```\nThat is all."
    result = task._run([problem], [[problem.prompt + eurus_completion(reply)]], ctx, resolve_mode(cfg.code_sandbox))
    assert result[0][0]["base"]["status"] == "passed"
    assert problem.tests.endswith(f"\ncheck({problem.entry_point})")  # execution.py:41-43


# --- MT-Bench (FastChat) --------------------------------------------------------------------------

def test_fastchat_categories_and_lengths():
    # common.py:40-50 verbatim, and 0.7 for any other category (gen_model_answer.py:99-102)
    official = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
                "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
    assert {c: fastchat_temperature(c) for c in official} == official
    assert fastchat_temperature("unknown") == 0.7
    assert FASTCHAT_MAX_NEW_TOKENS == 1024 and FASTCHAT_JUDGE == {"temperature": 0.0, "max_tokens": 2048}


def test_zephyr_conversation_is_fastchats():
    # conversation.py:2102-2112 (system_template "<|system|>\n{system_message}", roles <|user|>/<|assistant|>,
    # sep "</s>", CHATML) rendered by :195-205 with an empty system message
    assert zephyr_conversation([("Hi?", None)]) == "<|system|>\n</s>\n<|user|>\nHi?</s>\n<|assistant|>\n"
    want = "<|system|>\n</s>\n<|user|>\nHi?</s>\n<|assistant|>\nHello.</s>\n<|user|>\nBye?</s>\n<|assistant|>\n"
    assert zephyr_conversation([("Hi?", "Hello."), ("Bye?", None)]) == want
    turns = [("Hi?", "Hello."), ("Bye?", None)]
    wrong = {  # plausible wrong renderings of the same turns
        "no_system_turn": zephyr_conversation(turns).removeprefix("<|system|>\n</s>\n"),
        "hf_template_no_system": _zephyr_hf(turns, system=False),
        "sep_without_newline": zephyr_conversation(turns).replace("</s>\n", "</s>"),
        "answer_stripped_of_sep": zephyr_conversation(turns).replace("Hello.</s>\n", "Hello.\n"),
    }
    for name, text in wrong.items():
        assert text != want, name
    assert _zephyr_hf(turns, system=True) == want  # the HF template with an empty system turn renders the same
    # an EMPTY first answer: FastChat's `if message:` (:198) renders the bare role, no separator
    empty = [("Hi?", ""), ("Bye?", None)]
    assert zephyr_conversation(empty) == _fastchat_chatml(empty)
    assert zephyr_conversation(empty) == "<|system|>\n</s>\n<|user|>\nHi?</s>\n<|assistant|>\n<|user|>\nBye?</s>\n<|assistant|>\n"
    assert zephyr_conversation(turns) == _fastchat_chatml(turns)
    old = "<|system|>\n</s>\n<|user|>\nHi?</s>\n<|assistant|>\n</s>\n<|user|>\nBye?</s>\n<|assistant|>\n"
    assert zephyr_conversation(empty) != old  # the rendering before: separator after an empty answer


def _fastchat_chatml(turns):
    """FastChat fastchat/conversation.py:195-205 (SeparatorStyle.CHATML) with the zephyr template's values
    (:2102-2112: system_template "<|system|>\\n{system_message}", empty system message, sep "</s>"), verbatim logic."""
    system_prompt, sep = "<|system|>\n", "</s>"
    messages = [m for q, a in turns for m in (("<|user|>", q), ("<|assistant|>", a))]
    ret = "" if system_prompt == "" else system_prompt + sep + "\n"
    for role, message in messages:
        if message:
            ret += role + "\n" + message + sep + "\n"
        else:
            ret += role + "\n"
    return ret


def test_mt_bench_answers_run_in_fastchats_dtype(tmp_path, data_dir, monkeypatch):
    """FastChat loads the answering model in fp16 on CUDA and fp32 on the CPU (gen_model_answer.py:86-93 without
    --dtype; model_adapter.py:226-238). The switch is exercised on the CPU with bf16 standing in for CUDA's fp16
    (no GPU here): every forward of the answers runs in that dtype, the generations are cached under it, and the
    model gets back its own weights bit for bit."""
    import torch

    import gsil_bench.tasks.protocols as protocols
    from gsil_bench.core.models import tiny_llama
    from gsil_bench.tasks.context import EvalContext

    assert protocols.FASTCHAT_DTYPE == {"cpu": "float32", "cuda": "float16"}
    monkeypatch.setattr(protocols, "FASTCHAT_DTYPE", {"cpu": "bfloat16", "cuda": "float16"})
    tok = bos_tokenizer()
    model = tiny_llama(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: set = set()
    handle = model.register_forward_pre_hook(lambda m, a: seen.add(next(m.parameters()).dtype))
    cfg = EvalConfig(generation=GenerationConfig(batch_size=2, max_new_tokens=4), fastchat_template="zephyr")
    ctx = EvalContext("tiny-bos", cfg, data_dir=data_dir, model_obj=model, tokenizer=tok, task_folder=tmp_path / "mt")
    task = TASKS.get("mt_bench_fastchat")()
    monkeypatch.setattr(protocols, "FASTCHAT_MAX_NEW_TOKENS", 4)
    task._answers([next(d for d in task.load(ctx) if d["category"] == "math")], ctx)
    handle.remove()
    assert seen == {torch.bfloat16}
    assert all(torch.equal(before[k], v) and before[k].dtype == v.dtype for k, v in model.state_dict().items())
    recs = [json.loads(x) for x in (tmp_path / "mt/cache/generations.jsonl").read_text().splitlines()]
    (gen,) = ctx._generators.values()
    assert gen.identity["dtype"] == "bfloat16" and {r["key"] for r in recs} <= {
        gen.key(p, ["</s>"], 0) for p in [r["prompt"] for r in recs]}


def _zephyr_hf(turns, *, system):
    tok = bos_tokenizer()
    msgs = ([{"role": "system", "content": ""}] if system else []) + [
        m for q, a in turns for m in [{"role": "user", "content": q}] + ([{"role": "assistant", "content": a}] if a else [])]
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def _fastchat_clean(output, tokenizer):
    """FastChat gen_model_answer.py:161-167 (0e6d3e4), verbatim logic."""
    for special_token in tokenizer.special_tokens_map.values():
        if isinstance(special_token, list):
            for special_tok in special_token:
                output = output.replace(special_tok, "")
        else:
            output = output.replace(special_token, "")
    return output.strip()


def test_mt_bench_answer_cleaning_is_fastchats():
    from gsil_bench.tasks.protocols import _clean

    tok = bos_tokenizer()
    special = [v for x in tok.special_tokens_map.values() for v in (x if isinstance(x, list) else [x])]
    raw = ["  Hello</s> ", "<s>\nA <unk>list:\n- one\n\n", "done", " a </s> b \t"]
    want = [_fastchat_clean(t, tok) for t in raw]
    assert [_clean(t, special) for t in raw] == want
    wrong = {"strip_only": [t.strip() for t in raw], "eos_only": [t.replace("</s>", "").strip() for t in raw],
             "lstrip": [_fastchat_clean(t, tok) + t[len(t.rstrip()):] for t in raw]}
    for name, texts in wrong.items():
        assert texts != want, name


@pytest.mark.slow  # ~1 min: six 1024-token answers of the tiny model
def test_mt_bench_fastchat_answers_at_category_temperatures(tmp_path, data_dir, tiny_model, tokenizer):
    """Answers only (the judge has its own tests): every request's cache key is the one of FastChat's
    settings for its category (temperature, 1024 new tokens) and its prompt is FastChat's zephyr text."""
    from gsil_bench.core.io import hash_obj
    from gsil_bench.tasks.context import EvalContext

    cfg = EvalConfig(generation=GenerationConfig(batch_size=4), fastchat_template="zephyr")
    ctx = EvalContext("tiny", cfg, data_dir=data_dir, model_obj=tiny_model, tokenizer=tokenizer,
                      task_folder=tmp_path / "mt")
    task = TASKS.get("mt_bench_fastchat")()
    picked = [next(d for d in task.load(ctx) if d["category"] == c) for c in ("writing", "math", "stem")]
    a1, a2 = task._answers(picked, ctx)
    assert len(a1) == len(a2) == 3 and all(a == a.strip() for a in a1 + a2)
    recs = [json.loads(x) for x in (tmp_path / "mt/cache/generations.jsonl").read_text().splitlines()]
    assert len(recs) == 6
    for d, answer in zip(picked, a1):
        temp = {"writing": 0.7, "math": 0.0, "stem": 0.1}[d["category"]]
        for prompt in (zephyr_conversation([(d["turns"][0], None)]),
                       zephyr_conversation([(d["turns"][0], answer), (d["turns"][1], None)])):
            key = hash_obj({"model": ctx.identity(), "prompt": prompt, "stop": ["</s>"], "seed": 0,
                            "gen": {"max_new_tokens": 1024, "temperature": temp, "top_p": 1.0, "bos": "tokenizer"}})
            assert key in {r["key"] for r in recs}, (d["category"], prompt[:60])
