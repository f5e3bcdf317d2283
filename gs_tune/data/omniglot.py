"""Omniglot (Lake et al. 2015) as a few-shot benchmark, read from its PNG tree.

Layout, as unzipped from the official release: ``root/images_background/
<Alphabet>/<characterNN>/*.png`` and ``root/images_evaluation/...``; either
folder alone is enough. Every character folder holding at least one PNG is a
character.

Classes. As in Vinyals et al. (2016) and MAML (Finn et al. 2017), each
character rotated by 0°, 90°, 180° and 270° gives 4 classes, so the 1,623 real
characters give 6,492 classes. Images are inverted so ink is 1 and paper 0
(the PNGs are black ink on white), resized to ``size``×``size`` with Lanczos
filtering before rotating (rotating a square array is then exact) and stored
float32 [N, 1, size, size] in [0, 1].

Split, by character so that no rotation of a test character is seen in
training: characters are sorted by (alphabet, character, top folder) and
shuffled with ``numpy.random.default_rng(0)``, a fixed seed independent of any
run so every run and every machine sees the same split. With the full set
of 1,623 characters (or more) the first 1,200 are train, the next 100 val and
the rest (323) test, the standard Omniglot split sizes. With fewer (tests,
partial downloads) the same proportions are used — val = round(n·100/1623),
test = round(n·323/1623), each raised to at least 1 so every split has
classes, train = the rest — which gives exactly 1200/100/323 at n = 1623, so
the two rules agree where they meet. At least 3 characters are needed. The background/evaluation division of the release is deliberately not
used as the split: the few-shot literature's 1200/100/323 split ignores it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gs_tune.data.images import read_image
from gs_tune.data.tasks import ClassSplit, FewShotDataset
from gs_tune.errors import DataError

TOP_FOLDERS = ("images_background", "images_evaluation")
ROTATIONS = (0, 90, 180, 270)
REAL_CHARACTERS = 1623
STANDARD_TRAIN, STANDARD_VAL = 1200, 100
SPLIT_SEED = 0


def find_characters(root: Path) -> list[tuple[str, str, str, Path]]:
    """(alphabet, character, top folder, path) of every character folder with PNGs, sorted."""
    tops = [root / t for t in TOP_FOLDERS if (root / t).is_dir()]
    if not tops:
        raise DataError(
            f"omniglot: neither {root / TOP_FOLDERS[0]} nor {root / TOP_FOLDERS[1]} exists; expected "
            "root/images_background/<Alphabet>/<characterNN>/*.png as in the Omniglot release"
        )
    found = []
    for top in tops:
        for alphabet in sorted(p for p in top.iterdir() if p.is_dir()):
            for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
                if any(character.glob("*.png")):
                    found.append((alphabet.name, character.name, top.name, character))
    if not found:
        raise DataError(
            f"omniglot: no character folders with PNG images under {', '.join(str(t) for t in tops)}; "
            "expected <top>/<Alphabet>/<characterNN>/*.png"
        )
    return sorted(found, key=lambda c: c[:3])


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) character counts for ``n`` characters; see the module docstring."""
    if n >= REAL_CHARACTERS:
        return STANDARD_TRAIN, STANDARD_VAL, n - STANDARD_TRAIN - STANDARD_VAL
    if n < 3:
        raise DataError(f"omniglot: found {n} character(s); at least 3 are needed for train/val/test splits")
    val = max(1, round(n * STANDARD_VAL / REAL_CHARACTERS))
    test = max(1, round(n * (REAL_CHARACTERS - STANDARD_TRAIN - STANDARD_VAL) / REAL_CHARACTERS))
    return n - val - test, val, test


def _load_png(path: Path, size: int) -> np.ndarray:
    gray = read_image(path, "L", size, Image.Resampling.LANCZOS, "omniglot")
    return 1.0 - gray.astype(np.float32) / 255.0


def _character_images(path: Path, size: int) -> np.ndarray:
    return np.stack([_load_png(p, size) for p in sorted(path.glob("*.png"))])


def _build_split(characters: list[tuple[str, str, str, Path]], size: int) -> ClassSplit:
    xs, ys, names = [], [], []
    for alphabet, character, _, path in characters:
        base = _character_images(path, size)
        for degrees in ROTATIONS:
            xs.append(np.rot90(base, degrees // 90, axes=(-2, -1)))
            ys.append(np.full(len(base), len(names), dtype=np.int64))
            names.append(f"{alphabet}/{character}/rot{degrees}")
    images = np.ascontiguousarray(np.concatenate(xs)[:, None], dtype=np.float32)
    return ClassSplit(images, np.concatenate(ys), tuple(names))


def load_omniglot(root: str, size: int = 28) -> FewShotDataset:
    """Omniglot with rotation classes, split by character; see the module docstring."""
    if size < 1:
        raise DataError(f"omniglot: size must be >= 1, got {size}")
    characters = find_characters(Path(root))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(characters))
    n_train, n_val, _ = split_sizes(len(characters))
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    # within a split, classes keep the sorted order so labels do not depend on the shuffle
    splits = {name: _build_split([characters[i] for i in sorted(ix)], size) for name, ix in parts.items()}
    return FewShotDataset("omniglot", splits["train"], splits["val"], splits["test"])
