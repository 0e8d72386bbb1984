"""Ortho-plane consensus: one label volume from the xy, xz and yz stacks.

Rule ("one-to-one groups, then voxel vote"):

1. Objects of the stacks are grouped per thing class so that a group holds
   at most one object of each stack. Stacks are taken in turn: every object
   of the next stack joins the existing group it matches best, one to one,
   greedily by the mean IoU with the group's members (a member that does not
   overlap counts 0), when that mean is >= ``match_iou``; otherwise it starts
   a group. Neighbouring objects are never merged because their groups touch
   (empanada-napari's greedy cluster merge does that): an object that one
   stack under-segmented joins the group it matches best, and the voxels it
   wrongly covers get too few votes there.
2. Within a group, a voxel is kept when at least ``pixel_vote_thr`` members
   cover it (1: union, 2: majority, 3: intersection of three). Groups with a
   single member survive only with ``allow_one_view`` and then need 1 vote.
3. A voxel kept by two groups goes to the one with more votes there, ties to
   the group with more member voxels, then to the earlier group.
4. Objects smaller than ``min_size`` voxels or thinner than ``min_extent``
   along any axis are removed; the rest are numbered ``class * divisor +
   1..N`` per class (1..N without a divisor). Semantic ("stuff") classes
   ``class * divisor`` are a plain vote of ``pixel_vote_thr`` stacks, painted
   where no object is.

Memory and time: everything is vectorised over voxels; the label volumes and
one int32 copy per stack are held in memory; the overlap tables (every pair of
stacks in one read), the votes with the winners' sizes and boxes, and the final
numbering are computed in chunks of ``chunk`` planes along axis 0, on every core
(threads; numpy releases the GIL). The cost is linear in the
number of voxels plus the (sparse) number of overlapping object pairs; there
is no loop over pairs of objects.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import PanoptemError
from ..labels import (compact, dtype_for_max_label, greedy_match, keep_mask, lookup, number_per_class,
                      pair_counts)
from .runtime import cpu_count


def _spans(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(z0, min(z0 + chunk, n)) for z0 in range(0, n, chunk)]


def _labelled(volumes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The flat indices of the voxels that any of ``volumes`` (ids >= 0, one shape) labels,
    and each volume's ids there, (volumes, voxels): one pass over each volume, after which
    the overlaps and votes work on the labelled voxels alone (a few percent in EM)."""
    flat = [np.ascontiguousarray(v).reshape(-1) for v in volumes]
    on = flat[0] != 0
    for v in flat[1:]:
        on |= v != 0
    at = np.flatnonzero(on)
    return at, np.stack([v[at] for v in flat])


def _chunk_overlaps(locals_: list[np.ndarray], ks: list[int], pairs) -> list[tuple]:
    """:func:`~panoptem.labels.pair_counts` of every pair of stacks over one chunk of planes,
    each stack read once."""
    _, g = _labelled(locals_)
    out = []
    for s, t in pairs:
        m = (g[s] > 0) & (g[t] > 0)
        out.append(pair_counts(g[s][m], g[t][m], ks[s], ks[t]) if ks[s] and ks[t] else (_EMPTY,) * 3)
    return out


def _merge_counts(parts: list[tuple], nb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The overlap tables of several chunks as one (pairs summed)."""
    ia, ib, c = (np.concatenate([p[i] for p in parts]) for i in range(3))
    if len(parts) == 1 or ia.size == 0:
        return ia, ib, c
    u, inv = np.unique(ia * (nb + 1) + ib, return_inverse=True)
    return u // (nb + 1), u % (nb + 1), np.bincount(inv, weights=c).astype(np.int64)


_EMPTY = np.zeros(0, np.int64)


def _group(stacks: list[dict], match_iou: float, overlaps) -> tuple[np.ndarray, int]:
    """Group id (0-based, -1 = none) of every node; stacks hold their nodes at
    ``offset``; ``overlaps(s, t)`` gives the overlaps ``(ia, ib, count)`` of the
    objects of stacks ``s`` and ``t`` (1-based ids within each stack)."""
    n = sum(s["k"] for s in stacks)
    cls = np.concatenate([s["cls"] for s in stacks])
    thing = np.concatenate([s["thing"] for s in stacks])
    size = np.concatenate([s["size"] for s in stacks])
    group = np.full(n, -1, np.int64)
    s0 = stacks[0]
    t0 = np.flatnonzero(thing[: s0["k"]])
    group[t0] = np.arange(t0.size)
    n_groups = t0.size
    members = np.ones(n_groups, np.int64)
    edges_i, edges_j, edges_iou = [], [], []
    for t in range(1, len(stacks)):
        st = stacks[t]
        for si, s in enumerate(stacks[:t]):  # overlaps of stack t with every earlier stack
            ia, ib, inter = overlaps(si, t)
            gi, gj = ia - 1 + s["offset"], ib - 1 + st["offset"]
            ok = (cls[gi] == cls[gj]) & thing[gi] & thing[gj]
            gi, gj, inter = gi[ok], gj[ok], inter[ok]
            edges_i.append(gi)
            edges_j.append(gj)
            edges_iou.append(inter / (size[gi] + size[gj] - inter))
        gi = np.concatenate(edges_i[-t:])
        gj = np.concatenate(edges_j[-t:])
        iou = np.concatenate(edges_iou[-t:])
        g = group[gi]
        ok = g >= 0
        g, gj, iou = g[ok], gj[ok], iou[ok]
        # mean IoU of object j with the members of group g
        code, inv = np.unique(g * n + gj, return_inverse=True)
        # to 12 decimals: a mean of exactly match_iou (or a tie) must not be lost to the sum's rounding
        score = np.round(np.bincount(inv, weights=iou) / members[code // n], 12)
        cg, cj = code // n, code % n
        keep = score >= match_iou
        cg, cj, score = cg[keep], cj[keep], score[keep]
        sel = greedy_match(cg, cj, score)
        group[cj[sel]] = cg[sel]
        members[cg[sel]] += 1
        new = np.arange(st["offset"], st["offset"] + st["k"])
        new = new[thing[new] & (group[new] < 0)]
        group[new] = n_groups + np.arange(new.size)
        n_groups += new.size
        members = np.concatenate([members, np.ones(new.size, np.int64)])
    return group, n_groups


def orthoplane_consensus(volumes, label_divisor: int | None = 10000, pixel_vote_thr: int = 2,
                         allow_one_view: bool = False, min_size: int = 500, min_extent: int = 5,
                         match_iou: float = 0.25, chunk: int = 16, compacted=None) -> np.ndarray:
    """Consensus labels of the xy, xz and yz stacks of one volume.

    Parameters
    ----------
    volumes : list of label volumes (Z, Y, X), all in ZYX orientation (usually
        three: xy, xz, yz), ids ``class * label_divisor + n``.
    label_divisor : "Max objects per class"; None/0 when ids are 1..N.
    pixel_vote_thr : votes (stacks) a voxel needs inside a group, 1..len(volumes).
    allow_one_view : keep objects found in a single stack ("Permit detections
        found in 1 stack").
    min_size, min_extent : filters in voxels (see :func:`panoptem.labels.filter_objects`).
    match_iou : least mean IoU for an object to join a group of other stacks.
    chunk : planes per chunk for overlaps and votes (memory).
    compacted : instead of ``volumes`` (None), each volume as
        :func:`~panoptem.labels.compact` gives it with ``return_counts``: ``(local, ids,
        counts)``; then no volume holds semantic segments.

    Returns
    -------
    (Z, Y, X) uint32 (uint64 if needed) labels, see the module docstring for the rule.

    Examples
    --------
    >>> v = np.zeros((4, 4, 4), np.uint32); v[1:3, 1:3, 1:3] = 10007
    >>> out = orthoplane_consensus([v, v, v], min_size=0, min_extent=0)
    >>> int(out.max()), int((out > 0).sum())
    (10001, 8)
    """
    if compacted is not None:
        compacted = [(np.asarray(local), np.asarray(ids), np.asarray(n)) for local, ids, n in compacted]
    vols = [np.asarray(v) for v in volumes] if compacted is None else [c[0] for c in compacted]
    if not vols or any(v.ndim != 3 for v in vols) or any(v.shape != vols[0].shape for v in vols):
        raise PanoptemError("Consensus needs label volumes of one (Z, Y, X) shape, one per stack; got shapes "
                            f"{[v.shape for v in vols]}.")
    n_views = len(vols)
    if not (isinstance(pixel_vote_thr, (int, float, np.number)) and float(pixel_vote_thr) in range(1, n_views + 1)):
        raise PanoptemError(f"Voxel Vote Thr must be a whole number from 1 to {n_views}, got {pixel_vote_thr}.")
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise PanoptemError(f"chunk must be a whole number of planes, 1 or more, got {chunk}.")
    if 0 in vols[0].shape:
        return np.zeros(vols[0].shape, np.uint32)
    div = int(label_divisor or 0)
    stacks, offset = [], 0
    for i, v in enumerate(vols):
        local, ids, size = compact(v, return_counts=True) if compacted is None else compacted[i]
        ids = ids.astype(np.int64)
        k = int(ids.size)
        stacks.append({"local": local, "k": k, "offset": offset, "ids": ids,
                       "cls": ids // div if div else np.zeros(k, np.int64),
                       "thing": ids % div != 0 if div else np.ones(k, bool),
                       "size": size})
        offset += k
    shape = vols[0].shape
    spans = _spans(shape[0], chunk)
    ks = [st["k"] for st in stacks]
    pairs = [(i, t) for t in range(n_views) for i in range(t)]
    ids_of = [st["ids"] for st in stacks]
    with ThreadPoolExecutor(max(1, min(cpu_count(), len(spans)))) as pool:
        parts = list(pool.map(lambda sp: _chunk_overlaps([st["local"][sp[0]:sp[1]] for st in stacks], ks, pairs),
                              spans))
        table = {pr: _merge_counts([q[j] for q in parts], ks[pr[1]]) for j, pr in enumerate(pairs)}
        del parts
        group, n_groups = _group(stacks, float(match_iou), lambda i, t: table[(i, t)])
        need, prio, g_cls, luts = vote_rules(stacks, group, n_groups, n_views, pixel_vote_thr, allow_one_view)
        out = np.zeros(shape, np.int32)

        def vote_chunk(sp):  # votes into ``out`` (chunks are disjoint); the winners' sizes and boxes
            z0, z1 = sp
            fg, g = _labelled([st["local"][z0:z1] for st in stacks])
            win = winners(np.stack([lut[x] for lut, x in zip(luts, g)]), need, prio, n_groups)
            on = win > 0
            fg, win = fg[on], win[on]
            out[z0:z1].reshape(-1)[fg] = win
            return _sizes_and_boxes(fg, win, (z1 - z0,) + shape[1:], n_groups, z0)

        voxels, lo, hi = _sizes_and_boxes(_EMPTY, _EMPTY, shape, n_groups, 0)
        for v, a, b in pool.map(vote_chunk, spans):
            voxels += v
            np.minimum(lo, a, out=lo)
            np.maximum(hi, b, out=hi)
        del stacks, luts
        ids = np.flatnonzero(voxels[1:]) + 1
        bbox = np.concatenate([lo[:, ids], hi[:, ids]]).T
        keep = keep_mask(voxels[ids], bbox, shape, min_size, min_extent)
        final = number_per_class(g_cls[ids - 1], keep, div)
        lut = np.zeros(n_groups + 1, np.int64)
        lut[ids] = final
    dt = dtype_for_max_label(int(lut.max(initial=0)))
    # numbered in place over the group ids (no second volume) where the final ids have their width
    labels = lookup(lut.astype(dt), out, out=out.view(dt) if dt.itemsize == out.itemsize else None)
    if div and compacted is None:
        labels = _stuff_vote(labels, vols, ids_of, div, int(pixel_vote_thr))
    return labels


def vote_rules(stacks: list[dict], group: np.ndarray, n_groups: int, n_views: int, pixel_vote_thr: int,
               allow_one_view: bool):
    """What the voxel vote needs: per group (1-based, 0 = none) the votes a voxel
    needs (more than the views for dropped groups) and the tie priority (more
    member voxels first, then the earlier group); per group its class; per
    stack a lookup local id -> group + 1."""
    node_cls = np.concatenate([s["cls"] for s in stacks])
    node_size = np.concatenate([s["size"] for s in stacks])
    g_ok = group >= 0
    members = np.bincount(group[g_ok], minlength=n_groups)
    g_size = np.bincount(group[g_ok], weights=node_size[g_ok], minlength=n_groups)
    g_cls = np.zeros(n_groups, np.int64)
    g_cls[group[g_ok]] = node_cls[g_ok]
    alive = (members >= 2) | (bool(allow_one_view) & (members == 1))
    need = np.r_[n_views + 1, np.where(alive, np.where(members == 1, 1, int(pixel_vote_thr)), n_views + 1)]
    order = np.lexsort((np.arange(n_groups), -g_size))
    prio = np.zeros(n_groups + 1, np.int64)
    prio[order + 1] = n_groups - np.arange(n_groups)
    luts = [np.r_[0, group[s["offset"]:s["offset"] + s["k"]] + 1].astype(np.int32) for s in stacks]
    return need, prio, g_cls, luts


def winners(g: np.ndarray, need: np.ndarray, prio: np.ndarray, n_groups: int) -> np.ndarray:
    """The vote itself: ``g`` (views, voxels) the group of each voxel in each view (1-based,
    0 = none); per voxel the group with the most votes, at least ``need[group]``, ties
    to the higher ``prio``; 0 where none qualifies."""
    best = np.full(g.shape[1], -1, np.int64)
    win = np.zeros(g.shape[1], np.int32)
    for cand in g:
        votes = (g == cand).sum(axis=0)
        key = np.where(votes >= need[cand], votes * (n_groups + 1) + prio[cand], -1)
        better = key > best
        best[better] = key[better]
        win[better] = cand[better]
    return win


def _sizes_and_boxes(flat: np.ndarray, win: np.ndarray, shape: tuple, n_groups: int, z0: int):
    """Voxel counts and bounding boxes (starts, exclusive stops) per group 0..n_groups of the
    voxels at ``flat`` (indices into a chunk of ``shape`` starting at plane ``z0``) won by
    ``win``; absent groups get empty boxes, which the running minimum and maximum over
    chunks ignore."""
    voxels = np.bincount(win, minlength=n_groups + 1)
    lo = np.full((3, n_groups + 1), np.iinfo(np.int64).max, np.int64)
    hi = np.zeros((3, n_groups + 1), np.int64)
    rows, x = np.divmod(flat, shape[2])
    z, y = np.divmod(rows, shape[1])
    for axis, v in enumerate((z + z0, y, x)):
        np.minimum.at(lo[axis], win, v)
        np.maximum.at(hi[axis], win, v + 1)
    return voxels, lo, hi


def _stuff_vote(labels: np.ndarray, vols: list[np.ndarray], ids_of: list[np.ndarray], div: int,
                thr: int) -> np.ndarray:
    """``labels`` with the semantic segments ``class * div`` kept by ``thr`` stacks painted where
    no object is (``ids_of``: the ids of each stack); in place, unless an id needs a wider dtype."""
    ids = np.unique(np.concatenate(ids_of))
    stuff = ids[(ids > 0) & (ids % div == 0)]
    if stuff.size and int(stuff[-1]) > np.iinfo(labels.dtype).max:
        labels = labels.astype(dtype_for_max_label(int(stuff[-1])))
    for sid in stuff:  # a handful of semantic classes
        votes = sum((v == sid).astype(np.uint8) for v in vols)
        labels[(votes >= thr) & (labels == 0)] = sid
    return labels
