"""A synthetic miniImageNet-sized cache for the data benchmarks (data_sampling.py, data_sharing.py).

60,000 random uint8 images of 3×84×84 (1.27 GB) in miniImageNet's split, 64 / 16 / 20 classes of
600 images, written by :func:`gs_tune.data.cache.write_cache` exactly as ``gs-tune data prepare``
writes a real one. The pixels are noise: sampling and memory cost do not depend on them. The cache
goes to /tmp (never into the repository) and is reused while its manifest is valid.

    python benchmarks/data_synthetic.py [--dir /tmp/gs-tune-bench/miniimagenet-synthetic]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from gs_tune.data import ClassSplit, FewShotDataset
from gs_tune.data.cache import Source, open_cache, write_cache

DEFAULT_DIR = Path("/tmp/gs-tune-bench/miniimagenet-synthetic")
CLASSES = {"train": 64, "val": 16, "test": 20}
PER_CLASS = 600
SHAPE = (3, 84, 84)


def _generate(seed: int) -> FewShotDataset:
    rng = np.random.default_rng(seed)
    splits = {}
    for name, classes in CLASSES.items():
        labels = np.repeat(np.arange(classes, dtype=np.int64), PER_CLASS)
        images = rng.integers(0, 256, size=(len(labels), *SHAPE), dtype=np.uint8)
        splits[name] = ClassSplit(images, labels, tuple(f"{name}{c:02d}" for c in range(classes)))
    return FewShotDataset("miniimagenet-synthetic", splits["train"], splits["val"], splits["test"])


def ensure_cache(directory: Path = DEFAULT_DIR, seed: int = 0) -> tuple[Path, float]:
    """The cache directory, written if missing; and the seconds spent writing it (0 if reused)."""
    if open_cache(directory) is not None:
        return directory, 0.0
    start = time.perf_counter()
    data = _generate(seed)
    source = Source("miniimagenet-synthetic", directory, "synthetic", f"seed{seed}", lambda: data,
                    params={"size": SHAPE[-1]}, items=0)
    directory.mkdir(parents=True, exist_ok=True)
    write_cache(directory, data, source)
    return directory, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    directory, seconds = ensure_cache(args.dir)
    data = open_cache(directory)
    total = sum(data.split(s).images.nbytes for s in CLASSES)
    state = f"written in {seconds:.1f} s" if seconds else "reused"
    print(f"{directory}: {total / 1e9:.2f} GB uint8 ({state})")


if __name__ == "__main__":
    main()
