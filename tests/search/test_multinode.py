"""A worker node lost mid-trial on a real three-node Ray cluster (ray.cluster_utils.Cluster).

The head has no CPUs, so trials run only on the two 1-CPU workers. The driver is
`gs-tune launch --address` in its own process, as on a real cluster; checkpoints go to a path
every node reaches (here the same disk; S3 or GCS on a cloud). The worker that runs a trial is
killed outright once the trial has reported a checkpoint. The trial must then finish on the other
worker, continuing from that checkpoint: its first report there is the checkpoint's iteration plus
one validation interval, never the first interval again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

STORE = 100 * 2**20
VAL_EVERY = 20
ITERATIONS = 600  # long enough that the test sees a trial mid-run (below) on a fast machine too
SPACE = f"""
name: lost-node
fixed: {{dataset: digits, model: conv4, filters: 16, ways: 5, shots: 1, query: 5, meta_batch: 2,
        iterations: {ITERATIONS}, val_every: {VAL_EVERY}, val_tasks: 10, test_tasks: 0, algorithm: fomaml}}
search:
  inner_lr: {{loguniform: [0.1, 0.5]}}
objective: {{metric: val_accuracy, mode: max}}
sampler: {{name: random, seed: 3}}
num_samples: 2
max_concurrent: 2
scheduler: {{name: none}}
resources: {{cpus_per_trial: 1, gpus_per_trial: 0}}
"""


def _reports(experiment: Path) -> dict[str, list[dict]]:
    """Every report Tune logged per trial, in order (<storage>/<run>/tune/<trial>/result.json, a JSON a line)."""
    out = {}
    for path in experiment.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.parent.name] = [r for r in lines if "iteration" in r]
    return out


@pytest.fixture
def cluster(tmp_path):
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": STORE})
    workers = [c.add_node(num_cpus=1, object_store_memory=STORE) for _ in range(2)]
    c.wait_for_nodes()
    try:
        yield c, workers
    finally:
        c.shutdown()  # ends exactly the processes this cluster started


def test_a_trial_on_a_killed_worker_continues_from_its_checkpoint_elsewhere(cluster, tmp_path):
    c, workers = cluster
    space = tmp_path / "lost-node.yaml"
    space.write_text(SPACE)
    shared = tmp_path / "shared-storage"
    run_dir = tmp_path / "runs" / "mn"
    # Tune writes result.json on the driver and copies it to storage with its experiment snapshot,
    # every 10 s at least by default; a search of a few seconds could then end before the test saw
    # any report. Snapshots every second let it find a trial mid-run (what is tested is unchanged).
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "gs_tune.cli", "launch", "--space", str(space), "--runs-dir", str(tmp_path / "runs"),
         "--name", "mn", "--address", c.address, "--storage", str(shared)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        victim = None
        deadline = time.monotonic() + 240
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.5)
            for trial, reports in _reports(shared / "mn" / "tune").items():
                if reports and reports[-1]["iteration"] < ITERATIONS - 2 * VAL_EVERY:
                    victim = (trial, reports[-1]["node_id"], reports[-1]["pid"])
                    break
        assert victim is not None, "no trial reported a checkpoint in time: " + (driver.stderr.read()[-3000:] if driver.poll() is not None else "driver still running")
        trial, node_id, pid = victim
        node = next(w for w in workers if w.node_id == node_id)
        c.remove_node(node, allow_graceful=False)
        _, err = driver.communicate(timeout=420)
    finally:
        if driver.poll() is None:
            driver.kill()
    # the head says why it stopped (a C++ abort prints pages of frames after it), the tail where
    assert driver.returncode == 0, err[:2000] + "\n...\n" + err[-2000:]

    trials = pq.read_table(run_dir / "trials.parquet").to_pylist()
    assert len(trials) == 2 and {t["status"] for t in trials} == {"completed"}, trials
    reports = _reports(shared / "mn" / "tune")[trial]
    before = [r["iteration"] for r in reports if r["pid"] == pid]
    after = [r for r in reports if r["pid"] != pid]
    assert after, "the killed trial never reported again"
    assert {r["node_id"] for r in after} == {w.node_id for w in workers if w is not node}
    # continued from the newest checkpoint in storage (every report carries one), not from iteration 0.
    # The killed worker may have persisted one more checkpoint whose report never reached the driver
    # (tune.report uploads before it sends); the trial reads storage, so it continues from that one.
    assert after[0]["iteration"] in (max(before) + VAL_EVERY, max(before) + 2 * VAL_EVERY)
    assert after[0]["iteration"] > VAL_EVERY
    assert after[-1]["iteration"] == ITERATIONS
