"""`gsil-bench report` and `gsil-bench compare`.

    gsil-bench report RUN_DIR [--baseline sft] [--index runs.sqlite]
    gsil-bench report --trend runs.sqlite [--experiment NAME] [--output DIR]
    gsil-bench compare BASELINE_RUN CANDIDATE_RUN [--output DIR] [--tolerance 0.0]
    gsil-bench compare --last runs.sqlite CANDIDATE_RUN   (baseline: the previous finished run)

`compare` exits 1 when the candidate has a significant drop (or lacks a result the
baseline has, unless --allow-missing), so a nightly job fails on a regression.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _stats_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", type=int, default=None, metavar="N",
                        help="bootstrap resamples (default: the (candidate) run's report.bootstrap, else 2000)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="significance level (default: the (candidate) run's report.alpha, else 0.05)")


def configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", type=Path, help="run folder (written by gsil-bench run)")
    parser.add_argument("--baseline", help="method the significance marks compare against (default: report.baseline)")
    _stats_args(parser)
    parser.add_argument("--index", type=Path, help="also add the run to this runs.sqlite index")
    parser.add_argument("--trend", type=Path, metavar="INDEX",
                        help="instead: write a trend page of every metric over the runs in this runs.sqlite")
    parser.add_argument("--experiment", help="with --trend: only this experiment")
    parser.add_argument("--output", type=Path, help="with --trend: output folder (default: beside the index, trend/)")


def run_report(args: argparse.Namespace) -> int:
    from reports.rundata import RunDataError

    try:
        return _report(args)
    except RunDataError as err:
        from harness.cli import UserError

        raise UserError(str(err)) from None


def _report(args: argparse.Namespace) -> int:
    from harness.cli import UserError

    if args.trend:
        from reports.trend import write_trend

        out = args.output or args.trend.resolve().parent / "trend"
        page = write_trend(args.trend, out, args.experiment)
        print(page)
        return 0
    if args.run_dir is None:
        raise UserError("give a RUN_DIR (or --trend INDEX)")
    from reports.report import write_report

    page = write_report(args.run_dir, baseline=args.baseline, n_boot=args.bootstrap, alpha=args.alpha)
    if args.index:
        from harness.store import RunIndex

        RunIndex(args.index).add_run(args.run_dir)
    print(page)
    return 0


def configure_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                        help="BASELINE_RUN CANDIDATE_RUN, or only CANDIDATE_RUN with --last")
    parser.add_argument("--last", type=Path, metavar="INDEX",
                        help="baseline = the latest finished run of the candidate's experiment in this runs.sqlite")
    parser.add_argument("--output", type=Path, help="where compare.md/.html go (default: CANDIDATE/compare)")
    _stats_args(parser)
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="ignore significant drops no larger than this (metric units; default 0)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="do not fail when the candidate lacks a method/task the baseline has")


def _baseline_and_candidate(args: argparse.Namespace) -> tuple[Path | None, Path]:
    from harness.cli import UserError

    if args.last:
        if len(args.runs) != 1:
            raise UserError("with --last give only the CANDIDATE_RUN")
        from harness.store import RunIndex

        if not args.last.is_file():
            raise FileNotFoundError(f"run index {args.last} does not exist")
        prev = RunIndex(args.last).previous_run(args.runs[0])
        return (Path(prev) if prev else None), args.runs[0]
    if len(args.runs) != 2:
        raise UserError("give BASELINE_RUN and CANDIDATE_RUN (or --last INDEX CANDIDATE_RUN)")
    return args.runs[0], args.runs[1]


def run_compare(args: argparse.Namespace) -> int:
    from reports.rundata import RunDataError

    try:
        return _compare(args)
    except RunDataError as err:
        from harness.cli import UserError

        raise UserError(str(err)) from None


def _compare(args: argparse.Namespace) -> int:
    from reports.regression import compare_runs, write_compare

    args.baseline, args.candidate = _baseline_and_candidate(args)
    if args.baseline is None:
        log.warning("no earlier finished run of this experiment in %s: nothing to compare against", args.last)
        return 0
    log.info("baseline %s, candidate %s", args.baseline, args.candidate)
    result = compare_runs(args.baseline, args.candidate, n_boot=args.bootstrap, alpha=args.alpha,
                          tolerance=args.tolerance)
    md, page = write_compare(result, args.output or args.candidate / "compare")
    print(md.read_text())
    log.info("comparison written to %s", page)
    if result.drops or (result.missing and not args.allow_missing):
        log.error("regression found: %d drop(s), %d missing", len(result.drops), len(result.missing))
        return 1
    return 0
