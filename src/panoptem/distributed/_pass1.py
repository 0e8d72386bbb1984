"""The block passes of a blockwise stack, before stitching.

1. **network** (:func:`network_block`): a block reads its core plus a halo
   in-plane (the network's context), runs the network on its slices and
   stores the outputs of its core at cache precision (``net/`` arrays in
   stack order: probability, centre heatmap, offsets). These arrays are the
   run's network cache: re-decoding with other thresholds starts after them.
2. **centres** (:func:`centre_block`): centres of the block's core from the
   stored heatmap (read with a margin for the non-maximum suppression). All
   blocks' centres form one table per slice, in the order a whole slice
   would list them.
3. **decode** (:func:`decode_block`): running median over the stored
   probabilities, pixel grouping against the slice's *whole* centre table
   (so a pixel joins the centre a whole-slice decoding would give it, however
   far), and the 2D pieces of the core: per piece (a connected part of one
   centre's pixels in one slice) its slice, centre key, area, bounding box,
   first pixel in raster order and class counts; per pair of pieces one (and
   two) slices apart, their overlap. Those statistics add up over blocks.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cc3d
import numpy as np

from ..inference.cache import at_cache_precision, probability_bytes
from ..inference.decode import STRIDE, find_centers, group_pixels, semantic_classes, \
    _upsample_nearest
from ..inference.predict import CELL, cell_sums, context_of_sums
from ..inference.preprocess import downsample, linear_resize, may_hold_padding, padding_in
from ..inference.resample import resize_at
from ..inference.segment3d import planes_along, with_neighbours
from ..io.zarr_write import ChunkRows
from ..labels import pair_counts, pixel_boxes
from ..params import Params3D
from ._source import VolumeSource, read_region, worker_device, worker_model
from .blocks import Block

#: probability bytes per chunk of the stored network outputs (see StackJob.chunk_depth)
CHUNK_BYTES = 1 << 20

#: provisional ids at or above this mark stuff pixels (STUFF + class id)
STUFF = np.uint32(0xFFFFFF00)
#: network-resolution pixels read around a block's core when decoding (interpolation)
MARGIN = 2
#: heatmap cells read around a block's core beyond Centers Min Distance (plateaus)
CENTRE_MARGIN = 16


@dataclass
class StackJob:
    """Everything the block tasks of one stack need (sent once to every worker)."""

    source: VolumeSource
    model: object
    device: str
    params: dict
    intensity: tuple
    axis: int
    shape: tuple  # ZYX of the volume
    halo: tuple  # ZYX network context along the image axes
    align: int  # block starts along image axes are multiples of this
    work: str
    net: str  # folder of the network outputs (the cache)
    block_shape: tuple = (64, 512, 512)
    batch_size: int = 4
    skip_empty: bool = True
    fusion: bool = False
    n_channels: int = 1
    class_ids: tuple = (1,)
    thing_ids: tuple = (1,)
    mask: VolumeSource | None = None
    context: bool = False  # give the network each whole slice's global context (see context_block)
    runtime: str = "auto"  # how the network runs (see panoptem.inference.runtime)
    precision: str = "auto"
    threads: int | None = None  # intra-op threads per worker (None: the worker's share of the cores)
    context_slices: int = 0  # the model sees each plane with this many neighbours each side (its card)
    neighbour_steps: tuple = (1.0, 1.0, 1.0)  # ... this many planes apart, for stacks along Z, Y, X
    # each plane of this stack is the mean of ``stride`` of the volume's along ``axis``: ``source``
    # and ``shape`` are the volume so reduced (``input_shape`` the volume's own), and so are the
    # passes up to the linking; the labels are read back on the volume's grid (see final_labels)
    stride: int = 1
    input_shape: tuple | None = None
    fused_strides: tuple = (1, 1, 1)  # probability fusion: planes averaged so along Z, Y, X
    # volume pixels per network pixel along Z, Y and X where the planes are not reduced by one whole
    # factor (then Image Downsampling is 1): blocks lie on multiples of the numerators / denominators
    resample: tuple | None = None
    # the volume's planes of one value along Z, Y and X (plane_ranges): the network finds nothing on
    # them, as a whole-volume run sees them (a block's crop of a plane may be of one value alone)
    uniform: tuple = ((), (), ())

    @property
    def blank(self) -> tuple:
        """The volume's blank sections (z): xz / yz planes see them edge-on and find nothing there."""
        return self.uniform[0]

    @property
    def volume_shape(self) -> tuple:
        """ZYX of the volume itself (``shape`` is this stack's, reduced where its planes average)."""
        return tuple(self.input_shape or self.shape)

    def on_volume(self, region) -> tuple[slice, ...]:
        """``region`` of this stack's volume (reduced along ``axis`` by ``stride``) as the
        volume's own voxels."""
        k, n = self.stride, self.volume_shape[self.axis]
        return tuple(slice(r.start * k, min(r.stop * k, n)) if ax == self.axis and k > 1 else r
                     for ax, r in enumerate(region))

    def reach(self, axis: int) -> int:
        """Planes on each side along ``axis`` that a plane's neighbours are made from (of the
        volume's planes where probability fusion averages them)."""
        from ..inference.segment3d import neighbour_reach
        return neighbour_reach(self.context_slices, self.neighbour_steps[axis]) * self.fused_strides[axis]

    @property
    def p(self) -> Params3D:
        return Params3D(**self.params)

    def factor(self, axis: int) -> Fraction:
        """Volume pixels per network pixel along ``axis`` (Z, Y or X) of planes that lie across it:
        Image Downsampling ``k``, or the fraction the planes are resampled by (block edges lie on
        both grids)."""
        return self.resample[axis] if self.resample else Fraction(self.p.downsampling)

    def classes(self) -> tuple[list[int], list[int], list[int]]:
        """Class ids, thing classes in use, stuff classes (as 2D decoding sees them)."""
        things = [] if self.p.semantic_only else [int(t) for t in self.thing_ids]
        return [int(c) for c in self.class_ids], things, [int(c) for c in self.class_ids if int(c) not in things]

    def resamples(self, axis: int) -> bool:
        """Whether the planes of a stack along ``axis`` are resampled (brought back at the exact
        scale), rather than reduced by one whole factor on both axes (Image Downsampling), as
        their predictor runs them."""
        fa, fb = (self.factor(ax) for ax in range(3) if ax != axis)
        return self.resample is not None and not (fa == fb and fa.denominator == 1)

    def predictor(self, lm, axis: int | None = None):
        """A predictor of the loaded model ``lm`` as this job runs it, for the planes of a stack
        along ``axis`` (default: the job's)."""
        from ..inference.engine import Predictor
        ip = [ax for ax in range(3) if ax != (self.axis if axis is None else axis)]
        return Predictor(lm, device=lm.device, downsampling=self.p.downsampling, batch_size=self.batch_size,
                         factor=tuple(float(self.factor(ax)) for ax in ip) if self.resample else None,
                         runtime=self.runtime, precision=self.precision, threads=self.threads,
                         invert=self.p.invert)

    def inplane(self) -> list[int]:
        return [ax for ax in range(3) if ax != self.axis]

    def net_shape(self) -> tuple[tuple, tuple]:
        """Shapes of the stored probability (n, C, h, w) and heatmap grid (n, 1, gh, gw)."""
        n = self.shape[self.axis]
        h, w = (-(-self.shape[ax] // self.factor(ax)) for ax in self.inplane())
        return (n, self.n_channels, h, w), (n, 1, -(-h // STRIDE), -(-w // STRIDE))

    def net_chunks(self) -> tuple[tuple, tuple]:
        """Chunks of the block's core in-plane, :meth:`chunk_depth` slices deep."""
        bh, bw = (self.block_shape[ax] // self.factor(ax) for ax in self.inplane())
        k = self.chunk_depth()
        return (k, self.n_channels, bh, bw), (k, 1, bh // STRIDE, bw // STRIDE)

    def chunk_depth(self) -> int:
        """Slices per chunk of the stored outputs: the most that hold at most
        :data:`CHUNK_BYTES` of probability and divide the block's depth, so that no
        chunk is shared by two blocks (any number where one block spans the stack, as deep as a
        thin volume of prime depth). Small planes (the xz / yz planes of a thin volume) then go
        to disk hundreds at a time, not one by one."""
        bh, bw = (self.block_shape[ax] // self.factor(ax) for ax in self.inplane())
        depth = int(self.block_shape[self.axis])
        most = max(1, CHUNK_BYTES // max(1, int(self.n_channels * bh * bw)))
        if depth >= self.shape[self.axis]:
            return min(int(self.shape[self.axis]), most)
        return max(k for k in range(1, min(depth, most) + 1) if depth % k == 0)

    def views(self) -> list[int]:
        """Stack axes the network runs along (all three for probability fusion)."""
        return [0, 1, 2] if self.fusion else [self.axis]

    def context_dir(self) -> Path:
        return Path(self.net).with_suffix(".context")

    def network_region(self, block: Block) -> tuple[slice, ...]:
        """The voxels block ``block`` feeds the network: its core along the stack axis
        (plus the neighbouring slices a model with ``context_slices`` sees, or the halo
        for probability fusion), core + halo in-plane."""
        out = []
        for ax, (c, n) in enumerate(zip(block.core, self.shape)):
            if ax == self.axis and not self.fusion:
                r = self.reach(ax)
                out.append(slice(max(0, c.start - r), min(n, c.stop + r)))
                continue
            h = max(self.halo[ax], self.reach(ax)) if self.fusion else self.halo[ax]
            lo = max(0, c.start - h)
            lo -= lo % self.align
            out.append(slice(lo, min(n, c.stop + h)))
        return tuple(out)


def marker(work: str | Path, step: str, index: int) -> Path:
    return Path(work) / step / str(index)


def _done(work, step: str, index: int) -> bool:
    return marker(work, step, index).exists()


def _mark(work, step: str, index: int) -> None:
    m = marker(work, step, index)
    m.parent.mkdir(parents=True, exist_ok=True)
    m.touch()


def block_file(work: str | Path, index: int) -> Path:
    """A block's table of pieces: what the linking needs of them (a few numbers per piece)."""
    return Path(work) / "blocks" / f"{index}.npz"


def halo_file(work: str | Path, index: int) -> Path:
    """A block's labels of the slices it decoded before its core (pixels: kept apart from its
    table, which the client reads for every block at once)."""
    return Path(work) / "blocks" / f"{index}.halo.npz"


def save_npz(path: Path, **arrays) -> None:
    """Write atomically (a table is read only once it is complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _packed(a: np.ndarray) -> np.ndarray:
    """``a``'s bytes, zstd-compressed (fast: level 1), as uint8."""
    from numcodecs import Zstd
    return np.frombuffer(Zstd(level=1).encode(np.ascontiguousarray(a)), np.uint8) if a.size else np.zeros(0, np.uint8)


def _unpacked(b: np.ndarray, dtype) -> np.ndarray:
    """The flat array of ``dtype`` that :func:`_packed` gave ``b`` for."""
    from numcodecs import Zstd
    return np.frombuffer(Zstd().decode(b.tobytes()), dtype) if b.size else np.zeros(0, dtype)


def save_labels(path: Path, labels: np.ndarray) -> None:
    """Keep a block's label array between passes: in the narrowest dtype its ids fit,
    zstd-compressed (mostly background: a few hundred kB for a large block), atomically."""
    from ..labels import dtype_for_max_label
    narrow = labels.astype(dtype_for_max_label(int(labels.max(initial=0))), copy=False)
    save_npz(path, data=_packed(narrow), shape=np.asarray(labels.shape, np.int64), dtype=np.asarray(narrow.dtype.str))


def load_labels(path: Path) -> np.ndarray | None:
    """What :func:`save_labels` kept at ``path``, read-only (None if nothing)."""
    if not path.exists():
        return None
    r = np.load(path)
    return _unpacked(r["data"], np.dtype(str(r["dtype"]))).reshape(r["shape"])


def save_voxels(path: Path, at: np.ndarray, values: np.ndarray) -> None:
    """Keep some voxels of a block between passes: their flat indices ``at`` (ascending,
    stored as steps) and ``values`` (last axis along ``at``), zstd-compressed, atomically."""
    values = np.asarray(values)
    save_npz(path, at=_packed(np.diff(np.asarray(at, np.int64), prepend=0)), values=_packed(values),
             shape=np.asarray(values.shape, np.int64), dtype=np.asarray(values.dtype.str))


def load_voxels(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """What :func:`save_voxels` kept at ``path``: ``(at, values)`` (None if nothing)."""
    if not path.exists():
        return None
    r = np.load(path)
    return np.cumsum(_unpacked(r["at"], np.int64)), _unpacked(r["values"], np.dtype(str(r["dtype"]))).reshape(r["shape"])


def _net_arrays(job: StackJob, mode: str = "r"):
    import zarr
    from ..io.zarr_write import dense
    g = zarr.open_group(job.net, mode=mode)
    return tuple(dense(g[k]) for k in ("probability", "heatmap", "offsets"))


def create_net_arrays(job: StackJob) -> None:
    """The stack's network-output arrays (kept when they exist: a cache)."""
    import numcodecs
    import zarr
    g = zarr.open_group(job.net, mode="a", zarr_format=2)
    if "offsets" in g:  # made last: then all are there
        return
    import shutil
    shutil.rmtree(Path(job.net).with_suffix(".done"), ignore_errors=True)  # no block's outputs are kept
    (ps, hs), (pc, hc) = job.net_shape(), job.net_chunks()
    comp = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
    clip = lambda c, s: tuple(max(1, min(a, b)) for a, b in zip(c, s))  # noqa: E731
    new = {"fill_value": 0, "compressors": comp, "overwrite": True}
    g.create_array("probability", shape=ps, chunks=clip(pc, ps), dtype="uint8", **new)
    g.create_array("heatmap", shape=hs, chunks=clip(hc, hs), dtype="float16", **new)
    os_ = (hs[0], 2, *hs[2:])
    g.create_array("offsets", shape=os_, chunks=clip((hc[0], 2, *hc[2:]), os_), dtype="float16", **new)


def _planes(job: StackJob, planes: np.ndarray, i0: int = 0, i1: int | None = None,
            axis: int | None = None) -> np.ndarray:
    """Planes ``i0:i1`` of a region's stack along ``axis`` (default: the job's) as the network
    takes them: with their neighbours in the region for a model with ``context_slices`` (the
    region holds them; where it ends, so does the volume, or the planes are halo)."""
    i1 = len(planes) if i1 is None else i1
    k = job.context_slices
    step = job.neighbour_steps[job.axis if axis is None else axis]
    return with_neighbours(planes, 0, i0, i1, k, len(planes), step) if k else planes[i0:i1]


def _empty(job: StackJob, block: Block, data: np.ndarray | None) -> bool:
    if job.mask is not None:
        from ._write import mask_of
        if not mask_of(job.mask, job.volume_shape, job.on_volume(block.core)).any():
            return True
    return job.skip_empty and data is not None and (data.size == 0 or data.min() == data.max())


# ---------------------------------------------------------------- pass 0: global context



def context_block(job: StackJob, block: Block) -> None:
    """Pass 0, for networks with a global-context branch (the mean of their
    deepest features over the whole slice): per view, the sums of those
    features over the cells of this block's core, for the slices of its core
    (:func:`~panoptem.inference.predict.cell_sums`: padding left out).
    Summed over blocks they give every whole slice's context, so a block sees
    what a whole-slice run sees, not just its tile's."""
    out = job.context_dir() / f"{block.index}.npz"
    if out.exists():
        return
    region = job.network_region(block)
    data = read_region(job.source.open(), region)
    lm = worker_model(job.model, worker_device(job.device))
    res = {}
    from ..inference.segment3d import stack_means
    pad = _section_padding(job, data, region)
    for v in job.views():
        s = job.fused_strides[v]  # probability fusion's xz / yz planes: means of s (regions start on a group)
        planes = stack_means(planes_along(data, v, 0, data.shape[v]), s)
        k0 = (block.core[v].start - region[v].start) // s
        k1 = k0 + -(-(block.core[v].stop - block.core[v].start) // s)
        c4, tissue = job.predictor(lm, v).encode(_planes(job, planes, k0, k1, v), job.intensity,
                                                 blank=_stack_blank(job, pad, v, region, k0, k1, s))  # (n, C, h, w)
        sel = []
        for i, ax in enumerate(ax for ax in range(3) if ax != v):
            cell = CELL * job.factor(ax)
            first = (block.core[ax].start - region[ax].start) // cell
            last = c4.shape[2 + i] if block.core[ax].stop == job.shape[ax] else \
                first + -(-(block.core[ax].stop - block.core[ax].start) // cell)
            sel.append(slice(first, last))
        sums = cell_sums(c4[:, :, sel[0], sel[1]], tissue[:, :, sel[0], sel[1]])
        res.update({f"{name}{v}": a for name, a in sums.items()})
        res[f"start{v}"] = np.int64(block.core[v].start // s)
    save_npz(out, **res)


def context_table(job: StackJob, grid) -> None:
    """Each view's per-slice global context from the blocks' sums."""
    d = job.context_dir()
    for v in job.views():
        n = -(-job.shape[v] // job.fused_strides[v])
        sums = {}
        for b in grid:
            t = np.load(d / f"{b.index}.npz")
            s0 = int(t[f"start{v}"])
            for name in ("sum", "count", "plain", "cells"):
                a = t[f"{name}{v}"]
                if name not in sums:
                    sums[name] = np.zeros((n, *a.shape[1:]), np.float64)
                sums[name][s0:s0 + len(a)] += a
        np.save(d / f"view{v}.npy", context_of_sums(sums))


def _context(job: StackJob, v: int, region) -> np.ndarray | None:
    if not job.context:
        return None
    s = job.fused_strides[v]
    return np.load(job.context_dir() / f"view{v}.npy", mmap_mode="r")[region[v].start // s:-(-region[v].stop // s)]


def _predict(job: StackJob, predictor, planes: np.ndarray, v: int, region, blank):
    ctx = _context(job, v, region)
    return _predict_planes(job, predictor, planes, None if ctx is None else np.array(ctx), blank)


def _predict_planes(job: StackJob, predictor, planes: np.ndarray, ctx, blank):
    out = predictor.predict(planes, job.intensity, blank=blank) if ctx is None else \
        predictor.predict_with_context(planes, job.intensity, ctx, blank=blank)
    return at_cache_precision(out)


def _blank_planes(job: StackJob, axis: int, region, i0: int = 0, i1: int | None = None,
                  group: int = 1) -> np.ndarray | None:
    """Which of the planes ``i0:i1`` that :func:`_planes` makes of ``region``'s stack along
    ``axis`` (each the mean of ``group`` of the region's, see ``stack_means``) are planes of one
    value of the whole volume, as :meth:`~panoptem.inference.engine.Predictor.predict` takes
    them ((n,) or (n, C) with neighbours); None where none is. A plane averaged from several is
    one where all of them are; a neighbour between two planes, where both it lies on are."""
    k = job.stride if axis == job.axis else 1  # the job's planes along its axis: means of k of the volume's
    lo, hi = region[axis].start * k, min(region[axis].stop * k, job.volume_shape[axis])
    one = np.isin(np.arange(lo, hi), job.uniform[axis])
    if k * group > 1 and one.size:
        one = np.logical_and.reduceat(one, np.arange(0, one.size, k * group))
    if not one.any():
        return None
    flags = _planes(job, one.astype(np.float32)[:, None, None], i0, i1, axis)  # neighbours interpolate
    flags = flags[..., 0, 0] >= 1.0
    return flags if flags.any() else None


# ---------------------------------------------------------------- pass 1: network


def plane_ranges(source: VolumeSource, block: Block) -> dict:
    """The lowest and highest value of each plane along Z, Y and X of ``block``'s core: over every
    block's core, which planes of the volume hold one value throughout (see :func:`uniform_of`)."""
    data = read_region(source.open(), block.core)
    out: dict = {"start": tuple(s.start for s in block.core)}
    from ..inference.preprocess import finite_extremes
    for a in range(3):
        out[f"min{a}"], out[f"max{a}"] = finite_extremes(data, tuple(b for b in range(3) if b != a))
    return out


def uniform_of(ranges: list[dict], shape) -> tuple:
    """The planes along Z, Y and X that hold one value throughout, or no finite number (three
    tuples of indices), from every core's :func:`plane_ranges` (values compared in the volume's
    dtype)."""
    from ..inference.preprocess import one_value
    found = []
    for a, n in enumerate(shape):
        lo = hi = None
        seen = np.zeros(n, bool)
        for r in ranges:
            mn, mx = np.asarray(r[f"min{a}"]), np.asarray(r[f"max{a}"])
            if lo is None:
                lo, hi = np.zeros(n, mn.dtype), np.zeros(n, mx.dtype)
            at = slice(r["start"][a], r["start"][a] + len(mn))
            lo[at] = np.where(seen[at], np.fmin(lo[at], mn), mn)  # fmin: a core of no number says nothing
            hi[at] = np.where(seen[at], np.fmax(hi[at], mx), mx)
            seen[at] = True
        found.append(() if lo is None else tuple(int(i) for i in np.flatnonzero(seen & one_value(lo, hi))))
    return tuple(found)


def _section_padding(job: StackJob, data: np.ndarray, region) -> np.ndarray | None:
    """Where the xy sections of ``region`` (read: ``data``) hold padding, judged with the pixels
    around it (:func:`~panoptem.inference.preprocess.padding_in`, read again only where the
    region holds zeros): a band of padding the region cuts is padding, as in a whole-volume run,
    and xz / yz planes take it from the sections, as there (see ``segment3d.stack_padding``)."""
    if not may_hold_padding(data):
        return None
    return padding_in(job.source.open(), tuple(region))


def _stack_blank(job: StackJob, pad: np.ndarray | None, axis: int, region, i0: int = 0,
                 i1: int | None = None, group: int = 1):
    """The ``blank`` argument of :func:`_planes`' planes ``i0:i1`` of the region's stack along
    ``axis`` (means of ``group``): padding per pixel from the sections' (``pad``, see
    :func:`_section_padding`) where they hold some, for xy planes, and for xz / yz planes where
    the region is too thin for them to tell it themselves (``segment3d.thin_stack``: a thin
    volume, as a whole-volume run judges them, or a region cut thin from a deeper one), with the
    volume's planes of one value (see :func:`_blank_planes`); else those planes alone."""
    from ..inference.segment3d import stack_means, thin_stack
    flags = _blank_planes(job, axis, region, i0, i1, group)
    if pad is None or (axis != 0 and not thin_stack((region[0].stop - region[0].start,))):
        return flags
    given = stack_means(planes_along(pad.view(np.uint8), axis, 0, pad.shape[axis]).astype(np.float32), group)
    given = _planes(job, given, i0, i1, axis) >= 1.0  # a mean or a neighbour between: where all are padding
    if flags is not None:
        given[flags] = True
    return given if given.any() else flags


def _blank_rows(job: StackJob, region) -> np.ndarray | None:
    """Which sections of ``region`` (its z slice) are blank sections of the volume."""
    if not job.blank:
        return None
    rows = np.isin(np.arange(region[0].start, region[0].stop), job.blank)
    return rows if rows.any() else None


def _fused(job: StackJob, lm, region: np.ndarray, xy, where, pad: np.ndarray | None = None) -> np.ndarray:
    """Probability fusion of the xy slices of ``region``: the mean of the three
    stacks' raw probabilities, as a whole-volume run computes it (xz / yz planes averaged
    in groups from the region's start, which lies on the volume's groups)."""
    from ..inference.segment3d import clear_rows, fused_probability, off_rows, stack_means
    blank = _blank_rows(job, where)  # edge-on in the xz and yz planes: nothing is found there
    sinks = []
    for ax in (1, 2):
        k = job.fused_strides[ax]
        planes = stack_means(planes_along(region, ax, 0, region.shape[ax]), k)
        out = _predict(job, job.predictor(lm, ax), _planes(job, planes, axis=ax), ax, where,
                       _stack_blank(job, pad, ax, where, group=k))
        if blank is not None:
            out = clear_rows(out, blank, job.factor(0))
        full = np.zeros(region.shape, np.uint8)
        along = np.moveaxis(full, ax, 0)
        for j in range(len(planes)):
            pr = out.semantic_probability[j]
            # as a whole-volume run brings them back and takes them in (segment3d.run_stack)
            f = resize_at(pr, [1 / job.factor(a) for a in range(3) if a != ax], planes.shape[-2:])
            along[j * k:(j + 1) * k] = probability_bytes(off_rows(f[0], blank))
        sinks.append(full)
    probs = []
    for z in range(region.shape[0]):
        pr = xy.semantic_probability[z]
        acc = pr[0].copy()
        for s in sinks:
            other = s[z].astype(np.float32) / 255.0
            acc += (downsample(other, int(job.factor(1))) if not job.resamples(0) else
                    resize_at(other, (job.factor(1), job.factor(2)), pr.shape[-2:], antialias=True))
        probs.append(fused_probability(acc, 3))
    return np.stack(probs)


def network_block(job: StackJob, block: Block) -> dict:
    """Pass 1: network outputs of ``block``'s core, stored at cache precision."""
    done_dir = Path(job.net).with_suffix(".done")
    if _done(done_dir, "", block.index):
        return {"index": block.index, "resumed": True}
    t0 = time.perf_counter()
    region = job.network_region(block)
    data = read_region(job.source.open(), region)
    summary = {"index": block.index, "network_s": 0.0, "skipped": False}
    if _empty(job, block, data):
        summary["skipped"] = True  # the stored outputs stay 0: background
        _mark(done_dir, "", block.index)
        return summary
    lm = worker_model(job.model, worker_device(job.device))
    predictor = job.predictor(lm)
    a = job.axis
    rm = planes_along(data, a, 0, data.shape[a])  # yz planes: one contiguous copy, normalised 6 x faster
    k0 = block.core[a].start - region[a].start  # the core's slices in the region
    k1 = k0 + (block.core[a].stop - block.core[a].start)
    ip = job.inplane()
    g0 = [block.core[ax].start // job.factor(ax) for ax in ip]  # the core in-plane, network pixels
    rows = [(block.core[ax].start - region[ax].start) // job.factor(ax) for ax in ip]
    size = [-(-(block.core[ax].stop) // job.factor(ax)) - g for ax, g in zip(ip, g0)]
    cells = [r // STRIDE for r in rows]
    csize = [-(-(g + s) // STRIDE) - g // STRIDE for g, s in zip(g0, size)]
    c0 = [g // STRIDE for g in g0]
    arrays = _net_arrays(job, "r+")
    where = [(slice(g0[0], g0[0] + size[0]), slice(g0[1], g0[1] + size[1]))] + [
        (slice(c0[0], c0[0] + csize[0]), slice(c0[1], c0[1] + csize[1]))] * 2
    rows_out = ChunkRows(arrays, job.chunk_depth(), block.core[a].stop, where)  # cores start on chunk edges

    def store(first: int, prob, out) -> None:
        """Keep slices ``first``.. (region order) of the core, in-plane core only."""
        rows_out.add(block.core[a].start + first - k0, (
            probability_bytes(prob[:, :, rows[0]:rows[0] + size[0], rows[1]:rows[1] + size[1]]),
            out.heatmap[:, :, cells[0]:cells[0] + csize[0], cells[1]:cells[1] + csize[1]].astype(np.float16),
            out.offsets[:, :, cells[0]:cells[0] + csize[0], cells[1]:cells[1] + csize[1]].astype(np.float16)))

    pad = _section_padding(job, data, region)
    if job.fusion:  # the xz and yz stacks need every slice of the region at once
        out = _predict(job, predictor, _planes(job, rm, axis=a), a, region, _stack_blank(job, pad, a, region))
        store(k0, _fused(job, lm, rm, out, region, pad)[k0:k1], out[k0:k1])
    else:  # batch by batch: memory holds one batch of outputs
        ctx = _context(job, a, region)
        from ..inference.segment3d import clear_rows
        blank = _blank_rows(job, region) if a != 0 else None  # xz / yz planes see a blank section edge-on
        for i0 in range(k0, k1, job.batch_size):
            i1 = min(i0 + job.batch_size, k1)
            out = _predict_planes(job, predictor, _planes(job, rm, i0, i1, a),
                                  None if ctx is None else np.array(ctx[i0:i1]), _stack_blank(job, pad, a, region, i0, i1))
            if blank is not None:
                out = clear_rows(out, blank, job.factor(0))
            store(i0, out.semantic_probability, out)
    summary["network_s"] = time.perf_counter() - t0
    _mark(done_dir, "", block.index)
    return summary


# ---------------------------------------------------------------- pass 2: centres


def _cell_range(job: StackJob, block: Block) -> list[tuple[int, int]]:
    return [(block.core[ax].start // job.factor(ax) // STRIDE, -(-(-(-block.core[ax].stop // job.factor(ax))) // STRIDE))
            for ax in job.inplane()]


def centre_block(job: StackJob, block: Block) -> np.ndarray:
    """Pass 2: centres of ``block``'s core, (K, 4) int64 rows of (slice, cell
    row, cell col, heatmap value as float16 bits)."""
    p = job.p
    _, (n, _, gh, gw) = job.net_shape()
    (r0, r1), (q0, q1) = _cell_range(job, block)
    m = CENTRE_MARGIN + p.min_distance_object_centers
    a0, a1, b0, b1 = max(0, r0 - m), min(gh, r1 + m), max(0, q0 - m), min(gw, q1 + m)
    _, H, _ = _net_arrays(job)
    s0, s1 = block.core[job.axis].start, block.core[job.axis].stop
    hm = np.asarray(H[s0:s1, 0, a0:a1, b0:b1])
    out = []
    for i in range(hm.shape[0]):
        c = find_centers(hm[i].astype(np.float32), p.center_confidence_thr, p.min_distance_object_centers)
        if not len(c):
            continue
        gy, gx = c[:, 0] + a0, c[:, 1] + b0
        own = (gy >= r0) & (gy < r1) & (gx >= q0) & (gx < q1)
        v = hm[i][c[own, 0], c[own, 1]].astype(np.float16).view(np.uint16).astype(np.int64)
        out.append(np.stack([np.full(own.sum(), s0 + i), gy[own], gx[own], v], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 4), np.int64)


def centre_table(job: StackJob, parts: list[np.ndarray]) -> None:
    """All centres in the order whole-slice decoding lists them (per slice:
    strongest first, ties in raster order), saved with per-slice offsets."""
    c = np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)
    _, (n, _, gh, gw) = job.net_shape()
    value = c[:, 3].astype(np.uint16).view(np.float16).astype(np.float32)
    order = np.lexsort((c[:, 1] * gw + c[:, 2], -value, c[:, 0]))
    c = c[order]
    starts = np.searchsorted(c[:, 0], np.arange(n + 1))
    np.save(Path(job.work) / "centres.npy", c[:, :3])
    np.save(Path(job.work) / "centre_starts.npy", starts)


# ---------------------------------------------------------------- pass 3: decode


def decode_block(job: StackJob, block: Block) -> dict:
    """Pass 3: median, grouping against the slice's centres, 2D pieces of the
    core with their statistics; provisional labels of the core."""
    path = block_file(job.work, block.index)
    if path.exists():
        return {"index": block.index, "resumed": True}
    t0 = time.perf_counter()
    p = job.p
    a, ip = job.axis, job.inplane()
    f = [job.factor(ax) for ax in ip]  # volume pixels per network pixel, rows and columns
    r = p.median_slices // 2
    c0, c1 = block.core[a].start, block.core[a].stop
    n = job.shape[a]
    d0 = max(0, c0 - 2)  # the overlaps two slices apart serve the X repair, with or without gap bridging
    lo, hi = max(0, d0 - r), min(n, c1 + r)
    # in-plane window at network resolution: the core and a margin for interpolation
    g = [(block.core[ax].start // fi, -(-block.core[ax].stop // fi)) for ax, fi in zip(ip, f)]
    (_, C, nh, nw), (_, _, gh, gw) = job.net_shape()
    k = [fi.denominator for fi in f]  # window edges on the heatmap's cells and the volume's pixels
    q = [math.lcm(STRIDE, ki) for ki in k]
    w0 = [max(0, a - MARGIN * STRIDE) // qi * qi for (a, _), qi in zip(g, q)]
    w1 = [min(n_, -(-(b + MARGIN * STRIDE) // ki) * ki) for (_, b), n_, ki in zip(g, (nh, nw), k)]
    P, _, O = _net_arrays(job)
    prob = np.asarray(P[lo:hi, :, w0[0]:w1[0], w0[1]:w1[1]]).astype(np.float32) / np.float32(255.0)
    cw0 = [v // STRIDE for v in w0]
    cw1 = [-(-v // STRIDE) for v in w1]
    off = np.asarray(O[lo:hi, :, cw0[0]:cw1[0], cw0[1]:cw1[1]]).astype(np.float32)
    centres = np.load(Path(job.work) / "centres.npy", mmap_mode="r")
    starts = np.load(Path(job.work) / "centre_starts.npy")
    card_classes, things, stuff = job.classes()
    full_win = [(int(w0[i] * f[i]), min(job.shape[ip[i]], int(w1[i] * f[i]))) for i in range(2)]
    out_shape = (full_win[0][1] - full_win[0][0], full_win[1][1] - full_win[1][0])
    core_rc = tuple(slice(block.core[ax].start - full_win[i][0], block.core[ax].stop - full_win[i][0])
                    for i, ax in enumerate(ip))
    origin = tuple(block.core[ax].start for ax in ip)
    builder = _Pieces(things, origin, tuple(job.shape[ax] for ax in ip), (c0, c1))
    blank = None  # the blank sections among the window's rows (xz / yz planes: rows are z)
    if a != 0 and job.blank:
        blank = np.isin(np.arange(*full_win[0]), job.blank)
        blank = blank if blank.any() else None
    from ..inference.median import RunningMedian
    median = RunningMedian(p.median_slices)
    emitted = []
    for i in range(hi - lo):
        emitted += median.push(prob[i])
    emitted += median.flush()
    for i, pm in emitted:
        d = lo + i
        if d < d0 or d >= c1:
            continue
        ids, keys = _group(p, centres[starts[d]:starts[d + 1]], off[i], cw0, out_shape, d,
                           (gh, gw), bool(things), f)
        pm_full = resize_at(pm, (1 / f[0], 1 / f[1]), out_shape)  # exact, as a whole-volume run brings it back
        sem = semantic_classes(pm_full, card_classes, p.confidence_thr)
        if blank is not None:  # exactly: a network row may cover a blank section and another
            sem[blank] = 0
        builder.add(d, d < c0, sem[core_rc], ids[core_rc], keys, things, stuff)
    table, core_labels, halo_maps = builder.finish()
    if halo_maps is not None:  # before the table, which marks the block done
        save_labels(halo_file(job.work, block.index), halo_maps)
    if core_labels is not None:
        import zarr
        from ..io.zarr_write import put
        arr = zarr.open_array(str(Path(job.work) / "provisional.zarr"), mode="r+")
        put(arr, tuple(block.core), np.moveaxis(core_labels, 0, a))
    save_npz(path, **table)
    return {"index": block.index, "decode_s": time.perf_counter() - t0}


def _group(p, centres, off, cw0, out_shape, d, grid_hw, has_things, scale):
    """Centre index + 1 per output pixel of the window (0: none) and the keys of
    the slice's centres (index - 1 -> key). Centres are in slice coordinates,
    as a whole-slice decoding holds them; the window's pixels are shifted there.
    ``scale``: volume pixels per network pixel (rows, columns: ``Fraction``, exact: the window's
    edges lie on both grids)."""
    keys = (np.int64(d) * grid_hw[0] + centres[:, 1]) * grid_hw[1] + centres[:, 2] if len(centres) else \
        np.zeros(0, np.int64)
    if not has_things or len(centres) == 0:
        return np.zeros(out_shape, np.int32), keys
    cpx = np.asarray(centres[:, 1:3], np.float32) * STRIDE + (STRIDE - 1) / 2.0
    if p.fine_boundaries:  # grouped per network pixel: the window starts at pixel cw0 * STRIDE
        o = linear_resize(off, (off.shape[1] * STRIDE, off.shape[2] * STRIDE))
        ids = group_pixels(cpx, o, stride=1, origin=(cw0[0] * STRIDE, cw0[1] * STRIDE))
        ids = _upsample_nearest(ids, out_shape, scale)
    else:  # grouped per heatmap cell: the window starts at cell cw0
        ids = group_pixels(cpx, off, stride=STRIDE, origin=(cw0[0], cw0[1]))
        ids = _upsample_nearest(ids, out_shape, (STRIDE * scale[0], STRIDE * scale[1]))
    return ids, keys


def _first_columns(pieces: np.ndarray, top: np.ndarray, cells: int = 1 << 22) -> np.ndarray:
    """Column of the first pixel, in raster order, of pieces 1..k of a 2D label image: the
    leftmost pixel of each piece in its top row ``top``; rows are compared a few hundred
    pieces at a time."""
    k = len(top)
    out = np.empty(k, np.int64)
    step = max(1, cells // max(1, pieces.shape[1]))
    for a in range(0, k, step):
        b = min(k, a + step)
        hit = pieces[top[a:b]] == np.arange(a + 1, b + 1, dtype=pieces.dtype)[:, None]
        out[a:b] = hit.argmax(axis=1)
    return out


class _Pieces:
    """Collects the 2D pieces of a block's decoded slices (in-plane core only); slices
    ``core`` (start, stop) are the block's own, those before them its halo."""

    def __init__(self, things, origin, full_hw, core: tuple[int, int]):
        self.things = list(things)
        self.origin, self.full_hw = origin, full_hw
        self.core = core
        self.core_labels: np.ndarray | None = None  # the core's labels, written plane by plane
        self.labelled = False
        self.planes: list[int] = []
        self.labels: list[np.ndarray] = []
        self.halo: list[bool] = []
        self.rows: dict[str, list] = {k: [] for k in ("plane", "key", "area", "r0", "r1", "c0", "c1", "first",
                                                      "halo", "cls_counts")}
        self.stuff: list[tuple] = []
        self.n = 0
        self.span: dict[int, tuple[int, int]] = {}  # plane -> (ids before its pieces, its pieces)
        self.pixels: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # plane -> its pieces' flat indices, ids 1..k

    def add(self, d: int, is_halo: bool, sem: np.ndarray, ids: np.ndarray, keys: np.ndarray, things, stuff) -> None:
        """Plane ``d``: its pieces (8-connected, one centre each) and what the linking needs
        of them, counted on their pixels alone; ``ids`` (centre index + 1, 0: none) >= 0."""
        is_thing = (sem == things[0] if len(things) == 1 else np.isin(sem, things)) if things \
            else np.zeros(sem.shape, bool)  # one class: a compare, 10 x faster than isin
        inst = np.multiply(ids, is_thing, out=np.empty(ids.shape, np.uint32), casting="unsafe")
        pieces, k = cc3d.connected_components(inst, connectivity=8, return_N=True)
        self.span[d] = (self.n, k)
        if is_halo:
            lab = np.zeros(sem.shape, np.uint32)
        else:
            if self.core_labels is None:
                self.core_labels = np.zeros((self.core[1] - self.core[0], *sem.shape), np.uint32)
            lab = self.core_labels[d - self.core[0]]
        flat = pieces.reshape(-1)
        nz = np.flatnonzero(flat != 0)  # a boolean scan: several times faster than one of the ids
        lv = flat[nz]
        self.pixels[d] = (nz, lv)
        if k:
            lab.reshape(-1)[nz] = lv.astype(np.uint32) + np.uint32(self.n)
            area = np.bincount(lv, minlength=k + 1)[1:].astype(np.int64)
            r0, r1, c0, c1 = pixel_boxes(nz, lv, k, sem.shape)
            fr, fc = r0, _first_columns(pieces, r0)
            centre = inst[fr, fc].astype(np.int64) - 1
            if len(things) == 1:  # every pixel of a piece is of the one thing class
                counts = area[:, None]
            else:
                n_cls = max(things) + 1
                counts = np.bincount(lv.astype(np.int64) * n_cls + sem.reshape(-1)[nz],
                                     minlength=(k + 1) * n_cls).reshape(k + 1, n_cls)[1:][:, things]
            oy, ox = self.origin
            rows = self.rows
            rows["plane"].append(np.full(k, d, np.int64))
            rows["key"].append(keys[centre].astype(np.int64))
            rows["area"].append(area)
            rows["r0"].append(r0 + oy)
            rows["r1"].append(r1 + oy)
            rows["c0"].append(c0 + ox)
            rows["c1"].append(c1 + ox)
            rows["first"].append((fr + oy) * self.full_hw[1] + fc + ox)
            rows["halo"].append(np.full(k, is_halo))
            rows["cls_counts"].append(counts.astype(np.int64))
            self.n += k
            self.labelled = self.labelled or not is_halo
        for s in stuff:
            m = (sem == s) & (lab == 0)
            c = int(m.sum())
            if c:
                lab[m] = STUFF + np.uint32(s)
                if not is_halo:
                    self.stuff.append((d, s, c))
                    self.labelled = True
        self.planes.append(d)
        self.labels.append(lab)
        self.halo.append(is_halo)

    def finish(self) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
        """The pieces' table (statistics, overlaps between planes, stuff counts), the core's
        labels and the halo slices' labels (None where there are none)."""
        c0, c1 = self.core
        nt = len(self.things)
        cat = {k: (np.concatenate(v) if v else (np.zeros((0, nt), np.int64) if k == "cls_counts" else
                                                 np.zeros(0, bool if k == "halo" else np.int64)))
               for k, v in self.rows.items()}
        by_plane = dict(zip(self.planes, self.labels))
        pa, pb, pc, pk = [], [], [], []
        for d in range(c0, c1):
            for dz in (1, 2):  # neighbours, and two apart (gap bridging and the X repair use them)
                a, b = self.pixels.get(d - dz), by_plane.get(d)
                if a is None or b is None:
                    continue
                (base_a, ka), (base_b, kb) = self.span[d - dz], self.span[d]
                nz_a, lv_a = a
                under = b.reshape(-1)[nz_a]  # plane d under the pieces of plane d - dz
                m = (under > 0) & (under < STUFF)
                if not m.any():
                    continue
                # each plane's pieces are base + 1..k: counted on those small ranges, in (a, b) order
                ia, ib, c = pair_counts(lv_a[m], under[m] - np.uint32(base_b), ka, kb)
                pa.append(ia + base_a)
                pb.append(ib + base_b)
                pc.append(c)
                pk.append(np.full(ia.size, dz, np.int64))
        e = np.zeros(0, np.int64)
        halo_planes = [d for d, h in zip(self.planes, self.halo) if h]
        table = dict(cat, pa=np.concatenate(pa) if pa else e, pb=np.concatenate(pb) if pb else e,
                     pc=np.concatenate(pc) if pc else e, pkind=np.concatenate(pk) if pk else e,
                     halo_planes=np.asarray(halo_planes, np.int64),
                     stuff_plane=np.asarray([s[0] for s in self.stuff], np.int64),
                     stuff_cls=np.asarray([s[1] for s in self.stuff], np.int64),
                     stuff_count=np.asarray([s[2] for s in self.stuff], np.int64))
        halo_maps = np.stack([by_plane[d] for d in halo_planes]) if halo_planes else None
        return table, self.core_labels if self.labelled else None, halo_maps
