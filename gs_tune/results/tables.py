"""Parquet tables of a run directory, kept current while the search runs.

:class:`ResultsWriter` is driven from the search layer's Tune callback (driver process): every
reported record becomes a metrics row and refreshes its trial's row. Each event is journaled and
the files are republished whole a moment later by a background thread, through a temporary file
and a rename, so a reader (the CLI, a notebook, DuckDB) always sees a complete, consistent file,
a few seconds behind at most, and the driver's cost per report does not grow with the run.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from gs_tune import records as R
from gs_tune.errors import RunDirError
from gs_tune.fileio import atomic_write, remove_stale_temps
from gs_tune.results import _values as V
from gs_tune.results import schema as S
from gs_tune.results._journal import Journal, remove_leftovers
from gs_tune.results._publish import Publisher, TrialsCache, build_metrics, trial_rows
from gs_tune.results._state import METRIC_KEYS, TableState
from gs_tune.rundir import (
    COMPLETED,
    DIVERGED,
    EVALUATION_FILE,
    FAILED,
    METRICS_FILE,
    RUNNING,
    STATUSES,
    TENSORBOARD_DIR,
    TRIALS_FILE,
)

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

    from gs_tune.results.tensorboard import TrialTensorBoard

# The numeric record fields (gs_tune/records.py) the tables keep; test_* are not among them.
_NUMBERS = (*R.RUN_FIELDS, *R.TRAIN_FIELDS, *R.VAL_FIELDS)
# trials.parquet columns that follow the latest record: record field -> column.
_LATEST = {"elapsed_s": "wall_seconds", "sec_per_iter": "sec_per_iter", "peak_memory_mb": "peak_memory_mb"}


def write_table_atomic(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` as Parquet at ``path`` so that ``path`` is always either the old or the new
    file (gs_tune/fileio.py says how)."""
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _read(run_dir: str | os.PathLike[str], name: str) -> pa.Table:
    return read_table_file(Path(run_dir) / name)


def read_table_file(path: Path) -> pa.Table:
    """One Parquet file as a table, safely beside a publish renaming a new one into place; every
    gs-tune table is read through here. RunDirError naming the path if it is missing or garbled."""
    if not path.is_file():
        raise RunDirError(f"{path} does not exist (not a gs-tune run directory, or nothing recorded yet)")
    try:
        # One open file, mapped: pq.read_table(path) opens the path twice (to inspect, then to
        # scan), and a publish renaming a new file in between would make it read half of each; the
        # mapping keeps the file it opened. Native objects and one thread only: Arrow's pool threads
        # finish a read's clean-up after it returns, and clean-up that needs the GIL (a Python file
        # object or bytes under the reader) aborts the process if it runs into interpreter exit
        # ("terminate called without an active exception", apache/arrow#34314), which killed
        # `gs-tune launch` right after its last read in CI. The tables are small; one thread is enough.
        with pa.memory_map(str(path)) as source:
            return pq.ParquetFile(source).read(use_threads=False)
    except (OSError, pa.ArrowException) as exc:
        raise RunDirError(f"{path}: cannot be read as Parquet ({exc})") from exc


def read_trials(run_dir: str | os.PathLike[str]) -> pa.Table:
    """RUN_DIR/trials.parquet (one row per trial); RunDirError naming the path if it is missing."""
    return _read(run_dir, TRIALS_FILE)


def read_metrics(run_dir: str | os.PathLike[str]) -> pa.Table:
    """RUN_DIR/metrics.parquet (one row per trial and validation iteration)."""
    return _read(run_dir, METRICS_FILE)


def read_evaluation(run_dir: str | os.PathLike[str]) -> pa.Table:
    """RUN_DIR/evaluation.parquet (one row per final evaluation run)."""
    return _read(run_dir, EVALUATION_FILE)


def write_evaluation(run_dir: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Replace RUN_DIR/evaluation.parquet with ``rows``.

    Each row has the EVALUATION_SCHEMA keys; instead of ``params_json`` a row may give ``params``
    (a dict, stored as sorted JSON). Unknown keys are an error so a typo does not silently drop data.
    """
    allowed = set(S.EVALUATION_SCHEMA.names) | {"params"}
    out = []
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - allowed)
        if unknown:
            raise ValueError(f"evaluation row {i}: unknown field {unknown[0]!r}; allowed: {sorted(allowed)}")
        if not row.get("method"):
            raise ValueError(f"evaluation row {i}: 'method' is required")
        rec: dict[str, Any] = {"method": str(row["method"]), "config_source": row.get("config_source")}
        for key in ("seed", "test_tasks"):
            rec[key] = V.to_int(row.get(key), key)
        for key in ("test_accuracy", "test_ci95", "sec_per_iter", "peak_memory_mb"):
            rec[key] = V.to_float(row.get(key), key)
        params = row.get("params")
        rec["params_json"] = (json.dumps({k: V.plain(v) for k, v in params.items()}, sort_keys=True, default=str)
                              if params is not None else row.get("params_json"))
        out.append(rec)
    return write_table_atomic(pa.Table.from_pylist(out, schema=S.EVALUATION_SCHEMA),
                              Path(run_dir) / EVALUATION_FILE)


_OPEN: weakref.WeakSet[ResultsWriter] = weakref.WeakSet()


class ResultsWriter:
    """Keeps trials.parquet and metrics.parquet of ``run_dir`` up to date, one call per Tune event.

    Construct it once per search (also when resuming: everything recorded is loaded and kept).
    Exactly one writer per run directory at a time, in the driver; a newer one takes over and the
    older one then refuses events. ``tensorboard=True`` also writes RUN_DIR/tensorboard/<trial_id>/
    through :class:`TrialTensorBoard`. Parameter columns take TrainConfig's field types (else the
    values'); a column still widens if a value does not fit (int -> float -> string).

    An event costs the same however large the run: it is appended to the journal
    (gs_tune/results/_journal.py) and to the in-memory tables, and a background thread publishes
    the Parquet files a moment later (gs_tune/results/_publish.py says how soon). :meth:`flush`
    publishes now; :meth:`close` publishes and folds the journal into the tables. A killed writer
    loses nothing it was given: the next writer on the directory replays the journal.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # Tune calls callbacks from one thread; the publisher is another
        self._state = TableState()
        self._trials_cache = TrialsCache()
        self._journal = Journal(self.run_dir)
        self._publisher = Publisher(self._publish)
        self._tensorboard = tensorboard
        self._boards: dict[str, TrialTensorBoard] = {}
        # pyarrow imports pandas (when installed) on its first conversion of Python values: pay
        # that here, at the start of a search, rather than under the lock in the middle of one.
        pa.array([0.0])
        if tensorboard:
            importlib.import_module("gs_tune.results.tensorboard")  # likewise, before the first report
        remove_stale_temps(self.run_dir, "*.parquet")  # left by a writer killed mid-write
        remove_leftovers(self.run_dir)
        self._load()
        _OPEN.add(self)

    # --- Tune events --------------------------------------------------------------

    def on_report(self, trial_id: str, record: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> None:
        """One record of ``trial_id`` as the search reports it (gs_tune/records.py), whose trial
        parameters are ``params``.

        A val record adds a metrics row, or replaces the row of the same iteration (a resumed trial
        re-reports from its checkpoint). A diverged record adds a row with its training loss and no
        validation values (the search's placeholder val_accuracy is for the searcher only), and
        marks the trial diverged; any other record marks it running. Test values are not recorded:
        a search never evaluates the test split, and a test record adds no row. device, node and
        seed, when a record carries them, fill those columns.
        """
        tid = str(trial_id)
        kind = V.record_kind(record, tid)
        # Convert everything first: a bad value must raise before any state changes.
        iteration = V.to_int(record.get("iteration"), "iteration")
        if kind != "test" and iteration is None:
            raise ValueError(f"trial {tid}: a {kind!r} record needs 'iteration'")
        values = {c: V.to_float(record.get(c), c) for c in _NUMBERS}
        seed = V.to_int(record.get("seed"), "seed")
        with self._lock:
            self._ensure_journal()
            fields = self._state.fields(tid)
            metric = None
            if kind != "test":
                metric = {"iteration": iteration, **{c: values[c] for c in METRIC_KEYS[1:]}}
                if kind == "diverged":
                    metric.update(dict.fromkeys(R.VAL_FIELDS))
            _update_latest(fields, record, iteration, values, seed)
            if kind == "diverged":
                fields["status"], fields["error"] = DIVERGED, f"non-finite training loss at iteration {iteration}"
            else:
                fields["status"], fields["error"] = RUNNING, None
            self._record(tid, fields, metric, self._state.params_delta(tid, params))
            if self._tensorboard:
                self._board(tid).log(record)
        self._publisher.poke()

    def on_trial_end(self, trial_id: str, status: str, error: str | None = None, device: str | None = None,
                     node: str | None = None, params: Mapping[str, Any] | None = None) -> None:
        """The trial stopped with ``status`` (one of STATUSES); ``params`` gives a row to a trial that
        never reported (e.g. one that failed at start). A trial whose last record was kind diverged
        stays diverged when reported completed: to Tune it simply returned."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        tid = str(trial_id)
        with self._lock:
            self._ensure_journal()
            fields = self._state.fields(tid)
            if status == COMPLETED and fields["status"] == DIVERGED:
                status = DIVERGED
            if error is None and status in FAILED:
                error = fields["error"]  # keep what the diverged record said
            fields["status"], fields["error"] = status, None if error is None else str(error)
            if device is not None:
                fields["device"] = str(device)
            if node is not None:
                fields["node"] = str(node)
            self._record(tid, fields, None, self._state.params_delta(tid, params))
            if self._tensorboard:
                trial = self._state.trials[tid]
                final = {k: trial[k] for k in ("best_val_accuracy", "final_val_accuracy")}
                self._board(tid).close({**final, "status": status})
                del self._boards[tid]
        self._publisher.poke()

    def flush(self) -> None:
        """Publish trials.parquet and metrics.parquet now, with every event so far."""
        self._publisher.flush()

    def close(self) -> None:
        """Publish the tables, fold the journal into them, and flush and close open TensorBoard
        writers (interrupted search: their sessions stay open). The writer stays usable."""
        self._publisher.stop()
        with self._lock:
            for board in self._boards.values():
                board.suspend()
            self._boards.clear()
        if self._journal.taken_over():
            self._journal.close()  # another writer took the directory over: its tables now
            return
        self._publisher.flush()  # on failure the journal stays, and with it every event
        with self._lock:
            self._journal.remove()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------

    def _ensure_journal(self) -> None:
        if not self._journal.is_open:
            # Only ever when the published tables hold every event (a new writer, or one closed).
            self._journal.start(self._published())
        elif not self._journal.owned():
            raise RunDirError(f"{self.run_dir}: another ResultsWriter has taken this run directory over; "
                              "this one records nothing more")

    def _published(self) -> list[Path]:
        return [self.run_dir / TRIALS_FILE, self.run_dir / METRICS_FILE]

    def _record(self, tid: str, fields: dict[str, Any], metric: dict[str, Any] | None,
                params: dict[str, Any] | None) -> None:
        """Journal one event (None values left out), then apply it."""
        event: dict[str, Any] = {"id": tid, "trial": {k: v for k, v in fields.items() if v is not None}}
        if metric is not None:
            event["metric"] = {k: v for k, v in metric.items() if v is not None}
        if params:
            event["params"] = params
        self._journal.append(event)
        self._state.apply(tid, fields, metric, params)

    def _board(self, tid: str) -> TrialTensorBoard:
        if tid not in self._boards:
            from gs_tune.results.tensorboard import TrialTensorBoard  # protobuf imports only when asked for

            self._boards[tid] = TrialTensorBoard(self.run_dir / TENSORBOARD_DIR / tid,
                                                 self._state.params.get(tid, {}), test=False)
        return self._boards[tid]

    def _load(self) -> None:
        if not self._journal.path.is_dir():
            self._state.load(*(read_table_file(p) if p.is_file() else None for p in self._published()))
            return
        # A writer was killed, or never closed: the journal's base, then its events.
        base = [self._journal.base(TRIALS_FILE), self._journal.base(METRICS_FILE)]
        self._state.load(*(read_table_file(p) if p.is_file() else None for p in base))
        for event in self._journal.read_events():
            self._state.replay(event)
        # Takes the directory over from any older writer. Under the lock, or an older writer's
        # publish could land between these tables and the journal that takes them as its base.
        with self._journal.exclusive():
            self._publisher.flush()
            self._journal.start(self._published())

    def _publish(self) -> None:
        """Write the tables from a snapshot of the state (in the publisher's thread, or flush's)."""
        trials_file, metrics_file = self._published()
        with self._lock:
            if self._journal.taken_over():
                return  # another writer took over: its tables, not these
            snap = self._state.snapshot(trials_file.exists(), metrics_file.exists())
        if snap is None:
            return
        try:
            order = pa.array(snap.order, pa.string())
            trials = metrics = None
            if snap.trials_due:
                rows = trial_rows(snap.pairs, snap.types, V.cast_param)
                trials = self._trials_cache.update(rows, S.trials_schema(snap.types), order, snap.full)
            if snap.metrics is not None:
                metrics = build_metrics(*snap.metrics, order)
            with self._journal.exclusive():
                if self._journal.taken_over():
                    return  # taken over since the snapshot: these tables are older than the new writer's
                if trials is not None:  # first, so every trial in metrics.parquet is in trials.parquet
                    write_table_atomic(trials, trials_file)
                if metrics is not None:
                    write_table_atomic(metrics, metrics_file)
            self._journal.sync()
        except BaseException:
            with self._lock:
                self._state.unpublished(snap)
            raise


def _update_latest(fields: dict[str, Any], record: Mapping[str, Any], iteration: int | None,
                   values: Mapping[str, float | None], seed: int | None) -> None:
    if iteration is not None:
        fields["iterations"] = iteration
    for key, column in _LATEST.items():
        if values[key] is not None:
            fields[column] = values[key]
    for key in ("device", "node"):  # the search layer adds them to every report
        if record.get(key) is not None:
            fields[key] = str(record[key])
    if seed is not None:
        fields["seed"] = seed


@atexit.register
def _publish_open_writers() -> None:
    """A writer the program never closed still leaves its tables current when Python exits."""
    for writer in list(_OPEN):
        with contextlib.suppress(Exception):
            writer._publisher.stop()
            writer.flush()
