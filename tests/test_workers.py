"""Several processes share one run folder: steps are claimed (flock), never run twice, and a
killed process's step is taken up again (harness.workers, harness.runner)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gsil_bench.harness.workers import claim, is_claimed, read_record, work_through

REPO = Path(__file__).resolve().parents[1]


def test_a_claim_is_exclusive_between_processes_and_dies_with_its_holder(tmp_path):
    folder = tmp_path / "step"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from gsil_bench.harness.workers import claim\n"
        f"with claim(Path({str(folder)!r})) as got:\n"
        "    print('held' if got else 'busy', flush=True)\n"
        "    time.sleep(60)\n")], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert is_claimed(folder)
        with claim(folder) as got:
            assert got is False  # another live process holds it
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # kill -9: the kernel drops its lock
        holder.wait()
    assert not is_claimed(folder)
    with claim(folder) as got:
        assert got is True


class _Step:
    def __init__(self, sid: str) -> None:
        self.id = sid


def test_work_through_runs_each_step_once_waits_for_dependencies_and_skips_this_sessions_failures(tmp_path):
    steps = [_Step("a"), _Step("b"), _Step("c")]
    done: set[str] = set()
    ran: list[str] = []

    def execute(step: _Step) -> bool:
        ran.append(step.id)
        if step.id == "b":
            (tmp_path / "b").mkdir(exist_ok=True)
            (tmp_path / "b" / "step.json").write_text(json.dumps({"status": "failed", "ended": time.time()}))
            return False
        done.add(step.id)
        return True

    def ready(step: _Step) -> bool | None:
        return True if step.id != "c" else ("a" in done) or False

    since = time.time()
    work_through(steps, folder=lambda s: tmp_path / s.id, done=lambda s: s.id in done, ready=ready,
                 execute=execute, since=since, poll=0.01)
    assert ran == ["a", "b", "c"] and done == {"a", "c"}
    assert read_record(tmp_path / "b")["status"] == "failed"
    ran.clear()  # a second pass in the same session retries nothing (b failed after `since`)
    work_through(steps, folder=lambda s: tmp_path / s.id, done=lambda s: s.id in done, ready=ready,
                 execute=execute, since=since, poll=0.01)
    assert ran == []
    work_through(steps, folder=lambda s: tmp_path / s.id, done=lambda s: s.id in done, ready=ready,
                 execute=execute, since=time.time() + 1, poll=0.01)  # a later session retries the failure
    assert ran == ["b"]


def _experiment(model_dir: Path) -> dict:
    return {
        "name": "shared-folder",
        "shared": {
            "model": str(model_dir),
            "train_data": {"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": 4},
            "train": {"batch_size": 2, "max_length": 96, "max_prompt_length": 64},
            "generation": {"max_new_tokens": 6, "batch_size": 4},
            "iterations": 1,
            "seeds": [0, 1],
            "eval": {"tasks": ["humaneval"], "limit": 2, "generation": {"max_new_tokens": 8, "batch_size": 2}},
        },
        "methods": [{"loss": "sft"}, {"loss": "dpo", "params": {"beta": 0.1}}],
        "report": {"baseline": "sft", "bootstrap": 100},
    }


def _run(cfg: Path, out: Path, data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "gsil_bench.harness.cli", "run", str(cfg), "--output", str(out),
                             "--data-dir", str(data_dir)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # 172 s in the default suite's measurement (three runs of the CLI)
def test_two_independent_runs_split_one_folder_and_match_a_single_run(tmp_path, tiny_model_dir, data_dir):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(_experiment(tiny_model_dir), sort_keys=False))
    single, shared = tmp_path / "single", tmp_path / "shared"
    p = _run(cfg, single, data_dir)
    assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:] if p.stderr else ""
    procs = [_run(cfg, shared, data_dir) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:] if p.stderr else ""
    plan = json.loads((shared / "plan.json").read_text())
    assert {s["status"] for s in plan["steps"]} == {"done"} and len(plan["steps"]) == 1 + 2 * (2 + 2)
    workers = {s["worker"] for s in plan["steps"]}
    assert len(workers) == 2, workers  # both processes took steps
    for s in plan["steps"]:  # every step ran once: its record names one worker, and that worker finished it
        folder = shared / ("eval/" + s["id"][5:] if s["kind"] == "eval" else s["id"][6:])
        assert read_record(folder)["worker"] == s["worker"] and read_record(folder)["status"] == "done"
    # the same numbers as one process (the training and evaluation are deterministic)
    assert (shared / "report" / "tables.md").read_text() == (single / "report" / "tables.md").read_text()
    html = (shared / "report" / "index.html").read_text()
    assert 'id="workers"' in html and all(w in html for w in workers)


@pytest.mark.slow  # 85 s (two runs of the CLI, one killed)
def test_a_killed_worker_leaves_its_step_to_the_next_run(tmp_path, tiny_model_dir, data_dir):
    """kill -9 in the middle of a step: the rerun redoes only unfinished steps."""
    cfg = tmp_path / "exp.yaml"
    data = _experiment(tiny_model_dir)
    data["shared"]["seeds"] = [0]
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "run"
    p = _run(cfg, out, data_dir)
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:  # wait until a step is done and another running
        recs = [read_record(f) for f in (out / "eval" / "base" / "iter-0", out / "sft" / "seed-0",
                                         out / "dpo" / "seed-0")]
        if [r.get("status") for r in recs].count("done") >= 1 and any(r.get("status") == "running" for r in recs):
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    finished = {f: read_record(f).get("wall_time_s") for f in (out / "eval" / "base" / "iter-0", out / "sft" / "seed-0",
                                                               out / "dpo" / "seed-0") if read_record(f).get("status") == "done"}
    assert finished
    p = _run(cfg, out, data_dir)
    assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:] if p.stderr else ""
    plan = json.loads((out / "plan.json").read_text())
    assert {s["status"] for s in plan["steps"]} == {"done"}
    for folder, wall in finished.items():  # finished steps were not redone (their records are unchanged)
        assert read_record(folder)["wall_time_s"] == wall


@pytest.mark.slow
def test_a_two_process_launch_spreads_evaluation_and_matches_one_process(tmp_path, tiny_model_dir, data_dir):
    """torchrun --nproc_per_node 2 (gloo on CPU): with training already done, both processes
    claim evaluation steps, and the report equals the single-process one."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(_experiment(tiny_model_dir), sort_keys=False))
    single, launched = tmp_path / "single", tmp_path / "launched"
    p = _run(cfg, single, data_dir)
    assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:] if p.stderr else ""
    for method in ("sft", "dpo"):  # the trained checkpoints, without any evaluation
        shutil.copytree(single / method, launched / method)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
                           "-m", "gsil_bench.harness.cli", "run", str(cfg), "--output", str(launched), "--data-dir", str(data_dir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads((launched / "plan.json").read_text())
    evals = [s for s in plan["steps"] if s["kind"] == "eval"]
    assert {s["status"] for s in evals} == {"done"}
    assert {s["worker"].endswith(":rank1") for s in evals} == {True, False}  # both ranks evaluated
    assert (launched / "report" / "tables.md").read_text() == (single / "report" / "tables.md").read_text()
