"""Crash-safe file helpers: atomic writes, append-only JSONL, DONE markers.

A step writes to a temporary name and renames when complete; a folder is complete
only when its DONE marker exists (written last). JSONL readers drop a torn last line
left by a crash, so appending resumes cleanly.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

DONE = "DONE"


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def append_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records, one JSON object per line, flushed and fsynced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        for rec in records:
            fh.write(json.dumps(rec, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a JSONL file we wrote; a torn (unterminated) last line from a crash is
    dropped, and with repair=True also cut from the file so appends continue cleanly."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1
    if good_end < len(data) and repair:
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return [json.loads(line) for line in data[:good_end].decode().splitlines() if line.strip()]


def iter_jsonl_file(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) from a user's JSONL file; bad lines raise ValueError
    naming the file and line."""
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def is_done(folder: str | Path) -> bool:
    return (Path(folder) / DONE).is_file()


def mark_done(folder: str | Path, info: dict[str, Any] | None = None) -> None:
    atomic_write_json(Path(folder) / DONE, info or {})


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_obj(obj: Any) -> str:
    """Short stable hash of JSON-able data (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
