"""Progress that a log file shows too.

`Progress` is a tqdm bar on a terminal; when stderr is not a terminal (a log file, a
batch job, CI) tqdm draws nothing, so it writes a `logging` line instead: at most one
every `GSIL_PROGRESS_SECONDS` seconds (default 30) and one at the end, e.g.

    12:01:07 INFO core.progress: mt_bench judge: 96/160 (60%), 41.2 s elapsed, ~27.5 s left

`track(iterable, total, desc)` wraps a loop the same way. Generation, reference scoring,
sandboxed execution, judging and training all report through it; `Progress.within` reports
inside one long unit (a generation batch, step by step). `bar_lines()` (the CLI wraps every
command in it) routes other libraries' carriage-return bars into lines when stderr is a file.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm.auto import tqdm

log = logging.getLogger(__name__)
T = TypeVar("T")


def interval_s() -> float:
    """Seconds between progress lines in a log file ($GSIL_PROGRESS_SECONDS, default 30)."""
    try:
        return max(0.0, float(os.environ.get("GSIL_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


class Progress:
    """A tqdm bar on a terminal, periodic log lines otherwise."""

    def __init__(self, total: int | None, desc: str, *, initial: int = 0, unit: str = "it",
                 logger: logging.Logger | None = None) -> None:
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=None)
        self.to_log = bool(self.bar.disable)  # tqdm's own test: not a terminal
        self.total, self.desc, self.unit, self.n, self.start_n = total, desc, unit, initial, initial
        self.log = logger or log
        self.started = self.last = time.monotonic()
        self.postfix = ""

    def set_postfix(self, **values: Any) -> None:
        self.bar.set_postfix(**values)
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.n += n
        now = time.monotonic()
        if self.to_log and (now - self.last >= interval_s() or self.n == self.total):
            self.last = now
            self.log.info("%s", self.line(now))

    def within(self, detail: str) -> None:
        """Progress inside one long unit of work (a generation batch's decoding step): in a log file,
        a line with `detail` at most every $GSIL_PROGRESS_SECONDS; nothing on a terminal (the bar moves per unit)."""
        now = time.monotonic()
        if self.to_log and now - self.last >= interval_s():
            self.last = now
            self.log.info("%s (%s)", self.line(now), detail)

    def line(self, now: float | None = None) -> str:
        """`desc: n/total (pct), elapsed, ~left` (plus the postfix)."""
        elapsed = (now or time.monotonic()) - self.started
        done = self.n - self.start_n
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} ({100 * self.n / self.total:.0f}%)"
        text += f" {self.unit}, {elapsed:.1f} s elapsed"
        if self.total and done > 0 and self.n < self.total:
            text += f", ~{elapsed / done * (self.total - self.n):.1f} s left"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Iterate with a Progress (total taken from len() when not given)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit) as bar:
        for item in iterable:
            yield item
            bar.update(1)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


class BarLines:
    """A text stream that turns carriage-return progress bars into plain lines.

    Off a terminal, any library's tqdm bar (lm-eval's request bars, `Loading weights`, a
    data set's map) would write `\\r`-separated redraws into the log file. Written through
    this stream, a bar becomes one line at most every $GSIL_PROGRESS_SECONDS plus its
    final state; text without `\\r` passes through unchanged."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pending = ""  # the bar being redrawn (text after its last \r), not yet ended by \n
        self.last = time.monotonic()

    def write(self, text: str) -> int:
        if not self.pending and "\r" not in text:
            return int(self.inner.write(text))
        *ended, rest = (self.pending + text).split("\n")
        for line in ended:
            self._emit(line)
        self.pending = ("\r" + rest.rsplit("\r", 1)[-1]) if "\r" in rest else rest
        if self.pending and not rest.endswith("\r") and time.monotonic() - self.last >= interval_s():
            self._emit(self.pending)
        return len(text)

    def _emit(self, line: str) -> None:
        shown = ANSI.sub("", line.rsplit("\r", 1)[-1]).rstrip()
        if shown:
            self.inner.write(shown + "\n")
            self.last = time.monotonic()

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, ... of the real stream
        return getattr(self.inner, name)


@contextmanager
def bar_lines() -> Iterator[None]:
    """While the block runs, and only when stderr is not a terminal: third-party progress bars
    reach the log as lines (BarLines on stderr and stdout) and the Hugging Face libraries' own
    bars are off ($HF_HUB_DISABLE_PROGRESS_BARS, $HF_DATASETS_DISABLE_PROGRESS_BARS, unless set)."""
    import sys

    if sys.stderr.isatty():
        yield
        return
    env = {key: os.environ.get(key) for key in QUIET_ENV}
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = BarLines(sys.stdout), BarLines(sys.stderr)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        for key, old in env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
