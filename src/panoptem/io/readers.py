"""Image readers: TIFF/BigTIFF, PNG/JPEG, folders of 2D images, MRC, Zarr/OME-Zarr and HDF5.

Every reader returns an :class:`ImageData` holding a 2D (YX) or 3D (ZYX) array, read lazily
where the format allows, and the voxel size in nm when the file records it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .._memory import human_bytes
from ..errors import PanoptemError
from . import _meta
from ._lazy import ImageStack, StoreArray

TIFF_SUFFIXES = (".tif", ".tiff", ".btf")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
MRC_SUFFIXES = (".mrc", ".rec", ".map", ".st")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ZARR_SUFFIXES = (".zarr",)
N5_SUFFIXES = (".n5",)
SUPPORTED = TIFF_SUFFIXES + PLAIN_SUFFIXES + MRC_SUFFIXES + HDF5_SUFFIXES + ZARR_SUFFIXES + N5_SUFFIXES
SLICE_SUFFIXES = TIFF_SUFFIXES + PLAIN_SUFFIXES

# Weights of skimage.color.rgb2gray (ITU-R BT.709 luma).
_LUMA = np.array([0.2125, 0.7154, 0.0721], np.float32)


@dataclass
class ImageData:
    """An image and its physical metadata.

    Attributes
    ----------
    data : numpy array or lazy array-like (``shape``, ``dtype``, ``ndim``, numpy indexing
        that returns numpy), 2D (YX) or 3D (ZYX).
    voxel_size : nm per voxel, one entry per axis of ``data``; None when unknown.
    path : where it was read from.
    axes : "YX" or "ZYX" (derived from ``data.ndim`` when not given).
    key : the dataset inside ``path`` it was read from (HDF5, Zarr), if one was named.
    notes : what the reader assumed where the file left it open (e.g. planes that
        the file marks as colour planes, read as slices); the command line prints them.
    origin : nm position of the first voxel, one entry per axis of ``data`` (an OME-Zarr
        level's translation, or a Zarr, HDF5 or N5 array's ``offset`` attribute); None when the file
        does not say or the voxel size is unknown. Outputs on the same grid carry it (OME-Zarr).
    provenance : what made the labels, for a TIFF or Zarr file panoptem wrote (model, weights'
        hash, parameters, inputs, pixel sizes, release, time: see :mod:`panoptem._provenance`);
        None for any other file.
    """

    data: object
    voxel_size: tuple[float, ...] | None = None
    path: str | None = None
    axes: str = ""
    key: str | None = None
    notes: tuple[str, ...] = ()
    origin: tuple[float, ...] | None = None
    provenance: dict | None = None

    def __post_init__(self):
        if not self.axes:
            self.axes = "ZYX"[-self.data.ndim:] if self.data.ndim in (2, 3) else ""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def read_image(path, key: str | None = None, lazy: bool = True, pixel_size_nm: float | None = None) -> ImageData:
    """Read a 2D or 3D image with its voxel size (nm).

    Parameters
    ----------
    path : file or folder: TIFF/BigTIFF (.tif, .tiff, .btf), PNG/JPEG, MRC (.mrc, .rec, .map,
        .st), HDF5 (.h5, .hdf5, .hdf), Zarr / OME-Zarr (.zarr or any folder holding zarr
        metadata), or a folder of 2D TIFF/PNG/JPEG slices (stacked in natural name order).
    key : HDF5 dataset or Zarr array/group inside ``path``; needed only when there are several.
    lazy : return an array-like that reads on demand (memmap, :class:`StoreArray`,
        :class:`ImageStack`) instead of loading everything. PNG/JPEG are always read at once.
    pixel_size_nm : for an OME-Zarr multiscale image read without ``key``: the level whose
        in-plane pixel size is nearest this (e.g. the model's) is read instead of level 0.

    Returns
    -------
    ImageData
        Singleton axes are dropped; RGB(A) becomes grey (see :func:`to_grey`).
        ``voxel_size`` comes from OME-XML, panoptem's TIFF description, ImageJ metadata or
        resolution tags (TIFF), the MRC header, NGFF scales (OME-Zarr) or ``element_size_um`` /
        ``voxel_size`` / ``resolution`` attributes (HDF5, Zarr); it is None unless every axis is known.

    Examples
    --------
    >>> from panoptem.sample import SAMPLE_PATH
    >>> img = read_image(SAMPLE_PATH)
    >>> img.data.shape, img.voxel_size
    ((30, 384, 384), (5.0, 5.0, 5.0))
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise PanoptemError(f"No file or folder at '{p}'; check the path.")
    kind, renamed = _kind(p), ()
    if kind == "plain" and _tiff_bytes(p):  # PIL would read its first page alone
        kind, renamed = "tiff", (f"'{p.name}' is a TIFF file (named {p.suffix}): read as TIFF",)
    if key and kind not in ("hdf5", "zarr", "n5"):
        what = "a folder of images" if kind == "folder" else f"a {_KIND_NAMES[kind]} file"
        raise PanoptemError(f"key=... (--key) names a dataset inside an HDF5, Zarr or N5 container, but "
                            f"'{p.name}' is {what}; drop the key.")
    reader = {"tiff": _read_tiff, "plain": _read_plain, "mrc": _read_mrc, "hdf5": _read_hdf5,
              "zarr": partial(_read_zarr, pixel_size_nm=pixel_size_nm), "folder": _read_folder,
              "n5": _read_n5}[kind]
    try:
        origin = None
        if kind in ("zarr", "n5"):  # the array actually read is named, so it can be opened again
            data, voxel, key, *notes = reader(p, key, lazy)
        elif kind == "hdf5":
            data, voxel, origin = reader(p, key, lazy)
            notes = []
        else:
            data, voxel, *notes = reader(p, lazy)
    except (PanoptemError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - any library error here means an unreadable file
        raise unreadable(p, kind, e) from None
    if kind == "zarr" and voxel is not None:
        origin = _zarr_origin(p, key)
    elif kind == "n5" and voxel is not None:
        from ._n5 import open_dataset
        arr = open_dataset(p, key)
        origin = _kept(arr.origin(), arr.shape)
    from .._provenance import read_provenance
    prov = read_provenance(p, key) if kind in ("tiff", "zarr") else None
    return ImageData(data, voxel, str(p), notes=renamed + tuple(n for n in notes if n), key=key, origin=origin,
                     provenance=prov)


def image_keys(path) -> list[str]:
    """The keys ``read_image`` takes for each image an HDF5 file, Zarr group or N5 container
    holds, where it needs one (several arrays; an OME-Zarr multiscale counts once, by its group);
    [] where ``read_image(path)`` reads its one image. Arrays that are not images (fewer than 2
    axes past single entries, or tables a few columns wide) are left out.

    Examples
    --------
    >>> import h5py
    >>> with h5py.File("cremi.h5", "w") as f:
    ...     f["volumes/raw"] = np.zeros((2, 8, 8), np.uint8)
    ...     f["volumes/labels/neuron_ids"] = np.zeros((2, 8, 8), np.uint64)
    ...     f["annotations/locations"] = np.zeros((5, 3))
    >>> image_keys("cremi.h5")
    ['volumes/labels/neuron_ids', 'volumes/raw']
    """
    p = Path(path).expanduser()
    kind = _kind(p) if p.exists() else None
    try:
        if kind == "hdf5":
            import h5py
            with h5py.File(p, "r") as f:
                found: list[tuple[str, tuple]] = []
                f.visititems(lambda name, obj: found.append((name, obj.shape)) if isinstance(obj, h5py.Dataset)
                             else None)
            alone = len(found) == 1
        elif kind == "zarr":
            import zarr
            root = zarr.open(str(p), mode="r")
            if isinstance(root, zarr.Array) or _meta.ngff_multiscales(root.attrs):
                return []
            pyramids = _pyramid_groups(root)
            found = [(g, (4, 4)) for g in pyramids] + [
                (name, root[name].shape) for name in _array_keys(root) if not any(name.startswith(g + "/")
                                                                                  for g in pyramids)]
            alone = len(found) == 1  # read_image finds it alone (a pyramid in a group too)
        elif kind == "n5":
            from ._n5 import datasets, open_dataset
            found = [(d, open_dataset(p, d).shape) for d in datasets(p) if d]
            alone = len(found) <= 1
        else:
            return []
    except Exception as e:  # noqa: BLE001 - any library error here means an unreadable file
        raise unreadable(p, kind, e) from None
    if alone:
        return []
    return sorted(name for name, shape in found if _image_like(shape))


def _image_like(shape) -> bool:
    """A 2D or 3D image once single entries are dropped, at least 4 pixels a side in-plane (not a
    table of coordinates, three or so columns wide)."""
    kept = [int(n) for n in shape if n != 1]
    return len(kept) in (2, 3) and min(kept[-2:]) >= 4


def _pyramid_groups(root) -> list[str]:
    """Paths of the OME-Zarr multiscale groups inside a Zarr group."""
    import zarr
    return [name for name, node in root.members(max_depth=None)
            if isinstance(node, zarr.Group) and _meta.ngff_multiscales(node.attrs)]


def _tiff_bytes(p: Path) -> bool:
    """Whether the file starts as a TIFF or BigTIFF does (little- or big-endian)."""
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


_KIND_NAMES = {"tiff": "TIFF", "plain": "PNG/JPEG", "mrc": "MRC", "hdf5": "HDF5", "zarr": "Zarr", "n5": "N5",
               "folder": "a folder of images"}


def unreadable(path, kind: str, error: BaseException) -> PanoptemError:
    """The one-line error for a file a library could not decode (the library's
    message cut to its first line: some span many)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    detail = type(error).__name__ + (f": {lines[0][:200]}" if lines else "")
    return PanoptemError(f"Could not read '{path}' as {_KIND_NAMES.get(kind, kind)} ({detail}); check "
                         "that the file is complete and in the format its name says.")


def _kind(p: Path) -> str:
    suffix = p.suffix.lower()
    if p.is_dir():
        if suffix in N5_SUFFIXES or _is_n5(p):
            return "n5"
        if suffix in ZARR_SUFFIXES or any((p / f).exists() for f in (".zarray", ".zgroup", "zarr.json")):
            return "zarr"
        return "folder"
    for kind, suffixes in (("tiff", TIFF_SUFFIXES), ("plain", PLAIN_SUFFIXES), ("mrc", MRC_SUFFIXES),
                           ("hdf5", HDF5_SUFFIXES)):
        if suffix in suffixes:
            return kind
    if suffix in ZARR_SUFFIXES + N5_SUFFIXES:
        raise PanoptemError(f"'{p.name}' is a file, but a {suffix} store is a folder; give the folder it came in "
                            "(copy it whole, e.g. unzip it first).")
    raise PanoptemError(f"Cannot read '{p.name}': unsupported extension '{suffix}'; use one of "
                        f"{', '.join(SUPPORTED)}, or a folder of 2D images.")


# What tifffile's axis letters stand for (used in messages).
_AXIS_NAMES = {"T": "time", "C": "channel", "S": "colour samples", "Z": "depth", "Q": "unknown",
               "I": "image sequence", "E": "lambda", "R": "tile", "H": "lifetime", "A": "angle",
               "P": "phase", "L": "exposure", "V": "event", "M": "mosaic", "Y": "height", "X": "width"}


def _squeezed(p: Path, shape, voxel, axes: str = "") -> tuple[list[int], tuple[float, ...] | None]:
    """Axes kept after dropping singletons, and the voxel size of those axes."""
    if any(int(n) == 0 for n in shape):
        raise PanoptemError(f"'{p.name}' holds no pixels (shape {tuple(shape)}); give an image with data.")
    keep = [i for i, n in enumerate(shape) if n != 1]
    if len(keep) < 2:
        raise PanoptemError(f"'{p.name}' is too small to segment: shape {tuple(shape)} is a single "
                            f"{'pixel' if not keep else 'line of pixels'}; give a 2D (YX) or 3D (ZYX) image.")
    if len(keep) > 3:
        named = ""
        if len(axes) == len(shape):
            named = " with axes " + ", ".join(f"{axes[i]} ({_AXIS_NAMES.get(axes[i], '?')}) = {shape[i]}"
                                              for i in keep)
        raise PanoptemError(f"'{p.name}' holds {len(keep)}D data of shape {tuple(shape)}{named}, not 2D (YX) or "
                            "3D (ZYX) once single-entry axes are dropped; save one channel / time point / colour "
                            "plane per file (e.g. tifffile.imwrite(path, data[0])).")
    if voxel is None or len(voxel) != len(shape):
        return keep, None
    return keep, _meta.complete([voxel[i] for i in keep])


def to_grey(a: np.ndarray) -> np.ndarray:
    """Grey version of an image whose last axis holds 2-4 channels (LA, RGB, RGBA).

    Alpha is dropped. When R, G and B are equal the first channel is returned unchanged;
    otherwise luminance with skimage's ``rgb2gray`` weights, rounded back to the input dtype.
    """
    if a.shape[-1] == 2:
        return np.ascontiguousarray(a[..., 0])
    rgb = a[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    g = rgb.astype(np.float32) @ _LUMA
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        return np.clip(np.rint(g), info.min, info.max).astype(a.dtype)
    return g.astype(a.dtype)


# ---- TIFF -----------------------------------------------------------------------------------

def _tiff_voxel(tif, series) -> dict[str, float]:
    if tif.is_ome and tif.ome_metadata:
        sizes = _meta.ome_xml_sizes(tif.ome_metadata)
        if sizes:
            return sizes
    if tif.is_shaped and tif.shaped_metadata:
        md = tif.shaped_metadata[0]
        vs, axes = md.get("voxel_size_nm"), md.get("axes", series.axes)
        if vs is not None and len(vs) == len(axes):
            return {ax: float(v) for ax, v in zip(axes, vs) if ax in "XYZ" and v and float(v) > 0}
    return _meta.tiff_tag_sizes(series.keyframe, tif.imagej_metadata if tif.is_imagej else None)


def _open_tiff_zarr(path: str):
    import tifffile
    import zarr
    return zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")


class _TiffLog:
    """Collects what tifffile logs while a file is opened (kept off the terminal;
    quoted in the error when the file is refused)."""

    def __enter__(self):
        import logging
        self.records: list[str] = []
        self._logger = logging.getLogger("tifffile")
        self._handler = logging.Handler(logging.WARNING)
        self._handler.emit = lambda r: self.records.append(r.getMessage())
        self._logger.addHandler(self._handler)
        self._propagate, self._logger.propagate = self._logger.propagate, False
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self._handler)
        self._logger.propagate = self._propagate
        return False


def _check_tiff_data(p: Path, tif, series, log: list[str]) -> None:
    """Refuse a TIFF whose header describes more data than the file holds
    (truncated, or a header claiming a huge image), before any pixel is allocated."""
    size = os.path.getsize(p)
    shape, dtype = tuple(series.shape), np.dtype(series.dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0:
        raise PanoptemError(f"'{p.name}' holds no pixels (shape {shape}); give an image with data.")
    claim = f"its header describes {' x '.join(map(str, shape))} {dtype} pixels ({human_bytes(nbytes)})"

    def refuse(why: str):
        raise PanoptemError(f"'{p.name}' is truncated or corrupt: {why}; copy the file again or re-save it.")

    broken = [m for m in log if "invalid page offset" in m or "failed to reshape" in m]
    if broken:
        refuse(f"its chain of images breaks off (tifffile: {broken[0].split('> ', 1)[-1]})")
    if tif.is_shaped and tif.shaped_metadata:
        want = tif.shaped_metadata[0].get("shape")
        if isinstance(want, list) and int(np.prod(want, dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
            refuse(f"its description says shape {tuple(want)}, but only {shape} was found")
    if series.dataoffset is not None:  # one contiguous uncompressed block
        if series.dataoffset + nbytes > size:
            refuse(f"{claim} ending at byte {series.dataoffset + nbytes}, but the file has {size} bytes")
        return
    pages = [series.keyframe]
    try:
        if len(series.pages) > 1 and series.pages[-1] is not None:
            pages.append(series.pages[-1])
    except Exception:  # noqa: BLE001 - the last page cannot be found: the chain of pages is broken
        refuse("its last image cannot be found")
    for page in pages:
        offsets, counts = tuple(page.dataoffsets), tuple(page.databytecounts)
        chunks = int(np.prod(page.chunked, dtype=np.int64)) if getattr(page, "chunked", None) else len(offsets)
        if len(offsets) != len(counts) or len(offsets) < chunks:
            refuse(f"{claim} in {chunks} strips/tiles, but it lists {len(offsets)}")
        ends = [o + c for o, c in zip(offsets, counts) if c]
        if ends and max(ends) > size:
            refuse(f"{claim}, stored up to byte {max(ends)}, but the file has {size} bytes")
        bits = int(getattr(series.keyframe, "bitspersample", 8) or 8)  # later pages may be frames without it
        if page.compression == 1 and bits % 8 == 0 and sum(counts) < page.nbytes:
            refuse(f"{claim}, but its uncompressed strips/tiles hold only {sum(counts)} bytes per image")


class _TiffPages:
    """The pages of a TIFF as one (pages, H, W) array, read page by page: a stack written one
    page at a time, which tifffile sees as one series per page."""

    def __init__(self, path: str, n: int, plane_shape: tuple[int, int]):
        self.path, self.shape = path, (n, *plane_shape)

    def __getitem__(self, key):
        import tifffile
        k0, rest = key[0], key[1:]
        if not isinstance(k0, slice):
            return tifffile.imread(self.path, key=int(k0)).reshape(self.shape[1:])[rest]
        pages = list(range(self.shape[0])[k0])
        planes = tifffile.imread(self.path, key=pages) if pages else np.zeros((0, *self.shape[1:]))
        return planes.reshape(len(pages), *self.shape[1:])[(slice(None), *rest)]


def _page_stack(p: Path, tif, lazy: bool):
    """A TIFF of several series, one 2D page each, all of one shape and type, as a ZYX stack;
    None for any other TIFF."""
    first = tif.series[0]
    plane = tuple(n for n in first.shape if n != 1)
    if len(tif.series) < 2 or len(tif.pages) != len(tif.series) or len(plane) != 2 or \
            any(s.shape != first.shape or s.dtype != first.dtype for s in tif.series):
        return None
    pages = _TiffPages(str(p), len(tif.series), plane)
    if not lazy:
        return pages[(slice(None),)], None  # nothing says how far apart the planes are
    return StoreArray(partial(_TiffPages, str(p), len(tif.series), plane), pages.shape, first.dtype, name=p.name), None


def _read_tiff(p: Path, lazy: bool):
    import tifffile
    with _TiffLog() as log, tifffile.TiffFile(p) as tif:
        if not tif.series:
            raise PanoptemError(f"'{p.name}' holds no image; check that it is a complete TIFF file.")
        stack = _page_stack(p, tif, lazy)
        if stack is not None:
            return (*stack, f"'{p.name}' holds its {stack[0].shape[0]} planes as separate images of one size; "
                            "they are read as slices (Z).")
        series = tif.series[0]
        others = "" if len(tif.series) == 1 else \
            (f"'{p.name}' holds {len(tif.series)} images of different sizes or kinds; only the first, "
             f"{' x '.join(map(str, series.shape))}, is read.")
        axes, shape, dtype = series.axes, tuple(series.shape), series.dtype
        _check_tiff_data(p, tif, series, log.records)
        sizes = _tiff_voxel(tif, series)
        # colour = samples stored together per pixel (RGB(A), grey + alpha): the last axis;
        # samples stored as separate planes (what tifffile.imwrite makes of a 3- or 4-slice
        # stack without metadata) stay planes
        colour = axes.endswith("S") and shape[-1] in (2, 3, 4)
        if colour or not lazy:
            arr = series.asarray()
    voxel = [sizes.get(ax) for ax in axes]
    note = ""
    if colour:  # colour TIFFs are small in EM; convert at once
        arr = to_grey(arr)
        shape, voxel, axes = arr.shape, voxel[:-1], axes[:-1]
    keep, vs = _squeezed(p, shape, voxel, axes)
    kept = "".join(axes[i] for i in keep) if len(axes) == len(shape) else ""
    if kept.endswith("S"):  # more than 4 samples per pixel: neither colour nor planes
        raise PanoptemError(f"'{p.name}' stores {shape[-1]} samples per pixel (axes {kept}, shape "
                            f"{tuple(shape[i] for i in keep)}); save one sample per file as a YX image or ZYX volume.")
    if len(keep) == 3 and kept[:1] not in ("", "Z", "Q", "I"):
        n = shape[keep[0]]
        if kept[0] == "S":
            note = (f"'{p.name}' marks its {n} planes as separate colour planes (and has no other axis metadata); "
                    f"they are read as {n} grey slices (Z). If it is one colour image, save it with the colour "
                    "samples last (height, width, 3).")
        else:
            note = (f"'{p.name}' has axes {kept}: its {n} {_AXIS_NAMES.get(kept[0], 'unknown')} planes are read "
                    f"as {n} slices (Z).")
    note = " ".join(n for n in (note, others) if n)
    new_shape = tuple(shape[i] for i in keep)
    if colour or not lazy:
        return arr.reshape(new_shape), vs, note
    try:
        with _TiffLog():
            mm = tifffile.memmap(p, series=0, mode="r")
        return mm.reshape(new_shape), vs, note
    except ValueError:  # compressed or not contiguous: read pages / tiles on demand
        return StoreArray(partial(_open_tiff_zarr, str(p)), shape, dtype, name=p.name), vs, note


# ---- PNG / JPEG and folders of slices ---------------------------------------------------

def read_plane(path: str) -> np.ndarray:
    """One 2D slice file (TIFF, PNG or JPEG) as a grey 2D array.

    Raises :class:`~panoptem.errors.PanoptemError` (one line) for a file that cannot be decoded."""
    path = str(path)
    is_tiff = path.lower().endswith(TIFF_SUFFIXES)
    try:
        if is_tiff:
            a, *_ = _read_tiff(Path(path), lazy=False)
        else:
            from PIL import Image, UnidentifiedImageError
            try:
                with Image.open(path):
                    pass
            except UnidentifiedImageError:
                raise PanoptemError(f"'{Path(path).name}' is not a PNG/JPEG image that can be read (unknown or "
                                    "damaged header); check that the file is complete and in the format its "
                                    "name says.") from None
            import imageio.v3 as iio
            a = iio.imread(path)
    except (PanoptemError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - any decoder error means an unreadable file
        raise unreadable(path, "tiff" if is_tiff else "plain", e) from None
    if a.size == 0:
        raise PanoptemError(f"'{Path(path).name}' holds no pixels (shape {a.shape}); give an image with data.")
    if not is_tiff and a.ndim == 3 and a.shape[-1] in (2, 3, 4):  # (H, W, colour), before a 1-pixel side goes
        a = to_grey(a)
    a = np.squeeze(a)
    if a.ndim == 3 and a.shape[-1] in (2, 3, 4):
        a = to_grey(a)
    if a.ndim < 2:
        raise PanoptemError(f"'{Path(path).name}' is too small to segment: it is a single "
                            f"{'pixel' if a.ndim == 0 else 'line of pixels'}; give a 2D image.")
    if a.ndim != 2:
        raise PanoptemError(f"'{Path(path).name}' has shape {a.shape}, not a 2D image; "
                            "use a 2D grey or RGB image.")
    return a


def _read_plain(p: Path, lazy: bool):
    return read_plane(str(p)), None


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _header(path: Path):
    """Cheap (shape, type) fingerprint of a slice file, without decoding the pixels."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile
            with _TiffLog(), tifffile.TiffFile(path) as tif:
                s = tif.series[0]
                return tuple(s.shape), str(s.dtype)
        from PIL import Image
        with Image.open(path) as im:
            return im.size, im.mode
    except Exception as e:  # noqa: BLE001 - any decoder error means an unreadable file
        raise unreadable(path, "tiff" if path.suffix.lower() in TIFF_SUFFIXES else "plain", e) from None


def _read_folder(p: Path, lazy: bool):
    files = sorted((f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                    and f.suffix.lower() in SLICE_SUFFIXES), key=lambda f: _natural_key(f.name))
    if not files:
        raise PanoptemError(f"Folder '{p}' holds no images ({', '.join(SLICE_SUFFIXES)}); "
                            "point to a folder of 2D slices or to an image file.")
    first = _header(files[0])
    for f in files[1:]:
        if _header(f) != first:
            raise PanoptemError(f"'{f.name}' differs in size or type from '{files[0].name}'; "
                                "make every image in the folder the same size and type.")
    plane = read_plane(str(files[0]))
    if len(files) == 1:  # a single-entry axis is dropped, as for any other image
        return plane, None
    stack = ImageStack([str(f) for f in files], read_plane, plane.shape, plane.dtype)
    return (stack if lazy else stack[:]), None


# ---- MRC ------------------------------------------------------------------------------------

def _read_mrc(p: Path, lazy: bool):
    import mrcfile
    from mrcfile.utils import data_dtype_from_header, data_shape_from_header
    with mrcfile.open(p, mode="r", header_only=True) as mrc:
        header = mrc.header
        vs_xyz = mrc.voxel_size
        dtype = data_dtype_from_header(header)
        if dtype == np.int8 and _imod_unsigned(header):
            dtype = np.dtype(np.uint8)
        shape = data_shape_from_header(header)
        offset = header.nbytes + int(header.nsymbt)
    need = offset + int(np.prod(shape)) * dtype.itemsize
    if os.path.getsize(p) < need:
        raise PanoptemError(f"'{p.name}' is shorter than its MRC header says ({os.path.getsize(p)} < {need} "
                            "bytes); the file is truncated, copy it again.")
    # MRC stores x, y, z in Å; arrays are (z, y, x)
    zyx = [_meta.to_nm(float(vs_xyz[ax]), "Å") for ax in ("z", "y", "x")]
    voxel = zyx[-len(shape):]
    keep, vs = _squeezed(p, shape, voxel)
    arr = np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=shape)
    arr = arr.reshape(tuple(shape[i] for i in keep))
    return (arr if lazy else np.array(arr)), vs


#: the stamp IMOD writes in an MRC header (bytes 152-155), whose flags (156-159) then say
#: whether mode-0 bytes are signed (bit 0 set) or unsigned, as IMOD writes them by default
IMOD_STAMP = 1146047817


def _imod_unsigned(header) -> bool:
    """Whether an MRC header of mode 0 is IMOD's with unsigned bytes (MRC2014 says signed)."""
    order = header.mode.dtype.byteorder
    words = np.frombuffer(header.extra2.tobytes()[40:48], np.dtype("i4").newbyteorder(order if order in "<>" else "="))
    return int(words[0]) == IMOD_STAMP and not int(words[1]) & 1


# ---- HDF5 -----------------------------------------------------------------------------------

def _open_h5(path: str, key: str):
    import h5py
    return h5py.File(path, "r")[key]


def _read_hdf5(p: Path, key: str | None, lazy: bool):
    import h5py
    with h5py.File(p, "r") as f:
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        names.sort()
        if key is None:
            if len(names) != 1:
                raise PanoptemError(f"'{p.name}' holds {len(names)} datasets ({', '.join(names) or 'none'}); "
                                    "name the one to read with key=... (--key).")
            key = names[0]
        elif not isinstance(f.get(key), h5py.Dataset):
            raise PanoptemError(f"'{p.name}' has no dataset '{key}'; choose one of: {', '.join(names) or 'none'}.")
        ds = f[key]
        shape, dtype = ds.shape, ds.dtype
        attrs = ds.attrs if _meta.attrs_sizes(ds.attrs, len(shape)) else f.attrs  # the dataset's own, else the file's
        voxel = _meta.attrs_sizes(attrs, len(shape))
        keep, vs = _squeezed(p, shape, voxel)
        origin = _kept(_meta.attrs_origin(attrs, len(shape)), shape)
        if not lazy:
            return ds[()].reshape(tuple(shape[i] for i in keep)), vs, origin
    return StoreArray(partial(_open_h5, str(p), key), shape, dtype), vs, origin


def _kept(origin, shape) -> tuple[float, ...] | None:
    """``origin`` (one entry per axis of ``shape``, None where unknown) on the axes reading keeps
    (singletons dropped); None unless every kept entry is known."""
    if origin is None or len(origin) != len(shape):
        return None
    return _meta.complete([o for o, n in zip(origin, shape) if n != 1])


# ---- Zarr / OME-Zarr ------------------------------------------------------------------------

def _open_zarr(path: str, key: str):
    import zarr
    node = zarr.open(path, mode="r")
    return node[key] if key else node


def _array_keys(group) -> list[str]:
    import zarr
    return sorted(name for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array))


def _nearest_level(ms, target: float) -> tuple[dict, str | None]:
    """The dataset of multiscale ``ms`` whose in-plane pixel size is nearest
    ``target`` nm (by ratio), and a note saying so (None when level 0 is kept)."""
    best, best_d, best_size = ms["datasets"][0], None, None
    for ds in ms["datasets"]:
        sizes = _meta.ngff_sizes(ms, ds) or []
        yx = [v for v in sizes[-2:] if v]
        if len(yx) != 2:
            return ms["datasets"][0], None
        size = float(np.mean(yx))
        d = abs(np.log(size / target))
        if best_d is None or d < best_d - 1e-9:
            best, best_d, best_size = ds, d, size
    if best is ms["datasets"][0]:
        return best, None
    return best, (f"read OME-Zarr level '{best['path']}' ({best_size:g} nm pixels), the nearest to the model's "
                  f"{target:.3g} nm; pass --key to read another level")


def _level_entry(parent, name: str) -> tuple[dict, dict] | None:
    """``(multiscale, dataset)`` of the OME-Zarr multiscale in group ``parent`` that lists the
    array ``name`` as one of its levels; None where none does (or ``parent`` is None)."""
    for ms in (_meta.ngff_multiscales(parent.attrs) or []) if parent is not None else []:
        for ds in ms.get("datasets", []) if isinstance(ms, dict) else []:
            if isinstance(ds, dict) and ds.get("path") == name:
                return ms, ds
    return None


def _parent_group(p: Path):
    """The zarr group in the folder above ``p``, or None (a plain array)."""
    import zarr
    try:
        return zarr.open_group(str(p.parent), mode="r")
    except Exception:  # noqa: BLE001 - no group above: a plain array
        return None


def _level_sizes(p: Path) -> list[float | None] | None:
    """Voxel sizes of the array folder ``p`` when its parent is an OME-Zarr multiscale listing it."""
    entry = _level_entry(_parent_group(p), p.name)
    return None if entry is None else _meta.ngff_sizes(*entry)


def _resolve_zarr(p: Path, root, key: str | None, pixel_size_nm: float | None = None):
    """(array path inside the store, the array, per-axis voxel sizes or None, note)."""
    import zarr
    prefix = ""
    node = root
    if key:
        if isinstance(root, zarr.Array):
            raise PanoptemError(f"'{p.name}' is a single array; read it without key=... (--key).")
        try:
            node = root[key]
        except KeyError:
            raise PanoptemError(f"'{p.name}' has no array or group '{key}'; choose one of: "
                                f"{', '.join(_array_keys(root)) or 'none'}.") from None
        prefix = key.strip("/")
        # an array that is one level of an OME-Zarr multiscale keeps that level's scale
        parent_path, _, name = prefix.rpartition("/")
        parent = root[parent_path] if parent_path else root
        entry = _level_entry(parent, name) if isinstance(node, zarr.Array) and isinstance(parent, zarr.Group) \
            else None
        if entry is not None:
            return prefix, node, _meta.ngff_sizes(*entry), None
    if isinstance(node, zarr.Array):
        if not key:  # the folder of one level of an OME-Zarr pyramid keeps that level's scale
            sizes = _level_sizes(p)
            if sizes is not None:
                return prefix, node, sizes, None
        return prefix, node, _meta.attrs_sizes(node.attrs, node.ndim), None
    multiscales = _meta.ngff_multiscales(node.attrs)
    if multiscales:
        ms = multiscales[0]
        ds, note = _nearest_level(ms, pixel_size_nm) if pixel_size_nm else (ms["datasets"][0], None)
        path = "/".join(s for s in (prefix, ds["path"]) if s)
        return path, node[ds["path"]], _meta.ngff_sizes(ms, ds), note
    names = _array_keys(node)
    pyramids = _pyramid_groups(node)
    if len(pyramids) == 1 and all(n.startswith(pyramids[0] + "/") for n in names):  # one image, in a group
        return _resolve_zarr(p, root, "/".join(s for s in (prefix, pyramids[0]) if s), pixel_size_nm)
    if len(names) != 1:
        raise PanoptemError(f"'{p.name}' holds {len(names)} arrays ({', '.join(names) or 'none'}); "
                            "name the one to read with key=... (--key).")
    arr = node[names[0]]
    path = "/".join(s for s in (prefix, names[0]) if s)
    return path, arr, _meta.attrs_sizes(arr.attrs, arr.ndim), None


def _zarr_origin(p: Path, key: str | None) -> tuple[float, ...] | None:
    """Position (nm) of the first voxel of the array ``key`` of the store ``p`` (``key`` None: the
    store is the array), singleton axes dropped: the translation of the multiscale level it is,
    else its ``offset`` attribute; None when neither says or the metadata cannot be used."""
    import zarr
    try:
        arr = zarr.open(str(p), mode="r")
        parent_path, _, name = (key or "").strip("/").rpartition("/")
        if key:
            parent, arr = (arr[parent_path] if parent_path else arr), arr[key]
        else:  # the folder of one level of a pyramid: its parent folder holds the multiscale
            parent, name = _parent_group(p), p.name
        entry = _level_entry(parent, name)
        origin = _meta.ngff_origin(*entry) if entry is not None else None  # None for axes not space (a channel)
        origin = origin if origin is not None else _meta.attrs_origin(arr.attrs, arr.ndim)
        return _kept(origin, arr.shape)
    except Exception:  # noqa: BLE001 - metadata that cannot be read says nothing of the position
        return None


def _read_zarr(p: Path, key: str | None, lazy: bool, pixel_size_nm: float | None = None):
    import zarr
    root = zarr.open(str(p), mode="r")
    path, arr, voxel, note = _resolve_zarr(p, root, key, pixel_size_nm)
    shape = tuple(arr.shape)
    keep, vs = _squeezed(p, shape, voxel)
    if not lazy:
        return np.asarray(arr[...]).reshape(tuple(shape[i] for i in keep)), vs, path or None, note
    return StoreArray(partial(_open_zarr, str(p), path), shape, arr.dtype), vs, path or None, note


# ---- N5 ----------------------------------------------------------------------------------------

def _is_n5(p: Path) -> bool:
    from ._n5 import is_n5
    return is_n5(p)


def _read_n5(p: Path, key: str | None, lazy: bool):
    from ._n5 import datasets, open_dataset
    names = datasets(p)
    if key is None:
        if len(names) != 1:
            raise PanoptemError(f"'{p.name}' holds {len(names)} N5 datasets ({', '.join(names) or 'none'}); "
                                "name the one to read with key=... (--key).")
        key = names[0]
    elif key.strip("/") not in names:
        raise PanoptemError(f"'{p.name}' has no N5 dataset '{key}'; choose one of: {', '.join(names) or 'none'}.")
    key = key.strip("/")
    arr = open_dataset(p, key)
    keep, vs = _squeezed(p, arr.shape, arr.voxel_size())
    data = StoreArray(partial(open_dataset, str(p), key), arr.shape, arr.dtype)
    return (data if lazy else data[...]), vs, key
