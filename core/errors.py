"""The one error base class of gsil-bench.

Every error caused by input the user controls (a config key, a data file, a model
name, a task name, a run folder) derives from `GsilError`; the command line prints
it as one line and exits 2, with no traceback. `ConfigError` names the file, line
and key; `ValidationError` holds every problem one validation pass found.
"""

from __future__ import annotations

from dataclasses import dataclass


class GsilError(Exception):
    """An error in the user's input or setup: printed as one line, exit status 2."""


class ConfigError(GsilError, ValueError):
    """A configuration problem; the message names the file, line and key."""


class DataError(ConfigError):
    """A data file problem; the message names the file, the line or record, and the field."""


class FileError(GsilError, ValueError):
    """A file the user gave or a run folder holds (data, completions, saved training state) whose
    content does not fit; the message names the file (and line)."""


@dataclass(frozen=True)
class Problem:
    """One problem a check found: the config key it concerns and what is wrong. The one
    representation of a problem, from the schema (core.strict) to every registry and file check;
    rendered once, with the YAML's file:line, by `core.strict.Located.render`."""

    key: str  # dotted config key, e.g. "shared.optimizer.lr" ("" when no key applies)
    message: str  # what was expected, without the key
    at: str | None = None  # the key whose line locates it, when not `key` (an unknown key's, a block's)

    def render(self, where: str | None = None) -> str:
        head = f"{where}: " if where else ""
        return f"{head}{self.key}: {self.message}" if self.key else f"{head}{self.message}"


class ValidationError(ConfigError):
    """Every problem a validation pass found, each on its own line with file:line and key."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        if len(self.lines) == 1:
            super().__init__(self.lines[0])
        else:
            super().__init__(f"{len(self.lines)} problems:\n  " + "\n  ".join(self.lines))
