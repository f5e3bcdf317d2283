"""What summary and report share: the objective(s) of a run, ranking, Pareto fronts, Optuna importances.

Pure functions over plain rows (``pa.Table.to_pylist()``), plus the study reader (and the tables, for
importances at one iteration); no Ray, so they work on any finished or interrupted run directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gs_tune.errors import RunDirError
from gs_tune.results._values import is_finite
from gs_tune.results.schema import PARAM_PREFIX
from gs_tune.results.tables import read_metrics, read_trials
from gs_tune.rundir import (
    DEFAULT_OBJECTIVE,
    METRICS_FILE,
    RUN_FILE,
    STUDY_FILE,
    Objective,
    read_run,
    read_space,
)
from gs_tune.stats import Interval, slope_interval

__all__ = ["DEFAULT_OBJECTIVE", "Objective", "asha_rung", "late_slope", "open_study", "param_importances", "pareto_mask", "pareto_rows",
           "rank", "resolve_objectives", "searched_params", "second_half", "varying_params"]


def resolve_objectives(run_dir: str | os.PathLike[str], columns: Sequence[str]) -> tuple[list[Objective], list[str]]:
    """The run's objectives as RUN_DIR/run.json records them, those whose column is among the
    trials.parquet ``columns``; best_val_accuracy (max) when there are none. Notes explain any
    fallback."""
    if not (Path(run_dir) / RUN_FILE).is_file():
        return [DEFAULT_OBJECTIVE], []
    try:
        recorded = read_run(run_dir).objectives
    except RunDirError as exc:
        return [DEFAULT_OBJECTIVE], [f"{exc}; ranking by best_val_accuracy"]
    objectives, notes = [], []
    for objective in recorded:
        if objective.column is None or objective.column not in columns:
            notes.append(f"objective {objective.metric!r} has no column in trials.parquet; ignored")
        else:
            objectives.append(objective)
    if not objectives:
        notes.append("ranking by best_val_accuracy")
        objectives = [DEFAULT_OBJECTIVE]
    return objectives, notes


def rank(rows: Sequence[Mapping[str, Any]], objective: Objective) -> list[Mapping[str, Any]]:
    """Rows with a finite objective value, best first (stable for ties)."""
    scored = [r for r in rows if is_finite(r.get(objective.column))]
    return sorted(scored, key=lambda r: r[objective.column], reverse=objective.direction == "max")


def pareto_mask(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[bool]:
    """True for each point no other point dominates (at least as good in every objective, better in one)."""
    signs = [1.0 if d == "max" else -1.0 for d in directions]
    scaled = [[s * v for s, v in zip(signs, p)] for p in points]
    mask = []
    for i, p in enumerate(scaled):
        dominated = any(all(qv >= pv for qv, pv in zip(q, p)) and any(qv > pv for qv, pv in zip(q, p))
                        for j, q in enumerate(scaled) if j != i)
        mask.append(not dominated)
    return mask


def pareto_rows(rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]) -> list[Mapping[str, Any]]:
    """Pareto-optimal rows among those with every objective finite, sorted by the first objective."""
    scored = [r for r in rows if all(is_finite(r.get(o.column)) for o in objectives)]
    mask = pareto_mask([[r[o.column] for o in objectives] for r in scored], [o.direction for o in objectives])
    return rank([r for r, keep in zip(scored, mask) if keep], objectives[0])


def second_half(iterations: Sequence[int], values: Sequence[float]) -> list[tuple[int, float]]:
    """The finite points of a learning curve at or past half its last iteration."""
    return [(i, float(v)) for i, v in zip(iterations, values) if i >= iterations[-1] / 2 and is_finite(v)]


def late_slope(iterations: Sequence[int], values: Sequence[float]) -> Interval | None:
    """Whether a learning curve had flattened: the least-squares slope of ``values`` per 1,000
    iterations over the curve's :func:`second_half`, with its t-interval from the points' scatter
    around the line; None with fewer than 3 points there (two fix a line but not its noise).

    A trial validates on the same tasks every time, so the interval over those tasks says how well
    the curve's level is known, not how much it moves; the scatter along the curve does."""
    late = second_half(iterations, values)
    if len({i for i, _ in late}) < 3:
        return None
    return slope_interval([i / 1000 for i, _ in late], [v for _, v in late], over="validations")


def varying_params(rows: Sequence[Mapping[str, Any]], numeric_only: bool = False) -> list[str]:
    """param_* columns whose value differs between trials: the searched parameters, in practice."""
    names = sorted({k for r in rows for k in r if k.startswith(PARAM_PREFIX)})
    out = []
    for name in names:
        values = [r.get(name) for r in rows]
        present = [v for v in values if v is not None]
        if numeric_only and not all(is_finite(v) for v in present):
            continue
        if len({repr(v) for v in values}) > 1 and present:
            out.append(name)
    return out


def searched_params(run_dir: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]],
                    numeric_only: bool = False) -> list[str]:
    """param_* columns of the searched parameters RUN_DIR/run.json names, in the space's order; the
    columns that vary between trials when run.json is missing or names none of them."""
    columns = {k for r in rows for k in r if k.startswith(PARAM_PREFIX)}
    try:
        names = read_run(run_dir).params
    except RunDirError:
        names = ()
    out = [PARAM_PREFIX + name for name in names if PARAM_PREFIX + name in columns]
    if numeric_only:
        out = [c for c in out if any(is_finite(r.get(c)) for r in rows)
               and all(r.get(c) is None or is_finite(r.get(c)) for r in rows)]
    return out if out else varying_params(rows, numeric_only)


# --- Optuna study -----------------------------------------------------------------


@contextlib.contextmanager
def open_study(run_dir: str | os.PathLike[str]) -> Iterator[tuple[Any, str]]:
    """Yield (study, "") for RUN_DIR/study.db, or (None, reason) when there is none to read."""
    path = Path(run_dir) / STUDY_FILE
    if not path.is_file():
        yield None, f"no study.db in {run_dir}"
        return
    import optuna  # imported here: a few hundred ms the table readers should not pay

    storage, study, reason = None, None, ""
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}", skip_table_creation=True)
        names = optuna.get_all_study_names(storage)
        run_name = Path(run_dir).resolve().name
        if names:
            study = optuna.load_study(study_name=run_name if run_name in names else names[0], storage=storage)
        else:
            reason = f"{path} holds no study"
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign DB must not break the summary
        reason = f"cannot read {path} ({type(exc).__name__}: {_first_line(exc)})"
    try:
        yield study, reason
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()  # release the SQLite file; a live search may be writing to it


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


def param_importances(run_dir: str | os.PathLike[str], *, at_iteration: int | None = None, seed: int = 0,
                      metrics: Sequence[Mapping[str, Any]] | None = None) -> tuple[dict[str, float] | None, str]:
    """Optuna parameter importances (fANOVA, forest ``seed``) of the study's first objective, or
    (None, why not).

    With ``at_iteration``, of that objective's metric at one iteration instead (metrics.parquet,
    or ``metrics``: its rows, when the caller has read them already), over every trial that
    reported it there. Under ASHA a stopped trial enters the study with its value when stopped, so
    the study's own values mix budgets and reward fast starters; at the first rung every trial has
    run the same budget."""
    with open_study(run_dir) as (study, reason):  # optuna is imported only once there is a study.db
        if study is None:
            return None, reason
        if at_iteration is not None:
            study, reason = _study_at(run_dir, study, at_iteration, metrics)
            if study is None:
                return None, reason
        return _importances(study, reason if at_iteration is not None else None, seed)


def _importances(study: Any, at: str | None, seed: int) -> tuple[dict[str, float] | None, str]:
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        what = f"trials with {at}" if at is not None else "completed trials in study.db"
        return None, f"needs at least 2 {what}, found {len(complete)}"
    multi = len(study.directions) > 1
    try:
        evaluator, method = optuna.importance.FanovaImportanceEvaluator(seed=seed), "fANOVA"
    except ImportError:  # fANOVA needs scikit-learn; PED-ANOVA does not
        evaluator, method = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optuna.importance.get_param_importances(
                study, evaluator=evaluator, target=(lambda t: t.values[0]) if multi else None)
    except Exception as exc:  # noqa: BLE001 - e.g. every parameter constant so far
        return None, f"{type(exc).__name__}: {_first_line(exc)}"
    if at is not None:
        return dict(result), f"{method} over {len(complete)} trials, {at}"
    source = "first objective of the study" if multi else "study objective"
    return dict(result), f"{method} over {len(complete)} completed trials, {source}"


def asha_rung(run_dir: str | os.PathLike[str], metrics: Sequence[Mapping[str, Any]] | None = None) -> int | None:
    """The iteration of the run's first ASHA rung: its first validation at or past the grace period
    (ASHA compares trials on the report that reaches it); None without ASHA or a space.yaml.
    ``metrics``: the run's metrics rows, when the caller has read them already."""
    try:
        scheduler = read_space(run_dir).scheduler
    except RunDirError:
        return None
    if scheduler is None:
        return None
    grace = scheduler.grace_period
    if metrics is None:
        metrics = read_metrics(run_dir).select(["iteration", "val_accuracy"]).to_pylist() \
            if (Path(run_dir) / METRICS_FILE).is_file() else []
    return min((r["iteration"] for r in metrics if r["iteration"] >= grace and is_finite(r.get("val_accuracy"))),
               default=grace)


def _study_at(run_dir: str | os.PathLike[str], study: Any, iteration: int,
              metrics: Sequence[Mapping[str, Any]] | None) -> tuple[Any, str]:
    """An in-memory study of every trial's first-objective metric at ``iteration``: the searched
    parameters as trials.parquet records them, their distributions as study.db does."""
    import optuna

    try:
        recorded = read_run(run_dir).objectives if (Path(run_dir) / RUN_FILE).is_file() else ()
        metric = (recorded[0] if recorded else DEFAULT_OBJECTIVE).metric
        if metrics is None:
            table = read_metrics(run_dir)
            metrics = table.select(["trial_id", "iteration", metric]).to_pylist() \
                if metric in table.column_names else []
        trials = read_trials(run_dir).to_pylist()
    except RunDirError as exc:
        return None, str(exc)
    if not any(metric in r for r in metrics):
        return None, f"metrics.parquet has no {metric!r} column"
    value = {(r["trial_id"], r["iteration"]): r[metric] for r in metrics if is_finite(r.get(metric))}
    distributions: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        distributions.update(trial.distributions)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.ERROR)  # no "study created" line for the in-memory study
    try:
        at = optuna.create_study(direction="maximize")  # fANOVA's importances do not depend on the direction
    finally:
        optuna.logging.set_verbosity(level)
    short = 0
    for row in trials:
        if (row["trial_id"], iteration) not in value:
            short += 1
            continue
        params = {name: row.get(PARAM_PREFIX + name) for name in distributions}
        try:
            at.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                   value=value[row["trial_id"], iteration]))
        except ValueError as exc:  # a value outside the study's distribution: tables and study disagree
            return None, f"trial {row['trial_id']}: {_first_line(exc)}"
    left = f"; {short} without a value there left out" if short else ""
    return at, f"{metric} at iteration {iteration} (one budget for all{left})"
