"""GPU placement without a GPU: a Ray node that *declares* one GPU (ray.cluster_utils.Cluster).

* ``--gpus-per-trial 0.5`` packs two trials onto the one declared GPU, at the same time, and each
  trial sees its assignment (CUDA_VISIBLE_DEVICES / ray.get_gpu_ids()); ``--trial-device cpu``
  lets them compute on this machine's CPU.
* Without the override a trial holding that GPU asks torch for CUDA, which it cannot see: the trial
  fails with one line naming CUDA_VISIBLE_DEVICES and the torch build, and that line (not a
  pickling error from Ray) is what trials.parquet's error column says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

STORE = 100 * 2**20
SPACE = """
name: gpu
fixed: {dataset: digits, model: mlp, filters: 4, ways: 5, shots: 1, query: 5, meta_batch: 2,
        iterations: 40, val_every: 10, val_tasks: 5, algorithm: fomaml}
search:
  inner_lr: {loguniform: [0.1, 0.5]}
objective: {metric: val_accuracy, mode: max}
sampler: {name: random, seed: 1}
num_samples: 2
max_concurrent: 2
scheduler: {name: none}
resources: {cpus_per_trial: 1, gpus_per_trial: 0.5}
"""


@pytest.fixture(scope="module")
def gpu_node():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 2, "num_gpus": 1, "object_store_memory": STORE})
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


def _launch(space: Path, name: str, address: str, *extra: str) -> Path:
    """gs-tune launch in a process of its own, as a user runs it (and so that joining this
    module's cluster leaves no Ray state behind in the test process)."""
    done = subprocess.run(
        [sys.executable, "-m", "gs_tune.cli", "launch", "--space", str(space), "--name", name,
         "--runs-dir", str(space.parent), "--address", address, *extra],
        check=False, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return space.parent / name


def _reports(run_dir: Path) -> dict[str, list[dict]]:
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            for p in (run_dir / "tune").glob("*/result.json")}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks placement on a node that only declares a GPU")
def test_half_a_gpu_each_packs_two_trials_on_one_declared_gpu(gpu_node, tmp_path):
    space = tmp_path / "gpu.yaml"
    space.write_text(SPACE)
    run_dir = _launch(space, "packed", gpu_node, "--trial-device", "cpu")
    trials = pq.read_table(run_dir / "trials.parquet").to_pylist()
    assert [t["status"] for t in trials] == ["completed", "completed"]
    assert all(t["device"] == "cpu" for t in trials)
    reports = _reports(run_dir)
    assert len(reports) == 2
    assert all(r["gpu_ids"] == "0" for rs in reports.values() for r in rs)  # both hold GPU 0
    spans = [(rs[0]["timestamp"] - rs[0]["time_total_s"], rs[-1]["timestamp"]) for rs in reports.values()]
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a, spans  # they ran at the same time


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a node that only declares a GPU")
def test_a_trial_given_a_gpu_torch_cannot_see_fails_with_one_clear_line(gpu_node, tmp_path):
    space = tmp_path / "gpu.yaml"
    space.write_text(SPACE.replace("num_samples: 2", "num_samples: 1"))
    run_dir = _launch(space, "unseen", gpu_node)
    (trial,) = pq.read_table(run_dir / "trials.parquet").to_pylist()
    assert trial["status"] == "error"
    error = trial["error"]
    assert "device: cuda was asked for but torch sees no CUDA device" in error, error
    assert "CUDA_VISIBLE_DEVICES=0" in error and f"torch {torch.__version__}" in error
    assert "\n" not in error and "TypeError" not in error
