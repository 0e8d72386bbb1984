"""Training targets from an instance label image: semantic mask, centre
heatmap and centre offsets, the latter two on the network's stride-4 grid."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import PanoptemError
from ..models.card import OUTPUT_STRIDE as STRIDE


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


def _class_of(labels: np.ndarray, label_divisor: int | None) -> np.ndarray:
    """Class id of every pixel: ``label // divisor``, or 1 for any object without a divisor."""
    if label_divisor:
        return labels // int(label_divisor)
    return (labels > 0).astype(labels.dtype)


def make_panoptic_targets(labels: np.ndarray, label_divisor: int | None, thing_ids, class_ids=None,
                          sigma: float = 6.0, stride: int = STRIDE):
    """Targets for one ``(H, W)`` panoptic mask holding ``class * label_divisor + n``.

    Parameters
    ----------
    labels : panoptic mask, 0 = background. Without a divisor every object is an
        instance of class 1.
    label_divisor : the divisor the mask was painted with, or None.
    thing_ids : ids of the instance classes; other classes are semantic-only and
        give no heatmap or offsets. Pixels of an instance class with ``n == 0``
        count for the semantic target only.
    class_ids : all class ids in the order of the network's channels (channel
        ``i`` is ``class_ids[i - 1]``, channel 0 is background); default ``thing_ids``.

    Returns
    -------
    semantic : (H, W) int64 channel index (0 = background, i = ``class_ids[i-1]``);
    heatmap, offsets, offset_weight : as :func:`make_targets`, from the instances
        of the instance classes only.

    Raises
    ------
    PanoptemError
        when the mask holds a class that is not in ``class_ids``.
    """
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        lab = lab.astype(np.int64)
    thing = [int(t) for t in thing_ids]
    classes = [int(c) for c in class_ids] if class_ids is not None else thing
    cls = _class_of(lab, label_divisor)
    present = np.unique(cls)
    unknown = sorted(set(present[present > 0].tolist()) - set(classes))
    if unknown:
        raise PanoptemError(f"A mask holds class(es) {unknown}, which are not among the classes {classes}; "
                            "check the label divisor and the class list.")
    lut = np.zeros(max([*classes, int(present.max())]) + 1, np.int64)
    lut[np.asarray(classes, np.int64)] = np.arange(1, len(classes) + 1)
    semantic = lut[cls]
    things = np.isin(cls, np.asarray(thing, np.int64))
    if label_divisor:
        things &= (lab % int(label_divisor)) != 0
    instances = np.where(things, lab, 0)
    _, heatmap, offsets, weight = make_targets(instances, sigma, stride)
    return semantic, heatmap, offsets, weight
