"""Planted regressions: each applied to a copy of the code, a tiny seeded experiment run with it
makes `gsil-bench compare` against the unmodified code's run exit 1; the unmodified code run
twice exits 0 (the whole pipeline is deterministic, so the nightly cannot cry wolf).

Slow: seven real runs (tiny random Llama, real tokenizer, real sandbox, lm-eval's scorer)
through the real command line, one per code copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import build, install_wheel

from gsil_bench.core.io import read_json

REPO = Path(__file__).resolve().parents[1]

# name -> (file, the exact text it holds today, what the planted bug makes of it)
PLANTED = {
    "flipped-loss-sign": ("trainers/losses.py", "return LossOutput((real_term + gen_term).mean(), metrics)",
                          "return LossOutput(-(real_term + gen_term).mean(), metrics)"),
    "broken-chat-template": ("core/scoring.py",
                             "head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)",
                             "head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=False)"),
    "lr-x100": ("trainers/loop.py", "params, lr=c.lr, alpha=c.alpha", "params, lr=c.lr * 100, alpha=c.alpha"),
    "scorer-skips-last-test": (  # the trusted checker drops the last assert that calls the candidate
        "tasks/checker.py", 'tests = compile(job["tests"], "tests.py", "exec")',
        'tests = compile("\\n".join(x for n, x in enumerate(job["tests"].splitlines()) if n != max([k for k, y in '
        'enumerate(job["tests"].splitlines()) if y.lstrip().startswith("assert") and "candidate" in y] or [-1])), '
        '"tests.py", "exec")'),
}


def tiny_config(model_dir: Path) -> dict:
    return {
        "name": "planted",
        "shared": {
            "model": str(model_dir),
            "train_data": {"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": 8},
            "optimizer": {"name": "rmsprop", "lr": 1e-3},
            "train": {"batch_size": 4, "max_length": 192, "max_prompt_length": 96, "logprob_chunk": 64},
            "generation": {"max_new_tokens": 8, "batch_size": 8},
            "iterations": 1,
            "eval": {"tasks": ["heldout_gsm8k", "scorer_canaries"], "limit": 6,
                     "generation": {"max_new_tokens": 8, "batch_size": 6}},
        },
        "methods": [{"loss": "sft"}, {"loss": "gsil-logistic", "params": {"a": 0.01, "b": 2.0}}],
        "report": {"baseline": "sft", "bootstrap": 200},
    }


def code_copy(dst: Path, planted: str | tuple[str, str, str] | None) -> Path:
    """The repository's files (tracked and new, not ignored) copied to `dst/src` with one bug planted
    (a PLANTED name, or (file, old text, new text)), built into a wheel and unpacked into `dst/site`
    (what a user installs); returns `dst/site`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    src = dst / "src"
    for rel in files:
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    if planted:
        rel, old, new = PLANTED[planted] if isinstance(planted, str) else planted
        text = (src / rel).read_text()
        assert text.count(old) == 1, f"{rel} no longer holds the line the {planted} bug is planted in: update PLANTED"
        (src / rel).write_text(text.replace(old, new))
    (dst / "dist").mkdir()
    site = install_wheel(build("wheel", dst / "dist", src), dst / "site")
    imported = subprocess.run([sys.executable, "-c", "import gsil_bench.trainers.losses as m; print(m.__file__)"],
                              capture_output=True, text=True, cwd=dst, env={**os.environ, "PYTHONPATH": str(site)},
                              check=True).stdout.strip()
    assert Path(imported).is_relative_to(site), f"the copy is not what runs: gsil_bench imports from {imported}"
    return site


def cli(code: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "gsil_bench.harness.cli", *args], capture_output=True, text=True,
                          timeout=1800, cwd=code, env=env)


def run_with(tmp: Path, cfg: Path, name: str, planted: str | None) -> Path:
    code = code_copy(tmp / f"code-{name}", planted)
    out = tmp / "runs" / name
    proc = cli(code, "run", str(cfg), "--output", str(out), "--index", str(tmp / "runs" / "runs.sqlite"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_planted_regressions_fail_compare_and_identical_code_passes(tmp_path, tiny_model_dir, data_dir):
    cfg = tmp_path / "planted.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tiny_model_dir)))
    baseline = run_with(tmp_path, cfg, "baseline", None)
    # the canaries do not depend on the model: scored once, on the base step
    assert (baseline / "eval" / "base" / "iter-0" / "scorer_canaries" / "DONE").is_file()
    assert not (baseline / "eval" / "sft" / "seed-0" / "iter-1" / "scorer_canaries").exists()
    again = run_with(tmp_path, cfg, "again", None)
    proc = cli(REPO, "compare", str(baseline), str(again))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "no significant drop" in proc.stdout
    verdicts = {}
    for planted in PLANTED:
        cand = run_with(tmp_path, cfg, planted, planted)
        proc = cli(REPO, "compare", str(baseline), str(cand))
        verdicts[planted] = (proc.returncode, proc.stdout)
        (tmp_path / f"compare-{planted}.md").write_text(proc.stdout)
    assert {k: rc for k, (rc, _) in verdicts.items()} == dict.fromkeys(PLANTED, 1), verdicts
    # each is caught where it should be
    assert "gsil-logistic/seed-0/iter-1" in verdicts["flipped-loss-sign"][1]
    assert "sft/seed-0/iter-1" not in verdicts["flipped-loss-sign"][1].split("REGRESSION")[1].split("\n")[0]
    assert " at step 1: " in verdicts["broken-chat-template"][1]  # the first step's tokens and loss already differ
    assert "lr at step " in verdicts["lr-x100"][1]
    assert "base/scorer_canaries" in verdicts["scorer-skips-last-test"][1]
    lost = read_json(tmp_path / "runs" / "scorer-skips-last-test" / "eval" / "base" / "iter-0" / "scorer_canaries"
                     / "metrics.json")["disagreements"]
    assert lost == [f"code/HumanEval/{k}/wrong-on-last-test" for k in range(5)]  # exactly the canary made for it
