"""miniImageNet in the format of Ravi & Larochelle (2017), with a uint8 cache.

Files, in ``root``: ``train.csv``, ``val.csv`` and ``test.csv``, each with the
header ``filename,label`` and one image per row, and the JPEGs themselves in
``root/images/<filename>``. The classes of a split are the distinct labels of
its csv (64 / 16 / 20 in the real set, 600 images each), ordered by label
name so class indices do not depend on row order; a label in two csvs is an
error, since the splits must be class-disjoint. Images are converted to RGB,
resized to ``size``×``size`` (bilinear; the real files are already 84×84) and
returned as float32 [N, 3, size, size] in [0, 1].

Cache. Decoding 60,000 JPEGs takes minutes, so the first load writes
``root/gs_tune_cache_<size>.npz`` and later loads read it while it is newer
than all three csvs (editing a csv invalidates it). The cache holds uint8
pixels: the float32 arrays would be 84·84·3·60,000·4 bytes ≈ 5 GB on disk, the
uint8 ones a quarter of that, and the conversion is exact because the pixels
came from 8-bit JPEGs. It is written to a temporary file in ``root`` and moved
into place with ``os.replace``, so a crashed or concurrent load never leaves a
half-written cache that a later load would trust. A read-only ``root`` only
means no cache; an unreadable cache is rebuilt.
"""

from __future__ import annotations

import csv
import os
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from gs_tune.data.images import read_image
from gs_tune.data.tasks import SPLITS, ClassSplit, FewShotDataset
from gs_tune.errors import DataError

HEADER = ["filename", "label"]


def cache_path(root: Path, size: int) -> Path:
    return root / f"gs_tune_cache_{size}.npz"


def read_csv(path: Path) -> list[tuple[str, str]]:
    """(filename, label) rows of one split csv."""
    if not path.is_file():
        raise DataError(
            f"miniimagenet: split file {path} not found; expected {', '.join(s + '.csv' for s in SPLITS)} "
            f"with header 'filename,label' in {path.parent}"
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


def _load_jpeg(path: Path, size: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"miniimagenet: image {path} listed in the split csv not found")
    return read_image(path, "RGB", size, Image.Resampling.BILINEAR, "miniimagenet").transpose(2, 0, 1)


def _decode_split(
    root: Path, rows: list[tuple[str, str]], size: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = sorted({label for _, label in rows})
    index = {c: i for i, c in enumerate(classes)}
    paths = [root / "images" / name for name, _ in rows]
    # PIL releases the GIL while decoding, so threads give a real speed-up on the first load
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = np.stack(list(pool.map(lambda p: _load_jpeg(p, size), paths)))
    labels = np.array([index[label] for _, label in rows], dtype=np.int64)
    return images, labels, classes


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if all(f"{s}_{k}" in arrays for s in SPLITS for k in ("images", "labels", "classes")):
        return arrays
    return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError:
        return  # read-only data root: run without a cache rather than fail
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a shared data root should stay shared
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def _cache_matches(arrays: dict[str, np.ndarray], split_rows: dict[str, list[tuple[str, str]]]) -> bool:
    for s, rows in split_rows.items():
        classes = sorted({label for _, label in rows})
        if [str(c) for c in arrays[f"{s}_classes"]] != classes or len(arrays[f"{s}_labels"]) != len(rows):
            return False
    return True


def _cache_is_fresh(cache: Path, csvs: list[Path]) -> bool:
    return cache.is_file() and cache.stat().st_mtime > max(p.stat().st_mtime for p in csvs)


def load_miniimagenet(root: str, size: int = 84) -> FewShotDataset:
    """miniImageNet's 64/16/20 classes as float32 RGB; see the module docstring."""
    if size < 1:
        raise DataError(f"miniimagenet: size must be >= 1, got {size}")
    base = Path(root)
    csvs = [base / f"{s}.csv" for s in SPLITS]
    split_rows = {s: read_csv(p) for s, p in zip(SPLITS, csvs)}
    seen: dict[str, str] = {}
    for s, rows in split_rows.items():
        for label in {label for _, label in rows}:
            if label in seen:
                raise DataError(f"miniimagenet: label {label!r} is in both {seen[label]}.csv and {s}.csv")
            seen[label] = s

    cache = cache_path(base, size)
    arrays = _read_cache(cache) if _cache_is_fresh(cache, csvs) else None
    if arrays is not None and not _cache_matches(arrays, split_rows):
        arrays = None  # e.g. a cache copied in from another root: the mtime alone cannot tell
    if arrays is None:
        arrays = {}
        for s, rows in split_rows.items():
            images, labels, classes = _decode_split(base, rows, size)
            arrays[f"{s}_images"], arrays[f"{s}_labels"] = images, labels
            arrays[f"{s}_classes"] = np.array(classes, dtype=str)
        _write_cache(cache, arrays)

    splits = {}
    for s in SPLITS:
        # convert split by split so the peak is one split's float32 copy, not the whole set's
        images = arrays.pop(f"{s}_images").astype(np.float32)
        images /= 255.0
        classes = tuple(str(c) for c in arrays[f"{s}_classes"])
        splits[s] = ClassSplit(images, arrays[f"{s}_labels"].astype(np.int64), classes)
    return FewShotDataset("miniimagenet", splits["train"], splits["val"], splits["test"])
