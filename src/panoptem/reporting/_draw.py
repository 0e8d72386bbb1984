"""Pure-numpy drawing: object colours, label overlays and lazily read, resampled planes."""
from __future__ import annotations

import numpy as np

from ..errors import PanoptemError
from ..params import PLANE_AXIS
_GOLDEN = 0.6180339887498949


def label_colors(ids) -> np.ndarray:
    """One bright colour per label id, the same in every picture.

    Hues follow the golden ratio over the ids (consecutive ids get distant hues); saturation and
    value vary a little with a hash of the id. Never grey, black or white.

    Parameters
    ----------
    ids : array-like of non-negative integers.

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` uint8 RGB.

    Examples
    --------
    >>> label_colors([1, 2]).shape
    (2, 3)
    """
    from skimage.color import hsv2rgb

    x = np.asarray(ids, dtype=np.uint64).ravel()
    hue = np.mod(x.astype(np.float64) * _GOLDEN, 1.0)
    with np.errstate(over="ignore"):  # splitmix64: wrapping is intended
        h = x + np.uint64(0x9E3779B97F4A7C15)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    sat = 0.6 + 0.4 * ((h >> np.uint64(8)) & np.uint64(255)).astype(np.float64) / 255
    val = 0.8 + 0.2 * ((h >> np.uint64(16)) & np.uint64(255)).astype(np.float64) / 255
    rgb = hsv2rgb(np.stack([hue, sat, val], axis=-1)[None])[0]
    return np.round(rgb * 255).astype(np.uint8)


def boundary(labels: np.ndarray) -> np.ndarray:
    """Object pixels with a 4-neighbour of another value (edges of the array do not count)."""
    p = np.pad(labels, 1, mode="edge")
    c = p[1:-1, 1:-1]
    edge = (c != p[:-2, 1:-1]) | (c != p[2:, 1:-1]) | (c != p[1:-1, :-2]) | (c != p[1:-1, 2:])
    return edge & (labels != 0)


def overlay(labels: np.ndarray, grey: np.ndarray | None = None, alpha: float = 0.4,
            outline: bool = True, highlight=None) -> np.ndarray:
    """RGB picture of a 2D label image: translucent colour fill, opaque outline in the same colour.

    ``grey`` (values in 0..1, same shape) is drawn underneath; without it the background is black
    and the fill stronger. With ``highlight`` (ids), the other objects are faint and not outlined.
    """
    labels = np.asarray(labels)
    if grey is None:
        base = np.zeros(labels.shape + (3,), np.float64)
        alpha = max(alpha, 0.75)
    else:
        base = np.repeat(np.clip(np.nan_to_num(grey), 0, 1)[..., None] * 255.0, 3, axis=-1)  # NaN: black
    out = base.copy()
    fg = labels != 0
    if fg.any():
        ids, inv = np.unique(labels[fg], return_inverse=True)
        inv = inv.ravel()
        cols = label_colors(ids).astype(np.float64)
        a = np.full(len(ids), alpha)
        shown = np.ones(len(ids), bool)
        if highlight is not None:
            shown = np.isin(ids, np.asarray(list(highlight), dtype=ids.dtype))
            a[~shown] = 0.3 * alpha
        out[fg] = (1 - a[inv, None]) * base[fg] + a[inv, None] * cols[inv]
        if outline:
            edge = boundary(labels)
            ids_e, inv_e = np.unique(labels[edge], return_inverse=True)
            keep = shown[np.searchsorted(ids, ids_e)][inv_e.ravel()]
            ys, xs = np.nonzero(edge)
            out[ys[keep], xs[keep]] = label_colors(ids_e)[inv_e.ravel()[keep]]
    return np.round(out).astype(np.uint8)


def panel_axes(ndim: int, plane: str) -> tuple[int | None, tuple[int, ...]]:
    """(axis cut by the plane, the two axes shown as rows and columns)."""
    if ndim == 2:
        return None, (0, 1)
    if plane not in PLANE_AXIS:
        raise PanoptemError(f"Planes must be xy, xz or yz, not '{plane}'.")
    ax = PLANE_AXIS[plane]
    return ax, tuple(a for a in range(3) if a != ax)


def read_plane(a, cut: int | None, index: int, shown: tuple[int, ...], out_shape: tuple[int, int]) -> np.ndarray:
    """Plane ``index`` across axis ``cut`` of ``a``, resampled (nearest) to ``out_shape``.

    Only that plane is read, with a step along each shown axis when the display is smaller than
    the data, so a huge lazily opened volume costs one decimated plane.
    """
    steps = [max(1, a.shape[ax] // n) for ax, n in zip(shown, out_shape)]
    key = [slice(None, None, s) for s in steps]
    if cut is not None:
        key.insert(cut, int(index))
    p = np.asarray(a[tuple(key)])
    rows = ((np.arange(out_shape[0]) + 0.5) * p.shape[0] / out_shape[0]).astype(np.int64)
    cols = ((np.arange(out_shape[1]) + 0.5) * p.shape[1] / out_shape[1]).astype(np.int64)
    return p[rows][:, cols]


def grey_range(planes: list[np.ndarray]) -> tuple[float, float]:
    """Display range of grey planes: the 0.5 and 99.5 percentiles of their finite values."""
    v = np.concatenate([np.asarray(p, np.float64).ravel() for p in planes]) if planes else np.zeros(1)
    v = v[np.isfinite(v)]  # NaN padding would make every percentile NaN (black panels)
    if not v.size:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    return float(lo), float(hi if hi > lo else lo + 1)


def nice_length(target: float) -> float:
    """The largest 1, 2 or 5 times a power of ten not above ``target`` (``target`` > 0)."""
    e = np.floor(np.log10(target))
    for m in (5, 2, 1):
        if m * 10 ** e <= target * (1 + 1e-9):
            return float(m * 10 ** e)
    return float(10 ** e)


def length_text(value: float, unit: str) -> str:
    """'200 nm', '1.5 µm' (nm from 1000 up), '30 px'."""
    if unit == "nm" and value >= 1000:
        return f"{value / 1000:g} µm"
    return f"{value:g} {unit}"
