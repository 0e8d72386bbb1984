"""Widget "Export Segmentations": a labels layer (one volume or 2D slices), optionally with its
image, to TIFF or Zarr files with the voxel size, in ``<folder>/<name>/masks`` and ``images``."""
from __future__ import annotations

import napari
import napari.layers
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    LineEdit,
    PushButton,
)

from ..errors import PanoptemError
from ._export_files import FORMATS, export_segmentation, parse_voxel_size
from ._finetune import _dir
from ._forms import status_label
from ._inference import layer_picker
from ._layers import layer_voxel_size


class ExportWidget(Container):
    """Export a labels layer (and optionally an image) as mask / image files."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=False)
        self.viewer = viewer
        self.labels = layer_picker(viewer, napari.layers.Labels, "Labels")
        self.image = layer_picker(viewer, napari.layers.Image, "Image (optional)", nullable=True, name="image")
        self.folder = FileEdit(label="Folder", name="folder", mode="d", value="")
        self.name = LineEdit(label="Name", name="export_name", value="",
                             tooltip="Files go to <folder>/<name>/masks and images; empty: the labels layer's name.")
        self.format = ComboBox(label="Format", name="format", choices=list(FORMATS), value="tiff")
        self.slices = CheckBox(text="2D slices (one file per plane)", name="slices", value=False)
        self.voxel_size = LineEdit(label="Voxel size (nm)", name="voxel_size", value="",
                                   tooltip="Like '40, 5, 5' (z, y, x); empty: the labels layer's voxel size.")
        self.run_button = PushButton(text="Export", name="run")
        self.status = status_label()
        self.written: list = []
        self.run_button.changed.connect(self.run)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(self.reset_choices)
        self.extend([self.labels, self.image, self.folder, self.name, self.format, self.slices, self.voxel_size,
                     self.run_button, self.status])

    def run(self) -> None:
        try:
            lab = self.labels.value
            if lab is None:
                raise PanoptemError("Choose a labels layer to export.")
            folder = _dir(self.folder.value)
            if not folder:
                raise PanoptemError("Choose the folder to export into.")
            data = lab.data[0] if getattr(lab, "multiscale", False) else lab.data
            vs = parse_voxel_size(self.voxel_size.value, data.ndim) or layer_voxel_size(lab)
            img = self.image.value
            img_data = None if img is None else (img.data[0] if getattr(img, "multiscale", False) else img.data)
            name = self.name.value.strip() or lab.name
            self.written = export_segmentation(folder, name, data, img_data, vs, self.format.value,
                                               self.slices.value)
        except PanoptemError as e:
            self.status.value = f"Error: {e}"
            napari.utils.notifications.show_error(str(e))
            return
        n_img = sum(p.parent.name == "images" for p in self.written)
        self.status.value = (f"Exported {len(self.written) - n_img} mask file(s)"
                             + (f" and {n_img} image file(s)" if n_img else "") + f" to {self.written[0].parents[1]}.")
