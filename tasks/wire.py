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

This module is stdlib-only: it is also loaded inside the sandbox by `sandbox_server`.
"""

from __future__ import annotations

import base64
import json
import math
import os
import struct
from typing import Any

MAX_FRAME = 256 << 20
DIGEST_OVER = 16 << 20  # a call's result encoded larger than this crosses as a Digest
BIG_LEN = 100_000  # a result container longer than this crosses as a Digest of its repr
MAX_DEPTH = 100
_BIG = 1 << 1000


class WireError(ValueError):
    """A value that cannot cross, or a malformed frame."""


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


def decode(x: Any, depth: int = 0, refs: dict[str, Any] | None = None) -> Any:
    """Rebuild a value from its encoded form; `refs` resolves `Ref`s (sandbox side only)."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if not isinstance(x, dict) or len(x) != 1:
        raise WireError(f"malformed value of type {type(x).__name__}")
    (tag, v), = x.items()
    d = depth + 1
    if tag == "L":
        return [decode(i, d, refs) for i in _seq(v)]
    if tag == "T":
        return tuple(decode(i, d, refs) for i in _seq(v))
    if tag == "D":
        return {decode(k, d, refs): decode(val, d, refs) for k, val in (_pair(p) for p in _seq(v))}
    if tag == "S":
        return {decode(i, d, refs) for i in _seq(v)}
    if tag == "FS":
        return frozenset(decode(i, d, refs) for i in _seq(v))
    if tag == "B" and isinstance(v, str):
        return base64.b64decode(v.encode(), validate=True)
    if tag == "C":
        re_, im = (decode(i, d) for i in _pair(v))
        return complex(float(re_), float(im))
    if tag == "F" and v in ("nan", "inf", "-inf"):
        return float(v)
    if tag == "H" and isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int):
        return Digest(v[0], v[1])
    if tag == "I" and isinstance(v, str):
        return int(v, 16)
    if tag == "R" and isinstance(v, str):
        if refs is None or v not in refs:
            raise WireError(f"unknown sandbox object {v!r}")
        return refs[v]
    raise WireError(f"malformed value with tag {tag!r}")


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
    try:
        return json.loads(read(n).decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise WireError(f"malformed frame: {err}") from None


def read_frame(fd: int) -> Any:
    return parse_frame(read_exact(fd, 4), lambda n: read_exact(fd, n))
