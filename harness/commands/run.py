"""`gsil-bench run CONFIG [--output DIR] [--data-dir DIR] [--index FILE] [--fail-fast] [KEY=VALUE ...]`:
train every method × seed (× self-play iteration), evaluate every checkpoint, write the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands import add_overrides

HELP = "train every method of an experiment, evaluate every checkpoint, write the report"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="experiment YAML (see configs/)")
    parser.add_argument("--output", type=Path, help="run folder (default: runs/<experiment name>)")
    parser.add_argument("--data-dir", help="data directory (default: shared.data_dir, else $GSIL_DATA_DIR)")
    parser.add_argument("--index", type=Path, help="SQLite run index (default: <run folder's parent>/runs.sqlite)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed step")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from harness.runner import run_experiment
    from harness.validate import load_and_validate

    cfg, loc, files = load_and_validate(args.config, args.overrides, data_dir=args.data_dir)
    root = args.output or Path("runs") / cfg.name
    return run_experiment(cfg, root, data_dir=args.data_dir, index=args.index, loc=loc, fail_fast=args.fail_fast,
                          data_files=files)
