"""The SQLite run index (`runs.sqlite`): every run's metrics, queryable across nights.

Tables:
    runs(run_id, experiment, run_dir, shared_hash, git_rev, git_dirty, started, indexed, status)
    metrics(run_id, method, seed, iteration, task, metric, is_primary, value, ci_low, ci_high, n)

`run_id` is the uuid written to the run's plan.json when the folder is created, so
re-indexing a resumed run replaces its rows, and a new run in a reused folder is a
new entry; a copied run folder (same uuid, the original still in place) gets an id
of its own derived from its path, so it never replaces the original's rows. Writes are one transaction each; concurrent writers wait (timeout).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from gsil_bench.reports.rundata import load_run

log = logging.getLogger(__name__)
INDEX_NAME = "runs.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, experiment TEXT NOT NULL, run_dir TEXT NOT NULL, shared_hash TEXT,
    git_rev TEXT, git_dirty INTEGER, started TEXT, indexed TEXT NOT NULL, status TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    method TEXT NOT NULL, seed INTEGER, iteration INTEGER NOT NULL, task TEXT NOT NULL,
    metric TEXT NOT NULL, is_primary INTEGER NOT NULL, value REAL, ci_low REAL, ci_high REAL, n INTEGER
);
CREATE INDEX IF NOT EXISTS metrics_by_task ON metrics(task, metric, method);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs(experiment, started);
"""


def default_index(run_dir: str | Path) -> Path:
    """Beside the run folders: <run folder's parent>/runs.sqlite."""
    return Path(run_dir).resolve().parent / INDEX_NAME


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


class RunIndex:
    """A handle on one runs.sqlite file (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=60)
        try:
            con.execute("PRAGMA foreign_keys = ON")
            with con:  # one transaction: commit on success, roll back on error
                yield con
        except sqlite3.DatabaseError as err:
            raise sqlite3.DatabaseError(f"{self.path}: {err}") from err
        finally:
            con.close()

    def add_run(self, run_dir: str | Path, status: str | None = None) -> str:
        """Index (or re-index) a run folder; returns its run_id."""

        run = load_run(run_dir)
        run_id = self._run_id(run)
        git = run.provenance.get("git") or {}
        frame = run.results_frame()
        rows = [
            (run_id, r.method, None if pd.isna(r.seed) else int(r.seed), int(r.iteration), r.task, r.metric,
             int(bool(r.primary)), _float(r.value), _float(r.ci_low), _float(r.ci_high),
             None if pd.isna(r.n) else int(r.n))
            for r in frame.itertuples(index=False)
        ]
        with self._connect() as con:
            con.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            con.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, run.name, str(run.root.resolve()), run.shared_hash, git.get("commit"),
                 None if git.get("dirty") is None else int(bool(git.get("dirty"))),
                 run.plan.get("created") or run.provenance.get("time"),
                 time.strftime("%Y-%m-%dT%H:%M:%S%z"), status or run.plan.get("status")),
            )
            con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        log.info("indexed %d metrics of run %s in %s", len(rows), run.root, self.path)
        return run_id

    def _run_id(self, run: Any) -> str:
        """plan.json's run_id; a copy of a run folder (same run_id, another folder that
        still exists beside the original) gets its own id, derived from its path."""
        run_id = str(run.plan.get("run_id") or run.root.resolve())
        here = str(run.root.resolve())
        with self._connect() as con:
            row = con.execute("SELECT run_dir FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row and row[0] != here and (Path(row[0]) / "plan.json").is_file():
            return f"{run_id}-{hashlib.sha256(here.encode()).hexdigest()[:8]}"
        return run_id

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> pd.DataFrame:
        with self._connect() as con:
            return pd.read_sql_query(sql, con, params=params)

    def runs(self, experiment: str | None = None) -> pd.DataFrame:
        where, params = ("WHERE experiment = ?", (experiment,)) if experiment else ("", ())
        return self.query(f"SELECT * FROM runs {where} ORDER BY started, run_id", params)

    def metrics(self, experiment: str | None = None, *, primary_only: bool = False) -> pd.DataFrame:
        """Metric rows joined with their run (experiment, started, shared_hash, git_rev)."""
        conds, params = [], []
        if experiment:
            conds.append("r.experiment = ?")
            params.append(experiment)
        if primary_only:
            conds.append("m.is_primary = 1")
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        return self.query(
            "SELECT r.experiment, r.started, r.run_dir, r.shared_hash, r.git_rev, m.* FROM metrics m "
            f"JOIN runs r USING (run_id) {where} ORDER BY r.started, m.method, m.seed, m.iteration, m.task, m.metric",
            tuple(params),
        )

    def previous_run(self, run_dir: str | Path) -> str | None:
        """The folder of the latest finished run of the same experiment started no later than
        `run_dir` (by start time), other than `run_dir` itself, or None: the baseline of a nightly
        comparison. Runs are told apart by their folder, not by plan.json's run_id, which a
        copied folder shares with its original."""

        run = load_run(run_dir)
        here = run.root.resolve()
        rows = self.query(
            "SELECT run_id, run_dir, started FROM runs WHERE experiment = ? AND status = 'done' "
            "ORDER BY started DESC, indexed DESC", (run.name,))
        started = run.plan.get("created")
        for r in rows.itertuples(index=False):
            folder = Path(r.run_dir)
            if not folder.is_dir() or folder.resolve() == here:
                continue
            if started is None or r.started is None or r.started <= started:
                return str(r.run_dir)
        return None
