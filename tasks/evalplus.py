"""HumanEval+ / MBPP+ differential testing, following EvalPlus's rules.

The expected output of every test input is computed by calling the canonical solution
(trusted, but still in the sandbox) on a fresh copy of the inputs; a candidate passes
when its output on every input matches: exactly, or, for float outputs (atol = 1e-6
when the data set gives 0), within `numpy.allclose(rtol=1e-7, atol)` with the same type
and length. EvalPlus's special oracles apply (HumanEval/32 `find_zero` checks the root;
several MBPP+ problems compare sets, accept equivalent answers or only check for None).
The comparison itself (`tasks.checker.evalplus_match`) runs in the trusted checker on
plain data that crossed the sandbox's pipe; the candidate never sees the expected outputs.

MBPP+ stores tuples, sets and complex numbers as JSON lists/strings; `mbpp_inputs`
restores the argument types per problem as EvalPlus does. Expected outputs are cached
under the gsil-bench cache (keyed by a hash of the problem), so they are computed once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gsil_bench.core.io import atomic_write_json
from gsil_bench.core.models import cache_root
from gsil_bench.tasks.base import TaskError
from gsil_bench.tasks.checker import MBPP_NOT_NONE
from gsil_bench.tasks.sandbox import Limits, check_many

log = logging.getLogger(__name__)


def _tuples(x: Any) -> Any:
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


# MBPP+ argument restoration: rule -> problem numbers (EvalPlus data/mbpp.py semantics).
_MBPP_RULES: dict[str, tuple[int, ...]] = {
    "each_arg_tuple": (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630,
                       726, 740, 744, 809),
    "each_arg_tuple_list": (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780),
    "first_arg_tuple_list": (75, 413, 444, 753),
    "second_arg_tuple": (106, 750),
    "sets": (115,),
    "float_complex": (124,),
    "first_arg_tuple": (250, 405, 446, 617, 720, 763, 808),
    "nested_tuples": (259, 401, 445),
    "mixed_tuples": (278,),
    "first_of_three_tuple": (307,),
    "dict_values_tuple": (722,),
    "complex": (252,),
    "all_tuples": (580, 615, 791),
}
_MBPP_CONVERT: dict[str, Callable[[Any], Any]] = {
    "each_arg_tuple": lambda inp: [tuple(a) for a in inp],
    "each_arg_tuple_list": lambda inp: [[tuple(x) for x in a] for a in inp],
    "first_arg_tuple_list": lambda inp: [[tuple(x) for x in inp[0]], inp[1]],
    "second_arg_tuple": lambda inp: [inp[0], tuple(inp[1])],
    "sets": lambda inp: [[set(x) if isinstance(x, list) and x else {} for x in inp[0]]],
    "float_complex": lambda inp: (float(inp[0]), complex(inp[1])),
    "first_arg_tuple": lambda inp: [tuple(inp[0]), inp[1]],
    "nested_tuples": lambda inp: [tuple(tuple(x) for x in a) for a in inp],
    "mixed_tuples": lambda inp: [tuple(tuple(x) if isinstance(x, list) else x for x in inp[0])],
    "first_of_three_tuple": lambda inp: [tuple(inp[0]), inp[1], inp[2]],
    "dict_values_tuple": lambda inp: [{k: tuple(v) for k, v in inp[0].items()}, *inp[1:]],
    "complex": lambda inp: [complex(inp[0])],
    "all_tuples": _tuples,
}
_MBPP_RULE_OF = {num: rule for rule, nums in _MBPP_RULES.items() for num in nums}


def mbpp_inputs(task_id: str, inputs: list[Any]) -> list[Any]:
    """Restore MBPP+ argument types for `task_id` ("Mbpp/2")."""
    rule = _MBPP_RULE_OF.get(int(task_id.split("/")[-1]))
    return [_MBPP_CONVERT[rule](inp) for inp in inputs] if rule else inputs


def expected_outputs(problems: Sequence[Any], *, mode: str, workers: int | None,
                     timeout: float = 120.0) -> dict[str, tuple[tuple[Any, float], tuple[Any, float]]]:
    """{id: ((base outputs, seconds), (plus outputs, seconds))} of the canonical solutions,
    outputs in `tasks.wire` form, computed in the sandbox (calls through the checker) once
    and cached on disk as JSON."""
    out: dict[str, Any] = {}
    todo: list[tuple[str, int, Path, dict[str, Any]]] = []
    for p in problems:
        pair: list[Any] = [None, None]
        for k, inputs in enumerate((p.base_input or [], p.plus_input or [])):
            not_none = p.id.startswith("Mbpp/") and p.entry_point in MBPP_NOT_NONE
            key = hashlib.sha256(json.dumps([p.id, p.canonical, p.entry_point, repr(inputs), not_none, "wire-2"])
                                 .encode()).hexdigest()[:24]
            path = cache_root() / "evalplus" / f"{key}.json"
            if path.is_file():
                rec = json.loads(path.read_text())
                pair[k] = (rec["outputs"], rec["seconds"])
                continue
            todo.append((p.id, k, path, {"kind": "record", "source": p.canonical, "entry": p.entry_point,
                                         "inputs": inputs, "not_none": not_none,
                                         "limits": Limits(timeout=timeout, memory_mb=4096, file_mb=2048)}))
        out[p.id] = pair
    verdicts = check_many([t[3] for t in todo], mode=mode, workers=workers, desc="canonical outputs") if todo else []
    failed = []
    for (pid, k, path, _), v in zip(todo, verdicts):
        if v["status"] != "passed":
            failed.append(f"{pid}: the canonical solution failed on its own test inputs ({v['status']}): "
                          f"{v['detail']} {v.get('output', '')[-500:]}")
            continue
        out[pid][k] = (v["outputs"], v["canonical_seconds"])
        atomic_write_json(path, {"outputs": v["outputs"], "seconds": v["canonical_seconds"]})  # kept for reruns
    if failed:
        raise TaskError(failed[0] + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))
    return {pid: (pair[0], pair[1]) for pid, pair in out.items()}
