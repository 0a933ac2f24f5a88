"""Small helpers shared by tests: read data rows, write completions, the tiny training config,
build and unpack the package (wheel, sdist) from a source tree."""

from __future__ import annotations

import copy
import subprocess
import sys
import zipfile
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


def build(kind: str, out: Path, src: Path) -> Path:
    """Build a "wheel" or an "sdist" of the source tree `src` into `out`, offline with this
    environment's setuptools (no build isolation); return the file."""
    code = f"import sys, setuptools.build_meta as b; print(b.build_{kind}(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / proc.stdout.strip().splitlines()[-1]


def install_wheel(wheel: Path, target: Path) -> Path:
    """Unpack a pure-Python wheel into `target` (what pip install --target does); return `target`."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


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
