"""Parquet tables of a run directory, written atomically while the search runs.

:class:`ResultsWriter` is driven from the search layer's Tune callback (driver
process): every reported record becomes a metrics row and refreshes its trial's
row, and both files are rewritten whole. The tables stay small (one row per
trial, one per validation), and rewriting means a reader — the CLI, a notebook,
DuckDB — always sees a complete, consistent file, even of an interrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
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

# Every numeric field a record may carry, under its record name (gs_tune/records.py).
_NUMBERS = (*R.RUN_FIELDS, *R.TRAIN_FIELDS, *R.VAL_FIELDS, *R.TEST_FIELDS)
# trials.parquet columns that follow the latest record: record field -> column.
_LATEST = {"elapsed_s": "wall_seconds", "sec_per_iter": "sec_per_iter", "peak_memory_mb": "peak_memory_mb"}


def write_table_atomic(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` as Parquet at ``path`` so that ``path`` is always either the old or the new
    file (gs_tune/fileio.py says how)."""
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _read(run_dir: str | os.PathLike[str], name: str) -> pa.Table:
    path = Path(run_dir) / name
    if not path.is_file():
        raise RunDirError(f"{path} does not exist (not a gs-tune run directory, or nothing recorded yet)")
    try:
        return pq.read_table(path)
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


class ResultsWriter:
    """Keeps trials.parquet and metrics.parquet of ``run_dir`` up to date, one call per Tune event.

    Construct it once per search (also when resuming: existing rows are loaded and kept). Not
    process-safe: exactly one writer per run directory, in the driver. ``tensorboard=True`` also
    writes RUN_DIR/tensorboard/<trial_id>/ through :class:`TrialTensorBoard`. Parameter columns take
    TrainConfig's field types (else the values'); a column still widens if a value does not fit
    (int -> float -> string).
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # Tune calls callbacks from one thread; this guards other users
        self._trials: dict[str, dict[str, Any]] = {}
        self._params: dict[str, dict[str, Any]] = {}
        self._metrics: dict[str, dict[int, dict[str, Any]]] = {}
        self._types: dict[str, pa.DataType | None] = {}
        self._hints = V.config_param_types()
        self._tensorboard = tensorboard
        self._boards: dict[str, TrialTensorBoard] = {}
        remove_stale_temps(self.run_dir, "*.parquet")  # left by a writer killed mid-write
        self._load()

    # --- Tune events --------------------------------------------------------------

    def on_report(self, trial_id: str, record: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> None:
        """One record of ``trial_id`` as the search reports it (gs_tune/records.py), whose trial
        parameters are ``params``.

        A val record adds a metrics row, or replaces the row of the same iteration (a resumed trial
        re-reports from its checkpoint); its test_* values, when the search sent the last validation
        and the test as one report, fill the trial's test columns. A test record fills those columns
        and adds no metrics row. A diverged record adds a row with its training loss and no
        validation values (the search's placeholder val_accuracy is for the searcher only), and
        marks the trial diverged; any other record marks it running. device, node and seed, when a
        record carries them, fill those columns.
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
            trial = self._trial(tid)
            trial.update({key: values[key] for key in R.TEST_FIELDS if kind == "test" or values[key] is not None})
            if kind != "test":
                row = {c: values[c] for c in S.METRIC_COLUMNS[2:]}
                if kind == "diverged":
                    row.update(dict.fromkeys(R.VAL_FIELDS))
                self._metrics.setdefault(tid, {})[iteration] = {"trial_id": tid, "iteration": iteration, **row}
                self._refresh_val(tid)
            self._update_latest(trial, record, iteration, values, seed)
            if kind == "diverged":
                trial["status"], trial["error"] = DIVERGED, f"non-finite training loss at iteration {iteration}"
            else:
                trial["status"], trial["error"] = RUNNING, None
            self._set_params(tid, params)
            self._write_metrics()
            self._write_trials()
            if self._tensorboard:
                self._board(tid).log(record)

    @staticmethod
    def _update_latest(trial: dict[str, Any], record: Mapping[str, Any], iteration: int | None,
                       values: Mapping[str, float | None], seed: int | None) -> None:
        if iteration is not None:
            trial["iterations"] = iteration
        for key, column in _LATEST.items():
            if values[key] is not None:
                trial[column] = values[key]
        for key in ("device", "node"):  # the search layer adds them to every report
            if record.get(key) is not None:
                trial[key] = str(record[key])
        if seed is not None:
            trial["seed"] = seed

    def on_trial_end(self, trial_id: str, status: str, error: str | None = None, device: str | None = None,
                     node: str | None = None, params: Mapping[str, Any] | None = None) -> None:
        """The trial stopped with ``status`` (one of STATUSES); ``params`` gives a row to a trial that
        never reported (e.g. one that failed at start). A trial whose last record was kind diverged
        stays diverged when reported completed: to Tune it simply returned."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        tid = str(trial_id)
        with self._lock:
            trial = self._trial(tid)
            if status == COMPLETED and trial["status"] == DIVERGED:
                status = DIVERGED
            if error is None and status in FAILED:
                error = trial["error"]  # keep what the diverged record said
            trial["status"] = status
            trial["error"] = None if error is None else str(error)
            if device is not None:
                trial["device"] = str(device)
            if node is not None:
                trial["node"] = str(node)
            self._set_params(tid, params)
            if not (self.run_dir / METRICS_FILE).exists():
                self._write_metrics()  # so read_metrics works on a run whose trials all failed early
            self._write_trials()
            if self._tensorboard:
                final = {k: trial.get(k) for k in ("best_val_accuracy", "final_val_accuracy", "test_accuracy")}
                self._board(tid).close({**final, "status": status})
                del self._boards[tid]

    def close(self) -> None:
        """Flush and close open TensorBoard writers (interrupted search: their sessions stay open)."""
        with self._lock:
            for board in self._boards.values():
                board.suspend()
            self._boards.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state ------------------------------------------------------------------

    def _trial(self, tid: str) -> dict[str, Any]:
        if tid not in self._trials:
            self._trials[tid] = {c: None for c in S.TRIAL_CORE_COLUMNS} | {"trial_id": tid, "status": RUNNING}
            self._params[tid] = {}
        return self._trials[tid]

    def _set_params(self, tid: str, params: Mapping[str, Any] | None) -> None:
        if not params:
            return
        for name, value in params.items():
            name, value = str(name), V.plain(value)
            self._params[tid][name] = value
            current = self._types.get(name)
            self._types[name] = V.merge_type(current if current is not None else self._hints.get(name), value)
        seed = params.get("seed")
        if seed is not None:
            with contextlib.suppress(ValueError):
                self._trials[tid]["seed"] = V.to_int(seed, "seed")

    def _refresh_val(self, tid: str) -> None:
        rows = [r for _, r in sorted(self._metrics.get(tid, {}).items())
                if r["val_accuracy"] is not None or r["val_loss"] is not None]
        trial = self._trials[tid]
        last = rows[-1] if rows else {}
        trial["final_val_accuracy"] = last.get("val_accuracy")
        trial["final_val_loss"] = last.get("val_loss")
        trial["final_val_ci95"] = last.get("val_ci95")
        accs = [r["val_accuracy"] for r in rows if V.is_finite(r["val_accuracy"])]
        losses = [r["val_loss"] for r in rows if V.is_finite(r["val_loss"])]
        trial["best_val_accuracy"] = max(accs) if accs else None
        trial["best_val_loss"] = min(losses) if losses else None

    def _board(self, tid: str) -> TrialTensorBoard:
        if tid not in self._boards:
            from gs_tune.results.tensorboard import TrialTensorBoard  # torch import only when asked for

            self._boards[tid] = TrialTensorBoard(self.run_dir / TENSORBOARD_DIR / tid, self._params.get(tid, {}))
        return self._boards[tid]

    # --- files ------------------------------------------------------------------

    def _load(self) -> None:
        if (self.run_dir / TRIALS_FILE).exists():
            table = read_trials(self.run_dir)
            for name, type_ in S.param_types_of(table.schema).items():
                column = table.column(S.param_column(name))
                # An all-null column says nothing about its type: let later values decide.
                self._types[name] = type_ if column.null_count < len(column) else self._hints.get(name)
            for row in table.to_pylist():
                tid = str(row["trial_id"])
                trial = self._trial(tid)
                trial.update({c: row.get(c) for c in S.TRIAL_CORE_COLUMNS if c in row})
                self._params[tid] = {k[len(S.PARAM_PREFIX):]: v for k, v in row.items() if k.startswith(S.PARAM_PREFIX)}
        if (self.run_dir / METRICS_FILE).exists():
            for row in read_metrics(self.run_dir).to_pylist():
                tid = str(row["trial_id"])
                self._trial(tid)
                full = {c: row.get(c) for c in S.METRIC_COLUMNS}
                self._metrics.setdefault(tid, {})[int(row["iteration"])] = full

    def _write_trials(self) -> None:
        types = {name: t if t is not None else pa.string() for name, t in self._types.items()}
        rows = []
        for tid, trial in self._trials.items():
            row = dict(trial)
            params = self._params.get(tid, {})
            for name, type_ in types.items():
                row[S.param_column(name)] = V.cast_param(params.get(name), type_)
            rows.append(row)
        table = pa.Table.from_pylist(rows, schema=S.trials_schema(types))
        write_table_atomic(table, self.run_dir / TRIALS_FILE)

    def _write_metrics(self) -> None:
        rows = [row for tid in self._trials for _, row in sorted(self._metrics.get(tid, {}).items())]
        write_table_atomic(pa.Table.from_pylist(rows, schema=S.METRICS_SCHEMA), self.run_dir / METRICS_FILE)
