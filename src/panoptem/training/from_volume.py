"""Train a single-class instance model from an image volume and 2D instance
labels (e.g. the Lucchi training volume), holding out a validation block: the
volume's slices are one more source of :class:`~.dataset.TrainingData`, trained
by the same loop as dataset folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import VolumeSlices
from .train import TrainConfig, train


def parse_range(text: str) -> slice:
    """``"0:125"`` -> ``slice(0, 125)``."""
    from ..errors import PanoptemError
    try:
        a, b = text.split(":")
        start, stop = int(a) if a.strip() else None, int(b) if b.strip() else None
    except ValueError:
        raise PanoptemError(f"Slice range '{text}' is not START:STOP (e.g. 0:125, or : for all).") from None
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        raise PanoptemError(f"Slice range '{text}' has a negative bound; give slice numbers from 0.")
    return slice(start, stop)


def train_from_volume(image_path: str, labels_path: str, out_dir: str, train_slices: str,
                      val_slices: str | None, cfg: TrainConfig, resume: bool = True, log=print) -> Path:
    """Train on ``train_slices`` of a ZYX volume; report semantic IoU on
    ``val_slices`` (every 4th slice) while training."""
    from ..io import read_image
    img = read_image(image_path).data
    lab = read_image(labels_path).data
    if img.shape != lab.shape:
        from ..errors import PanoptemError
        raise PanoptemError(f"Image {img.shape} and labels {lab.shape} must have the same shape.")
    tr = parse_range(train_slices)
    if img.ndim != 3 or not len(range(*tr.indices(img.shape[0]))):
        from ..errors import PanoptemError
        raise PanoptemError(f"Training slices '{train_slices}' select nothing of the image {tuple(img.shape)}; "
                            "give a ZYX volume and a range inside it.")
    ds = VolumeSlices(img, lab, tr, name=Path(labels_path).name)
    val = None
    if val_slices:
        vs = parse_range(val_slices)
        vi, vl = np.asarray(img[vs])[::4], np.asarray(lab[vs])[::4]
        val = (list(vi), list(vl))
    return train(ds, out_dir, cfg, resume=resume, val=val, log=log)
