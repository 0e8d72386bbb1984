"""Where a 2D inference runs and where its result goes: a crop of the shown plane confined to
the polygons of a shapes layer or to the visible canvas, and writing a plane result into an
existing labels layer (no Qt)."""
from __future__ import annotations

import numpy as np

from ..errors import PanoptemError
from ..labels import relabel_sequential_per_class
from ._layers import coords_in

#: shape types that enclose an area (paths and lines do not)
AREA_SHAPES = ("rectangle", "polygon", "ellipse")


def plane_dims(ndim: int, axis: int | None) -> list[int]:
    """The two data axes of the plane shown: all but ``axis`` (a 2D image: both)."""
    return [d for d in range(ndim) if d != axis]


def ellipse_vertices(corners: np.ndarray, n: int = 64) -> np.ndarray:
    """(n, 2) points on the ellipse inscribed in napari's 4 ellipse box corners."""
    c = corners.mean(axis=0)
    a, b = (corners[1] - corners[0]) / 2, (corners[2] - corners[1]) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    return c + np.cos(t) * a + np.sin(t) * b


def shapes_mask(shapes, image, axis: int | None, index: int, plane_shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask (``plane_shape``) of the rectangles, polygons and ellipses of ``shapes``
    that lie on plane ``index`` along ``axis`` of ``image``, in the image's data coordinates."""
    from skimage.draw import polygon2mask
    if shapes.ndim != image.ndim:
        raise PanoptemError(f"Shapes layer '{shapes.name}' is {shapes.ndim}D but image '{image.name}' is "
                            f"{image.ndim}D; draw the ROI in a shapes layer made while the image is shown.")
    dims = plane_dims(image.ndim, axis)
    mask = np.zeros(plane_shape, bool)
    for verts, kind in zip(shapes.data, shapes.shape_type):
        if kind not in AREA_SHAPES:
            continue
        v = coords_in(shapes, image, verts)
        if axis is not None and not np.all(np.abs(v[:, axis] - index) < 0.5):
            continue  # drawn on another plane
        v2 = v[:, dims]
        mask |= polygon2mask(plane_shape, ellipse_vertices(v2) if kind == "ellipse" else v2)
    if not mask.any():
        raise PanoptemError(f"No rectangle, polygon or ellipse of shapes layer '{shapes.name}' covers this "
                            "plane of the image; draw one on the plane shown.")
    return mask


def mask_box(mask: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of the True pixels of a 2D mask, as slices."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def viewport_box(corner_pixels, axis: int | None, ndim: int, plane_shape: tuple[int, int]) -> tuple[slice, slice]:
    """Slices of the plane visible on the canvas from a layer's ``corner_pixels`` ((2, ndim) data indices)."""
    cp = np.asarray(corner_pixels, dtype=int)
    dims = plane_dims(ndim, axis)
    box = tuple(slice(max(0, int(cp[0, d])), min(n, int(cp[1, d]) + 1)) for d, n in zip(dims, plane_shape))
    if any(s.stop - s.start < 2 for s in box) or (cp[1, dims] == 0).all():
        raise PanoptemError("The visible part of the image is unknown or empty; show the image on the canvas "
                            "(zoom onto it), or untick Confine to viewport.")
    return box


def place_in_plane(labels: np.ndarray, box: tuple[slice, slice], plane_shape: tuple[int, int],
                   mask: np.ndarray | None = None, label_divisor: int | None = None) -> np.ndarray:
    """A ``plane_shape`` array holding ``labels`` (of the crop ``box``) at its place; with a
    (full-plane) ``mask``, pixels outside it are 0 and the ids left are :func:`renumber`-ed."""
    out = np.zeros(plane_shape, labels.dtype)
    out[box] = labels
    if mask is not None:
        out[~mask] = 0
        out = renumber(out, label_divisor)
    return out


def renumber(labels: np.ndarray, label_divisor: int | None) -> np.ndarray:
    """Ids made consecutive again after objects were cut away: 1..N, or ``class * divisor + 1..N``
    per class when ``label_divisor`` is set (in the dtype of ``labels``)."""
    return relabel_sequential_per_class(labels, label_divisor).astype(labels.dtype, copy=False)


def region_indices(region: np.ndarray, axis: int | None, index: int) -> tuple[np.ndarray, ...]:
    """Data indices (for ``Labels.data_setitem``) of the True pixels of a plane mask at plane ``index``."""
    idx = list(np.nonzero(region))
    if axis is not None:
        idx.insert(axis, np.full(idx[0].shape, index, dtype=idx[0].dtype))
    return tuple(idx)


def check_output_layer(target, image_shape: tuple[int, ...]) -> None:
    """One error where labels layer ``target`` cannot take planes of an image of ``image_shape``
    (Output to layer): it is read from a file (view only), or of another shape."""
    if not isinstance(target.data, np.ndarray) or not target.data.flags.writeable:
        raise PanoptemError(f"Labels layer '{target.name}' is read from a file (view only); choose a labels "
                            "layer in memory for Output to layer, or leave it empty for a new layer.")
    shape = tuple(target.data.shape)
    if shape != tuple(image_shape):
        raise PanoptemError(f"Labels layer '{target.name}' has shape {shape} but the image has "
                            f"{tuple(image_shape)}; choose a labels layer of the same shape.")


def write_plane(target, plane: np.ndarray, region: np.ndarray, axis: int | None, index: int,
                image_shape: tuple[int, ...]) -> int:
    """Write ``plane`` where ``region`` is True into labels layer ``target`` at plane ``index``
    as one undoable edit; returns the number of pixels written."""
    check_output_layer(target, image_shape)
    if np.dtype(target.data.dtype).itemsize < plane.dtype.itemsize and plane.max() > np.iinfo(target.data.dtype).max:
        raise PanoptemError(f"Labels layer '{target.name}' ({target.data.dtype}) cannot hold label "
                            f"{int(plane.max())}; choose a uint32 labels layer.")
    idx = region_indices(region, axis, index)
    target.data_setitem(idx, plane[region].astype(target.data.dtype))
    return int(idx[0].size)
