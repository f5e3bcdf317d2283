"""End-to-end searches on a real local Ray: launch, interrupt, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml
from ray import tune

from gs_tune.cli import main
from gs_tune.results.tables import read_table_file
from gs_tune.rundir import Objective, read_run
from gs_tune.search.runner import TUNE_ENV, launch, resume
from gs_tune.search.samplers import resolve_seed
from gs_tune.search.space import load_space

STORE = 200 * 2**20  # keep Ray's object store small on a shared CI machine


def _finished_trials(run_dir: Path) -> list[dict]:
    path = run_dir / "trials.parquet"
    if not path.exists():
        return []
    # polled while the search publishes: gs-tune's reader takes one whole file, old or new
    return [r for r in read_table_file(path).to_pylist() if r["status"] != "running"]


def _study(run_dir: Path) -> optuna.Study:
    meta = json.loads((run_dir / "run.json").read_text())
    return optuna.load_study(study_name=meta["study_name"], storage=meta["optuna_storage"])


class Counting(tune.Callback):
    """An extra Tune callback given to launch(): it sees the search's events in this process."""

    def __init__(self):
        self.results: list[str] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.append(trial.trial_id)


def test_smoke_search_leaves_the_documented_run_directory(tmp_path, capsys):
    env_before = {k: os.environ.get(k) for k in TUNE_ENV}
    counting = Counting()
    run_dir = launch("cosine_l2", name="smoke", runs_dir=tmp_path, num_samples=4, max_concurrent=2,
                     smoke=True, object_store_memory=STORE, callbacks=[counting])
    assert run_dir == tmp_path / "smoke"
    for name in ("space.yaml", "run.json", "study.db", "trials.parquet", "metrics.parquet"):
        assert (run_dir / name).is_file(), name
    # run.json holds the facts the results read: objectives with their column, searched parameters
    info = read_run(run_dir)
    assert info.objectives == (Objective("val_accuracy", "best_val_accuracy", "max"),)
    assert info.params == ("w_cos", "w_l2", "inner_lr", "outer_lr", "ahe_schedule", "ahe_clip")
    assert info.sampler_seed == resolve_seed(load_space("cosine_l2"), "smoke")  # the seed the search used
    # Tune's status table: the searched parameters and the objective, and the best trial so far
    out = capsys.readouterr().out
    header = [line for line in out.splitlines() if line.startswith("| Trial name")][-1]  # once reports came
    assert all(name in header for name in (*info.params, "iteration", "val_accuracy", "sec_per_iter"))
    assert "Current best trial: " in out and " with val_accuracy=" in out
    assert {k: os.environ.get(k) for k in TUNE_ENV} == env_before
    study = _study(run_dir)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    trials = pq.read_table(run_dir / "trials.parquet").to_pylist()
    assert len(trials) == 4
    assert {t["status"] for t in trials} <= {"completed", "early_stopped"}
    assert all(t["device"] == "cpu" and t["seed"] == 0 and t["node"] for t in trials)
    completed = [t for t in trials if t["status"] == "completed"]
    assert completed and all(t["peak_memory_mb"] > 0 for t in completed)
    # a search never reads the test split: no test values anywhere in its tables
    assert all(t.get("test_accuracy") is None for t in trials)
    assert yaml.safe_load((run_dir / "space.yaml").read_text())["fixed"]["test_tasks"] == 0
    last = {(r["trial_id"], r["iteration"]) for r in pq.read_table(run_dir / "metrics.parquet").to_pylist()}
    assert all((t["trial_id"], t["iterations"]) in last for t in completed)
    # Ray Tune's experiment state and one directory (with checkpoints) per trial
    tune_dir = run_dir / "tune"
    assert any(tune_dir.glob("experiment_state*.json"))
    trial_dirs = [d for d in tune_dir.iterdir() if d.is_dir() and (d / "result.json").exists()]
    assert len(trial_dirs) == 4
    assert all(any(d.glob("checkpoint_*")) for d in trial_dirs)
    boards = sorted(p.name for p in (run_dir / "tensorboard").iterdir())
    assert boards == sorted(t["trial_id"] for t in trials)
    # the searched values are what each trial trained with
    for trial in study.trials:
        assert 1e-3 <= trial.params["w_cos"] <= 1.0
    reports = pq.read_table(run_dir / "metrics.parquet").num_rows
    assert len(counting.results) == reports and set(counting.results) == {t["trial_id"] for t in trials}


def test_interrupted_search_resumes_without_rerunning_finished_trials(tmp_path):
    cmd = [sys.executable, "-m", "gs_tune.cli", "launch", "--space", "cosine_l2", "--smoke",
           "--num-samples", "4", "--max-concurrent", "1", "--runs-dir", str(tmp_path), "--name", "r"]
    env = {**os.environ, "GS_TUNE_OBJECT_STORE_MB": "200"}
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = tmp_path / "r"
    deadline = time.monotonic() + 240
    while len(_finished_trials(run_dir)) < 2:
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "two trials did not finish in time"
        time.sleep(0.5)
    driver.send_signal(signal.SIGINT)
    driver.communicate(timeout=120)
    before = {t["trial_id"] for t in _finished_trials(run_dir)}
    assert 2 <= len(before) < 4, "the interrupt came after the search had finished"
    reports_before = {
        tid: (run_dir / "tune" / tid / "result.json").read_text() for tid in before
    }

    resume(run_dir, object_store_memory=STORE)

    study = _study(run_dir)
    assert len(study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len(_finished_trials(run_dir)) == 4
    for tid, text in reports_before.items():  # finished trials were not run again
        assert (run_dir / "tune" / tid / "result.json").read_text() == text


def test_invalid_space_exits_2_before_ray_starts(tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text("fixed: {algorithm: ahe}\nsearch:\n  w_cos: {loguniform: [0, 1]}\n")
    code = main(["launch", "--space", str(space), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "search.w_cos.loguniform" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("fix, message", [
    ("algorithm", "fix: expects KEY=VALUE"), ("algorithm=sgd", "fixed.algorithm"), ("nope=1", "fixed.nope"),
])
def test_bad_fix_exits_2_before_ray_starts(tmp_path, capsys, fix, message):
    code = main(["launch", "--space", "baselines", "--fix", fix, "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_unknown_space_name_lists_shipped_spaces(tmp_path, capsys):
    assert main(["launch", "--space", "nope", "--runs-dir", str(tmp_path)]) == 2
    assert "cosine_l2" in capsys.readouterr().err


def test_resume_of_a_directory_that_is_not_a_run_exits_2(tmp_path, capsys):
    assert main(["resume", str(tmp_path)]) == 2
    assert "run.json" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["results", "report", "evaluate"])
def test_result_commands_on_missing_run_dir_exit_2(tmp_path, command, capsys):
    assert main([command, str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
