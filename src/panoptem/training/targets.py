"""Training targets from an instance label image: semantic mask, centre
heatmap and centre offsets, the latter two on the network's stride-4 grid."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

STRIDE = 4


def grid_coordinates(h: int, w: int, stride: int = STRIDE) -> tuple[np.ndarray, np.ndarray]:
    """Input-pixel coordinates (y, x) of the centres of the stride grid cells.

    Cell ``i`` covers input pixels ``stride*i .. stride*i + stride-1``, so its
    centre is ``stride*i + (stride-1)/2``.
    """
    gy = np.arange(h // stride, dtype=np.float32) * stride + (stride - 1) / 2
    gx = np.arange(w // stride, dtype=np.float32) * stride + (stride - 1) / 2
    return gy, gx


def make_targets(instances: np.ndarray, sigma: float = 6.0, stride: int = STRIDE):
    """Targets for one ``(H, W)`` instance image (0 = background).

    Returns ``semantic`` (H, W) float32 in {0, 1}; ``heatmap`` (H/s, W/s), a
    Gaussian of ``sigma`` input pixels at every instance centroid (max over
    instances, peak 1 at the centroid); ``offsets`` (2, H/s, W/s), centroid
    minus cell centre in input pixels (dy, dx), inside instances; and
    ``offset_weight`` (H/s, W/s), 1 where the cell centre lies in an instance.
    """
    inst = np.asarray(instances)
    h, w = inst.shape
    gy, gx = grid_coordinates(h, w, stride)
    semantic = (inst > 0).astype(np.float32)
    heatmap = np.zeros((gy.size, gx.size), np.float32)
    offsets = np.zeros((2, gy.size, gx.size), np.float32)
    # label of the input pixel nearest to each cell centre
    cy = np.minimum(np.round(gy).astype(int), h - 1)
    cx = np.minimum(np.round(gx).astype(int), w - 1)
    cell_lab = inst[np.ix_(cy, cx)]
    ids = np.unique(inst)
    ids = ids[ids != 0]
    if ids.size == 0:
        return semantic, heatmap, offsets, np.zeros_like(heatmap)
    cents = np.asarray(ndimage.center_of_mass(np.ones_like(inst, dtype=np.float32), inst, ids), np.float32)
    cents = cents.reshape(-1, 2)
    two_s2 = 2.0 * sigma * sigma
    for (y0, x0) in cents:
        g = np.exp(-((gy[:, None] - y0) ** 2 + (gx[None, :] - x0) ** 2) / two_s2)
        np.maximum(heatmap, g, out=heatmap)
    lut_y = np.zeros(int(ids.max()) + 1, np.float32)
    lut_x = np.zeros_like(lut_y)
    lut_y[ids] = cents[:, 0]
    lut_x[ids] = cents[:, 1]
    inside = cell_lab > 0
    offsets[0][inside] = (lut_y[cell_lab] - gy[:, None])[inside]
    offsets[1][inside] = (lut_x[cell_lab] - gx[None, :])[inside]
    return semantic, heatmap, offsets, inside.astype(np.float32)
