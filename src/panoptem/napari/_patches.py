"""Widget "Pick Patches + Store Dataset": cut patches to annotate out of an image (around
points and at random, optionally paired with existing labels), show them as an image
layer with a labels layer to paint, drop the ones not wanted, and write them as a
training dataset folder. A patch left unpainted is stored as a true negative (an
all-zero mask: no object there)."""
from __future__ import annotations

from pathlib import Path

import napari
import napari.layers
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, PushButton, SpinBox

from ..errors import PanoptemError
from ..params import PATCH_PLANES, PatchParams, default_of
from ._forms import Group, row
from ._inference import layer_picker
from ._layers import coords_in, full_resolution, level_array
from ._worker import Dock



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
    with nothing painted gets an all-zero mask (a true negative)."""
    from dataclasses import replace
    painted = np.asarray(painted)
    if painted.shape[0] != len(patches):
        raise PanoptemError(f"The labels layer has {painted.shape[0]} planes for {len(patches)} patches; "
                            "pick the patches again.")
    out = []
    for p, lab in zip(patches, painted):
        if p.is_flipbook:  # only the middle plane is annotated; the others are context
            full = np.zeros(p.image.shape, lab.dtype)
            full[p.middle] = lab
            lab = full
        out.append(replace(p, labels=lab))
    return out


def _at_level(labels, factor, shape, name: str, level: int):
    """Full-resolution labels taken at a pyramid level whose factors are whole numbers (every
    factor-th pixel: ids stay ids); else one error saying what to give."""
    if not all(float(f).is_integer() for f in factor):
        raise PanoptemError(f"Labels '{name}' have no level {level} and the level's factors {tuple(factor)} are "
                            "not whole numbers; give multiscale labels or pick from level 0.")
    step = tuple(slice(None, None, int(f)) for f in factor)
    return np.asarray(labels[step])[tuple(slice(0, n) for n in shape)]


def _pick(name: str, **kw):
    """Pick patches and build the two layers to show (worker thread)."""
    from ..training.patches import pick_patches
    patches = pick_patches(**kw)
    if not patches:
        return patches, None, None
    imgs, labs = patch_stack(patches)
    img_layer = napari.layers.Image(imgs, name=name, metadata={"patch_names": [p.name for p in patches]})
    lab_layer = napari.layers.Labels(labs, name=f"{name}-labels")
    return patches, img_layer, lab_layer


class PatchesWidget(Dock):
    """Pick patches from an image (optional points to centre them on, optional labels to
    pair), paint them in ``<image>-patches-labels``, then store them as a dataset folder."""

    help_title = "Pick Patches + Store Dataset"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.image = layer_picker(viewer, napari.layers.Image, "Image",
                                  tooltip="The image, 2D stack or volume to cut patches from.")
        self.points = layer_picker(viewer, napari.layers.Points, "Points (optional)", nullable=True, name="points",
                                   tooltip="Patches are centred on these points first; random ones fill up to the "
                                           "number.")
        self.labels_layer = layer_picker(viewer, napari.layers.Labels, "Labels (optional)", nullable=True,
                                         name="labels_layer",
                                         tooltip="Labels of the image to crop with it (paired patches, to correct "
                                                 "or reuse).")
        self.n = SpinBox(label="Number of patches", name="n", value=default_of(PatchParams, "n"), min=1, max=10_000,
                         tooltip="How many patches: one per point, random ones for the rest.")
        self.patch_size = SpinBox(label="Patch size (pixels)", name="patch_size",
                                  value=default_of(PatchParams, "patch_size"), min=16, max=4096,
                                  step=16, tooltip="Side of the square patches, in pixels.")
        self.plane = ComboBox(label="Plane", name="plane", choices=list(PATCH_PLANES),
                              value=default_of(PatchParams, "plane"),
                              tooltip="3D volumes: the plane to cut; random: one of the three per patch "
                                      "(isotropic data).")
        self.is_2d_stack = CheckBox(text="Stack of 2D images", name="is_2d_stack", value=False,
                                    tooltip="A 3D layer is a stack of unrelated 2D images (xy patches only).")
        self.flipbook = CheckBox(text="Flipbook (3D context)", name="flipbook", value=False,
                                 tooltip="Keep the planes around each patch (stored in flipbooks/) to see the "
                                         "context; the middle plane is the one painted.")
        self.flipbook_depth = SpinBox(label="Flipbook depth (planes)", name="flipbook_depth",
                                      value=default_of(PatchParams, "flipbook_depth"), min=1, max=99,
                                      tooltip="Planes per flipbook.")
        self.level = SpinBox(label="Multiscale level", name="level", value=0, min=0, max=8,
                             tooltip="A multiscale image: cut the patches from this level (0: full resolution; "
                                     "each level is coarser), e.g. to annotate at a model's pixel size.")
        self.seed = SpinBox(label="Random seed", name="seed", value=default_of(PatchParams, "seed"), min=0,
                            max=2**31 - 1,
                            tooltip="Seed of the random picks: the same seed picks the same patches.")
        self.pick_button = PushButton(text="Pick patches", name="pick",
                                      tooltip="Cut the patches and show them to paint in '<image>-patches-labels'.")
        self.drop_button = PushButton(text="Drop shown patch", name="drop",
                                      tooltip="Remove the patch on the slider's current position from the set.")
        self.folder = FileEdit(label="Dataset folder", name="folder", mode="d", value="",
                               tooltip="Where images/ and masks/ are written (created, or appended to).")
        self.label_divisor = SpinBox(label="Label divisor (0: none)", name="label_divisor", value=0, min=0,
                                     max=10**9, tooltip="Masks painted as class * divisor + n; 0: one class.")
        self.store_button = PushButton(text="Store dataset", name="store",
                                       tooltip="Write every patch and its painted mask; an unpainted patch is "
                                               "stored as a true negative (no object).")
        self.buttons = {"pick": self.pick_button, "drop": self.drop_button, "store": self.store_button}
        self.pick_button.changed.connect(self.pick)
        self.drop_button.changed.connect(self.drop)
        self.store_button.changed.connect(self.store)
        self.patches: list = []
        self.patch_layers: tuple = ()
        self._kept: dict = {}  # id -> (patch labels layer, digest as picked, dropped from or stored)
        self.extend([
            Group("Pick", [self.image, self.points, self.labels_layer, self.n, self.patch_size, self.plane,
                           row(self.is_2d_stack, self.flipbook), self.flipbook_depth, self.level, self.seed,
                           row(self.pick_button, self.drop_button)]),
            Group("Store", [self.folder, self.label_divisor, self.store_button]),
            row(self.help_button), self.status])

    def pick(self) -> None:
        try:
            layer, level = self.image.value, self.level.value
            data, factor = level_array(layer, level)
            pts = None
            if self.points.value is not None:  # in level 0's pixels, as the layer's data coordinates
                pts = coords_in(self.points.value, layer, self.points.value.data, self.viewer.dims.point) / factor
            labels = None
            if self.labels_layer.value is not None:
                labels = self.labels_layer.value.data
                if getattr(self.labels_layer.value, "multiscale", False):
                    labels = labels[min(level, len(labels) - 1)]
                elif level and tuple(labels.shape) == tuple(full_resolution(layer).shape):
                    labels = _at_level(labels, factor, data.shape, self.labels_layer.value.name, level)
                if tuple(labels.shape) != tuple(data.shape):
                    raise PanoptemError(f"Labels '{self.labels_layer.value.name}' have shape "
                                        f"{tuple(labels.shape)}, the image {tuple(data.shape)}; choose the labels "
                                        "of this image.")
            name = f"{layer.name}-patches"
            self._check_unsaved(f"{name}-labels")
        except PanoptemError as e:
            self._fail(e)
            return
        self.status.value = "Picking patches..."

        def show(result):
            patches, img_layer, lab_layer = result
            if not patches:
                self.status.value = "No patch fits; choose a smaller patch size."
                return
            self.patches = patches
            for old in (name, f"{name}-labels"):
                if old in self.viewer.layers:
                    self._kept.pop(id(self.viewer.layers[old]), None)
                    self.viewer.layers.remove(old)

            def shown(added):
                self.patch_layers = tuple(added)
                self._keep(added[1])
                self.viewer.layers.selection.active = lab_layer
                self.status.value = (f"Picked {len(patches)} patches of {img_layer.data.shape[-1]} pixels; paint "
                                     f"them in '{lab_layer.name}' (an unpainted patch is a true negative), drop "
                                     "unwanted ones, then Store dataset.")
            self.add_layers([img_layer, lab_layer], shown)

        self._start(_pick, show, name, image=data, n=self.n.value, patch_size=self.patch_size.value, points=pts,
                    plane=self.plane.value, is_2d_stack=self.is_2d_stack.value, flipbook=self.flipbook.value,
                    flipbook_depth=self.flipbook_depth.value, labels=labels, seed=self.seed.value,
                    source=layer.name if level == 0 else f"{layer.name}-s{level}")

    def _keep(self, layer) -> None:
        """Record a patch labels layer's values as stored (or as picked: nothing to store)."""
        self._kept[id(layer)] = (layer, _digest(layer.data))

    def _unstored(self, layer) -> bool:
        kept = self._kept.get(id(layer))
        return kept is None or kept[0] is not layer or _digest(layer.data) != kept[1]

    def _check_unsaved(self, name: str) -> None:
        """Refuse to pick anew while the patch labels painted hold what is not stored: picking
        replaces the patches Store dataset writes, and the layer ``name`` (napari cannot undo a
        removed layer)."""
        at_risk = [self.patch_layers[1]] if len(self.patch_layers) == 2 else []
        if name in self.viewer.layers:
            at_risk.append(self.viewer.layers[name])
        for lay in at_risk:
            if lay in self.viewer.layers and self._unstored(lay):
                raise PanoptemError(f"'{lay.name}' holds painting that is not stored, and picking again would lose "
                                    "it: Store dataset first, or delete that layer to pick anew.")

    def _patch_layers(self):
        if not self.patches or not self.patch_layers:
            raise PanoptemError("Pick patches first.")
        img_layer, lab_layer = self.patch_layers
        for lay in (img_layer, lab_layer):
            if lay not in self.viewer.layers:
                raise PanoptemError(f"The layer '{lay.name}' was removed; pick the patches again.")
        return img_layer, lab_layer

    def drop(self) -> None:
        """Remove the patch shown (the slider's position on the patch layers) from the set."""
        try:
            img_layer, lab_layer = self._patch_layers()
        except PanoptemError as e:
            self._fail(e)
            return
        i = int(np.clip(np.round(img_layer.world_to_data(self.viewer.dims.point[-3:])[0]), 0,
                        len(self.patches) - 1))
        gone = self.patches.pop(i)
        if not self.patches:
            self.viewer.layers.remove(lab_layer)
            self.viewer.layers.remove(img_layer)
            self.patch_layers = ()
            self.status.value = f"Dropped patch {gone.name}; no patch is left."
            return
        painted = np.delete(np.asarray(lab_layer.data), i, axis=0)
        img_layer.data = np.delete(np.asarray(img_layer.data), i, axis=0)
        img_layer.metadata = {**img_layer.metadata, "patch_names": [p.name for p in self.patches]}
        unstored = self._unstored(lab_layer)
        lab_layer.data = painted
        if not unstored:
            self._keep(lab_layer)
        self.status.value = f"Dropped patch {i} ({gone.name}); {len(self.patches)} left."

    def store(self) -> None:
        from ..training.dataset import store_dataset
        try:
            _, lab_layer = self._patch_layers()
            folder = str(self.folder.value or "")
            if folder in ("", "."):
                raise PanoptemError("Choose a dataset folder to store the patches in.")
            patches = with_painted_labels(self.patches, lab_layer.data)
            div = self.label_divisor.value or None
        except PanoptemError as e:
            self._fail(e)
            return
        n_empty = sum(not p.labels.any() for p in patches)
        stored = (lab_layer, _digest(lab_layer.data))

        def done(names):
            self._kept[id(lab_layer)] = stored
            self.status.value = (f"Stored {len(names)} patches ({len(names) - n_empty} painted, {n_empty} with no "
                                 f"object as true negatives) in {Path(folder)}.")

        self._start(store_dataset, done, patches, folder, label_divisor=div)


def _digest(data) -> str:
    """A digest of a patch labels layer's values (a few MB at most)."""
    import hashlib
    a = np.ascontiguousarray(np.asarray(data))
    return hashlib.blake2b(a.view(np.uint8).reshape(-1), digest_size=16).hexdigest() + str(a.shape)
