"""`gsil-bench eval` honours the model settings `run` honours, and its exit status is one CI can trust.

The pinned-revision test builds a real Hugging Face Hub cache offline (`models--org--name/` with
`blobs/`, `refs/main` and two `snapshots/<commit>/`, the tiny model with different weights in each),
points huggingface_hub's cache (what `HF_HUB_CACHE` sets) at it, offline, and runs the command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gsil_bench.core.config import EvalConfig, GenerationConfig
from gsil_bench.core.io import read_jsonl
from gsil_bench.core.models import save_tiny_llama
from gsil_bench.harness.cli import main
from gsil_bench.tasks.api import evaluate

REPO = "gsil-test/tiny-llama"
GEN = GenerationConfig(max_new_tokens=4, batch_size=2)
TASK = "heldout_gsm8k"


def _commit(seed: int) -> str:
    return hashlib.sha1(f"revision {seed}".encode()).hexdigest()


def _hub_cache(cache: Path, snapshots: dict[str, Path], main: str) -> None:
    """`cache/models--org--name/` in huggingface_hub's layout: files in blobs/ named by their
    sha256, each snapshot a folder of symlinks to them, refs/main holding the default commit."""
    repo = cache / ("models--" + REPO.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main)
    for commit, folder in snapshots.items():
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in sorted(p for p in folder.iterdir() if p.is_file()):
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            blob = repo / "blobs" / digest
            if not blob.exists():
                blob.write_bytes(f.read_bytes())
            (snap / f.name).symlink_to(Path("..", "..", "blobs", digest))


def _scores(folder: Path, key: str) -> list[float]:
    return [s["scores"][key] for s in read_jsonl(folder / TASK / "samples.jsonl")]


@pytest.fixture(scope="module")
def two_revisions(tmp_path_factory, tokenizer):
    """The tiny model at two commits (weights seeded 0 and 1; main = the second) in a Hub cache."""
    tmp = tmp_path_factory.mktemp("hub")
    folders = {_commit(seed): save_tiny_llama(tmp / f"seed-{seed}", tokenizer, seed=seed) for seed in (0, 1)}
    _hub_cache(tmp / "hub", folders, main=_commit(1))
    return tmp, folders


def test_eval_scores_the_pinned_revision_and_pins_the_reference(two_revisions, data_dir, tmp_path, monkeypatch):
    tmp, folders = two_revisions
    pinned, head = _commit(0), _commit(1)
    # expected: the same evaluation of each snapshot's folder, in this process
    ref_cfg = EvalConfig(generation=GEN, reference_model=str(folders[pinned]))
    evaluate(str(folders[pinned]), [TASK], EvalConfig(generation=GEN), tmp_path / "A", limit=2)
    evaluate(str(folders[head]), [TASK], ref_cfg, tmp_path / "B-vs-A", limit=2)
    expected_a, expected_b = _scores(tmp_path / "A", "logp_real"), _scores(tmp_path / "B-vs-A", "logp_real")
    assert all(abs(a - b) > 1e-3 for a, b in zip(expected_a, expected_b))  # the two revisions differ

    config = tmp_path / "exp.yaml"  # the experiment pins the Hub model; run would use it as the reference
    config.write_text(f"name: pins\nshared:\n  model: {REPO}\n  model_revision: {pinned}\n"
                      f"  eval: {{generation: {{max_new_tokens: 4, batch_size: 2}}}}\nmethods: []\n")
    common = ["--tasks", TASK, "--limit", "2", "--data-dir", str(data_dir)]
    pinned_cli = ["eval", "--model", REPO, "--output", str(tmp_path / "cli-pinned"), *common,
                  f"shared.model_revision={pinned}", "shared.eval.generation.max_new_tokens=4",
                  "shared.eval.generation.batch_size=2"]
    config_cli = ["eval", "--config", str(config), "--model", str(folders[head]), "--output", str(tmp_path / "cli-ref"),
                  *common]
    import huggingface_hub.constants

    # what HF_HUB_CACHE=... HF_HUB_OFFLINE=1 sets when the libraries are imported (both read these at call time)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(pinned_cli) == 0
    assert main(config_cli) == 0
    # `--model org/name shared.model_revision=<commit>` scored the pinned commit, not main
    assert _scores(tmp_path / "cli-pinned", "logp_real") == pytest.approx(expected_a, abs=1e-5)
    ident = json.loads((tmp_path / "cli-pinned" / TASK / "provenance.json").read_text())["model_identity"]
    assert ident["model"] == REPO and ident["revision"] == pinned
    # `--config` (shared.model pinned): the margin's reference is shared.model at the pinned commit, as in `run`
    assert _scores(tmp_path / "cli-ref", "logp_real") == pytest.approx(expected_b, abs=1e-5)
    assert _scores(tmp_path / "cli-ref", "margin") == pytest.approx(_scores(tmp_path / "B-vs-A", "margin"), abs=1e-4)
    assert any(abs(m) > 1e-3 for m in _scores(tmp_path / "cli-ref", "margin"))  # against main (itself) it would be 0


def _no_result_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"gsil-bench {command}: no result:")]
    assert len(lines) == 1, err
    return lines[0]


def test_eval_exits_1_when_the_judge_never_gave_a_rating(tiny_model_dir, data_dir, tmp_path, capsys):
    """A real local judge (the tiny random model) that never writes `[[rating]]`: every turn is missing,
    MT-Bench's primary score has no value, and the command says so in one line and exits 1."""
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_model_dir), "--tasks", "mt_bench", "--limit", "1", "--judge", str(tiny_model_dir),
            "--output", str(out), "--data-dir", str(data_dir), "shared.eval.generation.max_new_tokens=4",
            "shared.eval.judge.max_tokens=8"]
    assert main(argv) == 1
    line = _no_result_line(capsys.readouterr().err, "eval")
    assert "mt_bench: primary metric 'score' has no value for any of its 1 items (no parseable rating: 2 missing of " \
           "2 turns)" in line and "--allow-empty" in line
    done = (out / "mt_bench" / "DONE").read_text()
    assert main([*argv, "--allow-empty"]) == 0  # accepted on request; the finished result is reused, not redone
    assert "no result" not in capsys.readouterr().err
    assert (out / "mt_bench" / "DONE").read_text() == done


def test_run_exits_1_when_a_primary_metric_has_no_value(tiny_model_dir, data_dir, tmp_path, capsys):
    config = tmp_path / "judge.yaml"
    config.write_text(f"""name: empty
shared:
  model: {tiny_model_dir}
  train_data: {{path: gsm8k/train.jsonl, format: gsm8k, limit: 2}}
  train: {{batch_size: 2, max_length: 64, max_prompt_length: 48, max_steps: 1}}
  eval:
    tasks: [mt_bench]
    limit: 1
    generation: {{max_new_tokens: 4}}
    judge: {{backend: hf, model: {tiny_model_dir}, max_tokens: 8}}
methods:
  - loss: sft
""")
    out = tmp_path / "run"
    assert main(["run", str(config), "--output", str(out)]) == 1
    line = _no_result_line(capsys.readouterr().err, "run")
    assert "base iter 0 mt_bench: primary metric 'score' has no value" in line
    assert "sft seed 0 iter 1 mt_bench: primary metric 'score' has no value" in line
    done = (out / "eval" / "sft" / "seed-0" / "iter-1" / "mt_bench" / "DONE").read_text()
    assert main(["run", str(config), "--output", str(out), "shared.eval.allow_empty=true"]) == 0
    assert (out / "eval" / "sft" / "seed-0" / "iter-1" / "mt_bench" / "DONE").read_text() == done  # not redone
    assert "no result" not in capsys.readouterr().err
