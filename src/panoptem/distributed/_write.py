"""The last pass: final ids written block by block into the output arrays."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._pass1 import STUFF, StackJob
from ._source import VolumeSource
from .blocks import Block


@dataclass
class WriteJob:
    """What the write tasks need: the stack's work folder and where each
    class goes (``outputs``: (group path, class id, "instance" or "semantic"))."""

    stack: StackJob
    outputs: list
    divisor: int | None
    single_class: bool
    mask: VolumeSource | None = None
    factors: list = None  # pyramid levels written with level 0 (see io.ome.pyramid_factors)
    consensus: object = None  # a ConsensusJob: write the ortho-plane consensus instead of the stack


def mask_of(mask: VolumeSource, shape, core) -> np.ndarray:
    """The mask over ``core``; a mask smaller than the volume by whole factors
    is enlarged (nearest)."""
    m = mask.open()
    f = [max(1, -(-n // s)) for n, s in zip(shape, m.shape)]
    lo = [c.start // k for c, k in zip(core, f)]
    hi = [-(-c.stop // k) for c, k in zip(core, f)]
    small = np.asarray(m[tuple(slice(a, b) for a, b in zip(lo, hi))]) != 0
    big = small
    for ax, k in enumerate(f):
        if k > 1:
            big = np.repeat(big, k, axis=ax)
    off = [c.start - a * k for c, a, k in zip(core, lo, f)]
    return big[tuple(slice(o, o + (c.stop - c.start)) for o, c in zip(off, core))]


def final_labels(job: WriteJob, block: Block) -> np.ndarray:
    """Linked panoptic labels (``class * divisor + n``) of ``block``'s core."""
    import zarr
    if job.consensus is not None:
        from ._consensus import consensus_labels
        out = consensus_labels(job.consensus, block)
        if job.mask is not None:
            out[~mask_of(job.mask, job.stack.shape, block.core)] = 0
        return out
    sj = job.stack
    lab = np.asarray(zarr.open_array(str(Path(sj.work) / "provisional.zarr"), mode="r")[tuple(block.core)])
    lut = np.load(Path(sj.work) / "maps" / f"{block.index}.npy")
    is_stuff = lab >= STUFF
    out = lut[np.where(is_stuff, 0, lab)]
    if is_stuff.any():
        paint = np.load(Path(sj.work) / "stuff_paint.npy")
        if paint.size:
            planes = np.broadcast_to(
                np.arange(block.core[sj.axis].start, block.core[sj.axis].stop).reshape(
                    [-1 if ax == sj.axis else 1 for ax in range(3)]), lab.shape)
            cls = lab.astype(np.int64) - int(STUFF)
            ok = is_stuff & np.isin(planes * 65536 + cls, paint[:, 0] * 65536 + paint[:, 1])
            out[ok] = (cls[ok] * job.divisor if job.divisor else cls[ok]).astype(out.dtype)
    if job.mask is not None:
        out[~mask_of(job.mask, sj.shape, block.core)] = 0
    return out


def write_block(job: WriteJob, block: Block) -> int:
    """Write ``block``'s core to every output; a marker records it as done."""
    import zarr
    marker = Path(job.stack.work) / "written" / str(block.index)
    if marker.exists():
        return 0
    panoptic = final_labels(job, block)
    div = job.divisor
    for path, cls, kind in job.outputs:
        group = zarr.open_group(str(path), mode="r+")
        arr = group["0"]
        if kind == "semantic":
            vol = ((panoptic // div == cls) & (panoptic % div == 0)) if div else panoptic == cls
        elif div:
            vol = np.where(panoptic // div == cls, panoptic % div, 0)
        else:
            vol = panoptic if job.single_class else np.zeros_like(panoptic)
        vol = vol.astype(arr.dtype)
        arr[tuple(block.core)] = vol
        # the block's part of every pyramid level (nearest: every n-th voxel from the level above)
        start = [s.start for s in block.core]
        for i, f in enumerate(job.factors, start=1):
            vol = vol[tuple(slice((-a) % k, None, k) for a, k in zip(start, f))]
            start = [-(-a // k) for a, k in zip(start, f)]
            group[str(i)][tuple(slice(a, a + n) for a, n in zip(start, vol.shape))] = vol
    marker.parent.mkdir(exist_ok=True)
    marker.touch()
    return 1
