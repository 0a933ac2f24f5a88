"""What a report needs to know about a metric, declared once, by the task that computes it.

A task declares, for each metric it writes (lm-eval's `register_metric(higher_is_better=...)`
is the model):

    METRICS = {"pass@1": proportion("pass@1", "share of problems whose first completion passes every test")}

and `tasks.base.write_result` copies the facts into `metrics.json` beside each value
(`"facts": {...}`) with the task's display name (`"display"`) and description (`"about"`).
Reports, tables, figures and `compare` read them from there; nothing downstream guesses
a fact from a metric's name. A metric named `family/part` (`score/turn1`, `agreement/code`)
takes its family's declaration unless it has its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

DEFAULT_TOLERANCE = 0.01


@dataclass(frozen=True)
class MetricFacts:
    """The facts of one metric (the `facts` entry of a metric in metrics.json)."""

    label: str  # display name, without the task: "pass@1", "exact match (strict)", "judge score (1-10)"
    glossary: str = ""  # one sentence: what the number measures
    higher_is_better: bool = True  # the direction tables (best, ▲/▼) and compare read
    percent: bool = False  # a fraction of items, shown as a percentage
    exact: bool = False  # no sampling noise (fixed inputs, known verdicts): any change beyond tolerance counts
    tolerance: float = DEFAULT_TOLERANCE  # smallest change that matters (compare), in the metric's units
    declared: bool = True  # False: a file or task without a declaration (the defaults above, label = name)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("declared")
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, name: str, higher_is_better: bool = True) -> MetricFacts:
        """The facts metrics.json records, or (a file written before facts existed) the undeclared defaults."""
        if not data:
            return undeclared(name, higher_is_better)
        known = {f.name for f in fields(cls)} - {"declared"}
        return cls(**{k: v for k, v in data.items() if k in known})


def undeclared(name: str, higher_is_better: bool = True) -> MetricFacts:
    return MetricFacts(label=name.replace("_", " "), higher_is_better=higher_is_better, declared=False)


def proportion(label: str, glossary: str, *, tolerance: float = 0.02, exact: bool = False) -> MetricFacts:
    """A fraction of 0/1 items (accuracy, exact match, pass@1): a percentage, 2 points matter."""
    return MetricFacts(label, glossary, percent=True, tolerance=tolerance, exact=exact)


def lookup(declared: Mapping[str, MetricFacts], name: str) -> MetricFacts | None:
    """`name`'s declaration, else its family's (the part before the first '/'); None when neither is declared."""
    if name in declared:
        return declared[name]
    family = name.split("/", 1)[0]
    if family in declared:
        part = name.split("/", 1)[1] if "/" in name else ""
        found = declared[family]
        return replace(found, label=f"{found.label}, {part.replace('_', ' ')}") if part else found
    return None
