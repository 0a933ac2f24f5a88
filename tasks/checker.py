"""The trusted checker: a benchmark's tests run here, the candidate runs in the sandbox.

A checker is a long-lived process of the harness's own interpreter (`CheckerPool` in
`tasks.sandbox` starts one per worker). For each job it starts a fresh sandbox running
`sandbox_server`, loads the candidate program into it, and evaluates the tests *here*:
the candidate's functions are `Remote` proxies whose arguments and return values cross
the pipe as plain data (`tasks.wire`). The candidate cannot see the expected outputs, the
test code or the verdict, cannot return an object with a forged `__eq__`, and cannot
replace a builtin or a helper of the tests: names the tests use resolve to the
checker's builtins and to the problem's own (trusted) prompt first; only the entry
point and names neither defines come from the candidate.

Jobs (dicts, pickled by the harness; the sandbox never sees them):
- `asserts`: `source`, `entry`, `tests` (HumanEval `check(...)`, MBPP asserts), `header`
  (the prompt, trusted, executed here), `setup` (MBPP test_setup_code: needs the
  candidate's classes, so it runs in the sandbox), `limits`;
- `differential`: EvalPlus; `base`/`plus` = (inputs, expected outputs encoded, seconds),
  `dataset`, `atol`; plus inputs only after the base inputs passed;
- `record`: the canonical solution's outputs on `inputs` (EvalPlus expected outputs).
A verdict: {"status": passed|failed|timeout|crashed, "seconds", "detail", "output",
"returncode"} (`differential`: {"base": verdict, "plus": verdict?}); `crashed` when the sandbox
died of a signal or never started (no candidate code ran: not a wrong answer). Everything the
candidate wrote is bounded where it enters (tasks.capture): its output (a pipe read here), every
error text of its replies, every detail.
"""

from __future__ import annotations

import bisect
import builtins
import cmath
import collections
import functools
import heapq
import itertools
import math
import operator
import os
import pickle
import re
import select
import string
import struct
import subprocess
import sys
import time
import traceback
import types
from typing import Any

from gsil_bench.tasks import wire
from gsil_bench.tasks.capture import KEPT_OUTPUT, Capture, cap_text
from gsil_bench.tasks.sandbox import Limits, Spawned, nproc_limit, server_argv

REPLY_CAP = wire.DIGEST_OVER + (1 << 20)  # the server digests larger results; a bigger frame is forged
BUILTIN_NAMES = frozenset(dir(builtins))
# The only modules a test's name may resolve to: the checker's own copies, fixed here. A test's `math` is
# this `math` when the candidate's `math` is the module `math`; any other module is an opaque Ref.
TRUSTED_MODULES = {m.__name__: m for m in (bisect, cmath, collections, functools, heapq, itertools, math, operator,
                                           re, string, sys)}
# The exception types a candidate's error may arrive as: a fixed table of builtin Exception classes.
EXCEPTIONS = {n: c for n, c in vars(builtins).items() if isinstance(c, type) and issubclass(c, Exception)}
MBPP_SET_EQ = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
               "intersection_array", "find_dissimilar", "Diff")
MBPP_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")


class Timeout(BaseException):
    """The candidate ran out of time (a BaseException: tests' `except Exception` cannot hide it)."""


class Broken(BaseException):
    """The sandbox died or answered something that is not a reply."""


class NotStarted(Broken):
    """The sandbox ended, or ran out of time, before its server said it was ready: no candidate code ran."""


class Sandbox:
    """A running `sandbox_server` and the checker's end of its pipe; the program's output (its stdout
    and stderr) is a capped pipe read while the checker waits for replies."""

    def __init__(self, mode: str, limits: Limits, nproc: int | None) -> None:
        self.err = Capture(KEPT_OUTPUT, limits.file_mb << 20)
        try:
            self.sp = Spawned(mode, limits, server_argv(mode), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=self.err.wfd, nproc=nproc)
        except BaseException:
            self.err.close()
            raise
        self.err.started()
        assert self.sp.proc.stdin is not None and self.sp.proc.stdout is not None
        self.wfd, self.rfd = self.sp.proc.stdin.fileno(), self.sp.proc.stdout.fileno()
        os.set_blocking(self.wfd, False)
        self.deadline = time.monotonic() + limits.timeout
        self.ready = False

    def _wait(self, fd: int, write: bool) -> None:
        """Until `fd` is ready (reading the program's output meanwhile); Timeout past the deadline."""
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout()
            reads = ([] if write else [fd]) + ([self.err.rfd] if self.err.open else [])
            readable, writable, _ = select.select(reads, [fd] if write else [], [], remaining)
            if self.err.open and self.err.rfd in readable:
                self.err.pump()
            if fd in (writable if write else readable):
                return

    def _read(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            self._wait(self.rfd, False)
            chunk = os.read(self.rfd, min(n - got, 1 << 20))
            if not chunk:
                raise Broken("the program's process ended")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _frame(self) -> Any:
        """The next frame, read and parsed by the deadline: parsing runs with the cyclic collector paused
        (tasks.wire: linear in the frame's size) and a frame parsed after the deadline is a Timeout."""
        (n,) = struct.unpack(">I", self._read(4))
        if n > REPLY_CAP:
            raise Broken(f"a reply of {n} bytes (limit {REPLY_CAP})")
        data = self._read(n)
        if time.monotonic() > self.deadline:
            raise Timeout()
        try:
            frame = wire.parse_frame(struct.pack(">I", n), lambda _: data)
        except wire.WireError as err:
            raise Broken(cap_text(str(err))) from None
        if time.monotonic() > self.deadline:
            raise Timeout()
        return frame

    def _hello(self) -> None:
        """The server's first frame, sent before it reads any candidate code: a sandbox that ends or runs
        out of time before it did not start."""
        try:
            if self._frame() != {"ready": True}:
                raise NotStarted("the sandbox did not start (a malformed greeting)")
        except (Broken, Timeout) as err:
            why = "within the time limit" if isinstance(err, Timeout) else f"({err})"
            raise NotStarted(f"the sandbox did not start {why}") from None
        self.ready = True

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        if not self.ready:
            self._hello()
        view = memoryview(wire.dumps(msg))
        while view:
            self._wait(self.wfd, True)
            try:
                view = view[os.write(self.wfd, view):]
            except BrokenPipeError:
                raise Broken("the program's process ended") from None
        reply = self._frame()
        if not isinstance(reply, dict) or len(reply) != 1 or not ({"ok", "E"} & set(reply)):
            raise Broken("a malformed reply")
        if "E" in reply:
            raise _exception(reply["E"])
        return reply

    def value(self, reply: dict[str, Any]) -> Any:
        """The reply's value, decoded by the call's deadline (linear time, see tasks.wire)."""
        try:
            return wire.decode(reply["ok"], budget=wire.Budget(self.deadline))
        except wire.Expired:
            raise Timeout() from None
        except (wire.WireError, TypeError, ValueError, RecursionError) as err:
            raise Broken(f"an unreadable value ({cap_text(str(err))})") from None

    def close(self) -> tuple[int | None, str]:
        rc = self.sp.kill()
        for fh in (self.sp.proc.stdin, self.sp.proc.stdout):
            if fh is not None:
                fh.close()
        return rc, self.err.finish()


class CandidateError(Exception):
    """An exception of a type the checker does not have, raised by the candidate."""


def _exception(info: Any) -> Exception:
    """The candidate's exception as one of a fixed table of builtin types, its text capped (tasks.capture)."""
    if not (isinstance(info, list) and len(info) == 2 and all(isinstance(i, str) for i in info)):
        raise Broken("a malformed error reply")
    name, msg = cap_text(info[0], 100), cap_text(info[1])
    cls = EXCEPTIONS.get(name)
    if cls is not None:
        try:
            return cls(msg)
        except Exception:
            pass
    return CandidateError(f"{name}: {msg}")


class Remote:
    """A function of the sandboxed program, called with plain data."""

    def __init__(self, sb: Sandbox, name: str, mode: str = "plain") -> None:
        self.sb, self.name, self.mode = sb, name, mode

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            req = {"op": "call", "fn": self.name, "args": wire.encode(list(args)),
                   "kwargs": [[k, wire.encode(v)] for k, v in kwargs.items()], "mode": self.mode}
        except wire.WireError as err:
            raise TypeError(f"the tests passed {self.name} an argument that cannot cross: {err}") from None
        return self.sb.value(self.sb.request(req))

    def __repr__(self) -> str:
        return f"<sandboxed function {self.name}>"


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _materialize(sb: Sandbox, name: str, info: Any) -> Any:
    """What a name the tests use stands for here. Nothing the candidate names is imported, looked up or
    called: a function or class is a `Remote` (calls cross to the sandbox), plain data is rebuilt, a module
    is the checker's own copy only when it is the fixed trusted module of that very name, and anything
    else is an opaque `Ref`."""
    kind = info.get("k") if isinstance(info, dict) else None
    if kind in ("function", "class"):
        return Remote(sb, name)
    if kind == "value":
        return sb.value({"ok": info.get("v")})
    if kind == f"module:{name}" and name in TRUSTED_MODULES:
        return TRUSTED_MODULES[name]
    return wire.Ref(name)


def _load(sb: Sandbox, job: dict[str, Any], names: list[str]) -> dict[str, Any]:
    kinds = sb.request({"op": "load", "source": job["source"], "setup": job.get("setup", ""), "names": names})["ok"]
    if not isinstance(kinds, dict):
        raise Broken("a malformed load reply")
    if kinds.get(job["entry"], {}).get("k") not in ("function", "class"):
        raise NameError(f"the program does not define the function {job['entry']}")
    return kinds


def run_asserts(sb: Sandbox, job: dict[str, Any]) -> None:
    """Run the problem's tests here against the sandboxed candidate; raise on failure."""
    tests = compile(job["tests"], "tests.py", "exec")
    trusted: dict[str, Any] = {"__name__": "__gsil_tests__"}
    if job.get("header"):
        try:
            exec(compile(job["header"], "prompt.py", "exec"), trusted)
        except Exception:  # a prompt that is not a whole module: its helpers are not needed
            trusted = {"__name__": "__gsil_tests__"}
    entry = job["entry"]
    wanted = sorted(n for n in _names(tests) | {entry}
                    if n == entry or (n not in trusted and n not in BUILTIN_NAMES))
    kinds = _load(sb, job, wanted)
    ns = dict(trusted)
    for name in wanted:
        if name in kinds:
            ns[name] = _materialize(sb, name, kinds[name])
    exec(tests, ns)


def _poly(xs: list[float], x: float) -> float:
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _floats(x: Any) -> bool:
    if isinstance(x, float):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(i, float) for i in x)


def _surface(b: float, h: float) -> float:
    return round(b ** 2 + 4 * (b * math.sqrt((b / 2) ** 2 + h ** 2)) / 2)


def _digits(a: int, b: int) -> int:
    x, y = str(a), str(b)
    w = max(len(x), len(y))
    return sum(abs(int(p) - int(q)) for p, q in zip(x.zfill(w), y.zfill(w)))


def _same_shape(out: Any, exp: Any) -> bool:
    """The same nesting before any tolerance: lists and tuples of the same type and length at every level,
    numbers where numbers are expected, else the same type. EvalPlus checks the top level only, so
    np.allclose broadcasts [[]] against [1.5] to an empty array and calls them equal; here they differ."""
    if isinstance(exp, (list, tuple)):
        return type(out) is type(exp) and len(out) == len(exp) and all(map(_same_shape, out, exp))
    if isinstance(exp, (int, float, complex)):
        return isinstance(out, (int, float, complex))
    return type(out) is type(exp)


def evalplus_match(dataset: str, entry: str, inp: list[Any], out: Any, exp: Any, atol: float) -> bool:
    """EvalPlus's comparison of one output (evalplus/eval/__init__.py `unsafe_execute`, its
    special oracles for HumanEval/32 and MBPP+), on plain data only; stricter than EvalPlus where
    EvalPlus is wrong: nested shapes are compared before the float tolerance (`_same_shape`)."""
    if dataset == "humaneval" and entry == "find_zero":
        return abs(_poly(inp[0], out)) <= atol
    if dataset == "mbpp" and entry in MBPP_NOT_NONE:  # out = ["b", bool] or ["n", out is not None]
        return bool(out[1] == exp)
    exact = out == exp
    if dataset == "mbpp":
        if entry == "are_equivalent":
            exact = True
        elif entry == "sum_div":
            exact = exact or out == 0
        elif entry == "surface_Area":
            exact = exact or abs(out - _surface(*inp)) <= atol
        elif entry == "digit_distance_nums":
            exact = exact or out == _digits(*inp)
        elif entry in MBPP_SET_EQ:
            exact = set(out) == set(exp)
    if atol == 0 and _floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        import numpy as np

        if type(out) is not type(exp) or not _same_shape(out, exp):
            return False
        return bool(np.allclose(out, exp, rtol=1e-07, atol=atol))
    return bool(exact)


def run_differential(sb: Sandbox, job: dict[str, Any], part: str) -> None:
    inputs, expected, _ = job[part]
    mode = "not_none" if job["dataset"] == "mbpp" and job["entry"] in MBPP_NOT_NONE else "plain"
    fn = Remote(sb, job["entry"], mode)
    for i, (inp, exp) in enumerate(zip(inputs, wire.decode(expected))):
        out = fn(*inp)
        try:
            ok = evalplus_match(job["dataset"], job["entry"], inp, out, exp, job["atol"])
        except Exception:
            ok = False
        if not ok:
            raise AssertionError(f"wrong output on {part} input {i}")


def _differential(sb: Sandbox, job: dict[str, Any]) -> None:
    _load(sb, job, [job["entry"]])
    run_differential(sb, job, "base")


def record(sb: Sandbox, job: dict[str, Any]) -> dict[str, Any]:
    _load(sb, {**job, "setup": ""}, [job["entry"]])
    mode = "is_not_none" if job.get("not_none") else "plain"
    outs, start = [], time.perf_counter()
    for inp in job["inputs"]:
        reply = sb.request({"op": "call", "fn": job["entry"], "args": wire.encode(list(inp)), "kwargs": [],
                            "mode": mode})
        sb.value(reply)
        outs.append(reply["ok"])
    return {"outputs": {"L": outs}, "canonical_seconds": time.perf_counter() - start}


def _verdict(fn: Any, sb: Sandbox) -> dict[str, Any]:
    start = time.monotonic()
    status, detail, extra = "passed", "", {}  # type: tuple[str, str, dict[str, Any]]
    try:
        extra = fn() or {}
    except Timeout:
        status, detail = "timeout", "time limit reached"
    except NotStarted as err:
        status, detail = "crashed", f"sandbox: {cap_text(str(err))}"
    except Broken as err:
        status, detail = "failed", f"sandbox: {cap_text(str(err))}"
    except AssertionError as err:  # the tests' own messages may quote the candidate's values: capped too
        status, detail = "failed", f"AssertionError{': ' + cap_text(str(err)) if str(err) else ''}{_where(err)}"
    except Exception as err:
        status, detail = "failed", f"{type(err).__name__}: {cap_text(str(err), 500)}{_where(err)}"
    return {"status": status, "seconds": time.monotonic() - start, "detail": detail, **extra}


def _where(err: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == "tests.py"]
    return f" (tests.py line {frames[-1].lineno})" if frames else ""


def check(job: dict[str, Any], mode: str, nproc: int | None = None) -> dict[str, Any]:
    """Run one job; see the module docstring."""
    limits: Limits = job["limits"]
    if job["kind"] == "differential" and job.get("plus"):
        limits = Limits(**{**limits.__dict__, "timeout": job["base"][2] + job["plus"][2]})
    sb = Sandbox(mode, limits, nproc)
    try:
        if job["kind"] == "asserts":
            result = _verdict(lambda: run_asserts(sb, job), sb)
        elif job["kind"] == "record":
            result = _verdict(lambda: record(sb, job), sb)
        else:
            sb.deadline = sb.sp.start + job["base"][2]
            result = {"base": _verdict(lambda: _differential(sb, job), sb)}
            if job.get("plus") and result["base"]["status"] == "passed":
                sb.deadline = time.monotonic() + job["plus"][2]
                result["plus"] = _verdict(lambda: run_differential(sb, job, "plus"), sb)
    finally:
        rc, output = sb.close()
    for v in (result.get("base"), result.get("plus")) if job["kind"] == "differential" else (result,):
        if v is not None:
            v.update(output=output, returncode=rc)
            if v["status"] == "failed" and v["detail"].startswith("sandbox:") and rc is not None and rc < 0:
                v["status"] = "crashed"
    return result


def main() -> None:
    """Serve jobs from the harness: 8-byte length + pickle in, the same out."""
    mode, workers, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    inp, out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # prints of the tests must not reach the channel
    while True:
        try:
            (n,) = struct.unpack(">Q", wire.read_exact(inp, 8))
            job = pickle.loads(wire.read_exact(inp, n))
        except EOFError:
            return
        data = pickle.dumps(check(job, mode, nproc_limit(job["limits"], workers, base)))
        os.write(out, struct.pack(">Q", len(data)))
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]


if __name__ == "__main__":
    main()
