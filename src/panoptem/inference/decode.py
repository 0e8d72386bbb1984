"""2D panoptic decoding: centres, pixel grouping, semantic/instance merge.

Small pure functions on numpy arrays, each testable with hand-made inputs:

- :func:`semantic_classes` — class id per pixel from the probabilities;
- :func:`find_centers` — peaks of the centre heatmap (threshold + NMS);
- :func:`group_pixels` — every pixel joins the centre its offset points to;
- :func:`class_votes` — pixels of each class per instance (majority class);
- :func:`merge_panoptic` — semantic classes + instance ids -> panoptic labels
  (majority class, connected pieces, numbering per class, stuff painting);
- :func:`decode_panoptic` — all of them, at the image's resolution;
- :func:`decode_settings` — their settings from the parameters and the model card.

Coordinates: heatmap and offsets live on a grid of stride ``s`` (the model's
output stride, 4) over the network input; cell ``i`` has its centre at input
pixel ``s*i + (s-1)/2``.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage

from ..labels import compact, dtype_for_max_label, number_per_class
from ..models.card import OUTPUT_STRIDE as STRIDE
from .preprocess import linear_resize
from .resample import resize_at

#: up to this many centres :func:`group_pixels` measures every distance; above, a k-d tree
BRUTE_FORCE_CENTERS = 64


def find_centers(heatmap: np.ndarray, threshold: float = 0.1, min_distance: int = 3) -> np.ndarray:
    """Object centres: local maxima of ``heatmap`` (h, w) above ``threshold``.

    A cell is a centre when it is the maximum of the ``min_distance`` x
    ``min_distance`` window around it (so two centres are at least about
    ``min_distance - 1`` cells apart). Flat plateaus give one centre.
    Returns (K, 2) int array of (row, col) cells, strongest first.

    >>> hm = np.zeros((5, 5)); hm[1, 1] = 0.9; hm[3, 3] = 0.5
    >>> find_centers(hm, 0.1, 3).tolist()
    [[1, 1], [3, 3]]
    """
    hm = np.asarray(heatmap, dtype=np.float32)
    k = max(1, int(min_distance))
    peaks = hm > threshold
    if k > 1:
        local_max = ndimage.maximum_filter(hm, size=k, mode="constant", cval=-np.inf)
        peaks &= hm >= local_max
    if not peaks.any():
        return np.zeros((0, 2), np.int64)
    # one centre per plateau: connected groups of equal-valued peak cells (with a window of 3 or
    # more, touching peaks are equal; with 1 or 2 they need not be, and each value is its own)
    codes = np.zeros(hm.shape, np.uint32)  # each peak value as an integer code (equal values, equal codes)
    codes[peaks] = np.unique(hm[peaks], return_inverse=True)[1].reshape(-1) + 1
    lab, n = cc3d.connected_components(codes, connectivity=8, return_N=True)
    if n == np.count_nonzero(peaks):
        rc = np.argwhere(peaks)
    else:
        idx = ndimage.minimum_position(np.zeros_like(hm), lab, np.arange(1, n + 1))
        rc = np.asarray(idx, np.int64).reshape(-1, 2)
    order = np.argsort(-hm[rc[:, 0], rc[:, 1]], kind="stable")
    return rc[order]


def group_pixels(centers: np.ndarray, offsets: np.ndarray, stride: float = STRIDE,
                 origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Assign every cell of the offset grid to its nearest centre.

    ``centers`` (K, 2) are (row, col) positions in input pixels, ``offsets``
    (2, h, w) the predicted (dy, dx) from each cell to its object's centre in
    input pixels, on a grid of the given ``stride``; ``origin`` is the grid cell
    of ``offsets[:, 0, 0]`` when they are a crop of a larger grid. Returns
    (h, w) int32 ids 1..K (index into ``centers`` + 1); 0 everywhere when K == 0.
    """
    _, h, w = offsets.shape
    if len(centers) == 0:
        return np.zeros((h, w), np.int32)
    c0 = (stride - 1) / 2.0
    yy = (np.arange(h, dtype=np.float32)[:, None] + origin[0]) * stride + c0
    xx = (np.arange(w, dtype=np.float32)[None, :] + origin[1]) * stride + c0
    ty = (yy + offsets[0]).astype(np.float64)
    tx = (xx + offsets[1]).astype(np.float64)
    c = np.asarray(centers, np.float32).astype(np.float64)
    if len(c) > BRUTE_FORCE_CENTERS:
        return _closest_by_tree(ty, tx, c)
    # few centres (the usual case): one pass per centre beats building a tree
    return _closest(ty, tx, c)


#: nearest centres a k-d tree proposes per target, among which :func:`_closest_by_tree` decides
TREE_CANDIDATES = 4


def _closest_by_tree(ty: np.ndarray, tx: np.ndarray, c: np.ndarray) -> np.ndarray:
    """:func:`_closest` for many centres, through a k-d tree, with the same answer: the tree
    proposes each target's nearest few, the squared distances are computed as ``_closest``
    computes them, and a tie goes to the first centre (a tree breaks ties as it happens to);
    where even the last proposal is as near as the first, every centre is compared."""
    from scipy.spatial import cKDTree  # crowded planes only: scipy.spatial costs a start-up
    pts = np.stack([ty.ravel(), tx.ravel()], axis=1)
    if not np.isfinite(pts).all():  # as _closest: no centre for a target that is not a number
        ids = np.zeros(len(pts), np.int32)
        ok = np.isfinite(pts).all(axis=1)
        ids[ok] = _closest_by_tree(pts[ok, 0], pts[ok, 1], c)
        return ids.reshape(ty.shape)
    k = min(TREE_CANDIDATES, len(c))
    dist, cand = cKDTree(c).query(pts, k=k)
    dist, cand = dist.reshape(len(pts), k), cand.reshape(len(pts), k)
    d = (pts[:, :1] - c[cand, 0]) ** 2
    d += (pts[:, 1:] - c[cand, 1]) ** 2
    best = d.min(axis=1, keepdims=True)
    ids = np.where(d == best, cand, len(c)).min(axis=1).astype(np.int32) + 1
    crowded = np.flatnonzero(dist[:, -1] <= dist[:, 0] * (1 + 1e-9))  # more may be as near
    if k == len(c):  # every centre was proposed
        crowded = crowded[:0]
    if crowded.size:
        ids[crowded] = _closest(pts[crowded, 0], pts[crowded, 1], c)
    return ids.reshape(ty.shape)


def _closest(ty: np.ndarray, tx: np.ndarray, centers) -> np.ndarray:
    """For every target ``(ty, tx)`` (float64), 1 + the index of the closest of ``centers``
    (each a ``(cy, cx)`` pair of numbers, or of arrays broadcast against the targets; +inf
    is never closer), the first on a tie; 0 where none is finite."""
    best = np.full(ty.shape, np.inf)
    ids = np.zeros(ty.shape, np.int32)
    d, e = np.empty(ty.shape), np.empty(ty.shape)
    for k, (cy, cx) in enumerate(centers):
        np.subtract(ty, cy, out=d)
        np.multiply(d, d, out=d)
        np.subtract(tx, cx, out=e)
        np.multiply(e, e, out=e)
        d += e
        closer = d < best
        np.copyto(best, d, where=closer)
        ids[closer] = k + 1
    return ids


def centers_in_pixels(centers: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """Heatmap cells (row, col) -> their centres in network-input pixels (float32)."""
    return np.asarray(centers).astype(np.float32) * stride + (stride - 1) / 2.0


def class_votes(instances: np.ndarray, semantic: np.ndarray, n_instances: int, n_classes: int) -> np.ndarray:
    """(n_instances + 1, n_classes) pixel counts of each class under each
    instance id (0..n_instances); add them up over tiles, then the majority
    class of instance ``i`` is ``votes[i].argmax()``.

    >>> class_votes(np.array([1, 1, 1, 2]), np.array([2, 2, 1, 1]), 2, 3)[1:].tolist()
    [[0, 1, 2], [0, 1, 0]]
    """
    codes = np.asarray(instances, np.int64).ravel() * n_classes + np.asarray(semantic, np.int64).ravel()
    return np.bincount(codes, minlength=(n_instances + 1) * n_classes).reshape(-1, n_classes)


def stuff_label(class_id: int, label_divisor: int | None) -> int:
    """Label of the semantic segment of a class: ``class * divisor`` (the class id without a divisor)."""
    return int(class_id) * int(label_divisor) if label_divisor else int(class_id)


def paint_stuff(labels: np.ndarray, semantic: np.ndarray, stuff_ids, label_divisor: int | None) -> None:
    """Fill the pixels of each semantic class in ``stuff_ids`` that hold no
    instance with that class's :func:`stuff_label`, in place."""
    for s in stuff_ids:
        labels[(semantic == s) & (labels == 0)] = stuff_label(s, label_divisor)


def stuff_areas(labels: np.ndarray, semantic: np.ndarray, stuff_ids) -> dict[int, int]:
    """Pixels of each semantic class in ``stuff_ids`` that hold no instance."""
    free = labels == 0
    return {int(s): int(np.count_nonzero((semantic == s) & free)) for s in stuff_ids}


def merge_panoptic(semantic: np.ndarray, instances: np.ndarray, thing_ids, stuff_ids=(),
                   label_divisor: int | None = 10000, stuff_area: int = 64) -> np.ndarray:
    """Combine a semantic class map and an instance id map into panoptic labels.

    ``semantic`` (H, W): class id per pixel (0 = background). ``instances``
    (H, W): centre id per pixel (0 = none). Each instance takes the majority
    thing class of its pixels; disconnected pieces of one instance become
    separate objects. Labels are ``class * label_divisor + n`` (n from 1), or
    1..N over all objects when ``label_divisor`` is 0/None. Stuff classes
    covering at least ``stuff_area`` pixels fill where no instance is, with
    label ``class * label_divisor`` (or the class id without a divisor).
    Thing pixels with no centre stay 0.
    """
    semantic = np.asarray(semantic)
    thing_ids = [int(t) for t in thing_ids]
    if len(thing_ids) == 1:
        is_thing = semantic == thing_ids[0]
    else:
        is_thing = np.isin(semantic, thing_ids) if thing_ids else np.zeros(semantic.shape, bool)
    ids = np.asarray(instances)
    if ids.dtype not in (np.uint16, np.uint32):
        ids = ids.astype(np.uint32)
    # C order: pieces are numbered in raster order whatever the input's memory layout
    inst = np.ascontiguousarray(ids * is_thing)
    n_cls = int(max([0, *thing_ids, *stuff_ids])) + 1
    # connected pieces, separately per instance
    pieces, n_pieces = cc3d.connected_components(inst, connectivity=8, return_N=True)
    if len(thing_ids) == 1:
        piece_cls = np.full(n_pieces + 1, thing_ids[0], np.int64)
    elif n_pieces:
        # each instance takes the majority class of its pixels
        major = class_votes(inst[is_thing], semantic[is_thing], int(inst.max()), n_cls).argmax(axis=1)
        piece_cls = np.zeros(n_pieces + 1, np.int64)
        piece_cls[pieces.ravel()] = major[inst].ravel()
    else:
        piece_cls = np.zeros(1, np.int64)
    piece_cls[0] = 0
    lut = np.zeros(n_pieces + 1, np.int64)
    lut[1:] = number_per_class(piece_cls[1:], np.isin(piece_cls[1:], thing_ids), label_divisor)
    max_label = max([int(lut.max()), *(stuff_label(s, label_divisor) for s in stuff_ids)])
    out = lut.astype(dtype_for_max_label(max_label))[pieces]
    areas = stuff_areas(out, semantic, stuff_ids)
    paint_stuff(out, semantic, [s for s in stuff_ids if areas[int(s)] >= stuff_area], label_divisor)
    return out


def _upsample_nearest(a: np.ndarray, shape: tuple[int, int], stride) -> np.ndarray:
    """Nearest-neighbour upsampling of the last two axes of ``a``, a grid whose cells are
    ``stride`` pixels (one number, or one per axis; a :class:`~fractions.Fraction` is
    followed exactly), to ``shape``. Pixel ``i`` takes cell ``floor(i / stride)``.

    >>> _upsample_nearest(np.array([[1, 2], [3, 4]]), (3, 5), (Fraction(3, 2), 2)).tolist()
    [[1, 1, 2, 2, 2], [1, 1, 2, 2, 2], [3, 3, 4, 4, 4]]
    """
    sy, sx = (stride, stride) if np.isscalar(stride) or isinstance(stride, Fraction) else stride
    for axis, s, size in ((-1, sx, shape[1]), (-2, sy, shape[0])):  # columns first: fewer rows to copy
        m = a.shape[axis]
        if float(s).is_integer() and m * s >= size:  # whole cells: each repeated
            a = np.repeat(a, int(s), axis=axis)
            a = a[..., :size, :] if axis == -2 else a[..., :size]
        else:  # e.g. the rows of an ortho-plane run's thin planes: 165 from a grid of 83 / 4
            i = np.arange(size, dtype=np.int64)
            at = i * s.denominator // s.numerator if isinstance(s, Fraction) else (i // s).astype(np.intp)
            a = np.take(a, np.minimum(at, m - 1), axis=axis)
    return a


def things_and_stuff(class_ids, thing_ids, semantic_only: bool = False) -> tuple[list[int], list[int]]:
    """The classes decoded as instances and as semantic segments ("Semantic only": none as instances).

    >>> things_and_stuff([1, 2], [1]), things_and_stuff([1, 2], [1], semantic_only=True)
    (([1], [2]), ([], [1, 2]))
    """
    things = [] if semantic_only else [int(t) for t in thing_ids]
    return things, [int(c) for c in class_ids if int(c) not in things]


def semantic_classes(probability: np.ndarray, class_ids, confidence_thr: float = 0.5) -> np.ndarray:
    """Class id per pixel from (C, H, W) probabilities.

    One channel: ``class_ids[0]`` where probability >= ``confidence_thr``.
    Several channels (background + classes): argmax, channel i -> class_ids[i-1].
    """
    p = np.asarray(probability)
    if p.shape[0] == 1:
        return (p[0] >= confidence_thr).astype(np.int32) * np.int32(class_ids[0])
    lut = np.array([0, *[int(c) for c in class_ids]], np.int32)
    return lut[p.argmax(axis=0)]


def decode_parts(probability: np.ndarray, heatmap: np.ndarray, offsets: np.ndarray, *,
                 class_ids=(1,), thing_ids=(1,), confidence_thr: float = 0.5,
                 center_confidence_thr: float = 0.1, min_distance_object_centers: int = 3,
                 fine_boundaries: bool = False, semantic_only: bool = False,
                 out_shape: tuple[int, int] | None = None, stride: int = STRIDE, scale=None):
    """The steps of :func:`decode_panoptic` before the merge: ``(semantic,
    ids, centers, things, stuff)`` with ``semantic`` the class per output
    pixel, ``ids`` the centre index + 1 per output pixel (0: none), ``centers``
    (K, 2) heatmap cells, and the thing and stuff class ids in use."""
    prob = np.asarray(probability, np.float32)
    hm = np.asarray(heatmap, np.float32)
    hm = hm.reshape(hm.shape[-2:])
    H, W = prob.shape[-2:]
    out_shape = tuple(out_shape or (H, W))
    if scale is not None:  # exact: see resample.resize_at
        sy, sx = (Fraction(s) for s in scale)
        prob = resize_at(prob, (1 / sy, 1 / sx), out_shape)
    else:
        if out_shape != (H, W):
            prob = linear_resize(prob, out_shape)
        sy, sx = Fraction(out_shape[0], H), Fraction(out_shape[1], W)  # output pixels per network-input pixel
    semantic = semantic_classes(prob, class_ids, confidence_thr)
    things, stuff = things_and_stuff(class_ids, thing_ids, semantic_only)
    centers = np.zeros((0, 2), np.int64)
    if things:
        centers = find_centers(hm, center_confidence_thr, min_distance_object_centers)
        centers_px = centers_in_pixels(centers, stride)
        if fine_boundaries:
            off = linear_resize(offsets, (hm.shape[0] * stride, hm.shape[1] * stride))
            ids = group_pixels(centers_px, off, stride=1)
            ids = _upsample_nearest(ids, out_shape, (sy, sx))
        else:
            ids = group_pixels(centers_px, np.asarray(offsets, np.float32), stride=stride)
            if len(centers) < 2**16:
                ids = ids.astype(np.uint16)  # a quarter of the bytes to upsample and merge
            ids = _upsample_nearest(ids, out_shape, (stride * sy, stride * sx))
    else:
        ids = np.zeros(out_shape, np.int32)
    return semantic, ids, centers, things, stuff


def decode_panoptic(probability: np.ndarray, heatmap: np.ndarray, offsets: np.ndarray, *,
                    class_ids=(1,), thing_ids=(1,), confidence_thr: float = 0.5,
                    center_confidence_thr: float = 0.1, min_distance_object_centers: int = 3,
                    fine_boundaries: bool = False, semantic_only: bool = False,
                    label_divisor: int | None = 10000, out_shape: tuple[int, int] | None = None,
                    stride: int = STRIDE, stuff_area: int = 64, return_centers: bool = False, scale=None,
                    background_rows: np.ndarray | None = None):
    """Panoptic labels for one plane from the network's outputs.

    ``probability`` (C, H, W) at the network-input resolution; ``heatmap``
    (1 or none, h, w) and ``offsets`` (2, h, w) at ``stride``. ``out_shape``
    (default (H, W)) is the size of the returned labels: the semantic map is
    interpolated bilinearly to it, instance ids by nearest neighbour, so
    object outlines follow the smooth semantic map; ``scale`` (output pixels per
    network-input pixel, rows and columns) where that is not ``out_shape`` over (H, W)
    (a resampled plane, see :func:`~.resample.resize_at`).

    Centers Min Distance is always in heatmap cells (``stride`` network-input
    pixels each), with or without Fine boundaries; Fine boundaries only moves
    the grouping from the stride grid to every network-input pixel, which
    sharpens borders between touching objects.
    """
    semantic, ids, centers, things, stuff = decode_parts(
        probability, heatmap, offsets, class_ids=class_ids, thing_ids=thing_ids, confidence_thr=confidence_thr,
        center_confidence_thr=center_confidence_thr, min_distance_object_centers=min_distance_object_centers,
        fine_boundaries=fine_boundaries, semantic_only=semantic_only, out_shape=out_shape, stride=stride,
        scale=scale)
    if background_rows is not None:  # rows with nothing to find (an xz / yz plane's blank sections)
        semantic[np.asarray(background_rows, bool)] = 0
    labels = merge_panoptic(semantic, ids, things, stuff, label_divisor, stuff_area)
    if return_centers:
        return labels, centers
    return labels


#: :func:`decode_planes` decodes planes together up to this many pixels per group
SMALL_PLANE = 1 << 18


def decode_planes(probability, heatmap, offsets, *, out_shape: tuple[int, int] | None = None,
                  compacted: bool = False, background_rows: np.ndarray | None = None, **settings) -> list:
    """:func:`decode_panoptic` of each of N planes: ``probability`` (N, C, H, W), ``heatmap``
    (N, 1, h, w) and ``offsets`` (N, 2, h, w), as arrays or sequences of planes; returns the N
    label planes, equal to decoding them one by one. For a model with one thing class and
    default decoding (no Fine boundaries), planes are decoded in groups of up to
    :data:`SMALL_PLANE` output pixels (a large plane alone) in a few array operations: the
    many thin planes of an xz or yz stack then cost little more than their pixels, and every
    plane skips the general merge (also when ``out_shape`` is larger than the network's: the
    probabilities of a group are brought to it in one call). ``compacted``: each plane as
    ``(local, ids)``, what :func:`~panoptem.labels.compact` gives for its labels, which the
    decoding knows without another pass. ``background_rows``: rows of the labels where nothing is
    found (a bool per row: an xz / yz plane's blank sections), cut before the pieces are made."""
    n = len(probability)
    cls, things = list(settings.get("class_ids", (1,))), list(settings.get("thing_ids", (1,)))
    C, H, W = probability[0].shape[-3:] if n else (1, 0, 0)
    simple = (n and C == 1 and len(cls) == 1 and things == cls and not settings.get("fine_boundaries")
              and not settings.get("semantic_only"))
    if not simple:
        labs = [decode_panoptic(probability[i], heatmap[i], offsets[i], out_shape=out_shape,
                                background_rows=background_rows, **settings) for i in range(n)]
        return [compact(a) for a in labs] if compacted else labs
    shape = tuple(out_shape or (H, W))
    group = max(1, SMALL_PLANE // max(shape[0] * shape[1], 1))
    out = []
    for i in range(0, n, group):
        j = min(i + group, n)
        out += _decode_group(probability[i:j], heatmap[i:j], offsets[i:j], cls[0], compacted, settings, shape,
                             background_rows)
    return out


def _decode_group(probability, heatmap, offsets, thing: int, compacted: bool, settings: dict,
                  shape: tuple[int, int], background_rows: np.ndarray | None = None) -> list:
    """:func:`decode_planes` of planes of one thing class, together, labels of ``shape``."""
    n = len(probability)
    H, W = probability[0].shape[-2:]
    stride = settings.get("stride", STRIDE)
    thr = settings.get("confidence_thr", 0.5)
    fg = np.empty((n, *shape), bool)
    scale = settings.get("scale")
    sy, sx = (Fraction(v) for v in scale) if scale is not None else (Fraction(shape[0], H), Fraction(shape[1], W))
    if scale is not None:
        np.greater_equal(resize_at(np.stack([np.asarray(p, np.float32)[0] for p in probability]),
                                   (1 / sy, 1 / sx), shape), thr, out=fg)
    elif shape == (H, W):
        for i, p in enumerate(probability):  # no float copy of float32 planes (decode_panoptic compares in float32)
            np.greater_equal(np.asarray(p, np.float32)[0], thr, out=fg[i])
    else:  # the planes as the channels of one image: each resized as decode_panoptic resizes it
        np.greater_equal(linear_resize(np.stack([np.asarray(p, np.float32)[0] for p in probability]), shape),
                         thr, out=fg)
    if background_rows is not None:
        fg[:, np.asarray(background_rows, bool)] = False
    hm = np.stack([np.asarray(a, np.float32).reshape(a.shape[-2:]) for a in heatmap])
    offsets = np.stack([np.asarray(a, np.float32) for a in offsets])
    h, w = hm.shape[1:]
    k = max(1, int(settings.get("min_distance_object_centers", 3)))
    # the planes' heatmaps one under another, k rows of -inf between: the maximum filter and
    # the plateau labels of find_centers see each plane as they would alone
    tall = np.full((n, h + k, w), -np.inf, np.float32)
    tall[:, :h] = hm
    rc = find_centers(tall.reshape(-1, w), settings.get("center_confidence_thr", 0.1), k)
    plane, rc[:, 0] = np.divmod(rc[:, 0], h + k)
    order = np.argsort(plane, kind="stable")  # by plane, strongest first within a plane (as alone)
    plane, rc = plane[order], rc[order]
    counts = np.bincount(plane, minlength=n)
    ids = _group_planes(centers_in_pixels(rc, stride), plane, counts, offsets, stride)
    ids = _upsample_nearest_planes(ids, shape, (stride * sy, stride * sx))
    masked = np.empty((n, *shape), ids.dtype if ids.dtype in (np.uint16, np.uint32) else np.uint32)
    np.multiply(ids, fg, out=masked, casting="unsafe")  # each plane's centre ids where it is foreground
    return _merge_planes(masked, thing, settings.get("label_divisor", 10000), compacted)


def _group_planes(centers: np.ndarray, plane: np.ndarray, counts: np.ndarray, offsets: np.ndarray,
                  stride: int) -> np.ndarray:
    """:func:`group_pixels` of N planes at once: (N, h, w) ids; ``centers`` (K, 2) sorted by
    ``plane``, ``counts`` centres per plane. The same arithmetic as one plane at a time."""
    n, _, h, w = offsets.shape
    ids = np.zeros((n, h, w), np.int32)
    crowded = np.flatnonzero(counts > BRUTE_FORCE_CENTERS)
    start = np.concatenate([[0], np.cumsum(counts)])
    for p in crowded:  # many centres: a k-d tree, plane by plane
        ids[p] = group_pixels(centers[start[p]:start[p + 1]], offsets[p], stride=stride)
    few = np.flatnonzero((counts > 0) & (counts <= BRUTE_FORCE_CENTERS))
    if not few.size:
        return ids
    c0 = (stride - 1) / 2.0
    yy = np.arange(h, dtype=np.float32)[:, None] * stride + c0
    xx = np.arange(w, dtype=np.float32)[None, :] * stride + c0
    ty = (yy + offsets[few, 0]).astype(np.float64)
    tx = (xx + offsets[few, 1]).astype(np.float64)
    c = np.asarray(centers, np.float32).astype(np.float64)

    def rank(j):  # the j-th centre of every plane that has one; +inf elsewhere
        has = counts[few] > j
        at = np.minimum(start[few] + j, len(c) - 1)
        return (np.where(has, c[at, 0], np.inf)[:, None, None], np.where(has, c[at, 1], np.inf)[:, None, None])

    ids[few] = _closest(ty, tx, (rank(j) for j in range(int(counts[few].max()))))
    return ids


def _upsample_nearest_planes(ids: np.ndarray, shape: tuple[int, int], stride) -> np.ndarray:
    """:func:`_upsample_nearest` of (N, h, w) ids by ``stride`` (rows, columns), as uint16 where
    they fit."""
    dt = np.uint16 if ids.max(initial=0) < 2**16 else ids.dtype
    return _upsample_nearest(ids.astype(dt, copy=False), shape, stride)


def _merge_planes(masked: np.ndarray, thing: int, label_divisor: int | None, compacted: bool = False) -> list:
    """:func:`merge_panoptic` of N planes of one thing class, ``masked`` (N, H, W): centre
    ids where the class is, 0 elsewhere. Each plane's pieces (8-connected, one centre id)
    are numbered in its raster order, plane by plane (a call costs little beside its pixels).
    ``compacted``: each plane as ``(local, ids)``, what :func:`~panoptem.labels.compact`
    would give for its labels (``local`` may be uint16)."""
    div = int(label_divisor or 0)
    base = thing * div if div else 0  # piece j of a plane becomes base + j, as number_per_class numbers it
    out = []
    for plane in masked:
        pieces, k = cc3d.connected_components(plane, connectivity=8, return_N=True)
        if div and k >= div:  # the error number_per_class gives
            number_per_class(np.full(k, thing), np.ones(k, bool), div)
        if compacted:
            out.append((pieces, np.arange(base + 1, base + 1 + k, dtype=np.int64)))
            continue
        lab = pieces.astype(dtype_for_max_label(base + k))
        if base:
            np.add(lab, lab.dtype.type(base), out=lab, where=pieces > 0)
        out.append(lab)
    return out


def decode_settings(params, card) -> dict[str, Any]:
    """Keyword arguments of :func:`decode_panoptic` (and of
    :func:`~.large2d.decode_large`) for the parameters of a plane
    (:class:`~panoptem.params.PlaneParams`: Params2D or Params3D) and a model card: the classes from the card, thresholds and
    the label divisor from the parameters."""
    return dict(class_ids=[c.id for c in card.classes], thing_ids=card.thing_ids,
                confidence_thr=params.confidence_thr, center_confidence_thr=params.center_confidence_thr,
                min_distance_object_centers=params.min_distance_object_centers,
                fine_boundaries=params.fine_boundaries, semantic_only=params.semantic_only,
                label_divisor=params.label_divisor, stride=card.output_stride)
