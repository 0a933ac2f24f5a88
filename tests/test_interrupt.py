"""Ctrl-C and log files, with a real SIGINT to a real `gsil-bench run` whose output goes to a file:
one line ("interrupted; rerun the same command to resume"), exit status 130, the running step and
plan.json marked `interrupted`, no carriage-return bar anywhere in the log (the Hugging Face and
other libraries' bars included), progress lines showing the current loss; the same command then
resumes and finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, model: Path) -> Path:
    data = {"name": "ctrl-c", "shared": {
        "model": str(model), "train_data": {"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": 4},
        "train": {"batch_size": 1, "max_length": 96, "max_prompt_length": 64, "epochs": 4, "save_every": 2,
                  "log_every": 1},
        "generation": {"max_new_tokens": 4, "batch_size": 4}, "seeds": [0],
        "eval": {"tasks": ["heldout_gsm8k"], "limit": 2, "generation": {"max_new_tokens": 4}}},
        "methods": [{"loss": "sft"}], "report": {"bootstrap": 100}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


PAUSE = "step:3"  # the run waits at optimizer step 3 for the signal (trainers.state.kill_hook): no race


def _start(cfg: Path, out: Path, data_dir: Path, log: Path, pause: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "GSIL_PROGRESS_SECONDS": "0"}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    env.pop("GSIL_TEST_PAUSE", None)
    if pause:
        env["GSIL_TEST_PAUSE"] = pause
    with log.open("w") as f:  # a log file, as a batch job writes one: not a terminal
        return subprocess.Popen([sys.executable, "-m", "gsil_bench.harness.cli", "run", str(cfg), "--output", str(out),
                                 "--data-dir", str(data_dir)], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_ctrl_c_in_process_marks_the_step_and_the_same_command_resumes(tmp_path, tiny_model_dir, data_dir, capsys,
                                                                         monkeypatch, request):
    """The fast version: a real SIGINT to this process while `main(["run", ...])` trains. The run
    waits at step 3 (GSIL_TEST_PAUSE) until the signal comes, so it cannot finish first on a fast machine."""
    import threading

    from gsil_bench.harness.cli import main

    cfg, out = _config(tmp_path, tiny_model_dir), tmp_path / "run"
    metrics = out / "sft" / "seed-0" / "iter-1" / "metrics.jsonl"

    def interrupt() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setenv("GSIL_TEST_PAUSE", PAUSE)
    # Python's own Ctrl-C handler, as in a terminal: a shell starts a background job (`pytest ... &`, nohup) with
    # SIGINT ignored, and Python then keeps it ignored, so the run would wait out its pause instead of stopping
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    watcher = threading.Thread(target=interrupt, daemon=True)
    watcher.start()
    argv = ["run", str(cfg), "--output", str(out), "--data-dir", str(data_dir)]
    assert main(argv) == 130
    watcher.join()
    assert len(metrics.read_text().splitlines()) == 3  # interrupted where the test chose, not later
    monkeypatch.delenv("GSIL_TEST_PAUSE")
    assert capsys.readouterr().err.splitlines()[-1] == "interrupted; rerun the same command to resume"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["status"] == "interrupted"
    assert {s["id"]: s["status"] for s in plan["steps"]}["train/sft/seed-0"] == "interrupted"
    assert json.loads((out / "sft" / "seed-0" / "step.json").read_text())["status"] == "interrupted"
    assert main(argv) == 0
    assert json.loads((out / "plan.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_ctrl_c_prints_one_line_marks_the_step_and_the_rerun_resumes(tmp_path, tiny_model_dir, data_dir):
    cfg, out, log = _config(tmp_path, tiny_model_dir), tmp_path / "run", tmp_path / "run.log"
    proc = _start(cfg, out, data_dir, log, pause=PAUSE)
    metrics = out / "sft" / "seed-0" / "iter-1" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted:\n" + log.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends to the foreground process group
    assert proc.wait(timeout=120) == 130
    raw = log.read_bytes()  # bytes: reading text would turn a carriage return into a newline
    text = raw.decode()
    assert b"\r" not in raw and "Traceback" not in text and "KeyboardInterrupt" not in text
    assert text.rstrip("\n").splitlines()[-1] == "interrupted; rerun the same command to resume"
    record = json.loads((out / "sft" / "seed-0" / "step.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert record["status"] == "interrupted" and plan["status"] == "interrupted"
    assert {s["id"]: s["status"] for s in plan["steps"]}["train/sft/seed-0"] == "interrupted"
    # the last progress line of the step shows the loss of the step it counts (the loss logged for that step)
    lines = [ln for ln in text.splitlines() if "core.progress: sft iter 1:" in ln]
    rows = [json.loads(r) for r in metrics.read_text().splitlines()]
    assert lines and rows
    n = int(lines[-1].split("sft iter 1: ")[1].split("/")[0])
    assert f"loss={rows[n - 1]['loss']:.4f}" in lines[-1]

    again = _start(cfg, out, data_dir, tmp_path / "rerun.log")
    assert again.wait(timeout=600) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    rerun = (tmp_path / "rerun.log").read_bytes()
    assert b"resuming" in rerun and b"\r" not in rerun
    assert json.loads((out / "plan.json").read_text())["status"] == "done"
