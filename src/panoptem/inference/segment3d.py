"""3D inference: stacks of 2D planes along xy, xz or yz, a true running
median of the semantic probabilities, 2D decoding, linking into 3D objects,
size filters and, for ortho-plane, a consensus of the three stacks.

Streaming: the network output of at most ``median_slices`` planes is held
at a time; decoded planes are linked on the fly and relabelled once at the end.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import PanoptemError
from ..models.home import DEFAULT_MODEL
from ..models.load import LoadedModel
from .._memory import release_free
from ..labels import as_array, dtype_for_max_label, lookup, map_ids
from ..params import PLANE_AXIS, PLANES, Params3D, params_with, zarr_chunks
from ._pipeline import BehindNetwork, Prefetch, StageClock, Worker, yield_to_network
from .cache import at_cache_precision, byte_steps, plane_hashes, probability_bytes
from .decode import decode_planes, decode_settings
from .engine import Predictor
from .linking import LinkResult, SliceLinker
from .median import RunningMedian
from .predict import clear_padding
from .preprocess import PAD_WINDOW, PADDING_RULE, downsample, padding_in, padding_mask, uniform_planes
from .resample import resize_at


@dataclass
class Result3D:
    """Output of :func:`segment_3d`.

    ``labels``: class name -> ZYX volume with instance ids 1..N (semantic
    classes: 1 where present; the number of an object Erode labels removed stays unused).
    ``panoptic``: the linked panoptic volume (``class * divisor + n``; made on first use where
    the run did not need it).
    ``stacks``: plane -> per-plane panoptic volume when ``return_panoptic``.
    ``objects``: number of objects per class.
    """

    labels: dict[str, np.ndarray]
    #: the panoptic volume, or a function that makes it (see :attr:`panoptic`)
    _panoptic: Any = field(repr=False)
    stacks: dict[str, np.ndarray] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: True when the labels were streamed to the ``output`` file (and are read from it lazily)
    streamed: bool = False
    #: one summary dict per file written (with ``output``)
    written: list[dict] = field(default_factory=list)
    #: the pixel sizes used and how each plane was resampled (:meth:`~.resample.PixelPlan.record`)
    pixel_size: dict | None = None
    #: what made it (:func:`panoptem._provenance.run_record`), written with the labels
    provenance: dict | None = None

    @property
    def panoptic(self) -> np.ndarray:
        """The linked panoptic volume (``class * divisor + n``)."""
        if callable(self._panoptic):
            self._panoptic = self._panoptic()
        return self._panoptic


#: yz planes are read at least this many at a time: a 64-byte cache line of uint8 voxels
#: along x (and one read of a lazy input's chunks instead of one per batch)
YZ_READ = 64


def planes_along(volume, axis: int, start: int, stop: int) -> np.ndarray:
    """Planes ``start:stop`` along ``axis`` of a ZYX volume as (n, A, B). yz planes come
    back C-contiguous, transposed one z-slice at a time: numpy's strided copy (or the
    normalisation of a strided view) of a thin x-range costs several times more."""
    sl = [slice(None)] * 3
    sl[axis] = slice(start, stop)
    block = np.asarray(volume[tuple(sl)])
    if axis != 2:
        return np.moveaxis(block, axis, 0)
    out = np.empty((block.shape[2], block.shape[0], block.shape[1]), block.dtype)
    for z in range(block.shape[0]):
        out[:, z] = block[z].T
    return out


def neighbour_reach(k: int, step: float = 1.0) -> int:
    """How many planes on each side the ``k`` neighbours of a plane, ``step`` planes apart, are
    made from (see :func:`with_neighbours`)."""
    return int(math.ceil(k * float(step) - 1e-9)) if k else 0


def with_neighbours(block: np.ndarray, lo: int, i0: int, i1: int, k: int, n: int,
                    step: float = 1.0) -> np.ndarray:
    """Planes ``i0:i1`` of a stack of ``n``, each with its ``k`` neighbours on each side (clamped
    at the stack's ends), as (i1 - i0, 2k + 1, A, B), from ``block``: planes ``lo:`` of the stack,
    holding ``max(0, i0 - r)`` to ``min(n, i1 + r)`` with ``r = neighbour_reach(k, step)``.

    ``step``: how many of the stack's planes apart the model's neighbours lie (its neighbour
    spacing over the stack's, :meth:`~.resample.PixelPlan.neighbour_step`). A whole step takes
    planes; a fraction, as for serial sections thicker than the model's spacing, interpolates
    each neighbour linearly between the two planes around it (float32), so the network sees
    neighbours as far away as in its training."""
    if float(step).is_integer():
        idx = np.clip(np.arange(i0, i1)[:, None] + int(step) * np.arange(-k, k + 1), 0, n - 1) - lo
        return block[idx]
    pos = np.clip(np.arange(i0, i1)[:, None] + float(step) * np.arange(-k, k + 1), 0, n - 1)
    below = np.floor(pos).astype(np.int64)
    t = (pos - below).astype(np.float32).reshape(pos.shape + (1,) * (block.ndim - 1))
    a = block[below - lo].astype(np.float32)
    # the plane above; past the block's last plane only where a neighbour falls on that plane (t = 0)
    b = block[np.minimum(below + 1, lo + len(block) - 1) - lo].astype(np.float32)
    return a + (b - a) * t


def stack_means(block: np.ndarray, k: int) -> np.ndarray:
    """The mean of each ``k`` consecutive planes of ``block`` (the last group may hold fewer),
    float32: the planes of a stack brought ``k`` times closer to the network's pixels along
    its axis (see :meth:`~.resample.PixelPlan.stack_step`).

    >>> stack_means(np.arange(5)[:, None, None] * np.ones((5, 1, 2), np.uint8), 2)[:, 0, 0].tolist()
    [0.5, 2.5, 4.0]
    """
    if k == 1:
        return block
    whole = len(block) // k
    out = np.empty((-(-len(block) // k), *block.shape[1:]), np.float32)
    acc = out[:whole]
    np.copyto(acc, block[0:whole * k:k])
    for o in range(1, k):
        acc += block[o:whole * k:k]
    acc *= np.float32(1.0 / k)
    if whole < len(out):
        out[whole] = block[whole * k:].mean(axis=0, dtype=np.float32)
    return out


def sections_edge_on(volume, chunk: int = 16) -> tuple[np.ndarray | None, bool]:
    """What an xz or yz stack sees edge-on in the xy sections of a ZYX volume, read once: which
    sections hold a single value throughout (a blank or grey-filled section: see
    :func:`~.preprocess.uniform_planes`; a bool per z, None where none does: one row of each
    xz / yz plane), and whether the stack takes padding from the sections (see
    :func:`stack_padding`): where some hold padding (:func:`~.preprocess.padding_mask`) and the
    volume is too thin for its xz / yz planes to tell it themselves."""
    n = volume.shape[0]
    out = np.zeros(n, bool)
    padded = False
    for z0 in range(0, n, chunk):
        sections = planes_along(volume, 0, z0, min(z0 + chunk, n))
        flags = uniform_planes(sections)
        if flags is not None:
            out[z0:z0 + len(flags)] = flags
        padded = padded or (thin_stack(volume.shape) and padding_mask(sections) is not None)
    return (out if out.any() else None), padded


def thin_stack(shape) -> bool:
    """Whether the xz / yz planes of a ZYX volume of ``shape`` are too thin to tell padding
    themselves (fewer sections than :data:`~.preprocess.PAD_WINDOW`): they take it from the xy
    sections (:func:`stack_padding`); deeper ones judge their own, as xy planes do."""
    return shape[0] < PAD_WINDOW


def stack_padding(volume, axis: int, i0: int, i1: int, stride: int = 1) -> np.ndarray | None:
    """Where the planes ``i0:i1`` of the volume's xz (``axis`` 1) or yz (2) stack hold padding,
    per pixel, as its xy sections show it (:func:`~.preprocess.padding_in`): (n, Z, X or Y),
    None where they hold none. A plane thinner than :data:`~.preprocess.PAD_WINDOW` cannot tell a
    band of padding by itself (a volume of few sections in a frame). ``stride`` k > 1: each
    plane the mean of k (:func:`stack_means`), padding where all k are."""
    n = volume.shape[axis]
    a, b = i0 * stride, min(i1 * stride, n)
    pad = padding_in(volume, (slice(None), slice(a, b), slice(None)) if axis == 1 else
                     (slice(None), slice(None), slice(a, b)))
    if pad is None:
        return None
    pad = np.moveaxis(pad, axis, 0)
    if stride > 1:
        pad = np.logical_and.reduceat(pad, np.arange(0, len(pad), stride), axis=0)
    return pad if pad.any() else None


def plane_edge_on(volume, axis: int, index: int, stride: int = 1) -> tuple[np.ndarray | None, np.ndarray | None]:
    """What plane ``index`` of a ZYX volume's xz (``axis`` 1) or yz (2) stack sees edge-on in the
    xy sections, as that stack sees it (:func:`sections_edge_on`, :func:`stack_padding`): the
    sections of one value (a bool per z, None where none: rows where nothing is found), and for a
    volume too thin to tell padding itself (:func:`thin_stack`) where the plane holds padding,
    (Z, X or Y) per pixel or None. Only the sections whose row in the plane holds one value are
    read whole. ``stride``: see :func:`stack_padding`."""
    first = np.asarray(planes_along(volume, axis, index * stride, index * stride + 1)[0])
    flags = uniform_planes(first[:, None, :])  # its rows of one value: the candidates
    one_value = np.flatnonzero(flags) if flags is not None else np.zeros(0, np.int64)
    rows = np.zeros(volume.shape[0], bool)
    if len(one_value) < volume.shape[0]:  # a plane of one value throughout is padding anyway
        for z in one_value:
            flags = uniform_planes(planes_along(volume, 0, int(z), int(z) + 1))
            rows[z] = flags is not None and bool(flags[0])
    pad = stack_padding(volume, axis, index, index + 1, stride) if thin_stack(volume.shape) else None
    return (rows if rows.any() else None), (None if pad is None else pad[0])


def clear_rows(out, rows: np.ndarray, factor=1):
    """Network outputs of xz / yz planes (their rows: the volume's z) with nothing found on the
    rows that cover only flagged sections (``rows``, a bool per z), as on padding. ``factor``:
    sections per network row (Image Downsampling, or the exact resampling factor along z):
    network row j covers sections [j * factor, (j + 1) * factor)."""
    from fractions import Fraction
    f = Fraction(factor)
    h, z = out.semantic_probability.shape[-2], len(rows)
    j = np.arange(h, dtype=np.int64)
    lo = np.minimum(j * f.numerator // f.denominator, z - 1)  # the sections each network row covers
    hi = np.clip(-(-(j + 1) * f.numerator // f.denominator), lo + 1, z)
    unflagged = np.concatenate([[0], np.cumsum(~rows)])
    on = (unflagged[hi] - unflagged[lo]) == 0
    if not on.any():
        return out
    pad = np.zeros((len(out.semantic_probability), h, out.semantic_probability.shape[-1]), bool)
    pad[:, on] = True
    return clear_padding(out, pad)


def off_rows(plane: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """An xz / yz plane of probabilities (rows: z) with 0 on the ``rows`` flagged (None: as it is)."""
    if rows is None or not rows.any():
        return plane
    plane = plane.copy()
    plane[rows] = 0
    return plane


class PlaneReader:
    """Batches of planes along ``axis`` (see :func:`planes_along`), called in order; yz
    planes are read :data:`YZ_READ` at a time and handed out from there. ``stride`` k > 1:
    each plane handed out is the mean of k of the ``n`` planes (:func:`stack_means`;
    :attr:`count` of them). With ``context`` k, each plane comes with its k neighbours on each
    side along the axis (see :func:`with_neighbours`, ``step`` of the ``n`` planes apart)."""

    def __init__(self, volume, axis: int, n: int, context: int = 0, step: float = 1.0, stride: int = 1):
        self.volume, self.axis, self.n, self.context, self.stride = volume, axis, n, context, int(stride)
        self.step = step / self.stride if self.stride > 1 else step
        self.count = -(-n // self.stride)
        self.start, self.held = 0, None

    def __call__(self, i0: int, i1: int) -> np.ndarray:
        k = self.context
        if not k:
            return self._planes(i0, i1)
        r = neighbour_reach(k, self.step)
        lo = max(0, i0 - r)
        return with_neighbours(self._planes(lo, min(self.count, i1 + r)), lo, i0, i1, k, self.count, self.step)

    def _planes(self, i0: int, i1: int) -> np.ndarray:
        s = self.stride
        return self._read(i0, i1) if s == 1 else stack_means(self._read(i0 * s, min(i1 * s, self.n)), s)

    def _read(self, i0: int, i1: int) -> np.ndarray:
        if self.axis != 2:
            return planes_along(self.volume, self.axis, i0, i1)
        if self.held is None or not (self.start <= i0 and i1 <= self.start + len(self.held)):
            self.start, self.held = i0, None  # the old chunk goes before the next is read
            self.held = planes_along(self.volume, 2, i0, min(self.n, max(i1, i0 + YZ_READ)))
        return self.held[i0 - self.start:i1 - self.start]


def fused_probability(total: np.ndarray, n: int) -> np.ndarray:
    """The mean of ``n`` stacks' probabilities, at cache precision (1/255), as (1, H, W)."""
    return (byte_steps(total / n) / np.float32(255))[None]


class Cancelled(Exception):
    """Raised when a progress callback asks to stop."""


def run_stack(volume, predictor: Predictor, params: Params3D, plane: str = "xy",
              intensity=None, progress: bool = False, extra_probability=None,
              probability_sink=None, timings: dict | None = None, cache_dir=None,
              callback=None, work_dir=None, output=None, reset_stale: bool = False,
              overlap: bool = True, renumber: Callable[[LinkResult], np.ndarray] | None = None,
              deferred: bool = False, blank_rows: np.ndarray | None = None, padded_sections: bool = False
              ) -> np.ndarray | int | Callable[[], np.ndarray | int]:
    """Segment ``volume`` (ZYX) as a stack of planes; returns the linked,
    filtered panoptic volume in ZYX order.

    ``extra_probability``: optional list of ZYX uint8 volumes (probability x
    255) averaged with this stack's raw semantic probability before the
    median (probability fusion). ``probability_sink``: optional ZYX uint8
    array that receives this stack's raw semantic probability (x 255).
    ``cache_dir``: keep network outputs there (see :mod:`.cache`); slices
    already there for the same input planes are not recomputed, so an
    interrupted run resumes (``reset_stale``: empty a cache made by another
    run instead of refusing it). Outputs are decoded at the cache's precision
    with or without a cache, so every path gives the same labels.
    ``callback(plane, done, total)``: called after every batch; returning
    False stops the run with :class:`Cancelled`.
    ``work_dir`` + ``output``: stream instead of holding the volume: linked
    provisional ids go to a raw file in ``work_dir`` (:class:`.spill.SpillStack`) and the final labels
    are written block by block to ``output`` (an open label writer); then
    memory grows with the slice size, not the depth, and the number of objects
    written is returned.
    ``overlap``: read the next planes and decode/link the last batch while the
    network computes (threads; the same labels as ``overlap=False``).
    ``renumber``: from the linking's result, the ids to return instead of its final
    panoptic ids (index: provisional id), applied in the one relabelling pass (in-memory runs).
    ``predictor.stack_step`` k > 1 (an xz / yz stack brought to the network's pixels along its
    axis): each network plane is the mean of k planes, and its labels stand for all of them.
    ``deferred``: return as soon as the network is done, with a function that completes the
    stack (the last decoding, the linking's solution, the relabelling) and returns what
    ``run_stack`` would: the next stack's network can then run while it completes.
    ``blank_rows``, ``padded_sections``: the volume's blank sections and whether any holds padding
    (:func:`sections_edge_on`): an xz / yz stack finds nothing on the blank ones (an xy stack finds
    nothing on any plane of one value by itself) and takes the padding from the sections
    (:func:`stack_padding`).
    ``timings`` receives wall and CPU seconds per stage (``read``, ``normalise``,
    ``forward``, ``quantise``, ``median``, ``decode``, ``link``, ``link_solve``, ``relabel``), plus
    ``network_s`` (the network's calls; each batch's input is normalised ahead of them, in the
    reading thread) and ``decode_link_s`` (everything after the network).
    """
    import time
    card = predictor.card
    if card.num_classes != 1 and (extra_probability or probability_sink is not None):
        raise PanoptemError("Probability fusion is implemented for single-class models only; use fusion=consensus.")
    axis = PLANE_AXIS[plane]
    n_in = volume.shape[axis]
    stride = predictor.stack_step  # input planes per network plane (1, or an xz / yz stack reduced along its axis)
    if stride > 1 and extra_probability:
        raise PanoptemError("Probability fusion adds the other stacks to an xy stack, which keeps every plane.")
    n = -(-n_in // stride)  # the stack's planes, as the network sees them
    if intensity is None:
        intensity = predictor.intensity(volume)
    median = RunningMedian(params.median_slices)
    linker = SliceLinker(iou_thr=params.iou_thr, ioa_thr=params.ioa_thr,
                         label_divisor=params.label_divisor or None, bridge_gaps=params.bridge_gaps,
                         stride=stride, depth=n_in)
    shape = tuple(s for i, s in enumerate(volume.shape) if i != axis)
    provisional = None
    settings = decode_settings(params, card)
    tm = timings if timings is not None else {}
    tm.setdefault("network_s", 0.0)
    tm.setdefault("decode_link_s", 0.0)
    clock = StageClock(tm, cpu=not overlap)  # CPU seconds per stage mean something only one after another

    def consume(items):
        nonlocal provisional
        if not items:
            return
        with clock("decode"):  # all planes at once: thin planes cost little more than their pixels
            # blank sections cut exactly (a network row may cover a blank section and another), as blockwise
            labs = decode_planes([it[1] for it in items], [it[2][0] for it in items], [it[2][1] for it in items],
                                 out_shape=shape, compacted=True, scale=predictor.out_scale(),
                                 background_rows=blank_rows if axis != 0 else None, **settings)
        for (idx, _, _), lab in zip(items, labs):
            with clock("link"):
                into = provisional[idx] if isinstance(provisional, np.ndarray) else None
                prov = linker.add(compacted=lab, out=into)
                if prov is into:  # written in place
                    continue
                if provisional is None and work_dir is not None:
                    from .spill import SpillStack  # widens itself when the ids outgrow uint32
                    provisional = SpillStack(Path(work_dir) / f"provisional_{plane}.raw", (n, *shape), prov.dtype)
                elif provisional is None:
                    provisional = np.zeros((n, *shape), prov.dtype)
                elif work_dir is None and prov.dtype.itemsize > provisional.dtype.itemsize:
                    provisional = provisional.astype(prov.dtype)
                provisional[idx] = prov

    def after_network(item):
        """Everything behind the network for one batch (in the decode thread)."""
        t = time.perf_counter()
        i0, out, fresh, hashes = item
        if fresh:  # from the network: to cache precision (and into the cache) here, off the network's thread
            with clock("quantise"):
                out = cache.put(i0, out, hashes) if cache is not None else at_cache_precision(out)
        if cache is not None and (stopping.is_set() or i0 + len(out) >= n):
            cache.flush()  # the last batch, or the run stops: every slice stored is marked
        if stopping.is_set():
            return  # the run stops: what the network computed is kept for a resume, nothing more
        if blank_rows is not None and axis != 0:  # after the cache: it keeps the network's own outputs
            out = clear_rows(out, blank_rows, (predictor.out_scale() or (1, 1))[0])
        ready = []
        for j in range(len(out)):
            # probabilities stay at network resolution (the median is cheaper there);
            # decoding brings them to full size. Fusion volumes are full size.
            prob = out.semantic_probability[j]
            sl = [slice(None)] * 3
            sl[axis] = i0 + j
            with clock("median"):
                if probability_sink is not None:
                    scale = predictor.out_scale()
                    full = prob if scale is None else resize_at(prob, [1 / s for s in scale], shape)
                    a = (i0 + j) * stride  # every input plane this network plane stands for
                    np.moveaxis(probability_sink, axis, 0)[a:min(a + stride, n_in)] = \
                        probability_bytes(off_rows(full[0], blank_rows))
                if extra_probability:
                    acc = prob[0].copy()
                    for vol in extra_probability:
                        other = vol[tuple(sl)].astype(np.float32) / 255.0
                        acc += (downsample(other, predictor.downsampling) if predictor.resample is None else
                                resize_at(other, predictor.resample, prob.shape[-2:], antialias=True))
                    prob = fused_probability(acc, 1 + len(extra_probability))
                ready += median.push(prob, extra=(out.heatmap[j], out.offsets[j]))
        if i0 + len(out) >= n:
            with clock("median"):
                ready += median.flush()
        consume(ready)
        release_free()
        tm["decode_link_s"] += time.perf_counter() - t

    b = predictor.batch_for(shape, n)
    cache = None
    if cache_dir is not None:
        from .cache import OutputCache
        f = predictor.downsampling if predictor.resample is None else list(predictor.resample)
        hn, wn = predictor.network_shape(shape)
        st = card.output_stride
        key = {"model": card.name, "weights": card.weights.sha256 or card.weights.file, "plane": plane,
               "downsampling": f, "intensity": [float(v) for v in np.ravel(intensity)],
               "shape": [int(v) for v in volume.shape], "dtype": str(np.dtype(volume.dtype)),
               "tile_size": predictor.tile_size, "padding": PADDING_RULE}  # outputs cleared on padding
        if predictor.tta:  # only then, so that caches made without the option stay valid
            key["tta"] = True
        if predictor.invert:  # as tta: the network saw the planes inverted
            key["invert"] = True
        if stride > 1:
            key["stack_step"] = stride
        if predictor.precision == "int8":  # a quantized network: its outputs are not a float run's to resume
            key["precision"] = "int8"
        cache = OutputCache(cache_dir, plane, n, (card.probability_channels, hn, wn),
                            (-(-hn // st), -(-wn // st)), key, reset_stale=reset_stale, chunk=b)

    planes_at = PlaneReader(volume, axis, n_in, card.context_slices, predictor.neighbour_step, stride)

    def read(i0):
        """The next planes, and their network input unless the cache holds their outputs: made
        here, in the reading thread, while the network computes the planes before."""
        with clock("read"):
            i1 = min(i0 + b, n)
            planes = planes_at(i0, i1)
            hashes = plane_hashes(planes) if cache is not None else None
            pad = stack_padding(volume, axis, i0, i1, stride) if padded_sections and axis != 0 else None
        # valid() reads the cache's table in memory, at slices the decoding thread is not storing
        cached = cache is not None and cache.valid(i0, hashes)
        blank = "auto" if pad is None else pad
        return i0, i1, planes, hashes, cached, None if cached else predictor.prepare(planes, intensity, tm, blank), blank

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, unit="slice", desc=f"{plane} stack")
    cpu_network = predictor.model.device == "cpu"
    reader = Prefetch(read, range(0, n, b), depth=1, threaded=overlap)
    worker = Worker(after_network, depth=2, threaded=overlap)
    behind = BehindNetwork(reader, worker) if cpu_network and overlap else None
    stopping = threading.Event()
    try:
        for i0, i1, planes, hashes, cached, prepared, blank in reader:
            fresh = not cached
            if cached:
                with clock("quantise"):
                    out = cache.get(i0, i1)
            else:
                t = time.perf_counter()
                out = predictor.predict(planes if prepared is None else prepared, intensity, timings=tm, blank=blank)
                t = time.perf_counter() - t
                tm["network_s"] += t
                if behind is not None:
                    behind.batch(t)
            del planes, prepared
            worker.put((i0, out, fresh, hashes))
            if bar is not None:
                bar.update(i1 - i0)
            if callback is not None and callback(plane, i1, n) is False:
                raise Cancelled(f"stopped after {i1} of {n} {plane} slices")
        if not deferred:
            worker.finish()
    except BaseException:
        reader.close()
        stopping.set()
        try:
            worker.finish()
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
        if cache is not None:
            cache.flush()
        raise
    finally:
        if bar is not None:
            bar.close()
    def complete():
        if deferred:  # in the thread that completes the stacks beside the next one's network
            if behind is not None and behind.yielded:
                yield_to_network()  # as the threads behind this stack's network were weighed
            try:
                worker.finish()
            except BaseException:
                stopping.set()
                if cache is not None:
                    cache.flush()
                raise
        t = time.perf_counter()
        with clock("link_solve"):
            res = linker.finish(min_size=params.min_size, min_extent=params.min_extent)
        mapping = np.asarray(res.mapping)
        dt = dtype_for_max_label(int(mapping.max()) if mapping.size else 0)
        if output is not None:
            # streamed runs are single-class: write what split_classes would (each instance's number in
            # its class, a semantic segment as 1)
            kept = mapping > 0
            (_, own, values, _, n_obj), = class_numbering(np.unique(mapping[kept]), card,
                                                          params.label_divisor or None)
            final = np.zeros(mapping.shape, np.int64)
            final[kept] = np.asarray(values, np.int64)[np.searchsorted(own, mapping[kept])]
            with clock("relabel"):
                written = _remap_to_writer(provisional, final, axis, output, volume.shape, params, objects=n_obj,
                                           stride=stride)
            tm["decode_link_s"] += time.perf_counter() - t
            return written
        if renumber is not None:
            mapping = renumber(res)
            dt = mapping.dtype
        with clock("relabel"):  # straight into Z, Y, X order: the consensus and writers read it by Z
            if axis == 0 and stride == 1 and provisional.dtype.itemsize == dt.itemsize:  # an xy stack is in
                labels = provisional.view(dt)  # that order: over its own ids (int32 local ids of a consensus too)
            else:
                labels = np.empty(volume.shape, dt)
            along = np.moveaxis(labels, axis, 0)
            lookup(mapping.astype(dt, copy=False), provisional, out=along[::stride])
            for o in range(1, stride):  # each network plane's labels for the planes it stands for
                along[o::stride] = along[::stride][:len(range(o, n_in, stride))]
        tm["decode_link_s"] += time.perf_counter() - t
        return labels

    return complete if deferred else complete()


#: Z slices per block when a streamed run writes its final labels (fewer where a block of
#: its provisional ids would exceed :data:`REMAP_BYTES`)
REMAP_BLOCK = 32
#: the most bytes of provisional ids in one block of an xy stack's relabelling (three blocks are
#: in flight: being written, waiting, being read)
REMAP_BYTES = 32 << 20


def _remap_to_writer(provisional, mapping: np.ndarray, axis: int, writer, zyx_shape, params=None,
                     block: int | None = None, objects: int | None = None, stride: int = 1) -> int:
    """Write final labels in Z blocks: read the provisional stack (stored in
    stack order) for those Z, map ids, put the block in ZYX order (each of an xz / yz
    stack's planes standing for ``stride`` planes along its axis). Erosion and
    dilation (``params``) read as many extra slices above and below as they reach.
    The next block is read and mapped in a thread while this one is written (the writer
    compresses). Returns the number of objects written: ``objects`` (the mapping's, every
    provisional id having voxels) unless erosion, dilation or hole filling may change it, else
    counted."""
    import fastremap
    from ._pipeline import Prefetch
    from .postprocess import postprocess_labels
    nz = zyx_shape[0]
    lut = mapping.astype(dtype_for_max_label(int(mapping.max(initial=0))))
    ids: set[int] = set()
    ero, dil = (params.label_erosion, params.label_dilation) if params is not None else (0, 0)
    holes = bool(params is not None and params.fill_holes_in_segmentation)
    halo = ero + dil
    post = bool(ero or dil or holes) or objects is None
    spilled = axis == 0 and hasattr(provisional, "read")
    if block is None:
        block = REMAP_BLOCK
        if axis == 0:
            plane = int(np.prod(zyx_shape[1:], dtype=np.int64)) * np.dtype(provisional.dtype).itemsize
            block = max(1, min(block, REMAP_BYTES // max(plane, 1) - 2 * halo))
    ring: list = [None] * 3  # spilled ids: each block read into one of three buffers, relabelled there

    def mapped(z0: int):
        """Block ``z0``'s final labels (in the reading thread)."""
        z1 = min(z0 + block, nz)
        a0, a1 = max(z0 - halo, 0), min(z1 + halo, nz)
        if spilled:  # (the writers copy)
            k = (z0 // block) % len(ring)
            if ring[k] is None or ring[k].dtype != provisional.dtype:
                ring[k] = np.empty((min(block + 2 * halo, nz), *zyx_shape[1:]), provisional.dtype)
            prov = provisional.read(a0, a1, out=ring[k])
            lab = lookup(lut, prov, out=prov if prov.dtype == lut.dtype else None)
        elif axis == 0:
            lab = lookup(lut, np.asarray(provisional[a0:a1]))
        else:  # stack order (n, Z, other): Z is axis 1 of the store
            prov = np.asarray(provisional[:, a0:a1])
            if stride > 1:
                prov = np.repeat(prov, stride, axis=0)[:zyx_shape[axis]]
            lab = lookup(lut, np.moveaxis(prov, 0, axis))
        return z0, z1, postprocess_labels(lab, ero, dil, holes)[z0 - a0:z0 - a0 + (z1 - z0)]

    blocks = Prefetch(mapped, range(0, nz, block), depth=1)
    try:
        for z0, z1, lab in blocks:
            writer[z0:z1] = lab
            if post:  # erosion may remove objects: count what is written
                ids.update(np.asarray(fastremap.unique(lab)).tolist())
    finally:
        blocks.close()
    ids.discard(0)
    return len(ids) if post else int(objects)


def class_numbering(ids: np.ndarray, card, label_divisor: int | None) -> list[tuple]:
    """How :func:`split_classes` maps the panoptic ``ids`` (> 0) of a run: for each class
    of ``card``, ``(name, its ids, their new values, dtype, objects)``: an instance keeps its
    number within the class (``id % divisor``; linking numbers them 1..N, and an object that
    Erode labels removed leaves its number unused, as in streamed and blockwise runs), a class's
    semantic segment becomes 1 (semantic classes: 1)."""
    ids = np.asarray(ids)
    if label_divisor:
        cls = ids // label_divisor
    else:  # without a divisor the ids name no class: all are the one class's, or none's
        cls = np.full(ids.shape, card.classes[0].id if card.num_classes == 1 else -1)
    out = []
    for c in card.classes:
        mine = cls == c.id
        if c.kind == "semantic":
            out.append((c.name, ids, mine, np.uint8, int(mine.any())))
            continue
        own = ids[mine].astype(np.int64)
        values = own % label_divisor if label_divisor else own
        values[values == 0] = 1  # the class as one segment (Semantic only)
        out.append((c.name, ids[mine], values, dtype_for_max_label(int(values.max(initial=0))), int(own.size)))
    return out


class _LocalIds:
    """The renumbering of a single instance class's stack for the consensus
    (``run_stack(renumber=...)``): objects as local ids 1..k in the order of their panoptic
    ids, int32 (``narrow``: uint16 where they fit), with those ids and their voxel counts from the
    linking: what :func:`~panoptem.labels.compact` would give for the panoptic stack, without
    its passes."""

    def __init__(self, narrow: bool = False):
        self.narrow = narrow  # uint16 where the objects fit: half the memory of a volume relabelled anew

    def __call__(self, res: LinkResult) -> np.ndarray:
        ids = np.asarray(res.ids, np.int64)  # the kept objects, in the order of their ids
        local = np.zeros(len(res.mapping), np.uint16 if self.narrow and len(ids) < 2 ** 16 else np.int32)
        on = res.mapping > 0
        local[on] = np.searchsorted(ids, res.mapping[on]) + 1
        self.ids, self.counts = ids, np.asarray(res.voxels, np.int64)
        return local


def split_classes(panoptic: np.ndarray, card, label_divisor: int | None) -> tuple[dict, dict]:
    """Per-class volumes with each instance's number within its class (see
    :func:`class_numbering`; semantic classes: 0/1)."""
    import fastremap
    ids = np.asarray(fastremap.unique(panoptic))
    labels, counts = {}, {}
    for name, sel, values, dtype, n in class_numbering(ids[ids > 0], card, label_divisor):
        labels[name] = map_ids(panoptic, sel, values, dtype)
        counts[name] = n
    return labels, counts


class _OneClass:
    """The renumbering of a single instance class's run (``run_stack(renumber=...)``): the
    final labels come out of the one relabelling pass, as :func:`split_classes` would
    give them, and the panoptic volume is made from them only when asked for."""

    def __init__(self, card, label_divisor: int | None):
        self.card, self.divisor = card, label_divisor
        self.ids = np.zeros(0, np.int64)

    def __call__(self, res: LinkResult) -> np.ndarray:
        mapping = res.mapping
        ids = np.unique(mapping)
        self.ids = ids[ids > 0]
        (self.name, sel, values, dtype, self.n), = class_numbering(self.ids, self.card, self.divisor)
        return map_ids(mapping, sel, values, dtype)

    def panoptic(self, labels: np.ndarray):
        """A function that makes the panoptic volume of ``labels`` (ids 1..N in the order of ``ids``)."""
        ids = self.ids
        return lambda: np.concatenate([[0], ids]).astype(dtype_for_max_label(int(ids.max(initial=0))))[labels]


def segment_3d(volume, model: str | LoadedModel = DEFAULT_MODEL, *, device: str = "auto",
               batch_size: int = 0, runtime: str = "auto", precision: str = "auto", threads: int | None = None,
               overlap: bool = True, progress: bool = False, voxel_size=None, cache_dir=None,
               keep_cache: bool = False, callback=None, output=None, overwrite: bool = False, inputs=(),
               preview=None, origin=None, blockwise: bool = False, block_shape=None, halo=None, n_workers=None,
               scheduler=None, devices=None, mask=None, exact_context: bool = True, client=None,
               params: Params3D | dict | None = None, **overrides) -> Result3D:
    """Panoptic 3D segmentation of a ZYX volume.

    Parameters
    ----------
    volume : (Z, Y, X) array or lazy array (zarr, h5py, memmap, dask).
    voxel_size : (Z, Y, X) nm of the input: written with the labels, drawn in the preview,
        and used to resample every plane to the model's pixel size (card ``voxel_size_nm``, or
        into its ``pixel_range_nm``) when they differ by more than 5 %: xy planes in-plane,
        xz / yz planes along z too, and an xz / yz stack along its own axis where that is a
        whole reduction (each network plane the mean of its planes,
        :meth:`~.resample.PixelPlan.stack_step`); labels come back on the input grid (``pixel_size``
        overrides the in-plane size, ``resample=False`` turns it off; ``result.pixel_size``
        says what was used).
    origin : (Z, Y, X) nm position of the first voxel (e.g. ``read_image(...).origin``): written
        with the labels as an OME-Zarr translation (needs ``voxel_size``; TIFF does not keep it).
    model : registered model name, card path or a loaded model.
    params : a :class:`~panoptem.params.Params3D` (or a dict of its fields);
        keyword arguments override its fields.
    batch_size : planes per network call; 0 (default) chooses from the plane size (many thin
        ortho-planes per call) and, on CUDA, the free GPU memory.
    runtime, precision, threads : how the network runs: ``auto``, ``torch`` or ``onnx``
        (ONNX Runtime, CPU); ``auto``, ``fp32``, ``bf16``, ``fp16`` (CUDA) or ``int8`` (CPU); intra-op
        threads (None: every core). See :mod:`panoptem.inference.runtime`.
    overlap : read ahead, and decode and link while the network computes the next
        planes (threads); False runs one stage after another (the same labels).
    **overrides : any field of :class:`~panoptem.params.Params3D`: the 2D
        parameters plus ``median_slices``, ``min_size``, ``min_extent``,
        ``inference_plane``, ``orthoplane``, ``pixel_vote_thr``,
        ``allow_one_view``, ``return_panoptic``, ``fusion``, ``iou_thr``,
        ``ioa_thr``, ``bridge_gaps``, ``label_erosion``, ``label_dilation``,
        ``fill_holes_in_segmentation`` (these three after linking, size filters
        and consensus, in that order; holes per xy plane) and ``chunk_size``
        (chunks of a streamed .zarr ``output``).
    blockwise : run block by block on Dask (see :func:`panoptem.distributed.segment_blockwise`):
        ``volume`` may then be a file path (each worker reads its blocks), ``output``
        must be ``.zarr``; ``block_shape``, ``halo`` (Z, Y, X), ``n_workers`` or
        ``scheduler`` or ``client`` (a ``distributed.Client`` of yours, left open), ``devices``,
        ``mask`` and ``exact_context`` apply.
    cache_dir : folder for network outputs; re-running with the same folder
        resumes an interrupted run and re-decodes a finished one without the network.
        With ``output`` and no ``cache_dir``, a hidden cache beside the output
        is used and removed on success (unless ``keep_cache``), so re-running
        an interrupted call resumes it.
    callback : ``callback(plane, done, total)`` after every batch; return False to cancel.
    output : path (.tif or .zarr) to write the result to: a single-class,
        one-plane run streams its labels there without holding the volume in
        memory (the result's ``labels`` then holds the written array opened
        lazily); other runs are computed in memory, then written (one file per
        class for several classes, ``NAME_xy`` etc. for returned stacks, see
        :func:`write_result`). What a killed run left beside the output is removed.
    preview : PNG file: evenly spaced xy planes (and xz, yz for ortho-plane) of the labels over
        the volume, with a scale bar from ``voxel_size``, the model, the parameters and the object
        count (:func:`panoptem.reporting.preview`; needs matplotlib). Reads only those planes.

    Returns
    -------
    :class:`Result3D`; ``result.labels["mitochondria"]`` holds ids 1..N;
    ``result.written`` describes the files written.

    Examples
    --------
    >>> import panoptem
    >>> res = panoptem.segment_3d(panoptem.load_sample(), median_slices=3)
    >>> mito = res.labels["mitochondria"]
    >>> int(mito.max()) == res.objects["mitochondria"] > 0
    True
    """
    p = params_with(Params3D, params, **overrides)
    if cache_dir is not None:
        cache_dir = Path(cache_dir).expanduser()
        from .cache import check_cache_dir
        check_cache_dir(cache_dir, [output, preview], inputs)
    if client is not None and not blockwise:
        raise PanoptemError("client= is a Dask client for blockwise runs; pass blockwise=True with it.")
    given = [k for k, v in dict(block_shape=block_shape, halo=halo, n_workers=n_workers, scheduler=scheduler,
                                devices=devices, mask=mask).items() if v is not None]
    if given and not blockwise:  # as the command line refuses them without --blockwise (they were ignored)
        raise PanoptemError(f"{', '.join(f'{k}=' for k in given)} apply to blockwise runs only; pass blockwise=True "
                            "with them.")
    if blockwise:
        return _blockwise(volume, model, output, p, dict(
            block_shape=block_shape, halo=halo, n_workers=n_workers, scheduler=scheduler, devices=devices,
            mask=mask, device=device, batch_size=batch_size or 4, voxel_size=voxel_size, origin=origin,
            cache_dir=cache_dir,
            overwrite=overwrite, progress=progress, exact_context=exact_context, runtime=runtime,
            precision=precision, threads=threads, client=client), preview, inputs)
    if not hasattr(volume, "ndim"):
        volume = as_array(volume, "volume")
    if volume.ndim != 3:  # checked before reading: a lazy 2D input may be far larger than memory
        raise PanoptemError(f"3D inference needs a ZYX volume, got shape {tuple(volume.shape)}; "
                            "use segment2d for 2D images.")
    if min(volume.shape) < 2:
        raise PanoptemError(f"The volume {volume.shape} is too thin for 3D inference; use segment2d --batch.")
    if preview is not None:
        from ..reporting._preview import prepare_preview
        preview = prepare_preview(preview, overwrite, inputs, [output])  # before the work: fail fast
    from .runtime import host_threads, network_threads, torch_threads
    predictor = Predictor(model, device=device, downsampling=p.downsampling, tile_size=p.tile_size,
                          batch_size=batch_size, runtime=runtime, precision=precision, threads=threads,
                          tta=p.tta, invert=p.invert)
    predictor.threads = network_threads(threads)  # the ONNX session is made later
    from .resample import planes_of
    from .segment2d import check_classes, pixel_plan
    check_classes(predictor.card, p)
    plan = pixel_plan(predictor.card, p, voxel_size, 3, "voxel_size")
    plan.check(planes_of(p))
    _check_memory(volume.shape, p, output, predictor.card)
    voxel_size = plan.voxel_size or voxel_size  # as run (pixel_size included): written with the labels
    from ..io.writers import check_origin
    origin = check_origin(origin, voxel_size, 3)
    ht = host_threads(predictor.runtime, predictor.model.device, threads)
    if output is None:
        with torch_threads(ht):
            res = _segment(volume, predictor, p, progress, cache_dir, callback, plan=plan, overlap=overlap)
        return _with_preview(res, preview, volume, voxel_size, predictor.card, p, overwrite)
    from .._atomic import discard, exclusive_output
    out = Path(output).expanduser()
    for path in output_paths(out, predictor.card, p):
        _check_new(path, overwrite, inputs)
    with exclusive_output(out):  # also removes what a killed run left for this output
        own_cache = cache_dir is None
        if own_cache:
            cache_dir = out.parent / f".{out.name}.panoptem-cache"
        work = out.parent / f".{out.name}.work"
        try:
            with torch_threads(ht):
                res = _segment(volume, predictor, p, progress, cache_dir, callback, plan=plan, reset_stale=own_cache,
                               work=work, output=out, voxel_size=voxel_size, overwrite=overwrite,
                               inputs=inputs, overlap=overlap, origin=origin)
        finally:
            discard(work, out)
        from .._atomic import KEPT, drop_resume_state
        if own_cache and not keep_cache:  # renamed first: a run killed while removing it leaves no half cache
            discard(cache_dir, out)
        elif own_cache:  # kept on purpose: another engine writing this output leaves it
            (Path(cache_dir) / KEPT).touch()
        drop_resume_state(out, "3d")  # the folders are named after the output as given
    return _with_preview(res, preview, volume, voxel_size, predictor.card, p, overwrite)


def _blockwise(volume, model, output, p: Params3D, kw: dict, preview, inputs) -> Result3D:
    """:func:`segment_3d` with ``blockwise=True``: the result of the distributed runner."""
    from ..distributed.segment import segment_blockwise
    if preview is not None:
        from ..reporting._preview import prepare_preview
        preview = prepare_preview(preview, kw["overwrite"], inputs, [output])
    r = segment_blockwise(volume, model, output, verbose=kw["progress"], **kw, **p.model_dump())
    first = next(iter(r.labels.values()))
    res = Result3D(r.labels, first, {}, r.objects, r.timings, streamed=True, written=r.written,
                   pixel_size=r.pixel_size)
    if preview is not None:
        from ..io import read_image
        from ..models.home import get_card
        card = model.card if isinstance(model, LoadedModel) else get_card(str(model))
        from ..io import ImageData
        image = (volume.data if isinstance(volume, ImageData) else
                 read_image(str(volume)).data if isinstance(volume, (str, Path)) else volume)
        _with_preview(res, preview, image, kw["voxel_size"], card, p, kw["overwrite"])
    return res


def _check_memory(shape, p: Params3D, output, card) -> None:
    """Refuse up front a run that holds its labels in memory (all but one plane of one class
    streamed to a file) when they alone exceed this machine's memory: it would fail hours later."""
    from .._memory import check_fits
    streams = not p.orthoplane and card.num_classes == 1 and not p.return_panoptic
    if streams and output is not None:
        return  # written block by block
    # uint32 volumes held at once: one per class, beside the panoptic stack of several classes, and
    # the three stacks of an ortho-plane consensus
    volumes = card.num_classes + (card.num_classes > 1) + 3 * (p.orthoplane and p.fusion == "consensus")
    check_fits(4 * volumes * int(np.prod(shape)), f"3D inference of {' x '.join(map(str, shape))} voxels in memory "
               "(its labels alone)", "run it block by block with --blockwise (blockwise=True in Python)"
               + (", or give an output file (output=), which the labels stream to" if streams else "") + ".")


def output_paths(output: Path, card, p: Params3D) -> list[Path]:
    """The files a run with ``output`` writes (see :func:`write_result`)."""
    stem, ext = _stem_ext(output)
    names = [c.name for c in card.classes]
    paths = [output] if len(names) == 1 else [output.with_name(f"{stem}_{n}{ext}") for n in names]
    if p.return_panoptic:
        planes = (list(PLANES) if p.fusion == "consensus" else ["xz", "yz"]) if p.orthoplane \
            else [p.inference_plane]
        paths += [output.with_name(f"{stem}_{pl}{ext}") for pl in planes]
    return paths


def _stem_ext(out: Path) -> tuple[str, str]:
    return out.name[: -len("".join(out.suffixes))] or out.name, "".join(out.suffixes) or ".tif"


def _check_new(path: Path, overwrite: bool, inputs) -> None:
    """Refuse early (before any work) an output that exists or is an input."""
    from ..io.writers import prepare_target
    prepare_target(path, overwrite, inputs)


def _segment(volume, predictor: Predictor, p: Params3D, progress: bool, cache_dir, callback, plan=None,
             reset_stale: bool = False, work: Path | None = None, output: Path | None = None,
             voxel_size=None, overwrite: bool = False, inputs=(), overlap: bool = True, origin=None) -> Result3D:
    """The run itself; with ``output`` (and a ``work`` folder), results are written there."""
    import time
    from .resample import planes_of
    intensity = predictor.intensity(volume)  # one range for the whole volume
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    stacks: dict[str, np.ndarray] = {}
    card = predictor.card
    by_plane = {pl: predictor.with_factor(plan.factor(pl), plan.neighbour_step(pl), plan.stack_step(pl))
                if plan is not None else predictor for pl in PLANES}
    record = plan.record(planes_of(p)) if plan is not None else None
    if record is not None and predictor.card.context_slices:  # where the neighbours the network saw lie
        record["neighbour_step"] = {pl: plan.neighbour_step(pl) for pl in planes_of(p)}
    from .._provenance import run_record
    prov = run_record("segment3d", card, p.model_dump(), inputs, record, runtime=predictor.runtime,
                      precision=predictor.precision)
    kw = dict(timings=timings, cache_dir=cache_dir, callback=callback, reset_stale=reset_stale, overlap=overlap)
    if p.orthoplane or p.inference_plane != "xy":  # xz / yz stacks see the sections edge-on
        with StageClock(timings)("read"):
            kw["blank_rows"], kw["padded_sections"] = sections_edge_on(volume)
    if output is not None and not p.orthoplane and card.num_classes == 1 and not p.return_panoptic:
        from ..io import open_label_writer, read_image
        work.mkdir(parents=True, exist_ok=True)
        with open_label_writer(output, volume.shape, np.uint32, voxel_size=voxel_size,
                               chunks=zarr_chunks(p.chunk_size, volume.shape),
                               overwrite=overwrite, inputs=inputs, origin=origin, provenance=prov) as w:
            n_obj = run_stack(volume, by_plane[p.inference_plane], p, p.inference_plane, intensity, progress,
                              work_dir=work, output=w, **kw)
        written = read_image(output).data
        timings["total_s"] = time.perf_counter() - t0
        name = card.classes[0].name
        summary = [{"output": str(output), "class": name, "objects": n_obj, "shape": list(written.shape),
                    "dtype": str(written.dtype)}]
        return Result3D({name: written}, written, {}, {name: n_obj}, timings, streamed=True, written=summary,
                        pixel_size=record, provenance=prov)
    post = p.label_erosion or p.label_dilation or p.fill_holes_in_segmentation
    one_class = card.num_classes == 1 and card.classes[0].kind == "instance"
    if not p.orthoplane and not p.return_panoptic and not post and one_class:
        # one class: its labels straight from the linked ids, one pass over the volume
        one = _OneClass(card, p.label_divisor)
        labels = run_stack(volume, by_plane[p.inference_plane], p, p.inference_plane, intensity, progress,
                           renumber=one, **kw)
        res = Result3D({one.name: labels}, one.panoptic(labels), {}, {one.name: one.n}, timings,
                       pixel_size=record, provenance=prov)
        return _write(res, output, voxel_size, overwrite, inputs, p, timings, t0, origin)
    if not p.orthoplane:
        panoptic = run_stack(volume, by_plane[p.inference_plane], p, p.inference_plane, intensity, progress, **kw)
        if p.return_panoptic:
            stacks[p.inference_plane] = panoptic
    elif p.fusion == "probability":
        sinks = {pl: np.zeros(volume.shape, np.uint8) for pl in ("xz", "yz")}
        done = _each_stack(volume, by_plane, p, list(sinks), intensity, progress, kw,
                           probability_sink=sinks)
        if p.return_panoptic:
            stacks.update(zip(sinks, done))
        del done
        panoptic = run_stack(volume, by_plane["xy"], p, "xy", intensity, progress,
                             extra_probability=list(sinks.values()), **kw)
        del sinks
    else:
        from .consensus import orthoplane_consensus
        compacted = None
        if one_class and not p.return_panoptic and not p.semantic_only:  # local ids: no compacting passes
            local = {pl: _LocalIds(narrow=pl != "xy") for pl in PLANES}  # xy: in place over its int32 ids
            done = _each_stack(volume, by_plane, p, PLANES, intensity, progress, kw, renumber=local)
            compacted = [(ids, local[pl].ids, local[pl].counts) for pl, ids in zip(PLANES, done)]
            del done
        else:
            stacks.update(zip(PLANES, _each_stack(volume, by_plane, p, PLANES, intensity, progress, kw)))
        alone = compacted is not None and not post  # the one class's labels 1..N come out directly
        with StageClock(timings)("consensus"):
            panoptic = orthoplane_consensus([stacks[pl] for pl in PLANES] if compacted is None else None,
                                            label_divisor=None if alone else p.label_divisor,
                                            pixel_vote_thr=p.pixel_vote_thr, allow_one_view=p.allow_one_view,
                                            min_size=p.min_size, min_extent=p.min_extent, compacted=compacted)
        del compacted
        if alone:
            name, n = card.classes[0].name, int(panoptic.max(initial=0))
            div = p.label_divisor or 0
            res = Result3D({name: panoptic}, lambda: _shifted(panoptic, div, n), {}, {name: n}, timings,
                           pixel_size=record, provenance=prov)
            return _write(res, output, voxel_size, overwrite, inputs, p, timings, t0, origin)
        if not p.return_panoptic:
            stacks = {}
    if p.label_erosion or p.label_dilation or p.fill_holes_in_segmentation:
        from .postprocess import postprocess_labels
        with StageClock(timings)("postprocess"):
            panoptic = postprocess_labels(panoptic, p.label_erosion, p.label_dilation,
                                          p.fill_holes_in_segmentation)
    with StageClock(timings)("split"):
        labels, counts = split_classes(panoptic, card, p.label_divisor)
    res = Result3D(labels, panoptic, stacks, counts, timings, pixel_size=record, provenance=prov)
    return _write(res, output, voxel_size, overwrite, inputs, p, timings, t0, origin)


def _shifted(labels: np.ndarray, div: int, n: int) -> np.ndarray:
    """The panoptic volume of a single class's labels 1..n: ``div + id`` where there is an object."""
    out = labels.astype(dtype_for_max_label(div + n))
    np.add(out, out.dtype.type(div), out=out, where=out > 0)
    return out


def _each_stack(volume, by_plane: dict, p: Params3D, planes, intensity, progress: bool, kw: dict,
                renumber: dict | None = None, probability_sink: dict | None = None) -> list:
    """:func:`run_stack` of each plane in turn (``renumber``, ``probability_sink``: per plane);
    with ``kw["overlap"]``, each stack completes (last decoding, linking, relabelling) in a
    thread while the next one's network runs (yielding to it on a CPU where the threads behind
    it were weighed cheaper than it: :class:`._pipeline.BehindNetwork`)."""
    from concurrent.futures import ThreadPoolExecutor

    def start(pl, deferred):
        return run_stack(volume, by_plane[pl], p, pl, intensity, progress, deferred=deferred,
                         renumber=(renumber or {}).get(pl), probability_sink=(probability_sink or {}).get(pl),
                         **kw)

    if not kw.get("overlap", True):
        return [start(pl, False) for pl in planes]
    with ThreadPoolExecutor(1) as tails:
        futures = [tails.submit(start(pl, True)) for pl in planes]
        return [f.result() for f in futures]


def _write(res: Result3D, output, voxel_size, overwrite: bool, inputs, p: Params3D, timings: dict,
           t0: float, origin=None) -> Result3D:
    """Write a finished in-memory run to ``output`` (if given) and record its total time."""
    import time
    if output is not None:
        with StageClock(timings)("write"):
            res.written = write_result(res, output, voxel_size=voxel_size, overwrite=overwrite, inputs=inputs,
                                       chunk_size=p.chunk_size, origin=origin)
    timings["total_s"] = time.perf_counter() - t0
    return res


def _with_preview(res: Result3D, path, volume, voxel_size, card, p: Params3D, overwrite: bool = False) -> Result3D:
    """Draw the preview of a finished run (when asked) from its panoptic volume."""
    if path is not None:
        from ..reporting import preview
        planes = PLANES if p.orthoplane else tuple(dict.fromkeys(("xy", p.inference_plane)))
        preview(res.panoptic, path, image=volume, voxel_size=voxel_size, planes=planes, model=card.name,
                params=p.model_dump(), n_objects=sum(res.objects.values()), overwrite=overwrite)
    return res


def write_result(res: Result3D, output, voxel_size=None, overwrite: bool = False, inputs=(),
                 chunk_size: int | Sequence[int] = 0, origin=None) -> list[dict]:
    """Write a :class:`Result3D`: one volume for a single-class model at
    ``output``, else ``NAME_<class>.EXT`` per class; ``NAME_xy.EXT`` etc. for
    returned stacks; Zarr chunks of ``chunk_size`` voxels per side, or per axis (0: automatic),
    each with the run's record (``res.provenance``). Returns one summary dict per file written."""
    from ..io.writers import write_labels_together
    out = Path(output).expanduser()
    stem, ext = _stem_ext(out)
    items = list(res.labels.items())
    files, written = [], []
    for name, vol in items:
        path = out if len(items) == 1 else out.with_name(f"{stem}_{name}{ext}")
        files.append((path, vol, zarr_chunks(chunk_size, vol.shape)))
        written.append({"output": str(path), "class": name, "objects": res.objects.get(name, 0),
                        "shape": list(vol.shape), "dtype": str(vol.dtype)})
    for plane, vol in res.stacks.items():
        path = out.with_name(f"{stem}_{plane}{ext}")
        files.append((path, vol, zarr_chunks(chunk_size, vol.shape)))
        written.append({"output": str(path), "stack": plane, "shape": list(vol.shape), "dtype": str(vol.dtype)})
    write_labels_together(files, voxel_size, overwrite, inputs, origin, res.provenance)
    return written  # the outputs named as given, as a streamed or a blockwise run names them
