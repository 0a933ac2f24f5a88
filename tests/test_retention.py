"""Checkpoints kept by policy (`shared.train.keep_checkpoints`, harness.retention) and stored in bf16
(`shared.train.checkpoint_dtype`), on the tiny random Llama: SFT (one iteration) and GSIL-logistic (two
self-play iterations), evaluated on held-out GSM8K.

What is checked is what is on disk and what the run does: which checkpoints still hold weight files,
the removal records (their fingerprint is the one the evaluation recorded for those weights), results
untouched by a removal, a removal cut short by a kill finished by the next run, a rerun that would need
removed weights refused before any work (exit 2, naming the step and the checkpoint), the warning of a
rerun whose policy keeps what an earlier one removed, and the dry run's disk line. Wrong implementations
these reject: removing a checkpoint the next iteration still starts from or whose evaluation is pending
(the rerun resumes and finishes), removing evaluation results with the weights (metrics compared byte for
byte), a policy that keeps nothing under `last`, a resumed run that plans an evaluation of removed
weights (it would fail in the middle of the run instead of before it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from helpers import experiment_dict

from gsil_bench.core.loading import load_experiment
from gsil_bench.harness.cli import main as cli_main
from gsil_bench.harness.runner import run_experiment

CHECKPOINTS = ("sft/seed-0/iter-1", "gsil-logistic/seed-0/iter-1", "gsil-logistic/seed-0/iter-2")


def experiment(model_dir: Path, **train) -> dict:
    return experiment_dict(
        model_dir, "keep", [{"loss": "sft"}, {"loss": "gsil-logistic", "params": {"a": 0.01, "b": 2.0}}],
        train=train, iterations=2, seeds=[0],
        eval={"tasks": ["heldout_gsm8k"], "limit": 2, "generation": {"max_new_tokens": 6, "batch_size": 4}})


def with_weights(root: Path) -> set[str]:
    return {c for c in CHECKPOINTS if list((root / c / "checkpoint").glob("*.safetensors"))}


def results(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "eval").rglob("metrics.json"))}


def test_policies_remove_only_unneeded_weights_keep_results_and_refuse_what_needs_them(
        tmp_path, tiny_model_dir, data_dir, monkeypatch, caplog, capsys):
    import gsil_bench.harness.retention as retention

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment(tiny_model_dir, keep_checkpoints="last")))
    root = tmp_path / "run"

    # `last`, killed in the middle of the first removal (its record written, the weights not yet removed)
    def die(event: str, count: int, iteration: int | None = None) -> None:
        if event == "pruned":
            raise KeyboardInterrupt

    monkeypatch.setattr(retention, "kill_hook", die)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_experiment(path), root, data_dir=str(data_dir))
    torn = root / "gsil-logistic/seed-0/iter-1/checkpoint"
    assert (torn / "REMOVED.json").is_file() and list(torn.glob("*.safetensors"))
    monkeypatch.undo()
    assert run_experiment(load_experiment(path), root, data_dir=str(data_dir)) == 0
    # each method x seed keeps its last iteration; the first GSIL iteration went once evaluated and trained from
    assert with_weights(root) == {"sft/seed-0/iter-1", "gsil-logistic/seed-0/iter-2"}
    record = json.loads((torn / "REMOVED.json").read_text())
    model = json.loads((root / "eval/gsil-logistic/seed-0/iter-1/model.json").read_text())
    assert record["policy"] == "last" and record["fingerprint"] == model["fingerprint"] and record["bytes"] > 0
    for kept in ("config.json", "README.md", "gsil_meta.json"):  # the model card and the metadata stay
        assert (torn / kept).is_file(), kept
    assert (root / "gsil-logistic/seed-0/iter-1/summary.json").is_file()
    before, tables = results(root), (root / "report" / "tables.md").read_text()
    assert "gsil-logistic" in tables

    # `none` on the same folder (the policy is not part of the configuration's hash): the rest goes, results stay
    assert run_experiment(load_experiment(path, ["shared.train.keep_checkpoints=none"]), root,
                          data_dir=str(data_dir)) == 0
    assert with_weights(root) == set()
    assert results(root) == before and (root / "report" / "tables.md").read_text() == tables
    capsys.readouterr()  # scoring a removed checkpoint later: one line, exit 2
    assert cli_main(["eval", "--model", str(torn), "--tasks", "heldout_gsm8k", "--output", str(tmp_path / "again"),
                     "--data-dir", str(data_dir)]) == 2
    assert "its weights were removed after its evaluation" in capsys.readouterr().err

    # `all` keeps what `none` removed: said, not fatal (every result is there)
    with caplog.at_level(logging.WARNING):
        assert run_experiment(load_experiment(path, ["shared.train.keep_checkpoints=all"]), root,
                              data_dir=str(data_dir)) == 0
    assert "keeps 3 checkpoint(s) whose weights keep_checkpoints=last/none removed before" in caplog.text

    # a third iteration would start from removed weights: refused before any work, exit 2, one line
    plan = (root / "plan.json").read_bytes()
    capsys.readouterr()
    assert cli_main(["run", str(path), "--output", str(root), "--data-dir", str(data_dir),
                     "shared.iterations=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train/gsil-logistic/seed-0 (iteration 3) needs gsil-logistic/seed-0/iter-2/checkpoint" \
        in err[0], err
    assert (root / "plan.json").read_bytes() == plan and not (root / "gsil-logistic/seed-0/iter-3").exists()

    # other evaluation settings would evaluate removed weights again: the dry run says so, the run refuses
    assert cli_main(["run", str(path), "--output", str(root), "--data-dir", str(data_dir), "--dry-run",
                     "shared.eval.limit=1"]) == 0
    out = capsys.readouterr().out
    assert "[blocked] eval/sft/seed-0/iter-1 needs sft/seed-0/iter-1/checkpoint" in out
    assert "keep_checkpoints=last keeps 2 at the end" in out and "3 checkpoint(s) written" in out
    assert cli_main(["run", str(path), "--output", str(root), "--data-dir", str(data_dir),
                     "shared.eval.limit=1"]) == 2
    assert "3 planned step(s) need checkpoint weights removed" in capsys.readouterr().err
    assert results(root) == before


def test_bf16_storage_is_what_the_evaluation_scores(tmp_path, tiny_model_dir, data_dir):
    """checkpoint_dtype bf16: the weights on disk are bf16 (half the bytes), and the evaluation scores
    exactly those (its recorded fingerprint is the bf16 checkpoint's, loaded as the evaluation loads it)."""
    from independent import load
    from safetensors import safe_open

    from gsil_bench.tasks.context import weights_fingerprint

    data = experiment(tiny_model_dir, checkpoint_dtype="bf16")
    data["methods"] = [{"loss": "sft"}]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    root = tmp_path / "run"
    assert run_experiment(load_experiment(path), root, data_dir=str(data_dir)) == 0
    ckpt = root / "sft/seed-0/iter-1/checkpoint"
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}
    scored = json.loads((root / "eval/sft/seed-0/iter-1/heldout_gsm8k/metrics.json").read_text())
    assert scored["weights_fingerprint"] == weights_fingerprint(load(ckpt))
    base_size = sum(p.stat().st_size for p in tiny_model_dir.glob("*.safetensors"))
    assert (ckpt / "model.safetensors").stat().st_size < 0.6 * base_size  # fp32 start, bf16 checkpoint


def _cli_run(path: Path, root: Path, data_dir: Path, kill: str | None = None) -> int:
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("GSIL_TEST_KILL", None)
    if kill:
        env["GSIL_TEST_KILL"] = kill
    return subprocess.run([sys.executable, "-m", "gsil_bench.harness.cli", "run", str(path), "--output", str(root),
                           "--data-dir", str(data_dir), "-q"], env=env, capture_output=True, timeout=900).returncode


def _outcome(root: Path) -> tuple:
    """What a run leaves: the tables, every item's scores, which weights stay and the removal records."""
    samples = {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "eval").rglob("samples.jsonl"))}
    records = {c: json.loads((root / c / "checkpoint" / "REMOVED.json").read_text())["fingerprint"]
               for c in CHECKPOINTS if (root / c / "checkpoint" / "REMOVED.json").is_file()}
    return (root / "report" / "tables.md").read_text(), samples, with_weights(root), records


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, data_dir, tmp_path_factory) -> tuple[Path, tuple]:
    tmp = tmp_path_factory.mktemp("keep")
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment(tiny_model_dir, keep_checkpoints="none")))
    assert _cli_run(path, tmp / "run", data_dir) == 0
    return path, _outcome(tmp / "run")


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["step@2:1", "finished:1", "finished:2", "pruned:1", "pruned:3"])
def test_kill_9_at_any_point_resumes_to_the_uninterrupted_result(kill, uninterrupted, data_dir, tmp_path):
    """kill -9 during GSIL's second iteration (its first checkpoint still needed), between a checkpoint and
    its DONE marker, between a removal record and the removal: the same command finishes with what the
    uninterrupted run left (tables, per-item scores, no weights, the same records)."""
    path, want = uninterrupted
    root = tmp_path / "run"
    assert _cli_run(path, root, data_dir, kill=kill) == -9
    assert _cli_run(path, root, data_dir) == 0
    got = _outcome(root)
    assert got[2] == set() and got[3] == want[3] and len(got[3]) == 3
    assert got[0] == want[0] and got[1] == want[1]
