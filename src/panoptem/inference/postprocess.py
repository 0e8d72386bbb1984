"""Morphology on whole label images: erode, dilate and fill holes of every label at once.

No label ever takes a voxel of another: erosion removes a voxel when any neighbour
differs from it (background or another label), dilation grows a label only into
background that no other label reaches in the same step, and a hole is filled only
when it is background enclosed by one label alone. All three are vectorised (a few
``scipy.ndimage`` filters per step), never a loop over labels.

>>> import numpy as np
>>> lab = np.array([[1, 1, 1, 0, 0, 2, 2]], np.uint32)
>>> dilate_labels(lab, 1)
array([[1, 1, 1, 1, 2, 2, 2]], dtype=uint32)
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..errors import PanoptemError


def _cross(ndim: int) -> np.ndarray:
    """The face-connected neighbourhood (a plus sign in 2D, a 6-neighbour cross in 3D)."""
    return ndi.generate_binary_structure(ndim, 1)


def _check(labels) -> np.ndarray:
    a = np.asarray(labels)
    if a.dtype.kind not in "iu":
        raise PanoptemError(f"Labels must have an integer dtype, not {a.dtype}; convert them to uint32.")
    return a


def erode_labels(labels, iterations: int = 1) -> np.ndarray:
    """Each label shrinks by one voxel per iteration wherever it borders background or
    another label (face neighbours); the array edge does not erode. Returns a copy.

    >>> erode_labels(np.array([[0, 1, 1, 1, 2, 2, 2, 2]]), 1)
    array([[0, 0, 1, 0, 0, 2, 2, 2]])
    """
    out = _check(labels).copy()
    fp = _cross(out.ndim)
    for _ in range(int(iterations)):
        if not out.any():
            break
        hi = ndi.maximum_filter(out, footprint=fp, mode="nearest")
        lo = ndi.minimum_filter(out, footprint=fp, mode="nearest")
        out[(hi != out) | (lo != out)] = 0
    return out


def dilate_labels(labels, iterations: int = 1) -> np.ndarray:
    """Each label grows by one voxel per iteration into background (face neighbours).
    A background voxel reached by two labels in the same step stays background, so
    touching objects keep a border and no label overwrites another. Returns a copy.

    >>> dilate_labels(np.array([[1, 0, 0, 0, 2]]), 2)
    array([[1, 1, 0, 2, 2]])
    """
    out = _check(labels).copy()
    fp = _cross(out.ndim)
    top = np.iinfo(out.dtype).max
    for _ in range(int(iterations)):
        # 'nearest' repeats edge voxels, which the footprint already holds: no edge effect
        hi = ndi.maximum_filter(out, footprint=fp, mode="nearest")
        lo = ndi.minimum_filter(np.where(out == 0, top, out), footprint=fp, mode="nearest")
        grow = (out == 0) & (hi > 0) & (hi == lo)
        if not grow.any():
            break
        out[grow] = hi[grow]
    return out


def fill_holes(labels) -> np.ndarray:
    """Fill background enclosed by a single label with that label, in 2D; a 3D array
    is filled plane by plane along its first axis (each xy plane). Background that
    touches the image edge or borders two labels is not a hole. Returns a copy.

    >>> fill_holes(np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]]))[1, 1]
    np.int64(1)
    """
    lab = _check(labels)
    if lab.ndim not in (2, 3):
        raise PanoptemError(f"Fill holes takes a 2D image or a 3D volume, not {lab.ndim}D labels.")
    work = lab[None] if lab.ndim == 2 else lab
    struct = np.zeros((3, 3, 3), bool)
    struct[1] = _cross(2)  # background connected within a plane only
    comp, n = ndi.label(work == 0, structure=struct)
    out = work.copy()
    if n == 0:
        return out[0] if lab.ndim == 2 else out
    edge = np.zeros(n + 1, bool)
    for side in (comp[:, 0, :], comp[:, -1, :], comp[:, :, 0], comp[:, :, -1]):
        edge[np.unique(side)] = True
    cids, lids = [], []
    for ax in (1, 2):  # face neighbours within the plane, both directions
        lo_sl = [slice(None)] * 3
        hi_sl = [slice(None)] * 3
        lo_sl[ax], hi_sl[ax] = slice(None, -1), slice(1, None)
        for a, b in ((tuple(lo_sl), tuple(hi_sl)), (tuple(hi_sl), tuple(lo_sl))):
            c, v = comp[a], work[b]
            m = (c > 0) & (v != 0)
            cids.append(c[m])
            lids.append(v[m])
    cid = np.concatenate(cids).astype(np.int64)
    lid = np.concatenate(lids)
    if cid.size == 0:
        return out[0] if lab.ndim == 2 else out
    order = np.lexsort((lid, cid))
    cid, lid = cid[order], lid[order]
    first = np.ones(cid.size, bool)
    first[1:] = (cid[1:] != cid[:-1]) | (lid[1:] != lid[:-1])
    cid, lid = cid[first], lid[first]  # distinct (component, neighbouring label) pairs
    n_nb = np.bincount(cid, minlength=n + 1)
    lut = np.zeros(n + 1, work.dtype)
    lut[cid] = lid
    ok = (n_nb == 1) & ~edge
    ok[0] = False
    fill = ok[comp]
    out[fill] = lut[comp[fill]]
    return out[0] if lab.ndim == 2 else out


def postprocess_labels(labels, erosion: int = 0, dilation: int = 0, holes: bool = False) -> np.ndarray:
    """Erode ``erosion`` times, then dilate ``dilation`` times, then fill holes (if
    ``holes``), as 3D inference's "Erode Labels", "Dilate Labels" and "Fill holes in
    segmentation" do. Returns the input itself when nothing is asked."""
    out = labels
    if erosion:
        out = erode_labels(out, erosion)
    if dilation:
        out = dilate_labels(out, dilation)
    if holes:
        out = fill_holes(out)
    return out


def remove_small_pieces(labels, min_area: int, in_place: bool = False) -> np.ndarray:
    """Pieces of a label (8-connected in 2D, 26-connected in 3D) smaller than ``min_area``
    pixels become background; larger pieces of the same label keep it. Returns a copy, or
    with ``in_place`` the labels themselves, changed, where they are C-contiguous (saves a copy
    of a large image's labels).

    >>> lab = np.array([[1, 1, 1, 0, 1], [1, 1, 0, 0, 0]], np.uint32)
    >>> remove_small_pieces(lab, 2)
    array([[1, 1, 1, 0, 0],
           [1, 1, 0, 0, 0]], dtype=uint32)
    """
    import cc3d
    a = _check(labels)
    if min_area <= 1 or not a.any():
        return a if in_place else a.copy()
    return cc3d.dust(np.ascontiguousarray(a), threshold=int(min_area), connectivity=8 if a.ndim == 2 else 26,
                     in_place=in_place)
