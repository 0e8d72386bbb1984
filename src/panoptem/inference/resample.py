"""Pixel size: the grid the network sees.

A model is trained at one pixel size (its card's ``voxel_size_nm``); a model trained with
scale augmentation segments best over a range of pixel sizes (card ``pixel_range_nm``, as
measured). When the input's pixel size is known (from the file, or given), each plane is
resampled so that the network sees pixels of the model's size, or inside its range (see
:func:`working_pixel`) — by any factor, not only whole ones — and the labels come back on
the input grid. Image Downsampling then shrinks further: the network sees
``that pixel x downsampling`` nm.

- A ratio within :data:`TOLERANCE` of 1 is no resampling; one within it of a
  whole number (2, 3, ...) is that whole number, which runs as plain integer
  downsampling, and one within it of 1/2, 1/3, ... is that whole enlargement; any other is the
  nearest fraction p/q with q <= 16 (:func:`nice_fraction`), resampled with exact per-phase
  weights, so that blockwise runs cut planes into parts that give the whole plane's values
  (see :func:`resample_planes`).
- Unknown pixel size (input or model): no resampling, as before; the plan says so.
- 3D: each plane's two axes are resampled, so xy planes of an anisotropic stack are
  resampled in-plane only, while xz / yz planes (ortho-plane or ``inference_plane``)
  are also stretched or shrunk along z to the same pixel size. An xz / yz stack is also
  brought to the network's pixels along its own axis (y or x) when that is a whole
  reduction: each network plane is the mean of that many planes (:meth:`PixelPlan.stack_step`).
  An xy stack keeps every section.

>>> plan = plan_pixels(5.0, (10.0, 10.0))
>>> plan.factor("xy")
(0.5, 0.5)
>>> plan_pixels(5.0, (5.1, 5.1)).factor("xy"), plan_pixels(5.0, (2.45, 2.45), downsampling=2).factor("xy")
((1.0, 1.0), (4.0, 4.0))
>>> plan_pixels(5.0, None).factor("xy")
(1.0, 1.0)
>>> rng = (6.0, 10.0)
>>> plan_pixels(5.0, (5.0, 5.0), working=rng).factor("xy"), plan_pixels(5.0, (8.0, 8.0), working=rng).factor("xy")
((2.0, 2.0), (1.0, 1.0))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import PanoptemError

#: relative difference of pixel sizes below which nothing is resampled (and to whole factors)
TOLERANCE = 0.05
#: the most a plane axis is enlarged (input pixels this many times the model's) ...
MAX_ENLARGE = 8.0
#: ... and the most it is reduced (without Image Downsampling)
MAX_REDUCE = 64.0
#: the two ZYX axes of each plane of a volume
PLANE_AXES = {"xy": (1, 2), "xz": (0, 2), "yz": (0, 1)}


def snap(ratio: float) -> float:
    """``ratio`` (model pixel / input pixel) as run: 1 within :data:`TOLERANCE`, a whole
    number (or one over a whole number) within it of one, else the nearest
    :func:`nice_fraction`.

    >>> snap(1.03), snap(2.07), snap(0.5), snap(1.5), snap(0.49), snap(6 / 5.37)
    (1.0, 2.0, 0.5, 1.5, 0.5, 1.1111111111111112)
    """
    if abs(ratio - 1.0) <= TOLERANCE:
        return 1.0
    k = round(ratio)
    if k >= 2 and abs(ratio / k - 1.0) <= TOLERANCE:
        return float(k)
    k = round(1.0 / ratio)
    if k >= 2 and abs(ratio * k - 1.0) <= TOLERANCE:
        return 1.0 / k
    return float(nice_fraction(ratio))


#: the largest denominator and numerator of a resampling factor (see :func:`nice_fraction`)
MAX_DENOMINATOR, MAX_NUMERATOR = 16, 64


def nice_fraction(ratio: float) -> Fraction:
    """``ratio`` as the nearest fraction ``p/q`` with ``q <= 16`` and ``p <= 64`` (the smaller
    ``q`` on ties): within 4 % of it for ratios the snapping leaves (enlargements past x4 are the
    coarsest), within 1 % for most.
    Every output pixel of a given phase (``j mod q``) then takes the same input pixels relative
    to ``p * (j // q)`` with the same weights, so a plane can be resampled in parts whose edges
    lie on multiples of ``p`` input / ``q`` output pixels and give the whole plane's values
    bit for bit (see :func:`resample_planes`; blockwise runs do so).

    >>> nice_fraction(6 / 5.5), nice_fraction(6 / 5.37), nice_fraction(5 / 8)
    (Fraction(12, 11), Fraction(10, 9), Fraction(5, 8))
    """
    best = Fraction(max(1, round(ratio)))
    for q in range(2, MAX_DENOMINATOR + 1):
        p = round(ratio * q)
        if 1 <= p <= MAX_NUMERATOR and abs(p / q - ratio) < abs(best - ratio) - 1e-12:
            best = Fraction(p, q)
    return best


def as_fraction(factor: float) -> Fraction:
    """A factor of a pixel plan (a whole number, one over a whole number, or :func:`nice_fraction`) as
    the exact fraction it stands for.

    >>> as_fraction(float(Fraction(12, 11))), as_fraction(0.25), as_fraction(3.0), as_fraction(1 / 96)
    (Fraction(12, 11), Fraction(1, 4), Fraction(3, 1), Fraction(1, 96))
    """
    # a plan's fractions times Image Downsampling (up to 64) have small denominators; any other
    # fraction this near the float differs from it by far more than the float's rounding
    return Fraction(factor).limit_denominator(1 << 20)


def working_pixel(v: float, lo: float, hi: float) -> float:
    """The pixel size (nm) the network is given for input pixels of ``v`` nm and a model that
    segments best at ``lo``..``hi`` nm: ``v`` itself inside the range (give or take
    :data:`TOLERANCE`); a finer input reduced by the smallest whole factor that lands in the
    range (plain downsampling: block means, and blockwise runs can do it), else exactly to
    ``lo``; a coarser input enlarged to ``hi``.

    >>> working_pixel(5.0, 6.0, 10.0), working_pixel(3.0, 6.0, 10.0), working_pixel(2.5, 6.0, 10.0)
    (10.0, 6.0, 7.5)
    >>> working_pixel(8.0, 6.0, 10.0), working_pixel(5.5, 6.0, 10.0), working_pixel(20.0, 6.0, 10.0)
    (8.0, 6.0, 10.0)
    """
    a, b = lo * (1 - TOLERANCE), hi * (1 + TOLERANCE)
    if a <= v <= b:
        return v
    if v > b:
        return hi
    k = math.ceil(a / v)
    return k * v if k * v <= b else lo


def _fmt(v: float) -> str:
    return f"{v:.4g}"


@dataclass(frozen=True)
class PixelPlan:
    """How an input is brought to the model's pixel size.

    ``model_nm``: the pixel size the network is given (the model's, or inside its ``working``
    range, see :func:`working_pixel`; None: unknown). ``voxel_size``: the input's,
    nm per axis (2 for an image, 3 for a volume; None: unknown). ``source``: where that
    came from (``"file"``, ``"voxel_size"`` (given in Python), ``"pixel_size"``, ``"file + pixel_size"``,
    ``"voxel_size + pixel_size"``, ``"unknown"``).
    ``ratios``: per axis, model pixel / input pixel as run (1: not resampled).
    ``neighbour_nm``: how far apart a model that sees neighbouring planes had them in training
    (None: ``model_nm``). ``working``: the pixel sizes (nm) the model segments best at (card
    ``pixel_range_nm``), if it says.
    """

    model_nm: float | None
    voxel_size: tuple[float, ...] | None
    source: str
    resample: bool
    downsampling: int
    ratios: tuple[float, ...]
    z_assumed: bool = False
    neighbour_nm: float | None = None
    working: tuple[float, float] | None = None

    def _model(self) -> str:
        """The model's pixel size in words: its range, or its one size."""
        if self.working:
            return f"the model's {_fmt(self.working[0])}-{_fmt(self.working[1])} nm"
        return f"the model's {_fmt(self.model_nm)} nm"

    def _best(self) -> str:
        """What pixels suit the model, in words."""
        if self.working:
            return f"the model segments best at {_fmt(self.working[0])}-{_fmt(self.working[1])} nm pixels"
        return f"the model was trained at {_fmt(self.model_nm)} nm pixels"

    def factor(self, plane: str = "xy") -> tuple[float, float]:
        """Input pixels per network pixel along the plane's two axes (rows, columns),
        Image Downsampling included."""
        a, b = (0, 1) if len(self.ratios) == 2 else PLANE_AXES[plane]
        d = self.downsampling
        return (self.ratios[a] * d, self.ratios[b] * d)

    def neighbour_step(self, plane: str = "xy") -> float:
        """How many of the stack's planes apart a model's neighbouring planes lie, for a model
        that sees each plane with its neighbours (card ``context_slices``), trained with them
        ``neighbour_nm`` apart (default: the model's pixel size): that over the input's voxel
        along the stack's axis (0.125 for 40 nm serial sections and a 5 nm model); 1 where it
        is unknown, within 5 % or resampling is off."""
        if len(self.ratios) != 3:
            return 1.0
        axis = 3 - sum(PLANE_AXES[plane])
        m = self.neighbour_nm
        if m is None or m == self.model_nm or self.voxel_size is None or not self.resample:
            return self.ratios[axis]
        return snap(float(m) / self.voxel_size[axis])

    def stack_step(self, plane: str = "xy") -> int:
        """How many of a stack's planes make one network plane: for xz / yz stacks, the whole
        factor by which their axis (y or x, whose spacing is the in-plane pixel size) is
        reduced to the network's pixels; each network plane is the mean of that many planes
        and its labels stand for all of them. 1 for xy stacks (every section is segmented),
        for ratios that are not a whole reduction, and with resampling off.

        >>> p = plan_pixels(5.0, (5.0, 2.5, 2.5))
        >>> p.stack_step("xy"), p.stack_step("xz"), p.stack_step("yz")
        (1, 2, 2)
        """
        if len(self.ratios) != 3 or plane == "xy":
            return 1
        r = self.ratios[3 - sum(PLANE_AXES[plane])]
        return int(r) if r >= 2 and float(r).is_integer() else 1

    def resampled(self, planes=("xy",)) -> bool:
        """Whether any axis of these planes is resampled (beyond Image Downsampling)."""
        if len(self.ratios) == 2:
            return any(r != 1.0 for r in self.ratios)
        return any(self.ratios[ax] != 1.0 for pl in planes for ax in PLANE_AXES[pl])

    def check(self, planes) -> None:
        """Refuse factors too large to be a real difference of pixel sizes."""
        for pl in planes:
            a, b = (0, 1) if len(self.ratios) == 2 else PLANE_AXES[pl]
            for ax in (a, b):
                r = self.ratios[ax]
                if r == 1.0:
                    continue
                if r < 1.0 / MAX_ENLARGE or r > MAX_REDUCE:
                    vs = self.voxel_size[ax]
                    what = "z" if len(self.ratios) == 3 and ax == 0 else "the image"
                    hint = ("run one xy stack (ortho-plane is for near-isotropic volumes)" if what == "z"
                            else "pass --pixel-size NM if the file's metadata is wrong")
                    raise PanoptemError(
                        f"The {pl} planes would be resampled x{_fmt(1 / r)} along {what} ({_fmt(vs)} nm pixels "
                        f"to {_fmt(self.model_nm)} nm), beyond the x{_fmt(1 / MAX_REDUCE)}..x"
                        f"{_fmt(MAX_ENLARGE)} panoptem accepts; {hint}, or turn resampling off (--no-resample).")

    def describe(self, planes=("xy",)) -> str:
        """One sentence: the pixel size used, where it came from, and what was resampled."""
        d = self.downsampling
        ds = f", then Image Downsampling x{d}" if d > 1 else ""
        if self.model_nm is None:
            return (f"the model's pixel size is unknown (its card gives no voxel_size_nm): no resampling{ds}.")
        if self.voxel_size is None:
            return (f"input pixel size unknown (the file does not say): no resampling{ds}; the network sees the "
                    f"image's pixels as they are ({self._best()}). Pass --pixel-size NM to resample to the "
                    "model's pixel size.")
        vs = " x ".join(_fmt(v) for v in self.voxel_size)
        head = f"input voxel size {vs} nm (from {self.source})"
        if self.z_assumed:
            head += ", z assumed equal to the pixel size"
        if not self.resample:
            return f"{head}, {self._model()}: resampling off{ds}; the network sees the image's pixels as they are."
        if not self.resampled(planes):
            fits = "lies in" if self.working else "matches"
            return f"{head} {fits} {self._model()} (within 5 %): no resampling{ds}."
        parts = []
        names = ("z", "y", "x") if len(self.ratios) == 3 else ("y", "x")
        for pl in planes:
            a, b = (0, 1) if len(self.ratios) == 2 else PLANE_AXES[pl]
            scl = ", ".join(f"{names[ax]} x{_fmt(1 / self.ratios[ax])}" for ax in (a, b))
            k = self.stack_step(pl)
            each = f" (each the mean of {k} planes along {names[3 - a - b]})" if k > 1 else ""
            parts.append(f"{pl} planes scaled {scl}{each}" if len(self.ratios) == 3 else f"scaled {scl}")
        return (f"{head}, {self._model()}: {'; '.join(parts)} to {_fmt(self.model_nm)} nm pixels{ds}; "
                "labels are on the input grid.")

    def short(self, planes=("xy",)) -> str:
        """A few words for a status line: the pixel sizes and whether they were resampled."""
        if self.model_nm is None:
            return "model pixel size unknown: not resampled"
        if self.voxel_size is None:
            return "pixel size unknown: not resampled"
        vs = " x ".join(_fmt(v) for v in self.voxel_size)
        if not self.resample:
            return f"{vs} nm, resampling off"
        if not self.resampled(planes):
            return f"{vs} nm, no resampling needed"
        if self.working:
            return f"{vs} nm, resampled to {_fmt(self.model_nm)} nm ({self._model()})"
        return f"{vs} nm, resampled to the model's {_fmt(self.model_nm)} nm"

    def record(self, planes=("xy",)) -> dict:
        """What a run used, for results and JSON summaries."""
        return {"input_voxel_size_nm": list(self.voxel_size) if self.voxel_size else None,
                "source": self.source, "model_pixel_size_nm": self.model_nm,
                "model_pixel_range_nm": list(self.working) if self.working else None, "resample": self.resample,
                "downsampling": self.downsampling,
                "factors": {pl: [round(v, 6) for v in self.factor(pl)] for pl in planes},
                **({"stack_step": {pl: self.stack_step(pl) for pl in planes}} if len(self.ratios) == 3 else {}),
                "network_pixel_nm": {pl: [round(v, 6) for v in self.network_nm(pl)] for pl in planes}
                if self.voxel_size else None}

    def network_nm(self, plane: str = "xy") -> tuple[float, float]:
        """nm per network pixel along the plane's two axes (input pixel x factor)."""
        a, b = (0, 1) if len(self.ratios) == 2 else PLANE_AXES[plane]
        f = self.factor(plane)
        return (self.voxel_size[a] * f[0], self.voxel_size[b] * f[1])


def plan_pixels(model_nm: float | None, voxel_size=None, pixel_size: float | None = None, resample: bool = True,
                downsampling: int = 1, ndim: int | None = None, neighbour_nm: float | None = None,
                working: tuple[float, float] | None = None, given_by: str = "file",
                finest_nm: float | None = None) -> PixelPlan:
    """The :class:`PixelPlan` of an input with ``voxel_size`` (nm per axis, from its file;
    None: unknown) for a model trained at ``model_nm`` that segments best at ``working``
    (smallest, largest nm; None: at ``model_nm``).

    ``pixel_size`` overrides the in-plane (y, x) size; a volume whose file gives no
    voxel size is then taken as isotropic. ``ndim`` (2 or 3): the input's
    dimensions when ``voxel_size`` is unknown (default: ``len(voxel_size)`` or 2).
    ``neighbour_nm``: see :class:`PixelPlan`. With ``working``, every axis is brought to
    :func:`working_pixel` of the finer in-plane axis, so the network's pixels stay square.
    ``given_by``: where ``voxel_size`` came from, for the plan's ``source`` (``"file"``, or
    ``"voxel_size"`` when a caller of the Python API gave it). ``finest_nm``: the finer in-plane
    size the working pixel is chosen for, where it is not the input's own (an xz / yz plane of
    a volume takes the volume's y and x, as its 3D run does).
    """
    vs = None
    if voxel_size is not None:
        vs = tuple(float(v) for v in voxel_size)
        if not all(math.isfinite(v) and v > 0 for v in vs):
            raise PanoptemError(f"Voxel size {voxel_size} must be positive numbers in nm.")
    n = ndim or (len(vs) if vs is not None else 2)
    if n not in (2, 3):
        raise PanoptemError(f"A pixel plan needs a 2D or 3D input, not {n}D.")
    if vs is not None and len(vs) != n:
        vs = vs[-n:] if len(vs) > n else None
    source, z_assumed = (given_by if vs is not None else "unknown"), False
    if pixel_size is not None:
        ps = float(pixel_size)
        if not (math.isfinite(ps) and ps > 0):
            raise PanoptemError(f"Pixel size must be a positive number of nm, not {pixel_size}.")
        if vs is None:
            vs, source, z_assumed = (ps,) * n, "pixel_size", n == 3
        else:
            vs, source = (*vs[:-2], ps, ps), f"{given_by} + pixel_size" if n == 3 else "pixel_size"
    d = int(downsampling)
    work = (float(working[0]), float(working[1])) if working else None
    if work:
        finest = None if vs is None else min(vs[-2:]) if finest_nm is None else float(finest_nm)
        model_nm = working_pixel(finest, *work) if finest is not None else math.sqrt(work[0] * work[1])
    if model_nm is None or vs is None or not resample:
        return PixelPlan(model_nm, vs, source, bool(resample), d, (1.0,) * n, z_assumed, neighbour_nm, work)
    ratios = tuple(snap(float(model_nm) / v) for v in vs)
    return PixelPlan(float(model_nm), vs, source, True, d, ratios, z_assumed, neighbour_nm, work)


def planes_of(params) -> tuple[str, ...]:
    """The planes a 3D run with ``params`` segments."""
    return ("xy", "xz", "yz") if params.orthoplane else (params.inference_plane,)


def network_shape(shape, factor) -> tuple[int, int]:
    """(rows, columns) of the network grid for a plane of ``shape`` at ``factor`` (input
    pixels per network pixel): every input pixel covered, as integer downsampling does.

    >>> network_shape((101, 100), (2, 2)), network_shape((100, 100), (0.5, 2 / 3))
    ((51, 50), (200, 150))
    """
    return tuple(max(1, -(-n * f.denominator // f.numerator)) for n, f in
                 zip(shape[-2:], (as_fraction(f) for f in factor)))


def resample_planes(planes: np.ndarray, factor) -> np.ndarray:
    """(..., H, W) planes resampled at ``factor`` (input pixels per output pixel, rows and
    columns; exact fractions, see :func:`as_fraction`) to :func:`network_shape`, float32:
    bilinear, antialiased (a triangle filter as wide as the factor) when shrinking; pixel centres
    aligned, output pixel ``j`` centred on input coordinate ``(j + 0.5) * factor``. At the
    plane's edges the filter is cut and renormalised (shrinking) or the edge pixel repeated.
    The weights depend on the output pixel's phase only (:func:`nice_fraction`), so a part of a
    plane starting on a multiple of the factor's numerator gives the whole plane's values.
    """
    x = np.asarray(planes, np.float32)
    return resize_at(x, factor, network_shape(x.shape[-2:], factor), antialias=True)


def resize_at(x: np.ndarray, factor, shape, antialias: bool = False) -> np.ndarray:
    """The last two axes of ``x`` resampled at ``factor`` (input pixels per output pixel, rows
    and columns, exact: see :func:`as_fraction`) to ``shape`` (float32): bilinear, with
    pixel centres aligned as in :func:`resample_planes`, antialiased when shrinking if
    ``antialias`` (else sampled, as :func:`~.preprocess.linear_resize` does). Unlike those, the
    scale is the factor itself, not the ratio of the two shapes: labels and probabilities
    brought back from the network's grid land where the network saw them whatever the size."""
    from .preprocess import _linear_axis
    x = np.asarray(x, np.float32)
    for axis, f, n in ((x.ndim - 2, as_fraction(factor[0]), int(shape[0])),
                       (x.ndim - 1, as_fraction(factor[1]), int(shape[1]))):
        m = x.shape[axis]
        if f == 1 and n == m:
            continue
        if f.numerator == 1:  # a whole enlargement: the whole-factor branch of linear_resize, then cut
            x = _linear_axis(x, m * f.denominator, axis) if f.denominator > 1 else x
            x = np.take(x, np.minimum(np.arange(n), x.shape[axis] - 1), axis=axis) if x.shape[axis] != n else x
        else:
            x = _resize_axis(x, axis, f, n, antialias)
    return np.ascontiguousarray(x)


def _taps(j: int, f: Fraction, m: int, antialias: bool = True) -> list[tuple[int, Fraction]]:
    """Input pixels and exact weights of output pixel ``j`` of an axis of ``m`` pixels resampled
    at ``f`` input pixels per output pixel (see :func:`resample_planes`)."""
    c = (j + Fraction(1, 2)) * f  # the output pixel's centre on the input axis
    if f > 1 and antialias:  # shrinking: a triangle of half-width f, cut at the edges and renormalised
        lo, hi = max(0, math.floor(c - f)), min(m, math.ceil(c + f))
        taps = [(i, 1 - abs(i + Fraction(1, 2) - c) / f) for i in range(lo, hi)]
        taps = [(i, w) for i, w in taps if w > 0]
        if not taps:  # an output pixel past the axis's end (asked for more than it covers): the edge pixel
            return [(m - 1, Fraction(1))]
        total = sum(w for _, w in taps)
        return [(i, w / total) for i, w in taps]
    src = max(c - Fraction(1, 2), Fraction(0))  # linear between two pixels
    i0 = min(math.floor(src), m - 1)
    w = src - i0
    return [(i0, 1 - w), (min(i0 + 1, m - 1), w)] if w else [(i0, Fraction(1))]


def _resize_axis(x: np.ndarray, axis: int, f: Fraction, n: int, antialias: bool = True) -> np.ndarray:
    """``axis`` of ``x`` (float32) resampled at ``f`` to ``n`` pixels (see :func:`resample_planes`).
    Phase by phase: output pixels ``q*i + r`` whose taps all lie inside the axis take input
    pixels ``p*i + d`` with one set of weights, as strided views; the few others (at the
    edges) one by one."""
    m = x.shape[axis]
    p, q = f.numerator, f.denominator
    v = np.moveaxis(x, axis, -1)
    out = np.empty(v.shape[:-1] + (n,), np.float32)
    done = np.zeros(n, bool)
    for r in range(min(q, n)):
        far = 1000 * q + r  # a pixel far from the edges: its taps relative to p * (far // q)
        taps = [(i - 1000 * p, np.float32(w)) for i, w in _taps(far, f, 10 ** 9, antialias)]
        d0, d1 = taps[0][0], taps[-1][0]
        i_lo = -(d0 // p)  # the first i with p*i + d0 >= 0
        i_hi = min((n - 1 - r) // q, (m - 1 - d1) // p) + 1
        if i_hi <= i_lo:
            continue
        dst = out[..., q * i_lo + r:q * (i_hi - 1) + r + 1:q]
        for t, (d, w) in enumerate(taps):
            src = v[..., p * i_lo + d:p * (i_hi - 1) + d + 1:p]
            if t == 0:
                np.multiply(src, w, out=dst)
            else:
                dst += src * w
        done[q * i_lo + r:q * (i_hi - 1) + r + 1:q] = True
    for j in np.flatnonzero(~done):
        taps = _taps(int(j), f, m, antialias)
        acc = v[..., taps[0][0]] * np.float32(taps[0][1])
        for i, w in taps[1:]:
            acc += v[..., i] * np.float32(w)
        out[..., j] = acc
    return np.moveaxis(out, -1, axis)


def nearest_to(labels: np.ndarray, shape) -> np.ndarray:
    """A 2D label image resized to ``shape`` by nearest neighbour (pixel centres aligned).

    >>> nearest_to(np.array([[1, 2]]), (2, 4)).tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2]]
    """
    h, w = labels.shape
    H, W = shape
    ri = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    ci = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return labels[np.ix_(ri, ci)]
