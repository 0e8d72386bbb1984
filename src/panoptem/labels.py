"""Label-array toolkit shared by decoding, linking, consensus, evaluation,
measurement, proofreading and the napari plugin.

A label array holds 0 for background and object ids > 0. With a label divisor
("Max objects per class") an id is ``class * divisor + n``: ``n > 0`` is an
object (an instance of a "thing" class), ``n == 0`` a semantic ("stuff")
segment of that class. Everything here is vectorised over voxels or objects.

- :func:`as_labels`, :func:`dtype_for_max_label`, :func:`class_map` — checks and conventions;
- :func:`compact` — ids to 0..k, with the original ids (and voxel counts);
- :func:`lookup`, :func:`map_ids` — new ids for old, voxel by voxel;
- :func:`object_stats`, :func:`keep_mask`, :func:`filter_objects` — sizes, boxes and filters;
- :func:`overlap_table`, :func:`greedy_match` — overlapping pairs of two label arrays and
  one-to-one matching;
- :func:`rank_within`, :func:`number_per_class`, :func:`relabel_sequential_per_class` —
  numbering ``class * divisor + 1..N`` per class.
"""
from __future__ import annotations

import fastremap
import numpy as np

from .errors import PanoptemError

__all__ = ["as_labels", "native", "dtype_for_max_label", "class_map", "compact", "lookup", "map_ids", "object_stats",
           "keep_mask", "filter_objects", "overlap_table", "pair_counts", "greedy_match", "rank_within",
           "number_per_class", "relabel_sequential_per_class"]


# ---------------------------------------------------------------- conventions

def as_array(a, what: str = "image") -> np.ndarray:
    """``np.asarray(a)``, with one error where ``a`` is nested lists of unequal lengths.

    >>> as_array([[1, 2], [3]])
    Traceback (most recent call last):
    panoptem.errors.PanoptemError: The image is nested lists of unequal lengths, not an array; give a numpy array (every row as long as the others).
    """
    try:
        return np.asarray(a)
    except ValueError as e:
        if "inhomogeneous" not in str(e) and "sequence" not in str(e):
            raise
        raise PanoptemError(f"The {what} is nested lists of unequal lengths, not an array; give a numpy array "
                            "(every row as long as the others).") from None


def as_labels(a, what: str = "label image") -> np.ndarray:
    """``a`` as a 2D or 3D unsigned integer label array (no copy where possible).

    bool becomes uint8; whole-numbered floats are accepted; signed integers must
    not be negative. ``what`` names the array in the error messages.

    >>> as_labels(np.array([[0, 2], [3, 0]], np.int16)).dtype
    dtype('uint16')
    """
    a = as_array(a, what)
    if a.ndim not in (2, 3):
        raise PanoptemError(f"The {what} has {a.ndim} dimensions; "
                            "give a 2D (YX) or 3D (ZYX) label image.")
    if a.dtype == bool:
        return a.view(np.uint8)
    if a.dtype.kind == "f":
        if a.size and (not np.isfinite(a).all() or (a != np.round(a)).any()):
            raise PanoptemError(f"The {what} holds fractional values, NaN or infinity; give an integer label "
                                "image.")
        check_not_negative(a, what)
        if a.size and a.max() >= 2.0 ** 64:
            raise PanoptemError(f"The {what} holds ids of 2**64 or more, which no integer type holds; "
                                "renumber the labels (e.g. from 1) first.")
        return a.astype(np.uint64)
    if a.dtype.kind not in "iu":
        raise PanoptemError(f"The {what} has dtype {a.dtype}; give an integer label image.")
    if a.dtype.kind == "i":
        check_not_negative(a, what)
        a = a.view(a.dtype.str.replace("i", "u"))  # same bits, no copy
    return native(a)


def check_not_negative(a: np.ndarray, what: str = "label image") -> None:
    """One error where labels of a signed type hold a negative id (none is background)."""
    if a.dtype.kind in "if" and a.size and a.min() < 0:
        raise PanoptemError(f"The {what} holds negative labels; labels must be 0 (background) or positive.")


def native(a: np.ndarray) -> np.ndarray:
    """``a`` in the machine's byte order (a copy only for big-endian data, such as ImageJ's
    TIFFs: fastremap and cc3d take native arrays only).

    >>> native(np.array([1, 300], ">u2")).dtype.isnative
    True
    """
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def nonzero_ids(labels: np.ndarray) -> np.ndarray:
    """The sorted ids in ``labels`` other than 0.

    >>> nonzero_ids(np.array([[0, 7], [3, 7]])).tolist()
    [3, 7]
    """
    import fastremap
    ids = np.asarray(fastremap.unique(native(np.asarray(labels))))
    return ids[ids != 0]


def dtype_for_max_label(max_label: int) -> np.dtype:
    """uint32 when ``max_label`` fits, else uint64.

    >>> dtype_for_max_label(2**32)
    dtype('uint64')
    """
    return np.dtype(np.uint32) if max_label < 2**32 else np.dtype(np.uint64)


def class_map(labels: np.ndarray, label_divisor: int | None) -> np.ndarray:
    """Class id of every label: ``label // divisor``; without a divisor 1 for
    every object (0 for background).

    >>> class_map(np.array([0, 1003, 2001]), 1000).tolist(), class_map(np.array([0, 7]), None).tolist()
    ([0, 1, 2], [0, 1])
    """
    labels = np.asarray(labels)
    if label_divisor:  # in 64 bits: a divisor larger than a narrow dtype must not overflow
        wide = labels.astype(np.uint64 if labels.dtype == np.uint64 else np.int64, copy=False)
        return wide // wide.dtype.type(label_divisor)
    return (labels > 0).astype(np.int64)


# ---------------------------------------------------------------- objects

def _id_range(labels: np.ndarray) -> tuple[int, int]:
    """(lowest, highest) id of a label array; refuses non-integer arrays and negative ids."""
    if labels.dtype.kind not in "ui":
        raise PanoptemError(f"Label images must be integer, got {labels.dtype}; convert them with astype(np.uint32).")
    if labels.size == 0:
        return 0, 0
    lo = int(labels.min()) if labels.dtype.kind == "i" else 0
    if lo < 0:
        raise PanoptemError("Label images must not contain negative ids; 0 is background, objects are > 0.")
    return lo, int(labels.max())


#: voxels up to which ids are counted with ``np.bincount`` (as fast as fastremap on a slice; on a
#: volume its copy to machine integers makes it about twice as slow)
SMALL_ARRAY = 1 << 21


def compact(labels: np.ndarray, return_counts: bool = False):
    """Relabel ``labels`` to 0..k (int32) in order of the original ids.

    Returns ``(local, ids)`` with ``ids[j - 1]`` the original id of local id j,
    and ``counts`` (voxels per id, int64) as a third item if asked.

    >>> local, ids = compact(np.array([0, 70, 5, 70]))
    >>> local.tolist(), ids.tolist()
    ([0, 2, 1, 2], [5, 70])
    """
    labels = native(np.asarray(labels))
    _, hi = _id_range(labels)
    if labels.size <= SMALL_ARRAY and hi < max(4 * labels.size, 1 << 16):  # a slice, small ids: count directly
        c = np.bincount(labels.ravel().astype(np.intp, copy=False), minlength=1)
        u = np.flatnonzero(c).astype(labels.dtype)
        c = c[u]
    else:
        u, c = fastremap.unique(labels, return_counts=True)
    u, c = np.asarray(u), np.asarray(c, np.int64)
    ids, counts = u[u > 0], c[u > 0]
    if ids.size == 0:
        local = np.zeros(labels.shape, np.int32)
    elif int(ids[-1]) < (1 << 24):
        lut = np.zeros(int(ids[-1]) + 1, np.int32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        local = lut[labels]
    else:
        ref = np.concatenate([np.zeros(1, ids.dtype), ids])
        local = np.searchsorted(ref, labels).astype(np.int32)
    return (local, ids, counts) if return_counts else (local, ids)


#: voxels from which :func:`lookup` splits the work between threads
THREADED_LOOKUP = 1 << 22
#: voxels per piece when :func:`lookup` reads and writes contiguous arrays: numpy gathers through
#: a temporary index array of 8 bytes per voxel, which at this size stays in the cache and in the
#: heap (a 165 x 768 x 1024 stack: 0.15 s where pieces of whole planes took 0.4-1.1 s, faulting in
#: fresh memory for every piece)
LOOKUP_PIECE = 1 << 18
#: planes per chunk when :func:`lookup` writes into a transposed view (fastest on a 2-core
#: CPU for yz stacks of 768 x 1024 slices: 1.1 s per 10^8 voxels against 1.7 s by 512)
TRANSPOSED_CHUNK = 32


def lookup(lut: np.ndarray, labels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``lut[labels]``; a large array in pieces, on every core (numpy releases the GIL while
    it gathers). ``out``: where to write it, an array of the shape of ``labels``: ``labels``
    itself (in place, no new memory), or e.g. a transposed view of a volume in another order;
    thin chunks along the first axis then write it with few cache misses (a transposed copy of
    a volume costs about one gather).

    >>> lookup(np.array([0, 7, 5]), np.array([[2, 0], [1, 1]])).tolist()
    [[5, 0], [7, 7]]
    """
    labels = np.asarray(labels)
    from .inference.runtime import cpu_count
    n = cpu_count() if labels.size >= THREADED_LOOKUP and labels.ndim and labels.shape[0] > 1 else 1
    if out is None and n == 1:
        return lut[labels]
    if out is None:
        out = np.empty(labels.shape, lut.dtype)
    elif out.shape != labels.shape:
        raise PanoptemError(f"lookup: out has shape {out.shape}, the labels {labels.shape}.")
    if labels.ndim == 0:
        out[...] = lut[labels]
        return out
    if out.flags.c_contiguous and labels.flags.c_contiguous:
        src, dst = labels.reshape(-1), out.reshape(-1)
        step = LOOKUP_PIECE
    else:
        src, dst = labels, out
        step = -(-labels.shape[0] // (4 * n))  # a few chunks per core: even when some are emptier
        if not out.flags.c_contiguous:
            step = min(step, TRANSPOSED_CHUNK)

    def one(i):
        dst[i:i + step] = lut[src[i:i + step]]

    starts = range(0, src.shape[0], step)
    if n == 1:
        for i in starts:
            one(i)
        return out
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, starts))
    return out


def map_ids(labels: np.ndarray, ids: np.ndarray, values: np.ndarray, dtype) -> np.ndarray:
    """``labels`` with every id in ``ids`` replaced by the matching item of ``values``
    and every other id by 0, as ``dtype``.

    >>> map_ids(np.array([0, 5, 9, 5]), np.array([5, 9]), np.array([1, 0]), np.uint8).tolist()
    [0, 1, 0, 1]
    """
    labels, ids = native(np.asarray(labels)), np.asarray(ids)  # as they are: uint64 ids may pass 2**63
    values = np.asarray(values)
    _, top = _id_range(labels)
    if top < (1 << 24):
        lut = np.zeros(top + 1, dtype)
        inside = (ids >= 0) & (ids <= top)
        lut[ids[inside].astype(np.intp)] = values[inside]
        return lookup(lut, labels)
    table = dict.fromkeys(np.asarray(fastremap.unique(labels)).tolist(), 0)
    table.update(zip(ids.tolist(), values.tolist()))
    return np.asarray(fastremap.remap(labels, table)).astype(dtype, copy=False)


def object_stats(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, voxel counts and bounding boxes of the objects of a 2D/3D label array.

    Returns ``(ids, voxels, bbox)``: ``bbox`` is (n, 2 * ndim) with the
    inclusive start of each axis followed by the exclusive stops, like
    ``(z0, y0, x0, z1, y1, x1)``.

    >>> ids, voxels, bbox = object_stats(np.array([[0, 4, 4], [0, 0, 4]]))
    >>> ids.tolist(), voxels.tolist(), bbox.tolist()
    ([4], [3], [[0, 1, 2, 3]])
    """
    import cc3d

    labels = native(np.asarray(labels))
    nd = labels.ndim
    if nd not in (2, 3):
        raise PanoptemError(f"Object statistics need a 2D or 3D label array, got {nd} dimensions.")
    if labels.size == 0:  # no voxels: no objects (cc3d takes no empty array)
        return np.zeros(0, labels.dtype), np.zeros(0, np.int64), np.zeros((0, 2 * nd), np.int64)
    _, top = _id_range(labels)
    if top < min(1 << 24, max(labels.size, 1)):  # ids small enough to count directly
        local, ids = labels, None
    else:
        local, ids = compact(labels)
    # ids are >= 0 (checked above), so int32 reads as uint32 without a copy
    as_u32 = local.view(np.uint32) if local.dtype == np.int32 else local.astype(np.uint32, copy=False)
    st = cc3d.statistics(np.ascontiguousarray(as_u32), no_slice_conversion=True)
    counts = np.asarray(st["voxel_counts"], np.int64)
    present = np.flatnonzero(counts[1:]) + 1
    if ids is None:
        ids = present.astype(labels.dtype)
    if ids.size == 0:
        return ids, np.zeros(0, np.int64), np.zeros((0, 2 * nd), np.int64)
    voxels = counts[present]
    bb = np.asarray(st["bounding_boxes"], np.int64)[present]  # (min0, max0, min1, max1, ...) inclusive
    bbox = np.concatenate([bb[:, 0::2], bb[:, 1::2] + 1], axis=1)
    return ids, voxels, bbox


def keep_mask(voxels: np.ndarray, bbox: np.ndarray, shape, min_size: int, min_extent: int) -> np.ndarray:
    """Objects with ``voxels >= min_size`` and a bounding box at least
    ``min(min_extent, axis length)`` thick along every axis (boxes as in
    :func:`object_stats`).

    >>> keep_mask(np.array([9, 9]), np.array([[0, 0, 3, 3], [0, 0, 1, 9]]), (10, 10), 5, 2).tolist()
    [True, False]
    """
    nd = len(shape)
    extent = bbox[:, nd:] - bbox[:, :nd]
    need = np.minimum(int(min_extent), np.asarray(shape, np.int64))
    return (voxels >= int(min_size)) & np.all(extent >= need, axis=1)


def filter_objects(labels: np.ndarray, min_size: int = 500, min_extent: int = 5,
                   label_divisor: int | None = None, *, boundary: bool = False,
                   return_removed: bool = False):
    """Remove objects smaller than ``min_size`` voxels or thinner than
    ``min_extent`` along any axis (a new array; ids unchanged).

    Along an axis shorter than ``min_extent`` the requirement is the axis
    length, so a thin volume keeps the objects that cross it. With a
    ``label_divisor``, semantic ("stuff") segments ``class * divisor`` are kept.
    ``boundary`` also removes the objects touching the array border;
    ``return_removed`` returns the sorted removed ids as well.

    >>> filter_objects(np.array([[1, 1, 0, 2]]), min_size=2, min_extent=0)
    array([[1, 1, 0, 0]])
    """
    labels = np.asarray(labels)
    ids, voxels, bbox = object_stats(labels)
    drop = ~keep_mask(voxels, bbox, labels.shape, min_size, min_extent)
    if boundary:
        nd = labels.ndim
        drop |= np.any(bbox[:, :nd] == 0, axis=1) | np.any(bbox[:, nd:] == np.asarray(labels.shape), axis=1)
    if label_divisor:  # in 64 bits: a divisor may not fit the labels' dtype
        drop &= ids.astype(np.uint64) % np.uint64(label_divisor) != 0
    out = np.array(labels, copy=True)
    removed = ids[drop]
    if removed.size:
        out[np.isin(out, removed)] = 0
    return (out, removed) if return_removed else out


# ---------------------------------------------------------------- pairs of objects

def overlap_table(a: np.ndarray, b: np.ndarray, na: int, nb: int,
                  mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts of every overlapping pair of two compact label arrays.

    ``a`` holds ids 0..na and ``b`` ids 0..nb (0 = background) over the same
    grid. Returns ``(ia, ib, count)`` (int64) for all pairs with both ids > 0
    that share at least one voxel, optionally only over ``mask``.

    >>> overlap_table(np.array([1, 1, 2, 0]), np.array([1, 2, 2, 2]), 2, 2)[2].tolist()
    [1, 1, 1]
    """
    if na == 0 or nb == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    m = (a > 0) & (b > 0)
    if mask is not None:
        m &= mask
    return pair_counts(a[m], b[m], na, nb)


def pixel_boxes(nz: np.ndarray, lv: np.ndarray, k: int, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Bounding rows ``r0, r1`` and columns ``c0, c1`` (stops exclusive, int64) of ids 1..k,
    each present, from their pixels' flat indices ``nz`` in a 2D array of ``shape`` and
    their ids ``lv``: work on the object pixels only, not on the whole image.

    >>> [b.tolist() for b in pixel_boxes(np.array([1, 4, 5]), np.array([1, 2, 1]), 2, (2, 3))]
    [[0, 1], [2, 2], [1, 1], [3, 2]]
    """
    rows, cols = np.divmod(nz, shape[1])
    r0, c0 = np.full(k, shape[0], np.int64), np.full(k, shape[1], np.int64)
    r1, c1 = np.zeros(k, np.int64), np.zeros(k, np.int64)
    at = lv.astype(np.intp) - 1
    np.minimum.at(r0, at, rows)
    np.maximum.at(r1, at, rows + 1)
    np.minimum.at(c0, at, cols)
    np.maximum.at(c1, at, cols + 1)
    return r0, r1, c0, c1


def pair_counts(a: np.ndarray, b: np.ndarray, na: int, nb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ia, ib, count)`` (int64) of the distinct pairs ``(a[i], b[i])``, ids in
    1..na and 1..nb: :func:`overlap_table` on the voxels where both are objects.

    >>> [x.tolist() for x in pair_counts(np.array([1, 2, 1]), np.array([3, 1, 3]), 2, 3)]
    [[1, 2], [3, 1], [2, 1]]
    """
    code = np.asarray(a).astype(np.int64)
    code *= nb + 1
    np.add(code, b, out=code, casting="unsafe")  # ids of any integer dtype (uint64 + int64 would be float)
    if code.size == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    size = (na + 1) * (nb + 1)
    if size <= max(4 * code.size, 1 << 16):
        counts = np.bincount(code, minlength=size)
        u = np.flatnonzero(counts)
        c = counts[u]
    else:
        u, c = fastremap.unique(code, return_counts=True)
        u = np.asarray(u, np.int64)
    return u // (nb + 1), u % (nb + 1), np.asarray(c, np.int64)


#: up to this many edges :func:`greedy_match` walks them one by one
FEW_EDGES = 64


def greedy_match(a: np.ndarray, b: np.ndarray, score: np.ndarray) -> np.ndarray:
    """One-to-one matching, greedy by descending ``score``.

    Edges ``a[i] - b[i]`` (ids of two disjoint node sets). Returns the indices
    of the chosen edges: the same set as taking edges one by one from the best
    down and keeping those whose two ends are still free (ties: lower ``a``,
    then lower ``b``). Vectorised as rounds of "mutually best" edges, which
    picks exactly the greedy set.

    >>> greedy_match(np.array([1, 1, 2]), np.array([1, 2, 1]), np.array([0.9, 0.5, 0.8])).tolist()
    [0]
    """
    if len(a) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((b, a, -np.asarray(score, np.float64)))
    sa, sb = np.asarray(a)[order], np.asarray(b)[order]
    if len(order) <= FEW_EDGES:  # the definition itself: cheaper than a round of array calls
        free_a, free_b, keep = set(sa.tolist()), set(sb.tolist()), []
        for i, x, y in zip(order.tolist(), sa.tolist(), sb.tolist()):
            if x in free_a and y in free_b:
                free_a.discard(x)
                free_b.discard(y)
                keep.append(i)
        return np.sort(np.asarray(keep, np.int64))
    alive = np.ones(len(order), bool)
    chosen = []
    while alive.any():
        idx = np.flatnonzero(alive)
        aa, bb = sa[idx], sb[idx]
        first_a = np.zeros(len(idx), bool)
        first_a[np.unique(aa, return_index=True)[1]] = True
        first_b = np.zeros(len(idx), bool)
        first_b[np.unique(bb, return_index=True)[1]] = True
        sel = idx[first_a & first_b]
        chosen.append(sel)
        alive &= ~(np.isin(sa, sa[sel]) | np.isin(sb, sb[sel]))
    return np.sort(order[np.concatenate(chosen)])


# ---------------------------------------------------------------- numbering

def rank_within(cls: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """1-based rank of each kept item among the kept items of its class (in
    the given order); 0 for items not kept.

    >>> rank_within(np.array([2, 1, 2, 2]), np.array([True, True, False, True])).tolist()
    [1, 1, 0, 2]
    """
    rank = np.zeros(len(cls), np.int64)
    sel = np.flatnonzero(keep)
    if sel.size == 0:
        return rank
    order = sel[np.argsort(cls[sel], kind="stable")]
    c = cls[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    pos = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
    rank[order] = pos + 1
    return rank


def number_per_class(cls: np.ndarray, keep: np.ndarray, label_divisor: int | None) -> np.ndarray:
    """Panoptic ids of a list of objects: ``class * divisor + 1..N`` per class
    in the given order, or 1..N over all objects without a divisor; 0 for
    objects not kept (int64).

    Raises :class:`PanoptemError` when a class has more objects than the
    divisor leaves room for.

    >>> number_per_class(np.array([1, 2, 1]), np.array([True, True, True]), 1000).tolist()
    [1001, 2001, 1002]
    >>> number_per_class(np.array([1, 2, 1]), np.array([True, False, True]), None).tolist()
    [1, 0, 2]
    """
    cls = np.asarray(cls, np.int64)
    keep = np.asarray(keep, bool)
    div = int(label_divisor or 0)
    rank = rank_within(cls if div else np.zeros_like(cls), keep)
    if div and rank.size and rank.max() >= div:
        worst = int(np.argmax(rank))
        n = int(np.count_nonzero(keep & (cls == cls[worst])))
        raise PanoptemError(f"{n} objects of class {int(cls[worst])} do not fit under Max objects per class "
                            f"= {div}; raise it (e.g. to {10 ** len(str(n))}).")
    return np.where(keep, cls * div + rank if div else rank, 0)


def relabel_sequential_per_class(labels: np.ndarray, label_divisor: int | None) -> np.ndarray:
    """Renumber instance ids to ``class * divisor + 1..N`` per class, in order
    of the original ids (1..N overall without a divisor). Semantic segments
    ``class * divisor`` keep their id. Returns uint32 (uint64 if needed).

    >>> relabel_sequential_per_class(np.array([0, 10005, 10009, 20003, 20000]), 10000).tolist()
    [0, 10001, 10002, 20001, 20000]
    """
    labels = np.asarray(labels)
    local, ids = compact(labels)
    if label_divisor:
        div = int(label_divisor)
        # class and instance in 64 bits (unsigned for uint64 ids: past 2**63 too; a divisor may exceed a
        # small dtype); int64 arithmetic wraps modulo 2**64, so ids past 2**63 come out right as uint64
        wide = ids.astype(np.uint64 if ids.dtype == np.uint64 else np.int64)
        thing = wide % div != 0
        new = np.where(thing, number_per_class((wide // div).astype(np.int64), thing, div), wide.astype(np.int64))
        if ids.dtype == np.uint64:
            new = new.view(np.uint64)
    else:
        new = number_per_class(np.zeros(ids.size, np.int64), np.ones(ids.size, bool), None)
    lut = np.concatenate([np.zeros(1, new.dtype), new]).astype(dtype_for_max_label(int(new.max(initial=0))))
    return lut[local]
