"""`gs-tune launch` and `gs-tune resume`: Ray Tune + OptunaSearch + ASHA over a search space.

What a run leaves on disk, and where, is gs_tune/rundir.py's business; this module only runs it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from gs_tune.errors import RunDirError
from gs_tune.rundir import (
    FINISHED,
    METRICS_FILE,
    RUNNING,
    TENSORBOARD_DIR,
    TRIALS_FILE,
    RunInfo,
    new_run_dir,
    new_run_info,
    read_run,
    read_space,
    write_run,
)
from gs_tune.search.samplers import make_sampler, optuna_define_by_run, resolve_seed
from gs_tune.search.space import SearchSpace, load_space

# Seconds between two status tables on the console (Ray's default, 5 s, floods a long search's log).
REPORT_EVERY_S = 30


def launch(
    space_ref: str, *, name: str | None = None, runs_dir: str | Path = "runs", num_samples: int | None = None,
    max_concurrent: int | None = None, smoke: bool = False, address: str | None = None,
    storage: str | None = None, storage_optuna: str | None = None, gpus_per_trial: float | None = None,
    cpus_per_trial: float | None = None, dashboard: bool = False, object_store_memory: int | None = None,
    fix: Mapping[str, Any] | None = None, callbacks: Sequence[Any] = (), trial_device: str = "auto",
) -> Path:
    """Validate everything, create the run directory, run the search; returns the run directory.

    Every check that can be made before the search (gs_tune/search/preflight.py) is made before
    anything is written. ``callbacks`` are extra Ray Tune callbacks (``ray.tune.Callback``) for this
    search, e.g. to time its events; they run in this process beside the one that writes the
    results. ``trial_device`` cpu makes trials compute on the CPU even when they hold a GPU share
    (placement can then be tried on nodes that only declare GPUs).
    """
    from gs_tune.search.preflight import check_device, preflight

    space = load_space(space_ref).with_overrides(
        num_samples=num_samples, max_concurrent=max_concurrent, smoke=smoke,
        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, fix=fix,
    )
    check_device(trial_device)
    space = preflight(space, runs_dir, address)
    run_dir = new_run_dir(runs_dir, name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    info = new_run_info(run_dir, space, storage=storage, storage_optuna=storage_optuna,
                        sampler_seed=resolve_seed(space, run_dir.name), trial_device=trial_device)
    write_run(run_dir, info, space)
    return _run(space, run_dir, info, address=address, dashboard=dashboard,
                object_store_memory=object_store_memory, restore=False, callbacks=callbacks)


def resume(run_dir: str | Path, *, address: str | None = None, object_store_memory: int | None = None) -> Path:
    """Continue an interrupted search: finished trials are kept, unfinished ones resume from checkpoints."""
    run_dir = Path(run_dir).absolute()
    info = read_run(run_dir)
    space = read_space(run_dir)
    return _run(space, run_dir, info, address=address, dashboard=False,
                object_store_memory=object_store_memory, restore=True, callbacks=())


def _run(
    space: SearchSpace, run_dir: Path, info: RunInfo, *, address: str | None, dashboard: bool,
    object_store_memory: int | None, restore: bool, callbacks: Sequence[Any],
) -> Path:
    from gs_tune.search.cluster import ray_session

    with ray_session(address, dashboard=dashboard, object_store_memory=object_store_memory) as cluster:
        print(f"gs-tune: run directory {run_dir}", flush=True)
        print(f"gs-tune: Ray {cluster.description}", flush=True)
        tuner = _build_tuner(space, run_dir, info, cluster.has_gpus, restore, callbacks)
        with _tune_env():
            results = tuner.fit()
        if restore:
            _record_lost_trials(run_dir, info, _tune_trial_ids(results))
    interrupted = _summarise(space, run_dir, info)
    if interrupted:
        print(f"gs-tune: search interrupted; continue it with: gs-tune resume {run_dir}", file=sys.stderr)
    return run_dir


# Ray Tune settings read from the environment when the search starts (a value the user set wins):
# * its default console output ignores RunConfig(progress_reporter=...) and infers its own columns
#   (the first four numbers of a report, none of a define-by-run space's parameters); "0" selects
#   the output that prints the reporter's table;
# * it adds a TensorBoard logger of its own, a second copy of what results/tensorboard.py writes
#   that warns on the train_log list; "1" stops that, and the CSV and JSON loggers that Tune's
#   result.json and progress.csv come from are passed explicitly instead.
TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


@contextlib.contextmanager
def _tune_env() -> Iterator[None]:
    added = [key for key in TUNE_ENV if key not in os.environ]
    os.environ.update({key: TUNE_ENV[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class _DefineByRun:
    """Picklable define-by-run space: Tune saves the searcher (and this) with the experiment."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial):
        return optuna_define_by_run(self.space)(trial)


def _build_tuner(space: SearchSpace, run_dir: Path, info: RunInfo, has_gpus: bool, restore: bool,
                 callbacks: Sequence[Any]):
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from gs_tune.search.callbacks import ResultsCallback
    from gs_tune.search.cluster import gpus_per_trial
    from gs_tune.search.trial import run_trial

    gpus = gpus_per_trial(space.gpus_per_trial, has_gpus)
    if space.gpus_per_trial == "auto" and not has_gpus:
        print("gs-tune: no GPUs in the cluster now, so trials run on CPUs "
              "(pass --gpus-per-trial to wait for GPU nodes)", flush=True)
    trainable = tune.with_resources(tune.with_parameters(run_trial, device=info.trial_device),
                                    {"cpu": space.cpus_per_trial, "gpu": gpus})
    print(f"gs-tune: {space.num_samples} trials, {space.max_concurrent} at once, "
          f"{space.cpus_per_trial:g} CPU + {gpus:g} GPU each", flush=True)
    if restore:
        # the run config (callbacks, reporter) is restored with the experiment
        if not tune.Tuner.can_restore(info.experiment_path):
            raise RunDirError(f"run_dir: no Ray Tune experiment state under {info.experiment_path}")
        return tune.Tuner.restore(
            info.experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=True,
        )
    run_config = tune.RunConfig(
        name=info.experiment, storage_path=info.ray_storage,
        callbacks=[ResultsCallback(str(run_dir)), CSVLoggerCallback(), JsonLoggerCallback(), *callbacks],
        progress_reporter=_progress_reporter(space),
        failure_config=tune.FailureConfig(max_failures=2), verbose=1,
    )
    tune_config = tune.TuneConfig(
        search_alg=_searcher(space, info), scheduler=_scheduler(space), num_samples=space.num_samples,
        reuse_actors=True, trial_dirname_creator=_trial_dirname,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def _searcher(space: SearchSpace, info: RunInfo):
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from gs_tune.search.searcher import ResumableOptunaSearch

    metric = space.metrics if space.is_multi_objective else space.metrics[0]
    mode = space.modes if space.is_multi_objective else space.modes[0]
    searcher = ResumableOptunaSearch(
        space=_DefineByRun(space), metric=metric, mode=mode, sampler=make_sampler(space, info.sampler_seed),
        study_name=info.study_name, storage=optuna.storages.RDBStorage(info.optuna_storage),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=space.max_concurrent)


def _scheduler(space: SearchSpace):
    if space.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="iteration", metric=space.metrics[0], mode=space.modes[0], max_t=space.scheduler.max_t,
        grace_period=space.scheduler.grace_period, reduction_factor=space.scheduler.reduction_factor,
    )


def _progress_reporter(space: SearchSpace):
    """Ray Tune's status table: per trial its searched parameters, iteration, the objective(s),
    validation accuracy and seconds per iteration, best trial first; above it the best trial of
    the first objective (by each trial's latest report) with its parameters."""
    from ray import tune

    metrics = ["iteration", *space.metrics]
    metrics += [m for m in ("val_accuracy", "sec_per_iter") if m not in metrics]
    return tune.CLIReporter(
        metric_columns=metrics, parameter_columns=[p.name for p in space.params],
        metric=space.metrics[0], mode=space.modes[0], sort_by_metric=True,
        max_report_frequency=REPORT_EVERY_S,
        # Explicit: left unset, Tune reads its process-wide verbosity when the reporter is built, and
        # a search that ran before in the same process (verbose=1) would have switched the table off.
        print_intermediate_tables=True,
    )


def _tune_trial_ids(results: Any) -> set[str]:
    """Every trial the finished Tune run holds, reported or not: its directory is named by
    :func:`_trial_dirname`, the trial id (the path may be a storage URI, hence posix names)."""
    return {PurePosixPath(str(r.path)).name for r in results}


def _record_lost_trials(run_dir: Path, info: RunInfo, known: set[str]) -> None:
    """After a resumed search: a trial the study holds but the resumed Tune run never had cannot be
    continued. Tune snapshots its trials and its searcher separately, so a driver killed between
    the two leaves such a trial either unknown to the searcher too (searcher.py fails it at restore)
    or known to it and still running in the study: that one is failed here. The tables say the
    same, trial for trial, with why."""
    import optuna

    from gs_tune.results.tables import ResultsWriter, read_trials
    from gs_tune.search.searcher import TUNE_ID_ATTR

    state = optuna.trial.TrialState
    study = optuna.load_study(study_name=info.study_name, storage=info.optuna_storage)
    in_table = {r["trial_id"]: r["status"] for r in read_trials(run_dir).to_pylist()} \
        if (run_dir / TRIALS_FILE).exists() else {}
    lost = {}
    for trial in study.get_trials(deepcopy=False, states=(state.FAIL, state.RUNNING)):
        tid = trial.user_attrs.get(TUNE_ID_ATTR)
        if tid in known:
            continue
        if trial.state == state.RUNNING:  # nothing will ever report it again
            study.tell(trial.number, state=state.FAIL)
        if tid and in_table.get(tid, RUNNING) == RUNNING:
            lost[tid] = trial.params
    if not lost:
        return
    with ResultsWriter(run_dir) as writer:
        for tid, params in lost.items():
            writer.on_trial_end(tid, "error", params=params,
                                error="lost: the driver was killed before Ray Tune recorded this trial")


def _trial_dirname(trial) -> str:
    # Ray's default name strings every parameter together and runs past path limits
    return trial.trial_id


def _summarise(space: SearchSpace, run_dir: Path, info: RunInfo) -> bool:
    """Print the best trial and how to open the results; True when the search did not finish."""
    from gs_tune.results.analysis import rank, resolve_objectives
    from gs_tune.results.schema import trial_params
    from gs_tune.results.tables import read_trials

    table = read_trials(run_dir) if (run_dir / TRIALS_FILE).exists() else None
    trials = table.to_pylist() if table is not None else []
    done = [t for t in trials if t["status"] in FINISHED]
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
    print(f"  tables       {run_dir / TRIALS_FILE}, {run_dir / METRICS_FILE}")
    print(f"  summary      gs-tune results {run_dir}")
    print(f"  plots        gs-tune report {run_dir}")
    print(f"  TensorBoard  tensorboard --logdir {run_dir / TENSORBOARD_DIR} --host 127.0.0.1")
    print(f"  Optuna       optuna-dashboard {info.optuna_storage}   (pip install 'gs-tune[dashboard]')")
    finished = sum(1 for t in trials if t["status"] != RUNNING)
    return finished < space.num_samples


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
