"""The MNIST, Omniglot and miniImageNet loaders, on tiny files in the real formats.

No dataset can be downloaded here, so each test writes a few images laid out
exactly as the official releases are (IDX headers, PNG tree, csv + JPEG) and
checks what the loaders make of them.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gs_tune.data import FewShotDataset, TaskSampler, load_dataset
from gs_tune.data.miniimagenet import cache_path, load_miniimagenet
from gs_tune.data.mnist import load_mnist
from gs_tune.data.omniglot import load_omniglot, split_sizes
from gs_tune.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


def assert_images(ds: FewShotDataset, shape: tuple[int, int, int]) -> None:
    for s in SPLIT_NAMES:
        split = ds.split(s)
        assert split.images.dtype == np.float32 and split.images.shape[1:] == shape
        assert split.images.min() >= 0.0 and split.images.max() <= 1.0
        assert set(np.unique(split.labels)) == set(range(split.num_classes))


def sample_one(ds: FewShotDataset, ways: int, shots: int, query: int) -> None:
    batch = TaskSampler(ds.train, ways, shots, query).sample(2, np.random.default_rng(0))
    assert batch.x_support.shape == (2, ways * shots, *ds.image_shape)
    assert batch.x_query.shape == (2, ways * query, *ds.image_shape)


# ---------------------------------------------------------------- MNIST


def write_idx(path: Path, data: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, data.ndim]) + np.array(data.shape, dtype=">i4").tobytes()
    raw = header + data.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_mnist(root: Path, gz: bool, per_digit: tuple[int, int] = (3, 2)) -> np.ndarray:
    """Constant images whose value is the example's pooled index, so the kept ones are traceable."""
    index = 0
    for part, n in zip(("train", "t10k"), per_digit):
        labels = np.repeat(np.arange(10), n)
        images = np.empty((len(labels), 28, 28), dtype=np.uint8)
        for i in range(len(labels)):
            images[i] = index
            index += 1
        write_idx(root / f"{part}-images-idx3-ubyte", images, gz)
        write_idx(root / f"{part}-labels-idx1-ubyte", labels, gz)
    return np.concatenate([np.repeat(np.arange(10), n) for n in per_digit])


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
            kept = {round(v * 255) for v in split.images[split.labels == c, 0, 0, 0]}
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
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_mnist(str(tmp_path))


def test_mnist_wrong_magic(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    # an images file where a labels file belongs
    (tmp_path / "train-labels-idx1-ubyte").write_bytes((tmp_path / "train-images-idx3-ubyte").read_bytes())
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*magic number 2051"):
        load_mnist(str(tmp_path))


def test_mnist_truncated_and_corrupt_gz(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        load_mnist(str(tmp_path))
    path.unlink()
    Path(str(path) + ".gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_mnist(str(tmp_path))


# ---------------------------------------------------------------- Omniglot

OMNIGLOT_TREE = {
    "images_background": {"Latin": 3, "Greek": 2},
    "images_evaluation": {"Tengwar": 3},
}


def write_omniglot(root: Path, tree: dict[str, dict[str, int]], drawers: int = 5) -> int:
    """Black-on-white 105×105 1-bit PNGs like the release's; returns the number of characters."""
    rng = np.random.default_rng(0)
    count = 0
    for top, alphabets in tree.items():
        for alphabet, n_chars in alphabets.items():
            for c in range(1, n_chars + 1):
                folder = root / top / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                count += 1
                for d in range(1, drawers + 1):
                    img = Image.new("1", (105, 105), 1)
                    # an asymmetric stroke so rotations differ
                    x0, y0 = rng.integers(10, 40, size=2)
                    ImageDraw.Draw(img).line(
                        [(x0, y0), (x0 + 50, y0 + 10), (x0 + 10, y0 + 60)], fill=0, width=6
                    )
                    img.save(folder / f"{count:04d}_{d:02d}.png")
    return count


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
    # thin strokes on a page: ink (1) is the minority, paper (0) the corners
    assert train.images.mean() < 0.4 and train.images.max() > 0.9
    assert np.all(train.images[:, 0, 0, 0] < 0.05)
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
    with pytest.raises(DataError, match=bad.name):
        load_omniglot(str(tmp_path))


# ---------------------------------------------------------------- miniImageNet

MINI_CLASSES = {
    "train": ["n01", "n02", "n03", "n04", "n05"],
    "val": ["n06", "n07"],
    "test": ["n08", "n09", "n10"],
}
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def write_mini(root: Path, per_class: int = 4) -> None:
    """Solid-colour JPEGs (colour = class within split), some not square-sized, as in the real csvs."""
    (root / "images").mkdir(parents=True)
    for split, classes in MINI_CLASSES.items():
        lines = ["filename,label"]
        for ci, label in enumerate(classes):
            for j in range(per_class):
                name = f"{label}{j:08d}.jpg"
                Image.new("RGB", (16, 16) if j % 2 else (30, 22), COLORS[ci]).save(root / "images" / name)
                lines.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


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
            np.testing.assert_allclose(mean, np.array(COLORS[c]) / 255.0, atol=0.03)
    names = [set(ds.split(s).class_names) for s in SPLIT_NAMES]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    sample_one(ds, ways=5, shots=1, query=3)


def test_miniimagenet_cache_reuse_and_invalidation(tmp_path: Path) -> None:
    write_mini(tmp_path)
    first = load_miniimagenet(str(tmp_path), size=16)
    cache = cache_path(tmp_path, 16)
    assert cache.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with np.load(cache) as data:
        assert data["train_images"].dtype == np.uint8
    # with the JPEGs gone, only the cache can answer
    image = tmp_path / "images" / "n0100000000.jpg"
    image.unlink()
    second = load_miniimagenet(str(tmp_path), size=16)
    for s in SPLIT_NAMES:
        np.testing.assert_array_equal(second.split(s).images, first.split(s).images)
        np.testing.assert_array_equal(second.split(s).labels, first.split(s).labels)
        assert second.split(s).class_names == first.split(s).class_names
    # a csv edited after the cache was written makes it stale, so the images are read again
    later = cache.stat().st_mtime + 10
    os.utime(tmp_path / "val.csv", (later, later))
    with pytest.raises(DataError, match="n0100000000.jpg"):
        load_miniimagenet(str(tmp_path), size=16)


def test_miniimagenet_cache_per_size(tmp_path: Path) -> None:
    write_mini(tmp_path)
    assert load_dataset("miniimagenet", str(tmp_path)).image_shape == (3, 84, 84)
    assert load_miniimagenet(str(tmp_path), size=8).image_shape == (3, 8, 8)
    assert cache_path(tmp_path, 84).is_file() and cache_path(tmp_path, 8).is_file()


def test_miniimagenet_errors(tmp_path: Path) -> None:
    write_mini(tmp_path)
    (tmp_path / "val.csv").rename(tmp_path / "val.bak")
    with pytest.raises(DataError, match="val.csv"):
        load_miniimagenet(str(tmp_path), size=16)
    (tmp_path / "val.bak").rename(tmp_path / "val.csv")
    (tmp_path / "images" / "n0700000002.jpg").unlink()
    with pytest.raises(DataError, match="n0700000002.jpg"):
        load_miniimagenet(str(tmp_path), size=16)
    (tmp_path / "test.csv").write_text("filename,label\nn0100000000.jpg,n01\n")
    with pytest.raises(DataError, match="'n01' is in both train.csv and test.csv"):
        load_miniimagenet(str(tmp_path), size=16)
    (tmp_path / "test.csv").write_text("file,class\nn0100000000.jpg,n11\n")
    with pytest.raises(DataError, match="test.csv must start with the header"):
        load_miniimagenet(str(tmp_path), size=16)
