"""Crash-safe file helpers: atomic writes, append-only JSONL, DONE markers, folder locks.

A step writes to a temporary name (unique per process and thread) and renames when
complete; a folder is complete only when its DONE marker exists (written last). A DONE
marker may record digests of the folder's result files (`mark_done(..., digest=...)`);
`is_done` then also checks them, so a result changed after it was written (by hand, or
by a stray process) is not trusted but recomputed, with a warning. `read_jsonl` (our
own append-only logs) drops a torn last line left by a crash, so appending resumes
cleanly; `read_jsonl_strict` (files written whole, atomically) treats any bad line as
an error. `folder_lock` is the one exclusive lock of a run or eval folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gsil_bench.core.errors import FileError, GsilError

log = logging.getLogger(__name__)
DONE = "DONE"
LOCK = ".lock"


class FolderBusy(GsilError, ValueError):
    """Another gsil-bench process holds the folder's lock."""


def temp_name(path: str | Path) -> Path:
    """A temporary sibling of `path`, unique per process and thread."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}")


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold `folder`'s exclusive lock (the file .lock inside it) or raise FolderBusy."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(f"{folder}: another gsil-bench run or eval is using this folder") from None
        yield


def busy_ancestor(folder: str | Path) -> Path | None:
    """The nearest folder at or above `folder` whose lock another process holds, if any."""
    for parent in [Path(folder).resolve(), *Path(folder).resolve().parents]:
        if not (parent / LOCK).is_file():
            continue
        with open(parent / LOCK) as fh:
            try:  # any holder counts: `run` processes share the lock, `eval` holds it alone
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return parent
            fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
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
    """Yield (line number, record) from a user's JSONL file, blank lines skipped; bad lines
    (binary, invalid JSON, not an object) raise FileError (a ValueError) naming the file and line."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            rec = parse_json_line(raw, path, lineno)
            if rec is not None:
                yield lineno, rec


def parse_json_line(raw: bytes, path: str | Path, lineno: int) -> Any:
    """One JSONL line as a dict (None for a blank line); FileError naming the file and line
    for binary data, invalid JSON or anything but an object."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FileError(f"{path}:{lineno}: not UTF-8 text (a binary file?)") from None
    if not line.strip():
        return None
    if "\0" in line:
        raise FileError(f"{path}:{lineno}: contains NUL bytes (a binary file?)")
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as err:
        raise FileError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
    except RecursionError:
        raise FileError(f"{path}:{lineno}: JSON nested too deeply") from None
    if not isinstance(rec, dict):
        raise FileError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
    return rec


def read_jsonl_strict(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file that was written whole: an invalid, non-object or unterminated
    (torn) line raises FileError naming the file and line."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if lineno == len(lines):
            raise FileError(f"{path}:{lineno}: torn last line (no newline): the file was cut or changed")
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise FileError(f"{path}:{lineno}: invalid JSON ({getattr(err, 'msg', err)})") from None
        if not isinstance(rec, dict):
            raise FileError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        out.append(rec)
    return out


def done_problem(folder: str | Path) -> str | None:
    """Why the folder is not complete and trusted (None: it is): no DONE marker, an unreadable
    marker, or a result file missing or changed since the marker recorded its digest."""
    marker = Path(folder) / DONE
    if not marker.is_file():
        return f"{marker} does not exist (the step did not finish)"
    try:
        digests = read_json(marker).get("digests") or {}
    except (ValueError, AttributeError):
        return f"{marker} is unreadable"
    for name, want in digests.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{path} does not exist (its digest is in {marker})"
        if sha256_file(path) != want:
            return f"{path} changed after it was written (its digest in {marker} differs)"
    return None


def is_done(folder: str | Path) -> bool:
    """The folder's DONE marker exists and every file digest it records still matches (a step
    whose result changed is redone: the warning says so)."""
    problem = done_problem(folder)
    if problem is not None and (Path(folder) / DONE).is_file():
        log.warning("%s; not trusted: the step runs again", problem)
    return problem is None


def mark_done(folder: str | Path, info: dict[str, Any] | None = None, *, digest: Sequence[str] = ()) -> None:
    """Write the DONE marker last; `digest`: result files whose sha256 it records."""
    info = dict(info or {})
    if digest:
        info["digests"] = {name: sha256_file(Path(folder) / name) for name in digest}
    atomic_write_json(Path(folder) / DONE, info)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_obj(obj: Any) -> str:
    """Short stable hash of JSON-able data (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
