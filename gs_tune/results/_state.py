"""The in-memory tables of a ResultsWriter: one row per trial, the metrics rows, parameter types.

Every change comes in as an event (:meth:`TableState.apply`), whether it just happened or is
replayed from the journal, so both paths give the same tables. Each event costs the same
however many trials came before: a trial's best and final validation values are kept up to date
from its own rows only, and metrics rows go to the append-only :class:`MetricsStore`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from gs_tune.results import _values as V
from gs_tune.results import schema as S
from gs_tune.results._publish import MetricsStore
from gs_tune.rundir import RUNNING

# trials.parquet columns that events set; the rest (best_*, final_*) follow from the metrics rows.
DERIVED = ("final_val_accuracy", "best_val_accuracy", "final_val_loss", "best_val_loss", "final_val_ci95")
STATE = tuple(c for c in S.TRIAL_CORE_COLUMNS if c not in (*DERIVED, "trial_id"))
METRIC_KEYS = S.METRIC_COLUMNS[1:]  # a metrics event: iteration and the values, the trial aside


@dataclass
class Snapshot:
    """What one publish writes, taken under the writer's lock and built outside it."""

    pairs: list[tuple[dict[str, Any], dict[str, Any]]]  # (core row, parameters) of the trials to convert
    types: dict[str, pa.DataType]
    order: list[str]  # every trial id, first reported first
    full: bool  # pairs holds every trial (the parameter types changed)
    dirty: set[str]
    metrics: tuple[list[pa.Table], frozenset[int]] | None = None  # MetricsStore.snapshot(), if due
    trials_due: bool = True


class TableState:
    def __init__(self) -> None:
        self.trials: dict[str, dict[str, Any]] = {}
        self.params: dict[str, dict[str, Any]] = {}
        # per trial: iteration -> (metrics row index, val_accuracy, val_loss, val_ci95)
        self._vals: dict[str, dict[int, tuple[int, float | None, float | None, float | None]]] = {}
        self._final_it: dict[str, int] = {}
        self.types: dict[str, pa.DataType | None] = {}
        self.types_changed = True  # the next publish converts every trial row
        self._hints = V.config_param_types()
        self.dirty: set[str] = set()
        self.store = MetricsStore()

    def trial(self, tid: str) -> dict[str, Any]:
        if tid not in self.trials:
            self.trials[tid] = {c: None for c in S.TRIAL_CORE_COLUMNS} | {"trial_id": tid, "status": RUNNING}
            self.params[tid] = {}
        return self.trials[tid]

    def fields(self, tid: str) -> dict[str, Any]:
        """A copy of the trial's event-set columns, to change and pass to :meth:`apply`."""
        trial = self.trials.get(tid)
        return {c: trial[c] for c in STATE} if trial else dict.fromkeys(STATE) | {"status": RUNNING}

    def apply(self, tid: str, fields: Mapping[str, Any] | None, metric: Mapping[str, Any] | None,
              params: Mapping[str, Any] | None) -> None:
        """One event: the trial's new STATE columns, a metrics row (METRIC_KEYS), changed parameters."""
        trial = self.trial(tid)
        if fields is not None:
            trial.update(fields)
        if params:
            self._set_params(tid, params)
        seed = self.params[tid].get("seed")  # the trial's seed parameter outranks what it reported
        if seed is not None:
            with contextlib.suppress(ValueError):
                trial["seed"] = V.to_int(seed, "seed")
        if metric is not None:
            index = self.store.append({"trial_id": tid, **metric})
            self._add_val(tid, metric["iteration"], index, metric["val_accuracy"], metric["val_loss"],
                          metric["val_ci95"])
        self.dirty.add(tid)

    def replay(self, event: Mapping[str, Any]) -> None:
        """A journal event (the writer's ``_record`` format), with None values left out."""
        fields, metric = event.get("trial"), event.get("metric")
        self.apply(str(event["id"]),
                   None if fields is None else {c: fields.get(c) for c in STATE},
                   None if metric is None else {c: metric.get(c) for c in METRIC_KEYS},
                   event.get("params"))

    def params_delta(self, tid: str, params: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The parameters that differ from what the trial has (Tune sends them all with every report)."""
        if not params:
            return None
        stored = self.params.get(tid, {})
        delta: dict[str, Any] = {}
        for name, value in params.items():
            name, value = str(name), V.plain(value)
            old = stored.get(name, delta)  # delta: a sentinel no value equals
            if type(old) is not type(value) or old != value:
                delta[name] = value
        return delta or None

    def _set_params(self, tid: str, params: Mapping[str, Any]) -> None:
        for name, value in params.items():
            self.params[tid][name] = value
            current = self.types.get(name)
            new = V.merge_type(current if current is not None else self._hints.get(name), value)
            if new != current or name not in self.types:
                self.types[name] = new
                self.types_changed = True

    def _add_val(self, tid: str, iteration: int, index: int, acc: float | None, loss: float | None,
                 ci: float | None) -> None:
        vals = self._vals.setdefault(tid, {})
        old = vals.get(iteration)
        vals[iteration] = (index, acc, loss, ci)
        if old is not None:  # a resumed trial re-reported it: the latest row wins
            self.store.kill(old[0])
            self._derive(tid)
            return
        if acc is None and loss is None:
            return  # a diverged row: no validation
        last = self._final_it.get(tid)
        if last is not None and iteration < last:
            self._derive(tid)
            return
        trial = self.trials[tid]
        self._final_it[tid] = iteration
        trial.update(final_val_accuracy=acc, final_val_loss=loss, final_val_ci95=ci)
        if V.is_finite(acc) and (trial["best_val_accuracy"] is None or acc > trial["best_val_accuracy"]):
            trial["best_val_accuracy"] = acc
        if V.is_finite(loss) and (trial["best_val_loss"] is None or loss < trial["best_val_loss"]):
            trial["best_val_loss"] = loss

    def _derive(self, tid: str) -> None:
        rows = [(it, v) for it, v in sorted(self._vals.get(tid, {}).items()) if v[1] is not None or v[2] is not None]
        last = rows[-1][1] if rows else (None, None, None, None)
        trial = self.trials[tid]
        trial.update(final_val_accuracy=last[1], final_val_loss=last[2], final_val_ci95=last[3])
        accs = [v[1] for _, v in rows if V.is_finite(v[1])]
        losses = [v[2] for _, v in rows if V.is_finite(v[2])]
        trial["best_val_accuracy"] = max(accs) if accs else None
        trial["best_val_loss"] = min(losses) if losses else None
        if rows:
            self._final_it[tid] = rows[-1][0]
        else:
            self._final_it.pop(tid, None)

    # --- tables -------------------------------------------------------------------

    def load(self, trials: pa.Table | None, metrics: pa.Table | None) -> None:
        """Start from published tables (a resumed run); they count as published."""
        if trials is not None:
            for name, type_ in S.param_types_of(trials.schema).items():
                column = trials.column(S.param_column(name))
                # An all-null column says nothing about its type: let later values decide.
                self.types[name] = type_ if column.null_count < len(column) else self._hints.get(name)
            for row in trials.to_pylist():
                tid = str(row["trial_id"])
                self.trial(tid).update({c: row.get(c) for c in S.TRIAL_CORE_COLUMNS if c in row})
                self.params[tid] = {k[len(S.PARAM_PREFIX):]: v for k, v in row.items() if k.startswith(S.PARAM_PREFIX)}
        if metrics is not None:
            if metrics.schema.names != list(S.METRIC_COLUMNS):  # written by another version
                metrics = pa.Table.from_pylist([{c: r.get(c) for c in S.METRIC_COLUMNS} for r in metrics.to_pylist()],
                                               schema=S.METRICS_SCHEMA)
            first = self.store.extend(metrics.cast(S.METRICS_SCHEMA))
            columns = [metrics.column(c).to_pylist()
                       for c in ("trial_id", "iteration", "val_accuracy", "val_loss", "val_ci95")]
            for offset, (tid, it, acc, loss, ci) in enumerate(zip(*columns)):
                self.trial(str(tid))
                self._add_val(str(tid), int(it), first + offset, acc, loss, ci)
        self.dirty.clear()
        self.store.changed = False

    def snapshot(self, trials_exist: bool, metrics_exist: bool) -> Snapshot | None:
        """What the next publish writes (None: nothing); the state counts as published from here."""
        any_trial = bool(self.trials)
        trials_due = bool(self.dirty) or (any_trial and not trials_exist)
        metrics_due = self.store.changed or (any_trial and not metrics_exist)
        if not (trials_due or metrics_due):
            return None
        full = self.types_changed
        snap = Snapshot(
            pairs=[(dict(self.trials[t]), dict(self.params[t])) for t in (self.trials if full else self.dirty)],
            types={name: t if t is not None else pa.string() for name, t in self.types.items()},
            order=list(self.trials), full=full, dirty=self.dirty, trials_due=trials_due,
            metrics=self.store.snapshot() if metrics_due else None)
        self.dirty, self.types_changed = set(), False
        return snap

    def unpublished(self, snap: Snapshot) -> None:
        """The publish of ``snap`` failed: the next one writes all of it again."""
        self.dirty |= snap.dirty
        self.types_changed |= snap.full
        self.store.changed |= snap.metrics is not None
