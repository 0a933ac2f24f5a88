"""Code-sandbox cost: the full canonical HumanEval and MBPP+ scoring runs, before (the code
of a git revision, default the merge-base with main) and after (this tree), side by side.

    python -m benchmarks.sandbox --out benchmarks/results/<date>-sandbox/sandbox.json
    python -m benchmarks.sandbox --tasks humaneval --before 0f0b5e0

Each side runs in its own process (the revision exported with `git archive` and installed
apart; this checkout through its own install)
on the same completions file (every problem's canonical solution), the same workers and
data; a first untimed run fills each side's EvalPlus expected-output cache, then `repeat`
timed runs follow, alternating the sides (the median is reported). Both must score 100%, or the run stops. The
machine's load average is recorded before and after, since a shared machine moves the
absolute times; the ratio after/before is the figure that matters (target: <= 1.5).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

log = logging.getLogger("benchmarks.sandbox")
REPO = Path(__file__).resolve().parents[1]
FILES = {"humaneval": "humaneval/HumanEval.jsonl", "mbpp_plus": "mbpp_plus/MbppPlus.jsonl"}

CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
from gsil_bench.core.config import EvalConfig
from gsil_bench.tasks.api import evaluate
task, comp, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
res = evaluate("canonical", [task], EvalConfig(code_workers=workers, code_timeout=20.0), Path(tempfile.mkdtemp()),
               completions=comp)[task]
print(json.dumps({"seconds": time.perf_counter() - start, "sandbox": res.get("sandbox", "(not recorded)"),
                  "metrics": {k: v["value"] for k, v in res["metrics"].items()}}))
"""


def export_tree(rev: str, dest: Path) -> Path:
    """The files of git revision `rev` under `dest` (no checkout, no worktree)."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def completions(task: str, data_dir: Path, dest: Path) -> Path:
    rows = [json.loads(line) for line in (data_dir / FILES[task]).read_text().splitlines() if line.strip()]
    key = "completion" if task == "humaneval" else "solution"
    path = dest / f"{task}-canonical.jsonl"
    path.write_text("".join(json.dumps({"task_id": r["task_id"], key: r["canonical_solution"]}) + "\n" for r in rows))
    return path


def importable(tree: Path) -> str:
    """What to put on PYTHONPATH for `tree`'s gsil_bench: nothing for this checkout (its editable
    install), the tree itself for revisions that linked the folders under gsil_bench/, else the
    tree installed once as a wheel installs it."""
    if tree == REPO:
        return os.environ.get("PYTHONPATH", "")
    if (tree / "gsil_bench" / "core").is_dir():
        return str(tree)
    site = tree / ".site"
    if not site.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                        str(site), str(tree)], check=True)
    return str(site)


def run_side(tree: Path, task: str, comp: Path, workers: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": importable(tree)}
    # -P: the working folder (a shared /tmp) is not on sys.path, so a stray /tmp/numbers.py cannot shadow a module
    proc = subprocess.run([sys.executable, "-P", "-c", CHILD, task, str(comp), str(workers)], env=env, cwd=tempfile.gettempdir(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {task} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if any(v != 1.0 for k, v in res["metrics"].items() if k.startswith("pass@1")):
        raise SystemExit(f"{tree}: canonical {task} did not score 100%: {res['metrics']}")
    return res


def measure(task: str, trees: dict[str, Path], comp: Path, workers: int, repeat: int) -> dict[str, Any]:
    """Warm each side's cache, then alternate the sides `repeat` times (a shared machine's load
    drifts; alternating spreads it over both sides alike)."""
    for tree in trees.values():
        run_side(tree, task, comp, workers)  # warm-up: fills the expected-output cache
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in trees}
    for _ in range(repeat):
        for side, tree in trees.items():
            res = run_side(tree, task, comp, workers)
            runs[side].append(res)
            log.info("%s %s: %.1f s (%s)", task, side, res["seconds"], res["sandbox"])
    out: dict[str, Any] = {side: {"seconds": statistics.median(r["seconds"] for r in rs),
                                  "runs": [r["seconds"] for r in rs], "sandbox": rs[-1]["sandbox"],
                                  "metrics": rs[-1]["metrics"]} for side, rs in runs.items()}
    out["ratio_after_over_before"] = out["after"]["seconds"] / out["before"]["seconds"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default=None, help="git revision of the 'before' code (default: merge-base HEAD main)")
    p.add_argument("--tasks", default="humaneval,mbpp_plus")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--data-dir", default=os.environ.get("GSIL_DATA_DIR"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.data_dir:
        raise SystemExit("--data-dir (or $GSIL_DATA_DIR) is required")
    before = args.before or subprocess.run(["git", "-C", str(REPO), "merge-base", "HEAD", "main"], check=True,
                                           capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="gsil-bench-sandbox-") as tmp:
        trees = {"before": export_tree(before, Path(tmp) / "before"), "after": REPO}
        load_before = os.getloadavg()
        results = {t: measure(t, trees, completions(t, Path(args.data_dir), Path(tmp)), args.workers, args.repeat)
                   for t in args.tasks.split(",")}
    record = {"benchmark": "sandbox", "before_rev": before, "after": "working tree", "workers": args.workers,
              "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "platform": platform.platform(), "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv), "results": results}
    for task, r in results.items():
        print(f"{task}: before {r['before']['seconds']:.1f} s, after {r['after']['seconds']:.1f} s, "
              f"ratio {r['ratio_after_over_before']:.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
