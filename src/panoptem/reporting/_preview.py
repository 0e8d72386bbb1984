"""A montage of a few planes of a label volume over its image: the picture of a run."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PanoptemError
from . import _draw
from ._files import check_target, write_bytes
from ._mpl import figure, require_matplotlib

# Layout, in pixels of the picture.
_MARGIN, _GAP, _CAPTION, _FOOTER, _BAR_HEIGHT, _LINE = 8, 6, 16, 30, 5, 16
_MIN_WIDTH, _FONT = 560, 9  # narrowest picture; title font size (points)
_DPI = 100

#: Parameters shown in titles, in this order, when given.
MAIN_PARAMS = ("invert", "downsampling", "confidence_thr", "center_confidence_thr", "min_distance_object_centers",
               "fine_boundaries", "semantic_only", "tile_size", "median_slices", "min_size", "min_extent",
               "inference_plane", "orthoplane", "fusion", "pixel_vote_thr", "allow_one_view")
_ORTHO_ONLY = ("fusion", "pixel_vote_thr", "allow_one_view")


@dataclass
class Preview:
    """What :func:`preview` drew.

    Attributes
    ----------
    rgb : the picture, ``(H, W, 3)`` uint8, exactly as written to ``path``.
    path : the PNG written, or None.
    pixel_size : nm per picture pixel in every panel (voxels per pixel when the voxel size is
        unknown; then ``unit`` is "px").
    unit : "nm" or "px".
    scale_bar : length of the scale bar in ``unit``; it is ``scale_bar_px`` pixels long.
    scale_bar_box : ``(top, left, bottom, right)`` of the bar in ``rgb`` (end-exclusive).
    panels : one dict per panel: ``plane``, ``index`` (the slice drawn), ``box``.
    title : the title text.
    """

    rgb: np.ndarray
    path: Path | None
    pixel_size: float
    unit: str
    scale_bar: float
    scale_bar_px: int
    scale_bar_box: tuple[int, int, int, int]
    panels: list[dict] = field(default_factory=list)
    title: str = ""


def preview(labels, path=None, *, image=None, voxel_size=None, planes=None, n_slices: int = 4,
            max_size: int = 384, title: str | None = None, model: str | None = None,
            params: dict | None = None, n_objects: int | None = None, overwrite: bool = False,
            inputs=()) -> Preview:
    """Draw a montage of evenly spaced planes of a label image over its grey image.

    Every object gets its own colour (:func:`label_colors`: translucent fill, opaque outline).
    Only the planes drawn are read, each with a step when the picture is smaller than the data,
    so lazily opened Zarr/HDF5/TIFF outputs of any size are fine.

    Parameters
    ----------
    labels : 2D (YX) or 3D (ZYX) label array, numpy or lazy (anything with ``shape`` and
        numpy-style slicing).
    path : PNG file to write (atomically); None only returns the picture.
    image : grey image of the same shape (also lazy), drawn underneath.
    voxel_size : nm per voxel, one per axis; sets the scale bar (in voxels when None).
    planes : for 3D: which of "xy", "xz", "yz" to show, one row each (default: xy).
    n_slices : planes per row, evenly spaced along the cut axis.
    max_size : longest side of the largest panel, in picture pixels.
    title : replaces the generated title (model, object count, parameters, shape, voxel size).
    model, params, n_objects : for the generated title. ``params``: parameter name -> value;
        those of :data:`MAIN_PARAMS` are shown. ``n_objects`` None: counted when ``labels`` is a
        numpy array (a lazy one is not read whole just for the title).
    overwrite : replace an existing ``path``.
    inputs : paths never to write over.

    Returns
    -------
    Preview

    Examples
    --------
    >>> lab = np.zeros((8, 64, 64), np.uint32); lab[2:6, 10:30, 10:40] = 1
    >>> pv = preview(lab, voxel_size=(5, 5, 5), n_slices=2)
    >>> pv.scale_bar, pv.unit
    (50.0, 'nm')
    """
    require_matplotlib()
    if path is not None:
        path = check_target(path, (".png",), overwrite, inputs)
    labels = labels if hasattr(labels, "shape") else np.asarray(labels)  # nested lists too
    image = image if image is None or hasattr(image, "shape") else np.asarray(image)
    ndim = len(labels.shape)
    if ndim not in (2, 3) or min(labels.shape) < 1:
        raise PanoptemError(f"Can preview 2D (YX) or 3D (ZYX) labels only, not shape {tuple(labels.shape)}.")
    if image is not None and tuple(image.shape) != tuple(labels.shape):
        raise PanoptemError(f"The image has shape {tuple(image.shape)} but the labels have shape "
                            f"{tuple(labels.shape)}; give the image the labels were made from.")
    if int(n_slices) < 1 or int(max_size) < 16:
        raise PanoptemError("n_slices must be at least 1 and max_size at least 16 pixels.")
    unit = "px" if voxel_size is None else "nm"
    vs = np.ones(ndim) if voxel_size is None else np.asarray(voxel_size, float).ravel()
    if len(vs) != ndim or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise PanoptemError(f"voxel_size must give {ndim} positive sizes in nm, not {voxel_size}.")
    planes = ("xy",) if ndim == 2 or not planes else tuple(planes)

    # What to draw: (plane, cut axis, shown axes, slice indices).
    rows = []
    for plane in planes:
        cut, shown = _draw.panel_axes(ndim, plane)
        n = 1 if cut is None else labels.shape[cut]
        k = min(int(n_slices), n)
        idx = ((np.arange(k) + 0.5) * n / k).astype(np.int64)
        rows.append((plane, cut, shown, [int(i) for i in idx]))
    extent = max(labels.shape[a] * vs[a] for _, _, shown, _ in rows for a in shown)
    used = {a for _, _, shown, _ in rows for a in shown}
    px = max(min(vs[a] for a in used), extent / int(max_size))  # one pixel size for every panel

    panels, greys = [], []
    for plane, cut, shown, idx in rows:
        shape = tuple(max(1, int(round(labels.shape[a] * vs[a] / px))) for a in shown)
        for i in idx:
            lab = _draw.read_plane(labels, cut, i, shown, shape)
            grey = None if image is None else _draw.read_plane(image, cut, i, shown, shape).astype(np.float64)
            panels.append({"plane": plane, "cut": cut, "index": i, "labels": lab, "grey": grey})
            if grey is not None:
                greys.append(grey)
    lo, hi = _draw.grey_range(greys) if greys else (0.0, 1.0)

    if n_objects is None and isinstance(labels, np.ndarray):
        n_objects = _count(labels)
    text = title if title is not None else _title(model, params, n_objects, labels.shape, voxel_size)
    return _compose(rows, panels, lo, hi, px, unit, text, path, ndim, overwrite)


def prepare_preview(path, overwrite: bool = False, inputs=(), outputs=()) -> Path | None:
    """Check a preview path before a run: matplotlib installed, a .png name, not an input or the
    run's other ``outputs``, no file to replace unless ``overwrite``. Returns the absolute path
    (None for None)."""
    if path is None:
        return None
    require_matplotlib()
    return check_target(path, (".png",), overwrite, inputs, outputs)


def _count(labels: np.ndarray) -> int:
    import fastremap

    from ..labels import native
    u = fastremap.unique(native(np.asarray(labels)))
    return int(len(u) - (1 if len(u) and u[0] == 0 else 0))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _title(model, params, n_objects, shape, voxel_size) -> str:
    head = [str(model) if model else "labels"]
    if n_objects is not None:
        head.append(f"{n_objects} object{'s' if n_objects != 1 else ''}")
    head.append("x".join(str(int(n)) for n in shape) + (" voxels" if len(shape) == 3 else " pixels"))
    head.append("voxel " + " x ".join(f"{v:g}" for v in voxel_size) + " nm" if voxel_size is not None
                else "voxel size unknown")
    lines = [" · ".join(head)]
    if params:
        ortho = bool(params.get("orthoplane"))
        shown = [f"{k}={_fmt(params[k])}" for k in MAIN_PARAMS
                 if k in params and params[k] not in (None, False) and not (k == "tile_size" and not params[k])
                 and (ortho or k not in _ORTHO_ONLY) and not (ortho and k == "inference_plane")]
        if shown:
            lines.append(", ".join(shown))
    return "\n".join(lines)


def _compose(rows, panels, lo, hi, px, unit, text, path, ndim, overwrite: bool = True) -> Preview:
    # Panel sizes and positions.
    row_sizes, p = [], 0
    for _, _, _, idx in rows:
        sizes = [panels[p + j]["labels"].shape for j in range(len(idx))]
        p += len(idx)
        row_sizes.append(sizes)
    content_w = max(sum(s[1] for s in sizes) + _GAP * (len(sizes) - 1) for sizes in row_sizes)
    width = max(_MIN_WIDTH, content_w + 2 * _MARGIN)
    lines = _wrap(text, width - 2 * _MARGIN)
    title_h = _MARGIN + _LINE * len(lines) + 4
    height = title_h + sum(_CAPTION + max(s[0] for s in sizes) + _GAP for sizes in row_sizes) + _FOOTER

    canvas = np.full((height, width, 3), 255, np.uint8)
    captions, y, p = [], title_h, 0
    for sizes in row_sizes:
        x = _MARGIN
        for h, w in sizes:
            pn = panels[p]
            grey = None if pn["grey"] is None else (pn["grey"] - lo) / (hi - lo)
            canvas[y + _CAPTION:y + _CAPTION + h, x:x + w] = _draw.overlay(pn["labels"], grey)
            pn["box"] = (y + _CAPTION, x, y + _CAPTION + h, x + w)
            name = "slice" if ndim == 2 else {0: "z", 1: "y", 2: "x"}[pn["cut"]]
            captions.append((x, y, f"{pn['plane']}  {name} = {pn['index']}" if ndim == 3 else "xy"))
            x += w + _GAP
            p += 1
        y += _CAPTION + max(s[0] for s in sizes) + _GAP

    # Scale bar: about a quarter of the first panel, a round length.
    first_w = panels[0]["labels"].shape[1]
    bar = _draw.nice_length(max(px, 0.25 * first_w * px))
    bar_px = max(1, int(round(bar / px)))
    top = y + (_FOOTER - _BAR_HEIGHT) // 2
    box = (top, _MARGIN, top + _BAR_HEIGHT, _MARGIN + bar_px)
    canvas[box[0]:box[2], box[1]:box[3]] = 0

    fig = figure(width / _DPI, height / _DPI, _DPI)
    fig.figimage(canvas, 0, 0, origin="upper")

    def put(x, y_top, s, **kw):  # text with its top-left corner at picture pixel (x, y_top)
        fig.text(x / width, 1 - y_top / height, s, ha="left", va="top", **kw)

    for i, line in enumerate(lines):
        put(_MARGIN, _MARGIN + i * _LINE, line, fontsize=_FONT)
    for x, y0, s in captions:
        put(x, y0 + 2, s, fontsize=8, color="0.25")
    fig.text((box[3] + 8) / width, 1 - (box[0] + box[2]) / 2 / height, _draw.length_text(bar, unit),
             ha="left", va="center", fontsize=9)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        write_bytes(path, _png(rgb), replace=overwrite)  # not over a file another run wrote meanwhile
    out_panels = [{"plane": pn["plane"], "index": pn["index"], "box": pn["box"]} for pn in panels]
    return Preview(rgb, path, float(px), unit, float(bar), bar_px, box, out_panels, text)


def _wrap(text: str, width_px: float, fontsize: float = _FONT) -> list[str]:
    """Lines of ``text`` that fit ``width_px`` picture pixels, broken after commas or spaces."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties
    renderer, prop = RendererAgg(10, 10, _DPI), FontProperties(size=fontsize)

    def fits(s: str) -> bool:
        return renderer.get_text_width_height_descent(s, prop, ismath=False)[0] <= width_px

    lines = []
    for para in text.splitlines() or [""]:
        words, line = para.split(" "), ""
        for w in words:
            candidate = f"{line} {w}" if line else w
            if line and not fits(candidate):
                lines.append(line)
                candidate = w
            line = candidate
        lines.append(line)
    return lines


def _png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB array, pixel for pixel."""
    import io

    from matplotlib.image import imsave
    buf = io.BytesIO()
    imsave(buf, rgb, format="png")
    return buf.getvalue()
