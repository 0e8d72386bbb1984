"""Widgets "2D Inference (Parameter Testing)" and "3D Inference".

They gather parameters, run :func:`segment_2d` / :func:`segment_3d` in a worker
thread with a model loaded once per (model, device), prepare the result layers
there too, and only add them to the viewer in the GUI thread.
"""
from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path

import napari
import napari.layers
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    ProgressBar,
    PushButton,
)
from psygnal import Signal as Event
from qtpy.QtCore import QObject, Signal

from ..errors import PanoptemError
from ..params import Params2D, Params3D
from ._confine import check_output_layer, mask_box, place_in_plane, shapes_mask, viewport_box, write_plane
from ._forms import Group, ParamsForm, compact_combo, labelled, row
from ._layers import (
    PLANE_OF_AXIS,
    current_plane,
    image_array,
    layer_voxel_size,
    origin_from_meta,
    place_plane,
)
from ._worker import Dock

DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_TIP = "Where the network runs. auto: CUDA if present, else Apple MPS, else the CPU."
QUANTIZED_TIP = ("On a CPU, run an int8 copy of panoptem's own networks (ONNX Runtime): the network about "
                 "2.6 x faster, objects as float32's on the held-out block (see the README). Ignored on a GPU "
                 "and for other models, which run as they are.")


def _precision_words(precision: str) -> str:
    """What the status line adds about the network's precision: only that it ran in int8."""
    return "; int8 network" if precision == "int8" else ""


def _contrast_words(card, params) -> str:
    """What the status line adds when the model was trained on images with bright membranes
    (inverted, its card's ``training`` says) and the run saw its images as they are."""
    if params.invert or not card.trained_inverted:
        return ""
    return "; the model was trained on bright-membrane images, inverted: tick Invert contrast for such data"


def precision_for(lm, quantized: bool) -> str:
    """``int8`` where "Use quantized model" can be honoured (a CPU, one of panoptem's own
    networks, ONNX Runtime installed), else ``auto``: on a GPU or for another model the box
    is ignored, as empanada ignores it without a quantized model."""
    from ..inference.runtime import onnx_available
    return "int8" if quantized and lm.device == "cpu" and lm.own_network and onnx_available() else "auto"


#: fields of the 3D form, grouped as empanada-napari groups them; the last group starts folded
GROUPS_3D = {
    "Input": ("pixel_size", "resample", "invert"),
    "2D Parameters": ("downsampling", "confidence_thr", "center_confidence_thr", "min_distance_object_centers",
                      "fine_boundaries", "semantic_only", "maximum_objects_per_class"),
    "Stack Parameters": ("median_slices", "min_size", "min_extent", "inference_plane", "label_erosion",
                         "label_dilation", "fill_holes_in_segmentation"),
    "Ortho-plane Parameters": ("orthoplane", "return_panoptic", "pixel_vote_thr", "allow_one_view", "fusion"),
    "Output": ("chunk_size",),
    "Advanced": ("iou_thr", "ioa_thr", "bridge_gaps", "tile_size", "tta"),
}
GROUPS_2D = {
    "Input": ("pixel_size", "resample", "invert"),
    "2D Parameters": ("downsampling", "confidence_thr", "center_confidence_thr", "min_distance_object_centers",
                      "fine_boundaries", "semantic_only", "min_piece_area", "fill_holes_in_segmentation",
                      "maximum_objects_per_class"),
    "Advanced": ("tile_size", "tta"),
}


@lru_cache(maxsize=2)
def cached_model(name: str, device: str):
    """The loaded model for (name, device), loaded once per session (cleared by ``cached_model.cache_clear()``)."""
    from ..models.load import load_model
    return load_model(name, device)


class _RegistryEvents:
    """``changed`` is emitted after the model registry changes, so model pickers refresh."""

    changed = Event()


registry_events = _RegistryEvents()


def follow_registry(box: ComboBox) -> None:
    """Refresh ``box``'s choices whenever the model registry changes, until its Qt widget is deleted."""
    def refresh():
        try:
            box.reset_choices()
        except RuntimeError:  # the Qt widget is gone but ``destroyed`` has not been delivered yet
            pass

    registry_events.changed.connect(refresh)
    box.native.destroyed.connect(lambda *_: registry_events.changed.disconnect(refresh, missing_ok=True))


def model_names(*_) -> list[str]:
    from ..models.home import card_paths
    return sorted(card_paths())


def model_picker(tooltip: str = "Registered models: the built-in ones and those added in the Models "
                                "dock (or with `panoptem model register`).") -> ComboBox:
    """A ComboBox of the registered models that follows the registry."""
    box = compact_combo(ComboBox(label="Model", name="model", choices=model_names, tooltip=tooltip))
    follow_registry(box)
    return box


def layer_picker(viewer, kind, label: str, nullable: bool = False, name: str | None = None,
                 tooltip: str = "") -> ComboBox:
    """A ComboBox of the viewer's layers of type ``kind``, refreshed when layers change.

    A required picker starts on the selected layer when it has the right type; an
    optional one (``nullable``) starts empty, so a layer is never used unless chosen."""
    def choices(_w):
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]
    box = ComboBox(label=label, name=name or label.lower().replace(" ", "_"), choices=choices, nullable=nullable,
                   tooltip=tooltip or f"The {kind.__name__.lower()} layer to use.")
    compact_combo(box)
    active = viewer.layers.selection.active
    if not nullable and isinstance(active, kind):
        box.value = active
    return box


def count_objects(labels: np.ndarray, per_slice: bool = False) -> int:
    """Number of objects: distinct non-zero ids, summed over slices when ids restart per slice."""
    if not per_slice:
        ids = np.unique(labels)
        return int(ids.size - (ids[0] == 0 if ids.size else 0))
    return sum(count_objects(s) for s in labels)


class _InferenceBase(Dock):
    """Image picker, model and device, a grouped parameter form, Run and a status line."""

    params_cls: type = Params2D
    groups: dict = GROUPS_2D
    title = ""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.image = layer_picker(viewer, napari.layers.Image, "Image",
                                  tooltip="The EM image or volume to segment (2D YX or 3D ZYX, grey).")
        from ..models.home import DEFAULT_MODEL
        self.model = model_picker()
        if DEFAULT_MODEL in self.model.choices:
            self.model.value = DEFAULT_MODEL
        self.device = ComboBox(label="Device", name="device", choices=list(DEVICES), value="auto", tooltip=DEVICE_TIP)
        self.quantized = CheckBox(text="Use quantized model", name="use_quantized", value=False, tooltip=QUANTIZED_TIP)
        self.form = ParamsForm(self.params_cls)
        placed = [n for names in self.groups.values() for n in names]
        if sorted(placed) != sorted(self.params_cls.model_fields):  # a new field must get a group
            raise TypeError(f"fields without a group: {set(self.params_cls.model_fields) ^ set(placed)}")
        self.run_button = PushButton(text=f"Run {self.title}", name="run",
                                     tooltip=f"Start {self.title} with these settings.")
        self.run_button.changed.connect(self.run)
        self.result_layers: list = []
        self._prefilled: float | None = None
        self.image.changed.connect(self._prefill_pixel_size)
        self._prefill_pixel_size()

    def _prefill_pixel_size(self, *_) -> None:
        """Pixel size from the chosen layer's voxel size (its metadata, or a scale that is not
        all ones), in-plane; empty when the layer does not say."""
        layer = self.image.value
        vs = layer_voxel_size(layer) if layer is not None else None
        self.form.set_values(pixel_size=float(vs[-1]) if vs else None)
        # as the field shows it (rounded to its decimals: 4.6 from a float32 4.5999999), so that an
        # untouched field is recognised as prefilled
        self._prefilled = self.form.values()["pixel_size"]

    def _params(self):
        """The form's parameters; a pixel size still as prefilled from the layer is left to the
        layer's own sizes, per axis (the field shows one number, the x size)."""
        params = self.form.params()
        if params.pixel_size is not None and params.pixel_size == self._prefilled:
            params = params.model_copy(update={"pixel_size": None})
        return params

    def _input_group(self, extra=()) -> Group:
        return Group("Input", [self.image, self.model, self.device, *extra, self.quantized,
                               *self.form.take(*self.groups["Input"])])

    def _group(self, title: str, extra=(), folded: bool | None = None) -> Group:
        return Group(title, [*self.form.take(*self.groups.get(title, ())), *extra], folded=folded)

    def _model_name(self) -> str:
        if not self.model.value:
            raise PanoptemError("No model is available (none is registered, or all are archived); register or "
                                "restore one in the Models dock.")
        return self.model.value


def _labels_layer(data, **kw):
    """A napari Labels layer (built here, in the worker; the GUI thread only adds it); labels a
    run streamed to a file are read from it, view only (painting on them failed)."""
    layer = napari.layers.Labels(data, **kw)
    if not isinstance(data, np.ndarray):
        layer.editable = False
    return layer


def _run_2d(array, model: str, device: str, params: Params2D, batch: bool, box, plane_shape, mask, new_layer,
            voxel_size=None, quantized: bool = False, volume=None, volume_pixel_nm=None, edge_on=None):
    """Segment, place the result in its plane, count objects, and build the layer (worker thread);
    ``volume``: the layer's data a plane was taken from, scaled with its range, as the 3D run
    (``volume_pixel_nm``: its finer in-plane pixel size; ``edge_on``: what an xz / yz plane sees of
    the xy sections; see ``segment_2d``)."""
    from ..inference.engine import card_intensity
    from ..inference.segment2d import segment_2d
    array = np.asarray(array)
    lm = cached_model(model, device)
    # a plane of a volume given with its neighbours (a model that sees them): (2k + 1, H, W)
    precision = precision_for(lm, quantized)
    res = segment_2d(array, lm, batch=batch, voxel_size=voxel_size, precision=precision,
                     return_outputs=True, with_neighbours=not batch and array.ndim == 3,
                     intensity=None if volume is None else card_intensity(lm.card, volume),
                     volume_pixel_nm=volume_pixel_nm, edge_on=edge_on, **params.model_dump())
    labels = res.labels
    if batch:
        data, n = labels, count_objects(labels, per_slice=True)
    else:
        data = place_in_plane(labels, box, plane_shape, mask, params.label_divisor)
        n = count_objects(data)
    layer = None
    if new_layer is not None:
        kw = dict(new_layer)
        axis, index, geo = kw.pop("axis"), kw.pop("index"), kw.pop("image")
        placed = {"data": data, "scale": geo.scale, "translate": geo.translate} if batch else \
            place_plane(data, axis, index, geo)
        layer = _labels_layer(placed.pop("data"), name=kw["name"], **placed)
    return data, n, layer, (_pixel_words(lm.card, params, voxel_size, 2, volume_pixel_nm) + _precision_words(precision)
                            + _contrast_words(lm.card, params))


def _pixel_words(card, params, voxel_size, ndim: int, volume_pixel_nm=None) -> str:
    """The status line's words on the pixel size used (see :meth:`~panoptem.inference.resample.PixelPlan.short`)."""
    from ..inference.resample import planes_of
    from ..inference.segment2d import pixel_plan
    return pixel_plan(card, params, voxel_size, ndim, volume_pixel_nm=volume_pixel_nm).short(
        planes_of(params) if ndim == 3 else ("xy",))


class _Geometry:
    """Scale and translate of an image layer, detached from it (safe to read in a worker)."""

    def __init__(self, layer):
        self.scale, self.translate = tuple(layer.scale), tuple(layer.translate)


class Inference2DWidget(_InferenceBase):
    """Run a model on the plane shown in the viewer (xy, xz or yz), on a 2D image, or
    on every slice of a stack ("Batch mode"), to tune parameters before a 3D run."""

    params_cls = Params2D
    groups = GROUPS_2D
    title = "2D inference"
    help_title = "2D Inference (Parameter Testing)"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.batch = CheckBox(text="Batch mode (every slice on its own)", name="batch", value=False,
                              tooltip="Segment every slice of a stack independently; ids restart in each slice.")
        self.roi = layer_picker(viewer, napari.layers.Shapes, "Confine to ROI", nullable=True, name="roi",
                                tooltip="Shapes layer whose rectangles / polygons / ellipses on the shown plane "
                                        "bound the run; pixels outside them get label 0.")
        self.viewport = CheckBox(text="Confine to viewport", name="viewport", value=False,
                                 tooltip="Segment only the part of the plane visible on the canvas.")
        self.output = layer_picker(viewer, napari.layers.Labels, "Output to layer", nullable=True, name="output",
                                   tooltip="Write the result into this labels layer (same shape as the image) at "
                                           "the shown plane, as one undoable edit; empty: a new "
                                           "'<image>-2D-prediction' layer.")
        self.extend([
            self._input_group(),
            self._group("2D Parameters"),
            Group("Where", [self.batch, self.roi, self.viewport, self.output]),
            self._group("Advanced", folded=True),
            row(self.run_button, self.help_button), self.status])

    def _region(self, layer, axis, index, plane_shape):
        """(box, mask): the crop of the plane to segment and the ROI mask (None without ROI)."""
        full = (slice(0, plane_shape[0]), slice(0, plane_shape[1]))
        box, mask = full, None
        if self.roi.value is not None:
            mask = shapes_mask(self.roi.value, layer, axis, index, plane_shape)
            box = mask_box(mask)
        if self.viewport.value:
            vb = viewport_box(layer.corner_pixels, axis, layer.ndim, plane_shape)
            box = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(box, vb))
            if any(s.stop <= s.start for s in box):
                raise PanoptemError("The ROI is outside the visible part of the image; pan onto it.")
        return box, mask

    def run(self) -> None:
        try:
            layer = self.image.value
            data = image_array(layer)
            params = self._params()
            model = self._model_name()
            batch = self.batch.value
            axis = index = edge_on = None
            if batch:
                if data.ndim != 3:
                    raise PanoptemError("Batch mode needs a 3D stack; untick it for a 2D image.")
                array = data
            elif data.ndim == 2:
                array = data
            else:
                from ..inference.segment2d import neighbour_step, stack_step, take_plane
                from ..models.home import get_card
                axis, index = current_plane(self.viewer, layer)
                # the plane with the neighbours the model sees along the plane's axis, if it sees any,
                # as far apart as in its training (the layer's voxel size says how far its slices are)
                card, plane = get_card(model), PLANE_OF_AXIS[axis]
                step = neighbour_step(card, params, layer_voxel_size(layer), plane)
                # an xz / yz plane as a 3D stack gives it to the network (the mean of its group), with the
                # blank sections and (a thin volume's) padding the stack takes from the xy sections
                stride = stack_step(card, params, layer_voxel_size(layer), plane)
                array = take_plane(data, index, plane, neighbours=card.context_slices, step=step, stride=stride)
                if axis != 0:
                    from ..inference.segment3d import plane_edge_on
                    edge_on = plane_edge_on(data, axis, index // stride, stride)
            confined = self.roi.value is not None or self.viewport.value
            target = self.output.value
            if batch and (confined or target is not None):
                raise PanoptemError("Confine to ROI / viewport and Output to layer work on one plane; "
                                    "untick Batch mode.")
            if target is not None:  # before the run, not after it
                check_output_layer(target, data.shape)
            plane_shape = array.shape[-2:]
            vs, volume_nm = layer_voxel_size(layer), None
            if axis is not None:  # the shown plane's two axes
                from ..inference.segment2d import plane_pixels
                vs, params, volume_nm = plane_pixels(vs, axis, params)
            box, mask = ((slice(0, plane_shape[0]), slice(0, plane_shape[1])), None) if batch else \
                self._region(layer, axis, index, plane_shape)
            array = array if batch else np.asarray(array)[(..., *box)]
            if edge_on is not None:  # cut as the plane is (a region of it)
                edge_on = (None if edge_on[0] is None else edge_on[0][box[0]],
                           None if edge_on[1] is None else edge_on[1][box])
        except PanoptemError as e:
            self._fail(e)
            return
        where = (f"{data.shape[0]} slices" if batch else
                 f"{PLANE_OF_AXIS[axis]} plane {index}" if axis is not None else "the image")
        name = f"{layer.name}-batch-prediction" if batch else f"{layer.name}-2D-prediction"
        old = self.viewer.layers[name] if name in self.viewer.layers else None
        replace = old is not None and isinstance(old, napari.layers.Labels)
        new_layer = None if (target is not None or replace) else \
            {"name": name, "axis": axis, "index": index, "image": _Geometry(layer)}
        self.status.value = f"Running on {where}..."

        def show(result):
            plane, n, built, pixels = result
            if target is not None:
                region = np.zeros(plane_shape, bool)
                region[box] = True
                if mask is not None:
                    region &= mask
                try:
                    write_plane(target, plane, region, axis, index, data.shape)
                except PanoptemError as e:
                    self._fail(e)
                    return
                out = target
            elif built is not None:
                if name in self.viewer.layers:  # a non-labels layer of that name
                    self.viewer.layers.remove(name)
                out = self.viewer.add_layer(built)
            else:
                placed = {"data": plane, "scale": tuple(layer.scale), "translate": tuple(layer.translate)} \
                    if batch else place_plane(plane, axis, index, layer)
                out = self.viewer.layers[name] if name in self.viewer.layers else None  # deleted meanwhile?
                if isinstance(out, napari.layers.Labels) and out.ndim == np.ndim(placed["data"]):
                    out.data = placed.pop("data")
                    for k, v in placed.items():
                        setattr(out, k, v)
                else:  # gone, replaced, or of another dimensionality: a fresh layer
                    if out is not None:
                        self.viewer.layers.remove(name)
                    out = self.viewer.add_labels(placed.pop("data"), name=name, **placed)
            self.result_layers = [out]
            tail = " (ids restart in every slice)" if batch else ""
            self.status.value = (f"Done: {n} object{'s' if n != 1 else ''} on {where}{tail}"
                                 + (f" into '{out.name}'" if target is not None else "") + f"; {pixels}.")

        self._start(_run_2d, show, array, model, self.device.value, params, batch, box, plane_shape, mask,
                    new_layer, vs, self.quantized.value, data if data.ndim == 3 and not batch else None, volume_nm,
                    edge_on)


class _Progress(QObject):
    """Carries (plane, done, total) from the worker thread to the widget in the GUI thread."""

    step = Signal(str, int, int)


def cuda_devices() -> list[str]:
    """``cuda:i`` for every GPU this machine's torch sees (Multi GPU runs one worker on each)."""
    from ..distributed._cluster import visible_gpus
    return visible_gpus()


def _run_3d(volume, model: str, device: str, params: Params3D, voxel_size, callback, output, layer_kw: dict,
            image_name: str, quantized: bool = False, devices: list[str] | None = None):
    """Segment (and write the Zarr output when asked), and build the result layers (worker thread).
    With ``devices``: blockwise on Dask, one worker per device, written to ``output``."""
    from ..inference.segment3d import segment_3d
    origin = origin_from_meta(layer_kw, len(volume.shape))  # where the image lies goes with a written output
    origin = origin if voxel_size is not None else None
    if devices:  # each worker loads the model itself, on its device
        from ..models.home import get_card
        card, precision = get_card(model), "auto"
        res = segment_3d(volume, model, output=output, blockwise=True, devices=devices, voxel_size=voxel_size,
                         origin=origin, **params.model_dump())
    else:
        lm = cached_model(model, device)
        card, precision = lm.card, precision_for(lm, quantized)
        res = segment_3d(volume, lm, voxel_size=voxel_size, callback=callback, output=output, precision=precision,
                         origin=origin, **params.model_dump())
    if res.provenance is not None:  # how they were made, kept when the layer is saved
        layer_kw = {**layer_kw, "metadata": {**layer_kw.get("metadata", {}), "panoptem": res.provenance}}
    layers = [_labels_layer(vol, name=f"{image_name}-{cls}-prediction", **layer_kw)
              for cls, vol in res.labels.items()]
    layers += [_labels_layer(vol, name=f"{image_name}-panoptic-stack-{plane}", **layer_kw)
               for plane, vol in res.stacks.items()]
    return res, layers, _pixel_words(card, params, voxel_size, 3) + _precision_words(precision) + \
        _contrast_words(card, params)


class Inference3DWidget(_InferenceBase):
    """Segment a whole volume as a stack along one plane or along xy, xz and yz with a
    consensus; adds one labels layer per class: ``<image>-<class>-prediction``."""

    params_cls = Params3D
    groups = GROUPS_3D
    title = "3D inference"
    help_title = "3D Inference"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.progress = ProgressBar(value=0, min=0, max=1, name="progress", label="Progress",
                                    tooltip="Slices done of the current stack (xy, xz or yz).")
        self.cancel_button = PushButton(text="Cancel", name="cancel", enabled=False,
                                        tooltip="Stop after the batch of slices in progress; nothing is added "
                                                "(a run past its last batch finishes and shows its result).")
        self.cancel_button.changed.connect(self.cancel)
        self._stop = threading.Event()
        self.result = None
        self._bridge = _Progress()
        self._bridge.step.connect(self._while_open(self._on_step))
        self.multigpu = CheckBox(text="Multi GPU", name="multigpu", value=False,
                                 tooltip="Run on every CUDA GPU of this machine at once: the volume in blocks on "
                                         "Dask, one worker per GPU (as segment3d --blockwise --devices all), "
                                         "written to the Zarr output folder, which the result layer reads.")
        self.zarr_dir = FileEdit(label="Zarr output folder (optional)", name="zarr_dir", mode="d", value="",
                                 tooltip="Write the labels to <folder>/<image>_<model>.zarr. One-plane, one-class "
                                         "runs stream there instead of holding the volume in memory, and the "
                                         "layer reads them from the file.")
        self.extend([
            self._input_group(extra=(self.multigpu,)),
            self._group("2D Parameters"),
            self._group("Stack Parameters"),
            self._group("Ortho-plane Parameters"),
            Group("Output", [self.zarr_dir, *self.form.take(*GROUPS_3D["Output"])]),
            self._group("Advanced", folded=True),
            row(self.run_button, self.cancel_button, self.help_button), labelled(self.progress), self.status])

    def output_path(self, image_name: str, model: str) -> Path | None:
        """``<folder>/<image>_<model>.zarr`` for the chosen Zarr folder, else None."""
        folder = str(self.zarr_dir.value or "")
        if folder in ("", "."):
            return None
        stem = re.sub(r"[^\w.-]+", "_", f"{image_name}_{model}")
        return Path(folder) / f"{stem}.zarr"

    def _on_step(self, plane: str, done: int, total: int) -> None:
        self.progress.max = total
        self.progress.value = done
        self.status.value = f"{plane}: {done}/{total} slices"

    def _callback(self, plane: str, done: int, total: int) -> bool:
        """Called by the engine after every batch in the worker thread; False stops the run."""
        self._bridge.step.emit(plane, done, total)
        return not self._stop.is_set()

    def cancel(self) -> None:
        """Stop the running job after the batch of slices in progress. The job itself ends the
        run (with Cancelled), so a job past its last batch finishes and shows its result."""
        if self.worker is not None:
            self._stop.set()
            self.status.value = "Cancelling (after the slices in progress)..."

    def _finished(self) -> None:
        super()._finished()
        self.cancel_button.enabled = False

    def _fail(self, err: BaseException) -> None:
        from ..inference.segment3d import Cancelled
        if isinstance(err, Cancelled):
            self.status.value = f"Cancelled ({err})."
            return
        super()._fail(err)

    def run(self) -> None:
        try:
            layer = self.image.value
            data = image_array(layer)
            if data.ndim != 3:
                raise PanoptemError(f"Layer '{layer.name}' is 2D; 3D inference needs a ZYX volume "
                                    "(use 2D Inference for single images).")
            params = self._params()
            model = self._model_name()
            output = self.output_path(layer.name, model)
            devices = None
            if self.multigpu.value:
                devices = cuda_devices()
                if len(devices) < 2:
                    raise PanoptemError(f"Multi GPU needs two or more CUDA GPUs; this machine has {len(devices)}. "
                                        "Untick it (one GPU: Device cuda).")
                if output is None:
                    raise PanoptemError("Multi GPU writes the labels block by block to Zarr: choose a Zarr output "
                                        "folder.")
            if output is not None:
                if output.exists():
                    raise PanoptemError(f"{output} already exists; remove it or choose another Zarr folder.")
                if output.parent.is_file():
                    raise PanoptemError(f"{output.parent} is a file, not a folder; choose a Zarr output folder.")
                try:
                    output.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise PanoptemError(f"Cannot make the folder {output.parent} for the labels ({e.strerror or e}); "
                                        "choose another Zarr output folder.") from None
        except PanoptemError as e:
            self._fail(e)
            return
        self._stop.clear()
        self.cancel_button.enabled = devices is None  # blocks on Dask run to the end (a rerun resumes them)
        self.progress.value = 0
        self.status.value = ("Running 3D inference..." if devices is None else
                             f"Running 3D inference on {len(devices)} GPUs (blockwise)...")
        vs = layer_voxel_size(layer)
        layer_kw = {"scale": tuple(layer.scale), "translate": tuple(layer.translate), "metadata": {"voxel_size": vs}}

        def show(result):
            res, layers, pixels = result
            found = ", ".join(f"{n} {c}" for c, n in res.objects.items())
            where = f" (written to {output})" if output is not None else ""
            self.result = res

            def shown(added):
                self.result_layers = added
                self.status.value = f"Done: {found} in {res.timings.get('total_s', 0):.1f} s{where}; {pixels}."
            self.add_layers(layers, shown)

        self._start(_run_3d, show, data, model, self.device.value, params, vs, self._callback, output, layer_kw,
                    layer.name, self.quantized.value, devices)
