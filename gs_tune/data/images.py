"""Reading one image file for the dataset loaders, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gs_tune.errors import DataError


def read_image(path: Path, mode: str, size: int, resample: Image.Resampling, source: str) -> np.ndarray:
    """The image at ``path`` converted to ``mode`` ("L", "RGB") and resized to size×size, as uint8."""
    try:
        with Image.open(path) as img:
            image = img.convert(mode)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{source}: cannot read image {path}: {e}") from e
    if image.size != (size, size):
        image = image.resize((size, size), resample=resample)
    return np.asarray(image, dtype=np.uint8)
