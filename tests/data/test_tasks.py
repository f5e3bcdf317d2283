"""Task sampling on uint8 splits: the random stream, the conversion to floats, joined splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gs_tune.data import ClassSplit, FewShotDataset, JoinedSplit, TaskBatch, TaskSampler
from gs_tune.data.tasks import group_by_class


def uint8_split(classes: int, per_class: int, seed: int, shape=(3, 6, 6)) -> ClassSplit:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(classes), per_class)).astype(np.int64)
    images = rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
    return ClassSplit(images, labels, tuple(f"s{seed}c{c}" for c in range(classes)))


def reference_sample(images, labels, num_classes, ways, shots, query, num_tasks, rng):
    """The sampler as first written (one scan per class, one gather per task), kept to prove
    that the faster one draws the very same tasks from the same seed, so earlier results stand."""
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    xs, xq = [], []
    for _ in range(num_tasks):
        s_rows, q_rows = [], []
        for c in rng.choice(num_classes, size=ways, replace=False):
            picked = rng.choice(by_class[c], size=shots + query, replace=False)
            s_rows += list(picked[:shots])
            q_rows += list(picked[shots:])
        xs.append(images[s_rows])
        xq.append(images[q_rows])
    return np.stack(xs), np.stack(xq)


def test_group_by_class_equals_a_scan_per_class() -> None:
    labels = np.random.default_rng(0).integers(0, 7, size=500)
    for got, c in zip(group_by_class(labels, 8), range(8)):
        np.testing.assert_array_equal(got, np.flatnonzero(labels == c))


@pytest.mark.parametrize("ways, shots, query", [(5, 1, 15), (3, 5, 2)])
def test_sampler_draws_the_reference_tasks(ways: int, shots: int, query: int) -> None:
    split = uint8_split(classes=9, per_class=20, seed=1)
    batch = TaskSampler(split, ways, shots, query).sample(6, np.random.default_rng(42))
    xs, xq = reference_sample(split.images, split.labels, 9, ways, shots, query, 6, np.random.default_rng(42))
    assert batch.x_support.dtype == torch.uint8
    np.testing.assert_array_equal(batch.x_support.numpy(), xs)
    np.testing.assert_array_equal(batch.x_query.numpy(), xq)


def test_joined_split_samples_as_the_concatenation_would() -> None:
    train, val = uint8_split(6, 10, seed=2), uint8_split(4, 10, seed=3)
    joined = FewShotDataset("toy", train, val, val).meta_train("train+val")
    assert isinstance(joined, JoinedSplit) and joined.num_classes == 10
    images = np.concatenate([train.images, val.images])
    labels = np.concatenate([train.labels, val.labels + 6])
    batch = TaskSampler(joined, 5, 2, 3).sample(8, np.random.default_rng(5))
    xs, xq = reference_sample(images, labels, 10, 5, 2, 3, 8, np.random.default_rng(5))
    np.testing.assert_array_equal(batch.x_support.numpy(), xs)
    np.testing.assert_array_equal(batch.x_query.numpy(), xq)


def test_to_scales_uint8_pixels_after_the_copy() -> None:
    split = uint8_split(5, 4, seed=4)
    batch = TaskSampler(split, 5, 1, 3).sample(2, np.random.default_rng(0))
    as_float = batch.to("cpu")
    assert as_float.x_support.dtype == torch.get_default_dtype()
    torch.testing.assert_close(as_float.x_support, batch.x_support.float() / 255, rtol=0, atol=0)
    as_double = batch.to("cpu", torch.float64)
    assert as_double.x_query.dtype == torch.float64
    assert as_double.x_query.min() >= 0 and as_double.x_query.max() <= 1
    assert torch.equal(as_double.y_query, batch.y_query)


def test_to_leaves_float_images_alone() -> None:
    x = torch.rand(2, 5, 1, 4, 4)
    y = torch.zeros(2, 5, dtype=torch.long)
    batch = TaskBatch(x, y, x, y)
    assert batch.to("cpu").x_support is x  # no copy, no rescaling
    assert torch.equal(batch.to("cpu", torch.float64).x_query, x.double())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_through_pinned_memory_matches_cpu() -> None:
    split = uint8_split(5, 4, seed=6)
    batch = TaskSampler(split, 5, 1, 3).sample(3, np.random.default_rng(0))
    on_gpu = batch.to("cuda", torch.float32)
    assert on_gpu.x_support.device.type == "cuda"
    torch.testing.assert_close(on_gpu.x_support.cpu(), batch.to("cpu").x_support, rtol=0, atol=0)
    torch.testing.assert_close(on_gpu.x_query.cpu(), batch.to("cpu").x_query, rtol=0, atol=0)


def test_tasks_drawn_in_chunks_equal_tasks_drawn_at_once() -> None:
    """So an evaluation can draw its tasks chunk by chunk (holding one chunk of pixels, not 600
    tasks' worth) and still score the very same tasks."""
    sampler = TaskSampler(uint8_split(8, 12, seed=7), 5, 2, 4)
    whole = sampler.sample(7, np.random.default_rng(3))
    chunks = list(sampler.chunks(7, np.random.default_rng(3), 3))
    assert [c.num_tasks for c in chunks] == [3, 3, 1]
    for i, field in enumerate(whole):
        assert torch.equal(field, torch.cat([c[i] for c in chunks]))
    with pytest.raises(ValueError, match="size: got 0"):
        next(sampler.chunks(7, np.random.default_rng(3), 0))
