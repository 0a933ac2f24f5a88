"""`gsil-bench compare`: nightly regression of a candidate run against a baseline run.

    gsil-bench compare BASELINE_RUN CANDIDATE_RUN [--output DIR] [--tolerance X]
    gsil-bench compare --last runs.sqlite CANDIDATE_RUN   (baseline: the previous finished run)

Results are paired by method, seed, iteration and task exactly. Exit status:
    0  compared: no drop, no diverged trajectory, nothing missing
    1  a drop (significant and beyond the metric's tolerance), a training trajectory that left
       the baseline's (same config: same curve within float-level tolerance), or a result missing
       or untrusted on either side (deleted, unfinished, changed after it was written; unless
       --allow-missing): each named by its file
    2  bad input (no such run folder or index)
    3  --last found no earlier finished run of the experiment: nothing was compared
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gsil_bench.core.errors import GsilError
from gsil_bench.harness.commands.report import stats_args

log = logging.getLogger(__name__)
HELP = "nightly regression: compare a candidate run against a baseline run"
NO_BASELINE = 3  # exit status: --last found nothing to compare against (docs/nightly.md)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                        help="BASELINE_RUN CANDIDATE_RUN, or only CANDIDATE_RUN with --last")
    parser.add_argument("--last", type=Path, metavar="INDEX",
                        help="baseline = the latest finished run of the candidate's experiment in this runs.sqlite")
    parser.add_argument("--output", type=Path, help="where compare.md/.html go (default: CANDIDATE/compare)")
    stats_args(parser)
    parser.add_argument("--tolerance", type=float, default=None,
                        help="ignore significant drops no larger than this, for every metric (metric units; "
                             "default: the config's report.tolerance over per-metric defaults)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="do not fail when the candidate lacks a method/task the baseline has")


def _baseline_and_candidate(args: argparse.Namespace) -> tuple[Path | None, Path]:
    if args.last:
        if len(args.runs) != 1:
            raise GsilError("with --last give only the CANDIDATE_RUN")
        from gsil_bench.reports.index import RunIndex

        if not args.last.is_file():
            raise FileNotFoundError(f"run index {args.last} does not exist")
        prev = RunIndex(args.last).previous_run(args.runs[0])
        return (Path(prev) if prev else None), args.runs[0]
    if len(args.runs) != 2:
        raise GsilError("give BASELINE_RUN and CANDIDATE_RUN (or --last INDEX CANDIDATE_RUN)")
    return args.runs[0], args.runs[1]


def run(args: argparse.Namespace) -> int:
    from gsil_bench.reports.regression import compare_runs, write_compare

    args.baseline, args.candidate = _baseline_and_candidate(args)
    if args.baseline is None:
        print(f"no baseline: {args.last} holds no earlier finished run of {args.candidate}'s experiment; "
              f"nothing compared (exit {NO_BASELINE})", file=sys.stderr)
        return NO_BASELINE
    log.info("baseline %s, candidate %s", args.baseline, args.candidate)
    result = compare_runs(args.baseline, args.candidate, n_boot=args.bootstrap, alpha=args.alpha,
                          tolerance=args.tolerance)
    md, page = write_compare(result, args.output or args.candidate / "compare")
    print(md.read_text())
    log.info("comparison written to %s", page)
    missing = result.missing + [t for t in result.diverged if t.status == "missing"]
    diverged = [t for t in result.diverged if t.status == "diverged"]
    for c in result.missing:
        for why in c.why:
            (log.warning if args.allow_missing else log.error)("%s/%s not compared: %s", c.method, c.task, why)
    if result.drops or diverged or (missing and not args.allow_missing):
        log.error("regression found: %d drop(s), %d diverged trajectorie(s), %d missing", len(result.drops),
                  len(diverged), len(missing))
        return 1
    return 0
