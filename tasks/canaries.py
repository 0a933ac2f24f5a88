"""Scorer canaries: fixed completions with known verdicts, scored by the real scorers.

The model plays no part (nothing is generated), so a change in a scorer shows in the
nightly comparison even when every model scores 0:
- code (HumanEval's scorer: tasks.code programs run in tasks.sandbox), per problem:
  the canonical solution (passes), a stub that returns None (fails), the canonical
  solution made wrong on the arguments of the LAST assert only (fails; passes if the
  scorer skipped the last test), and the canonical solution that exits with status 0
  before the tests run (fails; passes if the scorer trusted the exit status);
- GSM8K (lm-eval's `gsm8k` task: its `strict-match` and `flexible-extract` filters and
  exact-match metric, on the local test file), per document: the answer as "#### N",
  "The answer is N.", "$N" with thousands commas, bare "N", "#### N" followed by a
  next question with another number (strict takes the first match, flexible the last),
  "N.0" and a wrong "#### N+1", each with its verdict under both filters.

Per item `agreement` is 1 when the scorer's verdict equals the known one; the metric is
an EXACT metric for `compare` (reports.regression): any decrease is a regression. The
canaries are a fixed set: `eval.limit` does not cut them.
"""

from __future__ import annotations

import ast
import logging
from typing import Any, ClassVar

from gsil_bench.core.facts import proportion
from gsil_bench.tasks.base import Registered, Sample, TaskError, TaskInfo, TaskResult, register_task
from gsil_bench.tasks.code import Problem
from gsil_bench.tasks.context import EvalContext
from gsil_bench.tasks.data import load_rows
from gsil_bench.tasks.humaneval import HumanEval
from gsil_bench.tasks.lmeval import builtin_yaml, task_spec
from gsil_bench.tasks.sandbox import SandboxUnavailable, resolve_mode
from gsil_bench.tasks.stats import Metric, summarize

log = logging.getLogger(__name__)

CODE_PROBLEMS = 5  # the first HumanEval problems whose last assert calls the function on literal arguments
GSM8K_DOCS = 4  # the first GSM8K test documents with an integer answer

WRONG_ON_LAST = '''

class _CanaryWrong:
    """A value no assert accepts: unequal to everything, and no truth value."""
    def __eq__(self, other): return False
    def __ne__(self, other): return True
    def __bool__(self): raise AssertionError("canary: wrong answer")
    __hash__ = None

_canary_real = {ep}

def {ep}(*args, **kwargs):
    if (list(args), kwargs) == ({args}, {kwargs}):
        return _CanaryWrong()
    return _canary_real(*args, **kwargs)
'''


def last_assert_call(tests: str) -> tuple[list[Any], dict[str, Any]] | None:
    """The literal arguments of `candidate(...)` in the last top-level assert of `check`,
    or None when that assert has no such call or its arguments are not literals."""
    tree = ast.parse(tests)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        return None
    asserts = [s for s in check.body if isinstance(s, ast.Assert)
               and any(isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "candidate"
                       for c in ast.walk(s.test))]
    if not asserts:
        return None
    call = next(c for c in ast.walk(asserts[-1].test) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
                and c.func.id == "candidate")
    try:
        return [ast.literal_eval(a) for a in call.args], {k.arg: ast.literal_eval(k.value) for k in call.keywords
                                                          if k.arg}
    except ValueError:
        return None


def code_canaries(problems: list[Problem]) -> list[tuple[str, Problem, str, bool]]:
    """(id, problem, whole program, expected pass) for the first CODE_PROBLEMS usable problems."""
    out = []
    for p in problems:
        found = last_assert_call(p.tests)
        if found is None:
            continue
        args, kwargs = found
        wrong_last = p.canonical + WRONG_ON_LAST.format(ep=p.entry_point, args=repr(args), kwargs=repr(kwargs))
        out += [(f"{p.id}/canonical", p, p.canonical, True),
                (f"{p.id}/returns-none", p, p.header + "    return None\n", False),
                (f"{p.id}/wrong-on-last-test", p, wrong_last, False),
                (f"{p.id}/exits-before-tests", p, p.canonical + "\nimport os\nos._exit(0)\n", False)]
        if len(out) == 4 * CODE_PROBLEMS:
            break
    return out


def gsm8k_answers(answer: int) -> list[tuple[str, str, dict[str, bool]]]:
    """(format, response, known verdict per lm-eval filter) for a document whose answer is `answer`."""
    return [
        ("hashes", f"Adding it up.\n#### {answer}", {"strict-match": True, "flexible-extract": True}),
        ("sentence", f"The answer is {answer}.", {"strict-match": False, "flexible-extract": True}),
        ("dollars-commas", f"So she makes ${answer:,} in total", {"strict-match": False, "flexible-extract": True}),
        ("bare", f"{answer}", {"strict-match": False, "flexible-extract": True}),
        ("run-on", f"#### {answer}\n\nQuestion: Tom has 7 apples", {"strict-match": True, "flexible-extract": False}),
        ("decimal", f"The answer is {answer}.0", {"strict-match": False, "flexible-extract": False}),
        ("wrong", f"#### {answer + 1}", {"strict-match": False, "flexible-extract": False}),
    ]


def lm_eval_verdicts(ctx: EvalContext, responses: list[tuple[dict[str, Any], str]]) -> list[dict[str, bool]]:
    """lm-eval's own gsm8k filters and metric applied to (document, response) pairs."""
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager, get_task_dict

    spec, files = task_spec("gsm8k", ctx.data_dir, builtin_yaml("gsm8k/gsm8k.yaml"))
    for split, path in files.items():
        ctx.record_data("scorer_canaries", f"gsm8k {split}", path)
    task = get_task_dict([spec], TaskManager(include_defaults=False))["gsm8k"]
    out = []
    for i, (doc, resp) in enumerate(responses):
        inst = Instance(request_type="generate_until", doc=doc, arguments=("", {}), idx=0, metadata=("gsm8k", i, 1))
        inst.resps = [resp]
        verdict = {}
        for f in task._filters:
            f.apply([inst])
            verdict[f.name] = bool(task.process_results(doc, [inst.filtered_resps[f.name]])["exact_match"])
        out.append(verdict)
    return out


def gsm8k_docs(ctx: EvalContext) -> list[tuple[dict[str, Any], int]]:
    rows = load_rows(ctx, "scorer_canaries", "gsm8k/test.jsonl", hub=("openai/gsm8k", "main", "test"),
                     required=("question", "answer"))
    out = []
    for r in rows:
        final = r["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
        if final.lstrip("-").isdigit():
            out.append((r, int(final)))
        if len(out) == GSM8K_DOCS:
            break
    return out


@register_task
class ScorerCanaries(Registered):
    info: ClassVar[TaskInfo] = TaskInfo(
        "scorer_canaries", display="scorer canaries", primary="agreement",
        about="fixed completions with known verdicts through the real code and GSM8K scorers; the model plays no part",
        metrics={"agreement": proportion("agreement with known verdicts", "share of canaries the scorers judge as "
                                         "expected; must stay 100%", tolerance=0.0, exact=True)},
        limit="fixed", model_free=True)

    def load(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return [{"kind": "code"}, {"kind": "gsm8k"}]

    def _code(self, ctx: EvalContext) -> list[Sample]:
        task = HumanEval()
        cases = code_canaries(task.problems(ctx))
        if len(cases) < 4 * CODE_PROBLEMS:
            raise TaskError(f"scorer_canaries: only {len(cases) // 4} HumanEval problems usable as canaries")
        try:
            mode = resolve_mode(ctx.cfg.code_sandbox)
        except SandboxUnavailable as err:
            raise TaskError(str(err)) from None
        results = task._run([p for _, p, _, _ in cases], [[code] for _, _, code, _ in cases], ctx, mode)
        samples = []
        for (cid, _, code, expect), res in zip(cases, results):
            got = task._passed(res[0], plus=False)
            samples.append(Sample(f"code/{cid}", None, code, got, expect, {"agreement": float(got == expect)},
                                  {"kind": "code", "result": res[0]["base"]}))
        return samples

    def _gsm8k(self, ctx: EvalContext) -> list[Sample]:
        cases = [(doc, i, fmt, resp, known) for i, (doc, ans) in enumerate(gsm8k_docs(ctx))
                 for fmt, resp, known in gsm8k_answers(ans)]
        verdicts = lm_eval_verdicts(ctx, [(doc, resp) for doc, _, _, resp, _ in cases])
        samples = []
        for (doc, i, fmt, resp, known), got in zip(cases, verdicts):
            for filt, expect in known.items():
                samples.append(Sample(f"gsm8k/test-{i}/{fmt}/{filt}", doc["question"], resp, got.get(filt), expect,
                                      {"agreement": float(got.get(filt) == expect)}, {"kind": "gsm8k"}))
        return samples

    def evaluate(self, docs: list[dict[str, Any]], ctx: EvalContext) -> TaskResult:
        samples = self._code(ctx) + self._gsm8k(ctx)
        bad = [s.id for s in samples if s.scores["agreement"] < 1]
        if bad:
            log.warning("scorer_canaries: %d of %d known verdicts not reproduced: %s", len(bad), len(samples),
                        ", ".join(bad[:5]))
        return TaskResult(samples, self.aggregate(samples, ctx), {"disagreements": bad})

    def aggregate(self, samples: list[Sample], ctx: EvalContext) -> dict[str, Metric]:
        metrics = {"agreement": summarize([s.scores["agreement"] for s in samples], "wilson")}
        for kind in ("code", "gsm8k"):
            metrics[f"agreement/{kind}"] = summarize([s.scores["agreement"] for s in samples
                                                      if s.extra["kind"] == kind], "wilson")
        return metrics
