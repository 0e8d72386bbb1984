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


def _filtered(op, labels, iterations: int) -> np.ndarray:
    """``op(copy of labels, iterations)``; 64-bit ids from 2**53 on (scipy's rank filters
    round them through float64) are numbered 1..k for it and given back after."""
    a = _check(labels)
    if a.dtype.itemsize < 8 or not a.size or int(a.max()) < 1 << 53:
        return op(a.copy(), iterations)
    from ..labels import compact
    local, ids = compact(a)
    return np.concatenate([np.zeros(1, a.dtype), ids.astype(a.dtype)])[op(local, iterations)]


def erode_labels(labels, iterations: int = 1) -> np.ndarray:
    """Each label shrinks by one voxel per iteration wherever it borders background or
    another label (face neighbours); the array edge does not erode. Returns a copy.

    >>> erode_labels(np.array([[0, 1, 1, 1, 2, 2, 2, 2]]), 1)
    array([[0, 0, 1, 0, 0, 2, 2, 2]])
    """
    return _filtered(_erode, labels, iterations)


def _erode(out: np.ndarray, iterations: int) -> np.ndarray:
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
    return _filtered(_dilate, labels, iterations)


def _dilate(out: np.ndarray, iterations: int) -> np.ndarray:
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


def background_parts(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """The background of each xy plane of ZYX ``labels`` as connected parts (face neighbours
    within the plane only): (part ids, int32, 0 on objects; number of parts)."""
    struct = np.zeros((3, 3, 3), bool)
    struct[1] = _cross(2)
    comp, n = ndi.label(labels == 0, structure=struct)
    return comp, int(n)


def part_neighbours(comp: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (part, label) pairs of background parts ``comp`` (see
    :func:`background_parts`) and the labels they touch within their plane, sorted by part."""
    cids, lids = [], []
    for ax in (1, 2):  # face neighbours within the plane, both directions
        lo_sl = [slice(None)] * 3
        hi_sl = [slice(None)] * 3
        lo_sl[ax], hi_sl[ax] = slice(None, -1), slice(1, None)
        for a, b in ((tuple(lo_sl), tuple(hi_sl)), (tuple(hi_sl), tuple(lo_sl))):
            c, v = comp[a], labels[b]
            m = (c > 0) & (v != 0)
            cids.append(c[m])
            lids.append(v[m])
    cid = np.concatenate(cids).astype(np.int64)
    lid = np.concatenate(lids)
    order = np.lexsort((lid, cid))
    cid, lid = cid[order], lid[order]
    first = np.ones(cid.size, bool)
    first[1:] = (cid[1:] != cid[:-1]) | (lid[1:] != lid[:-1])
    return cid[first], lid[first]


def sole_neighbour(cid: np.ndarray, lid: np.ndarray, n: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """For parts 0..n: how many distinct labels each touches, and the label of those that
    touch exactly one (0 elsewhere), from the pairs of :func:`part_neighbours`."""
    count = np.bincount(cid, minlength=n + 1)
    lut = np.zeros(n + 1, dtype)
    one = count[cid] == 1
    lut[cid[one]] = lid[one]
    return count, lut


#: the in-plane sides of a ZYX array: first / last row, first / last column (every plane's)
SIDES = {"y0": (slice(None), 0), "y1": (slice(None), -1),
         "x0": (slice(None), slice(None), 0), "x1": (slice(None), slice(None), -1)}


def touching(comp: np.ndarray, sides) -> np.ndarray:
    """The ids of the parts ``comp`` (ZYX) that reach the given in-plane ``sides`` (keys of
    :data:`SIDES`)."""
    ids = [np.unique(comp[SIDES[s]]) for s in sides]
    out = np.unique(np.concatenate(ids)) if ids else np.zeros(0, comp.dtype)
    return out[out > 0]


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
    comp, n = background_parts(work)
    out = work.copy()
    if n:
        count, lut = sole_neighbour(*part_neighbours(comp, work), n, work.dtype)
        ok = count == 1
        ok[0] = False
        ok[touching(comp, ("y0", "y1", "x0", "x1"))] = False
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
