"""Widget "Create / Merge Tiles": :mod:`panoptem.tiles` on files (a large 2D image need not be
opened in the viewer), in a worker thread."""
from __future__ import annotations

import napari
from magicgui.widgets import FileEdit, PushButton, SpinBox

from ..errors import PanoptemError
from ._forms import Group, chosen_path, row
from ._worker import Dock


class TilesWidget(Dock):
    """Cut a large 2D image file (and its mask) into tiles, and merge tiles back."""

    help_title = "Create / Merge Tiles"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.image_file = FileEdit(label="Image (2D)", name="image_file", mode="r", value="",
                                   tooltip="A large 2D image file (TIFF/BigTIFF is read lazily, never whole).")
        self.mask_file = FileEdit(label="Mask (optional)", name="mask_file", mode="r", value="",
                                  tooltip="The image's labels, cut alike into masks/.")
        self.tile_size = SpinBox(label="Tile size (pixels)", name="tile_size", value=512, min=16, max=100_000,
                                 step=16, tooltip="Side of the square tiles; edge tiles are padded with 0.")
        self.tiles_dir = FileEdit(label="Tile folder", name="tiles_dir", mode="d", value="",
                                  tooltip="Create: where images/, masks/ and tiles.json are written (a new or empty "
                                          "folder). Merge: the tile folder to put back together.")
        self.merged_dir = FileEdit(label="Merged folder", name="merged_dir", mode="d", value="",
                                   tooltip="Merge: where image.tif (its dtype kept) and mask.tif are written.")
        self.create_button = PushButton(text="Create tiles", name="create", tooltip="Cut the image (and mask).")
        self.merge_button = PushButton(text="Merge tiles", name="merge",
                                       tooltip="Put the tiles (masks painted meanwhile) back together.")
        self.buttons = {"create": self.create_button, "merge": self.merge_button}  # off while one runs
        self.create_button.changed.connect(self.create)
        self.merge_button.changed.connect(self.merge)
        self.extend([Group("Create Tiles", [self.image_file, self.mask_file, self.tile_size, self.tiles_dir,
                                            self.create_button]),
                     Group("Merge Tiles", [self.merged_dir, self.merge_button]),
                     row(self.help_button), self.status])

    @staticmethod
    def _paths(*chosen) -> list[str]:
        """The paths of ``(file widget, what it is)`` pairs; an error naming the first not chosen."""
        out = []
        for w, what in chosen:
            p = chosen_path(w.value)
            if not p:
                raise PanoptemError(f"Choose the {what}.")
            out.append(p)
        return out

    def create(self) -> None:
        from ..tiles import create_tiles
        try:
            image, folder = self._paths((self.image_file, "2D image file"), (self.tiles_dir, "tile folder"))
            mask = chosen_path(self.mask_file.value) or None
        except PanoptemError as e:
            self._fail(e)
            return
        self.status.value = "Cutting tiles..."

        def done(written):
            self.status.value = f"Wrote {len(written)} tiles of {self.tile_size.value} pixels to {folder}."
        self._start(create_tiles, done, image, folder, self.tile_size.value, mask=mask)

    def merge(self) -> None:
        from ..tiles import merge_tiles
        try:
            folder, out = self._paths((self.tiles_dir, "tile folder"), (self.merged_dir, "merged folder"))
        except PanoptemError as e:
            self._fail(e)
            return
        self.status.value = "Merging tiles..."

        def done(written):
            self.status.value = "Wrote " + " and ".join(str(p) for p in written.values()) + "."
        self._start(merge_tiles, done, folder, out)
