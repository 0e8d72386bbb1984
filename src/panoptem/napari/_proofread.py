"""Widget "Proofread Labels": merge, split, delete, morph, filter, count, jump and next
label over :mod:`panoptem.proofread`.

Labels are picked with a chosen points layer and/or shapes layer (lines, paths,
polygons: every label they cross). With "Apply in 3D" off, edits touch only the
plane shown in the viewer. Edits go through napari's own label history, so the
Undo button here and Ctrl+Z in the viewer both restore them.
"""
from __future__ import annotations

import napari
import napari.layers
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, SpinBox

from .. import proofread as pr
from ..errors import PanoptemError
from ._forms import row, status_label
from ._inference import layer_picker
from ._layers import camera_of, coords_in, current_plane


def apply_edit(layer, edit: pr.Edit) -> int:
    """Replay an in-place :class:`~panoptem.proofread.Edit` through the layer's undo
    history (``Labels.data_setitem``); returns the number of voxels changed."""
    if edit.empty:
        return 0
    idx, values = edit.changes(layer.data)
    edit.undo(layer.data)
    layer.data_setitem(idx, values)
    return int(values.size)


class ProofreadWidget(Container):
    """Proofreading tools for one labels layer."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=True)
        self.viewer = viewer
        L = napari.layers
        self.labels = layer_picker(viewer, L.Labels, "Labels")
        self.points = layer_picker(viewer, L.Points, "Points", nullable=True)
        self.shapes = layer_picker(viewer, L.Shapes, "Shapes", nullable=True)
        new_points = PushButton(text="New points layer", name="new_points")
        new_shapes = PushButton(text="New shapes layer", name="new_shapes")
        new_points.changed.connect(self.new_points_layer)
        new_shapes.changed.connect(self.new_shapes_layer)
        self.apply_3d = CheckBox(text="Apply in 3D", name="apply_3d", value=False,
                                 tooltip="Off: edit only the plane shown in the viewer. On: the whole volume.")
        self.divisor = SpinBox(label="Label divisor (0 = none)", name="divisor", value=0, min=0, max=10**9,
                               tooltip="label = class x divisor + n; used by Split, Count and Next label.")

        self.min_distance = SpinBox(label="Minimum Distance", name="min_distance", value=10, min=1, max=100,
                                    tooltip="Split: minimum distance in voxels between the seeds found "
                                            "as maxima of the distance transform.")
        self.use_points = CheckBox(text="Use points as markers", name="use_points", value=False,
                                   tooltip="Split: every point is a seed (Minimum Distance is then ignored).")
        self.new_ids_start = SpinBox(label="Start new label IDs from (0 = auto)", name="new_ids_start",
                                     value=0, min=0, max=2**31 - 1)
        self.op = ComboBox(label="Operation", name="op", choices=list(pr.MORPH_OPS), value="dilate")
        self.radius = SpinBox(label="Radius", name="radius", value=1, min=1, max=7)
        self.hole_size = SpinBox(label="Hole size (voxels)", name="hole_size", value=64, min=1, max=10**9)
        self.all_labels = CheckBox(text="Morph all labels", name="all_labels", value=False)
        self.min_size = SpinBox(label="Min size (voxels)", name="min_size", value=100, min=0, max=10**9,
                                tooltip="Filter: labels with fewer voxels are removed; a label of exactly "
                                        "this size stays.")
        self.boundary = CheckBox(text="Remove labels touching the border", name="boundary", value=False)
        self.label_id = SpinBox(label="Label ID", name="label_id", value=1, min=1, max=2**63 - 1)
        self.class_id = SpinBox(label="Class ID", name="class_id", value=1, min=0, max=10**6)
        self.status = status_label()

        buttons = {}
        for name, text in [("merge", "Merge"), ("split", "Split"), ("delete", "Delete"), ("morph", "Morph"),
                           ("filter", "Filter"), ("count", "Count"), ("jump", "Jump to label"),
                           ("next_label", "Next available label"), ("undo", "Undo"), ("redo", "Redo")]:
            b = PushButton(text=text, name=f"{name}_button")
            b.changed.connect(getattr(self, name))
            buttons[name] = b
        self.buttons = buttons
        self.extend([
            self.labels, row(self.points, new_points), row(self.shapes, new_shapes), self.apply_3d, self.divisor,
            row(buttons["merge"], buttons["delete"]),
            self.min_distance, self.use_points, self.new_ids_start, buttons["split"],
            self.op, self.radius, self.hole_size, self.all_labels, buttons["morph"],
            self.min_size, self.boundary, buttons["filter"],
            row(buttons["count"], buttons["next_label"]), self.class_id,
            self.label_id, buttons["jump"],
            row(buttons["undo"], buttons["redo"]), row(self.status)])
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(self.reset_choices)

    # ------------------------------------------------------------ plumbing
    def _layer(self):
        layer = self.labels.value
        if layer is None:
            raise PanoptemError("Choose a labels layer first.")
        return layer

    def _plane(self, layer):
        """None for 'Apply in 3D' or a 2D layer, else the (axis, index) shown in the viewer."""
        if self.apply_3d.value or layer.ndim == 2:
            return None
        return current_plane(self.viewer, layer)

    def _selected(self, layer, plane) -> np.ndarray:
        """Label ids under the chosen points and crossed by the chosen shapes."""
        ids = [np.zeros(0, np.int64)]
        if self.points.value is not None:
            ids.append(pr.labels_at_points(layer.data, coords_in(self.points.value, layer, self.points.value.data),
                                           plane=plane))
        if self.shapes.value is not None:
            sh = self.shapes.value
            for verts, kind in zip(sh.data, sh.shape_type):
                v = coords_in(sh, layer, verts)
                if kind in ("polygon", "rectangle", "ellipse"):
                    v = np.concatenate([v, v[:1]])
                ids.append(pr.labels_on_line(layer.data, v, plane=plane))
        if self.points.value is None and self.shapes.value is None:
            raise PanoptemError("Choose a points or shapes layer (or press New points layer) and mark the labels.")
        return np.unique(np.concatenate(ids)).astype(np.int64)

    def _do(self, action) -> None:
        try:
            msg = action()
        except PanoptemError as e:
            self.status.value = f"Error: {e}"
            napari.utils.notifications.show_error(str(e))
            return
        self.status.value = msg

    def _edit(self, make_edit, what: str) -> None:
        def action():
            layer = self._layer()
            plane = self._plane(layer)
            edit, detail = make_edit(layer, plane)
            n = apply_edit(layer, edit)
            where = ("" if layer.ndim == 2 else " in 3D" if plane is None else
                     f" in plane {plane[1]} of axis {plane[0]}")
            return f"{what} {detail}{where}: {n} voxels changed."
        self._do(action)

    # ------------------------------------------------------------ buttons
    def _like_labels(self) -> dict:
        """ndim, scale and translate of the chosen labels layer, so clicks map 1:1 onto voxels."""
        layer = self.labels.value
        if layer is None:
            return {"ndim": self.viewer.dims.ndim}
        return {"ndim": layer.ndim, "scale": tuple(layer.scale), "translate": tuple(layer.translate)}

    def new_points_layer(self) -> None:
        keep = self.labels.value
        pts = self.viewer.add_points(name="proofread points", size=8, **self._like_labels())
        pts.mode = "add"
        self.reset_choices()
        self.points.value = pts
        if keep is not None:
            self.labels.value = keep

    def new_shapes_layer(self) -> None:
        keep = self.labels.value
        sh = self.viewer.add_shapes(name="proofread lines", **self._like_labels())
        sh.mode = "add_path"
        self.reset_choices()
        self.shapes.value = sh
        if keep is not None:
            self.labels.value = keep

    def merge(self) -> None:
        def make(layer, plane):
            ids = self._selected(layer, plane)
            target = layer.selected_label if layer.selected_label in ids else None
            edit = pr.merge_labels(layer.data, ids, target=target, plane=plane)
            return edit, f"{ids.tolist()} -> {target if target is not None else (ids.min() if ids.size else '-')}"
        self._edit(make, "Merged")

    def delete(self) -> None:
        def make(layer, plane):
            ids = self._selected(layer, plane)
            return pr.delete_labels(layer.data, ids, plane=plane), f"{ids.tolist()}"
        self._edit(make, "Deleted")

    def split(self) -> None:
        def make(layer, plane):
            ids = self._selected(layer, plane)
            if ids.size != 1:
                raise PanoptemError(f"Mark exactly one label to split (found {ids.size}: {ids.tolist()[:10]}).")
            markers = None
            if self.use_points.value:
                if self.points.value is None:
                    raise PanoptemError("Use points as markers needs a points layer with one point per piece.")
                markers = coords_in(self.points.value, layer, self.points.value.data)
            edit = pr.split_label(layer.data, int(ids[0]), markers=markers, min_distance=self.min_distance.value,
                                  new_ids_start=self.new_ids_start.value or None,
                                  label_divisor=self.divisor.value or None, plane=plane)
            return edit, f"{int(ids[0])}"
        self._edit(make, "Split")

    def morph(self) -> None:
        def make(layer, plane):
            ids = None if self.all_labels.value else self._selected(layer, plane)
            edit = pr.morph_label(layer.data, ids, self.op.value, radius=self.radius.value,
                                  hole_size=self.hole_size.value, plane=plane)
            return edit, f"({self.op.value}) {'all labels' if ids is None else ids.tolist()[:10]}"
        self._edit(make, "Morphed")

    def filter(self) -> None:
        def action():
            layer = self._layer()
            plane = self._plane(layer)
            out, removed = pr.filter_labels(np.asarray(layer.data), min_size=self.min_size.value or None,
                                            boundary=self.boundary.value, plane=plane, return_removed=True)
            self.viewer.add_labels(out, name=f"{layer.name}-filtered", scale=tuple(layer.scale),
                                   translate=tuple(layer.translate), metadata=dict(layer.metadata))
            self.labels.value = layer
            return f"Removed {removed.size} labels into layer '{layer.name}-filtered': {removed.tolist()[:20]}"
        self._do(action)

    def count(self) -> None:
        def action():
            layer = self._layer()
            plane = self._plane(layer)
            self.last_count = pr.count_labels(np.asarray(layer.data), self.divisor.value or None, plane=plane)
            parts = [f"class {c}: {d['count']}" for c, d in self.last_count.items()]
            return "Labels per class: " + (", ".join(parts) if parts else "none")
        self._do(action)

    def jump(self) -> None:
        def action():
            layer = self._layer()
            box = pr.label_bbox(np.asarray(layer.data), self.label_id.value)
            centre = [(s.start + s.stop - 1) / 2 for s in box]
            world = layer.data_to_world(centre)
            offset = self.viewer.dims.ndim - layer.ndim
            for ax in self.viewer.dims.not_displayed:
                if ax >= offset:
                    self.viewer.dims.set_point(ax, world[ax - offset])
            disp = [world[ax - offset] for ax in self.viewer.dims.displayed if ax >= offset]
            if len(disp) in (2, 3):
                camera_of(self.viewer).center = tuple(disp)
            layer.selected_label = self.label_id.value
            return f"Label {self.label_id.value}: box {[(s.start, s.stop) for s in box]}"
        self._do(action)

    def next_label(self) -> None:
        def action():
            layer = self._layer()
            plane = self._plane(layer)
            n = pr.find_next_available_label(np.asarray(layer.data), self.class_id.value,
                                             self.divisor.value or None, plane=plane)
            layer.selected_label = n
            return f"Next available label: {n} (now the paint label)"
        self._do(action)

    def undo(self) -> None:
        def action():
            self._layer().undo()
            return "Undone."
        self._do(action)

    def redo(self) -> None:
        def action():
            self._layer().redo()
            return "Redone."
        self._do(action)
