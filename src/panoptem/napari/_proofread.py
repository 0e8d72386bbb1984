"""Widget "Proofread Labels": merge, split, delete, morph, filter, count, jump and next
label over :mod:`panoptem.proofread`.

Labels are picked with a chosen points layer and/or shapes layer (lines, paths,
polygons: every label they cross). With "Apply in 3D" off, edits touch only the
plane shown in the viewer. Edits go through napari's own label history, so the
Undo button here and Ctrl+Z in the viewer both restore them. Operations on a whole
3D volume run in a worker thread (the layer is locked meanwhile); the GUI thread
only writes the changed voxels into the layer.
"""
from __future__ import annotations

import napari
import napari.layers
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, PushButton, SpinBox

from .. import proofread as pr
from ..errors import PanoptemError
from ._forms import Group, row
from ._inference import layer_picker
from ._layers import PLANE_OF_AXIS, camera_of, coords_in, current_plane, full_resolution, layer_sources
from ._worker import Dock

MORPH_NOTHING = {
    "dilate": "no background next to them to grow into",
    "close": "no gap narrower than the radius next to them",
    "erode": "nothing to remove at this radius",
    "open": "no part thinner than the radius",
    "fill_holes": "no hole of at most Hole size voxels enclosed by one label",
}


def apply_edit(layer, edit: pr.Edit) -> int:
    """Replay an in-place :class:`~panoptem.proofread.Edit` through the layer's undo
    history (``Labels.data_setitem``); returns the number of voxels changed."""
    if edit.empty:
        return 0
    idx, values = edit.changes(layer.data)
    edit.undo(layer.data)
    layer.data_setitem(idx, values)
    return int(values.size)


def _changes(data: np.ndarray, edit: pr.Edit):
    """(indices, new values) of an in-place edit, with ``data`` restored (the layer's
    history then replays them)."""
    idx, values = edit.changes(data)
    edit.undo(data)
    return idx, values


class ProofreadWidget(Dock):
    """Proofreading tools for one labels layer."""

    help_title = "Proofread Labels"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        L = napari.layers
        self.labels_layer = layer_picker(viewer, L.Labels, "Labels", name="labels_layer",
                                         tooltip="The labels layer to edit.")
        self.points = layer_picker(viewer, L.Points, "Points", nullable=True,
                                   tooltip="Points that mark the labels to edit (one click inside each).")
        self.shapes = layer_picker(viewer, L.Shapes, "Shapes", nullable=True,
                                   tooltip="Lines, paths or polygons: every label they cross is marked.")
        new_points = PushButton(text="New points layer", name="new_points",
                                tooltip="Add an empty points layer in Add mode, scaled like the labels, and pick it.")
        new_shapes = PushButton(text="New shapes layer", name="new_shapes",
                                tooltip="Add an empty shapes layer in path mode, scaled like the labels, and pick it.")
        new_points.changed.connect(self.new_points_layer)
        new_shapes.changed.connect(self.new_shapes_layer)
        self.apply_3d = CheckBox(text="Apply in 3D", name="apply_3d", value=False,
                                 tooltip="Off: edit only the plane shown in the viewer. On: the whole volume.")
        self.each_slice = CheckBox(text="Each slice on its own (Filter, Count)", name="each_slice", value=False,
                                   tooltip="Filter and Count every xy slice of the layer as its own 2D image "
                                           "(a stack of 2D images, as 2D batch inference makes, whose ids "
                                           "restart in every slice); sizes in pixels.")
        self.divisor = SpinBox(label="Label divisor (0 = none)", name="divisor", value=0, min=0, max=10**9,
                               tooltip="label = class x divisor + n; used by Split, Count and Next label. "
                                       "0: every label is of class 1.")

        self.min_distance = SpinBox(label="Minimum Distance", name="min_distance", value=10, min=1, max=100,
                                    tooltip="Split: minimum distance, in voxels, between the seeds found "
                                            "as maxima of the distance transform.")
        self.use_points = CheckBox(text="Use points as markers", name="use_points", value=False,
                                   tooltip="Split: every point is a seed (Minimum Distance is then ignored).")
        self.new_ids_start = SpinBox(label="Start new label IDs from (0 = auto)", name="new_ids_start",
                                     value=0, min=0, max=2**31 - 1,
                                     tooltip="Split: first id of the pieces; 0: the next free id.")
        self.op = ComboBox(label="Operation", name="op", choices=list(pr.MORPH_OPS), value="dilate",
                           tooltip="Morph: dilate / close grow into background only; erode / open shrink; "
                                   "fill_holes fills background enclosed by the label alone.")
        self.radius = SpinBox(label="Radius (voxels)", name="radius", value=1, min=1, max=7,
                              tooltip="Morph: radius in voxels of the disk (2D) or ball (3D).")
        self.hole_size = SpinBox(label="Hole size (voxels)", name="hole_size", value=64, min=1, max=10**9,
                                 tooltip="Morph fill_holes: largest hole filled, in voxels (pixels in a plane).")
        self.all_labels = CheckBox(text="Morph all labels", name="all_labels", value=False,
                                   tooltip="Morph every label instead of the marked ones.")
        self.min_size = SpinBox(label="Min size (voxels)", name="min_size", value=100, min=0, max=10**9,
                                tooltip="Filter: labels with fewer voxels are removed; a label of exactly "
                                        "this size stays.")
        self.boundary = CheckBox(text="Remove labels touching the border", name="boundary", value=False,
                                 tooltip="Filter: also remove labels that touch the edge of the image.")
        self.count_file = FileEdit(label="Count table (optional)", name="count_file", mode="w",
                                   filter="*.csv *.xlsx", value="",
                                   tooltip="Count: also save one row per label (class, id, voxels) as .csv, "
                                           "or as an Excel workbook when the name ends in .xlsx.")
        self.label_id = SpinBox(label="Label ID", name="label_id", value=1, min=1, max=2**63 - 1,
                                tooltip="Jump to label: the id to show and select.")
        self.class_id = SpinBox(label="Class ID", name="class_id", value=1, min=0, max=10**6,
                                tooltip="Next available label: the class whose next free id becomes the paint "
                                        "label (with a label divisor).")

        tips = {"merge": "Give the marked labels one id (the selected label if marked, else the smallest).",
                "delete": "Set the marked labels to background.",
                "split": "Split each marked label by a watershed (with points as markers: the points in each).",
                "morph": "Apply the operation to the marked labels (or all).",
                "filter": "Copy the layer without small (and border) labels into '<layer>-filtered'.",
                "count": "Count the labels per class (and save the table if a file is given).",
                "jump": "Move the view to the label and select it.",
                "next_label": "Make the class's next unused id the paint label.",
                "undo": "Undo the last edit of the layer (as Ctrl+Z).",
                "redo": "Redo the last undone edit."}
        buttons = {}
        for name, text in [("merge", "Merge"), ("split", "Split"), ("delete", "Delete"), ("morph", "Morph"),
                           ("filter", "Filter"), ("count", "Count"), ("jump", "Jump to label"),
                           ("next_label", "Next available label"), ("undo", "Undo"), ("redo", "Redo")]:
            b = PushButton(text=text, name=f"{name}_button", tooltip=tips[name])
            b.changed.connect(getattr(self, name))
            buttons[name] = b
        self.buttons = buttons
        self.extend([
            Group("Layers", [self.labels_layer, self.points, self.shapes, row(new_points, new_shapes),
                             self.apply_3d, self.each_slice, self.divisor]),
            Group("Merge / Delete", [row(buttons["merge"], buttons["delete"])]),
            Group("Split", [self.min_distance, self.use_points, self.new_ids_start, buttons["split"]]),
            Group("Morph", [self.op, self.radius, self.hole_size, self.all_labels, buttons["morph"]]),
            Group("Filter", [self.min_size, self.boundary, buttons["filter"]]),
            Group("Count", [self.count_file, buttons["count"]]),
            Group("Find", [self.label_id, buttons["jump"], self.class_id, buttons["next_label"]]),
            row(buttons["undo"], buttons["redo"], self.help_button), self.status])

    # ------------------------------------------------------------ plumbing
    def _layer(self):
        layer = self.labels_layer.value
        if layer is None:
            raise PanoptemError("Choose a labels layer first.")
        return layer

    def _plane(self, layer):
        """None for 'Apply in 3D' or a 2D layer, else the (axis, index) shown in the viewer."""
        if self.apply_3d.value or layer.ndim == 2:
            return None
        return current_plane(self.viewer, layer)

    def _whole_array_plane(self, layer):
        """Filter and Count: None per slice or in 3D, else the plane shown; and whether per slice."""
        if self.each_slice.value:
            if layer.ndim != 3:
                raise PanoptemError(f"Each slice on its own needs a 3D stack; '{layer.name}' is {layer.ndim}D "
                                    "(untick it).")
            return None, True
        return self._plane(layer), False

    def _why_nothing(self, layer, plane) -> str:
        """Why the chosen points and shapes mark no label (said instead of '0 voxels changed')."""
        pts = self.points.value
        if pts is not None and len(pts.data):
            p = np.round(coords_in(pts, layer, pts.data, self.viewer.dims.point)).astype(int)
            if plane is not None:
                axis, index = plane
                on = p[:, axis] == index
                if not on.any():
                    return (f"none of the {len(p)} point(s) lies on the shown {PLANE_OF_AXIS[axis]} plane "
                            f"{index}; move the slider to a point's plane, or tick Apply in 3D")
                p = p[on]
            inside = np.all((p >= 0) & (p < np.asarray(layer.data.shape)), axis=1)
            if not inside.any():
                return "the points lie outside the labels layer"
            return "the points lie on background (label 0); put them inside the labels to edit"
        sh = self.shapes.value
        if sh is not None and len(sh.data):
            return "the drawn shapes cross no label" + (" on the shown plane" if plane is not None else "")
        which = [f"'{x.value.name}'" for x in (self.points, self.shapes) if x.value is not None]
        return f"{' and '.join(which)} hold nothing; click on the labels to mark them"

    def _selected(self, layer, plane) -> np.ndarray:
        """Label ids under the chosen points and crossed by the chosen shapes (never empty)."""
        ids = [np.zeros(0, layer.data.dtype)]  # in the labels' dtype: uint64 ids past 2**53 stay exact
        if self.points.value is not None:
            pts = coords_in(self.points.value, layer, self.points.value.data, self.viewer.dims.point)
            ids.append(pr.labels_at_points(layer.data, pts, plane=plane))
        if self.shapes.value is not None:
            sh = self.shapes.value
            for verts, kind in zip(sh.data, sh.shape_type):
                v = coords_in(sh, layer, verts, self.viewer.dims.point)
                if kind in ("polygon", "rectangle", "ellipse"):
                    v = np.concatenate([v, v[:1]])
                ids.append(pr.labels_on_line(layer.data, v, plane=plane))
        if self.points.value is None and self.shapes.value is None:
            raise PanoptemError("Choose a points or shapes layer (or press New points layer) and mark the labels.")
        out = np.unique(np.concatenate(ids))
        if out.size == 0:
            raise PanoptemError(f"No label is marked: {self._why_nothing(layer, plane)}.")
        return out

    def _say(self, msg: str) -> None:
        self.status.value = msg

    def _run(self, compute, done, heavy: bool, lock=None) -> None:
        """``done(compute())``: in a worker thread when ``heavy`` (``lock``: a labels layer
        kept from painting meanwhile), else right here."""
        if not heavy:
            try:
                done(compute())
            except PanoptemError as e:
                self._fail(e)
            return
        state = None
        if lock is not None:
            state = (lock.editable, lock.mode)
            lock.editable = False

        def finish(res):
            unlock()
            done(res)

        def unlock():
            if lock is not None and state is not None and not lock.editable:
                lock.editable = state[0]
                if state[0]:
                    lock.mode = state[1]

        self._unlock = unlock
        self.status.value = "Working on the whole volume..."
        self._start(compute, finish)

    def _finished(self) -> None:
        unlock = getattr(self, "_unlock", None)
        if unlock is not None:
            unlock()
            self._unlock = None
        super()._finished()

    def _action(self, action) -> None:
        """Main-thread part of a button: PanoptemErrors go to the status line."""
        try:
            action()
        except PanoptemError as e:
            self._fail(e)

    def _edit(self, prepare, what: str, nothing: str = "") -> None:
        """``prepare(layer, plane)`` (GUI thread) -> (``edit(data)`` computing an in-place
        :class:`~panoptem.proofread.Edit`, detail text); the edit runs in a worker for a
        whole volume, and its changes go through the layer's history."""
        def action():
            layer = self._layer()
            plane = self._plane(layer)
            data = layer.data
            if not isinstance(data, np.ndarray):  # before the points are read from it
                raise PanoptemError("This labels layer is read from a file; load it into memory "
                                    "(File > Save, reopen, or use a smaller crop) to proofread it.")
            make, detail = prepare(layer, plane)
            where = ("" if layer.ndim == 2 else " in 3D" if plane is None else
                     f" in {PLANE_OF_AXIS[plane[0]]} plane {plane[1]}")

            def compute():
                return _changes(data, make(data))

            def done(res):
                idx, values = res
                if values.size:
                    layer.data_setitem(idx, values)
                    self.status.value = f"{what} {detail}{where}: {values.size} voxels changed."
                else:
                    self.status.value = f"{what} {detail}{where}: nothing changed" + (f" ({nothing})." if nothing
                                                                                      else ".")
            self._run(compute, done, heavy=plane is None and layer.ndim == 3, lock=layer)
        self._action(action)

    # ------------------------------------------------------------ buttons
    def _like_labels(self) -> dict:
        """ndim, scale and translate of the chosen labels layer, so clicks map 1:1 onto voxels."""
        layer = self.labels_layer.value
        if layer is None:
            return {"ndim": self.viewer.dims.ndim}
        return {"ndim": layer.ndim, "scale": tuple(layer.scale), "translate": tuple(layer.translate)}

    def new_points_layer(self) -> None:
        keep = self.labels_layer.value
        pts = self.viewer.add_points(name="proofread points", size=8, **self._like_labels())
        pts.mode = "add"
        self.reset_choices()
        self.points.value = pts
        if keep is not None:
            self.labels_layer.value = keep

    def new_shapes_layer(self) -> None:
        keep = self.labels_layer.value
        sh = self.viewer.add_shapes(name="proofread lines", **self._like_labels())
        sh.mode = "add_path"
        self.reset_choices()
        self.shapes.value = sh
        if keep is not None:
            self.labels_layer.value = keep

    def merge(self) -> None:
        def prepare(layer, plane):
            ids = self._selected(layer, plane)
            target = layer.selected_label if layer.selected_label in ids else None
            shown = target if target is not None else ids.min()
            return (lambda d: pr.merge_labels(d, ids, target=target, plane=plane)), f"{ids.tolist()} -> {shown}"
        self._edit(prepare, "Merged")

    def delete(self) -> None:
        def prepare(layer, plane):
            ids = self._selected(layer, plane)
            return (lambda d: pr.delete_labels(d, ids, plane=plane)), f"{ids.tolist()}"
        self._edit(prepare, "Deleted")

    def split(self) -> None:
        def prepare(layer, plane):
            ids = self._selected(layer, plane)
            markers = None
            if self.use_points.value:
                if self.points.value is None:
                    raise PanoptemError("Use points as markers needs a points layer with one point per piece.")
                markers = coords_in(self.points.value, layer, self.points.value.data, self.viewer.dims.point)
            kw = dict(markers=markers, min_distance=self.min_distance.value,
                      new_ids_start=self.new_ids_start.value or None, label_divisor=self.divisor.value or None,
                      plane=plane)
            return (lambda d: pr.split_labels(d, ids, **kw)), f"{ids.tolist()[:10]}"
        self._edit(prepare, "Split")

    def morph(self) -> None:
        op = self.op.value

        def prepare(layer, plane):
            ids = None if self.all_labels.value else self._selected(layer, plane)
            kw = dict(radius=self.radius.value, hole_size=self.hole_size.value, plane=plane)
            return ((lambda d: pr.morph_label(d, ids, op, **kw)),
                    f"({op}) {'all labels' if ids is None else ids.tolist()[:10]}")
        self._edit(prepare, "Morphed", MORPH_NOTHING[op])

    def filter(self) -> None:
        def action():
            layer = self._layer()
            plane, per_slice = self._whole_array_plane(layer)
            data = np.asarray(full_resolution(layer))  # level 0 of a pyramid (asarray gives the coarsest)
            min_size, boundary = self.min_size.value or None, self.boundary.value
            kw = {"scale": tuple(layer.scale), "translate": tuple(layer.translate), "metadata": dict(layer.metadata),
                  "name": f"{layer.name}-filtered"}

            def compute():
                out, removed = pr.filter_labels(data, min_size=min_size, boundary=boundary, plane=plane,
                                                return_removed=True, per_slice=per_slice)
                return napari.layers.Labels(out, **kw), removed

            def done(res):
                new, removed = res
                self.viewer.add_layer(new)
                self.labels_layer.value = layer
                where = f" (over {len(data)} slices)" if per_slice else ""
                self.status.value = (f"Removed {removed.size} labels{where} into layer '{new.name}': "
                                     f"{removed.tolist()[:20]}")
            self._run(compute, done, heavy=plane is None and layer.ndim == 3)
        self._action(action)

    def count(self) -> None:
        def action():
            from .._table import write_table
            layer = self._layer()
            plane, per_slice = self._whole_array_plane(layer)
            data, div = full_resolution(layer), self.divisor.value or None
            sources = layer_sources(layer)
            path = str(self.count_file.value or "")
            path = "" if path in ("", ".") else path

            def compute():
                table = pr.count_table(np.asarray(data), div, plane=plane, per_slice=per_slice)
                if path:
                    write_table(table, path, inputs=sources)
                return table

            def done(table):
                self.last_count = table
                cls, n = np.unique(table["class_id"], return_counts=True)
                parts = [f"class {c}: {k}" for c, k in zip(cls.tolist(), n.tolist())]
                self.status.value = ("Labels per class" + (f" (over {data.shape[0]} slices)" if per_slice else "")
                                     + ": " + (", ".join(parts) if parts else "none")
                                     + (f"; table saved to {path}" if path else ""))
            self._run(compute, done, heavy=plane is None and layer.ndim == 3)
        self._action(action)

    def jump(self) -> None:
        def action():
            layer = self._layer()
            data, lid = full_resolution(layer), self.label_id.value

            def compute():
                return pr.label_bbox(np.asarray(data), lid)

            def done(box):
                centre = [(s.start + s.stop - 1) / 2 for s in box]
                world = layer.data_to_world(centre)
                offset = self.viewer.dims.ndim - layer.ndim
                for ax in self.viewer.dims.not_displayed:
                    if ax >= offset:
                        self.viewer.dims.set_point(ax, world[ax - offset])
                disp = [world[ax - offset] for ax in self.viewer.dims.displayed if ax >= offset]
                if len(disp) in (2, 3):
                    camera_of(self.viewer).center = tuple(disp)
                layer.selected_label = lid
                self.status.value = f"Label {lid}: box {[(s.start, s.stop) for s in box]}"
            self._run(compute, done, heavy=layer.ndim == 3)
        self._action(action)

    def next_label(self) -> None:
        def action():
            layer = self._layer()
            plane = self._plane(layer)
            data, cid, div = full_resolution(layer), self.class_id.value, self.divisor.value or None

            def compute():
                return pr.find_next_available_label(np.asarray(data), cid, div, plane=plane)

            def done(n):
                layer.selected_label = n
                self.status.value = f"Next available label: {n} (now the paint label)"
            self._run(compute, done, heavy=plane is None and layer.ndim == 3)
        self._action(action)

    def undo(self) -> None:
        def action():
            self._layer().undo()
            self.status.value = "Undone."
        self._action(action)

    def redo(self) -> None:
        def action():
            self._layer().redo()
            self.status.value = "Redone."
        self._action(action)
