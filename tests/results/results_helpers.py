"""Builders of synthetic run directories for tests/results: tables written by ResultsWriter, a real
Optuna SQLite study, space.yaml and run.json, as the search layer leaves them. A plain module (not conftest)
so test files can import the helpers; its name is unique across the test tree."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from gs_tune.results.tables import ResultsWriter
from gs_tune.rundir import new_run_info, write_run
from gs_tune.search.space import parse_space

FIXED = {"dataset": "digits", "model": "conv4", "ways": 5, "shots": 1, "iterations": 300, "seed": 0,
         "ahe_clip": None}
# trial id, searched params, val accuracy at iterations 100/200/300, sec_per_iter, status
TRIALS: list[tuple[str, dict[str, Any], list[float], float, str]] = [
    ("t0", {"algorithm": "ahe", "w_cos": 0.001, "inner_lr": 0.1}, [0.40, 0.50, 0.55], 0.05, "completed"),
    ("t1", {"algorithm": "ahe", "w_cos": 0.01, "inner_lr": 0.2}, [0.45, 0.60, 0.58], 0.06, "completed"),
    ("t2", {"algorithm": "ahe", "w_cos": 0.1, "inner_lr": 0.4}, [0.50, 0.70, 0.72], 0.09, "completed"),
    ("t3", {"algorithm": "ahe", "w_cos": 0.3, "inner_lr": 0.8}, [0.30, 0.35], 0.02, "early_stopped"),
    ("t4", {"algorithm": "ahe", "w_cos": 1.0, "inner_lr": 0.05}, [0.20], 0.10, "diverged"),
    ("t5", {"algorithm": "maml", "w_cos": 0.0, "inner_lr": 0.4}, [0.52, 0.62, 0.65], 0.03, "completed"),
]
SEARCH = {"algorithm": {"choice": ["ahe", "maml"]}, "w_cos": {"loguniform": [1e-3, 1.0]},
          "inner_lr": {"loguniform": [0.05, 0.8]}}
DISTRIBUTIONS = {"algorithm": CategoricalDistribution(["ahe", "maml"]),
                 "w_cos": FloatDistribution(0.0, 1.0), "inner_lr": FloatDistribution(0.05, 0.8, log=True)}


def val_record(iteration: int, acc: float, spi: float, **extra: Any) -> dict[str, Any]:
    return {"kind": "val", "iteration": iteration, "elapsed_s": iteration * spi * 1.2, "sec_per_iter": spi,
            "train_loss": 1.5 - acc, "train_accuracy": acc + 0.05, "grad_norm": 1.0, "correction_norm": 0.1,
            "grad_cosine": 0.2, "ahe_lambda": 1.0, "val_loss": 1.6 - acc, "val_accuracy": acc,
            "val_ci95": 0.02, **extra}


def empty_study_db(path: Path) -> Path:
    """An SQLite file with Optuna's tables but no study: creating those tables takes about a second,
    copying the file and adding a study to it a tenth of that."""
    optuna.storages.RDBStorage(f"sqlite:///{path}").engine.dispose()
    return path


def build_run(path: Path, *, multi: bool = False, interrupted: bool = False,
              study_db: Path | None = None) -> Path:
    """A run directory; with ``study_db`` (from :func:`empty_study_db`) also a study.db. interrupted:
    the last three trials never ended (status running), no space.yaml or run.json, and the study
    holds one completed trial only."""
    path.mkdir(parents=True)
    if not interrupted:
        objective: Any = {"metric": "val_accuracy", "mode": "max"}
        if multi:
            objective = [objective, {"metric": "sec_per_iter", "mode": "min"}]
        space = parse_space({"fixed": FIXED, "search": SEARCH, "objective": objective}, path.name)
        write_run(path, new_run_info(path, space), space)
    writer = ResultsWriter(path)
    for i, (tid, searched, accs, spi, status) in enumerate(TRIALS):
        params = {**FIXED, **searched}
        ended = not (interrupted and i >= 3)
        for j, acc in enumerate(accs):
            extra: dict[str, Any] = {}
            if ended and status == "completed" and j == len(accs) - 1:
                extra = {"peak_memory_mb": 120.0, "device": "cpu"}
            writer.on_report(tid, val_record(100 * (j + 1), acc, spi, **extra), params)
        if not ended:
            continue
        if status == "diverged":
            writer.on_report(tid, {"kind": "diverged", "iteration": 150, "val_accuracy": 0.0,
                                   "train_loss": float("nan")}, params)
        writer.on_trial_end(tid, status, device="cpu", node="node-1")
    if interrupted:
        writer.flush()  # published, but never closed: the journal stays, as a killed search leaves it
    else:
        writer.close()
    if study_db is not None:
        shutil.copy(study_db, path / "study.db")
        _study(path, multi, interrupted)
    return path


def _study(path: Path, multi: bool, interrupted: bool) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize"] if multi else ["maximize"]
    study = optuna.create_study(study_name=path.name, storage=f"sqlite:///{path / 'study.db'}",
                                directions=directions)
    for i, (_, searched, accs, spi, status) in enumerate(TRIALS):
        if interrupted and i >= 1:
            study.ask()  # a trial the sampler handed out that never finished
            continue
        state = optuna.trial.TrialState.COMPLETE if status != "diverged" else optuna.trial.TrialState.FAIL
        values = None
        if state == optuna.trial.TrialState.COMPLETE:
            values = [accs[-1], spi] if multi else [accs[-1]]
        study.add_trial(optuna.trial.create_trial(params=searched, distributions=DISTRIBUTIONS,
                                                  values=values, state=state))
