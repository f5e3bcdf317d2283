"""N-way K-shot tasks over class-disjoint splits.

A dataset is a :class:`FewShotDataset`: three :class:`ClassSplit` objects whose
classes never overlap. :class:`TaskSampler` draws tasks from one split using
only the ``numpy.random.Generator`` it is given, so a run is reproduced by its
seed and resumed by saving the generator's state.

Pixels stay uint8 until the last moment. A split read from a prepared cache
holds uint8 arrays mapped read-only from disk (every process on a node shares
one copy through the page cache); the sampler gathers a task's uint8 images
and :meth:`TaskBatch.to` turns them into floats in [0, 1] on the target
device, so the host moves and holds a quarter of the float32 bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from gs_tune.errors import DataError

SPLITS = ("train", "val", "test")
PIXEL_MAX = 255


def _images_to(x: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    if device.type == "cuda" and x.device.type == "cpu":
        # From pinned memory the copy is a DMA that overlaps the host's next work; PyTorch's caching
        # host allocator keeps the pinned buffer alive until the copy has finished.
        x = (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)
    else:
        x = x.to(device)
    if x.dtype == torch.uint8:
        return x.to(dtype or torch.get_default_dtype()).div_(PIXEL_MAX)
    return x if dtype is None else x.to(dtype)


class TaskBatch(NamedTuple):
    """A batch of T tasks; every tensor has the task axis first.

    x_support: [T, N·K, C, H, W]   y_support: [T, N·K] (labels 0..N-1)
    x_query:   [T, N·Q, C, H, W]   y_query:   [T, N·Q]

    Images are uint8 pixels (0..255) when sampled from a uint8 split, else float in [0, 1];
    :meth:`to` always returns floats in [0, 1].
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TaskBatch:
        """On ``device``, images as ``dtype`` (default: torch's default float for uint8 pixels, which
        are scaled to [0, 1] there, after the copy)."""
        device = torch.device(device)
        return TaskBatch(
            _images_to(self.x_support, device, dtype),
            self.y_support.to(device),
            _images_to(self.x_query, device, dtype),
            self.y_query.to(device),
        )

    def task(self, i: int) -> TaskBatch:
        """Task ``i`` alone, still with a task axis of length 1."""
        return TaskBatch(*(t[i : i + 1] for t in self))


def group_by_class(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Row indices of each class, ascending (one stable sort instead of a scan per class)."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=num_classes)
    return np.split(order, np.cumsum(counts)[:-1])


@dataclass(frozen=True)
class ClassSplit:
    """The examples of one split, grouped by class.

    ``images`` is [N, C, H, W]: uint8 pixels, or float32 scaled to [0, 1]; it may be a read-only
    memory map. ``labels`` int64 [N] indexes ``class_names``.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise DataError(f"split images must be [N, C, H, W] with one label each, got {self.images.shape}")
        if self.images.dtype != np.uint8 and not np.issubdtype(self.images.dtype, np.floating):
            raise DataError(f"split images must be uint8 or float, got {self.images.dtype}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def class_indices(self) -> list[np.ndarray]:
        return group_by_class(self.labels, self.num_classes)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """A fresh array of the images at ``rows``, which reads only those rows of a memory map."""
        return np.asarray(self.images[rows])


@dataclass(frozen=True)
class JoinedSplit:
    """Several splits' classes side by side, read in place: class ``c`` of the second part is class
    ``parts[0].num_classes + c`` here. No image is copied, so joining train and val costs nothing
    however large they are."""

    parts: tuple[ClassSplit, ...]

    def __post_init__(self) -> None:
        if len({p.image_shape for p in self.parts}) != 1 or len({p.images.dtype for p in self.parts}) != 1:
            raise DataError("joined splits must share one image shape and dtype")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(name for p in self.parts for name in p.class_names)

    @property
    def num_classes(self) -> int:
        return sum(p.num_classes for p in self.parts)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.parts[0].image_shape

    @property
    def labels(self) -> np.ndarray:
        offsets = np.cumsum([0] + [p.num_classes for p in self.parts])
        return np.concatenate([p.labels + off for p, off in zip(self.parts, offsets)])

    def _row_starts(self) -> np.ndarray:
        return np.cumsum([0] + [len(p.labels) for p in self.parts])

    def class_indices(self) -> list[np.ndarray]:
        return [ix + start for p, start in zip(self.parts, self._row_starts()) for ix in p.class_indices()]

    def take(self, rows: np.ndarray) -> np.ndarray:
        starts = self._row_starts()
        part_of = np.searchsorted(starts, rows, side="right") - 1
        out = np.empty((len(rows), *self.image_shape), dtype=self.parts[0].images.dtype)
        for p, part in enumerate(self.parts):
            mask = part_of == p
            if mask.any():
                out[mask] = part.images[rows[mask] - starts[p]]
        return out


Split = ClassSplit | JoinedSplit


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

    def meta_train(self, splits: str) -> Split:
        """The classes meta-training samples from: "train", or "train+val" (both splits' classes
        side by side, val's after train's) for a final retraining."""
        if splits == "train":
            return self.train
        if splits != "train+val":
            raise DataError(f"meta_train_splits: got {splits!r}, allowed: train, train+val")
        return JoinedSplit((self.train, self.val))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape


class TaskSampler:
    """Draws N-way K-shot tasks with Q queries per class from one split."""

    def __init__(self, split: Split, ways: int, shots: int, query: int, split_name: str = "train"):
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

    def chunks(self, num_tasks: int, rng: np.random.Generator, size: int) -> Iterator[TaskBatch]:
        """The tasks of ``sample(num_tasks, rng)``, the very same ones, drawn ``size`` at a time:
        only one chunk's images are in memory (600 miniImageNet 5-shot test tasks are ~1.3 GB)."""
        if size < 1:
            raise ValueError(f"size: got {size}, allowed: >= 1")
        for start in range(0, num_tasks, size):
            yield self.sample(min(size, num_tasks - start), rng)

    def sample(self, num_tasks: int, rng: np.random.Generator) -> TaskBatch:
        n, k, q = self.ways, self.shots, self.query
        picked = np.empty((num_tasks, n, k + q), dtype=np.int64)
        for t in range(num_tasks):
            classes = rng.choice(self.split.num_classes, size=n, replace=False)
            for label, c in enumerate(classes):
                picked[t, label] = rng.choice(self._by_class[c], size=k + q, replace=False)
        # one gather for support and query: the first k picks of a class support, the rest query
        rows = np.concatenate([picked[:, :, :k].ravel(), picked[:, :, k:].ravel()])
        images = torch.from_numpy(self.split.take(rows))
        shape = self.split.image_shape
        xs = images[: num_tasks * n * k].view(num_tasks, n * k, *shape)
        xq = images[num_tasks * n * k :].view(num_tasks, n * q, *shape)
        ys = torch.arange(n).repeat_interleave(k).expand(num_tasks, -1).contiguous()
        yq = torch.arange(n).repeat_interleave(q).expand(num_tasks, -1).contiguous()
        return TaskBatch(xs, ys, xq, yq)
