"""A prepared dataset on disk: uint8 arrays that every process maps read-only, and a manifest.

Decoding a dataset (60,000 JPEGs for miniImageNet) takes minutes and, held as float32 in every
trial, costs 5 GB per process. So a dataset is decoded once into a cache directory:

    <cache>/<dataset>-<params>/manifest.json
    <cache>/<dataset>-<params>/<split>-images-<hash>.npy     uint8 [N, C, H, W]
    <cache>/<dataset>-<params>/<split>-labels-<hash>.npy     int64 [N]

and each process opens the ``.npy`` files with ``mmap_mode="r"``: the pages live once in the
operating system's page cache, whatever the number of trials on the node.

Trust. The manifest records the cache format version, the dataset and its parameters (image size),
the kind of source and a fingerprint of the source files (names, sizes, modification times), the
shape and dtype of every array and a BLAKE2b hash of each array's bytes. A cache is used only if
all of that matches the source found now; otherwise (an older gs-tune, edited or replaced files, a
cache copied from another root) it is rebuilt. Opening checks everything but the hashes, which
would read the whole dataset in every trial; ``gs-tune data prepare`` checks those too.

Writing. Array files are named by their content hash and written atomically
(:func:`gs_tune.fileio.atomic_write`); the manifest is written last, so it is the commit point: a
crash leaves the old cache or no manifest, never a manifest naming half-written arrays. Builders
take an exclusive lock on the cache directory, so trials that start together on a node decode once.

Location: ``<data_root>/gs_tune_cache/``, or ``$GS_TUNE_CACHE_DIR`` when set, or
``~/.cache/gs-tune/`` when the data root is read-only (the last two name each cache after its root).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gs_tune.data.tasks import SPLITS, ClassSplit, FewShotDataset
from gs_tune.errors import DataError
from gs_tune.fileio import atomic_write, atomic_write_text, remove_stale_temps

CACHE_FORMAT = "gs-tune-dataset-cache"
CACHE_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
CACHE_ENV = "GS_TUNE_CACHE_DIR"
DEFAULT_SUBDIR = "gs_tune_cache"


@dataclass(frozen=True)
class Source:
    """A dataset's files as found in a data root: enough to tell whether a cache came from them."""

    dataset: str
    root: Path
    kind: str
    """The layout found, e.g. png-tree, zip, csv, pickle, idx."""
    fingerprint: str
    decode: Callable[[], FewShotDataset] = field(compare=False)
    """Reads and decodes the files (slow); returns uint8 splits."""
    params: dict[str, Any] = field(default_factory=dict)
    """Decoding parameters that change the arrays (image size, examples per class)."""
    items: int = 0
    """Source files (images or archives) found, for the report."""

    @property
    def key(self) -> str:
        return "-".join([self.dataset, *(f"{k}{v}" for k, v in sorted(self.params.items()))])


def fingerprint(root: Path, files: Iterable[Path | str], extra: bytes = b"", missing: str = "{} not found") -> str:
    """BLAKE2b of each file's path under ``root``, size and modification time (not the contents,
    which would mean reading the whole dataset at every start), plus ``extra``. ``files`` are paths
    under ``root`` or relative to it. A file that is not there raises DataError with ``missing``
    formatted with its path."""
    digest = hashlib.blake2b(extra, digest_size=16)
    prefix = os.path.join(str(root), "")
    for file in files:
        # plain strings and os.stat: a Path per file costs more than the stat on 60,000 images
        path = str(file)
        name = path.removeprefix(prefix)
        try:
            st = os.stat(prefix + name)
        except FileNotFoundError as e:
            raise DataError(missing.format(prefix + name)) from e
        except OSError as e:
            raise DataError(f"cannot read {prefix + name}: {e.strerror}") from e
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_dir(source: Source) -> Path:
    """Where ``source``'s cache lives (see the module docstring)."""
    root = source.root.resolve()
    named = f"{source.key}-{hashlib.blake2b(str(root).encode(), digest_size=6).hexdigest()}"
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / named
    default = root / DEFAULT_SUBDIR
    if os.access(default if default.is_dir() else root, os.W_OK):
        return default / source.key
    return Path.home() / ".cache" / "gs-tune" / named


def _array_hash(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array).data, digest_size=16).hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def write_cache(directory: Path, dataset: FewShotDataset, source: Source) -> None:
    """Write ``dataset`` (uint8 images) as the cache of ``source``; the manifest goes last."""
    splits: dict[str, Any] = {}
    for name in SPLITS:
        split = dataset.split(name)
        if split.images.dtype != np.uint8:
            raise DataError(f"{source.dataset}: only uint8 images are cached, got {split.images.dtype}")
        entry: dict[str, Any] = {"class_names": list(split.class_names)}
        for key, array in (("images", split.images), ("labels", split.labels.astype(np.int64))):
            digest = _array_hash(array)
            file = f"{name}-{key}-{digest}.npy"
            atomic_write(directory / file, lambda tmp, a=array: _save_npy(tmp, a))
            entry[key] = {"file": file, "shape": list(array.shape), "dtype": str(array.dtype), "blake2b": digest}
        splits[name] = entry
    manifest = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "dataset": source.dataset, "params": source.params,
        "source": {"kind": source.kind, "fingerprint": source.fingerprint, "items": source.items},
        "content_hash": hashlib.blake2b(
            json.dumps(splits, sort_keys=True).encode(), digest_size=16).hexdigest(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "splits": splits,
    }
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    listed = {e[k]["file"] for e in splits.values() for k in ("images", "labels")}
    for old in directory.glob("*.npy"):
        if old.name not in listed:
            # a process that still maps an older file keeps its pages: unlinking never breaks a map
            with contextlib.suppress(OSError):
                old.unlink()


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _matches(manifest: dict[str, Any], source: Source) -> bool:
    return (manifest.get("format"), manifest.get("version"), manifest.get("dataset"), manifest.get("params"),
            manifest.get("source", {}).get("kind"), manifest.get("source", {}).get("fingerprint")) == (
            CACHE_FORMAT, CACHE_VERSION, source.dataset, source.params, source.kind, source.fingerprint)


def _open_array(directory: Path, spec: dict[str, Any], verify: bool) -> np.ndarray | None:
    try:
        array = np.load(directory / spec["file"], mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if list(array.shape) != spec.get("shape") or str(array.dtype) != spec.get("dtype"):
        return None
    if verify and _array_hash(array) != spec.get("blake2b"):
        return None
    return array


def open_cache(directory: Path, source: Source | None = None, verify: bool = False) -> FewShotDataset | None:
    """The cached dataset as read-only memory maps, or None if the cache is missing, of another
    version, built from other files than ``source`` or damaged. ``verify`` also re-hashes every
    array; ``source`` None skips the source check (for a cache with no source, as in benchmarks)."""
    manifest = read_manifest(directory)
    if manifest is None or (source is not None and not _matches(manifest, source)):
        return None
    if source is None and (manifest.get("format"), manifest.get("version")) != (CACHE_FORMAT, CACHE_VERSION):
        return None
    splits = {}
    for name in SPLITS:
        entry = manifest.get("splits", {}).get(name)
        if not isinstance(entry, dict):
            return None
        images = _open_array(directory, entry.get("images", {}), verify)
        labels = _open_array(directory, entry.get("labels", {}), verify)
        classes = entry.get("class_names")
        if images is None or labels is None or not isinstance(classes, list) or images.ndim != 4:
            return None
        if len(labels) != len(images) or (len(labels) and not 0 <= labels.min() <= labels.max() < len(classes)):
            return None
        splits[name] = ClassSplit(images, labels, tuple(str(c) for c in classes))
    return FewShotDataset(str(manifest["dataset"]), splits["train"], splits["val"], splits["test"])


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Opened:
    dataset: FewShotDataset
    directory: Path
    built: bool
    """True when this call decoded the source; False when a valid cache was found."""


def load_or_build(source: Source, verify: bool = False) -> Opened:
    """The cached dataset of ``source``, built first if missing or not trustworthy."""
    directory = cache_dir(source)
    found = open_cache(directory, source, verify)
    if found is not None:
        return Opened(found, directory, built=False)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{source.dataset}: cannot create the cache directory {directory}: {e.strerror}; "
                        f"set {CACHE_ENV} to a writable directory") from e
    with _locked(directory):
        # another process may have built it while this one waited for the lock
        found = open_cache(directory, source, verify)
        if found is not None:
            return Opened(found, directory, built=False)
        remove_stale_temps(directory)
        write_cache(directory, source.decode(), source)
    reopened = open_cache(directory, source)
    if reopened is None:
        raise DataError(f"{source.dataset}: the cache just written to {directory} cannot be read back")
    return Opened(reopened, directory, built=True)
