"""Stack building blocks for 3D inference: a running median over slices and
linking of 2D panoptic slices into 3D objects.

- :class:`RunningMedian` — true running median of raw per-slice arrays,
  holding at most ``size`` slices;
- :class:`SliceLinker` — streams 2D panoptic slices, gives them provisional
  ids unique over the stack, records overlaps and per-object statistics, and
  solves the linking once in :meth:`SliceLinker.finish`;
- :func:`link_stack` — the same for an in-memory (Z, H, W) panoptic stack;
- :func:`overlap_table`, :func:`object_stats`, :func:`filter_objects`,
  :func:`relabel_sequential_per_class` — vectorised helpers shared with
  :mod:`.consensus`.

Coordinates of a stack are stack-local: (slice index, row, col).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import fastremap
import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from ..errors import PanoptemError
from .decode import dtype_for_max_label

# Split guard of the linking rule (see SliceLinker): a second branch must lie
# mostly inside the object it leaves, when it is not a small fragment.
SPLIT_IOA = 0.5
SPLIT_MIN_FRAC = 0.25


# ----------------------------------------------------------------------------
# running median

class RunningMedian:
    """Running median of raw slices over ``size`` neighbouring slices.

    Slice ``i`` of ``n`` becomes ``np.median`` over the *raw* inputs
    ``max(0, i - r) .. min(n - 1, i + r)`` with ``r = size // 2``. At the
    stack edges the window shrinks to the available neighbours, so the first
    and last slices are filtered too (the reference leaves them unfiltered and
    feeds already filtered slices into later windows). A shrunken window can
    hold an even number of slices; ``np.median`` then averages the two middle
    values. At most ``size`` raw slices are held.

    ``push(item)`` returns a list of finished ``(index, filtered)`` in order;
    ``push(item, extra)`` returns ``(index, filtered, extra)`` with ``extra``
    (any side data, e.g. heatmap and offsets) passed through unfiltered.
    ``flush()`` returns the rest at the end of the stack and resets the
    object. Items must not be modified after they were pushed. Floating point
    items keep their dtype.

    >>> rm = RunningMedian(3)
    >>> [i for i, _ in rm.push(np.zeros(2))], [i for i, _ in rm.push(np.ones(2))]
    ([], [0])
    >>> [(i, f.tolist()) for i, f in rm.flush()]
    [(1, [0.5, 0.5])]
    """

    def __init__(self, size: int):
        if int(size) != size or size < 1 or size > 11 or size % 2 == 0:
            raise PanoptemError(f"Median Filter Size must be an odd number of slices from 1 to 11, got {size}.")
        self.size = int(size)
        self.radius = self.size // 2
        self._buf: deque = deque()  # (index, item, extra, has_extra) of raw slices still needed
        self._n = 0  # slices pushed
        self._next = 0  # next slice to emit

    @property
    def held(self) -> int:
        """Number of raw slices held now."""
        return len(self._buf)

    def push(self, item, extra=None) -> list[tuple]:
        """Add the next raw slice; return the slices that are now finished."""
        self._buf.append((self._n, np.asarray(item), extra, extra is not None))
        self._n += 1
        out = []
        while self._next + self.radius < self._n:
            out.append(self._emit(self._n - 1))
        return out

    def flush(self) -> list[tuple]:
        """Finish the remaining slices (end of the stack) and reset."""
        out = []
        while self._next < self._n:
            out.append(self._emit(self._n - 1))
        self._buf.clear()
        self._n = self._next = 0
        return out

    def _emit(self, last: int) -> tuple:
        i = self._next
        lo, hi = max(0, i - self.radius), min(last, i + self.radius)
        window = [it for j, it, _, _ in self._buf if lo <= j <= hi]
        _, item, extra, has_extra = next(e for e in self._buf if e[0] == i)
        if len(window) == 1:
            filtered = item
        elif np.issubdtype(item.dtype, np.floating):
            filtered = _median(window)
        else:
            filtered = np.median(np.stack(window), axis=0)
        self._next += 1
        # slice i + 1 needs nothing before i + 1 - r
        while self._buf and self._buf[0][0] < self._next - self.radius:
            self._buf.popleft()
        return (i, filtered, extra) if has_extra else (i, filtered)


def _median(window: list[np.ndarray]) -> np.ndarray:
    """Voxel-wise median of a few float arrays, equal to ``np.median`` over them.

    Odd-even transposition sort with element-wise min/max (a sorting network):
    several times faster than ``np.median`` along a stacked axis for k <= 11.
    """
    k = len(window)
    s = list(np.stack(window))  # views into one working copy
    tmp = np.empty_like(s[0])
    for r in range(k):
        for i in range(r % 2, k - 1, 2):
            np.minimum(s[i], s[i + 1], out=tmp)
            np.maximum(s[i], s[i + 1], out=s[i + 1])
            s[i], tmp = tmp, s[i]
    m = k // 2
    return s[m].copy() if k % 2 else (s[m - 1] + s[m]) / s[m].dtype.type(2)


# ----------------------------------------------------------------------------
# vectorised helpers

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
    size = (na + 1) * (nb + 1)
    if mask is None and size <= max(a.size, 1 << 16):
        code = a.astype(np.int64, copy=False).ravel() * (nb + 1) + b.ravel()
        counts = np.bincount(code, minlength=size).reshape(na + 1, nb + 1)
        counts[0] = 0
        counts[:, 0] = 0
        ia, ib = np.nonzero(counts)
        return ia.astype(np.int64), ib.astype(np.int64), counts[ia, ib].astype(np.int64)
    m = (a > 0) & (b > 0)
    if mask is not None:
        m &= mask
    code = a[m].astype(np.int64) * (nb + 1) + b[m]
    if code.size == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    u, c = fastremap.unique(code, return_counts=True)
    u = np.asarray(u, np.int64)
    return u // (nb + 1), u % (nb + 1), np.asarray(c, np.int64)


def greedy_match(a: np.ndarray, b: np.ndarray, score: np.ndarray) -> np.ndarray:
    """One-to-one matching, greedy by descending ``score``.

    Edges ``a[i] - b[i]`` (ids of two disjoint node sets). Returns the indices
    of the chosen edges: the same set as taking edges one by one from the best
    down and keeping those whose two ends are still free (ties: lower ``a``,
    then lower ``b``). Vectorised as rounds of "mutually best" edges, which
    picks exactly the greedy set.
    """
    if len(a) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((b, a, -np.asarray(score, np.float64)))
    sa, sb = np.asarray(a)[order], np.asarray(b)[order]
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


def compact(labels: np.ndarray, return_counts: bool = False):
    """Relabel ``labels`` to 0..k (int32) in order of the original ids.

    Returns ``(local, ids)`` with ``ids[j - 1]`` the original id of local id j,
    and ``counts`` (voxels per id, int64) as a third item if asked.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise PanoptemError(f"Label images must be integer, got {labels.dtype}; convert them with astype(np.uint32).")
    u, c = fastremap.unique(labels, return_counts=True)
    u, c = np.asarray(u), np.asarray(c, np.int64)
    if u.size and u[0] < 0:
        raise PanoptemError("Label images must not contain negative ids; 0 is background, objects are > 0.")
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


def object_stats(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, voxel counts and bounding boxes of the objects of a 2D/3D label array.

    Returns ``(ids, voxels, bbox)``: ``bbox`` is (n, 2 * ndim) with the
    inclusive start of each axis followed by the exclusive stops, like
    ``(z0, y0, x0, z1, y1, x1)``.
    """
    import cc3d

    labels = np.asarray(labels)
    nd = labels.ndim
    if nd not in (2, 3):
        raise PanoptemError(f"Object statistics need a 2D or 3D label array, got {nd} dimensions.")
    local, ids = compact(labels)
    if ids.size == 0:
        return ids, np.zeros(0, np.int64), np.zeros((0, 2 * nd), np.int64)
    st = cc3d.statistics(np.ascontiguousarray(local.astype(np.uint32, copy=False)), no_slice_conversion=True)
    voxels = np.asarray(st["voxel_counts"][1:], np.int64)
    bb = np.asarray(st["bounding_boxes"][1:], np.int64)  # (min0, max0, min1, max1, ...) inclusive
    bbox = np.concatenate([bb[:, 0::2], bb[:, 1::2] + 1], axis=1)
    return ids, voxels, bbox


def _keep_mask(voxels: np.ndarray, bbox: np.ndarray, shape, min_size: int, min_extent: int) -> np.ndarray:
    """Objects with ``voxels >= min_size`` and a bounding box at least
    ``min(min_extent, axis length)`` thick along every axis."""
    nd = len(shape)
    extent = bbox[:, nd:] - bbox[:, :nd]
    need = np.minimum(int(min_extent), np.asarray(shape, np.int64))
    return (voxels >= int(min_size)) & np.all(extent >= need, axis=1)


def filter_objects(labels: np.ndarray, min_size: int = 500, min_extent: int = 5,
                   label_divisor: int | None = None) -> np.ndarray:
    """Remove objects smaller than ``min_size`` voxels or thinner than
    ``min_extent`` along any axis (a new array; ids unchanged).

    Along an axis shorter than ``min_extent`` the requirement is the axis
    length, so a thin volume keeps the objects that cross it. With a
    ``label_divisor``, semantic ("stuff") segments ``class * divisor`` are kept.
    """
    ids, voxels, bbox = object_stats(labels)
    drop = ~_keep_mask(voxels, bbox, np.shape(labels), min_size, min_extent)
    if label_divisor:
        drop &= ids % label_divisor != 0
    out = np.array(labels, copy=True)
    if drop.any():
        out[np.isin(out, ids[drop])] = 0
    return out


def relabel_sequential_per_class(labels: np.ndarray, label_divisor: int | None) -> np.ndarray:
    """Renumber instance ids to ``class * divisor + 1..N`` per class, in order
    of the original ids (1..N overall without a divisor). Semantic segments
    ``class * divisor`` keep their id. Returns uint32 (uint64 if needed).

    >>> relabel_sequential_per_class(np.array([0, 10005, 10009, 20003, 20000]), 10000).tolist()
    [0, 10001, 10002, 20001, 20000]
    """
    labels = np.asarray(labels)
    local, ids = compact(labels)
    ids = ids.astype(np.int64)
    if label_divisor:
        div = int(label_divisor)
        cls = ids // div
        thing = ids % div != 0
        rank = _rank_within(cls, thing)
        if thing.any() and rank[thing].max() >= div:
            raise PanoptemError(f"More than {div - 1} objects of one class; raise Max objects per class "
                                "(label_divisor).")
        new = np.where(thing, cls * div + rank, ids)
    else:
        new = np.arange(1, ids.size + 1, dtype=np.int64)
    lut = np.concatenate([[0], new]).astype(dtype_for_max_label(int(new.max(initial=0))))
    return lut[local]


def _rank_within(cls: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """1-based rank of each kept item among the kept items of its class (in
    the given order); 0 for items not kept."""
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


# ----------------------------------------------------------------------------
# linking

@dataclass
class LinkResult:
    """Outcome of :meth:`SliceLinker.finish`.

    ``mapping``: lookup array provisional id -> final id (0 = removed or
    background), uint32 or uint64; ``mapping[provisional]`` gives the final
    slice. ``n_objects``: number of 3D objects kept (semantic segments not
    counted). Per object, in the order of their final ids: ``ids``,
    ``classes`` (0 without a divisor), ``voxels`` and ``bbox`` (n, 6) =
    ``(s0, r0, c0, s1, r1, c1)`` in stack-local (slice, row, col)
    coordinates, stops exclusive. ``n_provisional``: provisional ids given out.
    """

    mapping: np.ndarray
    n_objects: int
    ids: np.ndarray
    classes: np.ndarray
    voxels: np.ndarray
    bbox: np.ndarray
    n_provisional: int = 0


class SliceLinker:
    """Link a stream of 2D panoptic slices into 3D objects.

    Rule ("one-to-one IoU matching, then guarded IoA attachment"):

    1. *Matching.* Between neighbouring slices, objects are matched one to
       one, greedily by descending IoU, keeping pairs with IoU >= ``iou_thr``.
       Two touching objects that 2D decoding separated stay separate because
       each one has its own better partner.
    2. *Gap bridging* (``bridge_gaps=1``): objects still without a partner in
       the next slice are matched the same way with objects two slices on that
       have none in their previous slice, bridging one slice where an object
       was missed.
    3. *Attachment.* An object left without a match on one side (it starts,
       ends, or lost the competition to a bigger piece) joins the object on
       that side it overlaps most, by IoA = intersection / its own area, when
       IoA >= ``ioa_thr``: 2D over-split fragments and branches (Y junctions)
       stay one object. *Split guard*: when that partner already continues
       into a matched object on this side, the joining object is a second
       branch and must lie mostly inside the partner (IoA >= ``split_ioa``)
       unless it is small (area < ``split_min_frac`` x the partner's area).
       A neighbouring object that only bulges into the partner's footprint is
       thus not merged.
    4. *X repair* (one-slice 2D merge). An object of slice z linked to two or
       more objects of z-1 and of z+1 (after steps 1-3) is an X junction.
       Pairs of those objects (z-1, z+1) that overlap each other with IoU >=
       ``iou_thr`` are linked directly (greedy by IoU), and the object of z
       keeps only its link to its matched predecessor: slice z merged two
       touching objects in 2D, which must not join them in 3D.

    Objects of different classes never link; semantic ("stuff") segments,
    ``class * divisor``, are not linked and keep that id. Linked objects are
    joined by connected components, filtered by voxel count and bounding-box
    extent, and numbered ``class * divisor + 1..N`` per class (1..N without a
    divisor) in order of first appearance.

    ``add`` holds at most the two previous slices; everything else is small
    per-object arrays and the overlap pairs.

    Examples
    --------
    >>> lk = SliceLinker(label_divisor=None)
    >>> prov = [lk.add(np.array([[1, 1, 0]])), lk.add(np.array([[0, 7, 7]]))]
    >>> res = lk.finish(min_size=0, min_extent=0)
    >>> res.n_objects, res.mapping[prov[1]].tolist()
    (1, [[0, 1, 1]])
    """

    def __init__(self, iou_thr: float = 0.25, ioa_thr: float = 0.25, label_divisor: int | None = 10000,
                 bridge_gaps: int = 0, split_ioa: float = SPLIT_IOA, split_min_frac: float = SPLIT_MIN_FRAC):
        if not 0 < iou_thr <= 1 or not 0 < ioa_thr <= 1:
            raise PanoptemError(f"Linking thresholds must be in (0, 1], got iou_thr={iou_thr}, ioa_thr={ioa_thr}.")
        if bridge_gaps not in (0, 1):
            raise PanoptemError(f"bridge_gaps must be 0 or 1 slices, got {bridge_gaps}.")
        if label_divisor is not None and int(label_divisor) < 0:
            raise PanoptemError(f"label_divisor must be a positive number or None, got {label_divisor}.")
        self.iou_thr, self.ioa_thr = float(iou_thr), float(ioa_thr)
        self.split_ioa, self.split_min_frac = max(float(split_ioa), self.ioa_thr), float(split_min_frac)
        self.divisor = int(label_divisor) if label_divisor else 0
        self.bridge_gaps = int(bridge_gaps)
        self._shape: tuple[int, int] | None = None
        self._n = 0  # provisional ids given out
        self._z = 0  # slices added
        self._nodes: dict[str, list] = {k: [] for k in ("cls", "thing", "area", "r0", "r1", "c0", "c1", "count")}
        self._adj: list[tuple] = []  # (a, b, intersection) neighbouring slices, IoA >= ioa_thr on one side
        self._match: list[tuple] = []  # (a, b) one-to-one IoU matches
        self._gap: list[tuple] = []  # (a, b, iou) two slices apart, IoU >= iou_thr
        self._prev = None  # state of slice z-1
        self._prev2 = None  # state of slice z-2

    @property
    def n_slices(self) -> int:
        """Slices added so far."""
        return self._z

    @property
    def provisional_classes(self) -> np.ndarray:
        """Class of every provisional id (index = id; 0 for id 0 and without a divisor)."""
        return np.concatenate([[0], *self._nodes["cls"]]).astype(np.int64)

    def add(self, labels2d: np.ndarray) -> np.ndarray:
        """Add the next slice; return it with provisional ids unique over the stack.

        ``labels2d`` (H, W): panoptic ids of this slice (``class * divisor + n``,
        or 1..N without a divisor), unique within the slice. The result is
        uint32 (uint64 once more than 2**32 - 1 provisional ids were given out).
        """
        lab = np.asarray(labels2d)
        if lab.ndim != 2:
            raise PanoptemError(f"Linking takes 2D label slices, got shape {lab.shape}.")
        if self._shape is None:
            self._shape = lab.shape
        elif lab.shape != self._shape:
            raise PanoptemError(f"All slices of a stack must have the same shape; got {lab.shape} "
                                f"after {self._shape}.")
        local, ids, area = compact(lab, return_counts=True)
        k = int(ids.size)
        ids = ids.astype(np.int64)
        offset = self._n
        self._n += k
        cls = ids // self.divisor if self.divisor else np.zeros(k, np.int64)
        thing = ids % self.divisor != 0 if self.divisor else np.ones(k, bool)
        nz = np.flatnonzero(local)
        lv = local.ravel()[nz] - 1
        w = lab.shape[1]
        rows, cols = nz // w, nz % w
        r0 = np.full(k, lab.shape[0], np.int64)
        c0 = np.full(k, w, np.int64)
        r1 = np.zeros(k, np.int64)
        c1 = np.zeros(k, np.int64)
        np.minimum.at(r0, lv, rows)
        np.maximum.at(r1, lv, rows + 1)
        np.minimum.at(c0, lv, cols)
        np.maximum.at(c1, lv, cols + 1)
        for key, val in (("cls", cls), ("thing", thing), ("area", area), ("r0", r0), ("r1", r1),
                         ("c0", c0), ("c1", c1), ("count", [k])):
            self._nodes[key].append(np.asarray(val))
        cur = {"local": local, "offset": offset, "k": k, "cls": cls, "thing": thing, "area": area}
        prev = self._prev
        if prev is not None and prev["k"] and k:
            self._link_neighbours(prev, cur)
        prev2 = self._prev2  # pairs two slices apart serve gap bridging and the X repair
        if prev2 is not None and prev2["k"] and k:
            ia, ib, _, iou = self._pairs(prev2, cur)
            m = iou >= self.iou_thr
            self._gap.append((ia[m] + prev2["offset"] + 1, ib[m] + cur["offset"] + 1, iou[m]))
        self._prev2, self._prev = prev, cur
        self._z += 1
        lut = np.arange(offset, offset + k + 1, dtype=dtype_for_max_label(self._n))
        lut[0] = 0
        return lut[local]

    def _pairs(self, p: dict, c: dict, mask=None):
        ia, ib, inter = overlap_table(p["local"], c["local"], p["k"], c["k"], mask)
        ia, ib = ia - 1, ib - 1
        ok = (p["cls"][ia] == c["cls"][ib]) & p["thing"][ia] & c["thing"][ib]
        ia, ib, inter = ia[ok], ib[ok], inter[ok]
        iou = inter / (p["area"][ia] + c["area"][ib] - inter)
        return ia, ib, inter, iou

    def _link_neighbours(self, p: dict, c: dict) -> None:
        ia, ib, inter, iou = self._pairs(p, c)
        self._record_neighbours(ia + p["offset"] + 1, ib + c["offset"] + 1, inter, iou,
                                p["area"][ia], c["area"][ib])

    def _record_neighbours(self, a, b, inter, iou, area_a, area_b) -> None:
        """One-to-one IoU matches and IoA candidates among the overlaps ``a``-``b``
        of objects in neighbouring slices (global provisional ids)."""
        m = iou >= self.iou_thr
        sel = np.flatnonzero(m)[greedy_match(a[m], b[m], iou[m])]
        self._match.append((a[sel], b[sel]))
        ioa = inter / np.minimum(area_a, area_b)
        keep = ioa >= self.ioa_thr
        self._adj.append((a[keep], b[keep], inter[keep]))

    @classmethod
    def from_statistics(cls, shape: tuple[int, int, int], z, classes, thing, area, rows, cols,
                        neighbours, gaps=None, **kwargs) -> "SliceLinker":
        """A linker fed with statistics gathered elsewhere (e.g. block by block),
        ready for :meth:`finish`; the same rule as :meth:`add`, slice after slice.

        Objects are provisional ids 1..n in stack order (``z`` non-decreasing;
        within a slice in the order :meth:`add` would number them). Per object:
        ``z``, ``classes``, ``thing`` (bool), ``area``, ``rows`` = (r0, r1) and
        ``cols`` = (c0, c1) bounding ranges. ``neighbours`` = (a, b, intersection)
        for every overlapping pair in slices z and z + 1 (a in z), ``gaps`` the
        same for slices z and z + 2; each pair listed once.
        """
        lk = cls(**kwargs)
        z = np.asarray(z, np.int64)
        n = z.size
        lk._shape = tuple(int(v) for v in shape[1:])
        lk._z, lk._n = int(shape[0]), n
        if n and np.any(np.diff(z) < 0):
            raise PanoptemError("Linking statistics must list objects in slice order.")
        counts = np.bincount(z, minlength=lk._z) if n else np.zeros(lk._z, np.int64)
        for key, val in (("cls", classes), ("thing", thing), ("area", area), ("r0", rows[0]), ("r1", rows[1]),
                         ("c0", cols[0]), ("c1", cols[1]), ("count", counts)):
            lk._nodes[key].append(np.asarray(val))
        nodes = {k: np.concatenate([[0 if k != "thing" else False], v[0]]) for k, v in lk._nodes.items()
                 if k != "count"}

        def pairs(p, dz):
            a, b, inter = (np.asarray(x, np.int64) for x in p)
            if a.size and not np.all(z[b - 1] - z[a - 1] == dz):
                raise PanoptemError("Linking statistics pair objects of the wrong slices.")
            ok = (nodes["cls"][a] == nodes["cls"][b]) & nodes["thing"][a].astype(bool) & nodes["thing"][b].astype(bool)
            a, b, inter = a[ok], b[ok], inter[ok]
            order = np.lexsort((b, a))  # the order add() meets them in
            a, b, inter = a[order], b[order], inter[order]
            return a, b, inter, inter / (nodes["area"][a] + nodes["area"][b] - inter)

        a, b, inter, iou = pairs(neighbours, 1)
        lk._record_neighbours(a, b, inter, iou, nodes["area"][a], nodes["area"][b])
        if gaps is not None:
            a, b, inter, iou = pairs(gaps, 2)
            m = iou >= lk.iou_thr
            lk._gap.append((a[m], b[m], iou[m]))
        return lk

    def finish(self, min_size: int = 500, min_extent: int = 5) -> LinkResult:
        """Decide all links, build 3D objects, filter and number them.

        ``min_size``: objects with fewer voxels are removed. ``min_extent``:
        objects whose bounding box is thinner than this (voxels) along any axis
        are removed; along an axis shorter than ``min_extent`` (e.g. a stack of
        3 slices) the requirement is the axis length, i.e. the object must
        cross the whole stack there. Can be called again with other filters.
        """
        n = self._n
        nodes = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in self._nodes.items()}
        if n == 0:
            e = np.zeros(0, np.int64)
            return LinkResult(np.zeros(1, np.uint32), 0, e.astype(np.uint32), e, e, np.zeros((0, 6), np.int64), 0)

        def node(key, fill=0):
            return np.concatenate([[fill], nodes[key]])

        cls, thing, area = node("cls"), node("thing", False).astype(bool), node("area")
        z = np.concatenate([[0], np.repeat(np.arange(self._z), nodes["count"])])

        def cat(lst, i, dtype=np.int64):
            return np.concatenate([t[i] for t in lst]).astype(dtype) if lst else np.zeros(0, dtype)

        ma, mb = cat(self._match, 0), cat(self._match, 1)
        aa, ab, ainter = cat(self._adj, 0), cat(self._adj, 1), cat(self._adj, 2)
        ga, gb, giou = cat(self._gap, 0), cat(self._gap, 1), cat(self._gap, 2, np.float64)
        # matched in the neighbouring slice (forward / backward)
        match_fwd = np.zeros(n + 1, bool)
        match_back = np.zeros(n + 1, bool)
        match_fwd[ma] = True
        match_back[mb] = True
        free_fwd, free_back = ~match_fwd, ~match_back
        links_a, links_b = [ma], [mb]

        if self.bridge_gaps and ga.size:
            ok = np.flatnonzero(free_fwd[ga] & free_back[gb])
            sel = ok[greedy_match(ga[ok], gb[ok], giou[ok])]
            links_a.append(ga[sel])
            links_b.append(gb[sel])
            free_fwd[ga[sel]] = False
            free_back[gb[sel]] = False

        # attachments: a node free on one side joins its best partner there by IoA
        att_back = self._attach(u=ab, p=aa, inter=ainter, free=free_back, p_continues=match_fwd, area=area, n=n)
        att_fwd = self._attach(u=aa, p=ab, inter=ainter, free=free_fwd, p_continues=match_back, area=area, n=n)

        if ga.size:
            ma, mb = self._x_repair(ma, mb, ga, gb, giou, att_fwd, att_back, links_a, links_b, n)
        links_a[0], links_b[0] = ma, mb
        for att in (att_back, att_fwd):
            u = np.flatnonzero(att)
            links_a.append(u)
            links_b.append(att[u])

        la, lb = np.concatenate(links_a), np.concatenate(links_b)
        graph = sparse.coo_matrix((np.ones(la.size, np.int8), (la, lb)), shape=(n + 1, n + 1)).tocsr()
        n_comp, comp = connected_components(graph, directed=False)
        return self._objects(comp, n_comp, cls, thing, area, z, node, min_size, min_extent)

    @staticmethod
    def _x_repair(ma, mb, ga, gb, giou, att_fwd, att_back, links_a, links_b, n):
        """Step 4 of the rule; edits the attachments in place, returns the kept matches."""
        next_of = np.zeros(n + 1, np.int64)
        prev_of = np.zeros(n + 1, np.int64)
        next_of[ma], prev_of[mb] = mb, ma
        u = np.flatnonzero(att_fwd)
        next_of[u] = att_fwd[u]
        u = np.flatnonzero(att_back)
        prev_of[u] = att_back[u]
        n_pred = np.bincount(next_of, minlength=n + 1)
        n_succ = np.bincount(prev_of, minlength=n + 1)
        x = (n_pred >= 2) & (n_succ >= 2)
        x[0] = False
        ok = (next_of[ga] == prev_of[gb]) & x[next_of[ga]]
        if not ok.any():
            return ma, mb
        sel = greedy_match(ga[ok], gb[ok], giou[ok])
        d, b = ga[ok][sel], gb[ok][sel]
        links_a.append(d)
        links_b.append(b)
        att_fwd[d] = 0  # a matched predecessor keeps its link
        att_back[b] = 0
        keep = ~np.isin(mb, b)
        return ma[keep], mb[keep]

    def _attach(self, u, p, inter, free, p_continues, area, n) -> np.ndarray:
        """Best IoA partner ``p`` for each node ``u`` free on that side (0 = none)."""
        out = np.zeros(n + 1, np.int64)
        m = free[u]
        u, p, inter = u[m], p[m], inter[m]
        ioa = inter / area[u]
        branch = p_continues[p] & (area[u] >= self.split_min_frac * area[p])
        ok = ioa >= np.where(branch, self.split_ioa, self.ioa_thr)
        u, p, ioa = u[ok], p[ok], ioa[ok]
        if u.size:
            order = np.lexsort((p, -ioa, u))
            first = np.unique(u[order], return_index=True)[1]
            out[u[order][first]] = p[order][first]
        return out

    def _objects(self, comp, n_comp, cls, thing, area, z, node, min_size, min_extent) -> LinkResult:
        n = len(comp) - 1
        big = np.iinfo(np.int64).max
        members = np.arange(1, n + 1)
        cc = comp[members]
        voxels = np.bincount(cc, weights=area[members], minlength=n_comp).astype(np.int64)
        lo = np.full((n_comp, 3), big, np.int64)
        hi = np.zeros((n_comp, 3), np.int64)
        for ax, (start, stop) in enumerate(((z[members], z[members] + 1), (node("r0")[members], node("r1")[members]),
                                            (node("c0")[members], node("c1")[members]))):
            np.minimum.at(lo[:, ax], cc, start)
            np.maximum.at(hi[:, ax], cc, stop)
        first = np.full(n_comp, big, np.int64)
        np.minimum.at(first, cc, members)
        comp_cls = np.zeros(n_comp, np.int64)
        comp_cls[cc] = cls[members]
        comp_thing = np.zeros(n_comp, bool)
        comp_thing[cc] = thing[members]
        bbox = np.concatenate([lo, hi], axis=1)
        shape = (self._z, *self._shape)
        keep = comp_thing & _keep_mask(voxels, bbox, shape, min_size, min_extent)
        # number kept objects per class in order of first appearance
        order = np.argsort(first, kind="stable")
        rank = np.zeros(n_comp, np.int64)
        rank[order] = _rank_within(comp_cls[order], keep[order])
        div = self.divisor
        if div and keep.any() and rank.max() >= div:
            raise PanoptemError(f"More than {div - 1} objects of one class in this stack; raise Max objects "
                                "per class (label_divisor).")
        final = np.where(keep, comp_cls * div + rank if div else rank, 0)
        mapping = final[comp]
        if div:
            stuff = np.flatnonzero(~thing)
            stuff = stuff[stuff > 0]
            mapping[stuff] = cls[stuff] * div
        mapping[0] = 0
        mapping = mapping.astype(dtype_for_max_label(int(mapping.max(initial=0))))
        kept = order[keep[order]]
        kept = kept[np.argsort(final[kept], kind="stable")]
        return LinkResult(mapping=mapping, n_objects=int(kept.size), ids=final[kept].astype(mapping.dtype),
                          classes=comp_cls[kept], voxels=voxels[kept], bbox=bbox[kept], n_provisional=n)


def link_stack(panoptic: np.ndarray, *, iou_thr: float = 0.25, ioa_thr: float = 0.25,
               label_divisor: int | None = 10000, bridge_gaps: int = 0, min_size: int = 500,
               min_extent: int = 5, **kwargs) -> tuple[np.ndarray, LinkResult]:
    """Link an in-memory (Z, H, W) stack of 2D panoptic slices into 3D objects.

    Slices are taken along axis 0; see :class:`SliceLinker` for the rule and
    the parameters. Returns ``(labels3d, result)`` with ``labels3d`` uint32
    (uint64 if needed) holding ``class * divisor + n`` (1..N without a divisor).

    >>> stack = np.array([[[1, 1]], [[5, 5]], [[2, 0]]])
    >>> link_stack(stack, label_divisor=None, min_size=0, min_extent=0)[0].ravel().tolist()
    [1, 1, 1, 1, 1, 0]
    """
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 3:
        raise PanoptemError(f"link_stack needs a (Z, H, W) stack of 2D label slices, got shape {panoptic.shape}.")
    linker = SliceLinker(iou_thr=iou_thr, ioa_thr=ioa_thr, label_divisor=label_divisor,
                         bridge_gaps=bridge_gaps, **kwargs)
    prov = [linker.add(s) for s in panoptic]
    res = linker.finish(min_size=min_size, min_extent=min_extent)
    out = np.empty(panoptic.shape, res.mapping.dtype)
    for zi, p in enumerate(prov):
        out[zi] = res.mapping[p]
    return out, res
