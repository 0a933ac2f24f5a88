"""Where data files come from: a data directory (CLI `--data-dir`, config `data_dir`,
or $GSIL_DATA_DIR), with the Hugging Face Hub as the fallback for users.

Nothing here copies data; files are read in place.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir(*candidates: str | None) -> Path | None:
    """The first given directory (CLI value, config value), else $GSIL_DATA_DIR, else None."""
    for c in (*candidates, os.environ.get("GSIL_DATA_DIR")):
        if c:
            path = Path(c).expanduser()
            if not path.is_dir():
                raise FileNotFoundError(f"data directory {path} does not exist")
            return path
    return None


def local_file(relative: str, root: Path | None) -> Path | None:
    """`root/relative` if it exists (an absolute `relative` is used as is), else None."""
    path = Path(relative).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    if root is not None and (root / path).exists():
        return root / path
    return None


HUB_FOLDER = "hf"  # <data dir>/hf/<owner>/<name>/: a local copy of a Hub data set repository


def hub_folder(dataset: str, root: Path | None) -> Path | None:
    """`<root>/hf/<dataset>` when it is a folder (a Hub data set repository downloaded as is,
    e.g. `huggingface-cli download --repo-type dataset <dataset> --local-dir <root>/hf/<dataset>`)."""
    if root is None:
        return None
    path = root / HUB_FOLDER / dataset
    return path if path.is_dir() else None


def load_hub_rows(dataset: str, split: str, config: str | None = None, root: Path | None = None) -> list[dict]:
    """Rows of a Hub data set: from its local copy under `<root>/hf/<dataset>` (same config and
    split names, read offline), else from the Hub (needs `datasets` and network access)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise FileNotFoundError(
            f"data not found locally and the Hub fallback needs `datasets` (pip install datasets) for {dataset}"
        ) from None
    import tempfile

    local = hub_folder(dataset, root)
    try:
        if local is None:
            return [dict(r) for r in load_dataset(dataset, config, split=split)]
        # datasets caches a local folder by its name alone: another copy of the same name (another data
        # directory, or this one rewritten) would answer from that cache. A local copy converts afresh each time.
        with tempfile.TemporaryDirectory(prefix="gsil-hub-copy-") as cache:
            return [dict(r) for r in load_dataset(str(local), config, split=split, cache_dir=cache)]
    except Exception as err:  # network, missing split...
        raise FileNotFoundError(
            f"{dataset}[{config or ''}:{split}]: " + (
                f"cannot read the local copy {local}: {err}" if local is not None else
                f"no local copy in <data dir>/{HUB_FOLDER}/{dataset} and the Hub failed: {err}")
        ) from None
