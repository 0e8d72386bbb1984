"""Image readers (placeholder: TIFF only, being extended)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from ..errors import PanoptemError


@dataclass
class ImageData:
    data: np.ndarray
    voxel_size: tuple[float, ...] | None = None
    path: str | None = None


def read_image(path) -> ImageData:
    p = Path(path)
    if not p.exists():
        raise PanoptemError(f"No such file or folder: {p}; check the path.")
    return ImageData(tifffile.imread(p), None, str(p))
