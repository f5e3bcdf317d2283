"""What summary and report share: the objective(s) of a run, ranking, Pareto fronts, Optuna importances.

Pure functions over plain rows (``pa.Table.to_pylist()``), plus the study reader;
no Ray, so they work on any finished or interrupted run directory.
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
from gs_tune.rundir import DEFAULT_OBJECTIVE, RUN_FILE, STUDY_FILE, Objective, read_run

__all__ = ["DEFAULT_OBJECTIVE", "Objective", "open_study", "param_importances", "pareto_mask", "pareto_rows",
           "rank", "resolve_objectives", "searched_params", "varying_params"]


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


def param_importances(run_dir: str | os.PathLike[str]) -> tuple[dict[str, float] | None, str]:
    """Optuna parameter importances (fANOVA) of the study's first objective, or (None, why not)."""
    import optuna

    with open_study(run_dir) as (study, reason):
        if study is None:
            return None, reason
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < 2:
            return None, f"needs at least 2 completed trials in study.db, found {len(complete)}"
        multi = len(study.directions) > 1
        try:
            evaluator, method = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
        except ImportError:  # fANOVA needs scikit-learn; PED-ANOVA does not
            evaluator, method = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = optuna.importance.get_param_importances(
                    study, evaluator=evaluator, target=(lambda t: t.values[0]) if multi else None)
        except Exception as exc:  # noqa: BLE001 - e.g. every parameter constant so far
            return None, f"{type(exc).__name__}: {_first_line(exc)}"
        finally:
            optuna.logging.set_verbosity(level)
        source = "first objective of the study" if multi else "study objective"
        return dict(result), f"{method} over {len(complete)} completed trials, {source}"
