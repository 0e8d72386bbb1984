"""Intensity normalisation, downsampling and padding before the network."""
from __future__ import annotations

import numpy as np

from ..errors import PanoptemError

#: percentiles that map to 0 and 1 before standardisation
LOW_PCT, HIGH_PCT = 0.5, 99.5
#: after percentile scaling to [0, 1], the network sees (x - MEAN) / STD
MEAN, STD = 0.5, 0.25
#: :func:`normalize` clips the scaled values to this far outside [0, 1]
CLIP_MARGIN = 0.5


def intensity_range(image: np.ndarray, max_samples: int = 2_000_000,
                    low_pct: float = LOW_PCT, high_pct: float = HIGH_PCT) -> tuple[float, float]:
    """Robust intensity range (low, high percentiles) of an image or volume.

    Works for any integer or float dtype. An array of more than
    ``max_samples`` values is sampled: one box from the middle of each cell
    of a grid (:func:`_sample_boxes`), so a lazy volume of any size is read in a few
    chunks only (whole-volume and blockwise runs thus agree on the range). Padding
    (:func:`padding_mask`) is left out.

    >>> intensity_range(np.arange(1000, 1101, dtype=np.uint16))
    (1000.5, 1099.5)
    """
    if not hasattr(image, "shape") or image.size <= max_samples:
        parts = [np.asarray(image)]
        inner = [(...,)]
    else:  # each box read with the margin that says which of its zeros are padding
        boxes = _sample_boxes(image.shape, max_samples)
        wide = [_widened(b, image.shape, PAD_WINDOW - 1) for b in boxes]
        parts = read_boxes(image, wide)
        inner = [tuple(slice(s.start - w.start, s.stop - w.start) for s, w in zip(b, wb)) for b, wb in zip(boxes, wide)]
    kept = []
    for b, box in zip(parts, inner):  # padding (see padding_mask) tells nothing of the data's range: left out
        pad = padding_mask(b) if b.ndim >= 2 else None
        b = b[box]
        kept.append(b.ravel() if pad is None else b[~pad[box]])
    a = np.concatenate(kept)
    if a.size == 0:  # nothing but padding
        a = np.concatenate([b.ravel() for b in parts])
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == bool):
        raise PanoptemError(f"Images of dtype {a.dtype} are not supported; convert to an integer or float type.")
    a = a.astype(_exact_float(a.dtype), copy=False)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        raise PanoptemError("The image holds no finite values; check the input file.")
    lo, hi = np.percentile(finite, [low_pct, high_pct])
    if hi <= lo:  # near-constant image: fall back to min/max
        lo, hi = float(finite.min()), float(finite.max())
    return float(lo), float(hi)


#: the most slices deep a box sampled from a volume is: neighbouring slices add little, and a
#: volume stored by slice (TIFF pages, per-slice chunks) decodes every slice a box touches whole
SAMPLE_DEPTH = 4


def _widened(box: tuple[slice, ...], shape, margin: int) -> tuple[slice, ...]:
    """``box`` with ``margin`` more pixels on both sides of its last two axes, within ``shape``."""
    k = max(len(box) - 2, 0)
    return box[:k] + tuple(slice(max(0, b.start - margin), min(n, b.stop + margin))
                           for b, n in zip(box[k:], shape[k:]))


def _sample_boxes(shape, max_samples: int) -> list[tuple[slice, ...]]:
    """Boxes centred in the cells of a grid, holding about ``max_samples`` voxels together: an
    image's grid has up to 4 x 4 cells, a volume's 4 x 8 x 8 with slabs at most
    :data:`SAMPLE_DEPTH` slices deep (on a 165 x 768 x 1024 volume 256 boxes of 4 x 44 x 44, from
    16 slices; on 41 crops of the Lucchi volume closer to the crop's own percentiles than
    4 x 4 x 4 cubes, which read 124 slices)."""
    import itertools
    volume = len(shape) == 3
    cells = [min(c, n) for c, n in zip((4, 8, 8) if volume else (4,) * len(shape), shape)]
    per_box = max_samples / np.prod(cells)
    if volume:
        depth = max(1, min(SAMPLE_DEPTH, shape[0] // cells[0]))
        side = max(1, int((per_box / depth) ** 0.5))
        sides = [depth, side, side]
    else:
        sides = [max(1, int(per_box ** (1 / len(shape))))] * len(shape)
    boxes = []
    for idx in itertools.product(*(range(c) for c in cells)):
        box = []
        for i, c, n, side in zip(idx, cells, shape, sides):
            lo, hi = n * i // c, n * (i + 1) // c
            b = min(side, hi - lo)
            start = lo + (hi - lo - b) // 2
            box.append(slice(start, start + b))
        boxes.append(tuple(box))
    return boxes


#: the most bytes :func:`read_boxes` reads as one block
READ_BLOCK_BYTES = 64 << 20


def _chunks_touched(box: tuple[slice, ...], chunks: tuple[int, ...]) -> int:
    return int(np.prod([-(-b.stop // c) - b.start // c for b, c in zip(box, chunks)]))


def read_boxes(image, boxes: list[tuple[slice, ...]]) -> list[np.ndarray]:
    """``image[box]`` for each box. Where the image is stored in chunks (a lazy array with
    ``chunks``), boxes that differ only in their last two axes, or else only in the last one,
    are read as one block when that block touches fewer chunks: a TIFF stored in strips as
    wide as the image decodes each strip once, not once per box (on a deflate-compressed
    165 x 768 x 1024 TIFF the 4 x 4 x 4 cubes sampled before slabs took 2.3 s box by box,
    0.28 s so), while a volume in small chunks is still read box by box (a block is read only where it touches no more chunks than the boxes would, and
    holds at most :data:`READ_BLOCK_BYTES`: pages stored as one strip each can be huge)."""
    chunks = getattr(image, "chunks", None)  # zarr, h5py, panoptem's lazy arrays (dask's are tuples of tuples)
    if not chunks or len(chunks) != len(image.shape) or not all(isinstance(c, (int, np.integer)) for c in chunks):
        return [np.asarray(image[b]) for b in boxes]
    out: list = [None] * len(boxes)
    k = min(2, len(chunks))
    for members in _alike(boxes, range(len(boxes)), k):
        rows = _alike(boxes, members, 1) if k > 1 else [members]
        each = [_plan(boxes, row, 1, chunks, image.dtype) for row in rows]
        block, cost = _plan(boxes, members, k, chunks, image.dtype) if k > 1 else (None, 0)
        if block is not None and cost <= sum(c for _, c in each):  # as few chunks, in one read
            _read_block(image, boxes, members, block, out)
            continue
        for row, (block, _) in zip(rows, each):
            if block is not None:
                _read_block(image, boxes, row, block, out)
            else:
                for i in row:
                    out[i] = np.asarray(image[boxes[i]])
    return out


def _alike(boxes, members, k: int) -> list[list[int]]:
    """``members`` grouped by their boxes' extent on every axis but the last ``k``."""
    groups: dict[tuple, list[int]] = {}
    for i in members:
        groups.setdefault(tuple((s.start, s.stop) for s in boxes[i][:-k]), []).append(i)
    return list(groups.values())


def _plan(boxes, members: list[int], k: int, chunks, dtype) -> tuple[tuple[slice, ...] | None, int]:
    """The block bounding the boxes ``members`` (alike but in their last ``k`` axes) if it touches
    fewer chunks than the boxes one by one and is not too large (else None), and the chunks the
    way chosen touches."""
    apart = sum(_chunks_touched(boxes[i], chunks) for i in members)
    if len(members) < 2:
        return None, apart
    n = len(chunks)
    block = (*boxes[members[0]][:-k], *(slice(min(boxes[i][a].start for i in members),
                                              max(boxes[i][a].stop for i in members)) for a in range(n - k, n)))
    together = _chunks_touched(block, chunks)
    nbytes = int(np.prod([b.stop - b.start for b in block], dtype=np.int64)) * np.dtype(dtype).itemsize
    return (block, together) if together < apart and nbytes <= READ_BLOCK_BYTES else (None, apart)


def _read_block(image, boxes, members: list[int], block: tuple[slice, ...], out: list) -> None:
    """Read ``block`` once and cut the boxes ``members`` from it into ``out``."""
    a = np.asarray(image[block])
    for i in members:
        out[i] = a[tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(boxes[i], block))]


def _exact_float(dtype) -> type:
    """float32 for the dtypes it holds exactly (up to 16-bit integers, float16/32), else float64."""
    dt = np.dtype(dtype)
    return np.float32 if dt.itemsize <= 2 or dt == np.float32 else np.float64


def dtype_range(image) -> tuple[float, float]:
    """``(0, dtype maximum)`` for integer images, ``(0, 1)`` for float ones."""
    dt = np.dtype(image.dtype)
    if np.issubdtype(dt, np.integer):
        return 0.0, float(np.iinfo(dt).max)
    return 0.0, 1.0


def to_unit(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low`` to 0 and ``high`` to 1, clipped to :data:`CLIP_MARGIN` beyond; a new float32
    array (NaN stays NaN). ``low`` above ``high`` inverts the contrast. Where the range is a
    single value (a uniform image: a blank section, a grey fill) that value is the mean grey 0.5
    and any other lies beyond the ends: no contrast, nothing to see, not the darkest grey (which
    looks like membranes and matrix).

    >>> to_unit(np.array([7, 7, 9]), 7, 7).tolist(), to_unit(np.array([10, 20]), 20, 10).tolist() == [1, 0]
    ([0.5, 0.5, 1.5], True)
    """
    image = np.asarray(image)
    narrow = np.asarray(high, np.float32) - np.asarray(low, np.float32)
    if _exact_float(image.dtype) == np.float32 and np.all(np.isfinite(narrow)):
        x = np.array(image, dtype=np.float32)  # a copy of our own, changed in place from here
        x -= low
        span = narrow
    else:  # 2**30 + 25 is 2**30 in float32: subtract first, in float64
        x = np.subtract(image, np.asarray(low, np.float64), dtype=np.float64)
        span = np.asarray(high, np.float64) - np.asarray(low, np.float64)
        if np.all(np.isfinite(span.astype(np.float32))):
            x, span = x.astype(np.float32), span.astype(np.float32)
        else:  # a range past float32's (+-3e38): divide in float64 too
            x = (x / np.where(np.abs(span) > 0, span, 1.0)).astype(np.float32)
            span = (np.abs(span) > 0).astype(np.float32)
    flat = ~(np.abs(span) > 0)  # one value per range given (one per plane, or the whole image's)
    x /= np.where(flat, 1.0, span)
    if np.any(flat):
        const = np.broadcast_to(flat, x.shape)
        x[const] = 0.5 + np.sign(x[const]) * (0.5 + CLIP_MARGIN)
    np.clip(x, -CLIP_MARGIN, 1 + CLIP_MARGIN, out=x)
    return x


def normalize(image: np.ndarray, low: float, high: float, mean: float = MEAN, std: float = STD) -> np.ndarray:
    """Map ``low`` to 0 and ``high`` to 1 (:func:`to_unit`; ``low`` above ``high`` inverts the
    contrast) then standardise; returns float32.

    Values outside the range are clipped to a small margin, so a 16-bit image
    with a narrow range becomes as contrasty as an 8-bit one; values that are not
    numbers become the mean grey.
    """
    x = to_unit(image, low, high)
    if not np.issubdtype(np.asarray(image).dtype, np.integer):
        x[np.isnan(x)] = 0.5
    x -= mean
    x /= std
    return x


def integer_block_means(planes: np.ndarray, factor: int) -> np.ndarray:
    """Means of the ``factor`` x ``factor`` windows of integer ``(..., H, W)`` planes (the
    last of an axis cut at its end, as :func:`downsample` cuts it), as float32: summed
    exactly in integers, divided once (:func:`downsample` of the same planes as float32,
    without rounding on the way)."""
    f = int(factor)
    if planes.dtype.itemsize == 1 and f * f <= 256:  # 256 bytes add up within 16 bits
        wide = np.uint16 if planes.dtype.kind == "u" else np.int16
    else:
        wide = np.int64
    sums = _window_sums(_window_sums(planes, -2, f, wide), -1, f, wide)
    h, w = planes.shape[-2:]
    if h % f == 0 and w % f == 0:
        return np.multiply(sums, np.float32(1.0 / (f * f)), dtype=np.float32)
    count = np.outer(_window_widths(h, f), _window_widths(w, f))
    return np.multiply(sums, (1.0 / count).astype(np.float32), dtype=np.float32)


def _window_widths(m: int, f: int) -> np.ndarray:
    """Pixels in each window of ``f`` along an axis of ``m`` (the last one cut at the end)."""
    widths = np.full(-(-m // f), f, np.int64)
    widths[-1] = m - f * (len(widths) - 1)
    return widths


def _along(axis: int, a, b, step=None) -> tuple:
    """Index of ``[a:b:step]`` along ``axis`` (-1 or -2) of an array."""
    return (Ellipsis, slice(a, b, step)) + (slice(None),) * (-axis - 1)


def _window_sums(x: np.ndarray, axis: int, f: int, dtype) -> np.ndarray:
    """Sums of windows of ``f`` pixels along ``axis`` (-1 or -2) of ``x`` in ``dtype``, the last
    window cut at the axis's end: strided views added up."""
    m = x.shape[axis]
    whole = m - m % f
    shape = list(x.shape)
    shape[axis] = -(-m // f)
    out = np.empty(shape, dtype)
    head = out[_along(axis, 0, whole // f)]
    head[...] = x[_along(axis, 0, whole, f)]
    for j in range(1, f):
        head += x[_along(axis, j, whole, f)]
    if whole < m:
        out[_along(axis, -1, None)] = x[_along(axis, whole, None)].sum(axis=axis, keepdims=True, dtype=dtype)
    return out


def means_first(planes: np.ndarray, low, high, factor: int) -> bool:
    """Whether the network input of integer ``planes`` may be made by averaging blocks of
    ``factor`` before :func:`normalize`: the means are linear, and no pixel lies far enough
    outside ``[low, high]`` for normalize to clip it (the dtype's range, or else the planes'
    own, within the clip margin), so the order changes nothing but float rounding."""
    if factor < 2 or not np.issubdtype(planes.dtype, np.integer) or _exact_float(planes.dtype) != np.float32:
        return False
    if not planes.size:
        return False
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    low, high = np.minimum(low, high), np.maximum(low, high)  # an inverted range clips the same values
    span = np.where(high > low, high - low, 1.0)
    lo, hi = low - CLIP_MARGIN * span, high + CLIP_MARGIN * span
    info = np.iinfo(planes.dtype)
    if np.all(lo <= info.min) and np.all(hi >= info.max):
        return True
    return bool(np.all(lo <= planes.min()) and np.all(hi >= planes.max()))


def downsample(batch: np.ndarray, factor: int) -> np.ndarray:
    """Shrink ``(..., H, W)`` float32 planes by the whole ``factor`` to ``ceil(H/f) x ceil(W/f)``:
    output pixel ``i`` is the mean of input pixels ``f*i`` to ``f*i + f - 1`` (the last one of an
    axis whose length is not a multiple of ``f``: of the pixels left). Every output pixel
    covers the input pixels the labels come back to (:func:`~.decode._upsample_nearest`), and a
    part of a plane starting on a multiple of ``f`` gives the whole plane's values there (tiles,
    blocks)."""
    if factor == 1:
        return batch
    x = np.asarray(batch, np.float32)
    for axis in (-2, -1):
        x = _window_mean(x, axis, int(factor))
    return x


def _window_mean(x: np.ndarray, axis: int, f: int) -> np.ndarray:
    """Means of windows of ``f`` pixels along ``axis`` (-1 or -2) of float32 ``x``, the last
    window cut at the axis's end (see :func:`downsample`), added up in float32 (a window
    holds only a few pixels)."""
    out = _window_sums(x, axis, f, np.float32)
    m = x.shape[axis]
    whole = m - m % f
    out[_along(axis, 0, whole // f)] *= np.float32(1.0 / f)
    if whole < m:
        out[_along(axis, -1, None)] *= np.float32(1.0 / (m - whole))
    return out


def linear_resize(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The last two axes of ``x`` resized to ``shape`` by bilinear interpolation, pixel centres
    aligned (PyTorch's ``interpolate(mode="bilinear", align_corners=False)``, to float32
    rounding), without antialiasing (made for enlarging; it shrinks by sampling, as PyTorch
    does). Float32; rows first, then columns.

    >>> linear_resize(np.array([[0.0, 4.0]]), (1, 4)).tolist()
    [[0.0, 1.0, 3.0, 4.0]]
    """
    x = np.asarray(x, np.float32)
    for axis, n in ((x.ndim - 2, int(shape[0])), (x.ndim - 1, int(shape[1]))):
        if x.shape[axis] != n:
            x = _linear_axis(x, n, axis)
    return np.ascontiguousarray(x)


def _linear_axis(x: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Bilinear resizing of ``axis`` (counted from the front) of ``x`` (float32) to ``n`` pixels."""
    m = x.shape[axis]

    def at(a, b=None):  # x[..., a:b, ...] along the axis (a view)
        return x[(slice(None),) * axis + (slice(a, b),)]

    if n % m == 0 and m > 1:  # a whole factor f: output pixel f*i + p lies at i + (p + 0.5) / f - 0.5
        f = n // m
        out = np.empty(x.shape[:axis + 1] + (f,) + x.shape[axis + 1:], np.float32)
        step = np.subtract(at(1), at(0, -1))  # x[i + 1] - x[i]
        part = np.empty_like(step)
        first, last = (slice(None),) * axis + (0,), (slice(None),) * axis + (-1,)
        for p in range(f):
            w = (p + 0.5) / f - 0.5
            o = out[(slice(None),) * (axis + 1) + (p,)]  # the output pixels f*i + p
            if w < 0:  # between i - 1 and i; the first pixel clamps to x[0]
                np.multiply(step, np.float32(-w), out=part)
                np.subtract(at(1), part, out=o[(slice(None),) * axis + (slice(1, None),)])
                o[first] = x[first]
            elif w > 0:  # between i and i + 1; the last pixel clamps to x[-1]
                np.multiply(step, np.float32(w), out=part)
                np.add(at(0, -1), part, out=o[(slice(None),) * axis + (slice(0, -1),)])
                o[last] = x[last]
            else:
                o[...] = x
        return out.reshape(x.shape[:axis] + (n,) + x.shape[axis + 1:])
    src = np.maximum((np.arange(n, dtype=np.float64) + 0.5) * (m / n) - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.intp), m - 1)
    i1 = np.minimum(i0 + 1, m - 1)
    out = np.take(x, i0, axis=axis)
    part = np.take(x, i1, axis=axis)
    part -= out
    part *= (src - i0).astype(np.float32).reshape((n,) + (1,) * (x.ndim - axis - 1))
    out += part
    return out


#: the side of the all-zero squares that mark padding (see :func:`padding_mask`): wide enough that
#: dark structures clipped to 0 by a contrast stretch are rarely taken for it; odd, so centred
PAD_WINDOW = 33
#: what network outputs kept in a cache were cleared on (zero squares of PAD_WINDOW, planes of one
#: value), and how padding enters the global context: outputs kept under another rule are made anew
PADDING_RULE = (f"{PAD_WINDOW} px zero or not-finite squares; uniform planes, not-finite values left out "
                "(before resampling; blockwise: whole planes); blank sections edge-on; edge cells by their "
                "part in the plane; global context over the cells by their part that is not padding; the network "
                "given the box within a frame of padding; judged around tiles and regions; xz / yz planes of "
                f"volumes under {PAD_WINDOW} sections take their sections' padding")


def padding_mask(planes: np.ndarray) -> np.ndarray | None:
    """Where ``(..., H, W)`` planes hold padding: pixels of 0 (or not a finite number) inside some
    square of such pixels, :data:`PAD_WINDOW` on a side, lying in the plane, what aligning a stack
    or stitching tiles leaves around the data (or missing data). The network is given the mean grey there and finds nothing there: black
    padding is darker than anything its intensity range expects, and was found as one huge
    object. None where the planes hold none (most: the test costs one comparison then).

    >>> p = np.full((1, 40, 60), 90, np.uint8); p[0, :, :36] = 0; p[0, 5, 50] = 0
    >>> m = padding_mask(p); int(m.sum()), bool(m[0, 5, 50])
    (1440, False)
    """
    planes = np.asarray(planes)
    zero = planes == 0
    if planes.dtype.kind in "fc":  # missing data (NaN, inf) is padding as zeros are
        zero |= ~np.isfinite(planes)
    if np.count_nonzero(zero) < PAD_WINDOW * PAD_WINDOW:
        return None
    from scipy import ndimage
    size = (1,) * (zero.ndim - 2) + (PAD_WINDOW, PAD_WINDOW)
    # squares wholly inside the plane: beyond its edge counts as not zero
    inner = ndimage.minimum_filter(zero.view(np.uint8), size=size, mode="constant", cval=0)
    if not inner.any():
        return None
    return ndimage.maximum_filter(inner, size=size, mode="constant", cval=0).astype(bool) & zero


def padding_in(planes, box: tuple[slice, ...]) -> np.ndarray | None:
    """:func:`padding_mask` of ``planes[box]`` (a numpy or lazy array of planes; ``box``: a slice
    per axis, the last two the rows and columns) judged with the ``PAD_WINDOW - 1`` pixels around
    it where the planes have them: a band of padding that the box cuts, or a plane thinner than
    the window made of its rows or columns, is padding as in the whole planes. None where the
    box holds none."""
    shape = tuple(planes.shape)
    box = tuple(slice(*b.indices(n)[:2]) for b, n in zip(box, shape))
    wide = _widened(box, shape, PAD_WINDOW - 1)
    pad = padding_mask(np.asarray(planes[wide]))
    if pad is None:
        return None
    pad = pad[tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide))]
    return pad if pad.any() else None


def may_hold_padding(planes: np.ndarray) -> bool:
    """Whether ``planes`` hold enough zeros (or values that are not finite numbers) for a square
    of :func:`padding_mask` or for part of one that lies beyond them: a test of one comparison."""
    zero = planes == 0
    if planes.dtype.kind in "fc":
        zero |= ~np.isfinite(planes)
    return np.count_nonzero(zero) >= PAD_WINDOW * PAD_WINDOW


def uniform_planes(planes: np.ndarray) -> np.ndarray | None:
    """Which ``(..., H, W)`` planes hold a single value throughout (a blank or grey-filled
    section): a bool per plane (shape ``planes.shape[:-2]``), or None where none does. There is
    nothing to find in them, and a network given a featureless plane may call all of it one
    object.

    >>> uniform_planes(np.stack([np.full((2, 2), 7), np.eye(2)])).tolist()
    [True, False]
    """
    planes = np.asarray(planes)
    if planes.size == 0:
        return None
    same = one_value(*finite_extremes(planes, (-2, -1)))
    return same if same.any() else None


def finite_extremes(a: np.ndarray, axis) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest value of ``a`` along ``axis``, values that are not finite numbers
    (missing data) left out: NaN where there is none (strided views of integers are not copied)."""
    a = np.asarray(a)
    if a.dtype.kind != "f":
        return a.min(axis=axis), a.max(axis=axis)
    a = np.where(np.isfinite(a), a, np.nan)
    with np.errstate(invalid="ignore"):
        return np.fmin.reduce(a, axis=axis), np.fmax.reduce(a, axis=axis)


def one_value(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Whether planes of these :func:`finite_extremes` hold one value, or none that is a number."""
    lo = np.asarray(lo)
    return (lo == hi) | np.isnan(lo) if lo.dtype.kind == "f" else lo == hi


def pad_to_multiple(batch, factor: int):
    """Pad the last two axes at the bottom/right so they are multiples of ``factor``: by
    reflection, or by repeating the edge where an image is too small to reflect. Takes a
    numpy array or a torch tensor. Returns the padded batch and the original ``(H, W)``.
    """
    h, w = batch.shape[-2:]
    ph, pw = (-h) % factor, (-w) % factor
    if ph or pw:
        reflect = ph < h and pw < w
        if isinstance(batch, np.ndarray):
            widths = [(0, 0)] * (batch.ndim - 2) + [(0, ph), (0, pw)]
            batch = np.pad(batch, widths, mode="reflect" if reflect else "edge")
        else:
            import torch.nn.functional as F
            batch = F.pad(batch, (0, pw, 0, ph), mode="reflect" if reflect else "replicate")
    return batch, (h, w)
