"""The Ray Tune trainable: one trial = one Ray actor running the trainer.

Ray's reporting API has changed often; every call into it for a running trial
is in this file, and so is the one place where records are reshaped for the
searcher.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import torch
from ray import tune

from gs_tune.config import train_config
from gs_tune.errors import CheckpointError
from gs_tune.records import Record
from gs_tune.trainer import CHECKPOINT_NAME, load_checkpoint, train


def _reportable(record: dict[str, Any]) -> dict[str, Any]:
    """Ray metrics are plain scalars (plus the train_log list); NaN stats (not computed) are left out."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, (int, float, str, bool)) or key == "train_log":
            out[key] = value
    return out


def for_searcher(records: Iterable[Record]) -> Iterator[Record]:
    """The trainer's records as Tune should see them: a diverged record gets val_accuracy 0, which
    ranks it below any real trial for the searcher. (A search trial yields no test record: launch
    refuses a space that asks for one, so ASHA's stop at max_t never cuts a report off.)"""
    for record in records:
        if record["kind"] == "diverged":
            record = {**record, "val_accuracy": 0.0}
        yield record


def _newest_checkpoint(into: Path) -> Path | None:
    """The newest checkpoint of this trial that loads, downloaded into ``into``.

    Tune hands a restarted trial the checkpoint its experiment snapshot names. After a hard kill
    of the driver that snapshot may lag what the trial had already persisted to storage (its
    later checkpoints, even its final one), so the trial looks in its own storage directory and
    continues from the newest whole checkpoint there; a half-copied one is skipped.
    """
    candidates: list[tune.Checkpoint] = []
    try:
        storage = tune.get_context().get_storage()
        fs, trial_path = storage.storage_filesystem, storage.trial_fs_path
        infos = fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True))
        names = sorted((i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory
                        and i.base_name.startswith("checkpoint_")), reverse=True)
        candidates = [tune.Checkpoint(f"{trial_path}/{name}", filesystem=fs) for name in names]
    except (AttributeError, RuntimeError, OSError):
        pass  # no storage context (a function run outside Tune): Tune's own choice below
    given = tune.get_checkpoint()
    if given is not None:
        candidates.append(given)
    for i, checkpoint in enumerate(candidates):
        local = Path(checkpoint.to_directory(str(into / str(i))))
        try:
            load_checkpoint(local / CHECKPOINT_NAME)
            return local
        except CheckpointError:
            continue
    return None


def run_trial(config: dict[str, Any], device: str = "auto") -> None:
    """Meta-train one sampled configuration, reporting every validation to Ray Tune.

    With ``device`` auto the device is the one Ray assigned: CUDA when the trial holds a GPU share,
    else the CPU with as many threads as CPUs the trial reserved. cpu or cuda override it (cpu lets
    a trial holding a share of a GPU that a node only declares compute anyway).
    """
    gpu_ids = ray.get_gpu_ids()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    cfg = train_config(config)
    device = ("cuda" if gpu_ids else "cpu") if device == "auto" else device
    facts = {
        "node": ray.util.get_node_ip_address(),
        # the IP names a host; several Ray nodes may share one, so the node id says which ran a report
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpu_ids": ",".join(str(g) for g in gpu_ids), "seed": cfg.seed,
    }
    with tempfile.TemporaryDirectory(prefix="gs-tune-trial-") as work:
        work_dir = Path(work)
        resume_from = _newest_checkpoint(work_dir / "restored")
        ckpt_dir = work_dir / "checkpoint"
        records = train(cfg, device=device, resume_from=resume_from, checkpoint_dir=ckpt_dir)
        for record in for_searcher(records):
            saved = record.pop("checkpoint", None)
            metrics = _reportable({"device": device, **record, **facts})
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)) if saved else None)
