"""The `gsil-bench` command: run, train, eval, report, compare.

Each subcommand lives beside the code it drives; this file only dispatches. A
subcommand module provides `configure_<name>(parser)` and `run_<name>(args) -> int`,
imported lazily so `gsil-bench --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("harness.runner", "train every method of an experiment, evaluate every checkpoint, write the report"),
    "train": ("trainers.cli", "train one method of an experiment config"),
    "eval": ("tasks.cli", "score a model or checkpoint on GSM8K, HumanEval, MT-Bench or any lm-eval task"),
    "report": ("reports.cli", "write comparison tables, ablation plots and the HTML report of a run folder"),
    "compare": ("reports.cli", "nightly regression: compare a candidate run against a baseline run"),
}


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gsil-bench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        getattr(importlib.import_module(module), f"configure_{name}")(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    module = COMMANDS[args.command][0]
    fn = getattr(importlib.import_module(module), f"run_{args.command}")
    from harness.models import ModelError
    from harness.strict import ConfigError

    try:
        return int(fn(args) or 0)
    except (UserError, ConfigError, ModelError, FileNotFoundError) as err:
        print(f"gsil-bench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
