"""Handwritten digits as a few-shot benchmark, with classes built by symmetry.

A digit dataset has only 10 classes, too few for few-shot learning, so (as
Omniglot is augmented with rotations) every digit under each of the 8
symmetries of the square — rotations by 0/90/180/270° and the same after a
left–right mirror — becomes a class of its own: up to 80 classes.

Near-duplicates. Some digits are nearly symmetric, so two of their transforms
look alike (a "1" rotated 180° is still a "1"; an "8" mirrored is an "8"). Such
a pair in one task is unlearnable, and across splits it would leak test
classes into training. Rule: two transforms of one digit are near-duplicates
when a nearest-centroid classifier trained on half the examples of each tells
the other half apart with balanced accuracy below 0.85. Near-duplicates are
joined (transitively) and only the first transform of each group, in the order
of ``TRANSFORMS``, is kept. On scikit-learn's digits the rule drops 4 of 0's
transforms, 6 of 1's and 6 of 8's (table ``NEAR_DUPLICATES``; a test recomputes
it), leaving 64 classes. No pair of different digits falls below 0.85 (the
closest, "2 mirrored" against "3 rotated 180°", scores 0.90).

Split. As Omniglot splits by character, not by rotated copy, the split is by
digit, so a test digit is never seen in any orientation during training:
train = 3, 4, 7 (24 classes), val = 1, 2, 5, 8 (20), test = 0, 6, 9 (20). The
6 and 9 stay together because a 6 rotated 180° resembles a 9.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gs_tune.data.tasks import ClassSplit, FewShotDataset

TRANSFORMS = ("rot0", "rot90", "rot180", "rot270", "mirror_rot0", "mirror_rot90", "mirror_rot180", "mirror_rot270")
SEPARABILITY_THRESHOLD = 0.85
NEAR_DUPLICATES: dict[int, tuple[str, ...]] = {
    0: ("mirror_rot0", "mirror_rot90", "mirror_rot180", "mirror_rot270"),
    1: ("rot180", "rot270", "mirror_rot0", "mirror_rot90", "mirror_rot180", "mirror_rot270"),
    8: ("rot180", "rot270", "mirror_rot0", "mirror_rot90", "mirror_rot180", "mirror_rot270"),
}
DIGIT_SPLITS = {"train": (3, 4, 7), "val": (1, 2, 5, 8), "test": (0, 6, 9)}


def apply_transform(images: np.ndarray, name: str) -> np.ndarray:
    """One symmetry of the square applied to [N, H, W] images."""
    if name.startswith("mirror_"):
        images = images[..., ::-1]
        name = name[len("mirror_"):]
    quarter_turns = int(name[len("rot"):]) // 90
    return np.ascontiguousarray(np.rot90(images, quarter_turns, axes=(-2, -1)))


def separability(a: np.ndarray, b: np.ndarray) -> float:
    """Balanced held-out accuracy of a nearest-centroid classifier for classes a vs b."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    ca, cb = a[::2].mean(0), b[::2].mean(0)
    ta, tb = a[1::2], b[1::2]
    acc_a = (((ta - ca) ** 2).sum(1) < ((ta - cb) ** 2).sum(1)).mean()
    acc_b = (((tb - cb) ** 2).sum(1) < ((tb - ca) ** 2).sum(1)).mean()
    return float(acc_a + acc_b) / 2


def near_duplicate_transforms(images: np.ndarray, threshold: float = SEPARABILITY_THRESHOLD) -> tuple[str, ...]:
    """Transforms of one digit's images dropped by the near-duplicate rule."""
    views = {t: apply_transform(images, t) for t in TRANSFORMS}
    parent = {t: t for t in TRANSFORMS}

    def root(t: str) -> str:
        while parent[t] != t:
            t = parent[t]
        return t

    for i, t in enumerate(TRANSFORMS):
        for u in TRANSFORMS[i + 1:]:
            if separability(views[t], views[u]) < threshold:
                ru, rt = root(u), root(t)
                # the group's survivor is its earliest transform in TRANSFORMS order
                first, second = sorted((rt, ru), key=TRANSFORMS.index)
                parent[second] = first
    return tuple(t for t in TRANSFORMS if root(t) != t)


def build_symmetry_dataset(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    size: int,
    drop: dict[int, tuple[str, ...]] = NEAR_DUPLICATES,
    splits: dict[str, tuple[int, ...]] = DIGIT_SPLITS,
) -> FewShotDataset:
    """Few-shot dataset from [N, H, W] digit images with labels 0..9: uint8 pixels stay uint8 (the
    symmetries only move them) unless resized; float images in [0, 1] stay float."""
    out = {}
    for split_name, digits in splits.items():
        xs, ys, names = [], [], []
        for digit in digits:
            base = images[labels == digit]
            for t in TRANSFORMS:
                if t in drop.get(digit, ()):
                    continue
                xs.append(apply_transform(base, t))
                ys.append(np.full(len(base), len(names), dtype=np.int64))
                names.append(f"{digit}_{t}")
        x = np.concatenate(xs)[:, None]
        if x.shape[-1] != size:
            scale = 255.0 if x.dtype == np.uint8 else 1.0
            t = torch.from_numpy(x.astype(np.float32) / scale)
            x = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).numpy()
        elif x.dtype != np.uint8:
            x = x.astype(np.float32)
        out[split_name] = ClassSplit(x, np.concatenate(ys), tuple(names))
    return FewShotDataset(name, out["train"], out["val"], out["test"])


def load_digits_dataset(size: int = 28) -> FewShotDataset:
    """scikit-learn's 1,797 real 8×8 handwritten digits, resized to ``size``×``size``."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = raw.images.astype(np.float32) / 16.0
    return build_symmetry_dataset("digits", images, raw.target.astype(np.int64), size)
