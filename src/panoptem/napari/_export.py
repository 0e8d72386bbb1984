"""Widget "Export Segmentations": a labels layer (one volume or 2D slices), optionally with its
image, to TIFF or Zarr files with the voxel size, in ``<folder>/<name>/masks`` and ``images``,
and optionally its objects' surface meshes in ``meshes`` (written in a worker thread)."""
from __future__ import annotations

import napari
import napari.layers
from magicgui.widgets import CheckBox, ComboBox, FileEdit, LineEdit, PushButton

from ..errors import PanoptemError
from ._export_files import FORMATS, export_segmentation, parse_voxel_size
from ._forms import Group, chosen_path, row
from ._inference import layer_picker
from ._layers import full_resolution, layer_voxel_size
from ._worker import Dock


class ExportWidget(Dock):
    """Export a labels layer (and optionally an image) as mask / image files."""

    help_title = "Export Segmentations"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.labels_layer = layer_picker(viewer, napari.layers.Labels, "Labels", name="labels_layer",
                                         tooltip="The labels layer to write as masks.")
        self.image = layer_picker(viewer, napari.layers.Image, "Image (optional)", nullable=True, name="image",
                                  tooltip="Also write this image (same shape) into images/.")
        self.folder = FileEdit(label="Folder", name="folder", mode="d", value="",
                               tooltip="Where the <name> folder with masks/ and images/ is created.")
        self.name = LineEdit(label="Name", name="export_name", value="",
                             tooltip="Files go to <folder>/<name>/masks and images; empty: the labels layer's name.")
        self.format = ComboBox(label="Format", name="format", choices=list(FORMATS), value="tiff",
                               tooltip="tiff: OME-TIFF; zarr: OME-Zarr. Both keep the voxel size.")
        self.slices = CheckBox(text="2D slices (one file per plane)", name="slices", value=False,
                               tooltip="Write every z plane of a 3D layer as its own 2D file (a training-style "
                                       "folder) instead of one volume.")
        self.meshes = CheckBox(text="Surface meshes (3D)", name="meshes", value=False,
                               tooltip="Also write every object's surface (the one whose area Measure gives) into "
                                       "meshes/ as <label>.ply: x, y, z in nm, the layer's position added; for "
                                       "Blender, Amira, Imaris, ParaView.")
        self.voxel_size = LineEdit(label="Voxel size (nm)", name="voxel_size", value="",
                                   tooltip="Like '40, 5, 5' (z, y, x, in nm); empty: the labels layer's voxel size.")
        self.run_button = PushButton(text="Export", name="run", tooltip="Write the files (never over existing ones).")
        self.written: list = []
        self.run_button.changed.connect(self.run)
        self.extend([Group("Export", [self.labels_layer, self.image, self.folder, self.name, self.format,
                                      self.slices, self.meshes, self.voxel_size]),
                     row(self.run_button, self.help_button), self.status])

    def run(self) -> None:
        try:
            lab = self.labels_layer.value
            if lab is None:
                raise PanoptemError("Choose a labels layer to export.")
            folder = chosen_path(self.folder.value)
            if not folder:
                raise PanoptemError("Choose the folder to export into.")
            data = full_resolution(lab)
            vs = parse_voxel_size(self.voxel_size.value, data.ndim) or layer_voxel_size(lab)
            img = self.image.value
            img_data = None if img is None else full_resolution(img)
            name = self.name.value.strip() or lab.name
        except PanoptemError as e:
            self._fail(e)
            return
        self.status.value = "Exporting..."

        def done(written):
            self.written = written
            n_img = sum(p.parent.name == "images" for p in written)
            n_mesh = sum(p.parent.name == "meshes" for p in written)
            self.status.value = (f"Exported {len(written) - n_img - n_mesh} mask file(s)"
                                 + (f", {n_mesh} mesh(es)" if n_mesh else "")
                                 + (f" and {n_img} image file(s)" if n_img else "") + f" to {written[0].parents[1]}.")

        # the layer's position in nm (with its scale the voxel size) places the meshes where napari shows it
        origin = tuple(float(t) for t in lab.translate) if self.meshes.value and data.ndim == 3 else None
        self._start(export_segmentation, done, folder, name, data, img_data, vs, self.format.value,
                    self.slices.value, self.meshes.value, origin)
