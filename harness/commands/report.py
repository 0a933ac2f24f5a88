"""`gsil-bench report`: comparison tables, ablation plots and the HTML report of a run folder.

    gsil-bench report RUN_DIR [--baseline sft] [--index runs.sqlite]
    gsil-bench report --trend runs.sqlite [--experiment NAME] [--output DIR]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from gsil_bench.core.errors import GsilError

log = logging.getLogger(__name__)
HELP = "write comparison tables, ablation plots and the HTML report of a run folder"


def stats_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", type=int, default=None, metavar="N",
                        help="bootstrap resamples (default: the (candidate) run's report.bootstrap, else 2000)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="significance level (default: the (candidate) run's report.alpha, else 0.05)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", type=Path, help="run folder (written by gsil-bench run)")
    parser.add_argument("--baseline", help="method the significance marks compare against (default: report.baseline)")
    stats_args(parser)
    parser.add_argument("--index", type=Path, help="also add the run to this runs.sqlite index")
    parser.add_argument("--trend", type=Path, metavar="INDEX",
                        help="instead: write a trend page of every metric over the runs in this runs.sqlite")
    parser.add_argument("--experiment", help="with --trend: only this experiment")
    parser.add_argument("--output", type=Path, help="with --trend: output folder (default: beside the index, trend/)")


def run(args: argparse.Namespace) -> int:
    if args.trend:
        from gsil_bench.reports.trend import write_trend

        out = args.output or args.trend.resolve().parent / "trend"
        page = write_trend(args.trend, out, args.experiment)
        print(page)
        return 0
    if args.run_dir is None:
        raise GsilError("give a RUN_DIR (or --trend INDEX)")
    from gsil_bench.reports.report import write_report
    from gsil_bench.trainers.anatomy import refresh_loss_facts

    refresh_loss_facts(args.run_dir)  # families, sweeps and the loss anatomy (losses.json)
    page = write_report(args.run_dir, baseline=args.baseline, n_boot=args.bootstrap, alpha=args.alpha)
    if args.index:
        from gsil_bench.reports.index import RunIndex

        RunIndex(args.index).add_run(args.run_dir)
    print(page)
    return 0
