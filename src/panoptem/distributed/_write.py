"""The last pass: final ids written block by block into the output arrays."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.zarr_write import put
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
    erosion: int = 0  # Erode / Dilate labels, on the linked labels (as whole-volume runs)
    dilation: int = 0
    grid: object = None  # the BlockGrid, to gather neighbours' labels for the morphology
    holes: bool = False  # Fill holes in segmentation, after the morphology (see ._holes)
    ids: bool = False  # each block's written ids returned (and kept with its marker), to count objects


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


def final_labels(job: WriteJob, block: Block, within: tuple[slice, ...] | None = None,
                 convert=None) -> np.ndarray:
    """Linked panoptic labels (``class * divisor + n``) of ``block``'s core, or of
    the part ``within`` of it (volume coordinates). ``convert``: an elementwise map of the
    final ids that keeps 0 (e.g. to one class's ids, see :func:`class_ids`), applied to the
    table of ids rather than to every voxel where it can be."""
    from ..labels import lookup
    conv = convert or (lambda v: v)
    where = tuple(block.core) if within is None else within
    if job.consensus is not None:
        from ._consensus import consensus_labels
        out = conv(consensus_labels(job.consensus, block, within))
        if job.mask is not None:
            out[~mask_of(job.mask, job.stack.volume_shape, where)] = 0
        return out
    import zarr
    sj = job.stack
    seen = where  # the volume's voxels; a stack of averaged planes reads the planes that cover them
    if sj.stride > 1:
        a, k = sj.axis, sj.stride
        where = tuple(slice(w.start // k, -(-w.stop // k)) if ax == a else w for ax, w in enumerate(where))
    lab = np.asarray(zarr.open_array(str(Path(sj.work) / "provisional.zarr"), mode="r")[where])
    lut = conv(np.load(Path(sj.work) / "maps" / f"{block.index}.npy"))
    is_stuff = lab >= STUFF
    stuff = bool(is_stuff.any())
    out = lookup(lut, np.where(is_stuff, 0, lab) if stuff else lab)
    if stuff:
        paint = np.load(Path(sj.work) / "stuff_paint.npy")
        if paint.size:
            planes = np.broadcast_to(
                np.arange(where[sj.axis].start, where[sj.axis].stop).reshape(
                    [-1 if ax == sj.axis else 1 for ax in range(3)]), lab.shape)
            cls = lab.astype(np.int64) - int(STUFF)
            ok = is_stuff & np.isin(planes * 65536 + cls, paint[:, 0] * 65536 + paint[:, 1])
            ids = cls[ok] * job.divisor if job.divisor else cls[ok]
            out[ok] = conv(ids.astype(np.int64)).astype(out.dtype)
    if sj.stride > 1:  # each plane's labels for every plane it stands for (one gather)
        out = np.take(out, np.arange(seen[a].start, seen[a].stop) // k - where[a].start, axis=a)
    if job.mask is not None:
        out[~mask_of(job.mask, sj.volume_shape, seen)] = 0
    return out


def class_ids(panoptic: np.ndarray, kind: str, cls: int, divisor: int | None, single_class: bool,
              dtype) -> np.ndarray:
    """What output class ``cls`` holds where the linked labels are ``panoptic``: its objects'
    ids (``instance``) or its mask (``semantic``), as ``dtype``; 0 stays 0."""
    v = np.asarray(panoptic)
    if kind == "semantic":
        out = ((v // divisor == cls) & (v % divisor == 0)) if divisor else v == cls
    elif divisor:
        out = np.where(v // divisor == cls, v % divisor, 0)
        out[v == cls * divisor] = 1  # the class as one segment ("Semantic only"), as in memory
    else:
        out = v if single_class else np.zeros_like(v)
    return out.astype(dtype, copy=False)


def _morphology(job: WriteJob, block: Block) -> np.ndarray:
    """Final labels of ``block``'s core after Erode / Dilate labels: computed on
    the core plus as many voxels as they reach, gathered from the blocks there."""
    from ..inference.postprocess import postprocess_labels
    r = job.erosion + job.dilation
    shape = job.stack.volume_shape
    region = tuple(slice(max(0, c.start - r), min(n, c.stop + r)) for c, n in zip(block.core, shape))
    out = None
    for other in job.grid:
        inter = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(region, other.core))
        if any(s.stop <= s.start for s in inter):
            continue
        part = final_labels(job, other, inter)
        if out is None:
            out = np.zeros(tuple(s.stop - s.start for s in region), part.dtype)
        out[tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(inter, region))] = part
    out = postprocess_labels(out, job.erosion, job.dilation, False)
    return out[tuple(slice(c.start - g.start, c.stop - g.start) for c, g in zip(block.core, region))]


def block_labels(job: WriteJob, block: Block) -> np.ndarray:
    """Final labels of ``block``'s core after Erode / Dilate labels (before Fill holes)."""
    return _morphology(job, block) if (job.erosion or job.dilation) else final_labels(job, block)


def write_block(job: WriteJob, block: Block) -> list[np.ndarray] | None:
    """Write ``block``'s core to every output; a marker records it as done (with the ids it
    wrote to each output, returned, where ``job.ids`` asks for them)."""
    import zarr
    marker = Path(job.stack.work) / "written" / str(block.index)
    if marker.exists():
        return _kept_ids(job, block, marker) if job.ids else None
    morph = None
    if job.holes:
        from ._holes import fill_block
        morph = fill_block(job, block)
    elif job.erosion or job.dilation:
        morph = _morphology(job, block)
    ids = []
    for path, cls, kind in job.outputs:
        group = zarr.open_group(str(path), mode="r+")
        arr = group["0"]

        def convert(v, kind=kind, cls=cls, dtype=arr.dtype):
            return class_ids(v, kind, cls, job.divisor, job.single_class, dtype)
        vol = convert(morph) if morph is not None else final_labels(job, block, convert=convert)
        put(arr, tuple(block.core), vol)
        if job.ids:
            ids.append(_written_ids(vol))
        # the block's part of every pyramid level (nearest: every n-th voxel from the level above)
        start = [s.start for s in block.core]
        for i, f in enumerate(job.factors, start=1):
            vol = vol[tuple(slice((-a) % k, None, k) for a, k in zip(start, f))]
            start = [-(-a // k) for a, k in zip(start, f)]
            put(group[str(i)], tuple(slice(a, a + n) for a, n in zip(start, vol.shape)), vol)
    marker.parent.mkdir(exist_ok=True)
    from .._atomic import write_bytes
    write_bytes(marker, _packed_ids(ids) if job.ids else b"")
    return ids if job.ids else None


def _written_ids(v: np.ndarray) -> np.ndarray:
    from ..labels import nonzero_ids
    return nonzero_ids(v).astype(np.uint64)


def _packed_ids(ids: list[np.ndarray]) -> bytes:
    import io
    buf = io.BytesIO()
    np.savez(buf, *ids)
    return buf.getvalue()


def _kept_ids(job: WriteJob, block: Block, marker: Path) -> list[np.ndarray]:
    """The ids ``block`` wrote to each output: from its marker, or read back from the
    outputs where the marker holds none (a block written without counting)."""
    import io

    import zarr
    data = marker.read_bytes()
    if data:
        with np.load(io.BytesIO(data)) as f:
            if len(f.files) == len(job.outputs):
                return [f[f"arr_{i}"] for i in range(len(job.outputs))]
    return [_written_ids(np.asarray(zarr.open_group(str(path), mode="r")["0"][tuple(block.core)]))
            for path, _, _ in job.outputs]
