"""The untrusted side: runs inside the sandbox, loads one candidate program and serves calls.

Started as `python -I -S -B sandbox_server.py` with `wire.py` beside it (both stdlib-only).
stdin carries requests and stdout replies, as `wire` frames; both are moved to private
descriptors first, so the candidate's prints go to stderr (the sandbox's output file)
and reading stdin gives EOF. Its first frame, written before any request is read (so before any
candidate code runs), is {"ready": true}: the checker tells a sandbox that never started from a
candidate that failed. Requests:

    {"op": "load", "source": str, "setup": str, "names": [str]}  -> {"ok": {name: kind}} for the
        names the program defines (kind: function, class, module:<name>, value with "v", object)
    {"op": "call", "fn": name, "args": [...], "kwargs": [[k, v], ...], "mode": "plain"
        | "not_none" | "is_not_none"}            -> {"ok": encoded result} or {"E": [type, message]}

Nothing here is trusted: the candidate shares this interpreter and may rewrite any of
it. The checker that sends the requests treats every reply as untrusted plain data.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import struct
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wire  # noqa: E402  (stdlib-only sibling, not the tasks package: this runs with -I -S)


def _kind(value: object) -> dict:
    if isinstance(value, types.ModuleType):
        return {"k": "module:" + value.__name__}
    if isinstance(value, type):
        return {"k": "class"}
    if callable(value):
        return {"k": "function"}
    try:
        return {"k": "value", "v": wire.encode(value)}
    except (wire.WireError, RecursionError):
        return {"k": "object"}


def _error(err: BaseException) -> dict:
    return {"E": [type(err).__name__, str(err)[:2000]]}


def _call(ns: dict, req: dict) -> dict:
    fn = ns[req["fn"]]
    args = wire.decode(req.get("args", {"L": []}), refs=ns)
    kwargs = {k: wire.decode(v, refs=ns) for k, v in req.get("kwargs", [])}
    out = fn(*args, **kwargs)
    mode = req.get("mode", "plain")
    if mode == "not_none":  # EvalPlus: a bool is compared, anything else only for being None
        out = ["b", out] if isinstance(out, bool) else ["n", out is not None]
    elif mode == "is_not_none":
        out = out is not None
    elif isinstance(out, (list, tuple, set, frozenset, dict)) and len(out) > wire.BIG_LEN:
        text = repr(out).encode()  # C speed; tagging millions of items in Python would not be
        return {"ok": {"H": [hashlib.sha256(text).hexdigest(), len(text)]}}
    return {"ok": wire.encode(out)}


def _reply(fd: int, reply: dict) -> None:
    body = json.dumps(reply, separators=(",", ":"), allow_nan=False).encode()
    if len(body) > wire.DIGEST_OVER and "ok" in reply:  # body is b'{"ok":' + value + b'}'
        body = json.dumps({"ok": {"H": [hashlib.sha256(body[6:-1]).hexdigest(), len(body) - 7]}}).encode()
    os.write(fd, struct.pack(">I", len(body)))
    view = memoryview(body)
    while view:
        view = view[os.write(fd, view):]


def main() -> None:
    req_fd, resp_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    wire.write_frame(resp_fd, {"ready": True})
    ns: dict = {"__name__": "__main__", "__builtins__": builtins}
    while True:
        try:
            req = wire.read_frame(req_fd)
        except EOFError:
            return
        try:
            if req.get("op") == "load":
                code = compile(req["source"], "program.py", "exec")
                exec(code, ns)
                if req.get("setup"):
                    exec(compile(req["setup"], "test_setup.py", "exec"), ns)
                names = [n for n in req.get("names", []) if isinstance(n, str) and n in ns]
                reply = {"ok": {n: _kind(ns[n]) for n in names}}
            else:
                reply = _call(ns, req)
        except SystemExit as err:
            reply = _error(RuntimeError(f"the program called exit({err.code!r})"))
        except BaseException as err:  # the candidate's exception, reported as data
            reply = _error(err)
        try:
            _reply(resp_fd, reply)
        except (wire.WireError, ValueError, RecursionError) as err:
            wire.write_frame(resp_fd, _error(err))
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    main()
