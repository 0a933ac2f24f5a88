"""Each evaluation scores its own checkpoint, also when several are evaluated in one process:
the runner's eval steps (`gsil-bench run`) and `gsil-bench eval` both go through
`tasks.api.evaluate`, so a model cache there keyed by nothing (the first model loaded served
for every later checkpoint) would score every checkpoint as the first one.

Two trained checkpoints and the base model are evaluated in ONE process, by the runner and then
by `gsil-bench eval` in another order, on `heldout_gsm8k` (per item: the summed log-prob of a
held-out demonstration, different for every checkpoint). Each result must carry
- the fingerprint of the weights it scored, equal to its own folder's weights, and
- per-item log-probs equal to an independent computation on its own checkpoint (the chat
  template applied by the tokenizer, one plain forward pass; tests/independent.py), and not to
  any other checkpoint's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import experiment_dict
from independent import chat_sequence, load, response_logp

from gsil_bench.core.io import read_json, read_jsonl
from gsil_bench.core.loading import experiment_from_dict
from gsil_bench.core.models import weights_fingerprint
from gsil_bench.harness.cli import main as cli_main
from gsil_bench.harness.runner import run_experiment

LIMIT = 3


def identity_experiment(model_dir: Path) -> dict:
    """SFT and DPO trained enough (lr 1e-3, 2 steps) that every held-out log-prob moves."""
    return experiment_dict(
        model_dir, "identity", [{"loss": "sft"}, {"loss": "dpo", "params": {"beta": 0.1}}],
        eval={"tasks": ["heldout_gsm8k"], "limit": LIMIT, "generation": {"max_new_tokens": 8, "batch_size": 4}})


def expected_logps(model_dir: Path, tokenizer, data_dir: Path, limit: int = LIMIT) -> list[float]:
    """The summed log-prob of each held-out GSM8K solution (the first `limit` test rows) under `model_dir`."""
    model = load(model_dir)
    out = []
    for row in read_jsonl(data_dir / "gsm8k" / "test.jsonl")[:limit]:
        ids, start = chat_sequence(tokenizer, [{"role": "user", "content": row["question"]}], row["answer"])
        out.append(response_logp(model, ids, start))
    return out


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-3 * max(1.0, abs(y)) for x, y in zip(a, b))


def check_scored_by(task_dir: Path, own: str, expected: dict[str, list[float]], prints: dict[str, str],
                    reference: bool = True) -> None:
    """`task_dir` (a heldout_gsm8k result) scored the weights of checkpoint `own`, and (`reference`: the
    runner sets it) against the starting model as the reference (the margin's reference log-probs)."""
    metrics = read_json(task_dir / "metrics.json")
    got = metrics.get("weights_fingerprint")
    named = [k for k, v in prints.items() if v == got]
    assert got == prints[own], (f"{task_dir}: scored the weights of {named or 'no known checkpoint'} "
                                f"(fingerprint {got}), not those of {own}")
    logps = [s["sum_logp_real"] for s in read_jsonl(task_dir / "samples.jsonl")]
    if not close(logps, expected[own]):
        like = [k for k, v in expected.items() if close(logps, v)]
        pytest.fail(f"{task_dir}: per-item log-probs {logps} are not {own}'s {expected[own]} "
                    f"(they are {like or 'no checkpoint'}'s): the evaluation scored another model")
    if not reference:
        return
    ref = [s["ref_sum_logp_real"] for s in read_jsonl(task_dir / "samples.jsonl")]
    if not close(ref, expected["base"]):
        like = [k for k, v in expected.items() if close(ref, v)]
        pytest.fail(f"{task_dir}: the reference's log-probs {ref} are not the starting model's "
                    f"(they are {like or 'no checkpoint'}'s): the reference was another model")


def test_each_checkpoint_is_scored_by_its_own_weights_in_one_process(tmp_path, tiny_model_dir, tokenizer, data_dir,
                                                                     monkeypatch):
    """The runner evaluates each checkpoint from the weights training left in memory (core.resident; the
    checkpoint is never read back in that process) and keeps the starting model resident as the reference:
    what it scored must still be each checkpoint's own weights."""
    from transformers import AutoModelForCausalLM

    reads: list[Path] = []
    plain = AutoModelForCausalLM.from_pretrained

    def counted(cls, name, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(Path(name))
        return plain(name, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counted))
    root = tmp_path / "run"
    assert run_experiment(experiment_from_dict(identity_experiment(tiny_model_dir)), root,
                          data_dir=str(data_dir)) == 0
    monkeypatch.undo()
    assert not [p for p in reads if p.is_relative_to(root)], f"checkpoints read back from disk: {reads}"
    assert reads.count(tiny_model_dir) <= 1, reads  # the starting model: loaded once, then resident
    folders = {"base": tiny_model_dir, "sft": root / "sft" / "seed-0" / "iter-1" / "checkpoint",
               "dpo": root / "dpo" / "seed-0" / "iter-1" / "checkpoint"}
    prints = {k: weights_fingerprint(load(f)) for k, f in folders.items()}
    expected = {k: expected_logps(f, tokenizer, data_dir) for k, f in folders.items()}
    assert len(set(prints.values())) == 3, f"checkpoints with identical weights (training saved its start?): {prints}"
    for a in expected:  # on every item the three checkpoints give different log-probs: the check can tell
        for b in expected:
            assert a == b or all(abs(x - y) > 1e-2 for x, y in zip(expected[a], expected[b])), (a, b, expected)
    # the runner's eval steps, in one process
    for label in folders:
        step = root / "eval" / label / ("iter-0" if label == "base" else "seed-0/iter-1")
        assert json.loads((step / "model.json").read_text())["model"] == str(folders[label])
        check_scored_by(step / "heldout_gsm8k", label, expected, prints)
    # `gsil-bench eval` in the same process, in another order (a first-loaded model would be dpo's)
    for label in ("dpo", "base", "sft"):
        out = tmp_path / "eval" / label
        assert cli_main(["eval", "--model", str(folders[label]), "--tasks", "heldout_gsm8k", "--limit", str(LIMIT),
                         "--output", str(out), "--data-dir", str(data_dir),
                         "shared.eval.generation.max_new_tokens=8"]) == 0
        check_scored_by(out / "heldout_gsm8k", label, expected, prints, reference=False)  # no --config: no reference
