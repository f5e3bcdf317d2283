"""Tiny dataset files in the real release formats, for the loader and cache tests.

No dataset can be downloaded here, so each writer lays a few images out exactly as the official
releases are: MNIST's IDX (optionally gzipped), Omniglot's PNG tree or its two zips, and
miniImageNet's csv + JPEG layout or the shared pickles.
"""

from __future__ import annotations

import gzip
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPLIT_NAMES = ("train", "val", "test")


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


def zip_omniglot(root: Path, out: Path) -> None:
    """The release's images_background.zip / images_evaluation.zip (with a macOS resource entry,
    which the loader must skip) from an unzipped tree under ``root``."""
    out.mkdir(parents=True, exist_ok=True)
    for top in sorted(p for p in root.iterdir() if p.is_dir()):
        with zipfile.ZipFile(out / f"{top.name}.zip", "w") as z:
            for png in sorted(top.rglob("*.png")):
                z.write(png, png.relative_to(root).as_posix())
            z.writestr(f"__MACOSX/{top.name}/._junk.png", b"\0\5\26\7")


MINI_CLASSES = {
    "train": ["n01", "n02", "n03", "n04", "n05"],
    "val": ["n06", "n07"],
    "test": ["n08", "n09", "n10"],
}
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def write_mini(root: Path, per_class: int = 4, classes_of: dict[str, list[str]] = MINI_CLASSES) -> None:
    """Solid-colour JPEGs (colour = class within split), some not square, and the three csvs."""
    (root / "images").mkdir(parents=True)
    for split, classes in classes_of.items():
        lines = ["filename,label"]
        for ci, label in enumerate(classes):
            for j in range(per_class):
                name = f"{label}{j:08d}.jpg"
                Image.new("RGB", (16, 16) if j % 2 else (30, 22), COLORS[ci]).save(root / "images" / name)
                lines.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def write_mini_pickles(root: Path, size: int = 84, per_class: int = 3, protocol: int = 4) -> None:
    """mini-imagenet-cache-<split>.pkl: {"image_data": uint8 [N, H, W, 3], "class_dict": label ->
    rows}, rows interleaved across classes; pixel value = 10·class + example within the split."""
    root.mkdir(parents=True, exist_ok=True)
    for split, classes in MINI_CLASSES.items():
        n = len(classes) * per_class
        image_data = np.empty((n, size, size, 3), dtype=np.uint8)
        class_dict: dict[str, list[int]] = {c: [] for c in classes}
        for row in range(n):
            ci, j = row % len(classes), row // len(classes)
            image_data[row] = 10 * ci + j
            class_dict[classes[ci]].append(row)
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": image_data, "class_dict": class_dict}, f, protocol=protocol)
