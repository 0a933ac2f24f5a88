"""Verdicts a candidate cannot forge: the tests run in the trusted checker, the candidate in
its sandbox, and only plain data crosses between them (tasks.checker, tasks.wire).

Each attack is a real program in a real bubblewrap sandbox, checked against real tests;
HumanEval problems come from the data directory.
"""

from __future__ import annotations

import json
import math

import pytest
from helpers import data_rows, write_jsonl

from gsil_bench.core.config import EvalConfig
from gsil_bench.tasks import wire
from gsil_bench.tasks.api import evaluate
from gsil_bench.tasks.checker import check, evalplus_match
from gsil_bench.tasks.sandbox import Limits, check_many

L = Limits(timeout=5.0, memory_mb=1024)
ADD_TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"


def _asserts(source: str, tests: str = ADD_TESTS, entry: str = "add", **kw) -> dict:
    return check({"kind": "asserts", "source": source, "entry": entry, "tests": tests, "limits": L, **kw}, "bwrap")


def test_a_correct_program_passes_and_a_wrong_one_fails():
    assert _asserts("def add(a, b):\n    return a + b\n")["status"] == "passed"
    v = _asserts("def add(a, b):\n    return a - b\n")
    assert v["status"] == "failed" and v["detail"].startswith("AssertionError") and "tests.py line 1" in v["detail"]


@pytest.mark.parametrize("source", [
    # an object whose equality always holds
    "class Yes:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\ndef add(a, b):\n    return Yes()\n",
    # a subclass of int that equals everything: it arrives as the plain int it holds
    "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
    "def add(a, b):\n    return I(0)\n",
    # patching the interpreter it runs in: AssertionError, the builtins, a tracer that skips lines
    "import builtins, sys\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
    "builtins.__dict__['abs'] = lambda x: 0\nsys.settrace(lambda *a: None)\ndef add(a, b):\n    return 0\n",
    # writing a fake verdict or a fake reply frame itself, then leaving
    "import os, struct\nfor fd in range(3, 20):\n    try:\n        os.write(fd, struct.pack('>I', 11) + b'{\"ok\":true}')\n"
    "    except OSError:\n        pass\nprint('passed')\nos._exit(0)\ndef add(a, b):\n    return a + b\n",
    # exiting halfway, with success
    "import sys\nsys.exit(0)\ndef add(a, b):\n    return a + b\n",
    "def add(a, b):\n    raise SystemExit(0)\n",
])
def test_forged_verdicts_are_failures(source):
    assert _asserts(source)["status"] == "failed"


def test_shadowing_builtins_or_the_prompts_helpers_does_not_reach_the_tests():
    # the tests use abs() and set(); the candidate redefines both to make any answer pass
    tests = "assert abs(add(1, 2) - 3) < 1e-9\nassert set(add([1], [2])) == {1, 2}\n"
    forged = "abs = lambda x: 0\nset = lambda x: 0\ndef add(a, b):\n    return 'wrong'\n"
    assert _asserts(forged, tests)["status"] == "failed"
    assert _asserts("def add(a, b):\n    return a + b\n", tests)["status"] == "passed"
    # HumanEval/32: the tests check the root with the prompt's poly(); redefining poly does not help
    header = "import math\n\ndef poly(xs, x):\n    return sum(c * math.pow(x, i) for i, c in enumerate(xs))\n\n" \
             "def find_zero(xs):\n    \"\"\"A root.\"\"\"\n"
    tests = "def check(candidate):\n    assert abs(poly([-6, 11, -6, 1], candidate([-6, 11, -6, 1]))) < 1e-6\n\ncheck(find_zero)\n"
    cheat = header + "    return 0.0\n\ndef poly(xs, x):\n    return 0.0\n"
    assert _asserts(cheat, tests, "find_zero", header=header)["status"] == "failed"
    assert _asserts(header + "    return 1.0\n", tests, "find_zero", header=header)["status"] == "passed"


def test_a_timeout_cannot_be_caught_by_the_tests():
    tests = "try:\n    add(1, 2)\nexcept Exception:\n    pass\n"
    v = _asserts("def add(a, b):\n    while True:\n        pass\n", tests)
    assert v["status"] == "timeout"


def test_the_candidate_cannot_find_the_expected_outputs():
    marker = 918273645501
    src = ("import os\ndef add(a, b):\n    hits = []\n    for root, dirs, files in os.walk('/'):\n"
           "        if root.startswith(('/proc', '/usr', '/sys', '/dev')):\n            dirs[:] = []\n            continue\n"
           "        for f in files:\n            try:\n                if b'918273645501' in open(os.path.join(root, f), 'rb').read():\n"
           "                    hits.append(f)\n            except OSError:\n                pass\n"
           f"    return {marker} if hits else -1\n")
    job = {"kind": "differential", "source": src, "entry": "add", "dataset": "humaneval", "atol": 0.0, "limits": L,
           "base": ([[1, 2]], wire.encode([marker]), 5.0), "plus": None}
    v = check(job, "bwrap")
    assert v["base"]["status"] == "failed" and "wrong output" in v["base"]["detail"]


def test_plain_data_round_trips_and_nothing_else_crosses():
    values = [None, True, 0, -(10 ** 400), 1.5, float("inf"), 1 + 2j, "x", b"\x00\xff", [1, [2]], (1, (2,)),
              {"a": (1, 2), 3: None}, {1, 2}, frozenset({3})]
    for v in values:
        assert wire.decode(json.loads(json.dumps(wire.encode(v)))) == v
    assert math.isnan(wire.decode(wire.encode(float("nan"))))
    assert type(wire.decode(wire.encode((1,)))) is tuple and type(wire.decode(wire.encode({1}))) is set
    for bad in (object(), lambda: 1, iter([1]), {"L": [1], "T": []}):
        with pytest.raises(wire.WireError):
            wire.decode(bad) if isinstance(bad, dict) else wire.encode(bad)
    with pytest.raises(wire.WireError, match="unknown sandbox object"):
        wire.decode({"R": "root"})  # references resolve only inside the sandbox


def test_evalplus_comparison_rules():
    assert evalplus_match("humaneval", "f", [1], [1.0, 2.0000001], [1.0, 2.0], 0.0)  # float lists: atol 1e-6
    assert not evalplus_match("humaneval", "f", [1], (1.0, 2.0), [1.0, 2.0], 0.0)  # same type required
    assert evalplus_match("mbpp", "similar_elements", [], (4, 5), (5, 4), 0.0)  # compared as sets
    assert evalplus_match("mbpp", "check_str", [], ["n", True], True, 0.0)  # only checked for None
    assert not evalplus_match("mbpp", "check_str", [], ["b", False], True, 0.0)


def test_end_to_end_forged_completions_score_zero(tmp_path, data_dir):
    rows = data_rows(data_dir, "humaneval/HumanEval.jsonl")[:4]
    forged = ["    class Y:\n        def __eq__(self, o):\n            return True\n    return Y()\n",
              "    import os\n    os._exit(0)\n",
              "    import builtins\n    builtins.AssertionError = Exception\n    return None\n",
              "    raise SystemExit(0)\n"]
    comp = write_jsonl(tmp_path / "f.jsonl", [{"task_id": r["task_id"], "completion": f} for r, f in zip(rows, forged)])
    res = evaluate("forged", ["humaneval"], EvalConfig(code_workers=2, code_timeout=5.0), tmp_path / "o",
                   data_dir=str(data_dir), completions=comp, limit=4)["humaneval"]
    assert res["metrics"]["pass@1"]["value"] == 0.0 and res["sandbox"] == "bwrap"
    saved = json.loads((tmp_path / "o/humaneval/metrics.json").read_text())
    assert saved["sandbox"] == "bwrap"


def test_mbpp_setup_code_objects_stay_in_the_sandbox(data_dir):
    from gsil_bench.tasks.context import EvalContext
    from gsil_bench.tasks.mbpp import Mbpp

    p = {p.id: p for p in Mbpp().load(EvalContext("x", EvalConfig(), data_dir=data_dir))}["Mbpp/367"]
    assert p.setup.startswith("root = Node(1)") and "Node" not in p.tests
    job = {"kind": "asserts", "source": p.canonical, "entry": p.entry_point, "tests": p.tests, "setup": p.setup,
           "limits": L}
    wrong = {**job, "source": p.canonical.replace("return True", "return False", 1)}
    assert [v["status"] for v in check_many([job, wrong], mode="bwrap", workers=2)] == ["passed", "failed"]


def test_the_weaker_process_mode_scores_the_same_and_says_so(tmp_path, data_dir):
    rows = data_rows(data_dir, "humaneval/HumanEval.jsonl")[:3]
    comp = write_jsonl(tmp_path / "c.jsonl", [{"task_id": r["task_id"], "completion": r["canonical_solution"]}
                                              for r in rows[:2]] + [{"task_id": rows[2]["task_id"],
                                                                     "completion": "    return None\n"}])
    cfg = EvalConfig(code_workers=2, code_timeout=5.0, code_sandbox="process")
    res = evaluate("p", ["humaneval"], cfg, tmp_path / "o", data_dir=str(data_dir), completions=comp, limit=3)
    assert res["humaneval"]["sandbox"] == "process"
    assert res["humaneval"]["metrics"]["pass@1"]["value"] == pytest.approx(2 / 3)
