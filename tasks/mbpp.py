"""MBPP (Austin et al. 2021) and MBPP+ (EvalPlus).

MBPP: the test split (task_ids 11-510) of <data dir>/mbpp/mbpp.jsonl (else the Hub
google-research-datasets/mbpp "full"); the test_list asserts run in the trusted checker
against the sandboxed code; test_setup_code needs the solution's classes, so it runs in
the sandbox after the code, and the asserts refer to its objects by name. Base models get the paper's 3-shot prompt (task_ids 2-4, code
between [BEGIN] and [DONE]); chat models the same task statement as an instruction.
MBPP+: <data dir>/mbpp_plus/MbppPlus.jsonl (EvalPlus v0.2), differential tests on the
base and plus inputs with EvalPlus's type restoration and oracles; pass@1 and pass@1+.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from gsil_bench.tasks.base import TaskInfo, register_task
from gsil_bench.tasks.code import CodeTask, Problem, code_task
from gsil_bench.tasks.context import EvalContext
from gsil_bench.tasks.data import load_rows
from gsil_bench.tasks.evalplus import mbpp_inputs

TEST_IDS = range(11, 511)
SHOT_IDS = (2, 3, 4)
STATEMENT = "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{tests}"
CHAT_SUFFIX = "\n\nReply with the code in one ```python code block."
PLUS_STOP = ['\n"""', "\nassert", "\nif __name__", "\nprint("]
PLUS_INSTRUCTION = (
    "Write a self-contained Python solution for the task below. Reply with the code in one ```python code "
    "block.\n\n```python\n{prompt}```"
)


def _statement(row: dict[str, Any]) -> str:
    return STATEMENT.format(text=row["text"], tests="\n".join(row["test_list"]))


def _entry_point(row: dict[str, Any]) -> str:
    m = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:set\()?\s*([A-Za-z_]\w*)\s*\(", row["test_list"][0])
    return m.group(1) if m else ""


@register_task
class Mbpp(CodeTask):
    info: ClassVar[TaskInfo] = code_task(
        "mbpp", "MBPP", "mostly basic Python problems (Google), scored by running their assert tests in the sandbox")
    dataset = "mbpp"

    def problems(self, ctx: EvalContext) -> list[Problem]:
        rows = load_rows(ctx, self.name, "mbpp/mbpp.jsonl", hub=("google-research-datasets/mbpp", "full", "test"),
                         required=("task_id", "text", "code", "test_list"))
        by_id = {int(r["task_id"]): r for r in rows}
        shots = [by_id[i] for i in SHOT_IDS if i in by_id]
        if len(shots) < len(SHOT_IDS):
            shots = load_rows(ctx, self.name, "mbpp/mbpp.jsonl", hub=("google-research-datasets/mbpp", "full", "prompt"))
            shots = [r for r in shots if int(r["task_id"]) in SHOT_IDS]
        fewshot = "".join(f"{_statement(s)}\n[BEGIN]\n{s['code']}\n[DONE]\n" for s in shots)
        out = []
        for r in sorted((r for i, r in by_id.items() if i in TEST_IDS), key=lambda r: int(r["task_id"])):
            setup = (r.get("test_setup_code") or "").strip()
            out.append(Problem(
                id=f"Mbpp/{r['task_id']}", prompt=f"{fewshot}{_statement(r)}\n[BEGIN]\n",
                instruction=_statement(r) + CHAT_SUFFIX, entry_point=_entry_point(r),
                canonical=r["code"], header="", tests="\n".join(r["test_list"]) + "\n", setup=setup,
                stop=["[DONE]"],
            ))
        return out


@register_task
class MbppPlus(CodeTask):
    info: ClassVar[TaskInfo] = code_task("mbpp_plus", "MBPP+", "MBPP's sanitised problems with EvalPlus's extra tests")
    plus = True
    dataset = "mbpp"

    def problems(self, ctx: EvalContext) -> list[Problem]:
        rows = load_rows(ctx, self.name, "mbpp_plus/MbppPlus.jsonl", hub=("evalplus/mbppplus", None, "test"),
                         required=("task_id", "prompt", "entry_point", "canonical_solution", "base_input",
                                   "plus_input", "atol"))
        return [Problem(
            id=r["task_id"], prompt=r["prompt"], instruction=PLUS_INSTRUCTION.format(prompt=r["prompt"]),
            entry_point=r["entry_point"], canonical=r["canonical_solution"], header=r["prompt"],
            base_input=mbpp_inputs(r["task_id"], r["base_input"]),
            plus_input=mbpp_inputs(r["task_id"], r["plus_input"]), atol=float(r["atol"] or 0), stop=PLUS_STOP,
        ) for r in rows]
