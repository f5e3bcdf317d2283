"""miniImageNet (Vinyals et al. 2016) with the split of Ravi & Larochelle (2017).

Files, in ``root``: ``train.csv``, ``val.csv`` and ``test.csv``, each with the
header ``filename,label`` and one image per row, and the JPEGs themselves in
``root/images/<filename>``. The classes of a split are the distinct labels of
its csv (64 / 16 / 20 in the real set, 600 images each), ordered by label
name so class indices do not depend on row order; a label in two csvs is an
error, since the splits must be class-disjoint. Images are converted to RGB and
resized to ``size``×``size`` (bilinear; the real files are already 84×84).

The pickles many projects share instead (``mini-imagenet-cache-{train,val,test}.pkl``, a dict
with ``image_data``, uint8 [N, 84, 84, 3], and ``class_dict``, label → row indices) are read
only when asked (``gs-tune data prepare --allow-pickle``): unpickling a file can run any code it
names. Even then only numpy arrays, lists and dicts are let through (:mod:`gs_tune.data.pickles`).
The csv layout wins when both are present.

Decoding 60,000 JPEGs takes minutes, so the result is cached as uint8 (1.27 GB; float32 would be
5.1 GB per process) and memory-mapped by every process (:mod:`gs_tune.data.cache`).
"""

from __future__ import annotations

import csv
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from gs_tune.data.cache import Source, fingerprint, load_or_build
from gs_tune.data.images import read_image
from gs_tune.data.pickles import load_numpy_pickle
from gs_tune.data.tasks import SPLITS, ClassSplit, FewShotDataset
from gs_tune.errors import DataError

HEADER = ["filename", "label"]
PICKLE_NAME = "mini-imagenet-cache-{}.pkl"
MISSING_IMAGE = "miniimagenet: image {} listed in the split csv not found"


def read_csv(path: Path) -> list[tuple[str, str]]:
    """(filename, label) rows of one split csv."""
    if not path.is_file():
        raise DataError(
            f"miniimagenet: split file {path} not found; expected {', '.join(s + '.csv' for s in SPLITS)} "
            f"with header 'filename,label' and the JPEGs in {path.parent / 'images'}"
        )
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows or [c.strip() for c in rows[0]] != HEADER:
        raise DataError(f"miniimagenet: {path} must start with the header 'filename,label'")
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"miniimagenet: {path} line {i} is {row!r}; expected 'filename,label'")
    if len(rows) == 1:
        raise DataError(f"miniimagenet: {path} lists no images")
    return [(r[0].strip(), r[1].strip()) for r in rows[1:]]


def _check_disjoint(labels: dict[str, set[str]], suffix: str) -> None:
    seen: dict[str, str] = {}
    for split, names in labels.items():
        for label in sorted(names):
            if label in seen:
                raise DataError(f"miniimagenet: label {label!r} is in both {seen[label]}{suffix} and {split}{suffix}")
            seen[label] = split


def _load_jpeg(path: Path, size: int) -> np.ndarray:
    if not path.is_file():  # removed since the source was fingerprinted
        raise DataError(MISSING_IMAGE.format(path))
    return read_image(path, "RGB", size, Image.Resampling.BILINEAR, "miniimagenet").transpose(2, 0, 1)


def _decode_split(root: Path, rows: list[tuple[str, str]], size: int) -> ClassSplit:
    classes = sorted({label for _, label in rows})
    index = {c: i for i, c in enumerate(classes)}
    paths = [root / "images" / name for name, _ in rows]
    # PIL releases the GIL while decoding, so threads give a real speed-up
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = np.stack(list(pool.map(lambda p: _load_jpeg(p, size), paths)))
    labels = np.array([index[label] for _, label in rows], dtype=np.int64)
    return ClassSplit(images, labels, tuple(classes))


def _csv_source(base: Path, size: int) -> Source:
    csvs = [base / f"{s}.csv" for s in SPLITS]
    split_rows = {s: read_csv(p) for s, p in zip(SPLITS, csvs)}
    _check_disjoint({s: {label for _, label in rows} for s, rows in split_rows.items()}, ".csv")
    images = ["images/" + name for rows in split_rows.values() for name, _ in rows]
    csv_bytes = hashlib.blake2b(b"".join(p.read_bytes() for p in csvs)).digest()

    def decode() -> FewShotDataset:
        splits = {s: _decode_split(base, rows, size) for s, rows in split_rows.items()}
        return FewShotDataset("miniimagenet", splits["train"], splits["val"], splits["test"])

    files_hash = fingerprint(base, images, extra=csv_bytes, missing=MISSING_IMAGE)
    return Source("miniimagenet", base, "csv", files_hash, decode, params={"size": size}, items=len(images))


def _pickle_split(path: Path, size: int) -> ClassSplit:
    data = load_numpy_pickle(path, "miniimagenet")
    images, class_dict = data.get("image_data"), data.get("class_dict")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DataError(f"miniimagenet: {path} 'image_data' must be a uint8 [N, H, W, 3] array")
    if not isinstance(class_dict, dict) or not class_dict:
        raise DataError(f"miniimagenet: {path} 'class_dict' must map each label to its row indices")
    classes = sorted(str(c) for c in class_dict)
    rows, labels = [], []
    for label, name in enumerate(classes):
        ix = np.asarray(class_dict.get(name, class_dict.get(name.encode(), [])), dtype=np.int64).ravel()
        if ix.size == 0 or ix.min() < 0 or ix.max() >= len(images):
            raise DataError(f"miniimagenet: {path} class {name!r} has no rows or rows outside 0..{len(images) - 1}")
        rows.append(ix)
        labels.append(np.full(len(ix), label, dtype=np.int64))
    picked = images[np.concatenate(rows)]
    if picked.shape[1:3] != (size, size):
        picked = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR))
                           for im in picked])
    return ClassSplit(np.ascontiguousarray(picked.transpose(0, 3, 1, 2)), np.concatenate(labels), tuple(classes))


def _pickle_source(base: Path, size: int, allow_pickle: bool) -> Source:
    paths = [base / PICKLE_NAME.format(s) for s in SPLITS]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"miniimagenet: found {PICKLE_NAME.format('*')} in {base} but not {', '.join(missing)}")

    def decode() -> FewShotDataset:
        if not allow_pickle:
            raise DataError(
                f"miniimagenet: {base} holds the pickle cache, not train/val/test.csv; unpickling can run "
                f"code, so it is read only with: gs-tune data prepare --dataset miniimagenet "
                f"--data-root {base} --allow-pickle"
            )
        splits = {s: _pickle_split(p, size) for s, p in zip(SPLITS, paths)}
        _check_disjoint({s: set(split.class_names) for s, split in splits.items()}, ".pkl")
        return FewShotDataset("miniimagenet", splits["train"], splits["val"], splits["test"])

    # the fingerprint needs only the files' sizes and dates, so a cache built with --allow-pickle
    # is used by later loads without unpickling anything
    return Source("miniimagenet", base, "pickle", fingerprint(base, paths), decode,
                  params={"size": size}, items=len(paths))


def miniimagenet_source(root: str, size: int = 84, allow_pickle: bool = False) -> Source:
    """The Ravi & Larochelle csv layout in ``root`` (every listed image checked present), else the
    shared pickles (decoded only with ``allow_pickle``)."""
    if size < 1:
        raise DataError(f"miniimagenet: size must be >= 1, got {size}")
    base = Path(root)
    has_csv = any((base / f"{s}.csv").exists() for s in SPLITS)
    if not has_csv and any((base / PICKLE_NAME.format(s)).is_file() for s in SPLITS):
        return _pickle_source(base, size, allow_pickle)
    return _csv_source(base, size)


def load_miniimagenet(root: str, size: int = 84) -> FewShotDataset:
    """miniImageNet's 64/16/20 classes, uint8 RGB from the cache (built on first use)."""
    return load_or_build(miniimagenet_source(root, size)).dataset
