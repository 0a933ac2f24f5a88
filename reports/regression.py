"""Nightly regression: compare a candidate run against a baseline run.

For every (method, task) in the baseline, the candidate's final iteration is paired
with the baseline's item by item (shared sample ids, scores averaged over seeds) and
the change gets a paired-bootstrap interval; the primary metric is compared, plus the
metrics the task reports beside it (`reported` in its metrics.json). A change is a drop
when it is both statistically significant (in the bad direction) and larger than the
metric's tolerance (practical significance:
identical code gives a zero change, and a float-level change such as another summation
order stays far below every tolerance). Tolerances: `report.tolerance` of the candidate's
config ("task/metric" or "metric" -> units), else the tolerance the task declared for the
metric (core.facts, in metrics.json); `--tolerance X` sets one for every metric. A metric
declared `exact` (scorer canaries: fixed completions with known verdicts, no noise) drops
on any decrease beyond the tolerance, significant or not.

Training is compared too (reports.trajectory): every logged step of every training
iteration, which the same config must reproduce within a float-level tolerance. A result
or iteration the baseline has and the candidate lacks is missing. `gsil-bench compare`
exits 1 on a drop, a diverged trajectory or a missing result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from gsil_bench.core.facts import MetricFacts
from gsil_bench.core.io import atomic_write_text
from gsil_bench.core.layout import RunLayout
from gsil_bench.reports import html as H
from gsil_bench.reports.rundata import EvalResult, RunData, load_run
from gsil_bench.reports.stats import PairedDiff, mean_over_seeds, paired_bootstrap
from gsil_bench.reports.tables import aggregate, fmt
from gsil_bench.reports.trajectory import TrajectoryChange, compare_trajectories, trajectory_rows

log = logging.getLogger(__name__)
STATUS_MARK = {"drop": "▼ drop", "gain": "▲ gain", "ok": "ok", "unpaired": "unpaired", "missing": "MISSING"}


@dataclass
class Change:
    method: str
    task: str
    metric: str
    base_iteration: int
    cand_iteration: int | None
    base_value: float
    cand_value: float | None
    diff: PairedDiff | None
    status: str  # drop, gain, ok, unpaired (no shared per-item scores), missing
    why: list[str] = field(default_factory=list)  # missing: each file missing or untrusted, on which side


@dataclass
class CompareResult:
    baseline: RunData
    candidate: RunData
    alpha: float
    n_boot: int
    tolerance: dict[str, float]  # report.tolerance (+ --tolerance as "*")
    changes: list[Change] = field(default_factory=list)
    trajectories: list[TrajectoryChange] = field(default_factory=list)

    @property
    def drops(self) -> list[Change]:
        return [c for c in self.changes if c.status == "drop"]

    @property
    def missing(self) -> list[Change]:
        return [c for c in self.changes if c.status == "missing"]

    @property
    def diverged(self) -> list[TrajectoryChange]:
        return [t for t in self.trajectories if t.status != "same"]

    @property
    def failed(self) -> bool:
        return bool(self.drops or self.missing or self.diverged)

    @property
    def same_config(self) -> bool:
        return self.baseline.shared_hash == self.candidate.shared_hash


def tolerance_for(task: str, metric: str, facts: MetricFacts, overrides: dict[str, float] | None = None) -> float:
    """The smallest drop of `task`'s `metric` that counts: report.tolerance / --tolerance, else the declared one."""
    over = overrides or {}
    for key in (f"{task}/{metric}", metric, "*"):
        if key in over:
            return float(over[key])
    return facts.tolerance


def _status(higher_is_better: bool, d: PairedDiff | None, tolerance: float, exact: bool = False) -> str:
    if d is None:
        return "unpaired"
    if exact:  # no noise: the change itself is the evidence
        sign = (d.diff > 0) - (d.diff < 0)
    else:
        sign = d.sign
    sign = sign if higher_is_better else -sign
    if sign < 0 and abs(d.diff) > tolerance:
        return "drop"
    return "gain" if sign > 0 and abs(d.diff) > tolerance else "ok"


def _values(results: list[EvalResult], metric: str, n_boot: int, alpha: float) -> tuple[float, dict[str, float]]:
    """(value over seeds, seed-averaged per-item scores) of `metric` (the primary: as the tables do)."""
    if metric == results[0].primary:
        iv, items = aggregate(results, n_boot=n_boot, alpha=alpha)
        return iv.value, items
    per_seed = [r.item_scores(metric) for r in results]
    items = mean_over_seeds(per_seed) if all(per_seed) else {}
    return sum(float(r.metric(metric)["value"]) for r in results) / len(results), items


Key = tuple[str, int | None, int, str]  # (method, seed, iteration, task)


def _side(run: RunData) -> tuple[dict[Key, EvalResult], dict[Key, str]]:
    """A run's trusted results and its left-out ones (with why), by (method, seed, iteration, task)."""
    ok = {(e.method, e.seed, e.iteration, e.task): e for e in run.evals}
    bad = {(u.method, u.seed, u.iteration, u.task): u.reason for u in run.untrusted}
    return ok, bad


def _why_missing(run: RunData, key: Key, bad: dict[Key, str], side: str) -> str:
    """One line naming the file: the candidate's (or baseline's) result that is missing or not trusted."""
    method, seed, iteration, task = key
    if key in bad:
        return f"{side}: {bad[key]}"
    path = RunLayout(run.root).eval_dir(method, seed, iteration) / task / "metrics.json"
    return f"{side}: {path} does not exist"


def _units(base: RunData, cand: RunData) -> dict[tuple[str, str], tuple[int, list[int | None]]]:
    """(method, task) -> (the iteration compared: the last either side holds, its seeds on either side)."""
    keys = [k for run in (base, cand) for side in _side(run) for k in side]
    out: dict[tuple[str, str], tuple[int, list[int | None]]] = {}
    for method, task in dict.fromkeys((k[0], k[3]) for k in keys):
        it = max(k[2] for k in keys if (k[0], k[3]) == (method, task))
        seeds = sorted({k[1] for k in keys if (k[0], k[2], k[3]) == (method, it, task)}, key=lambda s: s or 0)
        out[(method, task)] = (it, seeds)
    return out


def _missing(result: CompareResult, method: str, task: str, iteration: int, seeds: list[int | None]) -> list[str]:
    """Why (method, task) cannot be paired at exactly `iteration` and `seeds`: one line per file."""
    why = []
    for run, side in ((result.baseline, "baseline"), (result.candidate, "candidate")):
        ok, bad = _side(run)
        for seed in seeds:
            key = (method, seed, iteration, task)
            if key not in ok:
                why.append(_why_missing(run, key, bad, side))
            elif not ok[key].scored:
                why.append(f"{side}: {ok[key].folder / 'metrics.json'} has no value for {ok[key].primary}")
    return why


def _mean(results: list[EvalResult], metric: str) -> float:
    """The metric's value over these seeds (nan when there are none)."""
    vals = [float(r.metric(metric)["value"]) for r in results]
    return sum(vals) / len(vals) if vals else float("nan")


def _compare_task(result: CompareResult, method: str, task: str, iteration: int, seeds: list[int | None]) -> None:
    """Pair (method, task) at exactly this iteration and these seeds on both sides; anything missing
    or untrusted on either side is a `missing` change naming the file, never another iteration."""
    base, cand, n_boot, alpha = result.baseline, result.candidate, result.n_boot, result.alpha
    b_res = [e for e in base.find(method, task, iteration) if e.seed in seeds]
    c_res = [e for e in cand.find(method, task, iteration) if e.seed in seeds]
    both_unscored = not b_res and not c_res and all(
        (method, s, iteration, task) in _side(run)[0] for run in (base, cand) for s in seeds)
    if both_unscored:  # e.g. a judge that parsed no rating, on both sides alike: nothing to compare
        return
    why = _missing(result, method, task, iteration, seeds)
    if why:
        metric = (b_res or c_res)[0].primary if (b_res or c_res) else "–"
        result.changes.append(Change(method, task, metric, iteration, None, _mean(b_res, metric), None, None,
                                     "missing", why))
        return
    for metric in b_res[0].shown:
        if metric not in (b_res[0].metrics.get("metrics") or {}):
            continue
        b_value, b_items = _values(b_res, metric, n_boot, alpha)
        c_value, c_items = _values(c_res, metric, n_boot, alpha)
        d = paired_bootstrap(b_items, c_items, n_boot=n_boot, alpha=alpha) if b_items and c_items else None
        facts = b_res[0].facts(metric)
        status = _status(facts.higher_is_better, d, tolerance_for(task, metric, facts, result.tolerance), facts.exact)
        result.changes.append(Change(method, task, metric, iteration, iteration, b_value, c_value, d, status))


def compare_runs(baseline: str | Path | RunData, candidate: str | Path | RunData, *, n_boot: int | None = None,
                 alpha: float | None = None, tolerance: float | dict[str, float] | None = None) -> CompareResult:
    """Pair every (method, task) of `baseline` with `candidate` (final iterations) and every
    training iteration's curve; n_boot/alpha default to the candidate's report block (else
    2000 / 0.05); `tolerance`: one number for every metric, or overrides by name (module docstring)."""
    base = baseline if isinstance(baseline, RunData) else load_run(baseline)
    cand = candidate if isinstance(candidate, RunData) else load_run(candidate)
    rc = cand.config.get("report") or {}
    n_boot = int(n_boot or rc.get("bootstrap") or 2000)
    alpha = float(alpha or rc.get("alpha") or 0.05)
    tol = {k: float(v) for k, v in (rc.get("tolerance") or {}).items()}
    if isinstance(tolerance, dict):
        tol.update(tolerance)
    elif tolerance is not None:
        tol["*"] = float(tolerance)
    result = CompareResult(base, cand, alpha, n_boot, tol)
    units = _units(base, cand)
    order = list(dict.fromkeys(base.methods + cand.methods))
    tasks = list(dict.fromkeys(base.tasks + cand.tasks + [t for _, t in units]))
    for (method, task), (iteration, seeds) in sorted(
            units.items(), key=lambda u: (order.index(u[0][0]) if u[0][0] in order else len(order),
                                          tasks.index(u[0][1]))):
        _compare_task(result, method, task, iteration, seeds)
    result.trajectories = compare_trajectories(base, cand, tol)
    return result


def changes_frame(result: CompareResult) -> pd.DataFrame:
    rows = []
    for c in result.changes:
        d = c.diff
        rows.append({
            "method": c.method, "task": f"{c.task} ({c.metric})", "baseline": fmt(c.base_value),
            "candidate": fmt(c.cand_value),
            "change [95% CI]": (f"{d.diff:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}]" if d else
                                ("–" if c.cand_value is None else f"{c.cand_value - c.base_value:+.4f} (unpaired)")),
            "p": f"{d.p_value:.3g}" if d else "–", "n shared": d.n if d else 0, "status": STATUS_MARK[c.status],
        })
    return pd.DataFrame(rows)


def _where(changes: list[Change]) -> str:
    """method/task, with the metrics in parentheses when a task has more than one compared."""
    by: dict[tuple[str, str], list[str]] = {}
    for c in changes:
        by.setdefault((c.method, c.task), []).append(c.metric)
    return ", ".join(f"{m}/{t}" + (f" ({', '.join(ms)})" if len(ms) > 1 else "") for (m, t), ms in by.items())


def _verdict(result: CompareResult) -> str:
    if result.failed:
        parts = []
        if result.drops:
            parts.append(f"{len(result.drops)} significant drop(s): " + _where(result.drops))
        if result.missing:
            parts.append(f"{len(result.missing)} missing or untrusted result(s): "
                         + "; ".join(f"{c.method}/{c.task} ({', '.join(c.why)})" for c in result.missing))
        if result.diverged:
            parts.append(f"{len(result.diverged)} training trajectorie(s) diverged: "
                         + ", ".join(f"{t.method}/seed-{t.seed}/iter-{t.iteration}" for t in result.diverged))
        return "REGRESSION: " + "; ".join(parts)
    return (f"no significant drop ({len(result.changes)} method/task metrics compared, "
            f"{len(result.trajectories)} training trajectories the same)")


def _header(result: CompareResult) -> list[str]:
    b, c = result.baseline, result.candidate
    lines = [f"baseline: {b.root} (shared hash {b.shared_hash})", f"candidate: {c.root} (shared hash {c.shared_hash})"]
    if not result.same_config:
        lines.append("WARNING: the shared blocks differ: this is not a like-for-like comparison.")
    tol = ", ".join(f"{k}: {v:g}" for k, v in sorted(result.tolerance.items())) or "none set"
    declared = sorted({(c.task, c.metric, b.facts(c.task, c.metric).tolerance) for c in result.changes})
    lines.append(f"paired bootstrap over shared sample ids, {result.n_boot} resamples, alpha={result.alpha}; "
                 f"a drop must be significant and larger than its tolerance (report.tolerance: {tol}; as the tasks "
                 "declare them: " + ", ".join(f"{t}/{m} {v:g}" for t, m, v in declared) + ")")
    return lines


def forest_plot(result: CompareResult, path: Path) -> Path | None:
    pts = [c for c in result.changes if c.diff is not None]
    if not pts:
        return None
    fig = Figure(figsize=(7, 0.35 * len(pts) + 1.2))  # no pyplot: the process's backend is left alone
    ax = fig.subplots()
    for y, c in enumerate(pts):
        d = c.diff
        assert d is not None
        color = {"drop": "#b3261e", "gain": "#137333"}.get(c.status, "#555555")
        ax.errorbar(d.diff, y, xerr=[[max(0.0, d.diff - d.ci_low)], [max(0.0, d.ci_high - d.diff)]], fmt="o", color=color, capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(pts)), [f"{c.method} / {result.baseline.display(c.task)} "
                                    f"{result.baseline.facts(c.task, c.metric).label}" for c in pts])
    ax.invert_yaxis()
    ax.set_xlabel("candidate - baseline (paired, 95% CI)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path


def write_compare(result: CompareResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write compare.md and compare.html (self-contained) into `out_dir`."""
    out = Path(out_dir)
    frame = changes_frame(result)
    verdict = _verdict(result)
    md = [f"# Regression: {result.candidate.name} vs {result.baseline.name}", "", f"**{verdict}**", ""]
    md += [f"- {line}" for line in _header(result)] + [""]
    md += [frame.to_markdown(index=False, tablefmt="github") if len(frame) else "(nothing to compare)", ""]
    traj = pd.DataFrame(trajectory_rows(result.trajectories))
    if len(traj):
        md += ["## Training trajectories (every logged step, same config)", "",
               traj.to_markdown(index=False, tablefmt="github"), ""]
    atomic_write_text(out / "compare.md", "\n".join(md))
    fig = forest_plot(result, out / "compare.png")
    cls = "bad" if result.failed else "ok"
    rows = frame.to_html(index=False, table_id="changes", classes="results", border=0) if len(frame) else ""
    if len(traj):
        rows += "<h2>Training trajectories</h2>" + traj.to_html(index=False, table_id="trajectories",
                                                              classes="results", border=0)
    body = (f"<h1>Regression: {H.esc(result.candidate.name)} vs {H.esc(result.baseline.name)}</h1>"
            f'<p class="{cls}" id="verdict">{H.esc(verdict)}</p>'
            + "".join(f"<p class=note>{H.esc(line)}</p>" for line in _header(result))
            + rows + H.figure(fig, "change per method and task with its paired 95% interval", "fig-compare"))
    atomic_write_text(out / "compare.html", H.page("gsil-bench compare", body))
    return out / "compare.md", out / "compare.html"
