"""Writers: labels and grey images to OME-TIFF or OME-Zarr, atomically, with voxel size in nm.

Files are written under a temporary name in the target folder and renamed into place when
complete, so a crash never leaves a half-written file at the target. Inputs are never
overwritten.
"""
from __future__ import annotations

import json
import operator
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .._atomic import check_output, exclusive_output, move_into_place
from ..errors import PanoptemError
from .readers import TIFF_SUFFIXES, ZARR_SUFFIXES
from .zarr_write import put

#: what labels and images are written as, and the suffix each format gets by default
FORMATS = {"tiff": TIFF_SUFFIXES[0], "zarr": ZARR_SUFFIXES[0]}
# OME-XML pixel types; other dtypes (uint64, int64) get a tifffile JSON description instead.
_OME_DTYPES = {"uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64"}
_UINT32_MAX = 2**32 - 1
_BLOCK_BYTES = 256 << 20  # size of the blocks that lazy inputs are read in
_MAX_SLABS = 4  # partially filled zarr chunk rows kept in memory before writing them as they are


# ---- checks -----------------------------------------------------------------------------

def _format(p: Path) -> str:
    suffix = p.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in ZARR_SUFFIXES:
        return "zarr"
    raise PanoptemError(f"Cannot write '{p.name}': unsupported extension '{suffix}'; "
                        f"use one of {', '.join(TIFF_SUFFIXES + ZARR_SUFFIXES)}.")


def prepare_target(path, overwrite: bool, inputs: Iterable) -> Path:
    """Absolute path of a label or image output (.tif/.tiff/.zarr) after the
    input-protection and overwrite checks (:func:`panoptem._atomic.check_output`)."""
    _format(Path(path).expanduser())
    return check_output(path, overwrite, inputs)


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise PanoptemError(f"Can only write 2D (YX) or 3D (ZYX) arrays, not shape {shape}; "
                            "squeeze or select the axes to write.")
    return shape


def positive_sizes(value) -> tuple[float, ...] | None:
    """The sizes ``value`` gives (a number or a sequence of them) as floats, or None where one
    is not a positive finite number."""
    try:
        vs = tuple(float(v) for v in np.ravel(np.asarray(value, dtype=object)))
    except (TypeError, ValueError):
        return None
    return vs if all(np.isfinite(v) and v > 0 for v in vs) else None


def check_voxel_size(voxel_size, ndim: int) -> tuple[float, ...] | None:
    """``voxel_size`` (nm, one per axis) as floats, None as None; refused unless positive and finite."""
    if voxel_size is None:
        return None
    vs = positive_sizes(voxel_size)
    if vs is None or len(vs) != ndim:
        raise PanoptemError(f"voxel_size must be {ndim} positive numbers in nm (one per axis), not {voxel_size}.")
    return vs


def check_origin(origin, voxel_size, ndim: int) -> tuple[float, ...] | None:
    """``origin`` (nm position of the first voxel, one per axis) as floats; refused unless
    finite and given with a voxel size."""
    if origin is None:
        return None
    o = tuple(float(v) for v in origin)
    if len(o) != ndim or not all(np.isfinite(v) for v in o):
        raise PanoptemError(f"origin must be {ndim} finite numbers in nm (one per axis), not {origin}.")
    if voxel_size is None:
        raise PanoptemError("origin (a position in nm) needs voxel_size too; give both or neither.")
    return o


def _fit(block, dtype: np.dtype) -> np.ndarray:
    """``block`` as ``dtype``, refusing any change of value (wrap-around, rounding, sign)."""
    a = np.asarray(block)
    if a.dtype == dtype:
        return a
    if a.size == 0 or np.can_cast(a.dtype, dtype, "safe"):
        return a.astype(dtype)
    if dtype.kind in "ui":
        if a.dtype.kind == "f" and not (np.isfinite(a).all() and np.array_equal(a, np.rint(a))):
            raise PanoptemError(f"Values to write as {dtype} are not whole numbers; round them first.")
        if a.dtype.kind not in "uifb":
            raise PanoptemError(f"Cannot write {a.dtype} data as {dtype}; convert to numbers first.")
        info = np.iinfo(dtype)
        lo, hi = int(a.min()), int(a.max())  # exact: compared as floats, 2**32 passed for 2**32 - 1
        if lo < info.min or hi > info.max:
            raise PanoptemError(f"Values {lo}..{hi} do not fit in {dtype}; use a wider dtype.")
    elif dtype.kind == "f" and a.dtype.kind not in "uifb":
        raise PanoptemError(f"Cannot write {a.dtype} data as {dtype}; convert to numbers first.")
    return a.astype(dtype)


def _blocks(a, target_bytes: int = _BLOCK_BYTES):
    """``(index, ndarray)`` pieces of an array or lazy array-like, along axis 0 for 3D lazy data."""
    if isinstance(a, np.ndarray) or a.ndim != 3:
        yield slice(None), np.asarray(a)
        return
    plane = int(np.prod(a.shape[1:])) * np.dtype(a.dtype).itemsize
    step = max(1, target_bytes // max(plane, 1))
    for z0 in range(0, a.shape[0], step):
        yield slice(z0, z0 + step), np.asarray(a[z0:z0 + step])


def label_dtype(labels) -> np.dtype:
    """The dtype labels are written in: uint32, or uint64 when the largest id needs it.

    Raises PanoptemError for negative ids, non-integer float ids or non-numeric data.
    Lazy inputs are scanned block by block.
    """
    dt = np.dtype(labels.dtype)
    if dt.kind == "b" or (dt.kind == "u" and dt.itemsize <= 4):
        return np.dtype(np.uint32)
    if dt.kind not in "uif":
        raise PanoptemError(f"Labels must be integers, not {dt}; convert them to an unsigned integer type.")
    lo, hi = 0, 0
    for _, b in _blocks(labels):
        if b.size == 0:
            continue
        if dt.kind == "f" and not (np.isfinite(b).all() and np.array_equal(b, np.rint(b))):
            raise PanoptemError("Labels are floats with non-integer values; labels must be whole numbers "
                                "(round or relabel them first).")
        lo, hi = min(lo, int(b.min())), max(hi, int(b.max()))  # exact: float32(2**32 - 1) is 2**32
    if lo < 0:
        raise PanoptemError(f"Labels must be >= 0 (0 = background) but the smallest is {lo}; relabel them first.")
    if hi <= _UINT32_MAX:
        return np.dtype(np.uint32)
    if hi <= np.iinfo(np.uint64).max:
        return np.dtype(np.uint64)
    raise PanoptemError(f"The largest label {hi} does not fit in uint64; relabel (e.g. sequentially) first.")


def _z_range(key, n: int) -> tuple[int, int] | None:
    """``(z0, z1)`` when ``key`` selects whole slices along axis 0, else None."""
    if isinstance(key, tuple):
        if not key or any(not (k is Ellipsis or (isinstance(k, slice) and k == slice(None))) for k in key[1:]):
            return None
        key = key[0]
    if key is Ellipsis:
        return 0, n
    if isinstance(key, slice):
        z0, z1, step = key.indices(n)
        return (z0, max(z0, z1)) if step == 1 else None
    if isinstance(key, (bool, np.bool_)):
        return None
    try:
        i = operator.index(key)
    except TypeError:
        return None
    if not -n <= i < n:
        raise IndexError(f"slice {i} is outside the {n} slices of the output")
    i %= n
    return i, i + 1


# ---- writers ----------------------------------------------------------------------------

class LabelWriter:
    """Streaming writer of a 2D or 3D array, used as a context manager.

    ``w[z0:z1] = block`` (or ``w[z] = plane``) writes slices; leaving the ``with`` block
    normally renames the finished file into place, leaving it with an exception deletes the
    temporary file, so the target never holds a partial result. Values are checked, never
    wrapped: a block that does not fit ``dtype`` raises PanoptemError.
    """

    def __init__(self, path, shape, dtype, voxel_size=None, chunks=None, overwrite=False, inputs=(),
                 labels=True, origin=None, provenance: dict | None = None):
        self.shape = _check_shape(shape)
        self.provenance = provenance
        self.dtype = np.dtype(dtype)
        self.voxel_size = check_voxel_size(voxel_size, len(self.shape))
        self.origin = check_origin(origin, self.voxel_size, len(self.shape))
        self.path = prepare_target(path, overwrite, inputs)
        self.labels = labels
        self._overwrite = overwrite
        self._guard = ExitStack()  # one writer per target; removes what killed writers left
        self._guard.enter_context(exclusive_output(self.path))
        self._tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.part"
        self._done = self._finished = False
        try:
            self._open(chunks)
        except BaseException:
            self._remove_tmp()
            self._guard.close()
            raise

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def finish(self) -> None:
        """Complete the temporary result (metadata, pyramid) without moving it into place yet:
        several outputs that belong together are all finished before any is moved."""
        self._check_open()
        if not self._finished:
            self._finish()
            self._finished = True

    def close(self) -> Path:
        """Finish writing and move the result to :attr:`path`; returns it."""
        if self._done:
            return self.path
        try:
            self.finish()
            if self.path.exists() and not self._overwrite:
                raise PanoptemError(f"'{self.path}' appeared while writing; choose another output path "
                                    "or pass overwrite=True.")
            move_into_place(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._guard.close()
        return self.path

    def abort(self) -> None:
        """Drop everything written so far (the target is left as it was)."""
        self._done = True
        self._close_handles()
        self._remove_tmp()
        self._guard.close()

    def _remove_tmp(self):
        if self._tmp.is_dir():
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif self._tmp.exists():
            self._tmp.unlink()

    def _check_open(self):
        if self._done:
            raise PanoptemError(f"The writer of '{self.path}' is closed; open a new one.")

    # subclass hooks
    def _open(self, chunks):  # pragma: no cover - abstract
        raise NotImplementedError

    def _finish(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _close_handles(self):
        pass


def _tiff_description(shape, dtype: np.dtype, voxel, provenance: dict | None = None) -> str:
    """OME-XML (or JSON, for the types OME lacks) with the voxel size in nm and the run's
    record (see :mod:`panoptem._provenance`)."""
    import tifffile

    from .._provenance import KEY, ome_annotation
    axes = "ZYX"[-len(shape):]
    if dtype.name in _OME_DTYPES:
        md = {}
        for ax, v in zip(axes, voxel or ()):
            md[f"PhysicalSize{ax}"], md[f"PhysicalSize{ax}Unit"] = v, "nm"
        if provenance:
            md["CommentAnnotation"] = ome_annotation(provenance)
        ome = tifffile.OmeXml()
        planes = shape[0] if len(shape) == 3 else 1
        ome.addimage(dtype, shape, (planes, 1, 1, shape[-2], shape[-1], 1), axes=axes, **md)
        return ome.tostring(declaration=True)
    md = {"shape": list(shape), "axes": axes}
    if voxel:
        md["voxel_size_nm"] = list(voxel)
    if provenance:
        md[KEY] = provenance
    return json.dumps(md)


#: uncompressed bytes per TIFF strip (tifffile's default size)
_STRIP_BYTES = 256 * 1024


def _fast_deflate():
    """zlib-ng's encoder when imagecodecs has it, else None (tifffile's own). It writes standard
    zlib streams, several times faster than zlib or libdeflate on label images; at level 3,
    which on mitochondria labels compresses as well as the default level 6 (444 against 453 x)
    in 60 % of the time."""
    try:
        import imagecodecs
        if not imagecodecs.ZLIBNG.available:
            return None
        return lambda data: imagecodecs.zlibng_encode(data, level=3)
    except (ImportError, AttributeError):
        return None


class _TiffWriter(LabelWriter):
    """OME-TIFF (JSON-described TIFF for 64-bit types), zlib, one page per Z slice, written in
    order; a 2D image is kept in memory until closed."""

    def _open(self, chunks):
        import tifffile
        nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._tw = tifffile.TiffWriter(self._tmp, bigtiff=nbytes >= 2**31 - 2**25, ome=False)
        self._next = 0
        self._buf = np.zeros(self.shape, self.dtype) if self.ndim == 2 else None
        self._desc = _tiff_description(self.shape, self.dtype, self.voxel_size, self.provenance)
        # zlib (deflate), which every reader decodes
        # the Software tag tells labels from grey images (napari's reader opens them as such)
        self._kw = dict(compression="zlib", photometric="minisblack", metadata=None,
                        software="panoptem labels" if self.labels else "panoptem image",
                        maxworkers=min(os.cpu_count() or 1, 8))
        self._deflate = _fast_deflate()
        row = int(self.shape[-1]) * self.dtype.itemsize
        self._rows = max(1, min(int(self.shape[-2]), _STRIP_BYTES // max(row, 1)))
        # also as resolution tags (pixels per cm) for other software, where a TIFF rational holds them
        if self.voxel_size is not None and 1e7 / min(self.voxel_size[-2:]) < 2**32 - 1:
            y, x = self.voxel_size[-2:]
            self._kw.update(resolution=(1e7 / x, 1e7 / y), resolutionunit="CENTIMETER")

    def __setitem__(self, key, value):
        self._check_open()
        if self.ndim == 2:
            self._buf[key] = _fit(value, self.dtype)
            return
        zr = _z_range(key, self.shape[0])
        if zr is None:
            raise PanoptemError("TIFF output takes whole slices along Z (w[z0:z1] = block); "
                                "write to .zarr to store partial slices.")
        z0, z1 = zr
        if z0 != self._next:
            raise PanoptemError(f"TIFF output must be written in slice order: expected slice {self._next}, "
                                f"got {z0}; write slices in order or write to .zarr.")
        block = np.broadcast_to(_fit(value, self.dtype), (z1 - z0, *self.shape[1:]))
        for page in block:
            self._write_page(page)
        self._next = z1

    def _write_page(self, page):
        desc = self._desc if self._next == 0 else None
        page = np.ascontiguousarray(page)
        if self._deflate is None or page.ndim != 2:
            self._tw.write(page, description=desc, **self._kw)
        else:  # the same deflate streams, compressed by zlib-ng: labels in a fraction of the time
            n = self._rows
            strips = (self._deflate(page[r:r + n]) for r in range(0, page.shape[0], n))
            self._tw.write(strips, shape=page.shape, dtype=page.dtype, rowsperstrip=n, description=desc,
                           **self._kw)
        self._next += 1

    def _finish(self):
        if self.ndim == 2:
            self._write_page(self._buf)
        elif self._next != self.shape[0]:
            raise PanoptemError(f"Only {self._next} of {self.shape[0]} slices were written to '{self.path.name}'; "
                                "nothing was saved, write every slice before closing.")
        self._tw.close()

    def _close_handles(self):
        try:
            self._tw.close()
        except Exception:  # noqa: BLE001 - already failing; the temp file is removed next
            pass


def _default_chunks(shape, itemsize: int) -> tuple[int, ...]:
    if len(shape) == 2:
        return min(shape[0], 1024), min(shape[1], 1024)
    z, y, x = shape
    # a chunk row (all chunks of cz slices) is buffered while slices stream in: keep it <= 256 MiB
    fit = max(1, _BLOCK_BYTES // (y * x * itemsize))
    cz = min(32, 1 << (fit.bit_length() - 1))
    return min(z, cz), min(y, 256), min(x, 256)


class _ZarrWriter(LabelWriter):
    """OME-Zarr (NGFF 0.4, zarr format 2, Blosc-zstd) with the array at ``"0"`` and a
    multiscale pyramid below it (see :mod:`.ome`); slices in any order. Whole-slice writes
    are gathered per chunk row so each chunk is compressed once; unwritten regions read as 0.
    On an exception the temporary folder is deleted (no resume)."""

    def _open(self, chunks):
        import zarr

        from .zarr_write import label_compressor
        chunks = tuple(int(c) for c in chunks) if chunks is not None else \
            _default_chunks(self.shape, self.dtype.itemsize)
        if len(chunks) != self.ndim or min(chunks) < 1:
            raise PanoptemError(f"chunks must be {self.ndim} positive sizes, not {chunks}.")
        group = zarr.open_group(str(self._tmp), mode="w", zarr_format=2)
        self._arr = group.create_array(
            "0", shape=self.shape, chunks=chunks, dtype=self.dtype, fill_value=0,
            compressors=label_compressor(),
            chunk_key_encoding={"name": "v2", "separator": "/"})
        self._slabs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __setitem__(self, key, value):
        self._check_open()
        zr = _z_range(key, self.shape[0]) if self.ndim == 3 else None
        if zr is None:
            self._flush(list(self._slabs))
            put(self._arr, key, _fit(value, self.dtype))
            return
        z0, z1 = zr
        block = np.broadcast_to(_fit(value, self.dtype), (z1 - z0, *self.shape[1:]))
        cz, n = self._arr.chunks[0], self.shape[0]
        z = z0
        while z < z1:
            c0 = z - z % cz
            c1 = min(c0 + cz, n)
            e = min(z1, c1)
            if z == c0 and e == c1 and c0 not in self._slabs:
                put(self._arr, slice(c0, c1), block[z - z0:e - z0])
            else:
                buf, filled = self._slabs.setdefault(
                    c0, (np.zeros((c1 - c0, *self.shape[1:]), self.dtype), np.zeros(c1 - c0, bool)))
                buf[z - c0:e - c0] = block[z - z0:e - z0]
                filled[z - c0:e - c0] = True
                if filled.all():
                    self._flush([c0])
                elif len(self._slabs) > _MAX_SLABS:
                    self._flush([next(iter(self._slabs))])
            z = e

    def _flush(self, starts):
        """Write buffered chunk rows (only their written slices) and forget them."""
        for c0 in starts:
            buf, filled = self._slabs.pop(c0)
            if filled.all():
                put(self._arr, slice(c0, c0 + len(buf)), buf)
                continue
            edges = np.flatnonzero(np.diff(np.concatenate([[0], filled.view(np.int8), [0]])))
            for a, b in zip(edges[::2], edges[1::2]):
                put(self._arr, slice(c0 + a, c0 + b), buf[a:b])

    def _finish(self):
        from .ome import write_pyramid_and_metadata
        self._flush(list(self._slabs))
        write_pyramid_and_metadata(str(self._tmp), self.voxel_size, self.path.stem, labels=self.labels,
                                   origin=self.origin)
        if self.provenance:
            import zarr

            from .._provenance import KEY
            zarr.open_group(str(self._tmp), mode="a").attrs[KEY] = self.provenance


def open_label_writer(path, shape: Sequence[int], dtype=np.uint32, voxel_size=None, chunks=None,
                      overwrite: bool = False, inputs: Iterable = (), origin=None,
                      provenance: dict | None = None) -> LabelWriter:
    """A streaming writer for labels larger than memory (.tif/.tiff or .zarr).

    Parameters
    ----------
    path : target file; ``.zarr`` accepts slices in any order, TIFF needs them in Z order.
    shape : (Z, Y, X) or (Y, X).
    dtype : an unsigned integer type (uint32 unless ids exceed 4294967295).
    voxel_size : nm per voxel, one per axis.
    origin : nm position of the first voxel, one per axis (an OME-Zarr translation; needs
        ``voxel_size``; TIFF does not keep it).
    chunks : zarr chunk shape (default: up to 32 x 256 x 256); ignored for TIFF.
    overwrite : replace an existing target.
    inputs : paths the target must never be, contain or be inside.
    provenance : what made the labels (:func:`panoptem._provenance.run_record`), kept with them
        (an OME-TIFF comment annotation, an OME-Zarr group attribute).

    Examples
    --------
    >>> with open_label_writer("out.zarr", (100, 64, 64), voxel_size=(5, 5, 5)) as w:
    ...     for z0 in range(0, 100, 10):
    ...         w[z0:z0 + 10] = np.full((10, 64, 64), z0 // 10 + 1, np.uint32)  # a block of labels
    >>> w.path.name
    'out.zarr'
    """
    dt = np.dtype(dtype)
    if dt.kind != "u":
        raise PanoptemError(f"Labels are written as an unsigned integer type (uint32 or uint64), not {dt}.")
    cls = _TiffWriter if _format(Path(path)) == "tiff" else _ZarrWriter
    return cls(path, shape, dt, voxel_size, chunks, overwrite, inputs, labels=True, origin=origin,
               provenance=provenance)


def write_labels(path, labels, voxel_size=None, overwrite: bool = False, inputs: Iterable = (),
                 chunks=None, origin=None, provenance: dict | None = None) -> Path:
    """Write a 2D or 3D label array to .tif/.tiff (OME-TIFF, zlib) or .zarr (OME-Zarr), atomically.

    The file holds uint32, or uint64 when the largest id needs it; values are never changed
    (negative or non-integer labels raise PanoptemError). ``labels`` may be a lazy array-like,
    which is read block by block. ``inputs`` are paths never to overwrite; ``chunks`` is the
    Zarr chunk shape (default: up to 32 x 256 x 256; ignored for TIFF); ``origin``,
    ``provenance``: see :func:`open_label_writer`.

    Examples
    --------
    >>> labels = np.zeros((4, 32, 32), np.uint32); labels[1:3, 8:16, 8:16] = 1
    >>> write_labels("mito.tif", labels, voxel_size=(5.0, 5.0, 5.0)).name
    'mito.tif'
    """
    return write_labels_together([(path, labels, chunks)], voxel_size, overwrite, inputs, origin, provenance)[0]


def write_labels_together(items: Sequence[tuple], voxel_size=None, overwrite: bool = False,
                          inputs: Iterable = (), origin=None, provenance: dict | None = None) -> list[Path]:
    """Write several label arrays (``[(path, labels), ...]``, or ``(path, labels, chunks)``
    for a Zarr chunk shape) as :func:`write_labels` does, moving them into place only once
    all are complete: a run killed while writing leaves none of them, so running it again
    writes them all afresh. ``provenance``: the run's record, kept with each."""
    inputs = list(inputs or ())
    targets = [Path(it[0]).expanduser().absolute() for it in items]
    if len(set(targets)) < len(targets):
        raise PanoptemError(f"Two outputs go to one path ({[str(t) for t in targets]}); give each its own.")
    with ExitStack() as stack:
        writers = []
        for path, labels, *rest in items:
            if not (hasattr(labels, "shape") and hasattr(labels, "dtype")):
                from ..labels import as_array
                labels = as_array(labels, "labels")
            dt = label_dtype(labels)
            chunks = rest[0] if rest else None
            w = stack.enter_context(open_label_writer(path, labels.shape, dt, voxel_size, chunks, overwrite, inputs,
                                                      origin, provenance))
            for index, block in _blocks(labels):
                w[index] = block.astype(dt, copy=False)  # values were checked by label_dtype
            writers.append(w)
        for w in writers:  # every one complete before any is moved into place
            w.finish()
    return [w.path for w in writers]


def write_image(path, image, voxel_size=None, overwrite: bool = False, inputs: Iterable = (),
                origin=None) -> Path:
    """Write a grey 2D or 3D image to .tif/.tiff or .zarr, atomically, keeping its dtype
    (``origin``: see :func:`open_label_writer`).

    bool is stored as uint8 and float16 as float32 (TIFF/OME have no such pixel types).
    """
    image = image if hasattr(image, "shape") and hasattr(image, "dtype") else np.asarray(image)  # nested lists too
    with open_image_writer(path, image.shape, image.dtype, voxel_size, overwrite, inputs, origin) as w:
        fill(w, image)
    return w.path


def open_image_writer(path, shape: Sequence[int], dtype, voxel_size=None, overwrite: bool = False,
                      inputs: Iterable = (), origin=None) -> LabelWriter:
    """A streaming writer of a grey image of ``dtype`` (as :func:`write_image` stores it), used
    as :func:`open_label_writer`."""
    dt = np.dtype(dtype).newbyteorder("=")  # big-endian data (ImageJ's TIFFs) is stored by value
    if dt.kind == "b":
        dt = np.dtype(np.uint8)
    elif dt == np.float16:
        dt = np.dtype(np.float32)
    elif dt.kind not in "uif":
        raise PanoptemError(f"Cannot write an image of type {dt}; convert it to integers or floats.")
    cls = _TiffWriter if _format(Path(path)) == "tiff" else _ZarrWriter
    return cls(path, shape, dt, voxel_size, None, overwrite, inputs, labels=False, origin=origin)


def fill(writer: LabelWriter, array) -> None:
    """Write all of ``array`` (in memory or lazy) into an open writer, block by block."""
    for index, block in _blocks(array):
        writer[index] = block  # stored by value in the writer's dtype (its _fit)
