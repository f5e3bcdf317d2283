"""`gs-tune launch` and `gs-tune resume`: Ray Tune + OptunaSearch + ASHA over a search space.

Run directory layout (everything a user needs afterwards):

    RUN_DIR/space.yaml        the resolved search space
    RUN_DIR/run.json          run name, Optuna storage URL and study name, Ray storage
    RUN_DIR/study.db          the Optuna study (SQLite) unless another storage was given
    RUN_DIR/tune/             Ray Tune's experiment state, trial dirs and checkpoints
    RUN_DIR/tensorboard/ID/   per-trial TensorBoard scalars and hparams
    RUN_DIR/trials.parquet    one row per trial;  RUN_DIR/metrics.parquet  one row per report
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gs_tune.errors import RunDirError
from gs_tune.fileio import atomic_write_text
from gs_tune.search.space import SearchSpace, load_space, parse_space

EXPERIMENT = "tune"


def launch(
    space_ref: str, *, name: str | None = None, runs_dir: str | Path = "runs", num_samples: int | None = None,
    max_concurrent: int | None = None, smoke: bool = False, address: str | None = None,
    storage: str | None = None, storage_optuna: str | None = None, gpus_per_trial: float | None = None,
    cpus_per_trial: float | None = None, dashboard: bool = False, object_store_memory: int | None = None,
    fix: Mapping[str, Any] | None = None,
) -> Path:
    """Validate everything, create the run directory, run the search; returns the run directory."""
    space = load_space(space_ref).with_overrides(
        num_samples=num_samples, max_concurrent=max_concurrent, smoke=smoke,
        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, fix=fix,
    )
    run_name = name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not run_name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise RunDirError(f"name: {run_name!r} may hold only letters, digits, '-', '_' and '.'")
    run_dir = Path(runs_dir).absolute() / run_name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"name: {run_dir} already holds a run; continue it with `gs-tune resume {run_dir}`")
    run_dir.mkdir(parents=True, exist_ok=True)
    optuna_url = storage_optuna or space.storage or f"sqlite:///{run_dir / 'study.db'}"
    meta = {
        "name": run_name, "study_name": run_name, "optuna_storage": optuna_url,
        # a shared --storage gets one prefix per run, so two runs never share an experiment
        "ray_storage": f"{storage.rstrip('/')}/{run_name}" if storage else str(run_dir), "experiment": EXPERIMENT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(run_dir / "space.yaml", space.to_yaml())
    atomic_write_text(run_dir / "run.json", json.dumps(meta, indent=2) + "\n")
    return _run(space, run_dir, meta, address=address, dashboard=dashboard,
                object_store_memory=object_store_memory, restore=False)


def resume(run_dir: str | Path, *, address: str | None = None, object_store_memory: int | None = None) -> Path:
    """Continue an interrupted search: finished trials are kept, unfinished ones resume from checkpoints."""
    import yaml

    run_dir = Path(run_dir).absolute()
    for needed in ("run.json", "space.yaml"):
        if not (run_dir / needed).is_file():
            raise RunDirError(f"run_dir: {run_dir} has no {needed}; pass a directory made by `gs-tune launch`")
    meta = json.loads((run_dir / "run.json").read_text())
    space = parse_space(yaml.safe_load((run_dir / "space.yaml").read_text()), meta["name"])
    return _run(space, run_dir, meta, address=address, dashboard=False,
                object_store_memory=object_store_memory, restore=True)


def _run(
    space: SearchSpace, run_dir: Path, meta: dict[str, Any], *, address: str | None, dashboard: bool,
    object_store_memory: int | None, restore: bool,
) -> Path:
    from gs_tune.search.cluster import ray_session

    with ray_session(address, dashboard=dashboard, object_store_memory=object_store_memory) as cluster:
        print(f"gs-tune: run directory {run_dir}", flush=True)
        print(f"gs-tune: Ray {cluster.description}", flush=True)
        tuner = _build_tuner(space, run_dir, meta, cluster.has_gpus, restore)
        tuner.fit()
    interrupted = _summarise(space, run_dir, meta)
    if interrupted:
        print(f"gs-tune: search interrupted; continue it with: gs-tune resume {run_dir}", file=sys.stderr)
    return run_dir


class _DefineByRun:
    """Picklable define-by-run space: Tune saves the searcher (and this) with the experiment."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial):
        from gs_tune.search.samplers import optuna_define_by_run

        return optuna_define_by_run(self.space)(trial)


def _build_tuner(space: SearchSpace, run_dir: Path, meta: dict[str, Any], has_gpus: bool, restore: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from gs_tune.config import TrainConfig
    from gs_tune.search.callbacks import ResultsCallback
    from gs_tune.search.samplers import make_sampler
    from gs_tune.search.trial import run_trial

    gpus = space.gpus_per_trial
    gpus = (1.0 if has_gpus else 0.0) if gpus == "auto" else float(gpus)
    if space.gpus_per_trial == "auto" and not has_gpus:
        # an autoscaling cluster may have no GPU node *yet*; auto then means CPU-only trials
        print("gs-tune: no GPUs in the cluster now, so trials run on CPUs "
              "(pass --gpus-per-trial to wait for GPU nodes)", flush=True)
    trainable = tune.with_resources(run_trial, {"cpu": space.cpus_per_trial, "gpu": gpus})
    print(f"gs-tune: {space.num_samples} trials, {space.max_concurrent} at once, "
          f"{space.cpus_per_trial:g} CPU + {gpus:g} GPU each", flush=True)
    callback = ResultsCallback(str(run_dir))
    run_config = tune.RunConfig(
        name=meta["experiment"], storage_path=meta["ray_storage"], callbacks=[callback],
        failure_config=tune.FailureConfig(max_failures=2),
        verbose=1,
    )
    experiment_path = f"{meta['ray_storage'].rstrip('/')}/{meta['experiment']}"
    if restore:
        if not tune.Tuner.can_restore(experiment_path):
            raise RunDirError(f"run_dir: no Ray Tune experiment state under {experiment_path}")
        return tune.Tuner.restore(
            experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=True,
        )

    import optuna

    metric = space.metrics if space.is_multi_objective else space.metrics[0]
    mode = space.modes if space.is_multi_objective else space.modes[0]
    searcher = OptunaSearch(
        space=_DefineByRun(space), metric=metric, mode=mode, sampler=make_sampler(space),
        study_name=meta["study_name"], storage=optuna.storages.RDBStorage(meta["optuna_storage"]),
    )
    scheduler = None
    if space.scheduler is not None:
        scheduler = ASHAScheduler(
            time_attr="iteration", metric=space.metrics[0], mode=space.modes[0],
            max_t=int(space.fixed.get("iterations", TrainConfig.iterations)),
            grace_period=space.scheduler.grace_period, reduction_factor=space.scheduler.reduction_factor,
        )
    tune_config = tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=space.max_concurrent),
        scheduler=scheduler, num_samples=space.num_samples, reuse_actors=True,
        trial_dirname_creator=_trial_dirname,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def _trial_dirname(trial) -> str:
    # Ray's default name strings every parameter together and runs past path limits
    return trial.trial_id


def _summarise(space: SearchSpace, run_dir: Path, meta: dict[str, Any]) -> bool:
    """Print the best trial and how to open the results; True when the search did not finish."""
    from gs_tune.results.analysis import rank, resolve_objectives
    from gs_tune.results.schema import trial_params
    from gs_tune.results.tables import read_trials

    table = read_trials(run_dir) if (run_dir / "trials.parquet").exists() else None
    trials = table.to_pylist() if table is not None else []
    done = [t for t in trials if t["status"] in ("completed", "early_stopped")]
    # the same objective and ranking as `gs-tune results`, so the two never disagree
    objectives, _ = resolve_objectives(run_dir, table.column_names if table is not None else [])
    ranked = rank(done, objectives[0])
    print()
    print(f"gs-tune: {len(trials)} trials ({len(done)} finished) in {run_dir}")
    if ranked:
        best = ranked[0]
        params = trial_params(best)
        searched = {p.name for p in space.params}
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items() if k in searched)
        ci = best.get("final_val_ci95")
        print(f"best trial {best['trial_id']} ({best['status']}): val accuracy "
              f"{best['best_val_accuracy'] * 100:.2f}%" + (f" ± {ci * 100:.2f}%" if ci else ""))
        print(f"  {shown}")
    print("results:")
    print(f"  tables       {run_dir / 'trials.parquet'}, {run_dir / 'metrics.parquet'}")
    print(f"  summary      gs-tune results {run_dir}")
    print(f"  plots        gs-tune report {run_dir}")
    print(f"  TensorBoard  tensorboard --logdir {run_dir / 'tensorboard'} --host 127.0.0.1")
    print(f"  Optuna       optuna-dashboard {meta['optuna_storage']}   (pip install 'gs-tune[dashboard]')")
    finished = sum(1 for t in trials if t["status"] != "running")
    return finished < space.num_samples


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
