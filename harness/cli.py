"""The `gsil-bench` command: run, train, eval, report, compare.

Each subcommand is a module of `harness.commands` with `configure(parser)` and
`run(args) -> int`. Every error the user can fix (a `core.errors.GsilError`: config
key, data file, model, task, run folder) is printed as one line (a validation error:
one line per problem) and exits 2, with no traceback. Ctrl-C prints one line ("interrupted;
rerun the same command to resume"), after the runner marked the running step and plan.json
`interrupted`, and exits 130 (128 + SIGINT, as shells do).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from types import ModuleType

from gsil_bench.core.datadir import absolute_env
from gsil_bench.core.errors import GsilError
from gsil_bench.core.progress import bar_lines
from gsil_bench.harness import __version__
from gsil_bench.harness.commands import compare, report, run, train
from gsil_bench.harness.commands import eval as eval_cmd

COMMANDS: dict[str, ModuleType] = {"run": run, "train": train, "eval": eval_cmd, "report": report, "compare": compare}

EXAMPLES = """examples:
  gsil-bench run configs/smoke.yaml                          every method on the embedded model, then the report
  gsil-bench run configs/smoke.yaml shared.eval.limit=8      the same with an override (YAML keys, on every command)
  gsil-bench run configs/smoke.yaml --dry-run                the plan: steps, what is reused or skipped
  gsil-bench -q run configs/smoke.yaml                       warnings only (--log-level debug|info|warning|error)
  gsil-bench train configs/smoke.yaml --method gsil-logistic --seed 0
  gsil-bench eval --model runs/smoke/spin/seed-0/iter-2/checkpoint --tasks gsm8k,humaneval --limit 20
  gsil-bench report runs/smoke
  gsil-bench compare --last runs/runs.sqlite runs/nightly   exits 1 on a significant drop
"""


LEVELS = ("debug", "info", "warning", "error")


def log_level(args: argparse.Namespace) -> int:
    """--log-level, else -v / -q, else $GSIL_LOG_LEVEL, else info."""
    name = args.log_level or ("debug" if args.verbose else "warning" if args.quiet else None) \
        or os.environ.get("GSIL_LOG_LEVEL", "info").lower()
    return int(getattr(logging, name.upper(), logging.INFO))


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-v / -q / --log-level: on the top parser (defaults) and again on every subcommand
    (defaults suppressed, so a value given before the command is kept), so they work
    anywhere on the line: `gsil-bench run CONFIG --log-level debug` as `gsil-bench --log-level debug run CONFIG`."""
    keep = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (same as --log-level debug)",
                        **({"default": False} if top else keep))
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only (same as --log-level warning)",
                        **({"default": False} if top else keep))
    parser.add_argument("--log-level", choices=LEVELS, type=str.lower, help="logging level (default: info; $GSIL_LOG_LEVEL)",
                        **({"default": None} if top else keep))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gsil-bench", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_global_options(parser, top=True)
    parser.add_argument("--version", action="version", version=f"gsil-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        child = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(child)
        add_global_options(child, top=False)
    return parser


INTERRUPTED = "interrupted; rerun the same command to resume"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except GsilError as err:  # an lm-eval flag answered with ours (harness.commands.lm_flags)
        print(f"gsil-bench: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=log_level(args),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    absolute_env()  # a relative $GSIL_DATA_DIR means the folder it names from here, in every child process too
    try:
        with bar_lines():  # off a terminal, other libraries' \r progress bars reach the log as lines
            return int(COMMANDS[args.command].run(args) or 0)
    except (GsilError, FileNotFoundError) as err:
        print(f"gsil-bench {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the running step is marked interrupted (harness.runner); no traceback
        print(INTERRUPTED, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
