"""Widget "Measure Labels": per-object measurements in nm into ``layer.features`` and a CSV."""
from __future__ import annotations

import csv
from pathlib import Path

import napari
import napari.layers
import numpy as np
from magicgui.widgets import Container, FileEdit, PushButton

from ..errors import PanoptemError
from ._forms import row, status_label
from ._inference import layer_picker
from ._layers import layer_voxel_size


def _measure_function():
    try:
        from .._measure import measure
    except ImportError:
        raise PanoptemError("This panoptem has no measure module yet; update panoptem to measure labels.") from None
    return measure


def write_csv(path, table: dict) -> Path:
    """Write a dict of equal-length columns as CSV (header = column names)."""
    path = Path(path)
    cols = list(table)
    rows = zip(*(np.asarray(table[c]).tolist() for c in cols))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    return path


class MeasureWidget(Container):
    """Measure every object of a labels layer with :func:`panoptem.measure`
    (voxel size from the layer), show the table as the layer's features and save a CSV."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.labels = layer_picker(viewer, napari.layers.Labels, "Labels")
        self.image = layer_picker(viewer, napari.layers.Image, "Image (optional)", nullable=True, name="image")
        self.image.tooltip = "Grey image of the same shape: adds each object's mean intensity."
        self.csv = FileEdit(label="CSV file (optional)", name="csv", mode="w", filter="*.csv", value="")
        self.run_button = PushButton(text="Measure", name="run")
        self.status = status_label()
        self.run_button.changed.connect(self.run)
        self.extend([self.labels, self.image, self.csv, row(self.run_button, self.status, layout="vertical")])
        self.table: dict | None = None
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(self.reset_choices)

    def run(self) -> None:
        try:
            layer = self.labels.value
            if layer is None:
                raise PanoptemError("Choose a labels layer to measure.")
            measure = _measure_function()
            vs = layer_voxel_size(layer)
            kw = {}
            if self.image.value is not None:
                img = self.image.value.data
                if tuple(img.shape) != tuple(layer.data.shape):
                    raise PanoptemError(f"Image '{self.image.value.name}' has shape {tuple(img.shape)}, the labels "
                                        f"{tuple(layer.data.shape)}; choose the image they were made from.")
                kw["image"] = np.asarray(img)
            table = measure(np.asarray(layer.data), vs, **kw)
            table = {k: np.asarray(v) for k, v in table.items()}
            if "index" not in table and "label" in table:  # napari looks labels up by an 'index' column
                table = {"index": table["label"], **table}
            layer.features = table
            self.table = table
            n = len(next(iter(table.values()))) if table else 0
            msg = f"Measured {n} objects ({'nm' if vs else 'voxels: the layer has no voxel size'})"
            path = str(self.csv.value)
            if path and path != "." and Path(path).name:
                write_csv(path, table)
                msg += f"; saved {path}"
        except PanoptemError as e:
            self.status.value = f"Error: {e}"
            napari.utils.notifications.show_error(str(e))
            return
        self.status.value = msg + "."
