"""Several processes working through one run folder: each claims the steps it runs.

A step is claimed by an exclusive, non-blocking `flock` on `<step folder>/.claim` (core.io.file_lock): only
one process runs it, and the kernel releases the claim when that process ends, so a
step of a process killed with `kill -9` is picked up by the next process that looks.
A step is finished when its DONE markers exist (the markers are the truth, as before),
and each step keeps its own record, `<step folder>/step.json` (status, worker, start,
wall time, error), so `plan.json` can be assembled by any process from the disk.

Who shares a folder this way:
- the processes of one `accelerate launch` / `torchrun`: they train together (data
  parallel), then each claims evaluation steps (one checkpoint x its tasks at a time);
- independent `gsil-bench run` processes with the same config and `--output`, on one
  machine or on several sharing the file system (one per GPU, or a Slurm array): each
  claims whole steps, training included, and the last one to finish writes the report.

`flock` needs a file system that honours it across machines (local disks, NFSv4, Lustre
and GPFS with locking enabled).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gsil_bench.core.io import atomic_write_json, file_lock, read_json

log = logging.getLogger(__name__)
CLAIM, RECORD = ".claim", "step.json"


@dataclass(frozen=True)
class Worker:
    """This process: host, pid and its rank in a launch (0 when launched alone)."""

    host: str
    pid: int
    rank: int

    @property
    def id(self) -> str:
        return f"{self.host}:{self.pid}" + (f":rank{self.rank}" if self.rank else "")


def this_worker() -> Worker:
    return Worker(socket.gethostname(), os.getpid(), int(os.environ.get("RANK", "0")))


@contextmanager
def claim(folder: Path) -> Iterator[bool]:
    """Try to claim `folder`'s step: yields True while this process holds it, False when
    another process does (never blocks)."""
    with file_lock(folder / CLAIM, wait=False) as got:
        yield got


def is_claimed(folder: Path) -> bool:
    """Whether some live process holds the step (a test claim, released at once)."""
    if not (folder / CLAIM).is_file():
        return False
    with claim(folder) as got:
        return not got


def read_record(folder: Path) -> dict[str, Any]:
    path = folder / RECORD
    try:
        rec = read_json(path) if path.is_file() else {}
    except ValueError:  # a torn record: the step is simply redone
        rec = {}
    return rec if isinstance(rec, dict) else {}


def write_record(folder: Path, rec: dict[str, Any]) -> None:
    atomic_write_json(folder / RECORD, rec)


class WorkStep(Protocol):
    id: str


def work_through(steps: Sequence[WorkStep], *, folder: Callable[[Any], Path], done: Callable[[Any], bool],
                 ready: Callable[[Any], bool | None], execute: Callable[[Any], bool],
                 since: float, poll: float = 2.0) -> None:
    """Claim and run every unfinished step until none is left to any process.

    `ready(step)`: True when its dependencies are done, None when they failed (the step
    cannot run this session), False while they are still being worked on. `execute(step)`
    runs it and returns True on success. A step that failed after `since` (in this
    session, in any process) is not retried; one that failed earlier is."""
    attempted: set[str] = set()
    while True:
        waiting = progressed = False
        for step in steps:
            if step.id in attempted or done(step):
                continue
            rec = read_record(folder(step))
            if rec.get("status") in ("failed", "blocked") and float(rec.get("ended", 0)) >= since:
                attempted.add(step.id)  # failed in this session (perhaps in another process): not retried
                continue
            state = ready(step)
            if state is None:
                attempted.add(step.id)
                continue
            if not state:
                waiting = True
                continue
            with claim(folder(step)) as got:
                if not got:
                    waiting = True
                    continue
                if done(step):
                    continue
                attempted.add(step.id)
                execute(step)
                progressed = True
        if not waiting:
            return
        if not progressed:
            time.sleep(poll)
