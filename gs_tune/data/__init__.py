"""Few-shot datasets and the task sampler."""

from __future__ import annotations

from gs_tune.data.tasks import SPLITS, ClassSplit, FewShotDataset, JoinedSplit, TaskBatch, TaskSampler

__all__ = ["SPLITS", "ClassSplit", "FewShotDataset", "JoinedSplit", "TaskBatch", "TaskSampler", "load_dataset"]


def load_dataset(name: str, root: str | None = None) -> FewShotDataset:
    """Load a few-shot dataset by name; ``root`` is its directory (unused for digits).

    File datasets come from their memory-mapped uint8 cache, built on first use
    (:mod:`gs_tune.data.cache`), so every process on a node shares one copy.
    """
    from gs_tune.data.prepare import open_dataset

    return open_dataset(name, root)
