"""Stitching the blocks of a stack and linking it once, globally.

Pieces of one 2D object that lie in neighbouring blocks are joined when they
touch across the face (8-connected in the slice) and belong to the same
centre, exactly as connected components of the whole slice would join them;
touching pieces of different centres (touching but distinct mitochondria)
stay apart. The slices a block decoded before its core (its stack-axis halo)
are matched to the pieces of the blocks that own them by overlap. Then the
per-piece statistics are summed per 2D object and the slice linker solves
all links at once (:meth:`SliceLinker.from_statistics`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from ..inference.linking import SliceLinker
from ..params import Params3D
from ._pass1 import STUFF, StackJob, block_file, halo_file, load_labels
from .blocks import BlockGrid

SHIFT = 32


def gid(block: int, local) -> np.ndarray:
    """Global piece id: block index in the high bits, local id in the low 32."""
    return (np.int64(block) << SHIFT) | np.asarray(local, np.int64)


def _open_provisional(job: StackJob):
    import zarr
    return zarr.open_array(str(Path(job.work) / "provisional.zarr"), mode="r")


def faces(grid: BlockGrid, axis: int) -> list[tuple[int, int, int]]:
    """(lower block, upper block, in-plane axis) of every in-plane face."""
    out = []
    for b in grid:
        for ax in range(3):
            if ax == axis:
                continue
            pos = list(b.position)
            pos[ax] += 1
            j = grid.index_of(pos)
            if j is not None:
                out.append((b.index, j, ax))
    return out


def face_pairs(job: StackJob, grid: BlockGrid, face: tuple[int, int, int]) -> np.ndarray:
    """Pairs (N, 2) of global piece ids that touch across one in-plane face."""
    i, j, ax = face
    bi = grid[i]
    other = [o for o in range(3) if o not in (ax, job.axis)][0]
    f = grid[j].core[ax].start
    lo_o = max(0, bi.core[other].start - 1)
    hi_o = min(job.shape[other], bi.core[other].stop + 1)
    sl = [None, None, None]
    sl[job.axis] = bi.core[job.axis]
    sl[ax] = slice(f - 1, f + 1)
    sl[other] = slice(lo_o, hi_o)
    slab = np.asarray(_open_provisional(job)[tuple(sl)])
    slab = np.moveaxis(slab, (job.axis, ax, other), (0, 1, 2)).astype(np.int64)  # (stack, 2 layers, along face)
    # block index of every pixel along the face, for each layer: a few blocks (one, and the corners')
    along, where = np.unique(np.arange(lo_o, hi_o) // grid.block_shape[other], return_inverse=True)
    ids = []
    for layer, b in ((0, bi), (1, grid[j])):
        pos = list(b.position)
        idx = np.array([grid.index_of(pos[:other] + [v] + pos[other + 1:]) for v in along.tolist()],
                       np.int64)[where]
        lab = slab[:, layer, :]
        valid = (lab > 0) & (lab < int(STUFF))
        ids.append(np.where(valid, (idx[None, :] << SHIFT) | lab, 0))
    a, b = ids
    out = []
    for off in (-1, 0, 1):
        if off < 0:
            x, y = a[:, -off:], b[:, :off]
        elif off > 0:
            x, y = a[:, :-off], b[:, off:]
        else:
            x, y = a, b
        m = (x > 0) & (y > 0)
        if m.any():
            out.append(np.stack([x[m], y[m]], axis=1))
    if not out:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(out), axis=0)


def halo_matches(job: StackJob, grid: BlockGrid, index: int) -> np.ndarray:
    """(N, 2): each stack-halo piece of block ``index`` (as a global id) and the
    global id of the piece it overlaps most in the slices its owners decoded."""
    t = np.load(block_file(job.work, index))
    planes = t["halo_planes"]
    if planes.size == 0:
        return np.zeros((0, 2), np.int64)
    maps = load_labels(halo_file(job.work, index))
    if maps is None:  # a table of an earlier release held them
        maps = t["halo_maps"]
    b = grid[index]
    prov = _open_provisional(job)
    out = []
    for d, hm in zip(planes, maps):
        sl = list(b.core)
        sl[job.axis] = slice(int(d), int(d) + 1)
        owner = list(b.position)
        owner[job.axis] = int(d) // grid.block_shape[job.axis]
        o = grid.index_of(owner)
        theirs = np.moveaxis(np.asarray(prov[tuple(sl)]), job.axis, 0)[0].astype(np.int64)
        m = (hm > 0) & (hm < STUFF) & (theirs > 0) & (theirs < int(STUFF))
        if not m.any():
            continue
        code = (hm[m].astype(np.int64) << SHIFT) | theirs[m]
        u, c = np.unique(code, return_counts=True)
        mine, other = u >> SHIFT, u & 0xFFFFFFFF
        order = np.lexsort((other, -c, mine))  # per halo piece: most overlap, then lowest id
        mine, other = mine[order], other[order]
        first = np.unique(mine, return_index=True)[1]
        out.append(np.stack([gid(index, mine[first]), gid(o, other[first])], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


STAT_COLUMNS = ("plane", "key", "area", "r0", "r1", "c0", "c1", "first")
PAIR_COLUMNS = ("pa", "pb", "pc", "pkind")
TABLE_COLUMNS = (*STAT_COLUMNS, "halo", "cls_counts", *PAIR_COLUMNS, "stuff_plane", "stuff_cls", "stuff_count")


def piece_tables(job: StackJob, grid: BlockGrid) -> list[dict]:
    """Every block's table of pieces, the columns the linking needs (a few numbers per piece)."""
    out = []
    for b in grid:
        with np.load(block_file(job.work, b.index)) as t:
            out.append({k: t[k] for k in TABLE_COLUMNS})
    return out


class _CorePieces:
    """The core pieces of every block, sorted by global id, and the way from a piece's global
    id (a stack-halo piece's too) to its position in that order."""

    def __init__(self, grid: BlockGrid, tables: list[dict], halos: list[np.ndarray]):
        ids, cols, counts = [], {k: [] for k in STAT_COLUMNS}, []
        for b, t in zip(grid, tables):  # each block's columns are dropped once gathered
            core = ~t["halo"].astype(bool)
            ids.append(gid(b.index, np.flatnonzero(core) + 1))
            for k in STAT_COLUMNS:
                cols[k].append(t.pop(k)[core])
            counts.append(t.pop("cls_counts")[core])
        self.ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        del ids
        order = None if np.all(self.ids[1:] > self.ids[:-1]) else np.argsort(self.ids)  # grid order: sorted
        if order is not None:
            self.ids = self.ids[order]
        self.cols = {}
        for k in STAT_COLUMNS:
            v = np.concatenate(cols.pop(k))
            self.cols[k] = v if order is None else v[order]
        c = np.concatenate(counts) if counts else np.zeros((0, 1), np.int64)
        self.counts = c if order is None else c[order]
        hmap = np.concatenate(halos) if halos else np.zeros((0, 2), np.int64)
        o = np.argsort(hmap[:, 0])
        self.hsrc, self.hdst = hmap[o, 0], hmap[o, 1]

    @property
    def n(self) -> int:
        return int(self.ids.size)

    def index_of(self, g) -> np.ndarray:
        """Position of each core piece ``g`` (global ids), -1 where it is not one."""
        g = np.asarray(g, np.int64)
        if not self.n:
            return np.full(g.shape, -1, np.int64)
        i = np.searchsorted(self.ids, g)
        ok = self.ids[np.minimum(i, self.n - 1)] == g
        return np.where(ok, i, -1)

    def owner_of(self, g) -> np.ndarray:
        """Like :meth:`index_of`, a stack-halo piece standing for the piece it was matched to."""
        g = np.asarray(g, np.int64)
        i = self.index_of(g)
        miss = i < 0
        if miss.any() and self.hsrc.size:
            j = np.searchsorted(self.hsrc, g[miss])
            jj = np.minimum(j, self.hsrc.size - 1)
            found = self.hsrc[jj] == g[miss]
            sub = np.full(int(miss.sum()), -1, np.int64)
            sub[found] = self.index_of(self.hdst[jj[found]])
            i[miss] = sub
        return i


def _objects_2d(pieces: _CorePieces, pairs: list[np.ndarray]) -> tuple[int, np.ndarray]:
    """Touching pieces of the same centre joined: the number of 2D objects and each piece's."""
    n = pieces.n
    if not n:
        return 0, np.zeros(0, np.int64)
    fp = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    ia, ib = pieces.index_of(fp[:, 0]), pieces.index_of(fp[:, 1])
    del fp
    ok = (ia >= 0) & (ib >= 0)
    ia, ib = ia[ok], ib[ok]
    key = pieces.cols["key"]
    same = key[ia] == key[ib]
    ia, ib = ia[same], ib[same]
    g = sparse.coo_matrix((np.ones(ia.size, np.int8), (ia, ib)), shape=(n, n))
    return connected_components(g, directed=False)


def _object_stats(pieces: _CorePieces, n_obj: int, obj: np.ndarray, thing_ids: list[int]) -> dict:
    """Per 2D object: area, box, first pixel, slice and thing class; the pieces' columns are
    dropped once summed."""
    col = pieces.cols
    out = {"area": np.bincount(obj, weights=col.pop("area"), minlength=n_obj).astype(np.int64)}
    big = np.iinfo(np.int64).max
    for k, fill, fn in (("r0", big, np.minimum), ("c0", big, np.minimum), ("first", big, np.minimum),
                        ("r1", 0, np.maximum), ("c1", 0, np.maximum)):
        v = np.full(n_obj, fill, np.int64)
        fn.at(v, obj, col.pop(k))
        out[k] = v
    out["plane"] = np.zeros(n_obj, np.int64)
    out["plane"][obj] = col.pop("plane")
    # majority thing class of each centre over all its pieces in the slice (the key
    # names the slice too), as merge_panoptic decides it for a whole slice
    u, inv = np.unique(col.pop("key"), return_inverse=True)
    tot = np.zeros((u.size, pieces.counts.shape[1]), np.int64)
    np.add.at(tot, inv, pieces.counts)
    pieces.counts = None
    out["cls"] = np.zeros(n_obj, np.int64)
    if obj.size:
        out["cls"][obj] = np.asarray(thing_ids, np.int64)[tot.argmax(axis=1)][inv]
    return out


def _overlaps(grid: BlockGrid, tables: list[dict], pieces: _CorePieces, node: np.ndarray):
    """Overlaps between slices summed over blocks, on the nodes: (a, b, pixels) of neighbouring
    slices and of slices two apart, each pair once; each block's pairs are dropped once read."""
    codes, counts = [], []
    for b, t in zip(grid, tables):
        pa, pb, pc, pk = (t.pop(k) for k in PAIR_COLUMNS)
        if not pa.size:
            continue
        ia, ic = pieces.owner_of(gid(b.index, pa)), pieces.owner_of(gid(b.index, pb))
        keep = (ia >= 0) & (ic >= 0)
        a, c = node[ia[keep]].astype(np.int64), node[ic[keep]].astype(np.int64)
        # one int64 per pair: slices apart - 1 (0 or 1) in bit 62, the two 31-bit nodes below (bit 63 is the sign)
        codes.append(((pk[keep].astype(np.int64) - 1) << 62) | (a << 31) | c)
        counts.append(pc[keep])
    if not codes:
        e = np.zeros(0, np.int64)
        return (e, e, e), (e, e, e)
    u, inv = np.unique(np.concatenate(codes), return_inverse=True)
    del codes
    inter = np.bincount(inv, weights=np.concatenate(counts)).astype(np.int64)
    del inv, counts
    pa, pb = (u >> 31) & ((1 << 31) - 1), u & ((1 << 31) - 1)
    one = int(np.searchsorted(u, np.int64(1) << 62))  # sorted: the neighbours' pairs, then those two apart
    return (pa[:one], pb[:one], inter[:one]), (pa[one:], pb[one:], inter[one:])


def solve(job: StackJob, grid: BlockGrid, pairs: list[np.ndarray], halos: list[np.ndarray],
          thing_ids: list[int], min_size: int, min_extent: int) -> dict:
    """Join pieces into 2D objects, link them into 3D objects and write one
    lookup per block (local id -> final id) plus the stuff painting table.
    Returns counts for the run's summary. ``pairs`` and ``halos`` (the workers'
    face pairs and halo matches) are emptied as they are used: memory grows with
    the pieces, and every copy not needed any more is let go."""
    p = Params3D(**job.params)
    tables = piece_tables(job, grid)
    pieces = _CorePieces(grid, tables, halos)
    halos.clear()
    # 1. pieces -> 2D objects: touching pieces of the same centre
    n_obj, obj = _objects_2d(pieces, pairs)
    pairs.clear()
    # 2. per 2D object: sums and extremes; its thing class
    st = _object_stats(pieces, n_obj, obj, thing_ids)
    # 3. node order of a whole-volume run: slice, class (with a divisor), first pixel
    div = p.label_divisor or 0
    o = np.lexsort((st.pop("first"), st["cls"] if div else np.zeros(n_obj, np.int64), st["plane"]))
    node_of_obj = np.empty(n_obj, np.int64)
    node_of_obj[o] = np.arange(1, n_obj + 1)
    node = np.concatenate([node_of_obj[obj], [0]])  # per piece; -1 (not a piece): 0
    del obj, node_of_obj
    # 4. overlaps between slices, summed over blocks, on 2D objects
    next_to, two_apart = _overlaps(grid, tables, pieces, node)
    # 5. link once, the objects in node order
    for k in st:
        st[k] = st[k][o]
    del o
    stack_len = job.shape[job.axis]
    hw = tuple(job.shape[ax] for ax in range(3) if ax != job.axis)
    lk = SliceLinker.from_statistics(
        (stack_len, *hw), st.pop("plane"), st.pop("cls") if div else np.zeros(n_obj, np.int64),
        np.ones(n_obj, bool), st.pop("area"), (st.pop("r0"), st.pop("r1")), (st.pop("c0"), st.pop("c1")),
        next_to, two_apart,  # two apart: the X repair uses them, as add() does
        iou_thr=p.iou_thr, ioa_thr=p.ioa_thr, label_divisor=p.label_divisor or None, bridge_gaps=p.bridge_gaps,
        stride=job.stride, depth=job.volume_shape[job.axis])  # voxels on the volume's grid
    del st, next_to, two_apart
    res = lk.finish(min_size=min_size, min_extent=min_extent)
    del lk
    final = res.mapping  # node -> final id
    # 6. one lookup per block, and where stuff is painted
    maps = Path(job.work) / "maps"
    maps.mkdir(exist_ok=True)
    for b, t in zip(grid, tables):
        h = t["halo"].astype(bool)
        lut = np.zeros(h.size + 1, final.dtype)
        local = np.flatnonzero(~h) + 1
        lut[local] = final[node[pieces.index_of(gid(b.index, local))]]
        np.save(maps / f"{b.index}.npy", lut)
    sp = np.concatenate([t["stuff_plane"] for t in tables])
    sc = np.concatenate([t["stuff_cls"] for t in tables])
    sn = np.concatenate([t["stuff_count"] for t in tables])
    paint = np.zeros((0, 2), np.int64)
    if sp.size:
        u, inv = np.unique(np.stack([sp, sc], axis=1), axis=0, return_inverse=True)
        tot = np.bincount(inv.ravel(), weights=sn)
        paint = u[tot >= 64]  # merge_panoptic's stuff_area
    np.save(Path(job.work) / "stuff_paint.npy", paint)
    from ._pass1 import save_npz
    save_npz(Path(job.work) / "objects.npz", ids=res.ids.astype(np.int64), voxels=res.voxels, classes=res.classes)
    kc, kn = np.unique(res.classes, return_counts=True)
    return {"pieces": pieces.n, "objects_2d": int(n_obj), "objects": int(res.n_objects),
            "per_class": {int(c): int(k) for c, k in zip(kc, kn)},
            "dtype": str(final.dtype), "max_id": int(final.max(initial=0))}
