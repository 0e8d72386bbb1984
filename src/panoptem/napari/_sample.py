"""Sample data contribution: the bundled EM crop with its voxel size."""
from __future__ import annotations

from ..sample import SAMPLE_VOXEL_SIZE, load_sample


def make_sample_data() -> list[tuple]:
    """The bundled (30, 384, 384) uint8 EM volume as an image layer, scaled in nm."""
    return [(load_sample(), {"name": "panoptem sample", "scale": SAMPLE_VOXEL_SIZE,
                             "metadata": {"voxel_size": SAMPLE_VOXEL_SIZE}}, "image")]
