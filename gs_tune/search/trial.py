"""The Ray Tune trainable: one trial = one Ray actor running the trainer.

Ray's reporting API has changed often; every call into it for a running trial
is in this file.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from gs_tune.config import train_config
from gs_tune.trainer import train

# Config keys a trial's environment decides rather than the search space.
RUNTIME_KEYS = ("device", "progress", "out", "tensorboard")


def _reportable(record: dict[str, Any]) -> dict[str, Any]:
    """Ray metrics must be plain scalars; NaN stats (not computed) are left out."""
    out = {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, (int, float, str, bool)):
            out[key] = value
    return out


def run_trial(config: dict[str, Any]) -> None:
    """Meta-train one sampled configuration, reporting every validation to Ray Tune.

    The device is the one Ray assigned: CUDA when the trial holds a GPU share,
    else the CPU with as many threads as CPUs the trial reserved.
    """
    gpu_ids = ray.get_gpu_ids()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    values = {k: v for k, v in config.items() if k not in RUNTIME_KEYS}
    cfg = train_config(values, device="cuda" if gpu_ids else "cpu", progress=False)
    node = ray.util.get_node_ip_address()

    with tempfile.TemporaryDirectory(prefix="gs-tune-trial-") as work:
        work_dir = Path(work)
        resume_from = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            resume_from = Path(checkpoint.to_directory(str(work_dir / "restored")))
        ckpt_dir = work_dir / "checkpoint"
        held = None  # checkpoint of the last validation, reported with the test record
        for record in train(cfg, resume_from=resume_from, checkpoint_dir=ckpt_dir):
            saved = record.pop("checkpoint", None)
            if record["kind"] == "val" and record["iteration"] >= cfg.iterations and cfg.test_tasks:
                # ASHA stops a trial at its first report with iteration >= max_t (= iterations), so a
                # test record sent after the last validation would never arrive: the test record,
                # which repeats the last validation, is sent in its place, as that validation.
                held = saved
                continue
            if record["kind"] == "test" and record.get("val_accuracy") is not None:
                record, saved = {**record, "kind": "val"}, saved or held
            metrics = _reportable({**record, "node": node, "device": str(cfg.device), "seed": cfg.seed})
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)) if saved else None)
