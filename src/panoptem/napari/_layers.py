"""Small helpers between napari layers / viewer state and the engine's arrays (no Qt)."""
from __future__ import annotations

import numpy as np

from ..errors import PanoptemError
from ..params import PLANE_AXIS

#: inference plane of each ZYX axis (the axis that is *not* displayed)
PLANE_OF_AXIS = {ax: plane for plane, ax in PLANE_AXIS.items()}


def voxel_size_from_meta(meta: dict, ndim: int) -> tuple[float, ...] | None:
    """Voxel size (nm) of a layer: its scale, the size napari draws it at (a scale the user set
    after opening a file wins over the file's), unless that is all ones (napari's default, i.e.
    unknown); then its ``metadata['voxel_size']``."""
    scale = meta.get("scale")
    if scale is not None and len(scale) == ndim and not np.allclose(scale, 1):
        return tuple(float(s) for s in scale)
    vs = (meta.get("metadata") or {}).get("voxel_size")
    if vs is not None and len(vs) == ndim:
        return tuple(float(v) for v in vs)
    return None


def origin_from_meta(meta: dict, ndim: int) -> tuple[float, ...] | None:
    """Position (nm) of a layer's first voxel: its ``translate``, when not all zeros and the
    layer's scale is its voxel size in nm (world units are nm then); else None."""
    vs = voxel_size_from_meta(meta, ndim)
    t, scale = meta.get("translate"), meta.get("scale")
    if vs is None or t is None or len(t) != ndim or not np.any(t) or scale is None or not np.allclose(scale, vs):
        return None
    return tuple(float(v) for v in t)


def layer_voxel_size(layer) -> tuple[float, ...] | None:
    """:func:`voxel_size_from_meta` for a layer object."""
    return voxel_size_from_meta({"metadata": layer.metadata, "scale": tuple(layer.scale)}, layer.ndim)


def full_resolution(layer):
    """A layer's data at full resolution: level 0 of a multiscale layer, as it is on disk."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def image_array(layer):
    """The array of an image layer the engine can take: level 0 of a multiscale, 2D or 3D, grey."""
    if layer is None:
        raise PanoptemError("Choose an image layer first (open an image or File > Open Sample > panoptem).")
    if getattr(layer, "rgb", False):
        raise PanoptemError(f"Layer '{layer.name}' is RGB; convert it to greyscale first.")
    data = full_resolution(layer)
    if data.ndim not in (2, 3):
        raise PanoptemError(f"Layer '{layer.name}' has {data.ndim} dimensions; panoptem takes 2D (YX) or "
                            "3D (ZYX) images: split channels or time points into separate layers.")
    return data


def layer_sources(*layers) -> list[str]:
    """The files the layers were opened from (napari's ``layer.source.path``), to write nothing over."""
    return [str(lay.source.path) for lay in layers if lay is not None and getattr(lay.source, "path", None)]


def level_array(layer, level: int):
    """Level ``level`` of an image layer (0: :func:`image_array`) and its downsampling factor
    per axis from level 0 (the layer's data coordinates are those of level 0)."""
    data = image_array(layer)
    if level == 0:
        return data, (1.0,) * data.ndim
    levels = len(layer.data) if getattr(layer, "multiscale", False) else 1
    if level >= levels:
        has = "no other level" if levels == 1 else f"levels 0 to {levels - 1}"
        raise PanoptemError(f"Layer '{layer.name}' has {has}; choose a Multiscale level "
                            f"{'of 0' if levels == 1 else f'up to {levels - 1}'}.")
    arr = layer.data[level]
    return arr, tuple(a / b for a, b in zip(data.shape, arr.shape))


def current_plane(viewer, layer) -> tuple[int, int]:
    """(axis, index) in ``layer``'s data of the plane a 2D view of the 3D layer shows."""
    if layer.ndim != 3:
        raise PanoptemError(f"Layer '{layer.name}' is {layer.ndim}D; the current plane needs a 3D layer.")
    if viewer.dims.ndisplay != 2:
        raise PanoptemError("The viewer shows 3D; switch to the 2D view to work on one plane "
                            "(or tick Apply in 3D / use 3D Inference).")
    offset = viewer.dims.ndim - layer.ndim
    hidden = [a - offset for a in viewer.dims.not_displayed if a >= offset]
    axis = hidden[0]
    index = int(np.round(layer.world_to_data(viewer.dims.point)[axis]))
    shape = full_resolution(layer).shape
    if not 0 <= index < shape[axis]:
        raise PanoptemError(f"The viewer's slice is outside layer '{layer.name}'; move the slider onto it.")
    return axis, index


def place_plane(labels2d: np.ndarray, axis: int | None, index: int, layer) -> dict:
    """Array and layer kwargs that put a 2D result at plane ``index`` along ``axis`` of ``layer``."""
    kw = {"scale": tuple(layer.scale), "translate": tuple(layer.translate)}
    if axis is None:
        return {"data": labels2d, **kw}
    translate = list(layer.translate)
    translate[axis] += index * layer.scale[axis]
    return {"data": np.expand_dims(labels2d, axis), "scale": kw["scale"], "translate": tuple(translate)}


def coords_in(src, dst, coords, at=None) -> np.ndarray:
    """(N, D) data coordinates of layer ``src`` -> data coordinates of layer ``dst``. Where ``src``
    has fewer axes than ``dst`` (2D points over a 3D volume: napari shows them on every plane), the
    axes it lacks are those of the world point ``at`` (the viewer's ``dims.point``: the plane shown)."""
    coords = np.asarray(coords, dtype=float).reshape(-1, src.ndim) if len(coords) else np.zeros((0, dst.ndim))
    out = []
    for c in coords:  # a handful of clicked points
        w = np.asarray(src.data_to_world(c), float)
        if dst.ndim > w.size:
            lead = np.zeros(dst.ndim - w.size) if at is None else np.asarray(at, float)[-dst.ndim:-w.size]
            w = np.concatenate([lead, w])
        out.append(dst.world_to_data(w))
    return np.asarray(out, dtype=float).reshape(-1, dst.ndim)


def camera_of(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
