"""Small file helpers shared by the code-task tests (read data rows, write completions)."""

from __future__ import annotations

from pathlib import Path

from core.io import append_jsonl, read_jsonl


def data_rows(data_dir: Path, rel: str) -> list[dict]:
    """The records of a JSONL file under the data directory."""
    return read_jsonl(data_dir / rel)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write `records` as a new JSONL file; return its path."""
    path.unlink(missing_ok=True)
    append_jsonl(path, records)
    return path
