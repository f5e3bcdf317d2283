"""MNIST as a few-shot benchmark, read from the original IDX files.

MNIST has the same 10 digit classes as scikit-learn's digits, so it is turned
into a few-shot dataset the same way (:mod:`gs_tune.data.digits`): each digit
under each symmetry of the square is a class, near-duplicate transforms are
dropped and the split is by digit. The ``NEAR_DUPLICATES`` table and
``DIGIT_SPLITS`` are reused unchanged rather than recomputed on MNIST, so the
two benchmarks have the very same 64 classes (24 train / 20 val / 20 test) and
results on one can be read against the other; the symmetries that make a
digit near-duplicate ("1" rotated 180°, "8" mirrored) are properties of the
digit's shape, not of the scanner.

Files, in ``root``: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each either plain
or gzipped (``.gz``), as distributed by LeCun et al. The dotted spelling some
mirrors use (``train-images.idx3-ubyte``) is accepted too.

Training and test files are pooled (the few-shot split is by digit, so
MNIST's own split has no meaning here) and only the first ``max_per_class``
examples of each digit, in file order, train file first, are kept: every
example becomes 8 transformed copies, and all 70,000 would need
8 × 70,000 × 28 × 28 bytes ≈ 440 MB, while 1,000 per digit (50 MB of uint8
pixels, kept as they are in the files: the symmetries only move them) is far
more than any few-shot task draws from one class. The result is cached like
every file dataset (:mod:`gs_tune.data.cache`).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from gs_tune.data.cache import Source, fingerprint, load_or_build
from gs_tune.data.digits import DIGIT_SPLITS, NEAR_DUPLICATES, build_symmetry_dataset
from gs_tune.data.tasks import FewShotDataset
from gs_tune.errors import DataError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX magic: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
IMAGE_SIZE = 28


def _find(root: Path, name: str) -> Path:
    dotted = name.replace("-idx", ".idx")
    candidates = [root / n for n in (name, name + ".gz", dotted, dotted + ".gz")]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(
        f"mnist: file {root / name} (or {name}.gz) not found; expected the four MNIST IDX files "
        f"{', '.join(n for pair in FILES.values() for n in pair)} in {root}"
    )


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array stored in one IDX file, checked against its header."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"mnist: cannot read {path}: {e}") from e
    expected = "images (magic 2051, 3 dims)" if magic == IMAGES_MAGIC else "labels (magic 2049, 1 dim)"
    if len(raw) < 4:
        raise DataError(f"mnist: {path} is too short for an IDX header; expected MNIST {expected}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"mnist: {path} has IDX magic number {found}; expected MNIST {expected}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"mnist: {path} is too short for its IDX header; expected MNIST {expected}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DataError(
            f"mnist: {path} declares shape {dims} ({size} bytes) but holds {len(raw) - header} bytes "
            "after the header; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"mnist: {images_path} holds {images.shape[1:]} images; expected 28×28")
    if len(images) != len(labels):
        raise DataError(
            f"mnist: {images_path} has {len(images)} images but {labels_path} {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"mnist: {labels_path} has label {labels.max()}; expected digits 0..9")
    return images, labels


def mnist_source(root: str, max_per_class: int = 1000) -> Source:
    """The four IDX files in ``root``, checked present; decoding reads and checks their contents."""
    if max_per_class < 1:
        raise DataError(f"mnist: max_per_class must be >= 1, got {max_per_class}")
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"mnist: data root {base} is not a directory holding the MNIST IDX files")
    pairs = [(_find(base, images), _find(base, labels)) for images, labels in FILES.values()]
    files = [path for pair in pairs for path in pair]
    return Source("mnist", base, "idx", fingerprint(base, files), lambda: _decode(base, pairs, max_per_class),
                  params={"max_per_class": max_per_class}, items=len(files))


def _decode(base: Path, pairs: list[tuple[Path, Path]], max_per_class: int) -> FewShotDataset:
    read = [_read_pair(*pair) for pair in pairs]
    images = np.concatenate([r[0] for r in read])
    labels = np.concatenate([r[1] for r in read]).astype(np.int64)
    keep = []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        if len(idx) == 0:
            raise DataError(f"mnist: no examples of digit {digit} in the IDX files under {base}")
        keep.append(idx[:max_per_class])
    # file order within each digit is kept so "the first N" is the same N on every machine
    picked = np.sort(np.concatenate(keep))
    return build_symmetry_dataset(
        "mnist", images[picked], labels[picked], size=IMAGE_SIZE, drop=NEAR_DUPLICATES, splits=DIGIT_SPLITS
    )


def load_mnist(root: str, max_per_class: int = 1000) -> FewShotDataset:
    """MNIST's 28×28 digits as the 64-class symmetry dataset of :mod:`gs_tune.data.digits`, uint8,
    from the cache (built on first use)."""
    return load_or_build(mnist_source(root, max_per_class)).dataset
