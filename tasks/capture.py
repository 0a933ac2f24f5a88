"""Candidate-written text entering the trusted side, bounded where it enters.

A candidate controls its output and, through the sandbox server it shares an interpreter with,
every string of its replies (an exception's type name and message, a value's tags). The trusted
side keeps a bounded amount of each, so that a run's memory and its samples.jsonl grow with the
number of candidates, never with what they write:

- `Capture`: a sandboxed program's stdout or stderr, a pipe the trusted side reads (never a host
  file: on a file, fallocate with FALLOC_FL_KEEP_SIZE or the FS_IOC_RESVSP64 ioctl allocates disk
  past its size, which RLIMIT_FSIZE does not see); its head and tail are kept, and past the
  program's file limit the pipe is closed (the writer gets EPIPE);
- `read_until_exit`: a program's streams read until it ends or its deadline passes;
- `cap_text`: any other candidate-written text (error messages, type names, details), cut to
  `KEPT_TEXT` characters.
"""

from __future__ import annotations

import os
import select
import time

KEPT_TEXT = 2000  # characters of one candidate-written message the trusted side keeps
KEPT_OUTPUT = 4096  # bytes of a candidate's output a verdict keeps (head and tail)


def cap_text(text: str, n: int = KEPT_TEXT) -> str:
    """`text` cut to its first `n` characters, saying how many were cut."""
    return text if len(text) <= n else f"{text[:n]}...[{len(text) - n} characters cut]"


class Capture:
    """One output stream of a sandboxed program: a pipe whose write end the program gets, read here
    without blocking (`pump`); `keep` bytes are kept (head and tail), and after `limit` bytes in all
    the read end is closed."""

    def __init__(self, keep: int, limit: int) -> None:
        self.rfd, self.wfd = os.pipe()  # both close-on-exec; the child gets the write end by dup2
        os.set_blocking(self.rfd, False)
        self.keep, self.limit, self.total, self.stopped = keep, limit, 0, False
        self.head, self.tail = bytearray(), bytearray()

    @property
    def open(self) -> bool:
        return self.rfd >= 0

    def started(self) -> None:
        """The program holds the write end now: close this process's copy (so its end brings EOF)."""
        if self.wfd >= 0:
            os.close(self.wfd)
            self.wfd = -1

    def pump(self) -> None:
        """Read whatever the pipe holds now; close it at EOF or past the limit."""
        while self.rfd >= 0:
            try:
                chunk = os.read(self.rfd, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                self.close()
                return
            self._keep(chunk)
            if self.total > self.limit:
                self.stopped = True
                self.close()

    def _keep(self, chunk: bytes) -> None:
        half = self.keep // 2
        self.total += len(chunk)
        if len(self.head) < half:
            take = half - len(self.head)
            self.head += chunk[:take]
            chunk = chunk[take:]
        self.tail += chunk
        if len(self.tail) > half:
            del self.tail[: len(self.tail) - half]

    def finish(self, within: float = 1.0) -> str:
        """Read what is left (the program has ended), for at most `within` seconds; the kept text."""
        self.started()
        deadline = time.monotonic() + within
        while self.rfd >= 0 and (remaining := deadline - time.monotonic()) > 0:
            select.select([self.rfd], [], [], remaining)
            self.pump()
        self.close()
        return self.text()

    def text(self) -> str:
        cut = self.total - len(self.head) - len(self.tail)
        note = f"\n...[{cut} bytes cut]...\n".encode() if cut else b""
        end = f"\n...[output stopped after {self.limit} bytes]".encode() if self.stopped else b""
        return (bytes(self.head) + note + bytes(self.tail) + end).decode(errors="replace")

    def close(self) -> None:
        for name in ("rfd", "wfd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


def read_until_exit(pid: int, streams: tuple[Capture, ...], deadline: float) -> bool:
    """Read `streams` until process `pid` ends (True) or `deadline` (time.monotonic) passes (False)."""
    pidfd = os.pidfd_open(pid)  # readable once the process has ended
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready = select.select([pidfd] + [c.rfd for c in streams if c.open], [], [], remaining)[0]
            for c in streams:
                c.pump()
            if pidfd in ready:
                return True
    finally:
        os.close(pidfd)
