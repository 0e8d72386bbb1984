"""Patch sampling with scale, orientation and intensity augmentation."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.preprocess import MEAN, STD


def sample_patch(rng: np.random.Generator, image01: np.ndarray, labels: np.ndarray, patch: int,
                 scale_range: tuple[float, float] = (1.0, 1.0),
                 centre: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random crop of a 2D slice, rescaled to ``patch x patch``.

    ``image01`` is the slice scaled to about [0, 1] (H, W), or several channels of it (C, H, W),
    all cropped and turned alike; ``scale_range`` bounds the zoom factor (output pixels per
    source pixel; < 1 shows the data as if its pixels were larger); ``centre`` (y, x): a pixel
    the crop must contain (somewhere in its middle half) instead of a uniformly random crop.
    Returns float32 image and int64 labels, randomly flipped and rotated by multiples of 90
    degrees.
    """
    h, w = image01.shape[-2:]
    lo, hi = scale_range
    s = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    src = int(min(round(patch / s), h, w))
    if centre is None:
        y0 = int(rng.integers(0, h - src + 1))
        x0 = int(rng.integers(0, w - src + 1))
    else:
        jy, jx = rng.integers(-(src // 4), src // 4 + 1, size=2)
        y0 = int(np.clip(centre[0] - src // 2 + jy, 0, h - src))
        x0 = int(np.clip(centre[1] - src // 2 + jx, 0, w - src))
    crop = np.ascontiguousarray(image01[..., y0:y0 + src, x0:x0 + src], np.float32)
    img = torch.from_numpy(crop).reshape(1, -1, src, src)
    lab = torch.from_numpy(np.ascontiguousarray(labels[y0:y0 + src, x0:x0 + src]).astype(np.float32))[None, None]
    if src != patch:
        img = F.interpolate(img, size=(patch, patch), mode="bilinear", align_corners=False, antialias=src > patch)
        lab = F.interpolate(lab, size=(patch, patch), mode="nearest-exact")
    img = img[0].numpy().reshape(crop.shape[:-2] + (patch, patch))
    lab = lab[0, 0].numpy().astype(np.int64)
    k = int(rng.integers(0, 4))
    img, lab = np.rot90(img, k, axes=(-2, -1)), np.rot90(lab, k)
    if rng.random() < 0.5:
        img, lab = img[..., ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


def dark_background_points(image01: np.ndarray, objects: np.ndarray, max_points: int = 2048,
                           seed: int = 0) -> np.ndarray:
    """(K, 2) pixel coordinates of dark structures that are not objects, to centre
    hard-negative patches on (multivesicular bodies, myelin, dark blobs).

    Works on 4 x 4 block means: a block qualifies when, smoothed, it is at least as dark as
    the median object block (without objects: the darkest 5 %) and lies more than 16 pixels
    from any object. At most ``max_points`` (a fixed random subset).
    """
    from scipy.ndimage import binary_dilation, gaussian_filter
    f = 4
    h, w = (image01.shape[0] // f) * f, (image01.shape[1] // f) * f
    if not h or not w:
        return np.zeros((0, 2), np.int64)
    small = np.asarray(image01[:h, :w], np.float32).reshape(h // f, f, w // f, f).mean((1, 3))
    fg = (np.asarray(objects[:h, :w]) > 0).reshape(h // f, f, w // f, f).any((1, 3))
    smooth = gaussian_filter(small, 1.5)
    thr = float(np.median(smooth[fg])) if fg.any() else float(np.percentile(smooth, 5))
    cand = (smooth <= thr) & ~binary_dilation(fg, iterations=4)
    pts = np.argwhere(cand) * f + f // 2
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(seed).choice(len(pts), max_points, replace=False)]
    return pts


def pale_objects(rng: np.random.Generator, image01: np.ndarray, objects: np.ndarray,
                 strength: tuple[float, float] = (0.2, 0.6)) -> np.ndarray:
    """Objects made paler and fainter: inside them (soft-edged), the patch's coarse intensity
    (cristae, matrix) is blended toward the median of its background by a random fraction in
    ``strength``, which lightens the object and flattens its inner texture (pale mitochondria
    with faint cristae); the pixel noise stays, so a pale object is not smoother than its
    surroundings."""
    fg = objects > 0
    if not fg.any() or fg.all():
        return image01
    from scipy.ndimage import gaussian_filter
    a = float(rng.uniform(*strength))
    soft = gaussian_filter(fg.astype(np.float32), 1.5)
    bg = float(np.median(image01[~fg]))
    coarse = gaussian_filter(image01, 1.0)
    return (image01 + a * soft * (bg - coarse)).astype(np.float32)


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
