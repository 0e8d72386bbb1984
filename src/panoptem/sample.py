"""The bundled sample: a crop of real FIB-SEM data with mitochondria.

30 x 384 x 384 voxels (uint8, 5 nm isotropic) from the EPFL hippocampus
volume (Lucchi et al., IEEE TMI 2012), slices 135-164, rows/cols 64-447 of
the "training" volume: the validation block the bundled model never saw.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_PATH = Path(__file__).parent / "data" / "sample_lucchi_val.tif"
SAMPLE_VOXEL_SIZE = (5.0, 5.0, 5.0)


def load_sample() -> np.ndarray:
    """The bundled EM sample volume, (30, 384, 384) uint8, 5 nm voxels."""
    import tifffile
    return tifffile.imread(SAMPLE_PATH)
