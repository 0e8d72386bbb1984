"""Ortho-plane consensus, block by block, with the rule of
:func:`panoptem.inference.consensus.orthoplane_consensus`.

The three stacks are segmented blockwise first (each linked over the whole
volume). Then: the overlaps between the stacks' objects are summed over
blocks, and the objects grouped once; per block the voxel vote gives each
voxel its group, whose sizes and boxes are summed to filter the consensus
objects once; a last pass votes again and writes the numbered labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..inference.consensus import _group, vote, vote_rules
from ..labels import keep_mask, number_per_class, object_stats
from ._pass1 import save_npz
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

    def stack_labels(self, block: Block, within=None) -> list[np.ndarray]:
        """Each stack's final labels over ``block``'s core (or the part ``within`` it)."""
        return [final_labels(WriteJob(sj, [], self.divisor, True), block, within) for sj in self.stacks]

    def nodes(self) -> list[np.ndarray]:
        """Per stack: the ids of its objects, sorted (the consensus's nodes)."""
        return [np.load(Path(sj.work) / "objects.npz")["ids"].astype(np.int64) for sj in self.stacks]

    def node_index(self, labels: list[np.ndarray], nodes: list[np.ndarray]) -> list[np.ndarray]:
        """Labels as 1-based node indices (0: background or a semantic segment)."""
        out = []
        for lab, ids in zip(labels, nodes):
            lab = lab.astype(np.int64)
            i = np.searchsorted(ids, lab)
            ok = (lab > 0) & (i < ids.size) & (ids[np.minimum(i, max(ids.size - 1, 0))] == lab) if ids.size \
                else np.zeros(lab.shape, bool)
            out.append(np.where(ok, i + 1, 0))
        return out


def overlaps_block(job: ConsensusJob, block: Block) -> dict:
    """Overlap counts of the stacks' objects in ``block`` (1-based node indices)."""
    idx = job.node_index(job.stack_labels(block), job.nodes())
    out = {}
    for t in range(1, len(idx)):
        for s in range(t):
            a, b = idx[s], idx[t]
            m = (a > 0) & (b > 0)
            code = (a[m] << 32) | b[m]
            u, c = np.unique(code, return_counts=True)
            out[f"{s}{t}"] = np.stack([u >> 32, u & 0xFFFFFFFF, c]) if u.size else np.zeros((3, 0), np.int64)
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


def _vote(job: ConsensusJob, block: Block, within=None):
    r = np.load(Path(job.work) / "rules.npz")
    labels = job.stack_labels(block, within)
    idx = job.node_index(labels, job.nodes())
    groups = [r[f"lut{i}"][x] for i, x in enumerate(idx)]
    return vote(groups, r["need"], r["prio"], int(r["n_groups"])), labels


def stats_block(job: ConsensusJob, block: Block) -> dict:
    """Voxels and bounding boxes of the consensus groups in ``block``."""
    win, _ = _vote(job, block)
    ids, voxels, bbox = object_stats(win)
    start = np.array([s.start for s in block.core] * 2)
    return {"ids": ids.astype(np.int64), "voxels": voxels, "bbox": bbox + start}


def number(job: ConsensusJob, parts: list[dict], shape, min_size: int, min_extent: int) -> int:
    """Filter the consensus objects and number them; saves group -> final id."""
    r = np.load(Path(job.work) / "rules.npz")
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
    return int(keep.sum())


def consensus_labels(job: ConsensusJob, block: Block, within=None) -> np.ndarray:
    """Consensus labels of ``block``'s core, or of the part ``within`` it
    (semantic segments voted as in the whole-volume rule)."""
    from ..labels import dtype_for_max_label
    win, stacks = _vote(job, block, within)
    lut = np.load(Path(job.work) / "final.npy")
    labels = lut.astype(dtype_for_max_label(int(lut.max(initial=0))))[win]
    div = job.divisor or 0
    if div:
        import fastremap
        from ..inference.consensus import _stuff_vote
        _stuff_vote(labels, stacks, [np.asarray(fastremap.unique(v)) for v in stacks], div, job.pixel_vote_thr)
    return labels
