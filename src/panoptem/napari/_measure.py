"""Widget "Measure Labels": per-object measurements in nm into ``layer.features`` and a table
file (CSV, or Excel .xlsx), computed in a worker thread."""
from __future__ import annotations

from pathlib import Path

import napari
import napari.layers
import numpy as np
from magicgui.widgets import CheckBox, FileEdit, PushButton, SpinBox

from ..errors import PanoptemError
from ..params import MeasureParams, default_of
from ._forms import Group, row
from ._inference import layer_picker
from ._layers import full_resolution, layer_sources, layer_voxel_size
from ._worker import Dock


def _measure_function():
    try:
        from .._measure import measure
    except ImportError:
        raise PanoptemError("This panoptem has no measure module yet; update panoptem to measure labels.") from None
    return measure


def _measure(measure, labels, voxel_size, kw: dict, path: str, sources=()) -> dict:
    """The table (with napari's 'index' column), written to ``path`` when given, never over one of
    ``sources`` (the layers' files) (worker thread)."""
    table = measure(np.asarray(labels), voxel_size, **kw)
    table = {k: np.asarray(v) for k, v in table.items()}
    if "index" not in table and "label" in table:  # napari looks labels up by an 'index' column
        table = {"index": table["label"], **table}
    if path:
        from .._table import write_table
        write_table(table, path, inputs=sources)
    return table


class MeasureWidget(Dock):
    """Measure every object of a labels layer with :func:`panoptem.measure`
    (voxel size from the layer), show the table as the layer's features and save it."""

    help_title = "Measure Labels"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.labels_layer = layer_picker(viewer, napari.layers.Labels, "Labels", name="labels_layer",
                                         tooltip="The labels layer to measure (its voxel size in nm comes from "
                                                 "the layer's scale or metadata).")
        self.image = layer_picker(viewer, napari.layers.Image, "Image (optional)", nullable=True, name="image",
                                  tooltip="Grey image of the same shape: adds each object's mean intensity.")
        self.divisor = SpinBox(label="Label divisor (0 = none)", name="divisor", value=0, min=0, max=10**9,
                               tooltip="class = label // divisor for the class_id column; 0: every object is "
                                       "of class 1.")
        self.surface = CheckBox(text="Surface area and shape", name="surface", value=default_of(MeasureParams, "surface"),
                                tooltip="Surface area (nm²) and sphericity in 3D, perimeter (nm) and circularity "
                                        "in 2D: the slow part; untick for sizes and positions only.")
        self.per_slice = CheckBox(text="Per slice (a stack of 2D images)", name="per_slice", value=False,
                                  tooltip="Measure every z slice on its own as a 2D image, as 2D batch runs "
                                          "give them (ids restart in every slice); the table's first column "
                                          "is the slice. Not shown as the layer's features (ids repeat).")
        self.csv = FileEdit(label="Table file (optional)", name="csv", mode="w", filter="*.csv *.xlsx", value="",
                            tooltip="Save the table: .csv, or an Excel workbook when the name ends in .xlsx.")
        self.run_button = PushButton(text="Measure", name="run", tooltip="Measure every object of the layer.")
        self.run_button.changed.connect(self.run)
        self.table: dict | None = None
        self.extend([Group("Measure", [self.labels_layer, self.image, self.divisor, self.surface, self.per_slice,
                                        self.csv]),
                     row(self.run_button, self.help_button), self.status])

    def run(self) -> None:
        try:
            layer = self.labels_layer.value
            if layer is None:
                raise PanoptemError("Choose a labels layer to measure.")
            measure = _measure_function()
            vs = layer_voxel_size(layer)
            labels = full_resolution(layer)
            kw = {}
            if self.image.value is not None:
                img = full_resolution(self.image.value)
                if tuple(img.shape) != tuple(labels.shape):
                    raise PanoptemError(f"Image '{self.image.value.name}' has shape {tuple(img.shape)}, the labels "
                                        f"{tuple(labels.shape)}; choose the image they were made from.")
                kw["image"] = img
            from .._memory import array_bytes, check_fits
            check_fits(array_bytes(labels, kw.get("image")), f"Measuring '{layer.name}' in memory",
                       "measure it block by block from its file: panoptem measure FILE -o table.csv --blockwise.")
            if self.divisor.value:
                kw["label_divisor"] = self.divisor.value
            if not self.surface.value:
                kw["surface"] = False
            if self.per_slice.value:
                if labels.ndim != 3:
                    raise PanoptemError(f"Per slice measures a stack of 2D images; '{layer.name}' is {labels.ndim}D: "
                                        "untick Per slice.")
                kw["per_slice"] = True
            path = str(self.csv.value or "")
            path = path if path not in ("", ".") and Path(path).name else ""
        except PanoptemError as e:
            self._fail(e)
            return
        self.status.value = "Measuring..."

        def done(table: dict) -> None:
            per_slice = "slice" in table
            if not per_slice:  # napari finds a label's row by its id: ids repeat across slices
                layer.features = table
            self.table = table
            n = len(next(iter(table.values()))) if table else 0
            where = f" in {labels.shape[0]} slices" if per_slice else ""
            msg = f"Measured {n} objects{where} ({'nm' if vs else 'voxels: the layer has no voxel size'})"
            self.status.value = msg + (f"; saved {path}." if path else ".")

        if "image" in kw:
            kw["image"] = np.asarray(kw["image"])
        self._start(_measure, done, measure, labels, vs, kw, path, layer_sources(layer, self.image.value))
