"""Omniglot (Lake et al. 2015) as a few-shot benchmark, read from the release's PNGs.

Layout, as distributed (github.com/brendenlake/omniglot, ``python/``): ``images_background.zip``
and ``images_evaluation.zip`` in ``root``, read as they are, or the same unzipped:
``root/images_background/<Alphabet>/<characterNN>/*.png``. Either part alone is enough; an
unzipped folder is preferred to a zip of the same name. Every character folder holding at least
one PNG is a character.

Classes. As in Vinyals et al. (2016) and MAML (Finn et al. 2017), each
character rotated by 0°, 90°, 180° and 270° gives 4 classes, so the 1,623 real
characters give 6,492 classes. Images are inverted so ink is 255 and paper 0
(the PNGs are black ink on white), resized to ``size``×``size`` with Lanczos
filtering before rotating (rotating a square array is then exact) and stored
uint8 [N, 1, size, size] in the cache (:mod:`gs_tune.data.cache`): 100 MB at 28×28.

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

import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from gs_tune.data.cache import Source, fingerprint, load_or_build
from gs_tune.data.images import read_image
from gs_tune.data.tasks import ClassSplit, FewShotDataset
from gs_tune.errors import DataError

TOP_FOLDERS = ("images_background", "images_evaluation")
ROTATIONS = (0, 90, 180, 270)
REAL_CHARACTERS = 1623
STANDARD_TRAIN, STANDARD_VAL = 1200, 100
SPLIT_SEED = 0
INK = 255


@dataclass(frozen=True)
class Character:
    alphabet: str
    name: str
    top: str
    archive: Path | None
    """The zip holding the PNGs, or None for an unzipped folder."""
    pngs: tuple[str, ...]
    """Paths of the PNGs: on disk, or member names inside ``archive``."""


def _folder_characters(top: Path) -> list[Character]:
    found = []
    for alphabet in sorted(p for p in top.iterdir() if p.is_dir()):
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
            pngs = tuple(str(p) for p in sorted(character.glob("*.png")))
            if pngs:
                found.append(Character(alphabet.name, character.name, top.name, None, pngs))
    return found


def _zip_characters(archive: Path, top: str) -> list[Character]:
    try:
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"omniglot: {archive} is not a readable zip archive: {e}") from e
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name in names:
        parts = PurePosixPath(name).parts
        # <top>/<Alphabet>/<characterNN>/<file>.png; macOS zips add __MACOSX/ and ._ files
        if len(parts) == 4 and parts[0] == top and name.endswith(".png") and not parts[3].startswith("."):
            grouped[parts[1], parts[2]].append(name)
    return [Character(a, c, top, archive, tuple(sorted(pngs))) for (a, c), pngs in sorted(grouped.items())]


def find_characters(root: Path) -> list[Character]:
    """Every character with PNGs, from the unzipped folders or the zips, sorted."""
    found: list[Character] = []
    looked = []
    for top in TOP_FOLDERS:
        folder, archive = root / top, root / f"{top}.zip"
        if folder.is_dir():
            found += _folder_characters(folder)
            looked.append(str(folder))
        elif archive.is_file():
            found += _zip_characters(archive, top)
            looked.append(str(archive))
    if not looked:
        raise DataError(
            f"omniglot: none of {', '.join(str(root / t) + '[.zip]' for t in TOP_FOLDERS)} exists; expected "
            "the release's images_background.zip / images_evaluation.zip, or <top>/<Alphabet>/<characterNN>/*.png"
        )
    if not found:
        raise DataError(
            f"omniglot: no character folders with PNG images in {', '.join(looked)}; "
            "expected <top>/<Alphabet>/<characterNN>/*.png"
        )
    return sorted(found, key=lambda c: (c.alphabet, c.name, c.top))


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) character counts for ``n`` characters; see the module docstring."""
    if n >= REAL_CHARACTERS:
        return STANDARD_TRAIN, STANDARD_VAL, n - STANDARD_TRAIN - STANDARD_VAL
    if n < 3:
        raise DataError(f"omniglot: found {n} character(s); at least 3 are needed for train/val/test splits")
    val = max(1, round(n * STANDARD_VAL / REAL_CHARACTERS))
    test = max(1, round(n * (REAL_CHARACTERS - STANDARD_TRAIN - STANDARD_VAL) / REAL_CHARACTERS))
    return n - val - test, val, test


def _character_images(character: Character, size: int, archives: dict[Path, zipfile.ZipFile]) -> np.ndarray:
    images = []
    for png in character.pngs:
        data = None
        if character.archive is not None:
            try:
                data = archives[character.archive].read(png)
            except (OSError, zipfile.BadZipFile) as e:
                raise DataError(f"omniglot: cannot read {png} from {character.archive}: {e}") from e
        name = f"{character.archive}:{png}" if character.archive is not None else png
        gray = read_image(name, "L", size, Image.Resampling.LANCZOS, "omniglot", data=data)
        images.append(INK - gray)
    return np.stack(images)


def _build_split(characters: list[Character], size: int, archives: dict[Path, zipfile.ZipFile]) -> ClassSplit:
    xs, ys, names = [], [], []
    for character in characters:
        base = _character_images(character, size, archives)
        for degrees in ROTATIONS:
            xs.append(np.rot90(base, degrees // 90, axes=(-2, -1)))
            ys.append(np.full(len(base), len(names), dtype=np.int64))
            names.append(f"{character.alphabet}/{character.name}/rot{degrees}")
    images = np.ascontiguousarray(np.concatenate(xs)[:, None], dtype=np.uint8)
    return ClassSplit(images, np.concatenate(ys), tuple(names))


def _decode(characters: list[Character], size: int) -> FewShotDataset:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(characters))
    n_train, n_val, _ = split_sizes(len(characters))
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    archives = {c.archive: zipfile.ZipFile(c.archive) for c in characters if c.archive is not None}
    try:
        # within a split, classes keep the sorted order so labels do not depend on the shuffle
        splits = {name: _build_split([characters[i] for i in sorted(ix)], size, archives)
                  for name, ix in parts.items()}
    finally:
        for archive in archives.values():
            archive.close()
    return FewShotDataset("omniglot", splits["train"], splits["val"], splits["test"])


def omniglot_source(root: str, size: int = 28) -> Source:
    """The Omniglot files in ``root``, listed and checked for a usable split."""
    if size < 1:
        raise DataError(f"omniglot: size must be >= 1, got {size}")
    base = Path(root)
    characters = find_characters(base)
    split_sizes(len(characters))  # fails now, not after decoding, with too few characters
    archives = sorted({c.archive for c in characters if c.archive is not None})
    files = archives + [Path(p) for c in characters if c.archive is None for p in c.pngs]
    kind = "+".join(sorted({"zip" if c.archive is not None else "png-tree" for c in characters}))
    return Source("omniglot", base, kind, fingerprint(base, files), lambda: _decode(characters, size),
                  params={"size": size}, items=sum(len(c.pngs) for c in characters))


def load_omniglot(root: str, size: int = 28) -> FewShotDataset:
    """Omniglot with rotation classes, split by character, uint8 from the cache (built on first use)."""
    return load_or_build(omniglot_source(root, size)).dataset
