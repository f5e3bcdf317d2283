"""N-way K-shot tasks over class-disjoint splits.

A dataset is a :class:`FewShotDataset`: three :class:`ClassSplit` objects whose
classes never overlap. :class:`TaskSampler` draws tasks from one split using
only the ``numpy.random.Generator`` it is given, so a run is reproduced by its
seed and resumed by saving the generator's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from gs_tune.errors import DataError

SPLITS = ("train", "val", "test")


class TaskBatch(NamedTuple):
    """A batch of T tasks; every tensor has the task axis first.

    x_support: [T, N·K, C, H, W]   y_support: [T, N·K] (labels 0..N-1)
    x_query:   [T, N·Q, C, H, W]   y_query:   [T, N·Q]
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TaskBatch:
        return TaskBatch(
            self.x_support.to(device=device, dtype=dtype),
            self.y_support.to(device),
            self.x_query.to(device=device, dtype=dtype),
            self.y_query.to(device),
        )

    def task(self, i: int) -> TaskBatch:
        """Task ``i`` alone, still with a task axis of length 1."""
        return TaskBatch(*(t[i : i + 1] for t in self))


@dataclass(frozen=True)
class ClassSplit:
    """The examples of one split, grouped by class.

    ``images`` is float32 [N, C, H, W] scaled to [0, 1]; ``labels`` int64 [N]
    indexes ``class_names``.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise DataError(f"split images must be [N, C, H, W] with one label each, got {self.images.shape}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_indices(self) -> list[np.ndarray]:
        return [np.flatnonzero(self.labels == c) for c in range(self.num_classes)]


@dataclass(frozen=True)
class FewShotDataset:
    name: str
    train: ClassSplit
    val: ClassSplit
    test: ClassSplit

    def split(self, name: str) -> ClassSplit:
        if name not in SPLITS:
            raise DataError(f"split: got {name!r}, allowed: {', '.join(SPLITS)}")
        return getattr(self, name)

    def meta_train(self, splits: str) -> ClassSplit:
        """The classes meta-training samples from: "train", or "train+val" (both splits' classes
        side by side, labels of val shifted past train's) for a final retraining."""
        if splits == "train":
            return self.train
        if splits != "train+val":
            raise DataError(f"meta_train_splits: got {splits!r}, allowed: train, train+val")
        offset = self.train.num_classes
        return ClassSplit(
            images=np.concatenate([self.train.images, self.val.images]),
            labels=np.concatenate([self.train.labels, self.val.labels + offset]),
            class_names=self.train.class_names + self.val.class_names,
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


class TaskSampler:
    """Draws N-way K-shot tasks with Q queries per class from one split."""

    def __init__(self, split: ClassSplit, ways: int, shots: int, query: int, split_name: str = "train"):
        self.split = split
        self.ways, self.shots, self.query = ways, shots, query
        self._by_class = split.class_indices()
        if ways > split.num_classes:
            raise DataError(
                f"ways: {ways}-way tasks need {ways} classes but the {split_name} split has "
                f"{split.num_classes}; allowed: ways <= {split.num_classes}"
            )
        smallest = min(len(ix) for ix in self._by_class)
        if shots + query > smallest:
            raise DataError(
                f"shots + query: {shots} + {query} examples per class exceed the {smallest} "
                f"of the smallest class in the {split_name} split; allowed: shots + query <= {smallest}"
            )
        self._images = torch.from_numpy(np.ascontiguousarray(split.images))

    def sample(self, num_tasks: int, rng: np.random.Generator) -> TaskBatch:
        n, k, q = self.ways, self.shots, self.query
        support_idx = np.empty((num_tasks, n, k), dtype=np.int64)
        query_idx = np.empty((num_tasks, n, q), dtype=np.int64)
        for t in range(num_tasks):
            classes = rng.choice(self.split.num_classes, size=n, replace=False)
            for label, c in enumerate(classes):
                picked = rng.choice(self._by_class[c], size=k + q, replace=False)
                support_idx[t, label] = picked[:k]
                query_idx[t, label] = picked[k:]
        shape = self._images.shape[1:]
        xs = self._images[torch.from_numpy(support_idx.reshape(-1))].reshape(num_tasks, n * k, *shape)
        xq = self._images[torch.from_numpy(query_idx.reshape(-1))].reshape(num_tasks, n * q, *shape)
        ys = torch.arange(n).repeat_interleave(k).expand(num_tasks, -1).contiguous()
        yq = torch.arange(n).repeat_interleave(q).expand(num_tasks, -1).contiguous()
        return TaskBatch(xs, ys, xq, yq)
