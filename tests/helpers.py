"""Small helpers shared by tests: read data rows, write completions, the tiny training config."""

from __future__ import annotations

import copy
from pathlib import Path

from gsil_bench.core.config import experiment_from_dict
from gsil_bench.core.io import append_jsonl, read_jsonl


def data_rows(data_dir: Path, rel: str) -> list[dict]:
    """The records of a JSONL file under the data directory."""
    return read_jsonl(data_dir / rel)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write `records` as a new JSONL file; return its path."""
    path.unlink(missing_ok=True)
    append_jsonl(path, records)
    return path


# Every registered method, GSIL members at a = 0.5, b = 0 (z = 0 when policy == reference).
ALL_METHODS = [
    {"loss": "sft"}, {"loss": "dpo"}, {"loss": "dpo-hinge"}, {"loss": "dpo-ipo"}, {"loss": "spin"},
    {"loss": "gsil-logistic", "params": {"a": 0.5, "b": 0.0}}, {"loss": "gsil-brier", "params": {"a": 0.5, "b": 0.0}},
    {"loss": "gsil-hinge", "params": {"a": 0.5, "b": 0.0}}, {"loss": "gsil-kliep", "params": {"a": 0.5, "b": 0.0}},
    {"loss": "gsil-lsif", "params": {"a": 0.5, "b": 0.0}},
]


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_cfg(model, methods, **shared):
    """A tiny CPU experiment on GSM8K demonstrations (4 examples, batch 2, 2 steps)."""
    base = {
        "model": str(model),
        "train_data": {"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": 4},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "schedule": {"name": "constant", "warmup_ratio": 0.0},
        "train": {"batch_size": 2, "max_length": 96, "max_prompt_length": 64, "logprob_chunk": 32, "max_steps": 2},
        "generation": {"max_new_tokens": 6, "batch_size": 4},
        "iterations": 1,
    }
    return experiment_from_dict({"name": "t", "methods": methods, "shared": _merge(base, shared)})
