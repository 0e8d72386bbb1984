"""Widget "Fine-tune": fine-tune a registered model on a dataset folder in a worker thread
(:func:`panoptem.training.finetune.finetune`), with progress, the last loss, and the
before / after scores at the end; the new model is registered and offered in every picker."""
from __future__ import annotations

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
from qtpy.QtCore import QObject, Signal

from ..errors import PanoptemError
from ._forms import status_label
from ._worker import WorkerMixin
from ._inference import (
    DEVICES,
    cached_model,
    follow_registry,
    model_names,
    registry_events,
)

LAYER_CHOICES = ("none", "stage4", "stage3", "stage2", "stage1", "all")


class _Bridge(QObject):
    """Carries (step, loss) and log lines from the worker thread to the GUI thread."""

    step = Signal(int, float)
    line = Signal(str)


def scores_table(before: dict, after: dict) -> str:
    """One line per score: ``name: before -> after`` (numbers to 3 decimals)."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    return "\n".join(f"{k}: {fmt(before.get(k))} -> {fmt(after.get(k))}" for k in after)


def _run_training(func_name: str, on_step, on_line, **kw) -> dict:
    """``panoptem.training.finetune.<func_name>(**kw)`` reporting (step, loss) and log lines."""
    from ..training import finetune as ft
    return getattr(ft, func_name)(log=lambda msg: on_line(str(msg)),
                                  on_step=lambda rec: on_step(int(rec["step"]), float(rec["loss"])), **kw)


def start_training(widget, func_name: str, kw: dict, results_text) -> None:
    """Run a training function in a worker for ``widget`` (which has ``progress``,
    ``status``, ``results`` and a ``_bridge``); on success register-refresh the
    model pickers and show ``results_text(result)``."""
    widget.progress.max, widget.progress.value = kw["iterations"], 0
    widget.results.value = ""

    def done(res: dict) -> None:
        widget.result = res
        cached_model.cache_clear()
        registry_events.changed.emit()
        widget.progress.value = widget.progress.max
        last = res["losses"][-1] if res.get("losses") else float("nan")
        widget.status.value = f"Done: registered '{res['name']}' (last loss {last:.4f})."
        widget.results.value = f"evaluated on {res['evaluated_on']}\n" + results_text(res)

    widget._start(_run_training, done, func_name, widget._bridge.step.emit, widget._bridge.line.emit, **kw)


def _dir(value) -> str:
    s = str(value or "")
    return "" if s in ("", ".") else s


class FinetuneWidget(WorkerMixin, Container):
    """Fine-tune a model on the patches of a dataset folder (see Pick Patches + Store Dataset)."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=False)
        self.viewer = viewer
        self.model = ComboBox(label="Model", name="model", choices=model_names,
                              tooltip="A panoptem (state-dict) model to start from.")
        follow_registry(self.model)
        self.train_dir = FileEdit(label="Training dataset", name="train_dir", mode="d", value="")
        self.val_dir = FileEdit(label="Validation dataset (optional)", name="val_dir", mode="d", value="",
                                tooltip="Scored before and after; empty: the training patches are scored.")
        self.name = LineEdit(label="New model name", name="new_name", value="FinetunedModel")
        self.iterations = SpinBox(label="Iterations", name="iterations", value=100, min=1, max=10**6)
        self.patch_size = SpinBox(label="Patch size", name="patch_size", value=256, min=32, max=4096, step=32)
        self.layers = ComboBox(label="Finetunable layers", name="layers", choices=list(LAYER_CHOICES),
                               value="none", tooltip="none: decoder and heads only; stageK: also the encoder "
                                                     "from stage K on; all: everything.")
        self.lr = FloatSpinBox(label="Learning rate", name="lr", value=1e-3, min=1e-6, max=1.0, step=1e-4)
        self.lr.native.setDecimals(6)
        self.device = ComboBox(label="Device", name="device", choices=list(DEVICES), value="auto")
        self.run_button = PushButton(text="Fine-tune", name="run")
        self.progress = ProgressBar(value=0, min=0, max=1, name="progress", label="Progress")
        self.status = status_label()
        self.results = TextEdit(name="results", value="")
        self.results.native.setReadOnly(True)
        self.worker = None
        self.result: dict | None = None
        self._bridge = _Bridge()
        self._bridge.step.connect(self._on_step)
        self._bridge.line.connect(self._on_line)
        self.run_button.changed.connect(self.run)
        self.extend([self.model, self.train_dir, self.val_dir, self.name, self.iterations, self.patch_size,
                     self.layers, self.lr, self.device, self.run_button, self.progress, self.status, self.results])

    def _on_step(self, step: int, loss: float) -> None:
        self.progress.value = step
        self.status.value = f"Step {step}/{self.progress.max}, loss {loss:.4f}"

    def _on_line(self, line: str) -> None:
        if line.startswith("before:"):
            self.status.value = "Training..."

    def run(self) -> None:
        try:
            if not self.model.value:
                raise PanoptemError("No model is registered; register one (Models widget) to fine-tune.")
            train_dir = _dir(self.train_dir.value)
            if not train_dir:
                raise PanoptemError("Choose the training dataset folder (made with Pick Patches + Store Dataset).")
            name = self.name.value.strip()
            if not name:
                raise PanoptemError("Fill in the new model's name.")
        except PanoptemError as e:
            self._fail(e)
            return
        kw = {"model_name": self.model.value, "train_dir": train_dir, "val_dir": _dir(self.val_dir.value) or None,
              "name": name, "iterations": self.iterations.value, "patch_size": self.patch_size.value,
              "layers": self.layers.value, "lr": self.lr.value, "device": self.device.value}
        self.status.value = "Scoring the model before fine-tuning..."
        start_training(self, "finetune", kw, lambda res: scores_table(res["before"], res["after"]))
