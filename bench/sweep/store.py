"""A run's store: rows appended one JSON line at a time, so a run killed halfway keeps every finished row.

Layout of ``<results>/<run_id>/``:
    rows.jsonl        one result row per line, written (and fsynced) the moment the row exists
    environment.json  the environment of each session that wrote to this run (commit, versions, ceilings...)
    results.csv       the pandas frame of all rows, written at the end of a session (and by ``merge``)
    profiles/         torch.profiler traces and top-kernel tables when ``--profile`` was given
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from bench.record import Row, amend_row, stored_row, to_frame, validate_row

ROWS_FILE = "rows.jsonl"
ENVIRONMENT_FILE = "environment.json"
FRAME_FILE = "results.csv"
DEFAULT_RESULTS_DIR = Path("results")


def first_per_key(rows: Iterable[Row]) -> dict[str, Row]:
    """The one rule for rows that share a key: the first row of a key stands, later ones are dropped.
    Returns {key: row} in the order the keys first appear.

    Why the first: a store is append-only and a key that has a row is done (a resumed session skips it), so
    within one run a second row of a key can only come from two sessions writing the same run at once, and the
    first row is the one every later decision of the run (resume, the planner's predictions from smaller N)
    was made from. Across runs (``merge_runs``) the order of the sources decides: the first source listed
    wins. Every reader applies this rule: ``RunStore.rows`` (so the frame, the report, resume and the planner
    see one row per key), ``MemoryStore.rows`` and ``merge_runs``."""
    by_key: dict[str, Row] = {}
    for row in rows:
        by_key.setdefault(row["key"], row)
    return by_key


def check_row(values: Mapping[str, object]) -> Row:
    """The one check of a row on its way into a store: it needs a ``key``, and must fit ``bench.record``'s
    schema (``validate_row``, whose errors name the column and value). A ``Row`` passes as it is: a store
    checked it already (a torchrun rank's, or the source of a merge)."""
    if "key" not in values:
        raise ValueError(f"a row needs a 'key', got columns {sorted(values)}")
    return validate_row(values)


class RunStore:
    """The files of one run. Opening an existing run id resumes it: ``done_keys()`` lists its configs."""

    def __init__(self, results_dir: str | Path, run_id: str) -> None:
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise ValueError(f"run id must be a non-empty name without '/', got {run_id!r}")
        self.run_id = run_id
        self.path = Path(results_dir) / run_id
        self.path.mkdir(parents=True, exist_ok=True)
        self.rows_path = self.path / ROWS_FILE

    def rows(self) -> list[Row]:
        """The rows stored so far, one per key (``first_per_key``), parsed and not checked again (``append``
        checked them). A line cut off by a crash (only possible for a write that was killed) is skipped with a
        warning; the rows after it are kept."""
        if not self.rows_path.exists():
            return []
        rows = []
        for number, line in enumerate(self.rows_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(stored_row(json.loads(line)))
            except json.JSONDecodeError:
                warnings.warn(f"{self.rows_path}:{number}: skipping a cut-off line (a run was killed mid-write)",
                              stacklevel=2)
        return list(first_per_key(rows).values())

    def done_keys(self) -> set[str]:
        """Keys of the configs that already have a row (any status): a resumed run skips them."""
        return {row["key"] for row in self.rows()}

    def append(self, values: Mapping[str, object]) -> Row:
        """Write one row, forced to disk before returning, and return it as stored. This is where every row is
        checked against ``bench.record`` (``check_row``); a ``Row`` was checked by the store it came from."""
        row = check_row(values)
        line = json.dumps(row)
        # A previous session killed mid-write can leave a line without its newline: start a fresh one.
        needs_newline = False
        if self.rows_path.exists() and self.rows_path.stat().st_size > 0:
            with open(self.rows_path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                needs_newline = existing.read(1) != b"\n"
        with open(self.rows_path, "a", encoding="utf-8") as handle:
            if needs_newline:
                handle.write("\n")
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return row

    def environment(self) -> dict:
        """{"sessions": [environment, ...]}: one entry per session that wrote to this run."""
        path = self.path / ENVIRONMENT_FILE
        return json.loads(path.read_text()) if path.exists() else {"sessions": []}

    def add_environment(self, env: dict) -> None:
        record = self.environment()
        record["sessions"].append(env)
        (self.path / ENVIRONMENT_FILE).write_text(json.dumps(record, indent=2, default=str))

    def frame(self) -> pd.DataFrame:
        """The rows (one per key, ``first_per_key``) as a DataFrame typed by ``bench.record``."""
        return to_frame(self.rows())

    def write_frame(self) -> Path:
        """Save the frame as results.csv and return its path."""
        path = self.path / FRAME_FILE
        self.frame().to_csv(path, index=False)
        return path


class MemoryStore:
    """A run store kept in memory: what a torchrun rank other than 0 uses (rank 0 alone writes files; rows
    reach it over torch.distributed, bench.sweep.distributed). Same interface as ``RunStore`` for a session."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.path = Path(f"<memory:{run_id}>")
        self._rows: list[Row] = []
        self._sessions: list[dict] = []

    def rows(self) -> list[Row]:
        """The rows kept so far, one per key (``first_per_key``)."""
        return list(first_per_key(self._rows).values())

    def append(self, values: Mapping[str, object]) -> Row:
        """Keep one row, checked as ``RunStore.append`` checks it (rank 0 then stores it unchecked), and
        return it."""
        row = check_row(values)
        self._rows.append(row)
        return row

    def environment(self) -> dict:
        return {"sessions": list(self._sessions)}

    def add_environment(self, env: dict) -> None:
        self._sessions.append(env)


def merge_runs(sources: Iterable[str | Path], results_dir: str | Path, run_id: str) -> RunStore:
    """Join the stores of several runs (e.g. shards of one sweep) into the run ``run_id``.

    Of rows that share a key the first source's stands (``first_per_key``); every source's environment
    sessions are kept, each tagged with the run it came from.
    """
    merged = RunStore(results_dir, run_id)
    if merged.rows_path.exists() and merged.rows_path.stat().st_size:
        raise ValueError(f"merge target {merged.path} already has rows; choose a new run id")
    source_paths = [Path(s) for s in sources]
    if not source_paths:
        raise ValueError("merge needs at least one source run directory")
    stores = []
    for source in source_paths:
        if not (source / ROWS_FILE).exists():
            raise ValueError(f"{source} is not a run directory (no {ROWS_FILE})")
        stores.append(RunStore(source.parent, source.name))
    for row in first_per_key(amend_row(row, run_id=run_id, source_run=store.run_id)
                             for store in stores for row in store.rows()).values():
        merged.append(row)
    for store in stores:
        for env in store.environment()["sessions"]:
            merged.add_environment({**env, "source_run": store.run_id})
    merged.write_frame()
    return merged
