"""Pick patches to annotate (or image + label pairs) for fine-tuning and training.

A patch is a square crop of one 2D plane: of a 2D image, of one image of a 2D
stack, or of an xy, xz or yz plane of a 3D volume. Patches are centred on given
points and/or drawn at random from a grid of patch-sized cells (so random
patches never overlap each other nor a point's patch on the same plane). For
3D volumes a patch can be a *flipbook*: ``flipbook_depth`` consecutive planes
around the one to annotate, so the annotator sees the context.

Borders: a patch that would cross the image border is shifted inside, so a
point near the border is off-centre but inside the patch. Where the image is
smaller than the patch, the patch starts at 0 and is padded at the bottom /
right (images with the crop's median, labels with 0); ``Patch.valid`` gives the
real extent and :func:`~panoptem.training.dataset.store_dataset` writes only that.

>>> from panoptem import load_sample
>>> patches = pick_patches(load_sample(), n=4, patch_size=128, points=[(15, 100, 200)])
>>> len(patches), patches[0].image.shape
(4, (128, 128))
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import PanoptemError
from ..params import PATCH_PLANES, PLANE_AXIS, PLANES

#: the two axes of a ZYX volume that each plane shows, as (rows, cols)
PLANE_AXES = {p: tuple(a for a in range(3) if a != ax) for p, ax in PLANE_AXIS.items()}


@dataclass
class Patch:
    """One patch and where it came from.

    Attributes
    ----------
    image : (size, size) crop, or (depth, size, size) for a flipbook.
    labels : crop of the paired labels, same shape as ``image``; None when
        the patch is still to be annotated.
    source_shape : shape of the image or volume it was cut from.
    plane : "xy", "xz" or "yz" (always "xy" for 2D images and 2D stacks).
    index : plane index along the plane's normal (z for xy, y for xz, x for
        yz; the image index in a 2D stack); None for a single 2D image.
    y0, x0 : top-left corner in the plane's (row, column) axes: (y, x) for xy,
        (z, x) for xz, (z, y) for yz.
    size : side of the patch in pixels.
    valid : (rows, cols) of real data; beyond it the patch is padding.
    middle : flipbooks only: position in the flipbook of the plane to annotate
        (the point's plane; ``depth // 2`` unless shifted at the volume's ends).
    point : the point the patch was centred on, or None for a random patch.
    source : short name of the source image, used in the patch name.
    """

    image: np.ndarray
    labels: np.ndarray | None
    source_shape: tuple[int, ...]
    plane: str
    index: int | None
    y0: int
    x0: int
    size: int
    valid: tuple[int, int]
    middle: int | None = None
    point: tuple[float, ...] | None = None
    source: str = "image"

    @property
    def is_flipbook(self) -> bool:
        return self.middle is not None

    @property
    def name(self) -> str:
        """File-name-safe name from the provenance, e.g. ``vol_xy-40_y172_x372``."""
        src = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.source) or "image"
        where = "" if self.index is None else f"_{self.plane}-{self.index}"
        return f"{src}{where}_y{self.y0}_x{self.x0}"

    def annotated(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The 2D image (and labels) to annotate: the middle plane of a
        flipbook, without padding."""
        h, w = self.valid
        img = self.image[self.middle] if self.is_flipbook else self.image
        lab = None
        if self.labels is not None:
            lab = self.labels[self.middle] if self.is_flipbook else self.labels
            lab = lab[:h, :w]
        return img[:h, :w], lab

    def provenance(self) -> dict:
        """JSON-ready description of where the patch came from."""
        return dict(source=self.source, source_shape=list(self.source_shape), plane=self.plane,
                    index=self.index, y0=self.y0, x0=self.x0, size=self.size, valid=list(self.valid),
                    flipbook_depth=int(self.image.shape[0]) if self.is_flipbook else None,
                    middle=self.middle, point=None if self.point is None else [float(v) for v in self.point])


def _start(centre: float, size: int, extent: int) -> int:
    """Top/left of a window of ``size`` centred on ``centre``, shifted inside ``[0, extent)``."""
    if extent <= size:
        return 0
    return int(min(max(int(round(centre)) - size // 2, 0), extent - size))


def _crop(arr, kind: str, plane: str, index, y0: int, x0: int, size: int, depth: int | None) -> np.ndarray:
    """Crop (and for flipbooks, stack ``depth`` planes from ``index``) without padding."""
    if kind == "2d":
        return np.asarray(arr[y0:y0 + size, x0:x0 + size])
    sl = [slice(None)] * 3
    r, c = PLANE_AXES[plane]
    n = PLANE_AXIS[plane]
    sl[r], sl[c] = slice(y0, y0 + size), slice(x0, x0 + size)
    sl[n] = index if depth is None else slice(index, index + depth)
    out = np.asarray(arr[tuple(sl)])
    return out if depth is None else np.moveaxis(out, n, 0)


def _pad(a: np.ndarray, size: int, value) -> np.ndarray:
    ph, pw = size - a.shape[-2], size - a.shape[-1]
    if ph == 0 and pw == 0:
        return a
    pad = [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(a, pad, mode="constant", constant_values=value)


def _check_points(points, ndim: int, shape) -> np.ndarray:
    pts = np.asarray(points, np.float64)
    if pts.size == 0:
        return np.zeros((0, ndim))
    pts = pts.reshape(-1, pts.shape[-1]) if pts.ndim > 1 else pts[None]
    if pts.shape[1] != ndim:
        want = "(y, x)" if ndim == 2 else "(z, y, x)"
        raise PanoptemError(f"Points must have {ndim} coordinates {want} for an image of shape "
                            f"{tuple(shape)}, not {pts.shape[1]}.")
    odd = np.flatnonzero(~np.isfinite(pts).all(axis=1))
    if odd.size:
        raise PanoptemError(f"Point {pts[odd[0]].tolist()} has a coordinate that is not a number; remove it or "
                            "fix it in the points file.")
    r = np.round(pts)
    bad = np.flatnonzero(((r < 0) | (r >= np.asarray(shape)[None])).any(axis=1))
    if bad.size:
        raise PanoptemError(f"Point {pts[bad[0]].tolist()} lies outside the image of shape {tuple(shape)}; "
                            "remove it or check the order of its coordinates (z, y, x).")
    return pts


class _Source:
    """The input seen as planes: kind ("2d", "stack", "3d"), extents per plane."""

    def __init__(self, image, is_2d_stack: bool):
        if not hasattr(image, "shape") or not hasattr(image, "ndim"):
            image = np.asarray(image)
        if image.ndim not in (2, 3):
            raise PanoptemError(f"Patches are cut from a 2D image, a 2D stack or a 3D volume, not an array of "
                                f"shape {tuple(image.shape)}.")
        self.arr = image
        self.shape = tuple(int(s) for s in image.shape)
        self.kind = "2d" if image.ndim == 2 else ("stack" if is_2d_stack else "3d")

    def planes(self, plane: str) -> tuple[str, ...]:
        if plane not in PATCH_PLANES:
            raise PanoptemError(f"plane must be xy, xz, yz or random, not '{plane}'.")
        if self.kind != "3d":
            if plane not in ("xy", "random"):
                what = "2D image" if self.kind == "2d" else "2D stack"
                raise PanoptemError(f"A {what} has only xy planes; use plane='xy'.")
            return ("xy",)
        return PLANES if plane == "random" else (plane,)

    def extent(self, plane: str) -> tuple[int, int, int]:
        """(number of planes, rows, cols) of ``plane``."""
        if self.kind == "2d":
            return 1, *self.shape
        r, c = PLANE_AXES[plane]
        return self.shape[PLANE_AXIS[plane]], self.shape[r], self.shape[c]


def _grid(extent: int, size: int) -> np.ndarray:
    return np.arange(0, max(extent - size, 0) + 1, size)


def pick_patches(image, n: int = 16, patch_size: int = 256, points=None, plane: str = "xy",
                 is_2d_stack: bool = False, flipbook: bool = False, flipbook_depth: int = 5,
                 labels=None, seed: int = 0, source: str = "image") -> list[Patch]:
    """Cut patches for annotation (or image + label pairs) out of an image.

    Parameters
    ----------
    image : (H, W) image, (N, H, W) stack of 2D images (``is_2d_stack``) or a
        (Z, Y, X) volume; numpy or lazy array-like (only the crops are read).
    n : total number of patches; patches on ``points`` come first, random
        ones fill up to ``n`` (every point gets its patch even when there are
        more than ``n``). Fewer come back, with a warning, when the image has
        no room for more non-overlapping random patches.
    patch_size : side in pixels.
    points : (K, 2) ``(y, x)`` for a 2D image, or (K, 3) ``(z, y, x)`` (``(i, y, x)``
        for a stack); each patch is centred on its point (shifted inside at borders).
    plane : "xy", "xz", "yz", or "random" (one of the three per patch; 3D only,
        for isotropic data).
    flipbook : 3D only: each patch is ``flipbook_depth`` planes around the one
        to annotate (``Patch.middle``); random flipbooks are spaced by the depth
        so they do not overlap.
    labels : labels of the same shape as ``image`` to crop at the same places
        (paired patches, e.g. to correct or reuse existing labels).
    seed : seed of the random picks and random planes.
    source : name of the image, used in patch names.

    Returns
    -------
    list of :class:`Patch`.
    """
    src = _Source(image, is_2d_stack)
    if labels is not None:
        if tuple(labels.shape) != src.shape:
            raise PanoptemError(f"Labels of shape {tuple(labels.shape)} do not match the image of shape "
                                f"{src.shape}; pass the labels of this image.")
    from ..params import PatchParams, make_params
    opts = make_params(PatchParams, n=n, patch_size=patch_size, plane=plane, flipbook_depth=flipbook_depth,
                       seed=seed)
    size, n, seed = opts.patch_size, opts.n, opts.seed
    depth = None
    if flipbook:
        if src.kind != "3d":
            raise PanoptemError("Flipbooks need a 3D volume; a 2D image or a 2D stack gives plain patches.")
        depth = int(flipbook_depth)
        if depth < 1:
            raise PanoptemError("flipbook_depth must be at least 1.")
    planes = src.planes(plane)
    if depth is not None:
        short = [p for p in planes if src.extent(p)[0] < depth]
        if short:
            raise PanoptemError(f"The volume has fewer than {depth} planes along the normal of {short[0]}; "
                                "use a smaller flipbook_depth.")
    rng = np.random.default_rng(seed)
    pts = _check_points(points if points is not None else [], 2 if src.kind == "2d" else 3, src.shape)

    # (plane, index, y0, x0, middle, point) of every patch, points first
    picks: list[tuple] = []
    for p in pts:
        pl = planes[int(rng.integers(len(planes)))] if len(planes) > 1 else planes[0]
        nz, h, w = src.extent(pl)
        if src.kind == "2d":
            idx, cy, cx = None, p[0], p[1]
        else:
            idx = int(round(p[PLANE_AXIS[pl]]))
            r, c = PLANE_AXES[pl]
            cy, cx = p[r], p[c]
        mid = None
        if depth is not None:
            start = _start(idx, depth, nz)  # window centred on the point's plane, shifted inside
            mid, idx = idx - start, start
        picks.append((pl, idx, _start(cy, size, h), _start(cx, size, w), mid, tuple(p)))

    need = max(n - len(picks), 0)
    if need:
        picks += _random_picks(src, planes, size, depth, need, picks, rng)
    if len(picks) < n:
        import warnings
        warnings.warn(f"only {len(picks)} non-overlapping patches of {size} pixels fit; returning those",
                      stacklevel=2)

    out = []
    for pl, idx, y0, x0, mid, pt in picks:
        img = _crop(src.arr, src.kind, pl, idx, y0, x0, size, depth)
        valid = tuple(int(s) for s in img.shape[-2:])
        fill = np.median(img) if img.size else 0
        img = _pad(img, size, np.asarray(fill).astype(img.dtype))
        lab = None
        if labels is not None:
            lab = _pad(_crop(labels, src.kind, pl, idx, y0, x0, size, depth), size, 0)
        index = None if src.kind == "2d" else (idx + mid if mid is not None else idx)
        out.append(Patch(image=img, labels=lab, source_shape=src.shape, plane=pl, index=index, y0=y0, x0=x0,
                         size=size, valid=valid, middle=mid, point=pt, source=source))
    return out


def _random_picks(src: _Source, planes: Sequence[str], size: int, depth: int | None, need: int,
                  taken: list[tuple], rng: np.random.Generator) -> list[tuple]:
    """``need`` random grid cells over all planes that overlap no patch in ``taken``."""
    cells = []  # per plane: (plane, indices, row starts, col starts)
    for pl in planes:
        nz, h, w = src.extent(pl)
        if src.kind == "2d":
            idx = np.array([0])
        elif depth is None:
            idx = np.arange(nz)
        else:  # flipbook starts, spaced by the depth so flipbooks never share a plane
            idx = np.arange(0, nz - depth + 1, depth)
        cells.append((pl, idx, _grid(h, size), _grid(w, size)))
    counts = np.array([len(i) * len(r) * len(c) for _, i, r, c in cells], np.int64)
    total = int(counts.sum())
    if total == 0:
        return []
    offsets = np.concatenate([[0], np.cumsum(counts)])
    # the taken patches as arrays: plane number, first and last plane index, y0, x0
    t_pl = np.array([planes.index(t[0]) for t in taken], np.int64)
    t_i0 = np.array([0 if t[1] is None else t[1] for t in taken], np.int64)
    t_d = 1 if depth is None else depth
    t_y = np.array([t[2] for t in taken], np.int64)
    t_x = np.array([t[3] for t in taken], np.int64)

    chosen: list[tuple] = []
    draw = min(total, 4 * need + 64)
    while True:
        flat = rng.choice(total, size=draw, replace=False)
        k = np.searchsorted(offsets, flat, side="right") - 1
        ok_all = []
        for j, (pl, idx, rows, cols) in enumerate(cells):
            sel = flat[k == j] - offsets[j]
            ii, ri, ci = np.unravel_index(sel, (len(idx), len(rows), len(cols)))
            i0, y0, x0 = idx[ii], rows[ri], cols[ci]
            ok = np.ones(sel.size, bool)
            if t_pl.size:  # overlap in planes and in the rectangle with any taken patch
                same = (t_pl[None] == j) & (np.abs(i0[:, None] - t_i0[None]) < t_d) \
                    & (np.abs(y0[:, None] - t_y[None]) < size) & (np.abs(x0[:, None] - t_x[None]) < size)
                ok = ~same.any(axis=1)
            pos = np.flatnonzero(k == j)[ok]
            ok_all += [(p, (pl, None if src.kind == "2d" else int(a), int(b), int(c)))
                       for p, a, b, c in zip(pos, i0[ok], y0[ok], x0[ok])]
        ok_all.sort(key=lambda t: t[0])  # keep the random draw order
        chosen = [c for _, c in ok_all][:need]
        if len(chosen) >= need or draw >= total:
            break
        draw = min(total, draw * 4)
    out = []
    for pl, idx, y0, x0 in chosen:
        mid = depth // 2 if depth is not None else None
        out.append((pl, idx, y0, x0, mid, None))
    return out
