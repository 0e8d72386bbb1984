"""Ortho-plane consensus, block by block, with the rule of
:func:`panoptem.inference.consensus.orthoplane_consensus`.

The three stacks are segmented blockwise first (each linked over the whole
volume). Then: the overlaps between the stacks' objects are summed over
blocks, and the objects grouped once; per block the voxel vote gives each
voxel its group, whose sizes and boxes are summed to filter the consensus
objects once; a last pass numbers the votes (kept compressed from the pass before, or
voted again where a block's are missing) and writes the labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..inference.consensus import _group, _labelled, _sizes_and_boxes, vote_rules, winners
from ..labels import dtype_for_max_label, keep_mask, number_per_class, pair_counts
from ._pass1 import load_voxels, save_npz, save_voxels
from ._write import WriteJob, final_labels
from .blocks import Block


@dataclass
class ConsensusJob:
    """The three stack jobs (xy, xz, yz) and the consensus's own folder."""

    stacks: list
    work: str
    divisor: int | None
    pixel_vote_thr: int
    allow_one_view: bool
    stuff: bool = True  # semantic segments (stuff classes, or Semantic only), which the consensus votes apart

    def stack_labels(self, block: Block, within=None, to: list | None = None) -> list[np.ndarray]:
        """Each stack's final labels over ``block``'s core (or the part ``within`` it); ``to``: per
        stack, a map of its final ids (e.g. to node indices) applied to the table of ids, not
        to every voxel (see :func:`~._write.final_labels`)."""
        return [final_labels(WriteJob(sj, [], self.divisor, True), block, within, convert=None if to is None else f)
                for sj, f in zip(self.stacks, to or [None] * len(self.stacks))]

    def nodes(self) -> list[np.ndarray]:
        """Per stack: the ids of its objects, sorted (the consensus's nodes)."""
        return [np.load(Path(sj.work) / "objects.npz")["ids"].astype(np.int64) for sj in self.stacks]

    def node_labels(self, block: Block, within=None, then: list | None = None) -> list[np.ndarray]:
        """Each stack's labels as 1-based node indices (0: background or a semantic segment),
        int32; ``then``: per stack, a table those indices are looked up in (e.g. their groups)."""
        def to(ids, lut=None):
            return lambda v: node_of(v, ids) if lut is None else lut[node_of(v, ids)]
        nodes = self.nodes()
        return self.stack_labels(block, within, [to(ids, lut) for ids, lut in zip(nodes, then or [None] * len(nodes))])


def node_of(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Final ids as 1-based indices into the sorted ``ids`` (0 where not among them), int32.

    >>> node_of(np.array([0, 7, 3, 9]), np.array([3, 7])).tolist()
    [0, 2, 1, 0]
    """
    lab = np.asarray(labels).astype(np.int64)
    if not ids.size:
        return np.zeros(lab.shape, np.int32)
    i = np.searchsorted(ids, lab)
    ok = (lab > 0) & (i < ids.size) & (ids[np.minimum(i, ids.size - 1)] == lab)
    return np.where(ok, i + 1, 0).astype(np.int32)


def _nodes_file(job: ConsensusJob, block: Block) -> Path:
    return Path(job.work) / "nodes" / f"{block.index}.npz"


def overlaps_block(job: ConsensusJob, block: Block) -> dict:
    """Overlap counts of the stacks' objects in ``block`` (1-based node indices); the
    voxels any stack labels are kept with their nodes for the vote (a few percent of a
    block in EM), so the stacks' labels are made once."""
    at, g = _labelled(job.node_labels(block))
    save_voxels(_nodes_file(job, block), at, g)
    ks = [int(ids.size) for ids in job.nodes()]
    out = {}
    for t in range(1, len(g)):
        for s in range(t):
            m = (g[s] > 0) & (g[t] > 0)
            ia, ib, c = pair_counts(g[s][m], g[t][m], ks[s], ks[t])
            out[f"{s}{t}"] = np.stack([ia, ib, c]) if ia.size else np.zeros((3, 0), np.int64)
    return out


def group(job: ConsensusJob, parts: list[dict], match_iou: float = 0.25) -> None:
    """Group the stacks' objects once from the summed overlaps; save the vote's rules."""
    nodes = job.nodes()
    div = job.divisor or 0
    stacks, offset = [], 0
    for sj, ids in zip(job.stacks, nodes):
        t = np.load(Path(sj.work) / "objects.npz")
        k = int(ids.size)
        stacks.append({"k": k, "offset": offset, "ids": ids, "cls": ids // div if div else np.zeros(k, np.int64),
                       "thing": np.ones(k, bool), "size": t["voxels"].astype(np.int64)})
        offset += k
    summed = {}
    for key in {k for p in parts for k in p}:
        arr = np.concatenate([p[key] for p in parts if key in p], axis=1)
        if arr.size == 0:
            summed[key] = (np.zeros(0, np.int64),) * 3
            continue
        u, inv = np.unique(arr[0] * (1 << 32) + arr[1], return_inverse=True)
        summed[key] = (u >> 32, u & 0xFFFFFFFF, np.bincount(inv, weights=arr[2]).astype(np.int64))
    empty = (np.zeros(0, np.int64),) * 3
    g, n_groups = _group(stacks, match_iou, lambda a, b: summed.get(f"{a}{b}", empty))
    need, prio, g_cls, luts = vote_rules(stacks, g, n_groups, len(stacks), job.pixel_vote_thr, job.allow_one_view)
    save_npz(Path(job.work) / "rules.npz", need=need, prio=prio, g_cls=g_cls, n_groups=np.int64(n_groups),
             **{f"lut{i}": lut for i, lut in enumerate(luts)})


def _rules(job: ConsensusJob):
    """The vote's rules that :func:`group` saved."""
    return np.load(Path(job.work) / "rules.npz")


def _vote(job: ConsensusJob, block: Block, within=None, labelled=None, rules=None) -> tuple[np.ndarray, np.ndarray]:
    """The voxel vote over ``block``'s core (or ``within`` it): the flat indices of the voxels
    a group wins there and their groups. ``labelled``: the kept ``(at, nodes)`` of the core
    (else the stacks' labels are made again); ``rules``: :func:`_rules`, if already read."""
    r = rules if rules is not None else _rules(job)
    at, g = labelled if labelled is not None else _labelled(job.node_labels(block, within))
    win = winners(np.stack([r[f"lut{i}"][v] for i, v in enumerate(g)]), r["need"], r["prio"], int(r["n_groups"]))
    on = win > 0
    return at[on], win[on]


def _votes_file(job: ConsensusJob, block: Block) -> Path:
    return Path(job.work) / "votes" / f"{block.index}.npz"


def _keep_votes(job: ConsensusJob, block: Block, at: np.ndarray, win: np.ndarray) -> None:
    """The voxels ``block``'s core gives a group and their groups, kept for the writing pass."""
    save_voxels(_votes_file(job, block), at, win)


def _kept_votes(job: ConsensusJob, block: Block) -> tuple[np.ndarray, np.ndarray] | None:
    """The votes the sizing pass kept for ``block`` (None if nothing)."""
    return load_voxels(_votes_file(job, block))


def stats_block(job: ConsensusJob, block: Block) -> dict:
    """Voxels and bounding boxes of the consensus groups in ``block`` (its votes are kept)."""
    r = _rules(job)
    at, win = _vote(job, block, labelled=load_voxels(_nodes_file(job, block)), rules=r)
    _keep_votes(job, block, at, win)
    shape = tuple(s.stop - s.start for s in block.core)
    voxels, lo, hi = _sizes_and_boxes(at, win, shape, int(r["n_groups"]), 0)
    ids = np.flatnonzero(voxels[1:]) + 1
    start = np.array([s.start for s in block.core] * 2)
    return {"ids": ids.astype(np.int64), "voxels": voxels[ids].astype(np.int64),
            "bbox": np.concatenate([lo[:, ids], hi[:, ids]]).T + start}


def number(job: ConsensusJob, parts: list[dict], shape, min_size: int, min_extent: int) -> dict[int, int]:
    """Filter the consensus objects and number them; saves group -> final id. Returns the
    objects kept per class id (all under 0 without a label divisor)."""
    r = _rules(job)
    n_groups, g_cls = int(r["n_groups"]), r["g_cls"]
    ids = np.concatenate([p["ids"] for p in parts]) if parts else np.zeros(0, np.int64)
    u, inv = np.unique(ids, return_inverse=True)
    voxels = np.bincount(inv, weights=np.concatenate([p["voxels"] for p in parts])).astype(np.int64) if u.size \
        else np.zeros(0, np.int64)
    bb = np.concatenate([p["bbox"] for p in parts]) if parts else np.zeros((0, 6), np.int64)
    lo = np.full((u.size, 3), np.iinfo(np.int64).max, np.int64)
    hi = np.zeros((u.size, 3), np.int64)
    np.minimum.at(lo, inv, bb[:, :3])
    np.maximum.at(hi, inv, bb[:, 3:])
    keep = keep_mask(voxels, np.concatenate([lo, hi], axis=1), shape, min_size, min_extent)
    final = number_per_class(g_cls[u - 1], keep, job.divisor)
    lut = np.zeros(n_groups + 1, np.int64)
    lut[u] = final
    np.save(Path(job.work) / "final.npy", lut)
    cls, counts = np.unique(g_cls[u - 1][keep] if job.divisor else np.zeros(int(keep.sum()), np.int64),
                            return_counts=True)
    return {int(c): int(k) for c, k in zip(cls, counts)}


def consensus_labels(job: ConsensusJob, block: Block, within=None) -> np.ndarray:
    """Consensus labels of ``block``'s core, or of the part ``within`` it
    (semantic segments voted as in the whole-volume rule)."""
    votes = _kept_votes(job, block) if within is None else None
    if votes is None:  # a part of the block (Erode / Dilate labels), or votes not kept
        votes = _vote(job, block, within)
    at, win = votes
    lut = np.load(Path(job.work) / "final.npy")
    shape = tuple(s.stop - s.start for s in (block.core if within is None else within))
    labels = np.zeros(shape, dtype_for_max_label(int(lut.max(initial=0))))
    labels.reshape(-1)[at] = lut[win]
    div = job.divisor or 0
    if div and job.stuff:
        import fastremap
        from ..inference.consensus import _stuff_vote
        stacks = job.stack_labels(block, within)
        labels = _stuff_vote(labels, stacks, [np.asarray(fastremap.unique(v)) for v in stacks], div, job.pixel_vote_thr)
    return labels
