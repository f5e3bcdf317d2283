"""The digits symmetry dataset and the task sampler.

The near-duplicate table is a hard-coded result of a rule; recomputing it here
keeps the two from drifting apart if the rule or its threshold changes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gs_tune.data import ClassSplit, FewShotDataset, TaskSampler
from gs_tune.data.digits import (
    DIGIT_SPLITS,
    NEAR_DUPLICATES,
    TRANSFORMS,
    load_digits_dataset,
    near_duplicate_transforms,
)
from gs_tune.errors import DataError


@pytest.fixture(scope="module")
def digits() -> FewShotDataset:
    return load_digits_dataset()


@pytest.mark.parametrize("digit", range(10))
def test_near_duplicates_table_matches_rule(digit: int) -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = raw.images[raw.target == digit].astype(np.float32) / 16.0
    assert near_duplicate_transforms(images) == NEAR_DUPLICATES.get(digit, ())


def test_class_counts(digits: FewShotDataset) -> None:
    counts = {s: digits.split(s).num_classes for s in ("train", "val", "test")}
    assert counts == {"train": 24, "val": 20, "test": 20}
    assert sum(counts.values()) == 64
    assert counts["val"] >= 20 and counts["test"] >= 20
    # every kept transform of every digit is a class, and no dropped one is
    for s, ds in DIGIT_SPLITS.items():
        expected = {f"{d}_{t}" for d in ds for t in TRANSFORMS if t not in NEAR_DUPLICATES.get(d, ())}
        assert set(digits.split(s).class_names) == expected


def test_splits_disjoint_by_digit(digits: FewShotDataset) -> None:
    def digits_of(split: str) -> set[str]:
        return {name.split("_")[0] for name in digits.split(split).class_names}

    train, val, test = digits_of("train"), digits_of("val"), digits_of("test")
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == {str(d) for d in range(10)}


def test_images_shape_and_range(digits: FewShotDataset) -> None:
    assert digits.image_shape == (1, 28, 28)
    for s in ("train", "val", "test"):
        split = digits.split(s)
        assert split.images.dtype == np.float32 and split.images.shape[1:] == (1, 28, 28)
        assert split.images.min() >= 0.0 and split.images.max() <= 1.0
        assert split.labels.dtype == np.int64
        assert set(np.unique(split.labels)) == set(range(split.num_classes))


def test_sampler_same_seed_same_tasks(digits: FewShotDataset) -> None:
    sampler = TaskSampler(digits.train, ways=5, shots=1, query=3)
    a = sampler.sample(4, np.random.default_rng(7))
    b = sampler.sample(4, np.random.default_rng(7))
    c = sampler.sample(4, np.random.default_rng(8))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a.x_support, c.x_support) or not torch.equal(a.x_query, c.x_query)


def test_sampler_labels_and_disjoint_support_query(digits: FewShotDataset) -> None:
    ways, shots, query, tasks = 5, 2, 3, 6
    batch = TaskSampler(digits.val, ways=ways, shots=shots, query=query, split_name="val").sample(
        tasks, np.random.default_rng(0)
    )
    assert batch.num_tasks == tasks
    assert batch.x_support.shape == (tasks, ways * shots, 1, 28, 28)
    assert batch.x_query.shape == (tasks, ways * query, 1, 28, 28)
    for t in range(tasks):
        ys, yq = batch.y_support[t].numpy(), batch.y_query[t].numpy()
        assert all((ys == c).sum() == shots for c in range(ways))
        assert all((yq == c).sum() == query for c in range(ways))


def test_sampler_support_query_disjoint_and_class_consistent(digits: FewShotDataset) -> None:
    # digits may hold pixel-identical examples, so each image is replaced by its own index to
    # make "the same example" checkable
    val = digits.val
    ids = ClassSplit(
        np.arange(len(val.labels), dtype=np.float32)[:, None, None, None], val.labels, val.class_names
    )
    ways, shots, query, tasks = 5, 3, 4, 20
    batch = TaskSampler(ids, ways, shots, query).sample(tasks, np.random.default_rng(1))
    for t in range(tasks):
        s_ids = batch.x_support[t].flatten().long().numpy()
        q_ids = batch.x_query[t].flatten().long().numpy()
        assert len(set(s_ids) | set(q_ids)) == ways * (shots + query)
        classes = []
        for label in range(ways):
            # every example under one task label comes from one class, and different labels
            # from different classes
            owners = set(val.labels[s_ids[batch.y_support[t].numpy() == label]])
            owners |= set(val.labels[q_ids[batch.y_query[t].numpy() == label]])
            assert len(owners) == 1
            classes.append(owners.pop())
        assert len(set(classes)) == ways


def test_sampler_rejects_impossible_tasks(digits: FewShotDataset) -> None:
    with pytest.raises(DataError, match="ways"):
        TaskSampler(digits.test, ways=digits.test.num_classes + 1, shots=1, query=1, split_name="test")
    smallest = min(len(ix) for ix in digits.test.class_indices())
    with pytest.raises(DataError, match="shots \\+ query"):
        TaskSampler(digits.test, ways=5, shots=smallest, query=1, split_name="test")
    TaskSampler(digits.test, ways=digits.test.num_classes, shots=smallest - 1, query=1)


def test_meta_train_splits(digits: FewShotDataset) -> None:
    assert digits.meta_train("train") is digits.train
    both = digits.meta_train("train+val")
    # joined in place: the splits themselves, no concatenated copy of their images
    assert both.parts[0] is digits.train and both.parts[1] is digits.val and not hasattr(both, "images")
    assert both.class_names == digits.train.class_names + digits.val.class_names
    assert len(both.labels) == len(digits.train.labels) + len(digits.val.labels)
    # each joined class holds exactly the images of the class of that name in its own split
    for c, (name, rows) in enumerate(zip(both.class_names, both.class_indices())):
        split = digits.train if c < digits.train.num_classes else digits.val
        own = split.images[split.labels == split.class_names.index(name)]
        assert np.array_equal(both.take(rows), own)
        assert np.all(both.labels[rows] == c)
    with pytest.raises(DataError, match="meta_train_splits.*allowed: train, train\\+val"):
        digits.meta_train("test")
