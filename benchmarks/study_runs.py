"""How benchmarks/study.sh's run directories name the study's runs and methods: the reading that
study.py (the tables), study_cost.py (the interleaved timing) and study_journal.py share.

Only names that gs_tune had when the study's code was pinned are used, so both scripts can run
beside the pinned code as well as the current one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from gs_tune.config import TrainConfig
from gs_tune.results.tables import read_evaluation, read_trials
from gs_tune.rundir import EVALUATION_FILE, FINISHED, RUNNING, SPACE_FILE, TRIALS_FILE, read_space

Rows = list[dict[str, Any]]
MANIFEST = "study.tsv"
INVOCATIONS = "study.invocations"  # study.sh appends date, commit, gs_tune/ tree, clean | gs_tune/ edited
SETTINGS = ("5w1s_k1", "5w1s_k5", "20w1s_k1")  # study.sh's settings
ALGORITHM_NAMES = {"ahe": "AHE", "maml": "MAML", "fomaml": "first-order MAML", "reptile": "Reptile"}


@dataclasses.dataclass
class Study:
    runs_dir: Path
    mode: str  # full | smoke
    code: list[tuple[str, ...]]  # (date, commit, gs_tune/ tree, clean | gs_tune/ edited) per study.sh run
    settings: dict[str, dict[str, Path]]  # setting -> role -> run directory, in study.sh's order


def read_study(runs_dir: Path) -> Study:
    lines = (runs_dir / MANIFEST).read_text().splitlines()
    mode = lines[0].split("\t")[1]
    settings: dict[str, dict[str, Path]] = {}
    for line in lines[1:]:
        setting, role, name = line.split("\t")
        settings.setdefault(setting, {})[role] = runs_dir / name
    order = {name: i for i, name in enumerate(SETTINGS)}  # study.sh's order, whatever order they ran in
    settings = dict(sorted(settings.items(), key=lambda item: order.get(item[0], len(order))))
    log = runs_dir / INVOCATIONS
    code = [tuple(line.split("\t")) for line in log.read_text().splitlines()] if log.is_file() else []
    return Study(runs_dir, mode, code, settings)


def exit_now(code: int) -> NoReturn:
    """End a study script with ``code``, skipping interpreter finalization: a gs_tune older than
    read_table_file (the study's pinned one) leaves Arrow work behind that can abort the process at
    exit (apache/arrow#34314), and study.sh would take the abort for the script's answer. The
    scripts have written and synced what they write by the time they return."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def trials(run: Path) -> Rows:
    return read_trials(run).to_pylist() if (run / TRIALS_FILE).is_file() else []


def trials_ended(run: Path) -> tuple[int, int]:
    """(ended trials, num_samples) of the search in ``run``: as many ended as num_samples is the
    count `gs-tune launch` itself uses to call a search finished, and study.sh's "done"."""
    if not (run / SPACE_FILE).is_file():
        return 0, 0
    return sum(r["status"] != RUNNING for r in trials(run)), read_space(run).num_samples


def search_done(run: Path) -> bool:
    ended, total = trials_ended(run)
    return total > 0 and ended >= total


def best_trial(rows: Rows) -> dict[str, Any] | None:
    """The trial `gs-tune evaluate` retrains: the finished one with the highest best_val_accuracy."""
    done = [r for r in rows if r["status"] in FINISHED and finite(r.get("best_val_accuracy"))]
    return max(done, key=lambda r: r["best_val_accuracy"]) if done else None


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def params_of(row: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(row["params_json"]) if row.get("params_json") else {}


def label(row: Mapping[str, Any]) -> str:
    """What an evaluation row is, in the study's words (evaluate names the identity-HVP AHE, a
    baselines run there, plain `ahe`)."""
    p, source = params_of(row), row.get("config_source")
    algo = p.get("algorithm", str(row["method"]).split(" ")[0])
    name = ALGORITHM_NAMES.get(algo, algo)
    if algo == "ahe":
        name += f", {p.get('hvp', TrainConfig.hvp)} HVP"
    if algo == "reptile":
        name += f", K={p.get('inner_steps')}"
    if source == "tuned-ablation":
        return "AHE, w=0 ablation"  # the table's notes and the plots' labels say what it is
    return f"{name} ({'untuned' if source == 'default' else 'tuned'})"


def _own_rows(study: Study, setting: str) -> Rows | None:
    run = study.settings[setting].get("ahe")
    if run is None or not (run / EVALUATION_FILE).is_file():
        return None
    return [{**r, "method": label(r)} for r in read_evaluation(run).to_pylist()]


def is_config(row: Mapping[str, Any], source: str, algorithm: str) -> bool:
    """Whether an evaluation row is the configuration of this source (`tuned`, `default`,
    `baselines-run`, ...) for this algorithm."""
    return row.get("config_source") == source and params_of(row).get("algorithm") == algorithm


BORROWED = "[runs of "  # how evaluation() labels rows it borrowed from another setting


def evaluation(study: Study, setting: str) -> Rows | None:
    """The setting's evaluation rows with the study's method labels; None before it has run.

    A Reptile search shared by two settings (its K is its own) is retrained once, in the first
    setting's evaluation: the second setting borrows those rows. They are the same runs it would
    make (same configuration, seeds and test tasks), and paired_results checks the test tasks.
    """
    rows = _own_rows(study, setting)
    reptile = study.settings[setting].get("reptile")
    if rows is None or reptile is None or any(is_config(r, "baselines-run", "reptile") for r in rows):
        return rows
    for other, roles in study.settings.items():
        if other != setting and roles.get("reptile") == reptile:
            borrowed = [r for r in _own_rows(study, other) or [] if is_config(r, "baselines-run", "reptile")]
            rows += [{**r, "method": f"{r['method']} {BORROWED}{other}]"} for r in borrowed]
    return rows


def is_borrowed(method: str) -> bool:
    """Whether a method's label is one evaluation() borrowed from another setting."""
    return BORROWED in method


def reptile_pending(study: Study, setting: str, rows: Rows) -> str | None:
    """Why a setting that names a Reptile search has no Reptile row yet: Reptile runs last, and its
    search or the retraining that joins an evaluation (5w1s_k1's for both 5-way settings) has not."""
    reptile = study.settings[setting].get("reptile")
    if reptile is None or any(is_config(r, "baselines-run", "reptile") for r in rows):
        return None
    five = setting.startswith("5w")
    return (f"Reptile: not in this table yet. It runs last in the study, as its most expensive method: "
            f"its search (`{reptile.name}`, K searched{', shared by the 5-way settings' if five else ''}) "
            f"and its retraining, which joins {'5w1s_k1' if five else 'this setting'}'s evaluation on the "
            f"same seeds and test tasks, have not run yet.")
