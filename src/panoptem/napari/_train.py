"""Widget "Train": train a new model from dataset folders in a worker thread
(:func:`panoptem.training.finetune.train_new`), with progress and the last loss; the new
model is registered and offered in every model picker."""
from __future__ import annotations

import json

import napari
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    TextEdit,
)

from ..errors import PanoptemError
from ._finetune import _Bridge, _dir, start_training
from ._worker import WorkerMixin
from ._forms import status_label
from ._inference import DEVICES


def step_of(line: str) -> tuple[int, float] | None:
    """(step, loss) of a training log record (a JSON line), else None."""
    try:
        rec = json.loads(line)
    except (TypeError, ValueError):
        return None
    if isinstance(rec, dict) and "step" in rec and "loss" in rec:
        return int(rec["step"]), float(rec["loss"])
    return None


class TrainWidget(WorkerMixin, Container):
    """Train a new one-class model from scratch on dataset folders (see Pick Patches + Store Dataset).

    ``architecture`` (a :class:`~panoptem.models.architecture.PanopticNet` settings dict, None:
    the default network) can be set from Python for smaller or larger networks."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=False)
        self.viewer = viewer
        self.train_dir = FileEdit(label="Training dataset", name="train_dir", mode="d", value="",
                                  tooltip="A dataset folder, or a folder of several.")
        self.val_dir = FileEdit(label="Validation dataset (optional)", name="val_dir", mode="d", value="",
                                tooltip="Scored at the end; empty: the training images are scored.")
        self.name = LineEdit(label="New model name", name="new_name", value="NewModel")
        self.class_name = LineEdit(label="Class name", name="class_name", value="mitochondria")
        self.kind = ComboBox(label="Class kind", name="kind", choices=["instance", "semantic"], value="instance")
        self.iterations = SpinBox(label="Iterations", name="iterations", value=2000, min=1, max=10**6)
        self.patch_size = SpinBox(label="Patch size", name="patch_size", value=256, min=32, max=4096, step=32)
        self.lr = FloatSpinBox(label="Learning rate", name="lr", value=2e-3, min=1e-6, max=1.0, step=1e-4)
        self.lr.native.setDecimals(6)
        self.device = ComboBox(label="Device", name="device", choices=list(DEVICES), value="auto")
        self.run_button = PushButton(text="Train", name="run")
        self.progress = ProgressBar(value=0, min=0, max=1, name="progress", label="Progress")
        self.status = status_label()
        self.results = TextEdit(name="results", value="")
        self.results.native.setReadOnly(True)
        self.architecture: dict | None = None
        self.worker = None
        self.result: dict | None = None
        self._bridge = _Bridge()
        self._bridge.step.connect(self._on_step)
        self.run_button.changed.connect(self.run)
        self.extend([self.train_dir, self.val_dir, self.name, self.class_name, self.kind, self.iterations,
                     self.patch_size, self.lr, self.device, self.run_button, self.progress, self.status,
                     self.results])

    def _on_step(self, step: int, loss: float) -> None:
        self.progress.value = step
        self.status.value = f"Step {step}/{self.progress.max}, loss {loss:.4f}"

    def run(self) -> None:
        try:
            train_dir = _dir(self.train_dir.value)
            if not train_dir:
                raise PanoptemError("Choose the training dataset folder (made with Pick Patches + Store Dataset).")
            name, cls = self.name.value.strip(), self.class_name.value.strip()
            if not name or not cls:
                raise PanoptemError("Fill in the new model's name and the class name.")
        except PanoptemError as e:
            self._fail(e)
            return
        kw = {"train_dirs": [train_dir], "name": name, "labels": [(1, cls, self.kind.value)],
              "val_dir": _dir(self.val_dir.value) or None, "iterations": self.iterations.value,
              "patch_size": self.patch_size.value, "lr": self.lr.value, "device": self.device.value,
              "architecture": self.architecture}
        self.status.value = "Training..."

        def scores(res: dict) -> str:
            return "\n".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
                             for k, v in (res.get("after") or {}).items())
        start_training(self, "train_new", kw, scores)
