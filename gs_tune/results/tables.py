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
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from gs_tune.errors import RunDirError
from gs_tune.results import _values as V
from gs_tune.results import schema as S

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

    from gs_tune.results.tensorboard import TrialTensorBoard

TRIALS_FILE = "trials.parquet"
METRICS_FILE = "metrics.parquet"
EVALUATION_FILE = "evaluation.parquet"
STATUSES = ("running", "completed", "early_stopped", "diverged", "error")
_TEST_FIELDS = ("test_loss", "test_accuracy", "test_ci95")


def write_table_atomic(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` as Parquet at ``path`` so that ``path`` is always either the old or the new file.

    The data go to a hidden temp file in the same directory (os.replace is only atomic within one
    filesystem), are fsynced, then renamed over ``path``; a crash at any point leaves the previous
    file intact and at worst a stray ``.<name>.*.tmp`` that no ``*.parquet`` glob picks up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, and not needed for atomicity.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    writes RUN_DIR/tensorboard/<trial_id>/ through :class:`TrialTensorBoard`. ``param_types``
    gives parameter column types up front (else TrainConfig's field types, else the values'); a
    column still widens if a value does not fit (int -> float -> string).
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, tensorboard: bool = False,
                 param_types: Mapping[str, type | pa.DataType] | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # Tune calls callbacks from one thread; this guards other users
        self._trials: dict[str, dict[str, Any]] = {}
        self._params: dict[str, dict[str, Any]] = {}
        self._metrics: dict[str, dict[int, dict[str, Any]]] = {}
        self._types: dict[str, pa.DataType | None] = {}
        self._hints = dict(V.config_param_types())
        self._hints.update({k: S.arrow_type(t) for k, t in (param_types or {}).items()})
        self._tensorboard = tensorboard
        self._boards: dict[str, TrialTensorBoard] = {}
        for stale in self.run_dir.glob(".*.parquet.*.tmp"):  # left by a writer killed mid-write
            with contextlib.suppress(OSError):
                stale.unlink()
        self._load()

    # --- Tune events --------------------------------------------------------------

    def on_report(self, trial_id: str, record: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> None:
        """One trainer record (kind val, test or diverged) of ``trial_id``, whose parameters are ``params``.

        A val record adds a metrics row, or replaces the row of the same iteration (a resumed trial
        re-reports from its checkpoint). A test record fills the trial's test_* columns and no metrics
        row; so do the test_* values of a val record (a trial sends its last validation and the test
        as one). A diverged record adds a row with its training loss but not its placeholder
        val_accuracy, and marks the trial diverged; any other record marks it running. device, node
        and seed, when a record carries them, fill those columns.
        """
        tid = str(trial_id)
        kind = str(record.get("kind") or ("test" if record.get("test_accuracy") is not None
                                          and record.get("val_accuracy") is None else "val"))
        # Convert everything first: a bad value must raise before any state changes.
        iteration = V.to_int(record.get("iteration"), "iteration")
        if kind != "test" and iteration is None:
            raise ValueError(f"trial {tid}: a {kind!r} record needs 'iteration'")
        values = {c: V.to_float(record.get(c), c) for c in (*S.METRIC_COLUMNS[2:], *_TEST_FIELDS, "peak_memory_mb")}
        seed = V.to_int(record.get("seed"), "seed")
        with self._lock:
            trial = self._trial(tid)
            trial.update({key: values[key] for key in _TEST_FIELDS if kind == "test" or values[key] is not None})
            if kind != "test":
                row = {c: values[c] for c in S.METRIC_COLUMNS[2:]}
                if kind == "diverged":
                    row.update(val_loss=None, val_accuracy=None, val_ci95=None)
                self._metrics.setdefault(tid, {})[iteration] = {"trial_id": tid, "iteration": iteration, **row}
                self._refresh_val(tid)
            for key, col in (("iteration", "iterations"), ("elapsed_s", "wall_seconds"),
                             ("sec_per_iter", "sec_per_iter"), ("peak_memory_mb", "peak_memory_mb")):
                value = iteration if key == "iteration" else values[key]
                if value is not None:
                    trial[col] = value
            for key in ("device", "node"):  # the trainer's test record / the trial actor may say
                if record.get(key) is not None:
                    trial[key] = str(record[key])
            if seed is not None:
                trial["seed"] = seed
            if kind == "diverged":
                trial["status"], trial["error"] = "diverged", f"non-finite training loss at iteration {iteration}"
            else:
                trial["status"], trial["error"] = "running", None
            self._set_params(tid, params)
            self._write_metrics()
            self._write_trials()
            if self._tensorboard:
                self._board(tid).log(record)

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
            if status == "completed" and trial["status"] == "diverged":
                status = "diverged"
            if error is None and status in ("diverged", "error"):
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
            self._trials[tid] = {c: None for c in S.TRIAL_CORE_COLUMNS} | {"trial_id": tid, "status": "running"}
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

            self._boards[tid] = TrialTensorBoard(self.run_dir / "tensorboard" / tid, self._params.get(tid, {}))
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
