"""Plain data across the sandbox boundary: a tagged-JSON codec and length-prefixed frames.

Only these types cross: None, bool, int, float (nan/inf too), complex, str, bytes, list,
tuple, dict, set, frozenset, and (requests only) `Ref`, a name in the sandbox's globals.
Values are rebuilt from scratch on the receiving side, so an object that overrides
`__eq__` or subclasses a builtin arrives as the plain builtin value (or is refused):
nothing a candidate program defines ever runs in the process that decides the verdict.

Encoding: scalars are JSON scalars (ints beyond JSON-friendly size as hex); every other
value is a one-key object {tag: payload}. A call's result whose encoding exceeds
`DIGEST_OVER`, or a container of more than `BIG_LEN` items (digest of its repr), crosses
as a `Digest`: huge outputs (MBPP+ `combinations_colors` returns ~1 GB) are then compared
exactly (and order-sensitively) by digest, which a wrong answer cannot match without
knowing the expected output it never sees. Frames are a 4-byte big-endian length and that
many bytes of UTF-8 JSON; a frame over `MAX_FRAME` is refused before it is read.

Decoding untrusted data takes time and memory linear in the frame: `decode` checks a `Budget`
(the call's deadline) as it goes, and refuses a container holding more than `HASH_GROUP`
distinct values that share one hash (ints `k + i * (2**61 - 1)` all hash alike, which makes
building a set or dict of them, here or in a test's `set(...)`, quadratic). Parsing a frame and
decoding a value run with the cyclic garbage collector paused (`collector_paused`): JSON holds
no cycles, and the collector's passes over millions of fresh containers made a 17 MB frame of
two million empty lists take 5 s to parse instead of 1 s.

This module is stdlib-only: it is also loaded inside the sandbox by `sandbox_server`.
"""

from __future__ import annotations

import base64
import gc
import json
import math
import os
import struct
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MAX_FRAME = 256 << 20
DIGEST_OVER = 16 << 20  # a call's result encoded larger than this crosses as a Digest
BIG_LEN = 100_000  # a result container longer than this crosses as a Digest of its repr
MAX_DEPTH = 100
HASH_GROUP = 64  # distinct values one container may hold under one hash
_BIG = 1 << 1000
# Types whose hash a candidate can choose (str and bytes hashes are salted per process).
_HASHED = frozenset({int, float, complex, tuple, frozenset})


class WireError(ValueError):
    """A value that cannot cross, or a malformed frame."""


class Expired(Exception):
    """Decoding ran past the call's deadline."""


class Budget:
    """The deadline a decoding must finish by (time.monotonic), checked every `EVERY` containers."""

    EVERY = 64
    __slots__ = ("deadline", "n")

    def __init__(self, deadline: float) -> None:
        self.deadline, self.n = deadline, 0

    def tick(self) -> None:
        self.n += 1
        if self.n % self.EVERY == 0 and time.monotonic() > self.deadline:
            raise Expired("decoding ran past the time limit")


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while parsing or decoding (it is restored as it was found)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def check_hashes(items: list[Any]) -> None:
    """Refuse more than HASH_GROUP distinct values sharing one hash (in linear time: values with a
    hash that occurs more than HASH_GROUP times are compared with at most HASH_GROUP others)."""
    if len(items) <= HASH_GROUP:
        return
    hashed = [i for i in items if type(i) in _HASHED]
    try:
        hashes: list[int | None] = list(map(hash, hashed))
    except TypeError:  # a tuple holding a list: never a key, so never a set or dict member
        hashes = [_hash(i) for i in hashed]
    for h in [h for h, n in Counter(hashes).items() if n > HASH_GROUP and h is not None]:
        distinct: list[Any] = []
        for v, hv in zip(hashed, hashes):
            if hv == h and not any(v == d for d in distinct):
                distinct.append(v)
                if len(distinct) > HASH_GROUP:
                    raise WireError(f"a container of {len(items)} values, more than {HASH_GROUP} sharing one hash")


def _hash(v: Any) -> int | None:
    try:
        return hash(v)
    except TypeError:
        return None


class Ref:
    """A reference to a global of the sandboxed program (an object that cannot cross)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<sandbox object {self.name}>"


class Digest:
    """Stands for a huge value: the sha256 of its encoding (or repr). Equal only to a
    Digest of the same text (exact, order-sensitive)."""

    __slots__ = ("hex", "size")

    def __init__(self, hex_: str, size: int) -> None:
        self.hex, self.size = hex_, size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digest) and (other.hex, other.size) == (self.hex, self.size)

    def __hash__(self) -> int:
        return hash(self.hex)

    def __repr__(self) -> str:
        return f"<value of {self.size} bytes, sha256 {self.hex[:12]}>"


def encode(x: Any, depth: int = 0) -> Any:
    """A JSON-able form of plain data `x` (subclasses of builtins are cast to the builtin)."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    if x is None or x is True or x is False:
        return x
    if isinstance(x, bool):  # a bool subclass: numpy.bool_ is not one, see below
        return bool(x)
    if isinstance(x, int):
        x = int(x)
        return x if -_BIG < x < _BIG else {"I": format(x, "x")}
    if isinstance(x, float):
        x = float(x)
        return x if math.isfinite(x) else {"F": repr(x)}
    if isinstance(x, str):
        return str(x)
    d = depth + 1
    if isinstance(x, (bytes, bytearray)):
        return {"B": base64.b64encode(bytes(x)).decode()}
    if isinstance(x, complex):
        return {"C": [encode(x.real, d), encode(x.imag, d)]}
    if isinstance(x, list):
        return {"L": [encode(i, d) for i in list.__iter__(x)]}
    if isinstance(x, tuple):
        return {"T": [encode(i, d) for i in tuple.__iter__(x)]}
    if isinstance(x, dict):
        return {"D": [[encode(k, d), encode(v, d)] for k, v in dict.items(x)]}
    if isinstance(x, frozenset):
        return {"FS": [encode(i, d) for i in frozenset.__iter__(x)]}
    if isinstance(x, set):
        return {"S": [encode(i, d) for i in set.__iter__(x)]}
    if isinstance(x, Ref):
        return {"R": x.name}
    if type(x).__module__ == "numpy" and hasattr(x, "item") and getattr(x, "shape", None) == ():
        return encode(x.item(), depth)  # numpy scalars: their Python value, as `==` would see it
    raise WireError(f"a {type(x).__name__} cannot cross the sandbox boundary (plain data only)")


def decode(x: Any, depth: int = 0, refs: dict[str, Any] | None = None, budget: Budget | None = None) -> Any:
    """Rebuild a value from its encoded form; `refs` resolves `Ref`s (sandbox side only); `budget`
    bounds the time (Expired past its deadline). The collector is paused for the whole value."""
    if depth == 0 and isinstance(x, dict):
        with collector_paused():
            return _decode(x, 0, refs, budget)
    return _decode(x, depth, refs, budget)


def _decode(x: Any, depth: int, refs: dict[str, Any] | None, budget: Budget | None) -> Any:
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if not isinstance(x, dict) or len(x) != 1:
        raise WireError(f"malformed value of type {type(x).__name__}")
    if budget is not None:
        budget.tick()
    (tag, v), = x.items()
    if tag in _CONTAINERS:
        items = [_decode(i, depth + 1, refs, budget) for i in _seq(v)]
        check_hashes(items)
        return _CONTAINERS[tag](items)
    if tag == "D":
        pairs = [_pair(p) for p in _seq(v)]
        keys = [_decode(k, depth + 1, refs, budget) for k, _ in pairs]
        check_hashes(keys)
        return dict(zip(keys, [_decode(val, depth + 1, refs, budget) for _, val in pairs]))
    if tag == "R" and isinstance(v, str):
        if refs is None or v not in refs:
            raise WireError(f"unknown sandbox object {v!r}")
        return refs[v]
    return _scalar(tag, v, depth)


_CONTAINERS: dict[str, Any] = {"L": list, "T": tuple, "S": set, "FS": frozenset}


def _scalar(tag: str, v: Any, depth: int) -> Any:
    if tag == "B" and isinstance(v, str):
        return base64.b64decode(v.encode(), validate=True)
    if tag == "C":
        re_, im = (_decode(i, depth + 1, None, None) for i in _pair(v))
        return complex(float(re_), float(im))
    if tag == "F" and v in ("nan", "inf", "-inf"):
        return float(v)
    if tag == "H" and isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int):
        return Digest(v[0], v[1])
    if tag == "I" and isinstance(v, str):
        return int(v, 16)
    raise WireError(f"malformed value with tag {tag[:40]!r}")


def _seq(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise WireError("malformed sequence")
    return v


def _pair(v: Any) -> list[Any]:
    if not isinstance(v, list) or len(v) != 2:
        raise WireError("malformed pair")
    return v


def dumps(obj: Any) -> bytes:
    """A message (JSON-able dict whose values are already `encode`d) as one frame."""
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_FRAME:
        raise WireError(f"message of {len(data)} bytes exceeds {MAX_FRAME}")
    return struct.pack(">I", len(data)) + data


def write_frame(fd: int, obj: Any) -> None:
    view = memoryview(dumps(obj))
    while view:
        view = view[os.write(fd, view):]


def read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the channel")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def parse_frame(header: bytes, read: Any) -> Any:
    """Parse one frame given its 4-byte header and a `read(n)` for the body."""
    (n,) = struct.unpack(">I", header)
    if n > MAX_FRAME:
        raise WireError(f"frame of {n} bytes exceeds {MAX_FRAME}")
    data = read(n)
    try:
        with collector_paused():
            return json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # ValueError: JSONDecodeError, huge ints
        raise WireError(f"malformed frame: {err}") from None


def read_frame(fd: int) -> Any:
    return parse_frame(read_exact(fd, 4), lambda n: read_exact(fd, n))
