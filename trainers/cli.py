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
