"""HumanEval+ / MBPP+ differential testing, following EvalPlus's rules.

The expected output of every test input is computed by running the canonical solution
(trusted, but still in the sandbox) on a fresh copy of the inputs; a candidate passes
when its output on every input matches: exactly, or, for float outputs (atol = 1e-6
when the data set gives 0), within `numpy.allclose(rtol=1e-7, atol)` with the same type
and length. EvalPlus's special oracles apply (HumanEval/32 `find_zero` checks the root;
several MBPP+ problems compare sets, accept equivalent answers or only check for None).

MBPP+ stores tuples, sets and complex numbers as JSON lists/strings; `mbpp_inputs`
restores the argument types per problem as EvalPlus does. Expected outputs are cached
under the gsil-bench cache (keyed by a hash of the problem), so they are computed once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from collections.abc import Callable
from typing import Any

from core.models import cache_root
from tasks.sandbox import Limits, run_program

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


MBPP_SET_EQ = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
               "intersection_array", "find_dissimilar", "Diff")
MBPP_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")

# The checker appended after the candidate's code; `{dataset}` and `{entry}` are filled in.
CHECKER = r'''

def __gsil_check():
    import math as _math
    import pickle as _pickle
    _inputs, _expected, _atol = _pickle.load(open("tests.pkl", "rb"))
    _fn = {entry}
    _set_eq = {set_eq!r}
    _not_none = {not_none!r}

    def _poly(xs, x):
        return sum(c * _math.pow(x, i) for i, c in enumerate(xs))

    def _floats(x):
        if isinstance(x, float):
            return True
        if isinstance(x, (list, tuple)) and x:
            return all(isinstance(i, float) for i in x)
        return type(x).__name__ == "ndarray" and str(x.dtype) in ("float64", "float32")

    def _surface(b, h):
        return round(b ** 2 + 4 * (b * _math.sqrt((b / 2) ** 2 + h ** 2)) / 2)

    def _digits(a, b):
        x, y = str(a), str(b)
        w = max(len(x), len(y))
        return sum(abs(int(p) - int(q)) for p, q in zip(x.zfill(w), y.zfill(w)))

    for _inp, _exp in zip(_inputs, _expected):
        atol = _atol
        out = _fn(*_inp)
        exact = out == _exp
        if "{dataset}" == "mbpp":
            if "{entry}" == "are_equivalent":
                exact = True
            elif "{entry}" == "sum_div":
                exact = exact or out == 0
            elif "{entry}" == "surface_Area":
                exact = exact or abs(out - _surface(*_inp)) <= atol
            elif "{entry}" == "digit_distance_nums":
                exact = exact or out == _digits(*_inp)
            elif "{entry}" in _set_eq:
                exact = set(out) == set(_exp)
            elif "{entry}" in _not_none:
                exact = out == _exp if isinstance(out, bool) else _exp == (out is not None)
        if "{dataset}" == "humaneval" and "{entry}" == "find_zero":
            assert abs(_poly(*_inp, out)) <= atol
            continue
        if atol == 0 and _floats(_exp):
            atol = 1e-6
        if not exact and atol != 0:
            import numpy as _np
            assert type(out) == type(_exp)
            if isinstance(_exp, (list, tuple)):
                assert len(out) == len(_exp)
            assert _np.allclose(out, _exp, rtol=1e-07, atol=atol)
        else:
            assert exact


__gsil_check()
'''

_RECORDER = r'''

def __gsil_record():
    import copy, pickle, time
    inputs = pickle.load(open("inputs.pkl", "rb"))
    fn = {entry}
    outs, start = [], time.perf_counter()
    for inp in inputs:
        outs.append(fn(*copy.deepcopy(inp)))
    if {not_none}:  # unpicklable outputs (e.g. re.Match): EvalPlus only records whether they are None
        outs = [o is not None for o in outs]
    with open("expected.pkl", "wb") as fh:
        pickle.dump((outs, time.perf_counter() - start), fh)


__gsil_record()
'''


def checker_source(dataset: str, entry_point: str) -> str:
    return CHECKER.format(dataset=dataset, entry=entry_point, set_eq=MBPP_SET_EQ, not_none=MBPP_NOT_NONE)


def tests_file(inputs: list[Any], expected: list[Any], atol: float) -> bytes:
    return pickle.dumps((inputs, expected, atol))


def expected_outputs(task_id: str, canonical: str, entry_point: str, inputs: list[Any],
                     timeout: float = 120.0) -> tuple[list[Any], float]:
    """(outputs of the canonical solution on `inputs`, seconds it took), cached on disk."""
    not_none = task_id.startswith("Mbpp/") and entry_point in MBPP_NOT_NONE
    key = hashlib.sha256(json.dumps([task_id, canonical, entry_point, repr(inputs), not_none]).encode()).hexdigest()[:24]
    path = cache_root() / "evalplus" / f"{key}.pkl"
    if path.is_file():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    res = run_program(canonical + _RECORDER.format(entry=entry_point, not_none=not_none), Limits(timeout=timeout, memory_mb=4096, file_mb=2048),
                      files={"inputs.pkl": pickle.dumps(inputs)}, collect=["expected.pkl"])
    if not res.passed or "expected.pkl" not in res.files:
        raise RuntimeError(f"{task_id}: the canonical solution failed on its own test inputs "
                           f"({res.status}): {res.stderr[-500:]}")
    outs, seconds = pickle.loads(res.files["expected.pkl"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(res.files["expected.pkl"])
    tmp.replace(path)
    return outs, seconds
