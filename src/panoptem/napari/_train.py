"""Widget "Train": train a new model from dataset folders in a worker thread
(:func:`panoptem.training.finetune.train_new`): one or several classes (instance or
semantic each), their label divisor and the network size, with progress, the last loss
and a Cancel; the new model is registered and offered in every model picker."""
from __future__ import annotations

import json

import napari
from magicgui.widgets import (
    ComboBox,
    FloatSpinBox,
    LineEdit,
    SpinBox,
    TextEdit,
)

from ..errors import PanoptemError
from ..params import TrainParams, default_of
from ._finetune import _TrainingDock
from ._forms import Group, chosen_path

#: network sizes: channel widths of the stem and the 4 encoder stages (``panoptem train --widths``)
SIZES = {"small": "16,24,48,96,128", "default": "24,32,64,128,192", "large": "32,48,96,192,256", "custom": ""}


def step_of(line: str) -> tuple[int, float] | None:
    """(step, loss) of a training log record (a JSON line), else None."""
    try:
        rec = json.loads(line)
    except (TypeError, ValueError):
        return None
    if isinstance(rec, dict) and "step" in rec and "loss" in rec:
        return int(rec["step"]), float(rec["loss"])
    return None


class TrainWidget(_TrainingDock):
    """Train a new model from scratch on dataset folders (see Pick Patches + Store Dataset).

    ``architecture`` (a :class:`~panoptem.models.architecture.PanopticNet` settings dict, None:
    from the size chosen) can be set from Python for other depths or channel counts."""

    help_title = "Train"
    run_text = "Train"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self._data_fields("A dataset folder, or a folder of several (each drawn with weight (1/count)^0.7).",
                          "Scored at the end; empty: the training images are scored.", "NewModel",
                          "Name the new model is registered under (letters, digits, _ . -).")
        self.classes = TextEdit(label="Dataset labels", name="classes", value="1,mitochondria,instance",
                                tooltip="One class per line: id,name,instance|semantic (instance: separate "
                                        "objects; semantic: only where the class is).")
        self.classes.native.setMinimumHeight(60)
        self.label_divisor = SpinBox(label="Label divisor (0: none)", name="label_divisor", value=0, min=0,
                                     max=10**9, tooltip="Divisor the masks are painted with (label = class x "
                                                        "divisor + n); needed for several classes; a dataset "
                                                        "folder's own dataset.json wins.")
        self.size = ComboBox(label="Network size", name="size", choices=list(SIZES), value="default",
                             tooltip="Channel widths of the stem and 4 encoder stages: small 16..128, default "
                                     "24..192 (MitoLite_v1, 2 M parameters), large 32..256; custom: type them.")
        self.widths = LineEdit(label="Widths (custom)", name="widths", value="",
                               tooltip="Network size 'custom': 5 comma-separated channel counts, e.g. "
                                       "24,32,64,128,192 (as panoptem train --widths).")
        self._step_fields(TrainParams, "Optimiser steps (any number from 1).")
        self.lr = FloatSpinBox(label="Learning rate", name="lr", value=default_of(TrainParams, "lr"), min=1e-6,
                               max=1.0, step=1e-4,
                               tooltip="Peak learning rate of the one-cycle schedule.")
        self.lr.native.setDecimals(6)
        self.architecture: dict | None = None
        self.extend([Group("Data", [self.train_dir, self.val_dir, self.classes, self.label_divisor, self.invert]),
                     Group("Model", [self.name, self.size, self.widths, self.iterations, self.patch_size,
                                     self.lr, self.device]),
                     *self._footer()])

    def _architecture(self) -> dict | None:
        if self.architecture is not None:
            return self.architecture
        from ..training.finetune import parse_widths
        text = self.widths.value if self.size.value == "custom" else SIZES[self.size.value]
        if self.size.value == "custom" and not text.strip():
            raise PanoptemError("Network size 'custom' needs Widths, e.g. 24,32,64,128,192.")
        widths = parse_widths(text)
        return {"widths": widths} if widths else None

    def run(self) -> None:
        from ..training.dataset import parse_classes
        try:
            train_dir, name = self._dataset_and_name()
            lines = [ln.strip() for ln in self.classes.value.splitlines() if ln.strip()]
            if not lines:
                raise PanoptemError("Fill in Dataset labels: one line 'id,name,instance|semantic' per class.")
            classes = parse_classes(lines)
            div = self.label_divisor.value or None
            if len(classes) > 1 and not div:
                raise PanoptemError("Several classes need a Label divisor: the one the masks were painted with "
                                    "(label = class x divisor + n).")
            arch = self._architecture()
        except PanoptemError as e:
            self._fail(e)
            return
        kw = {"train_dirs": [train_dir], "name": name, "labels": classes, "label_divisor": div,
              "val_dir": chosen_path(self.val_dir.value) or None, "iterations": self.iterations.value,
              "patch_size": self.patch_size.value, "lr": self.lr.value, "device": self.device.value,
              "architecture": arch, "invert": self.invert.value}
        self.status.value = "Training..."

        def scores(res: dict) -> str:
            return "\n".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
                             for k, v in (res.get("after") or {}).items())
        self.start_training("train_new", kw, scores)
