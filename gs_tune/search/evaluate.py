"""`gs-tune evaluate`: retrain the best configuration of a search, its untuned defaults, the
ablation and the baselines from fresh seeds, in parallel on Ray, and score each on the test split.

Protocol (docs/protocol.md says it in full):

* The best trial is the finished (completed or early_stopped) trial with the highest
  best_val_accuracy, also for multi-objective spaces: the comparison here is in accuracy.
* Retraining meta-trains on **train+val** (``meta_train_splits``): the val split has done its job
  by selecting the configuration, and its classes are more data for the final model. The
  retraining's val records then score seen classes and are ignored (nothing is selected or stopped
  on them); the test split was never seen by the search or the retraining.
* Baselines take the best trial per algorithm over every ``--baselines-run`` given (one
  baselines.yaml run, or one run per algorithm for an equal trial budget each); without one,
  TrainConfig's defaults with the space's fixed fields (Reptile with REPTILE_DEFAULT_STEPS).
* Seeds are EVAL_SEED_BASE, EVAL_SEED_BASE + 1, … (skipping the search's own seeds), so no
  initialisation, task stream or test task set of the search is reused. Methods share seeds, and a
  seed's test tasks come from its own stream of the trainer (results.evaluation.TEST_TASK_FIELDS),
  so every method is scored on the same test tasks for a given seed: a paired comparison.
* Per method: the mean over seeds ± its 95% Student-t interval; paired differences from the
  reference method over the seeds both finished (gs_tune/results/evaluation.py).
* Resumable: every finished run is appended to RUN_DIR/evaluation_runs.jsonl as it ends, and an
  evaluation started again keeps the runs found there with the same method, seed and configuration
  and retrains only the others; the file is removed once evaluation.parquet is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from gs_tune.config import ALGORITHMS, TrainConfig, train_config
from gs_tune.errors import ConfigError, GsTuneError, RunDirError
from gs_tune.fileio import FILE_MODE, append_json_line, drop_torn_line, read_json_lines
from gs_tune.results.evaluation import DEFAULT_REFERENCE, format_summary, paired_results, write_pairs
from gs_tune.results.schema import trial_params
from gs_tune.results.tables import read_evaluation, read_trials, write_evaluation
from gs_tune.rundir import EVALUATION_CHECKPOINTS_DIR, EVALUATION_RUNS_FILE, FINISHED, read_space
from gs_tune.search.space import SearchSpace

# Reptile's inner steps when none of at least 2 is given (TrainConfig's 1 would be joint training on
# support ∪ query, which train_config refuses); Nichol et al. use 5-10.
REPTILE_DEFAULT_STEPS = 5
EVAL_SEED_BASE = 1000
DEFAULT_SEEDS = 5
SMOKE_TASKS, SMOKE_SEEDS = 20, 2  # --smoke caps: enough to exercise every step, not to compare
RETRAIN_SPLITS = "train+val"
RESUMED = "resumed"  # _retrain's flag: the run went on from a checkpoint an earlier attempt left
_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


@dataclasses.dataclass(frozen=True)
class Method:
    name: str  # "ahe (tuned)", "ahe (default)", "fomaml", ...
    source: str  # config_source column: tuned, tuned-ablation, default, baselines-run
    values: dict[str, Any]  # TrainConfig fields before the per-run overrides


def _load_run(run_dir: Path) -> tuple[SearchSpace, list[dict[str, Any]]]:
    """The run's space and its finished trials that have a validation accuracy."""
    space = read_space(run_dir)
    rows = [r for r in read_trials(run_dir).to_pylist() if r["status"] in FINISHED
            and isinstance(r.get("best_val_accuracy"), float) and math.isfinite(r["best_val_accuracy"])]
    return space, rows


def _trial_values(space: SearchSpace, row: Mapping[str, Any]) -> dict[str, Any]:
    """Fixed values of the space plus the trial's param_ columns (null = not sampled = default); a
    column that is not a TrainConfig field (an older run's device or progress) is not configuration."""
    values = {**space.fixed, **trial_params(row)}
    return {k: v for k, v in values.items() if k in _FIELDS}


def _best(rows: Sequence[Mapping[str, Any]], what: str) -> Mapping[str, Any]:
    if not rows:
        raise RunDirError(f"{what}: no finished trial (completed or early_stopped) with a val accuracy")
    return max(rows, key=lambda r: r["best_val_accuracy"])


def _untuned(space: SearchSpace, algorithm: str) -> dict[str, Any]:
    """What ``gs-tune train --algorithm ALGORITHM`` runs without a search, on the space's problem and
    budget: the space's fixed fields (chosen, not searched) and TrainConfig's defaults for the rest."""
    values = {**space.fixed, "algorithm": algorithm}
    if algorithm == "reptile" and int(values.get("inner_steps", TrainConfig.inner_steps)) < 2:
        values["inner_steps"] = REPTILE_DEFAULT_STEPS
    return values


def _baseline_trials(baselines_runs: Sequence[str]) -> list[tuple[dict[str, Any], Mapping[str, Any]]]:
    """(values, row) of every finished trial of the runs given whose configuration is still valid: an
    older run's Reptile with one inner step is refused by train_config and is not Reptile."""
    out = []
    for b_run in baselines_runs:
        b_dir = Path(b_run)
        if not b_dir.is_dir():
            raise RunDirError(f"baselines_run: {b_run} is not a directory")
        b_space, b_rows = _load_run(b_dir)
        for row in b_rows:
            values = _trial_values(b_space, row)
            try:
                train_config(values)
            except GsTuneError as exc:
                print(f"gs-tune: skipping trial {row['trial_id']} of {b_run}: {exc}")
                continue
            out.append((values, row))
    return out


def _baseline_methods(space: SearchSpace, baselines: Sequence[str], baselines_runs: Sequence[str]) -> list[Method]:
    b_trials = _baseline_trials(baselines_runs)
    methods = []
    for name in baselines:
        if name not in ALGORITHMS:
            raise ConfigError("baselines", f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}")
        if not baselines_runs:
            methods.append(Method(name, "default", _untuned(space, name)))
            continue
        candidates = [r for v, r in b_trials if v.get("algorithm") == name]
        row = _best(candidates, f"baselines_run: {', '.join(baselines_runs)} ({name})")
        methods.append(Method(name, "baselines-run", next(v for v, r in b_trials if r is row)))
    return methods


def _methods(run_dir: Path, baselines: Sequence[str], baselines_runs: Sequence[str],
             reference: str | None = None) -> tuple[SearchSpace, list[Method], str | None]:
    """The run's space, the methods to retrain and the name of the reference among them (None: no
    paired differences). A reference that is an algorithm joins the baselines if it is not one."""
    space, rows = _load_run(run_dir)
    best = _best(rows, f"run_dir: {run_dir}")
    tuned = _trial_values(space, best)
    algo = str(tuned.get("algorithm", TrainConfig.algorithm))
    print(f"gs-tune: best trial {best['trial_id']} ({best['status']}), val accuracy "
          f"{best['best_val_accuracy'] * 100:.2f}%")
    methods = [Method(f"{algo} (tuned)", "tuned", tuned)]
    if algo == "ahe" and train_config(tuned).algo_hparams().has_correction:
        # The ablation that says what the correction adds at fixed step sizes: the tuned run with its
        # weights at 0 is exactly first-order MAML at the tuned step sizes, outer lr included
        # (tests/algorithms/test_identities.py); a tuned first-order MAML is the fomaml baseline.
        methods.append(Method(f"{algo} (tuned, w=0)", "tuned-ablation",
                              {**tuned, "w_cos": 0.0, "w_l2": 0.0, "w_dot": 0.0}))
    methods.append(Method(f"{algo} (default)", "default", _untuned(space, algo)))
    if reference in ALGORITHMS and reference not in baselines:
        print(f"gs-tune: adding {reference} to the baselines: it is the reference of the paired differences")
        baselines = [*baselines, reference]
    methods += _baseline_methods(space, baselines, baselines_runs)
    unique: list[Method] = []
    for m in methods:  # e.g. baseline ahe == "ahe (default)": training it twice would tell nothing new
        same = next((u for u in unique if _same_training(m.values, u.values)), None)
        if same is None:
            unique.append(m)
            continue
        print(f"gs-tune: skipping {m.name}: same configuration as {same.name}")
        if reference == m.name:
            reference = same.name
    names = [m.name for m in unique]
    if reference is not None and reference not in names:
        raise ConfigError("reference", f"{reference!r} is not a method of this evaluation; allowed: "
                                       f"{', '.join(names)}, none")
    return space, unique, reference


def _run_values(values: Mapping[str, Any], seed: int, tasks: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration of one retraining: the method's values, the smoke overrides, then what
    this protocol sets for every run."""
    out = {**values, **overrides, "seed": seed, "test_tasks": tasks, "meta_train_splits": RETRAIN_SPLITS}
    # Nothing reads the retraining's validations (and on train+val they score seen classes), so one
    # at the end instead of every val_every: each costs about val_tasks/meta_batch iterations.
    out["val_every"] = train_config(out).iterations  # also fails on a bad configuration
    return out


def _same_training(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two methods' retrainings would be the same runs (what the protocol sets is equal)."""
    return train_config(_run_values(a, 0, 1, {})) == train_config(_run_values(b, 0, 1, {}))


@ray.remote(num_cpus=1, max_calls=1)
def _retrain(values: dict[str, Any], checkpoint_dir: str) -> dict[str, Any]:
    """Train one configuration to the end, from its checkpoint in ``checkpoint_dir`` if an earlier
    attempt left one; its last validation record updated by the test record (test_* fields), or by
    the diverged record, and RESUMED: whether it went on from a checkpoint.

    max_calls=1 gives every run a fresh worker process: peak_memory_mb is the process's peak
    (ru_maxrss, or CUDA's max allocated), which a reused worker would carry over between runs.
    """
    import torch

    from gs_tune.trainer import CHECKPOINT_NAME, train

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    directory: Path | None = Path(checkpoint_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # a node that cannot write there: the run goes on without checkpoints
        directory = None
    resume = directory / CHECKPOINT_NAME if directory is not None else None
    if resume is not None and not resume.is_file():
        resume = None
    final: dict[str, Any] = {}
    for record in train(train_config(values), device="cuda" if ray.get_gpu_ids() else "cpu",
                        resume_from=resume, checkpoint_dir=directory):
        final.update(record)  # the test record carries test_* only; device and timings are the val's
    return {**final, RESUMED: resume is not None}


def _seed_list(methods: Sequence[Method], seeds: int) -> list[int]:
    """``seeds`` evaluation seeds from EVAL_SEED_BASE on, none of them a seed the search trained with."""
    search_seeds = {train_config(m.values).seed for m in methods}
    return [s for s in range(EVAL_SEED_BASE, EVAL_SEED_BASE + seeds + len(search_seeds))
            if s not in search_seeds][:seeds]


def run_key(method: Method, seed: int, values: Mapping[str, Any]) -> str:
    """What makes a finished run reusable by a resumed evaluation: the same method, seed and
    configuration (test tasks and smoke budget included)."""
    return json.dumps({"method": method.name, "source": method.source, "seed": seed,
                       "config": train_config(values).as_dict()}, sort_keys=True, default=str)


def checkpoint_dir(run_dir: Path, key: str) -> Path:
    """Where the run of ``key`` (run_key) checkpoints: named by the key's hash, so a changed
    configuration never resumes from another's checkpoint."""
    return run_dir / EVALUATION_CHECKPOINTS_DIR / hashlib.sha256(key.encode()).hexdigest()[:20]


def _finished_runs(path: Path) -> dict[str, dict[str, Any]]:
    """Rows by run_key from an unfinished evaluation's journal; a line torn by a kill is dropped."""
    out: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for entry in read_json_lines(path):
            try:
                out[str(entry["key"])] = dict(entry["row"])
            except (KeyError, TypeError, ValueError):
                continue
    return out


def _append_run(path: Path, key: str, row: Mapping[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        append_json_line(fd, {"key": key, "row": row})
        os.fsync(fd)
    finally:
        os.close(fd)


def _retrain_all(space: SearchSpace, methods: Sequence[Method], runs: Sequence[tuple[int, int, dict[str, Any]]],
                 address: str | None, object_store_memory: int | None, journal: Path) -> list[dict[str, Any]]:
    """Every (method index, seed, values) run as a Ray task, but those ``journal`` already holds
    (each new one is added to it as it ends); the rows in method then seed order."""
    from gs_tune.search.cluster import gpus_per_trial, ray_session

    done = _finished_runs(journal)
    drop_torn_line(journal)  # the runs appended below must not join a line a kill left torn
    keys = {(i, seed): run_key(methods[i], seed, values) for i, seed, values in runs}
    rows = {run: done[key] for run, key in keys.items() if key in done}
    if rows:
        print(f"gs-tune: {len(rows)} of {len(runs)} runs already done, kept from {journal}", flush=True)
    todo = [(i, seed, values) for i, seed, values in runs if (i, seed) not in rows]
    if not todo:
        return [rows[k] for k in sorted(rows)]
    with ray_session(address, object_store_memory=object_store_memory) as cluster:
        print(f"gs-tune: Ray {cluster.description}", flush=True)
        # The search's resources per trial, so sec_per_iter compares with the search's trials.
        task = _retrain.options(num_cpus=space.cpus_per_trial,
                                num_gpus=gpus_per_trial(space.gpus_per_trial, cluster.has_gpus))
        ckpt = {run: checkpoint_dir(journal.parent, key) for run, key in keys.items()}
        pending = {task.remote(values, str(ckpt[(i, seed)])): (i, seed, values) for i, seed, values in todo}
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i, seed, values = pending.pop(ref)
            record = ray.get(ref)
            rows[(i, seed)] = _row(methods[i], seed, values, record)
            _append_run(journal, keys[(i, seed)], rows[(i, seed)])
            shutil.rmtree(ckpt[(i, seed)], ignore_errors=True)  # the journal holds the run now
            acc, ci = record.get("test_accuracy"), record.get("test_ci95")
            result = "diverged" if acc is None else (f"test accuracy {acc * 100:.2f}% ± {ci * 100:.2f}% (95% "
                                                      f"t-interval over {values['test_tasks']} test tasks)")
            if record.get(RESUMED):
                result += ", went on from its checkpoint"
            print(f"[{len(rows)}/{len(runs)}] {methods[i].name} seed {seed}: {result}", flush=True)
    return [rows[k] for k in sorted(rows)]


def evaluate_run(
    run_dir: str | Path, *, baselines: Sequence[str] = ("maml", "fomaml", "reptile"), seeds: int = DEFAULT_SEEDS,
    tasks: int = 600, baselines_runs: Sequence[str] = (), reference: str | None = DEFAULT_REFERENCE,
    smoke: bool = False, address: str | None = None, object_store_memory: int | None = None,
) -> pa.Table:
    """Retrain and test every method for every seed; write RUN_DIR/evaluation.parquet and the paired
    differences from ``reference`` (a method name; None for none) to RUN_DIR/evaluation_pairs.parquet;
    return the evaluation table."""
    run_dir = Path(run_dir)
    for name, value in (("seeds", seeds), ("tasks", tasks)):
        if value < 1:
            raise ConfigError(name, f"must be >= 1, got {value}")
    space, methods, reference = _methods(run_dir, baselines, baselines_runs, reference)
    overrides: dict[str, Any] = {}
    if smoke:
        # The run dir's own smoke budget for every method, so they stay comparable with each other.
        overrides = dict(space.smoke)
        tasks, seeds = min(tasks, SMOKE_TASKS), min(seeds, SMOKE_SEEDS)
    seed_list = _seed_list(methods, seeds)
    runs = [(i, seed, _run_values(m.values, seed, tasks, overrides))
            for i, m in enumerate(methods) for seed in seed_list]
    print(f"gs-tune: retraining {len(methods)} methods x {len(seed_list)} seeds = {len(runs)} runs, "
          f"{tasks} test tasks each; every method sees the same test tasks for a given seed", flush=True)
    journal = run_dir / EVALUATION_RUNS_FILE
    rows = _retrain_all(space, methods, runs, address, object_store_memory, journal)
    pairs = paired_results(rows, reference) if reference is not None else []
    path = write_evaluation(run_dir, rows)
    write_pairs(run_dir, pairs)
    journal.unlink(missing_ok=True)  # its runs are in evaluation.parquet: a new evaluation retrains
    shutil.rmtree(run_dir / EVALUATION_CHECKPOINTS_DIR, ignore_errors=True)
    print()
    print(format_summary(rows, pairs))
    print(f"\nevaluation: {path}")
    return read_evaluation(run_dir)


def _row(method: Method, seed: int, values: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    params = {**train_config(values).as_dict(), "device": record.get("device", "auto")}
    return {
        "method": method.name, "config_source": method.source, "seed": seed,
        "test_accuracy": record.get("test_accuracy"), "test_ci95": record.get("test_ci95"),
        "test_tasks": values["test_tasks"], "sec_per_iter": record.get("sec_per_iter"),
        "peak_memory_mb": record.get("peak_memory_mb"), "params": params,
    }
