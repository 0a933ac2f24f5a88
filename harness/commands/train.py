"""`gsil-bench train CONFIG --method NAME [--seed S] [--output DIR] [--data-dir DIR] [KEY=VALUE ...]`:
train one method of an experiment (every seed of `shared.seeds` unless --seed is given)
into `<output>/<method>/seed-<s>/iter-<k>/`; the default output is runs/<experiment name>.

Run it under a launcher for data-parallel training (`accelerate launch --multi_gpu
--num_processes 2 -m gsil_bench.harness.cli train ...` or `torchrun --nproc_per_node 2 -m gsil_bench.harness.cli
train ...`); rerunning the same command resumes.

examples:
  gsil-bench train configs/smoke.yaml --method gsil-logistic --seed 0
  gsil-bench train configs/smoke.yaml --method spin shared.train.report_to=[tensorboard,mlflow]
  gsil-bench --log-level warning train configs/smoke.yaml --method sft --output /tmp/sft-run
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from gsil_bench.harness.commands import add_overrides

log = logging.getLogger(__name__)
HELP = "train one method of an experiment config"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("--method", required=True, help="method label from the config's methods list")
    parser.add_argument("--seed", type=int, default=None, help="train this seed only (default: every shared.seeds)")
    parser.add_argument("--output", default=None, help="run folder (default: runs/<experiment name>)")
    parser.add_argument("--data-dir", default=None, help="data directory (default: shared.data_dir, $GSIL_DATA_DIR)")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from gsil_bench.harness.validate import check_output, load_and_validate
    from gsil_bench.trainers.api import train_method

    cfg, _, _ = load_and_validate(args.config, args.overrides, data_dir=args.data_dir, scope=("train", "model"))
    cfg.method(args.method)  # unknown label: error with did-you-mean before any work
    out = Path(args.output) if args.output else Path("runs") / cfg.name
    check_output(out, "--output" if args.output else "run folder")
    seeds = [args.seed] if args.seed is not None else list(cfg.shared.seeds)
    for seed in seeds:
        for result in train_method(cfg, args.method, seed, out, data_dir=args.data_dir):
            log.info("%s seed %d iteration %d: %s", args.method, seed, result.iteration, result.checkpoint)
    return 0
