"""Crash-safe file helpers: atomic writes, append-only JSONL, DONE markers, folder locks.

A step writes to a temporary name (unique per process and thread) and renames when
complete (`atomic_path`); a folder is complete only when its DONE marker exists (written last). A DONE
marker may record digests of the folder's result files (`mark_done(..., digest=...)`);
`is_done` then also checks them, so a result changed after it was written (by hand, or
by a stray process) is not trusted but recomputed, with a warning. `read_jsonl` (our
own append-only logs) drops a torn last line left by a crash, so appending resumes
cleanly; `read_jsonl_strict` (files written whole, atomically) treats any bad line as
an error. `file_lock` is the one file lock (`folder_lock`: a run or eval folder's, `FolderBusy`
when another process holds it).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
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
    """Another gsil-bench process holds the folder's lock (a run or an evaluation is using it)."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__(f"{folder}: another gsil-bench run or eval is using this folder; wait for it to finish")


def temp_name(path: str | Path) -> Path:
    """A temporary sibling of `path`, unique per process and thread."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}")


@contextmanager
def file_lock(path: str | Path, *, shared: bool = False, wait: bool = True) -> Iterator[bool]:
    """The one file lock of the package (`flock` on `path`, created if missing) held for the block:
    exclusive, or `shared` with other shared holders. `wait=False` never blocks: the block gets False
    when another process holds the lock (and runs without it), True when it holds it. The kernel
    releases it when the process ends, `kill -9` included."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def folder_lock(folder: str | Path, *, shared: bool = False) -> Iterator[None]:
    """Hold `folder`'s lock (the file .lock inside it) or raise FolderBusy: exclusive (`eval`), or
    shared by the `run` processes that work through one run folder together."""
    with file_lock(Path(folder) / LOCK, shared=shared, wait=False) as held:
        if not held:
            raise FolderBusy(folder)
        yield


def busy_ancestor(folder: str | Path) -> Path | None:
    """The nearest folder at or above `folder` whose lock another process holds, if any."""
    for parent in [Path(folder).resolve(), *Path(folder).resolve().parents]:
        if (parent / LOCK).is_file():
            with file_lock(parent / LOCK, wait=False) as free:  # any holder counts: `run` shares, `eval` not
                if not free:
                    return parent
    return None


@contextmanager
def atomic_path(path: str | Path, *, folder: bool = False) -> Iterator[Path]:
    """A temporary sibling of `path` (`temp_name`; created as an empty folder with `folder`) to write a
    file or a folder under: renamed onto `path` when the block ends without an error, removed when it
    raises. A folder already at `path` is kept as `<path>.old` until the new one is in place
    (`recover_path` brings it back after a crash between the two renames). The one
    temporary-name-then-rename of the package: a reader sees the old content or the new, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir() and path.is_dir():
        old = path.with_name(path.name + ".old")
        _remove(old)
        path.rename(old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def recover_path(path: str | Path) -> None:
    """After a crash inside `atomic_path` (for a path no other process writes): a folder's previous copy
    brought back when the new one never arrived, and the temporary siblings left behind removed."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        old.rename(path)
    for tmp in [*path.parent.glob(f".{path.name}.tmp*"), *path.parent.glob(f"{path.name}.tmp*")]:
        _remove(tmp)  # the second pattern: folders left by versions before atomic_path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


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
