"""Few-shot datasets and the task sampler."""

from __future__ import annotations

from gs_tune.data.tasks import SPLITS, ClassSplit, FewShotDataset, TaskBatch, TaskSampler
from gs_tune.errors import DataError

__all__ = ["SPLITS", "ClassSplit", "FewShotDataset", "TaskBatch", "TaskSampler", "load_dataset"]


def load_dataset(name: str, root: str | None = None) -> FewShotDataset:
    """Load a few-shot dataset by name; ``root`` is its directory (unused for digits)."""
    if name == "digits":
        from gs_tune.data.digits import load_digits_dataset

        return load_digits_dataset()
    loaders = {
        "mnist": "gs_tune.data.mnist:load_mnist",
        "omniglot": "gs_tune.data.omniglot:load_omniglot",
        "miniimagenet": "gs_tune.data.miniimagenet:load_miniimagenet",
    }
    if name not in loaders:
        raise DataError(f"dataset: got {name!r}, allowed: digits, {', '.join(loaders)}")
    if not root:
        raise DataError(f"data_root: dataset {name!r} needs --data-root pointing at its files")
    import importlib

    module, func = loaders[name].split(":")
    return getattr(importlib.import_module(module), func)(root)
