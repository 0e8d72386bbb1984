"""Proofreading operations on label arrays (2D or 3D), for the napari plugin and scripts.

Edits work in place on a numpy array and return an :class:`Edit` that holds the
voxels they changed, so the caller can undo them. With ``plane=(axis, index)``
an edit only touches that 2D plane of a 3D volume ("Apply in 3D" off); without
it the whole array is edited ("Apply in 3D" on). Points, markers and polylines
are always given in the coordinates of the full array; in plane mode points off
the plane are ignored and polylines are projected onto it.

No edit ever overwrites a label it was not asked to change: dilation, closing
and hole filling only grow into background, and a hole that holds another
label is left alone.

>>> import numpy as np
>>> lab = np.array([[1, 1, 0, 2, 2]], np.uint32)
>>> edit = merge_labels(lab, [1, 2])
>>> lab
array([[1, 1, 0, 1, 1]], dtype=uint32)
>>> edit.undo(lab); lab
array([[1, 1, 0, 2, 2]], dtype=uint32)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np
from scipy import ndimage as ndi

from .errors import PanoptemError
from .labels import check_not_negative, class_map, filter_objects

Plane = tuple[int, int]
MORPH_OPS = ("dilate", "erode", "open", "close", "fill_holes")


@dataclass
class Edit:
    """The part of a label array an edit changed: ``labels[slices]`` held ``before``."""

    slices: tuple[slice, ...]
    before: np.ndarray

    @property
    def empty(self) -> bool:
        """True when the edit changed nothing."""
        return self.before.size == 0

    def undo(self, labels: np.ndarray) -> None:
        """Restore ``labels`` to what it was before the edit."""
        if not self.empty:
            labels[self.slices] = self.before

    def changes(self, labels: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Indices (into the full array) of the voxels the edit changed, and their new values.

        Useful to replay an edit through another history, e.g. napari's
        ``Labels.data_setitem(indices, values)``.
        """
        if self.empty:
            return tuple(np.empty(0, np.intp) for _ in range(labels.ndim)), labels[:0].ravel()
        after = labels[self.slices]
        local = np.nonzero(after != self.before)
        idx = tuple(c + s.start for c, s in zip(local, self.slices))
        return idx, after[local]


# ----------------------------------------------------------------- helpers

def _check(labels) -> np.ndarray:
    if not isinstance(labels, np.ndarray):
        raise PanoptemError("Proofreading needs an in-memory numpy label array; load the labels into "
                            "memory first (e.g. np.asarray) or proofread a crop.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise PanoptemError(f"Labels must have an integer dtype, not {labels.dtype}; convert them to uint32.")
    check_not_negative(labels, "label array")
    return labels


def _view(labels: np.ndarray, plane: Plane | None) -> np.ndarray:
    """The array an edit works on: the whole array or a 2D view of one plane."""
    _check(labels)
    if plane is None:
        return labels
    axis, index = int(plane[0]), int(plane[1])
    if labels.ndim != 3:
        raise PanoptemError(f"plane=(axis, index) needs a 3D label volume, got {labels.ndim}D; "
                            "drop the plane argument for 2D images.")
    if not 0 <= axis < 3 or not 0 <= index < labels.shape[axis]:
        raise PanoptemError(f"Plane {plane} is outside a volume of shape {labels.shape}; "
                            "give (axis 0-2, index inside that axis).")
    sl = [slice(None)] * 3
    sl[axis] = index
    return labels[tuple(sl)]


def _lift(slices: tuple[slice, ...], plane: Plane | None) -> tuple[slice, ...]:
    """Slices of the plane view -> slices of the full array."""
    if plane is None:
        return slices
    axis, index = int(plane[0]), int(plane[1])
    out = list(slices)
    out.insert(axis, slice(index, index + 1))
    return tuple(out)


def _make_edit(view: np.ndarray, slices: tuple[slice, ...] | None, plane: Plane | None) -> Edit:
    """The record that undoes an edit of ``view[slices]`` (made before the edit; refused where
    the labels cannot be written)."""
    if not view.flags.writeable:
        raise PanoptemError("These labels are read-only (a file opened read-only, or an array marked so); "
                            "edit a writable copy (np.array(labels)).")
    if slices is None:
        return Edit((slice(0, 0),) * (view.ndim + (plane is not None)), view[:0].copy())
    before = view[slices].copy()
    if plane is not None:
        before = np.expand_dims(before, int(plane[0]))
    return Edit(_lift(slices, plane), before)


def _bbox(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of the True voxels, padded by ``pad`` and clipped to the array."""
    out = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if hit.size == 0:
            return None
        out.append(slice(max(int(hit[0]) - pad, 0), min(int(hit[-1]) + 1 + pad, mask.shape[ax])))
    return tuple(out)


def _whole(value, what: str) -> int:
    """``value`` as an int: a whole number (an integral float too), else one clear error."""
    try:
        if not isinstance(value, (bool, np.bool_)) and value == int(value):
            return int(value)
    except (TypeError, ValueError, OverflowError):
        pass
    raise PanoptemError(f"{what} must be a whole number, not {value!r}.")


def _one_id(value, what: str = "A label id") -> int:
    """One object's id: a whole number of 1 or more (0 is background)."""
    v = _whole(value, what)
    if v < 1:
        raise PanoptemError(f"{what} must be 1 or more (0 is background), not {v}.")
    return v


def _ids(ids: Iterable[int] | int, dtype) -> np.ndarray:
    """The distinct non-zero ``ids`` that ``dtype`` can hold, as ``dtype`` (exact for uint64 ids
    past 2^63; an id the labels cannot hold marks nothing in them); ids that are not whole
    numbers are refused."""
    info = np.iinfo(dtype)
    vals = {_whole(v, "A label id") for v in np.asarray(ids, dtype=object).ravel()}
    return np.array(sorted(v for v in vals if v != 0 and info.min <= v <= info.max), dtype=dtype)


def _points(points, ndim: int, shape: tuple[int, ...], plane: Plane | None) -> np.ndarray:
    """Integer point coordinates in the working array (plane view or full array)."""
    pts = np.asarray(points, dtype=float).reshape(-1, ndim) if np.size(points) else np.zeros((0, ndim))
    pts = np.round(pts).astype(np.int64)
    if plane is not None:
        axis, index = int(plane[0]), int(plane[1])
        pts = np.delete(pts[pts[:, axis] == index], axis, axis=1)
    inside = np.all((pts >= 0) & (pts < np.asarray(shape)), axis=1)
    return pts[inside]


def _footprint(ndim: int, radius: int) -> np.ndarray:
    from skimage.morphology import ball, disk
    return (disk(radius) if ndim == 2 else ball(radius)).astype(bool)


# ----------------------------------------------------------------- selection

def labels_at_points(labels: np.ndarray, points, plane: Plane | None = None) -> np.ndarray:
    """Sorted non-zero label ids under ``points`` ((N, labels.ndim) coordinates).

    Points outside the array (or, with ``plane``, off that plane) are ignored.

    >>> labels_at_points(np.array([[0, 3], [5, 5]]), [[0, 1], [1, 0], [0, 0]])
    array([3, 5])
    """
    view = _view(labels, plane)
    pts = _points(points, labels.ndim, view.shape, plane)
    vals = view[tuple(pts.T)] if len(pts) else view[:0].ravel()
    vals = np.unique(vals)
    return vals[vals != 0]


def labels_on_line(labels: np.ndarray, polyline, plane: Plane | None = None) -> np.ndarray:
    """Sorted non-zero label ids crossed by a polyline ((N, labels.ndim) vertices).

    Each segment is rasterised with :func:`skimage.draw.line` (``line_nd`` in
    3D); with ``plane`` the vertices are projected onto that plane.
    """
    from skimage.draw import line, line_nd
    view = _view(labels, plane)
    verts = np.round(np.asarray(polyline, dtype=float).reshape(-1, labels.ndim)).astype(np.int64)
    if plane is not None:
        verts = np.delete(verts, int(plane[0]), axis=1)
    if len(verts) == 1:
        return labels_at_points(view, verts)
    coords = []
    for a, b in zip(verts[:-1], verts[1:]):
        if view.ndim == 2:
            coords.append(np.stack(line(a[0], a[1], b[0], b[1]), axis=1))
        else:
            coords.append(np.stack(line_nd(a, b, endpoint=True), axis=1))
    return labels_at_points(view, np.concatenate(coords) if coords else np.zeros((0, view.ndim)))


def label_bbox(labels: np.ndarray, label_id: int) -> tuple[slice, ...]:
    """Bounding box of one label as slices (e.g. to jump the viewer to it).

    >>> label_bbox(np.array([[0, 0], [0, 7]]), 7)
    (slice(1, 2, None), slice(1, 2, None))
    """
    label_id = _one_id(label_id)
    box = _bbox(_check(labels) == label_id)
    if box is None:
        raise PanoptemError(f"Label {label_id} is not in this layer; check the id (Count Labels lists them).")
    return box


# ----------------------------------------------------------------- edits

def merge_labels(labels: np.ndarray, ids, target: int | None = None, plane: Plane | None = None) -> Edit:
    """Give every label in ``ids`` the id ``target`` (default: the smallest of ``ids``), in place.

    >>> lab = np.array([[3, 0, 5, 9]], np.uint16); _ = merge_labels(lab, [5, 9]); lab
    array([[3, 0, 5, 5]], dtype=uint16)
    """
    view = _view(labels, plane)
    ids = _ids(ids, view.dtype)
    if ids.size == 0:
        return _make_edit(view, None, plane)
    target = int(ids[0]) if target is None else _one_id(target, "The target id")
    info = np.iinfo(view.dtype)
    if not info.min <= target <= info.max:
        raise PanoptemError(f"Target id {target} does not fit the labels' dtype {view.dtype} "
                            f"({info.min}..{info.max}); choose another target or convert the labels to uint32.")
    mask = np.isin(view, ids)
    box = _bbox(mask)
    edit = _make_edit(view, box, plane)
    if box is not None:
        view[box][mask[box]] = target
    return edit


def delete_labels(labels: np.ndarray, ids, plane: Plane | None = None) -> Edit:
    """Set every label in ``ids`` to background (0), in place."""
    view = _view(labels, plane)
    ids = _ids(ids, view.dtype)
    mask = np.isin(view, ids) if ids.size else np.zeros(view.shape, bool)
    box = _bbox(mask)
    edit = _make_edit(view, box, plane)
    if box is not None:
        view[box][mask[box]] = 0
    return edit


def find_next_available_label(labels: np.ndarray, class_id: int = 1, label_divisor: int | None = None,
                              plane: Plane | None = None) -> int:
    """An id not used in ``labels`` (or in one plane): the class's largest id + 1,
    else its smallest free id. Without a divisor the class is ignored.

    >>> find_next_available_label(np.array([[1001, 1002, 2001]]), class_id=1, label_divisor=1000)
    1003
    """
    view = _view(labels, plane)
    used = np.unique(view)
    used = used[used != 0]
    if not label_divisor:
        nxt = int(used.max()) + 1 if used.size else 1  # exact for uint64 ids past 2**63
        if nxt > np.iinfo(labels.dtype).max:
            how = "the largest id is taken" if labels.dtype.itemsize == 8 else "convert the labels to uint32 or uint64"
            raise PanoptemError(f"No free id left in dtype {labels.dtype}; {how}.")
        return nxt
    nxt = _free_ids_of_class(used, class_id, label_divisor, 1, "raise the label divisor")[0]
    if nxt > np.iinfo(labels.dtype).max:
        raise PanoptemError(f"Id {nxt} does not fit dtype {labels.dtype}; convert the labels to uint32 or uint64.")
    return nxt


def split_label(labels: np.ndarray, label_id: int, markers=None, min_distance: int = 10,
                new_ids_start: int | None = None, label_divisor: int | None = None,
                plane: Plane | None = None) -> Edit:
    """Split one label by a watershed on its distance transform, in place.

    Parameters
    ----------
    markers : (N, labels.ndim) points used as seeds (those outside the label
        are ignored); default: local maxima of the distance transform at least
        ``min_distance`` voxels apart.
    new_ids_start : first id of the pieces; default the largest id in the whole
        array + 1 (with ``label_divisor``: the class's next free id). Every piece
        gets a new id, in seed order; ids already used anywhere are refused.

    Raises PanoptemError when fewer than two seeds are found or ids collide.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    view = _view(labels, plane)
    label_id = _one_id(label_id, "The id to split")
    box = _bbox(view == label_id)
    if box is None:
        raise PanoptemError(f"Label {label_id} is not in this {'plane' if plane else 'layer'}; "
                            "put the point on the object you want to split.")
    mask = np.pad(view[box] == label_id, 1)
    dist = ndi.distance_transform_edt(mask)
    if markers is not None and np.size(markers):
        pts = _points(markers, labels.ndim, view.shape, plane)
        pts = pts - np.array([s.start for s in box]) + 1
        pts = pts[np.all((pts >= 0) & (pts < np.array(mask.shape)), axis=1)]
        pts = pts[mask[tuple(pts.T)]] if len(pts) else pts
        if len(pts):  # each point once, in the order given (the first point's piece gets the first id)
            pts = pts[np.sort(np.unique(pts, axis=0, return_index=True)[1])]
        how = "place at least two points inside the label"
    else:
        pts = peak_local_max(dist, min_distance=max(int(min_distance), 1), labels=mask.astype(np.uint8),
                             exclude_border=False)
        how = "lower Minimum Distance or place points as markers"
    if len(pts) < 2:
        raise PanoptemError(f"Found {len(pts)} seed(s) in label {label_id}, need 2 to split; {how}.")
    seeds = np.zeros(mask.shape, np.int32)
    seeds[tuple(pts.T)] = np.arange(1, len(pts) + 1)
    pieces = watershed(-dist, seeds, mask=mask)
    lost = mask & (pieces == 0)  # parts no seed reaches (joined to the label only at a corner or edge)
    if lost.any():  # go to the nearest piece: every voxel of the label gets a new id
        near = ndi.distance_transform_edt(pieces == 0, return_distances=False, return_indices=True)
        pieces[lost] = pieces[tuple(i[lost] for i in near)]
    pieces = pieces[(slice(1, -1),) * mask.ndim]
    k = len(pts)
    all_ids = np.unique(labels)  # in the labels' dtype: uint64 ids past 2^63 stay exact
    top = int(all_ids.max())
    if new_ids_start is None and label_divisor:
        new_ids = _free_ids_of_class(all_ids, label_id // label_divisor, label_divisor, k,
                                     "raise the label divisor, or split into fewer pieces")
    else:
        start = top + 1 if new_ids_start is None else int(new_ids_start)
        new_ids = list(range(start, start + k))
    if new_ids[-1] > np.iinfo(labels.dtype).max:
        how = "choose a start id with room below it" if labels.dtype.itemsize == 8 else \
            "convert the labels to uint32 or uint64"
        raise PanoptemError(f"New id {new_ids[-1]} does not fit dtype {labels.dtype}; {how}.")
    if new_ids[0] < 1:
        raise PanoptemError(f"New ids {new_ids[0]}..{new_ids[-1]} are not all 1 or more (0 is background); "
                            f"choose a start id above {top}.")
    clash = np.intersect1d(np.array(new_ids, dtype=labels.dtype), all_ids)
    if clash.size:
        raise PanoptemError(f"New ids {new_ids[0]}..{new_ids[-1]} collide with existing labels "
                            f"({', '.join(map(str, clash[:5]))}); choose a start id above {top}.")
    if label_divisor and any(i // label_divisor != label_id // label_divisor for i in new_ids):
        raise PanoptemError(f"New ids {new_ids[0]}..{new_ids[-1]} leave class {label_id // label_divisor} "
                            f"(ids {label_id // label_divisor * label_divisor + 1}.."
                            f"{(label_id // label_divisor + 1) * label_divisor - 1}); choose a start id inside it.")
    edit = _make_edit(view, box, plane)
    lut = np.array([0, *new_ids], dtype=labels.dtype)
    region = view[box]
    inside = pieces > 0
    region[inside] = lut[pieces[inside]]
    return edit


def split_labels(labels: np.ndarray, ids, markers=None, min_distance: int = 10,
                 new_ids_start: int | None = None, label_divisor: int | None = None,
                 plane: Plane | None = None) -> Edit:
    """Split several labels at once, each as :func:`split_label` splits one, in place.

    ``markers`` are grouped by the label they fall in (each label needs two or more);
    with ``new_ids_start`` the pieces of the first label take ids from it, the next label's
    follow on, and so on. All or nothing: where one label cannot be split, none is, and the
    error names it."""
    view = _view(labels, plane)
    order = [_one_id(i, "The id to split") for i in np.atleast_1d(np.asarray(ids)).tolist()]
    order = list(dict.fromkeys(order))  # each once, in the order given
    if not order:
        raise PanoptemError("Mark at least one label to split.")
    boxes = []
    for i in order:
        box = _bbox(view == i)
        if box is None:
            raise PanoptemError(f"Label {i} is not in this {'plane' if plane else 'layer'}; "
                                "put the point on the object you want to split.")
        boxes.append(box)
    union = tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(view.ndim))
    edit = _make_edit(view, union, plane)
    start = new_ids_start
    try:
        for i in order:
            before = set(np.unique(view[union]).tolist()) if start is not None else None
            split_label(labels, i, markers, min_distance, start, label_divisor, plane)
            if start is not None:  # the next label's pieces follow this one's
                start = max(set(np.unique(view[union]).tolist()) - before) + 1
    except PanoptemError as e:
        edit.undo(labels)
        raise PanoptemError(f"Nothing split: {e}" if len(order) > 1 else str(e)) from None
    return edit


def _free_ids_of_class(used: np.ndarray, class_id: int, label_divisor: int, k: int, advice: str) -> list[int]:
    """``k`` ids of ``class_id`` not in ``used``: after its largest id, else in its gaps; where
    there are fewer, an error ending in ``advice``."""
    lo, hi = class_id * label_divisor + 1, (class_id + 1) * label_divisor  # ids lo .. hi-1
    mine = sorted(int(v) for v in used[(used >= lo) & (used < hi)].tolist())
    start = mine[-1] + 1 if mine else lo
    if start + k <= hi:
        return list(range(start, start + k))
    free: list[int] = []
    prev = lo - 1
    for v in [*mine, hi]:  # the gaps between the class's ids, lowest first
        free.extend(range(prev + 1, min(v, prev + 1 + k - len(free))))
        if len(free) >= k:
            return free
        prev = v
    raise PanoptemError(f"Class {class_id} has no free id below {hi} for {k} new object(s) ({len(free)} "
                        f"left); {advice}.")


def _morph_one(mask: np.ndarray, region: np.ndarray, op: str, fp: np.ndarray | None,
               hole_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(pixels to add, pixels to remove) for one label's mask inside its padded region."""
    none = np.zeros_like(mask)
    if op == "dilate":
        return ndi.binary_dilation(mask, fp) & (region == 0), none
    if op == "erode":  # the array edge does not erode (border_value=1), as skimage
        return none, mask & ~ndi.binary_erosion(mask, fp, border_value=1)
    if op == "open":
        kept = ndi.binary_dilation(ndi.binary_erosion(mask, fp, border_value=1), fp)
        return none, mask & ~kept
    if op == "close":  # zero padding: a label never grows along the array edge
        r = fp.shape[0] // 2
        closed = ndi.binary_erosion(ndi.binary_dilation(np.pad(mask, r), fp), fp)[(slice(r, -r),) * mask.ndim]
        return closed & ~mask & (region == 0), none
    # fill_holes: holes enclosed by this label alone, background only, at most hole_size voxels
    holes = ndi.binary_fill_holes(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim] & ~mask
    comp, n = ndi.label(holes)
    if n == 0:
        return none, none
    size = np.bincount(comp.ravel(), minlength=n + 1)
    foreign = np.bincount(comp.ravel(), weights=(region != 0).ravel(), minlength=n + 1)
    ok = foreign == 0
    if hole_size is not None:
        ok &= size <= hole_size
    ok[0] = False
    return ok[comp], none


def morph_label(labels: np.ndarray, ids=None, op: Literal["dilate", "erode", "open", "close", "fill_holes"] = "dilate",
                radius: int = 1, hole_size: int | None = 64, plane: Plane | None = None) -> Edit:
    """Binary morphology on each label in ``ids`` (None: every label in the array or plane),
    with a disk (2D) or ball (3D) of ``radius``, in place.

    Never overwrites another label: dilation and closing only grow into
    background; ``fill_holes`` fills holes enclosed by the label alone that
    hold only background and have at most ``hole_size`` voxels (None: any
    size). Labels are processed in increasing id order, so when two grow into
    the same background voxel the smaller id gets it. The array edge does not
    erode (as :func:`skimage.morphology.binary_erosion`).
    """
    if op not in MORPH_OPS:
        raise PanoptemError(f"Operation must be one of {', '.join(MORPH_OPS)}, not '{op}'.")
    if int(radius) < 1 and op != "fill_holes":
        raise PanoptemError("Radius must be at least 1.")
    view = _view(labels, plane)
    ids = _ids(np.unique(view) if ids is None else ids, view.dtype)
    if ids.size == 0:
        return _make_edit(view, None, plane)
    radius = int(radius)
    pad = 2 * radius + 1
    fp = _footprint(view.ndim, radius) if op != "fill_holes" else None
    # one pass gives every selected label's bounding box: map ids -> 1..k
    pos = np.searchsorted(ids, view)
    hit = ids[np.minimum(pos, ids.size - 1)] == view
    boxes = ndi.find_objects(np.where(hit, pos + 1, 0), max_label=ids.size)
    present = [(int(i), b) for i, b in zip(ids, boxes) if b is not None]
    if not present:
        return _make_edit(view, None, plane)
    padded = [tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(b, view.shape))
              for _, b in present]
    union = tuple(slice(min(b[a].start for b in padded), max(b[a].stop for b in padded)) for a in range(view.ndim))
    edit = _make_edit(view, union, plane)
    for (lid, _), box in zip(present, padded):
        region = view[box]
        mask = region == lid
        add, remove = _morph_one(mask, region, op, fp, hole_size)
        region[add] = lid
        region[remove] = 0
    return edit


# ----------------------------------------------------------------- whole-array tools

def _slices_of(labels: np.ndarray, plane: Plane | None, per_slice: bool) -> list[np.ndarray]:
    """The arrays a whole-array tool works on: each xy slice of a stack of 2D images
    (``per_slice``: a batch stack, whose ids restart per slice), else the plane or the array."""
    if not per_slice:
        return [_view(labels, plane)]
    if labels.ndim != 3 or plane is not None:
        raise PanoptemError("Each slice on its own needs a 3D stack of 2D images and no plane; "
                            f"got {labels.ndim}D labels{' and a plane' if plane is not None else ''}.")
    return list(_check(labels))


def filter_labels(labels: np.ndarray, min_size: int | None = None, boundary: bool = False,
                  plane: Plane | None = None, return_removed: bool = False, per_slice: bool = False):
    """A copy of ``labels`` without the labels smaller than ``min_size`` voxels
    (strictly smaller: a label of exactly ``min_size`` stays) and, with
    ``boundary``, without the labels touching the array border.

    With ``plane`` only that plane is filtered (sizes and borders of the plane); with
    ``per_slice`` every xy slice of a stack on its own (its pixels and its borders).
    ``return_removed``: also return the sorted ids removed (per slice: once for each
    slice a label was removed from).

    >>> filter_labels(np.array([[1, 1, 0, 2]]), min_size=2)
    array([[1, 1, 0, 0]])
    """
    out = _check(labels).copy()
    removed = []
    for view in _slices_of(out, plane, per_slice):
        kept, gone = filter_objects(view, min_size or 0, 0, boundary=boundary, return_removed=True)
        view[...] = kept
        removed.append(gone)
    removed = np.sort(np.concatenate(removed))
    return (out, removed) if return_removed else out


def count_labels(labels: np.ndarray, label_divisor: int | None = None,
                 plane: Plane | None = None) -> dict[int, dict]:
    """Label ids per class: ``{class_id: {"count": n, "ids": sorted ids}}``.

    The class of a label is ``label // label_divisor``; without a divisor
    every label is class 1.

    >>> count_labels(np.array([1001, 1002, 2001, 0]), label_divisor=1000)[1]["count"]
    2
    """
    view = _view(labels, plane)
    ids = np.unique(view)
    ids = ids[ids != 0]
    classes = class_map(ids, label_divisor)
    out = {}
    for c in np.unique(classes):
        mine = ids[classes == c]
        out[int(c)] = {"count": int(mine.size), "ids": mine}
    return out


def count_table(labels: np.ndarray, label_divisor: int | None = None,
                plane: Plane | None = None, per_slice: bool = False) -> dict[str, np.ndarray]:
    """One row per label: ``class_id``, ``label`` and ``voxels`` (pixels in a plane), sorted
    by label, as columns (write it with :func:`panoptem.write_table`). With ``per_slice``,
    one row per label of every xy slice of a stack, a ``slice`` column first.

    >>> count_table(np.array([[1001, 1001, 2001, 0]]), label_divisor=1000)["voxels"].tolist()
    [2, 1]
    """
    rows = []
    for z, view in enumerate(_slices_of(labels, plane, per_slice)):
        ids, counts = np.unique(view, return_counts=True)
        keep = ids != 0
        rows.append((np.full(int(keep.sum()), z, np.int64), ids[keep], counts[keep].astype(np.int64)))
    if not rows:  # a stack of no slice
        rows = [(np.zeros(0, np.int64), np.zeros(0, labels.dtype), np.zeros(0, np.int64))]
    ids = np.concatenate([r[1] for r in rows])
    ids = ids.astype(np.uint64 if ids.dtype.kind == "u" else np.int64)  # exact past 2^63
    table = {"class_id": class_map(ids, label_divisor), "label": ids,
             "voxels": np.concatenate([r[2] for r in rows])}
    return {"slice": np.concatenate([r[0] for r in rows]), **table} if per_slice else table
