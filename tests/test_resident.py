"""Models kept in memory between the steps of one process (core.resident): served only for the same
folder with the same files, dtype and device; a private copy for training; the budget. Wrong
implementations these reject: an entry keyed by the folder's name alone (a checkpoint rewritten in
place, by a rerun after a removal, would be served with its old weights), keyed by nothing (another
folder's model served: also tests/mutations.py "resident-model-keyed-by-nothing", caught by
tests/test_checkpoint_identity.py), a private copy that is the kept model itself (training would
change what the evaluation scores), a budget not applied."""

from __future__ import annotations

import pytest
import torch
from independent import load

from gsil_bench.core import resident
from gsil_bench.core.models import load_model, save_tiny_llama
from gsil_bench.tasks.context import weights_fingerprint


@pytest.fixture(autouse=True)
def empty_store():
    resident.clear()
    yield
    resident.clear()


def test_served_only_for_the_same_files_dtype_and_device(tmp_path, tokenizer):
    a = save_tiny_llama(tmp_path / "a", tokenizer, seed=1)
    b = save_tiny_llama(tmp_path / "b", tokenizer, seed=2)
    model_a, _ = load_model(str(a), dtype=torch.float32, device="cpu")
    assert load_model(str(a), dtype=torch.float32, device="cpu")[0] is model_a  # loaded once
    model_b, _ = load_model(str(b), dtype=torch.float32, device="cpu")
    assert model_b is not model_a and weights_fingerprint(model_b) != weights_fingerprint(model_a)
    assert resident.get(a, torch.bfloat16, "cpu") is None and resident.get(a, torch.float32, "cuda") is None
    save_tiny_llama(a, tokenizer, seed=3)  # the folder rewritten in place (a rerun of a removed checkpoint)
    assert resident.get(a, torch.float32, "cpu") is None
    again, _ = load_model(str(a), dtype=torch.float32, device="cpu")
    assert weights_fingerprint(again) == weights_fingerprint(load(a)) != weights_fingerprint(model_a)


def test_a_private_copy_trains_without_touching_the_kept_model(tmp_path, tokenizer):
    from gsil_bench.trainers.reference import load_causal_lm

    a = save_tiny_llama(tmp_path / "a", tokenizer)
    kept = load_causal_lm(str(a), revision=None, device="cpu")
    before = weights_fingerprint(kept)
    mine = load_causal_lm(str(a), revision=None, device="cpu", private=True)
    assert mine is not kept and weights_fingerprint(mine) == before
    with torch.no_grad():
        next(mine.parameters()).add_(1.0)
    assert weights_fingerprint(kept) == before
    assert resident.get(a, torch.float32, "cpu") is kept


def test_the_budget_and_the_cpu_only_rule(tmp_path, tokenizer, monkeypatch):
    a = save_tiny_llama(tmp_path / "a", tokenizer)
    model, _ = load_model(str(a), dtype=torch.float32, device="cpu")
    assert not resident.offer(a, model, torch.float32, "cuda:0")
    monkeypatch.setenv(resident.ENV, "0")  # the handoff off
    resident.clear()
    assert not resident.offer(a, model, torch.float32, "cpu")
    assert load_model(str(a), dtype=torch.float32, device="cpu")[0] is not load_model(
        str(a), dtype=torch.float32, device="cpu")[0]
