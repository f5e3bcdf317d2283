"""How a ResultsWriter turns its state into Parquet without the driver waiting on it.

Reports change a few rows; writing a table costs in proportion to all of them. So the driver's
work per report is constant (rows appended to an Arrow-bound buffer, the changed trials marked),
and a background thread publishes the tables: it assembles them from Arrow pieces, which pyarrow
does without holding the GIL, and renames them into place. It publishes at most every
``max(MIN_INTERVAL_S, last publish × (1 − SHARE) / SHARE)`` seconds, the last publish counted in
its thread's CPU time, i.e. it spends at most about SHARE of a core publishing however large the
run grows; a small run's tables trail its reports by about a second, a 20,000-trial run's by a
few (BENCHMARKS.md §6).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gs_tune.results import schema as S

MIN_INTERVAL_S = 1.0
SHARE = 0.1

_log = logging.getLogger(__name__)


class MetricsStore:
    """metrics.parquet's rows, append-only: Python rows turn into Arrow tables in batches, and a
    row replaced by a re-report is marked dead instead of removed, so no report rewrites anything."""

    BATCH = 512

    def __init__(self) -> None:
        self._tables: list[pa.Table] = []
        self._pending: list[dict[str, Any]] = []
        self._dead: set[int] = set()
        self.count = 0
        self.changed = False

    def append(self, row: dict[str, Any]) -> int:
        """Add one row (METRICS_SCHEMA's keys); returns its index, for :meth:`kill`."""
        self._pending.append(row)
        self.count += 1
        self.changed = True
        if len(self._pending) >= self.BATCH:
            self._convert()
        return self.count - 1

    def extend(self, table: pa.Table) -> int:
        """Add a whole table of rows (a loaded metrics.parquet); returns the index of its first."""
        self._convert()
        first = self.count
        self._tables.append(table)
        self.count += table.num_rows
        self.changed = True
        return first

    def kill(self, index: int) -> None:
        self._dead.add(index)
        self.changed = True

    def snapshot(self) -> tuple[list[pa.Table], frozenset[int]]:
        """The rows so far as Arrow pieces and the dead indices; marks the store unchanged."""
        self._convert()
        self.changed = False
        return list(self._tables), frozenset(self._dead)

    def _convert(self) -> None:
        if self._pending:
            self._tables.append(pa.Table.from_pylist(self._pending, schema=S.METRICS_SCHEMA))
            self._pending = []


def _by_trial_order(table: pa.Table, order: pa.Array, *extra: str) -> pa.Table:
    rank = pc.index_in(table.column("trial_id"), value_set=order)
    keys = pa.table({"rank": rank, **{name: table.column(name) for name in extra}})
    return table.take(pc.sort_indices(keys, sort_keys=[(k, "ascending") for k in keys.column_names]))


def build_metrics(pieces: list[pa.Table], dead: frozenset[int], order: pa.Array) -> pa.Table:
    """metrics.parquet: the live rows, trial by trial in ``order`` (first reported first), each by
    iteration."""
    if not pieces:
        return S.METRICS_SCHEMA.empty_table()
    table = pa.concat_tables(pieces)
    if dead:
        keep = np.ones(table.num_rows, dtype=bool)
        keep[np.fromiter(dead, dtype=np.int64, count=len(dead))] = False
        table = table.filter(pa.array(keep))
    return _by_trial_order(table, order, "iteration")


class TrialsCache:
    """trials.parquet as last built; a publish converts only the rows of trials that changed."""

    def __init__(self) -> None:
        self._table: pa.Table | None = None

    def update(self, rows: list[dict[str, Any]], schema: pa.Schema, order: pa.Array, full: bool) -> pa.Table:
        """``rows``: every trial's row when ``full`` (the schema changed), else the changed ones."""
        fresh = pa.Table.from_pylist(rows, schema=schema)
        if full or self._table is None:
            table = fresh
        else:
            stale = pc.is_in(self._table.column("trial_id"), value_set=fresh.column("trial_id"))
            table = pa.concat_tables([self._table.filter(pc.invert(stale)), fresh])
        self._table = _by_trial_order(table, order)
        return self._table


def trial_rows(trials: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
               types: Mapping[str, pa.DataType], cast: Callable[[Any, pa.DataType], Any]) -> list[dict[str, Any]]:
    """trials.parquet rows from (core row, parameters) pairs, each parameter cast to its column type."""
    rows = []
    for trial, params in trials:
        row = dict(trial)
        for name, type_ in types.items():
            row[S.param_column(name)] = cast(params.get(name), type_)
        rows.append(row)
    return rows


class Publisher:
    """Calls ``publish`` in a background thread after :meth:`poke`, at most every interval (module
    docstring); :meth:`flush` publishes in the caller's thread. One publish runs at a time. The
    thread ends after IDLE_S without a poke (a finished search keeps no thread) and a poke
    starts it again."""

    IDLE_S = 30.0

    def __init__(self, publish: Callable[[], None]):
        self._publish = publish
        self._lock = threading.Lock()  # one publish at a time
        self._life = threading.Lock()  # guards starting and ending the thread
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._due = 0.0

    def poke(self) -> None:
        self._changed.set()
        with self._life:
            if self._thread is None:
                self._stopping.clear()
                self._thread = threading.Thread(target=self._run, name="gs-tune-results", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        self._once()

    def stop(self) -> None:
        """End the thread (what it had not published stays for :meth:`flush`)."""
        with self._life:
            thread = self._thread
            self._stopping.set()
            self._changed.set()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            if not self._changed.wait(self.IDLE_S):
                with self._life:
                    if not self._changed.is_set():
                        self._thread = None
                        return
            wait = self._due - time.monotonic()
            if self._stopping.is_set() or (wait > 0 and self._stopping.wait(wait)):
                with self._life:
                    self._thread = None
                return
            self._changed.clear()  # before publishing: a change during it gets a publish of its own
            try:
                self._once()
            except Exception:  # noqa: BLE001 - the events are journaled; flush() or close() retries
                _log.exception("publishing the results tables failed; retrying after the next report")

    def _once(self) -> None:
        with self._lock:
            start = time.thread_time()
            try:
                self._publish()
            finally:
                # CPU time, not wall time: on a busy machine a publish takes longer to happen, not
                # more work, and the tables should not fall further behind for it.
                took = time.thread_time() - start
                self._due = time.monotonic() + max(MIN_INTERVAL_S, took * (1 - SHARE) / SHARE)
