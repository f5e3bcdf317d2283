"""Reading one image for the dataset loaders, with errors that name the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gs_tune.errors import DataError


def read_image(
    path: Path | str, mode: str, size: int, resample: Image.Resampling, source: str, data: bytes | None = None
) -> np.ndarray:
    """The image at ``path`` (or held in ``data``, read from an archive member named ``path``)
    converted to ``mode`` ("L", "RGB") and resized to size×size, as uint8."""
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            image = img.convert(mode)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{source}: cannot read image {path}: {_one_line(e)}") from e
    if image.size != (size, size):
        image = image.resize((size, size), resample=resample)
    return np.asarray(image, dtype=np.uint8)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
