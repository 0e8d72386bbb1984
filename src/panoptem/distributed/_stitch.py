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
    # block index of every pixel along the face, for each layer
    coords = np.arange(lo_o, hi_o)
    ids = []
    for layer, b in ((0, bi), (1, grid[j])):
        pos = np.array([b.position] * coords.size)
        pos[:, other] = coords // grid.block_shape[other]
        idx = np.array([grid.index_of(p) for p in pos], np.int64)
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


TABLE_COLUMNS = ("plane", "key", "area", "r0", "r1", "c0", "c1", "first", "halo", "cls_counts",
                 "pa", "pb", "pc", "pkind", "stuff_plane", "stuff_cls", "stuff_count")


def piece_tables(job: StackJob, grid: BlockGrid) -> list[dict]:
    """Every block's table of pieces, the columns the linking needs (a few numbers per piece)."""
    out = []
    for b in grid:
        with np.load(block_file(job.work, b.index)) as t:
            out.append({k: t[k] for k in TABLE_COLUMNS})
    return out


def solve(job: StackJob, grid: BlockGrid, pairs: list[np.ndarray], halos: list[np.ndarray],
          thing_ids: list[int], min_size: int, min_extent: int) -> dict:
    """Join pieces into 2D objects, link them into 3D objects and write one
    lookup per block (local id -> final id) plus the stuff painting table.
    Returns counts for the run's summary."""
    p = Params3D(**job.params)
    tables = piece_tables(job, grid)
    core_ids, halo_ids, cols = [], [], {k: [] for k in ("plane", "key", "area", "r0", "r1", "c0", "c1", "first")}
    counts = []
    for b, t in zip(grid, tables):
        local = np.arange(1, t["plane"].size + 1, dtype=np.int64)
        h = t["halo"].astype(bool)
        core_ids.append(gid(b.index, local[~h]))
        halo_ids.append(gid(b.index, local[h]))
        for k in cols:
            cols[k].append(t[k][~h])
        counts.append(t["cls_counts"][~h])
    ids = np.concatenate(core_ids)
    n = ids.size
    order = np.argsort(ids)
    ids = ids[order]
    col = {k: np.concatenate(v)[order] for k, v in cols.items()}
    ccounts = np.concatenate(counts)[order] if n else np.zeros((0, len(thing_ids)), np.int64)

    def index_of(g):
        g = np.asarray(g, np.int64)
        i = np.searchsorted(ids, g)
        ok = (i < n) & (ids[np.minimum(i, max(n - 1, 0))] == g) if n else np.zeros(g.shape, bool)
        return np.where(ok, i, -1)

    # 1. pieces -> 2D objects: touching pieces of the same centre
    fp = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    ia, ib = index_of(fp[:, 0]), index_of(fp[:, 1])
    ok = (ia >= 0) & (ib >= 0)
    ia, ib = ia[ok], ib[ok]
    same = col["key"][ia] == col["key"][ib]
    ia, ib = ia[same], ib[same]
    g = sparse.coo_matrix((np.ones(ia.size, np.int8), (ia, ib)), shape=(n, n))
    n_obj, obj = connected_components(g, directed=False) if n else (0, np.zeros(0, np.int64))
    # 2. per 2D object: sums and extremes
    area = np.bincount(obj, weights=col["area"], minlength=n_obj).astype(np.int64)
    big = np.iinfo(np.int64).max
    stats = {}
    for k, fill, fn in (("r0", big, np.minimum), ("c0", big, np.minimum), ("first", big, np.minimum),
                        ("r1", 0, np.maximum), ("c1", 0, np.maximum)):
        v = np.full(n_obj, fill, np.int64)
        fn.at(v, obj, col[k])
        stats[k] = v
    plane = np.zeros(n_obj, np.int64)
    plane[obj] = col["plane"]
    key = np.zeros(n_obj, np.int64)
    key[obj] = col["key"]
    # majority thing class of each centre over all its pieces in the slice (the key
    # names the slice too), as merge_panoptic decides it for a whole slice
    u, inv = np.unique(col["key"], return_inverse=True)
    tot = np.zeros((u.size, ccounts.shape[1]), np.int64)
    np.add.at(tot, inv, ccounts)
    cls = np.zeros(n_obj, np.int64)
    if n:
        cls[obj] = np.asarray(thing_ids, np.int64)[tot.argmax(axis=1)][inv]
    # 3. node order of a whole-volume run: slice, class (with a divisor), first pixel
    div = p.label_divisor or 0
    node_order = np.lexsort((stats["first"], cls if div else np.zeros(n_obj, np.int64), plane))
    node_of_obj = np.empty(n_obj, np.int64)
    node_of_obj[node_order] = np.arange(1, n_obj + 1)
    # 4. overlaps between slices, summed over blocks, on 2D objects
    hmap = np.concatenate(halos) if halos else np.zeros((0, 2), np.int64)
    hsrc, hdst = hmap[:, 0], hmap[:, 1]
    hs_order = np.argsort(hsrc)
    hsrc, hdst = hsrc[hs_order], hdst[hs_order]

    def to_node(g):
        i = index_of(g)
        miss = i < 0
        if miss.any() and hsrc.size:  # a stack-halo piece: its owner's piece
            j = np.searchsorted(hsrc, g[miss])
            jj = np.minimum(j, hsrc.size - 1)
            found = hsrc[jj] == g[miss]
            sub = np.full(miss.sum(), -1, np.int64)
            sub[found] = index_of(hdst[jj[found]])
            i = i.copy()
            i[miss] = sub
        return np.where(i >= 0, node_of_obj[obj[np.maximum(i, 0)]] if n else 0, 0)

    recs = []
    for b, t in zip(grid, tables):
        if t["pa"].size == 0:
            continue
        a, c = to_node(gid(b.index, t["pa"])), to_node(gid(b.index, t["pb"]))
        keep = (a > 0) & (c > 0)
        recs.append(np.stack([a[keep], c[keep], t["pc"][keep], t["pkind"][keep]], axis=1))
    rec = np.concatenate(recs) if recs else np.zeros((0, 4), np.int64)
    # one int64 per pair: slices apart - 1 (0 or 1) in bit 62, the two 31-bit nodes below (bit 63 is the sign)
    code = ((rec[:, 3] - 1) << 62) | (rec[:, 0] << 31) | rec[:, 1] if rec.size else np.zeros(0, np.int64)
    u, inv = np.unique(code, return_inverse=True)
    inter = np.bincount(inv, weights=rec[:, 2]).astype(np.int64) if rec.size else np.zeros(0, np.int64)
    kind, pa, pb = (u >> 62) + 1, (u >> 31) & ((1 << 31) - 1), u & ((1 << 31) - 1)
    # 5. link once
    o = node_order
    stack_len = job.shape[job.axis]
    hw = tuple(job.shape[ax] for ax in range(3) if ax != job.axis)
    thing = np.ones(n_obj, bool)
    lk = SliceLinker.from_statistics(
        (stack_len, *hw), plane[o], cls[o] if div else np.zeros(n_obj, np.int64), thing[o], area[o],
        (stats["r0"][o], stats["r1"][o]), (stats["c0"][o], stats["c1"][o]),
        (pa[kind == 1], pb[kind == 1], inter[kind == 1]),
        (pa[kind == 2], pb[kind == 2], inter[kind == 2]),  # two apart: the X repair uses them, as add() does
        iou_thr=p.iou_thr, ioa_thr=p.ioa_thr, label_divisor=p.label_divisor or None, bridge_gaps=p.bridge_gaps,
        stride=job.stride, depth=job.volume_shape[job.axis])  # voxels on the volume's grid
    res = lk.finish(min_size=min_size, min_extent=min_extent)
    final = res.mapping  # node -> final id
    # 6. one lookup per block, and where stuff is painted
    maps = Path(job.work) / "maps"
    maps.mkdir(exist_ok=True)
    for b, t in zip(grid, tables):
        k = t["plane"].size
        lut = np.zeros(k + 1, final.dtype)
        if k:
            local = np.arange(1, k + 1, dtype=np.int64)
            h = t["halo"].astype(bool)
            node = to_node(gid(b.index, local[~h]))
            lut[local[~h]] = final[node]
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
    return {"pieces": int(n), "objects_2d": int(n_obj), "objects": int(res.n_objects),
            "per_class": {int(c): int(k) for c, k in zip(kc, kn)},
            "dtype": str(final.dtype), "max_id": int(final.max(initial=0))}
