"""Patch sampling with scale, orientation and intensity augmentation."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.preprocess import MEAN, STD


def sample_patch(rng: np.random.Generator, image01: np.ndarray, labels: np.ndarray, patch: int,
                 scale_range: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Random crop of a 2D slice, rescaled to ``patch x patch``.

    ``image01`` is the slice scaled to about [0, 1]; ``scale_range`` bounds the
    zoom factor (output pixels per source pixel; < 1 shows the data as if its
    pixels were larger). Returns float32 image and int64 labels, randomly
    flipped and rotated by multiples of 90 degrees.
    """
    h, w = image01.shape
    lo, hi = scale_range
    s = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    src = int(min(round(patch / s), h, w))
    y0 = int(rng.integers(0, h - src + 1))
    x0 = int(rng.integers(0, w - src + 1))
    img = torch.from_numpy(np.ascontiguousarray(image01[y0:y0 + src, x0:x0 + src], np.float32))[None, None]
    lab = torch.from_numpy(np.ascontiguousarray(labels[y0:y0 + src, x0:x0 + src]).astype(np.float32))[None, None]
    if src != patch:
        img = F.interpolate(img, size=(patch, patch), mode="bilinear", align_corners=False, antialias=src > patch)
        lab = F.interpolate(lab, size=(patch, patch), mode="nearest-exact")
    img, lab = img[0, 0].numpy(), lab[0, 0].numpy().astype(np.int64)
    k = int(rng.integers(0, 4))
    img, lab = np.rot90(img, k), np.rot90(lab, k)
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


def intensity_augment(rng: np.random.Generator, image01: np.ndarray) -> np.ndarray:
    """Contrast, brightness, gamma, blur and noise on a [0, 1]-scaled patch;
    returns the network-normalised patch."""
    x = image01
    if rng.random() < 0.3:
        g = float(np.exp(rng.uniform(-0.3, 0.3)))
        x = np.clip(x, 0, None) ** g
    c = rng.uniform(0.7, 1.4)
    b = rng.uniform(-0.15, 0.15)
    x = (x - 0.5) * c + 0.5 + b
    if rng.random() < 0.2:
        from scipy.ndimage import gaussian_filter
        x = gaussian_filter(x, rng.uniform(0.5, 1.5))
    if rng.random() < 0.5:
        x = x + rng.normal(0, rng.uniform(0.0, 0.06), x.shape)
    return ((x - MEAN) / STD).astype(np.float32)
