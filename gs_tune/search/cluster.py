"""Starting or joining Ray: the one place gs-tune calls ray.init / ray.shutdown."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# The object store holds only small results and checkpoints here; Ray's default
# (30% of RAM per node) would take gigabytes from the trials for nothing.
DEFAULT_OBJECT_STORE_MB = 512


@dataclass(frozen=True)
class ClusterInfo:
    description: str
    has_gpus: bool


def ray_temp_dir() -> Path:
    """Ray's sockets and logs for a local cluster: short (socket paths are limited) and ours alone."""
    return Path(tempfile.gettempdir()) / "gs-tune" / f"ray-{os.getuid()}"


@contextmanager
def ray_session(
    address: str | None, *, dashboard: bool = False, object_store_memory: int | None = None
) -> Iterator[ClusterInfo]:
    """Join ``address`` (auto, HOST:PORT, ray://HOST:10001) or start a local Ray sized to this machine.

    A local cluster is shut down on exit, and only it: joining never stops a cluster.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if address:
        ray.init(address=address, log_to_driver=False)
        kind = f"cluster at {address}"
    else:
        store = object_store_memory or int(
            os.environ.get("GS_TUNE_OBJECT_STORE_MB", DEFAULT_OBJECT_STORE_MB)) * 2**20
        ray.init(
            num_cpus=os.cpu_count(), include_dashboard=dashboard, _temp_dir=str(ray_temp_dir()),
            object_store_memory=store, log_to_driver=False, configure_logging=False,
        )
        kind = "local"
    try:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0)
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        yield ClusterInfo(
            f"{kind}: {nodes} node(s), {resources.get('CPU', 0):g} CPUs, {gpus:g} GPUs", has_gpus=gpus > 0
        )
    finally:
        ray.shutdown()


def gpus_per_trial(setting: str | float, has_gpus: bool) -> float:
    """GPUs each trial (or retraining) holds: a number as given; "auto" = one GPU when the cluster has
    any now, else none (an autoscaling cluster may have no GPU node yet; trials then run on CPUs)."""
    if setting == "auto":
        return 1.0 if has_gpus else 0.0
    return float(setting)
