"""The run directory: its layout, ``run.json``, ``space.yaml`` and the trial status names.

Every reader and writer of a run directory (the search, ``gs-tune evaluate``, the results package,
the benchmarks) goes through this module, so the layout is written down once::

    RUN_DIR/space.yaml          the resolved search space (gs_tune/search/space.py's format)
    RUN_DIR/run.json            what the run is: names, storages, objectives, searched parameters
    RUN_DIR/study.db            the Optuna study (SQLite), unless run.json names another storage
    RUN_DIR/tune/               Ray Tune's experiment state, trial directories, checkpoints
    RUN_DIR/tensorboard/ID/     per-trial TensorBoard scalars and hparams
    RUN_DIR/trials.parquet      one row per trial;  RUN_DIR/metrics.parquet  one row per report
    RUN_DIR/evaluation.parquet  `gs-tune evaluate`, one row per run;  RUN_DIR/report/  `gs-tune report`
    RUN_DIR/evaluation_pairs.parquet  `gs-tune evaluate`'s paired differences from its reference
    RUN_DIR/evaluation_runs.jsonl     an unfinished `gs-tune evaluate`'s finished runs (it resumes from them)
    RUN_DIR/evaluation_checkpoints/   its unfinished runs' checkpoints, one directory per run

``run.json`` records at launch the facts the results need (objectives with their trials.parquet
column, the searched parameter names), so nothing downstream re-parses the space. No Ray here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gs_tune.errors import GsTuneError, RunDirError
from gs_tune.fileio import atomic_write_text

if TYPE_CHECKING:
    from gs_tune.search.space import SearchSpace

SPACE_FILE = "space.yaml"
RUN_FILE = "run.json"
STUDY_FILE = "study.db"
EXPERIMENT = "tune"
TENSORBOARD_DIR = "tensorboard"
TRIALS_FILE = "trials.parquet"
METRICS_FILE = "metrics.parquet"
EVALUATION_FILE = "evaluation.parquet"
EVALUATION_PAIRS_FILE = "evaluation_pairs.parquet"
EVALUATION_RUNS_FILE = "evaluation_runs.jsonl"
EVALUATION_CHECKPOINTS_DIR = "evaluation_checkpoints"
REPORT_DIR = "report"

# A trial's status in trials.parquet, in lifecycle order. early_stopped: ASHA stopped it before its
# last iteration (its results are valid); diverged: its training loss stopped being finite.
STATUSES: tuple[str, ...] = ("running", "completed", "early_stopped", "diverged", "error")
RUNNING, COMPLETED, EARLY_STOPPED, DIVERGED, ERROR = STATUSES
FINISHED: tuple[str, ...] = (COMPLETED, EARLY_STOPPED)
FAILED: tuple[str, ...] = (DIVERGED, ERROR)

# The trials.parquet column (gs_tune/results/schema.py) that summarises each metric a space may
# optimise: a validation metric by its best value over the trial. train_loss has no column.
OBJECTIVE_COLUMNS: dict[str, str] = {
    "val_accuracy": "best_val_accuracy", "val_loss": "best_val_loss", "sec_per_iter": "sec_per_iter",
}


@dataclass(frozen=True)
class Objective:
    """An objective of the search: ``metric`` as the space names it, the trials.parquet ``column``
    that holds its per-trial value (None when the table has none, e.g. train_loss), and
    ``direction`` "max" or "min"."""

    metric: str
    column: str | None
    direction: str

    @property
    def label(self) -> str:
        return f"{self.column} ({self.direction})"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "max" else a < b


DEFAULT_OBJECTIVE = Objective("val_accuracy", OBJECTIVE_COLUMNS["val_accuracy"], "max")


@dataclass(frozen=True)
class RunInfo:
    """The content of run.json."""

    name: str
    study_name: str
    optuna_storage: str
    ray_storage: str
    experiment: str = EXPERIMENT
    created: str = ""
    objectives: tuple[Objective, ...] = (DEFAULT_OBJECTIVE,)
    params: tuple[str, ...] = ()
    """Names of the searched parameters, in the space's order."""
    sampler_seed: int | None = None
    """The seed the Optuna sampler started from (the space's, or one derived from the run name)."""
    trial_device: str = "auto"
    """Where trials compute: auto (the GPU share Ray assigned, else the CPU), cpu or cuda."""

    @property
    def experiment_path(self) -> str:
        """Where Ray Tune keeps the experiment (a path or a storage URI)."""
        return f"{self.ray_storage.rstrip('/')}/{self.experiment}"

    def to_json(self) -> str:
        data = {
            "name": self.name, "study_name": self.study_name,
            "optuna_storage": self.optuna_storage, "ray_storage": self.ray_storage,
            "experiment": self.experiment, "created": self.created,
            "objectives": [{"metric": o.metric, "column": o.column, "direction": o.direction}
                           for o in self.objectives],
            "params": list(self.params), "sampler_seed": self.sampler_seed,
            "trial_device": self.trial_device,
        }
        return json.dumps(data, indent=2) + "\n"


def objectives_of(space: SearchSpace) -> tuple[Objective, ...]:
    """The space's objectives with the trials.parquet column that summarises each."""
    return tuple(Objective(o.metric, OBJECTIVE_COLUMNS.get(o.metric), o.mode) for o in space.objectives)


def new_run_dir(runs_dir: str | os.PathLike[str], name: str) -> Path:
    """Create RUNS_DIR/NAME for a new run; RunDirError if the name is not allowed or the directory
    already holds a run (nothing is created then)."""
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise RunDirError(f"name: {name!r} may hold only letters, digits, '-', '_' and '.'")
    run_dir = Path(runs_dir).absolute() / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"name: {run_dir} already holds a run; continue it with `gs-tune resume {run_dir}`")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def new_run_info(run_dir: Path, space: SearchSpace, *, storage: str | None = None,
                 storage_optuna: str | None = None, sampler_seed: int | None = None,
                 trial_device: str = "auto") -> RunInfo:
    """What run.json says about a run about to start in ``run_dir``."""
    name = run_dir.name
    return RunInfo(
        name=name, study_name=name,
        optuna_storage=storage_optuna or space.storage or f"sqlite:///{run_dir / STUDY_FILE}",
        # a shared --storage gets one prefix per run, so two runs never share an experiment
        ray_storage=f"{storage.rstrip('/')}/{name}" if storage else str(run_dir),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        objectives=objectives_of(space), params=tuple(p.name for p in space.params),
        sampler_seed=sampler_seed, trial_device=trial_device,
    )


def write_run(run_dir: Path, info: RunInfo, space: SearchSpace) -> None:
    """Write space.yaml and run.json, each atomically."""
    atomic_write_text(run_dir / SPACE_FILE, space.to_yaml())
    atomic_write_text(run_dir / RUN_FILE, info.to_json())


def read_space(run_dir: str | os.PathLike[str]) -> SearchSpace:
    """RUN_DIR/space.yaml, validated by the one space parser; RunDirError if missing or invalid."""
    from gs_tune.search.space import load_space  # Ray-free; imported here so results/ loads without it

    path = _required(run_dir, SPACE_FILE)
    try:
        return load_space(str(path))
    except GsTuneError as exc:
        raise RunDirError(f"{path}: {exc}") from None


def read_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    """RUN_DIR/run.json; RunDirError if it is missing or unreadable.

    A run.json written before it recorded objectives and parameters gets them from space.yaml.
    """
    path = _required(run_dir, RUN_FILE)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, Mapping):
            raise TypeError(f"holds {type(data).__name__}, not an object")
        return _run_info(data, run_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def _run_info(data: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> RunInfo:
    if "objectives" in data:
        objectives = tuple(Objective(str(o["metric"]), o.get("column"), str(o["direction"]))
                           for o in data["objectives"])
        params = tuple(str(p) for p in data.get("params", ()))
    else:
        space = read_space(run_dir)
        objectives, params = objectives_of(space), tuple(p.name for p in space.params)
    return RunInfo(
        name=str(data["name"]), study_name=str(data.get("study_name", data["name"])),
        optuna_storage=str(data["optuna_storage"]), ray_storage=str(data["ray_storage"]),
        experiment=str(data.get("experiment", EXPERIMENT)), created=str(data.get("created", "")),
        objectives=objectives, params=params, sampler_seed=data.get("sampler_seed"),
        trial_device=str(data.get("trial_device", "auto")),
    )


def _required(run_dir: str | os.PathLike[str], name: str) -> Path:
    path = Path(run_dir) / name
    if not path.is_file():
        raise RunDirError(f"run_dir: {run_dir} has no {name}; pass a directory made by `gs-tune launch`")
    return path
