"""Widget "Pick Patches + Store Dataset": cut patches to annotate out of an image (around
points and at random, optionally paired with existing labels), show them as an image
layer with a labels layer to paint, and write them as a training dataset folder."""
from __future__ import annotations

from pathlib import Path

import napari
import napari.layers
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    PushButton,
    SpinBox,
)

from ..errors import PanoptemError
from ._forms import row, status_label
from ._worker import WorkerMixin
from ._inference import layer_picker
from ._layers import add_or_replace, coords_in, image_array

PLANE_CHOICES = ("xy", "xz", "yz", "random")


def patch_stack(patches) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size) images to show (a flipbook's middle plane) and the labels to paint
    (the paired labels, else zeros), both padded to the patch size."""
    imgs = np.stack([p.image[p.middle] if p.is_flipbook else p.image for p in patches])
    labs = np.zeros(imgs.shape, np.uint32)
    for i, p in enumerate(patches):
        if p.labels is not None:
            labs[i] = p.labels[p.middle] if p.is_flipbook else p.labels
    return imgs, labs


def with_painted_labels(patches, painted: np.ndarray) -> list:
    """Copies of ``patches`` holding the painted plane ``painted[i]`` as labels; a patch
    with nothing painted keeps no labels (its image is stored to be painted later)."""
    from dataclasses import replace
    painted = np.asarray(painted)
    if painted.shape[0] != len(patches):
        raise PanoptemError(f"The labels layer has {painted.shape[0]} planes for {len(patches)} patches; "
                            "pick the patches again.")
    out = []
    for p, lab in zip(patches, painted):
        if not lab.any():
            out.append(replace(p, labels=None))
            continue
        if p.is_flipbook:  # only the middle plane is annotated; the others are context
            full = np.zeros(p.image.shape, lab.dtype)
            full[p.middle] = lab
            lab = full
        out.append(replace(p, labels=lab))
    return out


class PatchesWidget(WorkerMixin, Container):
    """Pick patches from an image (optional points to centre them on, optional labels to
    pair), paint them in ``<image>-patches-labels``, then store them as a dataset folder."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=False)
        self.viewer = viewer
        self.image = layer_picker(viewer, napari.layers.Image, "Image")
        self.points = layer_picker(viewer, napari.layers.Points, "Points (optional)", nullable=True, name="points")
        self.points.tooltip = "Patches are centred on these points first; random ones fill up to the number."
        self.labels = layer_picker(viewer, napari.layers.Labels, "Labels (optional)", nullable=True, name="labels")
        self.labels.tooltip = "Labels of the image to crop with it (paired patches, to correct or reuse)."
        self.n = SpinBox(label="Number of patches", name="n", value=16, min=1, max=10_000)
        self.patch_size = SpinBox(label="Patch size", name="patch_size", value=256, min=16, max=4096, step=16)
        self.plane = ComboBox(label="Plane", name="plane", choices=list(PLANE_CHOICES), value="xy",
                              tooltip="3D volumes: the plane to cut; random: one of the three per patch.")
        self.is_2d_stack = CheckBox(text="Stack of 2D images", name="is_2d_stack", value=False)
        self.flipbook = CheckBox(text="Flipbook (3D context)", name="flipbook", value=False)
        self.flipbook_depth = SpinBox(label="Flipbook depth", name="flipbook_depth", value=5, min=1, max=99)
        self.seed = SpinBox(label="Random seed", name="seed", value=0, min=0, max=2**31 - 1)
        self.pick_button = PushButton(text="Pick patches", name="pick")
        self.folder = FileEdit(label="Dataset folder", name="folder", mode="d", value="")
        self.label_divisor = SpinBox(label="Label divisor (0: none)", name="label_divisor", value=0, min=0,
                                     max=10**9, tooltip="Masks painted as class * divisor + n; 0: one class.")
        self.store_button = PushButton(text="Store dataset", name="store")
        self.status = status_label()
        self.buttons = {"pick": self.pick_button, "store": self.store_button}
        self.pick_button.changed.connect(self.pick)
        self.store_button.changed.connect(self.store)
        self.worker = None
        self.patches: list = []
        self.patch_layers: tuple = ()
        self.extend([self.image, self.points, self.labels, self.n, self.patch_size, self.plane,
                     row(self.is_2d_stack, self.flipbook), self.flipbook_depth, self.seed, self.pick_button,
                     self.folder, self.label_divisor, self.store_button, self.status])
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(self.reset_choices)

    def pick(self) -> None:
        from ..training.patches import pick_patches
        try:
            layer = self.image.value
            data = image_array(layer)
            pts = None
            if self.points.value is not None:
                pts = coords_in(self.points.value, layer, self.points.value.data)
            labels = None
            if self.labels.value is not None:
                labels = self.labels.value.data
                if tuple(labels.shape) != tuple(data.shape):
                    raise PanoptemError(f"Labels '{self.labels.value.name}' have shape {tuple(labels.shape)}, the "
                                        f"image {tuple(data.shape)}; choose the labels of this image.")
        except PanoptemError as e:
            self._fail(e)
            return
        self.status.value = "Picking patches..."

        def show(patches):
            if not patches:
                self.status.value = "No patch fits; choose a smaller patch size."
                return
            self.patches = patches
            imgs, labs = patch_stack(patches)
            name = f"{layer.name}-patches"
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            img_layer = self.viewer.add_image(imgs, name=name, metadata={"patch_names": [p.name for p in patches]})
            lab_layer = add_or_replace(self.viewer, f"{name}-labels", labs)
            self.patch_layers = (img_layer, lab_layer)
            self.viewer.layers.selection.active = lab_layer
            self.status.value = (f"Picked {len(patches)} patches of {imgs.shape[-1]} pixels; paint them in "
                                 f"'{lab_layer.name}', then Store dataset.")

        self._start(pick_patches, show, data, n=self.n.value, patch_size=self.patch_size.value, points=pts,
                    plane=self.plane.value, is_2d_stack=self.is_2d_stack.value, flipbook=self.flipbook.value,
                    flipbook_depth=self.flipbook_depth.value, labels=labels, seed=self.seed.value,
                    source=layer.name)

    def store(self) -> None:
        from ..training.dataset import store_dataset
        try:
            if not self.patches or not self.patch_layers:
                raise PanoptemError("Pick patches first.")
            lab_layer = self.patch_layers[1]
            if lab_layer not in self.viewer.layers:
                raise PanoptemError(f"The labels layer '{lab_layer.name}' was removed; pick the patches again.")
            folder = str(self.folder.value or "")
            if folder in ("", "."):
                raise PanoptemError("Choose a dataset folder to store the patches in.")
            patches = with_painted_labels(self.patches, lab_layer.data)
            div = self.label_divisor.value or None
        except PanoptemError as e:
            self._fail(e)
            return
        n_masks = sum(p.labels is not None for p in patches)

        def done(names):
            self.status.value = (f"Stored {len(names)} patches ({n_masks} with masks) in {Path(folder)}.")

        self._start(store_dataset, done, patches, folder, label_divisor=div)
