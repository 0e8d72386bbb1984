"""A report of a label image: montage, size histograms, objects per slice, table of the largest."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..errors import PanoptemError
from . import _html
from ._files import check_target, write_bytes
from ._mpl import figure, png_bytes, require_matplotlib
from ._preview import _png, preview

FORMATS = {".html": "html", ".htm": "html", ".pdf": "pdf"}
_FLUSH = 1 << 23  # codes gathered before they are de-duplicated (bounds memory)
_TILE_BYTES = 1 << 24  # labels read at once when counting objects per slice


def report(labels, path, *, image=None, voxel_size=None, label_divisor: int | None = None, top: int = 20,
           format: str | None = None, title: str | None = None, surface: bool = True,
           overwrite: bool = False, inputs=(), table: dict | None = None, key: str | None = None,
           image_key: str | None = None) -> Path:
    """Write a report of a label image: one self-contained HTML file (or a PDF).

    Contents: a summary (objects, voxel size, volumes per class), a montage of planes (xy, xz and
    yz for 3D), histograms of object volume (area in 2D) and extent in nm, the number of objects
    in every slice along each axis, and a table of the ``top`` largest objects with every
    column of :func:`panoptem.measure` (the numbers ``panoptem measure`` writes, shown with
    6 significant digits). The HTML embeds its pictures and the full table as a CSV download.

    Parameters
    ----------
    labels : 2D or 3D label array, or a path read with :func:`panoptem.io.read_image` (its voxel
        size is used unless ``voxel_size`` is given).
    path : output file, ``.html``/``.htm`` or ``.pdf``.
    image : grey image of the same shape (array or path): drawn under the labels and adds
        ``mean_intensity``.
    voxel_size : nm per voxel; None (and none in the file) means voxel units.
    label_divisor : ``class_id = label // label_divisor``.
    top : rows of the table of largest objects.
    format : "html" or "pdf"; by default from the suffix of ``path``.
    title : page title (default: from the file name).
    surface : measure surface area and sphericity (slower on very many objects).
    overwrite : replace an existing ``path``.
    inputs : paths never to write over (the input files are added automatically).
    table : the objects' measurements, made already (e.g. by
        :func:`panoptem.distributed.measure_blockwise` for a volume larger than memory): then the
        labels and the image are only read a few chunks at a time, and ``label_divisor`` and
        ``surface`` are the table's.
    key, image_key : the dataset inside an HDF5 / Zarr / N5 file given as ``labels`` / ``image``.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> lab = np.zeros((8, 64, 64), np.uint32); lab[2:6, 10:30, 10:40] = 1; lab[1:7, 40:60, 40:60] = 2
    >>> report(lab, "mito_report.html", voxel_size=(5, 5, 5)).name
    'mito_report.html'
    """
    require_matplotlib()
    from .._measure import measure, summarize

    inputs = list(inputs)
    name = "labels"
    if isinstance(labels, (str, Path)):
        from ..io import read_image
        inputs.append(str(labels))
        name = Path(labels).name
        img = read_image(labels, key=key)
        labels, voxel_size = img.data, voxel_size if voxel_size is not None else img.voxel_size
    if isinstance(image, (str, Path)):
        from ..io import read_image
        inputs.append(str(image))
        image = read_image(image, key=image_key).data
    fmt = _format(path, format)
    path = prepare_report(path, format, overwrite, inputs)
    if int(top) < 0:
        raise PanoptemError(f"top must be 0 or more rows, not {top}.")

    if table is None:
        from .._memory import array_bytes, check_fits
        check_fits(array_bytes(labels, image), "A report measured in memory", "measure the labels block by "
                   "block instead (`panoptem report --blockwise`, or table=measure_blockwise(...) in Python).")
        lab = np.asarray(labels)
        img = None if image is None else np.asarray(image)
        table = measure(lab, voxel_size=voxel_size, image=img, label_divisor=label_divisor, surface=surface)
    else:  # read lazily: only the planes drawn and, for the counts per slice, a few chunks at a time
        lab, img = labels, image
    summary = summarize(table)
    ndim = len(lab.shape)
    pv = preview(lab, image=img, voxel_size=voxel_size, planes=("xy", "xz", "yz") if ndim == 3 else None,
                 n_slices=4, n_objects=len(table["label"]), model=name)
    figs = {"sizes": _size_figure(table, ndim, voxel_size is not None),
            "per_slice": _per_slice_figure(objects_per_slice(lab, np.sort(table["label"])), voxel_size)}
    order = np.argsort(-np.asarray(table["voxels"]), kind="stable")[:int(top)]
    title = title or f"panoptem report: {name}"
    if fmt == "pdf":
        return _write_pdf(path, title, pv.rgb, figs, table, summary, order, lab.shape, voxel_size, overwrite)
    body = _html_body(pv.rgb, figs, table, summary, order, lab.shape, voxel_size)
    return write_bytes(path, _html.page(title, body).encode("utf-8"), replace=overwrite)


def prepare_report(path, format: str | None = None, overwrite: bool = False, inputs=()) -> Path:
    """Check a report's path before the work: matplotlib installed, a known format (``format``
    or the suffix), no file to replace unless ``overwrite``, none of ``inputs``. Returns the
    absolute path."""
    require_matplotlib()
    fmt = _format(path, format)
    return check_target(path, tuple(k for k, v in FORMATS.items() if v == fmt), overwrite, inputs)


def objects_per_slice(labels, ids: np.ndarray | None = None) -> list[np.ndarray]:
    """Number of distinct objects in every slice along each axis (z, y, x; y, x in 2D).

    Parameters
    ----------
    labels : 2D or 3D label array, numpy or lazy (a Zarr/HDF5 array: read a few chunks at a
        time, so it may be larger than memory).
    ids : its non-zero labels, sorted (computed when None, which reads ``labels`` whole).

    Examples
    --------
    >>> lab = np.zeros((2, 3, 4), np.uint8); lab[0, :, 0] = 1; lab[1, 0, :] = 2
    >>> [c.tolist() for c in objects_per_slice(lab)]
    [[1, 1], [2, 1, 1], [2, 1, 1, 1]]
    """
    if not hasattr(labels, "shape"):
        labels = np.asarray(labels)
    ndim = len(labels.shape)
    if ids is None:
        ids = np.unique(np.asarray(labels))
        ids = ids[ids != 0]
    ids = np.asarray(ids)
    shape = (1, *labels.shape) if ndim == 2 else tuple(labels.shape)
    codes: list[list[np.ndarray]] = [[], [], []]
    pending = 0
    for region in _tiles(shape, _chunks_of(labels, ndim), np.dtype(labels.dtype).itemsize):
        tile = np.asarray(labels[region if ndim == 3 else region[1:]])
        tile = tile.reshape(tuple(r.stop - r.start for r in region))
        where = np.nonzero(tile)
        if not len(where[0]):
            continue
        obj = np.searchsorted(ids, tile[where]).astype(np.int64)
        for a, (coord, r, n) in enumerate(zip(where, region, shape)):
            codes[a].append(np.unique(obj * n + (coord + r.start)))
        pending += len(obj)
        if pending > _FLUSH:
            codes = [[np.unique(np.concatenate(c))] if c else [] for c in codes]
            pending = 0
    counts = []
    for a, n in enumerate(shape):
        u = np.unique(np.concatenate(codes[a])) if codes[a] else np.zeros(0, np.int64)
        counts.append(np.bincount(u % n, minlength=n).astype(np.int64))
    return counts if ndim == 3 else counts[1:]


def _chunks_of(labels, ndim: int) -> tuple[int, ...]:
    """The storage chunks of a lazy array (ZYX; Z = 1 for 2D); a numpy array's planes."""
    ch = getattr(labels, "chunks", None)
    if isinstance(labels, np.ndarray) or not ch or len(ch) != ndim:
        return (1, *labels.shape[-2:]) if ndim == 3 else (1, *labels.shape)
    ch = tuple(int(c if isinstance(c, int) else c[0]) for c in ch)  # a dask array: its first chunk
    return ch if ndim == 3 else (1, *ch)


def _tiles(shape, chunks, itemsize: int, budget: int | None = None):
    """Regions (ZYX slices) covering ``shape``: whole chunks, about ``budget`` bytes each at
    most (a chunk more where one chunk is larger), grown along x, then y, then z."""
    budget = budget or _TILE_BYTES
    cz, cy, cx = (max(1, min(int(c), n)) for c, n in zip(chunks, shape))
    per = cz * cy * cx * itemsize
    nx = max(1, min(-(-shape[2] // cx), budget // per))
    ny = max(1, min(-(-shape[1] // cy), budget // (per * nx))) if nx * cx >= shape[2] else 1
    nz = max(1, min(-(-shape[0] // cz), budget // (per * nx * ny))) if ny * cy >= shape[1] else 1
    dz, dy, dx = cz * nz, cy * ny, cx * nx
    for z in range(0, shape[0], dz):
        for y in range(0, shape[1], dy):
            for x in range(0, shape[2], dx):
                yield (slice(z, min(z + dz, shape[0])), slice(y, min(y + dy, shape[1])),
                       slice(x, min(x + dx, shape[2])))


def _format(path, fmt: str | None) -> str:
    suffix = Path(path).suffix.lower()
    if fmt is None:
        if suffix not in FORMATS:
            raise PanoptemError(f"Cannot tell the report format from '{Path(path).name}'; name it .html or .pdf.")
        return FORMATS[suffix]
    fmt = fmt.lower()
    if fmt not in ("html", "pdf"):
        raise PanoptemError(f"The report format must be html or pdf, not '{fmt}'.")
    if FORMATS.get(suffix) != fmt:
        raise PanoptemError(f"A {fmt} report needs a file name ending in "
                            f"{'.pdf' if fmt == 'pdf' else '.html'}, not '{Path(path).name}'.")
    return fmt


def _size_figure(table: dict, ndim: int, physical: bool) -> bytes:
    size_key = "volume_nm3" if ndim == 3 else "area_nm2"
    unit = ("nm³" if ndim == 3 else "nm²") if physical else ("voxels" if ndim == 3 else "pixels")
    axes = "zyx"[-ndim:]
    from matplotlib.ticker import MaxNLocator
    fig = figure(3.2 * (1 + ndim), 2.8)
    sub = fig.subplots(1, 1 + ndim)
    size = np.asarray(table[size_key], float)
    ax = sub[0]
    if len(size):
        pos = size[size > 0]
        wide = len(pos) and pos.max() / pos.min() > 100
        bins = np.geomspace(pos.min(), pos.max() * 1.0001, 30) if wide else 30
        ax.hist(size, bins=bins, color="#4c72b0")
        if wide:
            ax.set_xscale("log")
    ax.set_xlabel(f"{'volume' if ndim == 3 else 'area'} ({unit})")
    ax.set_ylabel("objects")
    for ax in sub:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for a, name in enumerate(axes):
        ax = sub[a + 1]
        ext = np.asarray(table[f"extent_{name}_nm"], float)
        if len(ext):
            ax.hist(ext, bins=30, color="#55a868")
        ax.set_xlabel(f"extent along {name} ({'nm' if physical else 'voxels'})")
    fig.tight_layout()
    return png_bytes(fig, dpi=100)


def _per_slice_figure(counts: list[np.ndarray], voxel_size) -> bytes:
    from matplotlib.ticker import MaxNLocator
    axes = "zyx"[-len(counts):]
    fig = figure(3.6 * len(counts), 2.6)
    sub = fig.subplots(1, len(counts))
    for ax, c, name in zip(np.atleast_1d(sub), counts, axes):
        ax.step(np.arange(len(c)), c, where="mid", color="#c44e52")
        ax.set_xlabel(f"{name} (slice index)")
        ax.set_ylabel("objects in slice")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return png_bytes(fig, dpi=100)


def _summary_rows(table, shape, voxel_size) -> list[tuple[str, str]]:
    return [("objects", str(len(table["label"]))), ("shape", " x ".join(str(n) for n in shape)),
            ("voxel size", " x ".join(f"{v:g}" for v in voxel_size) + " nm" if voxel_size is not None
             else "unknown (measurements in voxel units)")]


def _html_body(montage, figs, table, summary, order, shape, voxel_size) -> str:
    parts = ["<h2>Summary</h2>",
             _html.table(["", "value"], _summary_rows(table, shape, voxel_size)),
             "<h3>Per class</h3>",
             _html.table(list(summary), zip(*(np.asarray(v).tolist() for v in summary.values())), cls="num"),
             "<h2>Planes</h2>", _html.img(_png(montage), "montage of planes",
                                           "Evenly spaced planes; one colour per object."),
             "<h2>Object sizes</h2>", _html.img(figs["sizes"], "histograms of object size and extent"),
             "<h2>Objects per slice</h2>",
             _html.img(figs["per_slice"], "objects per slice along each axis",
                       "Distinct objects present in every slice along each axis.")]
    cols = list(table)
    rows = [[np.asarray(table[c])[i] for c in cols] for i in order]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    w.writerows(zip(*(np.asarray(v).tolist() for v in table.values())))
    link = (f'<a download="objects.csv" href="{_html.data_uri(buf.getvalue().encode(), "text/csv")}">'
            f"all {len(table['label'])} objects as CSV</a>")
    parts += [f"<h2>Largest objects</h2><p class=\"note\">The {len(order)} largest objects by voxel count, "
              f"with the measurements of <code>panoptem measure</code> (positions and extents in nm, "
              f"bounding boxes in voxels); {link}.</p>",
              _html.table(cols, rows, cls="num objects")]
    return "\n".join(parts)


def _write_pdf(path, title, montage, figs, table, summary, order, shape, voxel_size, overwrite: bool = True) -> Path:
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.image import imread

    from .._atomic import atomic_path
    with atomic_path(path, suffix=".tmp", replace=overwrite) as tmp:
        with PdfPages(tmp) as pdf:
            fig = figure(8.27, 11.69)
            fig.text(0.06, 0.96, title, fontsize=14, va="top")
            lines = [f"{k}: {v}" for k, v in _summary_rows(table, shape, voxel_size)]
            cols = list(summary)
            for vals in zip(*(np.asarray(v).tolist() for v in summary.values())):
                lines.append(", ".join(f"{c} {_html.cell(v)}" for c, v in zip(cols, vals)))
            fig.text(0.06, 0.92, "\n".join(lines), fontsize=9, va="top", family="monospace")
            ax = fig.add_axes([0.04, 0.05, 0.92, 0.78])
            ax.imshow(montage, interpolation="nearest")
            ax.axis("off")
            pdf.savefig(fig)
            for key in ("sizes", "per_slice"):
                pic = imread(io.BytesIO(figs[key]), format="png")
                fig = figure(11.69, 11.69 * pic.shape[0] / pic.shape[1] + 0.4)
                ax = fig.add_axes([0, 0, 1, 1])
                ax.imshow(pic)
                ax.axis("off")
                pdf.savefig(fig)
            cols = [c for c in ("label", "class_id", "voxels", "volume_nm3", "area_nm2", "extent_z_nm",
                                "extent_y_nm", "extent_x_nm", "equivalent_diameter_nm", "sphericity",
                                "circularity", "mean_intensity") if c in table]
            fig = figure(11.69, 8.27)
            fig.text(0.04, 0.96, f"The {len(order)} largest objects (all columns: panoptem measure)",
                     fontsize=11, va="top")
            if len(order):
                ax = fig.add_axes([0.02, 0.02, 0.96, 0.88])
                ax.axis("off")
                cells = [[_html.cell(np.asarray(table[c])[i]) for c in cols] for i in order]
                t = ax.table(cellText=cells, colLabels=cols, loc="upper center")
                t.auto_set_font_size(False)
                t.set_fontsize(6.5)
            pdf.savefig(fig)
    return path
