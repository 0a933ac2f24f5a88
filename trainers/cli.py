"""`gsil-bench train CONFIG --method NAME [--seed S] [--output DIR] [--data-dir DIR] [key=value ...]`:
train one method of an experiment (every seed of `shared.seeds` unless --seed is given)
into `<output>/<method>/seed-<s>/iter-<k>/`; the default output is runs/<experiment name>.

Run it under `accelerate launch` (e.g. `accelerate launch --cpu --num_processes 2 -m
harness.cli train ...`) for data-parallel training; rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("--method", required=True, help="method label from the config's methods list")
    parser.add_argument("--seed", type=int, default=None, help="train this seed only (default: every shared.seeds)")
    parser.add_argument("--output", default=None, help="run folder (default: runs/<experiment name>)")
    parser.add_argument("--data-dir", default=None, help="data directory (default: shared.data_dir, $GSIL_DATA_DIR)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. shared.optimizer.lr=1e-6 shared.train.max_steps=10")
    _allow_intermixed(parser)


def _allow_intermixed(parser: argparse.ArgumentParser) -> None:
    """Let key=value overrides follow the options (`CONFIG --method X a.b=1`): plain argparse
    assigns every positional at its first occurrence. The subparser's parse_known_args is
    routed through parse_known_intermixed_args (which itself calls parse_known_args)."""
    plain = parser.parse_known_args

    def intermixed(args=None, namespace=None):  # type: ignore[no-untyped-def]
        parser.parse_known_args = plain  # type: ignore[method-assign]
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            parser.parse_known_args = intermixed  # type: ignore[method-assign]

    parser.parse_known_args = intermixed  # type: ignore[method-assign]


def run_train(args: argparse.Namespace) -> int:
    from harness.config import load_experiment
    from trainers.api import train_method

    cfg = load_experiment(args.config, args.overrides)
    cfg.method(args.method)  # unknown label: error with did-you-mean before any work
    out = Path(args.output) if args.output else Path("runs") / cfg.name
    seeds = [args.seed] if args.seed is not None else list(cfg.shared.seeds)
    for seed in seeds:
        for result in train_method(cfg, args.method, seed, out, data_dir=args.data_dir):
            log.info("%s seed %d iteration %d: %s", args.method, seed, result.iteration, result.checkpoint)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m trainers.cli CONFIG --method NAME ...`: the train command on its own
    (same as `gsil-bench train`), for launchers that run a module."""
    import sys

    from harness.models import ModelError
    from harness.strict import ConfigError

    parser = argparse.ArgumentParser(prog="gsil-bench train", description=__doc__.splitlines()[0])
    configure_train(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return run_train(args)
    except (ConfigError, ModelError, FileNotFoundError) as err:
        print(f"gsil-bench train: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
