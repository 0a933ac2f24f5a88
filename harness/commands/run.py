"""`gsil-bench run CONFIG [--output DIR] [--data-dir DIR] [--index FILE] [--fail-fast] [--dry-run] [KEY=VALUE ...]`:
train every method × seed (× self-play iteration), evaluate every checkpoint, write the report.

examples:
  gsil-bench run configs/smoke.yaml                              the embedded model, every method, then the report
  gsil-bench run configs/smoke.yaml --dry-run                    print the plan (steps, reused, skipped) and exit
  gsil-bench run configs/smoke.yaml shared.eval.limit=8 shared.train.report_to=[tensorboard]
  gsil-bench run configs/paper-zephyr.yaml --output /data/runs/zephyr --fail-fast
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gsil_bench.core.config import ExperimentConfig
from gsil_bench.harness.commands import add_overrides

HELP = "train every method of an experiment, evaluate every checkpoint, write the report"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="experiment YAML (see configs/)")
    parser.add_argument("--output", type=Path, help="run folder (default: runs/<experiment name>)")
    parser.add_argument("--data-dir", help="data directory (default: shared.data_dir, else $GSIL_DATA_DIR)")
    parser.add_argument("--index", type=Path, help="SQLite run index (default: <run folder's parent>/runs.sqlite)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed step")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (steps, what is reused or skipped) and its cost estimate, and exit")
    parser.add_argument("--gpu", choices=("H100", "H200", "A100", "L40S"),
                        help="--dry-run: estimate time and memory on this GPU (one per process) instead of this machine")
    parser.add_argument("--processes", type=int, default=1,
                        help="--dry-run: processes (GPUs) the run is launched on; more than 1 means sharded (FSDP/ZeRO-3)")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from gsil_bench.harness.runner import run_experiment
    from gsil_bench.harness.validate import check_output, load_and_validate

    cfg, loc, files = load_and_validate(args.config, args.overrides, data_dir=args.data_dir, hub=not args.dry_run)
    root = args.output or Path("runs") / cfg.name
    if not args.dry_run:
        check_output(root, "--output" if args.output else "run folder")
    if args.dry_run:
        from gsil_bench.harness.dryrun import describe

        sys.stdout.write("\n".join(describe(cfg, root, args.data_dir, args.gpu, args.processes, args.processes > 1)) + "\n")
        return 0
    code = run_experiment(cfg, root, data_dir=args.data_dir, index=args.index, loc=loc, fail_fast=args.fail_fast,
                          data_files=files)
    empty = [] if cfg.shared.eval.allow_empty else empty_results(cfg, root)
    if empty:
        sys.stderr.write(f"gsil-bench run: no result: {'; '.join(empty)} (shared.eval.allow_empty=true accepts it)\n")
        return code or 1
    return code


def empty_results(cfg: ExperimentConfig, root: Path) -> list[str]:
    """The run's evaluations (this config's methods and tasks) whose primary metric has no value."""
    from gsil_bench.core.io import read_json
    from gsil_bench.core.layout import BASE, RunLayout
    from gsil_bench.tasks.api import empty_primaries

    methods = {BASE, *(m.label for m in cfg.methods)}
    results = {}
    for where, task in RunLayout(root).eval_task_dirs():
        if where.method in methods and task in cfg.shared.eval.tasks:
            seed = "" if where.seed is None else f" seed {where.seed}"
            results[f"{where.method}{seed} iter {where.iteration} {task}"] = read_json(where.folder / "metrics.json")
    return empty_primaries(results)
