"""Verdicts a candidate cannot forge: the tests run in the trusted checker, the candidate in
its sandbox, and only plain data crosses between them (tasks.checker, tasks.wire).

Each attack is a real program in a real bubblewrap sandbox, checked against real tests;
HumanEval problems come from the data directory.
"""

from __future__ import annotations

import json
import math
import os

import pytest
from helpers import data_rows, forged_reply, write_jsonl

from gsil_bench.core.config import EvalConfig
from gsil_bench.tasks import wire
from gsil_bench.tasks.api import evaluate
from gsil_bench.tasks.checker import check, evalplus_match
from gsil_bench.tasks.sandbox import Limits, check_many

L = Limits(timeout=5.0, memory_mb=1024)
ADD_TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"


def _asserts(source: str, tests: str = ADD_TESTS, entry: str = "add", limits: Limits = L, **kw) -> dict:
    return check({"kind": "asserts", "source": source, "entry": entry, "tests": tests, "limits": limits, **kw},
                 "bwrap")


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
    v = _asserts("def add(a, b):\n    while True:\n        pass\n", tests, limits=Limits(timeout=1.5, memory_mb=1024))
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


# What a candidate may bind a name the tests use to: modules whose import has a side effect (venv.__main__
# creates environments named by the process's argv in its working folder; unittest.__main__ exits the
# process), a class, and a callable of its choosing. The trusted side must treat each as an opaque stand-in.
BINDINGS = ("types.ModuleType('venv.__main__')", "types.ModuleType('unittest.__main__')", "types.ModuleType('this')",
            "types.SimpleNamespace", "exec")


def _binding_program(names: list[str], binding: str, entry: str = "") -> str:
    """Bind `names` to `binding`; `entry` (when given) stays a function, so loading gets past it."""
    defined = f"def {entry}(*args, **kwargs):\n    return None\n" if entry else ""
    return "import types\n" + "".join(f"{n} = {binding}\n" for n in names if n != entry) + defined


def _assert_jobs(data_dir, rows: list[tuple[str, str, str, str]]) -> list[dict]:
    """For each (tests, entry, header, setup): every name the tests use, bound to each binding."""
    from gsil_bench.tasks.checker import BUILTIN_NAMES, _names

    jobs = []
    for tests, entry, header, setup in rows:
        trusted: dict = {}
        exec(header, trusted)
        names = sorted(n for n in _names(compile(tests, "t", "exec")) | {entry}
                       if n == entry or (n not in trusted and n not in BUILTIN_NAMES))
        jobs += [{"kind": "asserts", "source": _binding_program(names, b, keep), "entry": entry, "tests": tests,
                  "header": header, "setup": setup, "limits": L} for b in BINDINGS for keep in (entry, "")]
    return jobs


def _plus_jobs(rows: list[tuple[str, str, list]]) -> list[dict]:
    return [{"kind": "differential", "source": _binding_program([entry], b), "entry": entry, "dataset": dataset,
             "atol": 0.0, "limits": L, "base": (inputs[:2], wire.encode([0] * len(inputs[:2])), 5.0), "plus": None}
            for dataset, entry, inputs in rows for b in BINDINGS]


def test_names_the_tests_use_bound_to_modules_classes_and_callables_run_nothing_here(data_dir, tmp_path,
                                                                                     monkeypatch):
    from gsil_bench.tasks.evalplus import mbpp_inputs

    he = data_rows(data_dir, "humaneval/HumanEval.jsonl")
    mbpp = {r["task_id"]: r for r in data_rows(data_dir, "mbpp/mbpp.jsonl")}
    rows = [(r["test"] + f"\ncheck({r['entry_point']})\n", r["entry_point"], r["prompt"], "") for r in he[:2]]
    rows += [("\n".join(mbpp[i]["test_list"]) + "\n", mbpp[i]["code"].split("def ", 1)[1].split("(")[0], "",
              mbpp[i]["test_setup_code"]) for i in (11, 367)]
    hp = data_rows(data_dir, "humaneval_plus/HumanEvalPlus.jsonl")[:2]
    mp = data_rows(data_dir, "mbpp_plus/MbppPlus.jsonl")[:2]
    plus = [("humaneval", r["entry_point"], r["base_input"]) for r in hp]
    plus += [("mbpp", r["entry_point"], mbpp_inputs(r["task_id"], r["base_input"])) for r in mp]
    jobs = _assert_jobs(data_dir, rows) + _plus_jobs(plus)
    monkeypatch.chdir(tmp_path)  # the checkers' working folder: an import of venv.__main__ would write here
    verdicts = check_many(jobs, mode="bwrap", workers=2)
    got = [v if j["kind"] == "asserts" else v["base"] for j, v in zip(jobs, verdicts)]
    assert [v["status"] for v in got] == ["failed"] * len(jobs), [v["detail"] for v in got]
    assert not any("checker process died" in v["detail"] for v in got)
    assert sorted(os.listdir(tmp_path)) == []


COLLIDING = "[str(1 + i * (2 ** 61 - 1)) for i in range(60000)]"  # 60,000 ints with one hash


@pytest.mark.parametrize("body", [
    "('{\"ok\":{\"D\":[' + ','.join('[' + k + ',0]' for k in " + COLLIDING + ") + ']}}').encode()",
    "('{\"ok\":{\"S\":[' + ','.join(" + COLLIDING + ") + ']}}').encode()",
    "b'{\"ok\":{\"L\":[' + b'0,' * 30_000_000 + b'0]}}'",  # a 60 MB reply
], ids=["colliding-dict", "colliding-set", "60MB"])
def test_a_flooded_reply_fails_its_own_job_within_about_its_limit(body):
    limit = 3.0
    job = {"kind": "asserts", "source": forged_reply(body), "entry": "add", "tests": ADD_TESTS,
           "limits": Limits(timeout=limit, memory_mb=1024)}
    [v] = check_many([job], mode="bwrap", workers=1)
    assert v["status"] in ("failed", "timeout") and v["seconds"] < limit + 3, v
    assert "checker process died" not in v["detail"]


def test_decoding_is_linear_and_refuses_values_that_share_one_hash():
    same = [1 + i * (2 ** 61 - 1) for i in range(wire.HASH_GROUP + 1)]
    for tag in ("L", "S", "T"):
        with pytest.raises(wire.WireError, match="sharing one hash"):
            wire.decode({tag: same})
    with pytest.raises(wire.WireError, match="sharing one hash"):
        wire.decode({"D": [[k, 0] for k in same]})
    # equal values and the few legitimate collisions (-1 and -2 hash alike) are fine
    legit = [0] * 1000 + [-1, -2] * 500 + [[1], [2]] * 100
    assert wire.decode(wire.encode(legit)) == legit
    assert wire.decode({"L": [{"T": [1, {"L": [2]}]}] * 100}) == [(1, [2])] * 100  # unhashable tuples pass
    with pytest.raises(wire.Expired):
        wire.decode({"L": [{"L": [0]}] * 1000}, budget=wire.Budget(0.0))


def test_nested_shapes_are_compared_before_the_float_tolerance():
    # EvalPlus's rule: same type and length, then np.allclose, which broadcasts [[]] against [1.5] to an
    # empty array and calls them equal
    assert not evalplus_match("humaneval", "f", [1], [[]], [1.5], 0.0)
    assert not evalplus_match("mbpp", "f", [1], [[1.5]], [1.5], 0.0)
    assert not evalplus_match("humaneval", "f", [1], [[1.0, 2.0], (3.0,)], [[1.0, 2.0], [3.0]], 1e-6)
    assert not evalplus_match("humaneval", "f", [1], [[1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0]], 1e-6)
    assert evalplus_match("humaneval", "f", [1], [[1.0, 2.0000001], [3, 4.0]], [[1.0, 2.0], [3.0, 4.0]], 1e-6)
    assert evalplus_match("humaneval", "f", [1], [1.0000001], [1.0], 0.0)
