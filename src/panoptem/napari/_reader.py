"""Reader contribution: EM images and panoptem outputs, with their voxel size as layer scale."""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: label arrays up to this size are loaded into memory so they can be proofread
IN_MEMORY_LABELS_BYTES = 4 * 2**30



def labels_in_memory(data):
    """Labels read from a file, in memory (writable) where they fit
    :data:`IN_MEMORY_LABELS_BYTES`, so that they can be edited; larger ones stay lazy (view only)."""
    if isinstance(data, np.ndarray) and data.flags.writeable:
        return data
    if int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize > IN_MEMORY_LABELS_BYTES:
        return data
    data = np.asarray(data)
    return data if data.flags.writeable else data.copy()  # not a view of a read-only file mapping

def _suffixes() -> tuple[str, ...]:
    from ..io.readers import SUPPORTED
    return SUPPORTED


def get_reader(path):
    """napari reader hook: a reader function for one supported file or folder, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix.lower() in _suffixes() or (p.is_dir() and (_is_zarr(p) or is_n5(p))):
        return read_layers
    return None


def is_n5(p: Path) -> bool:
    from ..io._n5 import is_n5 as _is_n5
    return _is_n5(p)


def _is_zarr(p: Path) -> bool:
    return any((p / f).exists() for f in (".zgroup", ".zarray", "zarr.json"))


def _zarr_attrs(p: Path) -> dict:
    import json
    for name in (".zattrs", "zarr.json"):
        f = p / name
        if f.exists():
            try:
                d = json.loads(f.read_text())
            except (OSError, ValueError):
                return {}
            return d.get("attributes", {}).get("ome", d.get("attributes", d)) if name == "zarr.json" else d
    return {}


def _written_by_panoptem_as_labels(p: Path, dtype) -> bool:
    """OME-Zarr 'image-label' groups, and TIFFs whose Software tag says panoptem wrote labels
    (earlier releases tagged every file "panoptem": there, 32/64-bit ones, as labels are)."""
    if p.is_dir():  # the group, or the group above one level of its pyramid
        return "image-label" in _zarr_attrs(p) or "image-label" in _zarr_attrs(p.parent)
    if p.suffix.lower() in (".tif", ".tiff", ".btf"):
        import tifffile
        try:
            with tifffile.TiffFile(p) as tif:
                software = tif.pages[0].software or ""
        except Exception:  # noqa: BLE001 - unreadable tags just mean "not ours"
            return False
        return software == "panoptem labels" or (software == "panoptem" and np.dtype(dtype).itemsize >= 4)
    return False


def is_labels(path, dtype, key: str | None = None) -> bool:
    """An integer array named like labels ('label' in the file name, or in ``key`` for one of
    several images in a file) or written as labels (by panoptem; OME-Zarr 'image-label' groups)."""
    if not np.issubdtype(np.dtype(dtype), np.integer):
        return False
    p = Path(path)
    if key is not None:
        key = key.strip("/")
        return "label" in key.lower() or (p.is_dir() and "image-label" in _zarr_attrs(p / key))
    return "label" in p.name.lower() or _written_by_panoptem_as_labels(p, dtype)


def _layer_name(p: Path) -> str:
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if p.name.lower().endswith(suffix):
            return p.name[: -len(suffix)]
    return p.stem


def _ngff_pyramid(p: Path, img) -> list | None:
    """The levels of the OME-Zarr multiscale whose first level ``img`` is (lazy, with the axes
    ``img`` dropped alike); None when it has one level or is not such a pyramid."""
    import dask.array as da
    import zarr

    from ..io._meta import ngff_multiscales
    if not (p.is_dir() and img.key and _is_zarr(p)):
        return None
    root = zarr.open(str(p), mode="r")
    parent_path, _, name = img.key.strip("/").rpartition("/")
    parent = root[parent_path] if parent_path else root
    ms = (ngff_multiscales(parent.attrs) or [None])[0]
    datasets = ms.get("datasets", []) if isinstance(ms, dict) else []
    if len(datasets) < 2 or datasets[0].get("path") != name:
        return None
    level0 = parent[name]
    keep = [i for i, n in enumerate(level0.shape) if n != 1]
    levels = [img.data]  # as the engine reads it (numpy out of every index)
    for ds in datasets[1:]:
        try:
            arr = parent[ds["path"]]
            ok = isinstance(arr, zarr.Array) and arr.ndim == level0.ndim
        except (KeyError, TypeError, ValueError):
            ok = False  # a level listed but missing or malformed (a partial copy)
        if not ok or any(arr.shape[i] != 1 for i in range(arr.ndim) if i not in keep):
            return None  # not a whole pyramid of this array: its first level alone
        shape, prev = tuple(arr.shape[i] for i in keep), tuple(levels[-1].shape)
        if not (all(a <= b for a, b in zip(shape, prev)) and shape != prev):
            return None  # levels that do not shrink: napari shows none of them; the first alone
        levels.append(da.from_zarr(arr).reshape(shape))
    return levels


def read_layers(path) -> list[tuple]:
    """Read ``path`` with :func:`panoptem.io.read_image` into one image or labels layer, with its
    voxel size as scale and an OME-Zarr's pyramid as a multiscale layer (labels small enough to
    edit are read whole, first level only); an HDF5 file, Zarr group or N5 container holding
    several images gives a layer for each (named FILE/KEY; any that cannot be read are left out,
    and a notification says why). An OME-Zarr level's translation (or a Zarr array's ``offset``)
    places the layer, in nm as its scale: panoptem's outputs carry their input's, so the two overlay.
    The record of how panoptem made a labels file is the layer's ``metadata["panoptem"]``."""
    from ..errors import PanoptemError
    from ..io.readers import image_keys
    if isinstance(path, (list, tuple)):
        path = path[0]
    keys = image_keys(path)
    if not keys:
        return [_layer(path, None)]
    layers, left_out = [], []
    for key in keys:
        try:
            layers.append(_layer(path, key))
        except PanoptemError as e:
            left_out.append(f"{key} ({e})")
    if not layers:
        raise PanoptemError(f"'{Path(path).name}' holds no 2D or 3D image: " + "; ".join(left_out))
    if left_out:
        from napari.utils.notifications import show_info
        show_info(f"{Path(path).name}: left out " + "; ".join(left_out))
    return layers


def _layer(path, key: str | None) -> tuple:
    from ..io import read_image
    img = read_image(path, key=key)
    p = Path(path)
    name = _layer_name(p) if key is None else f"{_layer_name(p)}/{key.strip('/')}"
    meta = {"name": name, "metadata": {"voxel_size": img.voxel_size, "path": img.path, "key": img.key}}
    if img.provenance is not None:  # what made these labels (model, parameters...): layer.metadata["panoptem"]
        meta["metadata"]["panoptem"] = img.provenance
    if img.voxel_size is not None:
        meta["scale"] = tuple(img.voxel_size)
    if img.origin is not None:  # in nm, as the scale
        meta["translate"] = tuple(img.origin)
    levels = _ngff_pyramid(p, img)
    data = img.data
    labels = is_labels(path, data.dtype, key)
    if not labels and key is None and img.key and p.is_dir() and np.issubdtype(data.dtype, np.integer):
        labels = "image-label" in _zarr_attrs((p / img.key.strip("/")).parent)  # the one image, in a group
    if labels:
        data = labels_in_memory(data)
        if isinstance(data, np.ndarray):
            return (data, meta, "labels")
        return (levels or data, meta, "labels")
    return (levels or data, meta, "image")
