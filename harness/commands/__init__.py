"""The subcommands of `gsil-bench`, one module each: `configure(parser)` adds its
arguments, `run(args) -> int` does the work.

Command modules import only argparse-level code at import time so `gsil-bench --help`
stays fast; the work (torch, transformers, lm-eval) is imported when a command runs.
Every command that takes an experiment reads `KEY=VALUE` overrides after its options,
with the same keys as the YAML (`shared.optimizer.lr=1e-6`, `shared.eval.limit=8`).
"""

from __future__ import annotations

import argparse


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """`KEY=VALUE ...` after the options, the same form on every command; options and
    overrides may be intermixed (`CONFIG --method X a.b=1 --seed 0`)."""
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides with the YAML's keys, e.g. shared.optimizer.lr=1e-6 shared.eval.limit=8")
    plain = parser.parse_known_args

    def intermixed(args=None, namespace=None):  # type: ignore[no-untyped-def]
        # plain argparse assigns every positional at its first occurrence; route the subparser's
        # parse_known_args through parse_known_intermixed_args (which itself calls parse_known_args)
        parser.parse_known_args = plain  # type: ignore[method-assign]
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            parser.parse_known_args = intermixed  # type: ignore[method-assign]

    parser.parse_known_args = intermixed  # type: ignore[method-assign]
