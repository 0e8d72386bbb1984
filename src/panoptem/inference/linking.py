"""Linking of 2D panoptic slices into 3D objects.

- :class:`SliceLinker` — streams 2D panoptic slices, gives them provisional
  ids unique over the stack, records overlaps and per-object statistics, and
  solves the linking once in :meth:`SliceLinker.finish`;
- :func:`link_stack` — the same for an in-memory (Z, H, W) panoptic stack.

Coordinates of a stack are stack-local: (slice index, row, col).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from ..errors import PanoptemError
from ..labels import compact, dtype_for_max_label, greedy_match, keep_mask, number_per_class, pair_counts, pixel_boxes

# Split guard of the linking rule (see SliceLinker): a second branch must lie
# mostly inside the object it leaves, when it is not a small fragment.
SPLIT_IOA = 0.5
SPLIT_MIN_FRAC = 0.25
_STEP = 1 << 20  # pairs checked, scored and matched at a time by SliceLinker.from_statistics


def _ascending(a: np.ndarray) -> bool:
    """Whether ``a`` never decreases, checked :data:`_STEP` items at a time."""
    return all(np.all(a[s + 1:s + _STEP + 1] >= a[s:min(s + _STEP, a.size - 1)])
               for s in range(0, a.size, _STEP))


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

    ``stride`` > 1: each slice stands for that many planes of a stack ``depth`` planes deep
    (the last slice for what remains), as when a stack's planes are averaged in groups
    before the network: voxel counts, boxes and the filters are then in those planes.

    Examples
    --------
    >>> lk = SliceLinker(label_divisor=None)
    >>> prov = [lk.add(np.array([[1, 1, 0]])), lk.add(np.array([[0, 7, 7]]))]
    >>> res = lk.finish(min_size=0, min_extent=0)
    >>> res.n_objects, res.mapping[prov[1]].tolist()
    (1, [[0, 1, 1]])
    """

    def __init__(self, iou_thr: float = 0.25, ioa_thr: float = 0.25, label_divisor: int | None = 10000,
                 bridge_gaps: int = 0, split_ioa: float = SPLIT_IOA, split_min_frac: float = SPLIT_MIN_FRAC,
                 stride: int = 1, depth: int | None = None):
        if not 0 < iou_thr <= 1 or not 0 < ioa_thr <= 1:
            raise PanoptemError(f"Linking thresholds must be in (0, 1], got iou_thr={iou_thr}, ioa_thr={ioa_thr}.")
        if bridge_gaps not in (0, 1):
            raise PanoptemError(f"bridge_gaps must be 0 or 1 slices, got {bridge_gaps}.")
        if label_divisor is not None and int(label_divisor) < 0:
            raise PanoptemError(f"label_divisor must be a positive number or None, got {label_divisor}.")
        if int(stride) < 1 or (depth is not None and int(depth) < 1):
            raise PanoptemError(f"stride and depth must be at least 1, got stride={stride}, depth={depth}.")
        self.iou_thr, self.ioa_thr = float(iou_thr), float(ioa_thr)
        self.split_ioa, self.split_min_frac = max(float(split_ioa), self.ioa_thr), float(split_min_frac)
        self.divisor = int(label_divisor) if label_divisor else 0
        self.bridge_gaps = int(bridge_gaps)
        self.stride, self.depth = int(stride), depth
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

    def add(self, labels2d: np.ndarray | None = None, compacted: tuple | None = None,
            out: np.ndarray | None = None) -> np.ndarray:
        """Add the next slice; return it with provisional ids unique over the stack.

        ``labels2d`` (H, W): panoptic ids of this slice (``class * divisor + n``,
        or 1..N without a divisor), unique within the slice; or ``compacted``, what
        :func:`~panoptem.labels.compact` gives for them, ``(local, ids)`` (e.g. from
        :func:`~.decode.decode_planes`). The result is uint32 (uint64 once more than
        2**32 - 1 provisional ids were given out); written into ``out`` (e.g. the slice of a
        stack) when that has this dtype.
        """
        lab = np.asarray(labels2d) if compacted is None else compacted[0]
        if lab.ndim != 2:
            raise PanoptemError(f"Linking takes 2D label slices, got shape {lab.shape}.")
        if self._shape is None:
            self._shape = lab.shape
        elif lab.shape != self._shape:
            raise PanoptemError(f"All slices of a stack must have the same shape; got {lab.shape} "
                                f"after {self._shape}.")
        local, ids = compact(lab) if compacted is None else compacted
        k = int(ids.size)
        ids = ids.astype(np.int64)
        offset = self._n
        self._n += k
        cls = ids // self.divisor if self.divisor else np.zeros(k, np.int64)
        thing = ids % self.divisor != 0 if self.divisor else np.ones(k, bool)
        nz = np.flatnonzero(local > 0)  # a boolean scan: several times faster than one of the ids
        lv = local.ravel()[nz]
        area = np.bincount(lv, minlength=k + 1)[1:].astype(np.int64)  # over the object pixels only
        r0, r1, c0, c1 = pixel_boxes(nz, lv, k, lab.shape)
        for key, val in (("cls", cls), ("thing", thing), ("area", area), ("r0", r0), ("r1", r1),
                         ("c0", c0), ("c1", c1), ("count", [k])):
            self._nodes[key].append(np.asarray(val))
        cur = {"local": local, "nz": nz, "lv": lv, "offset": offset, "k": k, "cls": cls, "thing": thing,
               "area": area}
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
        dt = dtype_for_max_label(self._n)
        if out is not None and out.dtype == dt and out.shape == lab.shape:
            prov = out
            prov[...] = 0
        else:
            prov = np.zeros(lab.shape, dt)  # written at the object pixels only
        ids_here = lv.astype(prov.dtype)
        ids_here += prov.dtype.type(offset)
        prov.reshape(-1)[nz] = ids_here
        return prov

    def _pairs(self, p: dict, c: dict):
        # the objects of c under the object voxels of p
        b = c["local"].ravel()[p["nz"]]
        on = b > 0
        ia, ib, inter = pair_counts(p["lv"][on], b[on], p["k"], c["k"])
        ia, ib = ia - 1, ib - 1
        ok = (p["cls"][ia] == c["cls"][ib]) & p["thing"][ia] & c["thing"][ib]
        ia, ib, inter = ia[ok], ib[ok], inter[ok]
        iou = inter / (p["area"][ia] + c["area"][ib] - inter)
        return ia, ib, inter, iou

    def _link_neighbours(self, p: dict, c: dict) -> None:
        ia, ib, inter, iou = self._pairs(p, c)
        self._record_neighbours(ia + p["offset"] + 1, ib + c["offset"] + 1, inter, iou,
                                inter / np.minimum(p["area"][ia], c["area"][ib]))

    def _record_neighbours(self, a, b, inter, iou, ioa) -> None:
        """One-to-one IoU matches and IoA candidates among the overlaps ``a``-``b``
        of objects in neighbouring slices (global provisional ids)."""
        m = iou >= self.iou_thr
        sel = np.flatnonzero(m)[greedy_match(a[m], b[m], iou[m])]
        self._match.append((a[sel], b[sel]))
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
        nodes = {k: np.concatenate([[0 if k != "thing" else False], lk._nodes[k][0]])
                 for k in ("cls", "thing", "area")}

        cls, thing, area = nodes["cls"], nodes["thing"].astype(bool), nodes["area"]

        def pairs(p, dz):
            # the pairs of the same class, both things, with their IoU and IoA (the rule's matching
            # and attachment order them themselves); checked and scored a slice of the pairs at a
            # time (millions, in blockwise runs)
            a, b, inter = (np.asarray(x, np.int64) for x in p)
            ok = np.empty(a.size, bool)
            for s in range(0, a.size, _STEP):
                sa, sb = a[s:s + _STEP], b[s:s + _STEP]
                if not np.all(z[sb - 1] - z[sa - 1] == dz):
                    raise PanoptemError("Linking statistics pair objects of the wrong slices.")
                ok[s:s + _STEP] = (cls[sa] == cls[sb]) & thing[sa] & thing[sb]
            if not ok.all():
                a, b, inter = a[ok], b[ok], inter[ok]
            del ok
            iou, ioa = np.empty(a.size), np.empty(a.size)
            for s in range(0, a.size, _STEP):
                aa, ab, ii = area[a[s:s + _STEP]], area[b[s:s + _STEP]], inter[s:s + _STEP]
                iou[s:s + _STEP] = ii / (aa + ab - ii)
                ioa[s:s + _STEP] = ii / np.minimum(aa, ab)
            return a, b, inter, iou, ioa

        a, b, inter, iou, ioa = pairs(neighbours, 1)
        if not _ascending(a):
            order = np.argsort(a, kind="stable")
            a, b, inter, iou, ioa = a[order], b[order], inter[order], iou[order], ioa[order]
        # matched slice pair by slice pair (no node is in two), a few slices at a time
        first = np.concatenate([[1], 1 + np.cumsum(counts)])  # the first node of every slice
        start = 0
        while start < a.size:
            end = a.size if start + _STEP >= a.size else \
                max(int(np.searchsorted(a, first[z[a[start + _STEP - 1] - 1] + 1])), start + 1)
            lk._record_neighbours(a[start:end], b[start:end], inter[start:end], iou[start:end], ioa[start:end])
            start = end
        del a, b, inter, iou, ioa
        for name in ("_match", "_adj"):  # one part, which finish() reads without copying it
            parts = getattr(lk, name)
            if len(parts) > 1:
                setattr(lk, name, [tuple(np.concatenate(col) for col in zip(*parts))])
        if gaps is not None:
            a, b, inter, iou, _ = pairs(gaps, 2)
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
        if n == 0:
            e = np.zeros(0, np.int64)
            return LinkResult(np.zeros(1, np.uint32), 0, e.astype(np.uint32), e, e, np.zeros((0, 6), np.int64), 0)

        def node(key, fill=0):  # one copy, straight from the slices' parts
            return np.concatenate([[fill], *self._nodes[key]])

        cls, thing, area = node("cls"), node("thing", False).astype(bool), node("area")
        z = np.concatenate([[0], np.repeat(np.arange(self._z), np.concatenate(self._nodes["count"]))])

        def cat(lst, i, dtype=np.int64):  # read only: one part (from_statistics) is not copied
            if not lst:
                return np.zeros(0, dtype)
            return (lst[0][i] if len(lst) == 1 else np.concatenate([t[i] for t in lst])).astype(dtype, copy=False)

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
        del links_a, links_b, ma, mb, aa, ab, ainter, ga, gb, giou, att_back, att_fwd, match_fwd, match_back
        graph = sparse.coo_matrix((np.ones(la.size, np.int8), (la, lb)), shape=(n + 1, n + 1)).tocsr()
        del la, lb
        n_comp, comp = connected_components(graph, directed=False)
        del graph  # the links' arrays are let go before the objects are built: memory at scale
        return self._objects(comp, n_comp, cls, thing, area, z, min_size, min_extent)

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
        x = np.unique(next_of[d])  # the junctions repaired
        att_fwd[d] = 0  # a matched predecessor keeps its link
        att_back[b] = 0
        att_fwd[x[np.isin(att_fwd[x], b)]] = 0  # nor does a junction's own link to a repaired successor stay
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

    def _objects(self, comp, n_comp, cls, thing, area, z, min_size, min_extent) -> LinkResult:
        n = len(comp) - 1
        big = np.iinfo(np.int64).max
        cc = comp[1:]  # nodes 1..n (views, not copies: memory at scale)
        s = self.stride
        depth = self._z * s if self.depth is None else int(self.depth)
        if not (self._z - 1) * s < depth <= self._z * s:
            raise PanoptemError(f"{self._z} slices of {s} planes each cannot stand for a stack {depth} planes "
                                "deep (the last slice stands for what remains).")
        z0 = z[1:] * s  # the planes each slice stands for: z0 .. z1 - 1
        z1 = np.minimum(z0 + s, depth)
        voxels = np.bincount(cc, weights=area[1:] * (z1 - z0), minlength=n_comp).astype(np.int64)
        lo = np.full((n_comp, 3), big, np.int64)
        hi = np.zeros((n_comp, 3), np.int64)

        def column(key):  # nodes 1..n; one part (from_statistics) is not copied
            parts = self._nodes[key]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        for ax, (start, stop) in enumerate(((z0, z1), ("r0", "r1"), ("c0", "c1"))):
            np.minimum.at(lo[:, ax], cc, column(start) if ax else start)
            np.maximum.at(hi[:, ax], cc, column(stop) if ax else stop)
        del z0, z1
        first = np.full(n_comp, big, np.int64)
        np.minimum.at(first, cc, np.arange(1, n + 1))
        comp_cls = np.zeros(n_comp, np.int64)
        comp_cls[cc] = cls[1:]
        comp_thing = np.zeros(n_comp, bool)
        comp_thing[cc] = thing[1:]
        bbox = np.concatenate([lo, hi], axis=1)
        shape = (depth, *self._shape)
        keep = comp_thing & keep_mask(voxels, bbox, shape, min_size, min_extent)
        # number kept objects per class in order of first appearance
        order = np.argsort(first, kind="stable")
        div = self.divisor
        final = np.zeros(n_comp, np.int64)
        final[order] = number_per_class(comp_cls[order], keep[order], div)
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
