"""Hard kills of the whole driver process group, and `gs-tune resume` after each.

One search is killed with SIGKILL three times, each at a different point, and resumed each time:
during a trial, just after a trial completed, and while trials.parquet was being written (the
driver is held inside that write until the kill). Ray's processes are children of the driver in
its process group, so they die with it, as in a crash. After the last resume the search must be
complete and consistent:

* no finished trial lost or trained again, unfinished ones continued from their last checkpoint
  (read from Tune's own log of every report, result.json, whose ``pid`` tells the runs apart);
* the Optuna study and trials.parquet agree trial for trial, values included;
* metrics.parquet holds no duplicate (trial, iteration) row.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from gs_tune.results.tables import read_table_file
from gs_tune.rundir import FINISHED, read_run
from gs_tune.search.runner import resume
from gs_tune.search.searcher import TUNE_ID_ATTR

STORE = 150 * 2**20
TRIALS, ITERATIONS, VAL_EVERY = 5, 80, 10
SPACE = f"""
name: crash
fixed: {{dataset: digits, model: conv4, filters: 8, ways: 5, shots: 1, query: 5, meta_batch: 2,
        iterations: {ITERATIONS}, val_every: {VAL_EVERY}, val_tasks: 10, algorithm: ahe, w_cos: 0.1}}
search:
  inner_lr: {{loguniform: [0.1, 0.5]}}
objective: {{metric: val_accuracy, mode: max}}
sampler: {{name: random, seed: 5}}
num_samples: {TRIALS}
max_concurrent: 1
scheduler: {{name: none}}
resources: {{cpus_per_trial: 1, gpus_per_trial: 0}}
"""
# Runs gs-tune's CLI with os.replace held open on the Nth write of trials.parquet: the temp file
# is written and the rename not yet done when the test kills the process group.
HOLD_IN_TABLE_WRITE = """
import os, sys, time
from pathlib import Path
real, writes = os.replace, [0]
def held(src, dst, *args, **kwargs):
    if str(dst).endswith("trials.parquet"):
        writes[0] += 1
        if writes[0] >= int(os.environ["HOLD_AT_WRITE"]):
            Path(os.environ["HOLD_MARKER"]).touch()
            time.sleep(3600)
    return real(src, dst, *args, **kwargs)
os.replace = held
from gs_tune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _rows(run_dir: Path, name: str) -> list[dict]:
    path = run_dir / name
    # polled while the driver publishes: gs-tune's reader takes one whole file, old or new
    return read_table_file(path).to_pylist() if path.exists() else []


def _finished(run_dir: Path) -> int:
    return sum(1 for t in _rows(run_dir, "trials.parquet") if t["status"] in FINISHED)


class Driver:
    """One gs-tune CLI process in a process group of its own, killed as a whole."""

    def __init__(self, argv: list[str], tmp: Path, script: str | None = None, env: dict | None = None):
        ray_tmp = tempfile.mkdtemp(prefix="gst", dir="/tmp")  # short: Ray's socket paths are limited
        cmd = [sys.executable, "-c", script, *argv] if script else [sys.executable, "-m", "gs_tune.cli", *argv]
        with open(tmp / "driver.err", "ab") as err:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err,
                env={**os.environ, "TMPDIR": ray_tmp, "GS_TUNE_OBJECT_STORE_MB": "150", **(env or {})},
            )

    def wait_for(self, condition, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the driver ended before {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        time.sleep(1.0)  # the group's processes are gone; let the kernel release their sockets


def _reports_by_run(run_dir: Path) -> dict[str, list[list[dict]]]:
    """Per trial, its reports in result.json grouped into runs (one per process that ran it)."""
    out: dict[str, list[list[dict]]] = {}
    for path in (run_dir / "tune").glob("*/result.json"):
        runs: list[list[dict]] = []
        for line in path.read_text().splitlines():
            try:
                report = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if not runs or runs[-1][-1]["pid"] != report["pid"]:
                runs.append([])
            runs[-1].append(report)
        out[path.parent.name] = runs
    return out


def test_three_hard_kills_then_resume_complete_a_consistent_search(tmp_path):
    space = tmp_path / "crash.yaml"
    space.write_text(SPACE)
    run_dir = tmp_path / "runs" / "crash"
    launch = ["launch", "--space", str(space), "--runs-dir", str(tmp_path / "runs"), "--name", "crash"]

    # 1. during a trial: the first trial has reported twice, none has finished
    driver = Driver(launch, tmp_path)
    driver.wait_for(lambda: len(_rows(run_dir, "metrics.parquet")) >= 2, "two reports")
    driver.kill()
    assert _finished(run_dir) == 0

    # 2. just after a trial completed
    driver = Driver(["resume", str(run_dir)], tmp_path)
    driver.wait_for(lambda: _finished(run_dir) >= 1, "a finished trial")
    driver.kill()

    # 3. inside a write of trials.parquet, after one more trial finished
    done = _finished(run_dir)
    marker = tmp_path / "held"
    driver = Driver(["resume", str(run_dir)], tmp_path, script=HOLD_IN_TABLE_WRITE,
                    env={"HOLD_AT_WRITE": "4", "HOLD_MARKER": str(marker)})
    driver.wait_for(marker.exists, "the held table write")
    assert list(run_dir.glob(".trials.parquet*")), "no half-written table at the kill"
    driver.kill()
    assert len(_rows(run_dir, "trials.parquet")) >= done  # the previous table is whole and readable

    resume(run_dir, object_store_memory=STORE)

    trials = {t["trial_id"]: t for t in _rows(run_dir, "trials.parquet")}
    assert sum(t["status"] in FINISHED for t in trials.values()) == TRIALS
    assert all(t["status"] in (*FINISHED, "error") for t in trials.values())

    info = read_run(run_dir)
    study = optuna.load_study(study_name=info.study_name, storage=info.optuna_storage)
    by_tune_id = {t.user_attrs[TUNE_ID_ATTR]: t for t in study.trials}
    assert set(by_tune_id) == set(trials)  # trial for trial
    for tid, row in trials.items():
        trial = by_tune_id[tid]
        if row["status"] in FINISHED:
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert trial.value == pytest.approx(row["final_val_accuracy"])
        else:
            assert trial.state == optuna.trial.TrialState.FAIL and row["error"].startswith("lost")

    metrics = _rows(run_dir, "metrics.parquet")
    keys = [(m["trial_id"], m["iteration"]) for m in metrics]
    assert len(keys) == len(set(keys))

    for tid, runs in _reports_by_run(run_dir).items():
        for before, after in itertools.pairwise(runs):
            last = before[-1]["iteration"]
            if last == ITERATIONS:  # it had finished: later runs only re-say the final result
                assert {r["iteration"] for r in after} == {ITERATIONS}, tid
            else:  # continued from its newest checkpoint, never from the start
                assert after[0]["iteration"] > last, (tid, last, after[0]["iteration"])
        assert runs[-1][-1]["iteration"] == ITERATIONS or trials[tid]["status"] == "error"
