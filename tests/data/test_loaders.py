"""The MNIST, Omniglot and miniImageNet loaders, on tiny files in the real formats.

No dataset can be downloaded here, so each test writes a few images laid out
exactly as the official releases are (IDX headers, PNG tree or zips, csv + JPEG,
the shared pickles; see dataset_files.py) and checks what the loaders make of them.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import (
    COLORS,
    MINI_CLASSES,
    OMNIGLOT_TREE,
    SPLIT_NAMES,
    write_mini,
    write_mini_pickles,
    write_mnist,
    write_omniglot,
    zip_omniglot,
)

from gs_tune.data import FewShotDataset, TaskSampler, load_dataset
from gs_tune.data.miniimagenet import load_miniimagenet, miniimagenet_source
from gs_tune.data.mnist import load_mnist
from gs_tune.data.omniglot import load_omniglot, split_sizes
from gs_tune.data.prepare import prepare
from gs_tune.errors import DataError


def assert_images(ds: FewShotDataset, shape: tuple[int, int, int]) -> None:
    for s in SPLIT_NAMES:
        split = ds.split(s)
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == shape
        assert isinstance(split.images, np.memmap)  # read from the cache, not a private copy
        assert set(np.unique(split.labels)) == set(range(split.num_classes))


def sample_one(ds: FewShotDataset, ways: int, shots: int, query: int) -> None:
    batch = TaskSampler(ds.train, ways, shots, query).sample(2, np.random.default_rng(0)).to("cpu")
    assert batch.x_support.shape == (2, ways * shots, *ds.image_shape)
    assert batch.x_query.shape == (2, ways * query, *ds.image_shape)
    assert batch.x_support.dtype == torch.float32 and 0 <= batch.x_support.min() <= batch.x_support.max() <= 1


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loads(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz)
    ds = load_mnist(str(tmp_path))
    assert_images(ds, (1, 28, 28))
    assert [ds.split(s).num_classes for s in SPLIT_NAMES] == [24, 20, 20]
    for s in SPLIT_NAMES:
        assert all(len(ix) == 5 for ix in ds.split(s).class_indices())  # train + test pooled
    sample_one(ds, ways=5, shots=1, query=4)


def test_mnist_keeps_first_examples_per_digit(tmp_path: Path) -> None:
    labels = write_mnist(tmp_path, gz=False, per_digit=(3, 2))
    ds = load_mnist(str(tmp_path), max_per_class=4)
    first4 = {d: set(np.flatnonzero(labels == d)[:4]) for d in range(10)}
    for s in SPLIT_NAMES:
        split = ds.split(s)
        for c, name in enumerate(split.class_names):
            kept = {int(v) for v in split.images[split.labels == c, 0, 0, 0]}  # pixels kept exactly
            assert kept == first4[int(name.split("_")[0])]


def test_mnist_via_load_dataset(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    assert load_dataset("mnist", str(tmp_path)).name == "mnist"


def test_mnist_accepts_dotted_names(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    for p in tmp_path.iterdir():
        p.rename(p.with_name(p.name.replace("-idx", ".idx")))
    assert load_mnist(str(tmp_path)).train.num_classes == 24


def test_mnist_missing_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as error:
        load_mnist(str(tmp_path))
    one_line(error)


def test_mnist_wrong_magic(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    # an images file where a labels file belongs
    (tmp_path / "train-labels-idx1-ubyte").write_bytes((tmp_path / "train-images-idx3-ubyte").read_bytes())
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*magic number 2051"):
        load_mnist(str(tmp_path))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_truncated_idx_is_one_line(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=name) as error:
        prepare("mnist", str(tmp_path))
    message = one_line(error)
    assert ("truncated" in message) if not gz else ("cannot read" in message)


def test_mnist_corrupt_gz(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.unlink()
    Path(str(path) + ".gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz") as error:
        load_mnist(str(tmp_path))
    one_line(error)


# ---------------------------------------------------------------- Omniglot


def characters_of(ds: FewShotDataset, split: str) -> set[str]:
    return {name.rsplit("/", 1)[0] for name in ds.split(split).class_names}


def test_omniglot_loads(tmp_path: Path) -> None:
    n = write_omniglot(tmp_path, OMNIGLOT_TREE)
    ds = load_omniglot(str(tmp_path))
    assert_images(ds, (1, 28, 28))
    sizes = split_sizes(n)
    assert all(size >= 1 for size in sizes) and sum(sizes) == n
    chars = [characters_of(ds, s) for s in SPLIT_NAMES]
    assert [len(c) for c in chars] == list(sizes)
    assert not (chars[0] & chars[1]) and not (chars[0] & chars[2]) and not (chars[1] & chars[2])
    for s, size in zip(SPLIT_NAMES, sizes):
        split = ds.split(s)
        assert split.num_classes == 4 * size  # every rotation of a character stays in its split
        assert all(len(ix) == 5 for ix in split.class_indices())
    sample_one(ds, ways=5, shots=1, query=4)


def test_omniglot_ink_rotations_and_determinism(tmp_path: Path) -> None:
    write_omniglot(tmp_path, OMNIGLOT_TREE)
    ds = load_omniglot(str(tmp_path), size=20)
    assert ds.image_shape == (1, 20, 20)
    train = ds.train
    # thin strokes on a page: ink (255) is the minority, paper (0) the corners
    assert train.images.mean() < 0.4 * 255 and train.images.max() > 0.9 * 255
    assert np.all(train.images[:, 0, 0, 0] < 0.05 * 255)
    names = list(train.class_names)
    base = names[0].rsplit("/", 1)[0]
    rot0 = train.images[train.labels == names.index(f"{base}/rot0")]
    for k, deg in enumerate((90, 180, 270), start=1):
        rotated = train.images[train.labels == names.index(f"{base}/rot{deg}")]
        np.testing.assert_array_equal(rotated, np.rot90(rot0, k, axes=(-2, -1)))
    again = load_omniglot(str(tmp_path), size=20)
    for s in SPLIT_NAMES:
        assert again.split(s).class_names == ds.split(s).class_names
        np.testing.assert_array_equal(again.split(s).images, ds.split(s).images)


def test_omniglot_release_zips_equal_the_unzipped_tree(tmp_path: Path) -> None:
    write_omniglot(tmp_path / "tree", OMNIGLOT_TREE)
    zip_omniglot(tmp_path / "tree", tmp_path / "zips")
    from_tree = load_omniglot(str(tmp_path / "tree"))
    from_zips = prepare("omniglot", str(tmp_path / "zips"))
    assert from_zips.source.kind == "zip"
    for s in SPLIT_NAMES:
        assert from_zips.opened.dataset.split(s).class_names == from_tree.split(s).class_names
        np.testing.assert_array_equal(from_zips.opened.dataset.split(s).images, from_tree.split(s).images)


def test_omniglot_corrupt_png_in_zip_is_one_line(tmp_path: Path) -> None:
    write_omniglot(tmp_path / "tree", {"images_background": {"Latin": 3}}, drawers=2)
    bad = next((tmp_path / "tree" / "images_background" / "Latin" / "character02").glob("*.png"))
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but the rest is gone")
    zip_omniglot(tmp_path / "tree", tmp_path / "zips")
    with pytest.raises(DataError, match=f"images_background.zip:.*{bad.name}") as error:
        load_omniglot(str(tmp_path / "zips"))
    one_line(error)
    (tmp_path / "zips" / "images_background.zip").write_bytes(b"PK but not a zip")
    with pytest.raises(DataError, match="images_background.zip is not a readable zip") as error:
        load_omniglot(str(tmp_path / "zips"))
    one_line(error)


def test_omniglot_split_sizes_standard() -> None:
    assert split_sizes(1623) == (1200, 100, 323)
    assert split_sizes(3) == (1, 1, 1)
    with pytest.raises(DataError):
        split_sizes(2)


def test_omniglot_evaluation_only_and_load_dataset(tmp_path: Path) -> None:
    write_omniglot(tmp_path, {"images_evaluation": {"Tengwar": 4}}, drawers=3)
    ds = load_dataset("omniglot", str(tmp_path))
    assert sum(ds.split(s).num_classes for s in SPLIT_NAMES) == 16


def test_omniglot_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="images_background"):
        load_omniglot(str(tmp_path))
    (tmp_path / "images_background" / "Latin" / "character01").mkdir(parents=True)
    with pytest.raises(DataError, match="no character folders"):
        load_omniglot(str(tmp_path))
    write_omniglot(tmp_path, {"images_evaluation": {"Greek": 3}}, drawers=2)
    bad = next((tmp_path / "images_evaluation" / "Greek" / "character02").glob("*.png"))
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=bad.name) as error:
        load_omniglot(str(tmp_path))
    one_line(error)


# ---------------------------------------------------------------- miniImageNet


def test_miniimagenet_loads(tmp_path: Path) -> None:
    write_mini(tmp_path)
    ds = load_miniimagenet(str(tmp_path), size=16)
    assert_images(ds, (3, 16, 16))
    for s in SPLIT_NAMES:
        split = ds.split(s)
        assert split.class_names == tuple(MINI_CLASSES[s])
        assert all(len(ix) == 4 for ix in split.class_indices())
        # solid colours survive JPEG and resizing closely, and land on the right label
        for c in range(split.num_classes):
            mean = split.images[split.labels == c].mean(axis=(0, 2, 3))
            np.testing.assert_allclose(mean, np.array(COLORS[c]), atol=0.03 * 255)
    names = [set(ds.split(s).class_names) for s in SPLIT_NAMES]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    sample_one(ds, ways=5, shots=1, query=3)


def test_miniimagenet_cache_per_size(tmp_path: Path) -> None:
    write_mini(tmp_path)
    assert load_dataset("miniimagenet", str(tmp_path)).image_shape == (3, 84, 84)
    assert load_miniimagenet(str(tmp_path), size=8).image_shape == (3, 8, 8)
    caches = sorted(p.name for p in (tmp_path / "gs_tune_cache").iterdir())
    assert caches == ["miniimagenet-size8", "miniimagenet-size84"]


def test_miniimagenet_errors(tmp_path: Path) -> None:
    write_mini(tmp_path)
    (tmp_path / "val.csv").rename(tmp_path / "val.bak")
    with pytest.raises(DataError, match="val.csv") as error:
        load_miniimagenet(str(tmp_path), size=16)
    one_line(error)
    (tmp_path / "val.bak").rename(tmp_path / "val.csv")
    (tmp_path / "images" / "n0700000002.jpg").unlink()
    with pytest.raises(DataError, match="n0700000002.jpg listed in the split csv not found"):
        load_miniimagenet(str(tmp_path), size=16)
    (tmp_path / "test.csv").write_text("filename,label\nn0100000000.jpg,n01\n")
    with pytest.raises(DataError, match="'n01' is in both train.csv and test.csv"):
        load_miniimagenet(str(tmp_path), size=16)
    (tmp_path / "test.csv").write_text("file,class\nn0100000000.jpg,n11\n")
    with pytest.raises(DataError, match="test.csv must start with the header"):
        load_miniimagenet(str(tmp_path), size=16)


def test_miniimagenet_corrupt_jpeg_is_one_line(tmp_path: Path) -> None:
    write_mini(tmp_path)
    bad = tmp_path / "images" / "n0600000001.jpg"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(DataError, match="n0600000001.jpg") as error:
        prepare("miniimagenet", str(tmp_path))
    assert one_line(error).startswith("miniimagenet: cannot read image")
    assert not list((tmp_path / "gs_tune_cache").rglob("*.npy"))  # nothing half-written


@pytest.mark.parametrize("protocol", [2, 5])
def test_miniimagenet_pickles_only_with_allow_pickle(tmp_path: Path, protocol: int) -> None:
    write_mini_pickles(tmp_path, protocol=protocol)  # 84×84, the size of the real pickles
    with pytest.raises(DataError, match="--allow-pickle") as error:
        load_miniimagenet(str(tmp_path))
    one_line(error)
    done = prepare("miniimagenet", str(tmp_path / "."), allow_pickle=True)
    assert done.source.kind == "pickle" and done.opened.built
    ds = done.opened.dataset
    for s in SPLIT_NAMES:
        split = ds.split(s)
        assert split.class_names == tuple(MINI_CLASSES[s]) and split.image_shape == (3, 84, 84)
        for c in range(split.num_classes):
            # each class's rows carry its own pixel values 10·c + j
            assert set(np.unique(split.images[split.labels == c])) == {10 * c + j for j in range(3)}
    # the cache built with --allow-pickle serves later loads without unpickling anything
    again = load_miniimagenet(str(tmp_path))
    np.testing.assert_array_equal(again.train.images, ds.train.images)


def test_miniimagenet_pickle_with_code_is_refused(tmp_path: Path) -> None:
    write_mini_pickles(tmp_path)

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "mini-imagenet-cache-val.pkl").write_bytes(pickle.dumps({"image_data": Exploit()}))
    with pytest.raises(DataError, match="refused to unpickle .*builtins.print") as error:
        prepare("miniimagenet", str(tmp_path), allow_pickle=True)
    one_line(error)


def test_miniimagenet_csv_wins_over_pickles(tmp_path: Path) -> None:
    write_mini(tmp_path)
    write_mini_pickles(tmp_path)
    assert miniimagenet_source(str(tmp_path)).kind == "csv"
