"""Fill holes in blockwise runs: the holes of each xy plane, found across blocks.

A whole-volume run fills, in each xy plane, background enclosed by one object
(:func:`~panoptem.inference.postprocess.fill_holes`). Blockwise, a hole may cross block
faces. Each block takes its core's final labels (after Erode / Dilate labels), splits the
background of every plane into parts, decides the parts that stay inside the core, and
records those that reach a face to another block: whether they can still be a hole (they do
not touch the volume's edge and touch at most one object) and that object. A task per face
pairs the parts that meet across it, and the labels each meets there; the client joins the
parts into the volume's parts and keeps those enclosed by one object. The writing pass fills
both kinds, so the labels equal a whole-volume run's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..inference.postprocess import SIDES as SIDE_AT
from ..inference.postprocess import background_parts, part_neighbours, sole_neighbour, touching
from ..labels import dtype_for_max_label
from ._stitch import faces, gid
from .blocks import Block, BlockGrid

#: the side of a block on each in-plane axis: (lower face, upper face)
SIDES = {1: ("y0", "y1"), 2: ("x0", "x1")}


def _dir(job) -> Path:
    return Path(job.stack.work) / "holes"


def _inner_sides(block: Block, shape) -> tuple[list[str], list[str]]:
    """The block's in-plane sides that face another block, and those on the volume's edge."""
    inner, edge = [], []
    for ax, (lo, hi) in SIDES.items():
        (edge if block.core[ax].start == 0 else inner).append(lo)
        (edge if block.core[ax].stop == shape[ax] else inner).append(hi)
    return inner, edge


def _parts(job, block: Block, labels: np.ndarray):
    """The background parts of ``labels`` (the block's core) and what they decide alone:
    (parts, fill label per part where the part is a hole inside the core, the parts on the
    block's inner sides, their sole label so far, whether each can no longer be a hole)."""
    comp, n = background_parts(labels)
    count, lut = sole_neighbour(*part_neighbours(comp, labels), n, labels.dtype)
    inner, edge = _inner_sides(block, job.stack.volume_shape)
    at_edge = np.zeros(n + 1, bool)
    at_edge[touching(comp, edge)] = True
    seam = touching(comp, inner)
    fill = np.where((count == 1) & ~at_edge, lut, 0)
    fill[0] = 0
    fill[seam] = 0  # decided with the blocks beyond
    return comp, fill, seam, lut[seam], at_edge[seam] | (count[seam] > 1)


def _filled(comp: np.ndarray, fill: np.ndarray, labels: np.ndarray, in_place: bool = False) -> np.ndarray:
    """``labels`` (a copy, or themselves ``in_place``) with each background part of ``comp``
    whose ``fill`` is not 0 given that label."""
    out = labels if in_place else np.array(labels)
    where = fill[comp] > 0
    out[where] = fill[comp[where]]
    return out


def _kept(job, block: Block) -> tuple[Path, Path]:
    """Where :func:`holes_block` keeps the block's labels with its own holes filled, and its
    parts on inner sides, for the writing pass."""
    return _dir(job) / f"filled_{block.index}.npz", _dir(job) / f"seam_{block.index}.npz"


def holes_block(job, block: Block) -> int:
    """Pass 1 of Fill holes for one block: its parts on inner sides, and the labels and
    parts of those sides, saved in the work folder; the block's labels with the holes inside
    its core filled, and the parts on its inner sides, kept for the writing pass. Returns how
    many parts reach a side."""
    from ._pass1 import save_labels
    from ._write import block_labels
    d = _dir(job)
    done = d / f"{block.index}.npz"
    if done.exists():
        return int(np.load(done)["seam"].size)
    labels = block_labels(job, block)
    comp, fill, seam, label, blocked = _parts(job, block, labels)
    inner, _ = _inner_sides(block, job.stack.volume_shape)
    layers = {f"{s}_parts": comp[SIDE_AT[s]] for s in inner}
    layers.update({f"{s}_labels": labels[SIDE_AT[s]] for s in inner})
    d.mkdir(exist_ok=True)
    on_seam = np.zeros(len(fill), comp.dtype)
    on_seam[seam] = seam
    filled_path, seam_path = _kept(job, block)
    save_labels(filled_path, _filled(comp, fill, labels))
    save_labels(seam_path, on_seam[comp])
    tmp = d / f"{block.index}.tmp.npz"
    np.savez(tmp, seam=seam, label=label, blocked=blocked, **layers)
    tmp.replace(done)
    return int(seam.size)


def holes_face(job, face: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2, one in-plane face between blocks ``i`` (below) and ``j`` (above) along axis
    ``ax``: the pairs of global part ids that meet across it (N, 2), and (part, label) pairs
    of a part meeting an object across it (M, 2; labels as int64)."""
    i, j, ax = face
    lo_side, hi_side = SIDES[ax]
    a, b = np.load(_dir(job) / f"{i}.npz"), np.load(_dir(job) / f"{j}.npz")
    pa, la = a[f"{hi_side}_parts"], a[f"{hi_side}_labels"]
    pb, lb = b[f"{lo_side}_parts"], b[f"{lo_side}_labels"]
    both = (pa > 0) & (pb > 0)
    joined = np.stack([gid(i, pa[both]), gid(j, pb[both])], axis=1)
    a_meets, b_meets = (pa > 0) & (pb == 0), (pb > 0) & (pa == 0)
    meets = np.concatenate([np.stack([gid(i, pa[a_meets]), lb[a_meets].astype(np.int64)], axis=1),
                            np.stack([gid(j, pb[b_meets]), la[b_meets].astype(np.int64)], axis=1)])
    return np.unique(joined, axis=0), np.unique(meets, axis=0)


def resolve(job, grid: BlockGrid, face_results: list) -> int:
    """On the client: join the parts across faces into the volume's parts; each that touches
    neither the volume's edge nor more than one object is a hole. Saves, per block, the
    (part, label) to fill; returns the number of holes that cross blocks."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components
    d = _dir(job)
    ids, label, blocked = [], [], []
    for b in grid:
        r = np.load(d / f"{b.index}.npz")
        ids.append(gid(b.index, r["seam"]))
        label.append(r["label"].astype(np.int64))
        blocked.append(r["blocked"])
    ids, label, blocked = np.concatenate(ids), np.concatenate(label), np.concatenate(blocked)
    order = np.argsort(ids)
    ids, label, blocked = ids[order], label[order], blocked[order]
    joined = [r[0] for r in face_results if len(r[0])]
    meets = [r[1] for r in face_results if len(r[1])]
    n = ids.size
    pairs = np.concatenate(joined) if joined else np.zeros((0, 2), np.int64)
    u, v = np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1])
    graph = sparse.coo_matrix((np.ones(u.size, np.int8), (u, v)), shape=(n, n))
    k, root = connected_components(graph, directed=False)
    closed = np.ones(k, bool)
    np.logical_and.at(closed, root, ~blocked)
    met = np.concatenate(meets) if meets else np.zeros((0, 2), np.int64)
    rl = np.concatenate([np.stack([root, label], axis=1)[label > 0],
                         np.stack([root[np.searchsorted(ids, met[:, 0])], met[:, 1]], axis=1)])
    rl = np.unique(rl, axis=0)
    count = np.bincount(rl[:, 0], minlength=k)
    sole = np.zeros(k, np.int64)
    one = count[rl[:, 0]] == 1
    sole[rl[one, 0]] = rl[one, 1]
    hole = closed & (count == 1)
    fill = np.where(hole[root], sole[root], 0)
    block_of = ids >> 32
    for b in grid:
        m = (block_of == b.index) & (fill > 0)
        np.save(d / f"fill_{b.index}.npy", np.stack([ids[m] & 0xFFFFFFFF, fill[m]], axis=1))
    return int(hole.sum())


def fill_block(job, block: Block) -> np.ndarray:
    """The block's core labels (as :func:`holes_block` saw them) with their holes filled: those
    inside the core and those :func:`resolve` found across blocks. Takes what
    :func:`holes_block` kept; a block whose labels were not kept is computed again."""
    from ._pass1 import load_labels
    from ._write import block_labels
    across = np.load(_dir(job) / f"fill_{block.index}.npy")
    filled_path, seam_path = _kept(job, block)
    filled, on_seam = load_labels(filled_path), load_labels(seam_path)
    if filled is None or on_seam is None:
        labels = block_labels(job, block)
        comp, fill, *_ = _parts(job, block, labels)
        fill[across[:, 0]] = across[:, 1].astype(fill.dtype)
        return _filled(comp, fill, labels, in_place=True)
    # kept in the narrowest dtype of the block's own ids: a hole filled from across a face may need more
    dt = np.promote_types(filled.dtype, dtype_for_max_label(int(across[:, 1].max(initial=0))))
    fill = np.zeros(int(on_seam.max(initial=0)) + 1, dt)
    fill[across[:, 0]] = across[:, 1].astype(dt)
    return _filled(on_seam, fill, filled.astype(dt), in_place=True)


def hole_faces(grid: BlockGrid) -> list[tuple[int, int, int]]:
    """The faces across which xy planes go on: every face along y and x."""
    return faces(grid, 0)
