"""Widget "Fine-tune": fine-tune a registered model on a dataset folder in a worker thread
(:func:`panoptem.training.finetune.finetune`), with progress, the last loss, a Cancel that
stops after the current step (keeping a checkpoint the next run continues from), and the
before / after scores at the end; the new model is registered and offered in every picker."""
from __future__ import annotations

import threading

import napari
from magicgui.widgets import (
    CheckBox,
    ComboBox,
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
from ..params import LAYERS, FinetuneParams, default_of
from ._forms import Group, chosen_path, labelled, row
from ._inference import (
    DEVICE_TIP,
    DEVICES,
    cached_model,
    model_picker,
    registry_events,
)
from ._worker import Dock



class _Bridge(QObject):
    """Carries (step, loss) and log lines from the worker thread to the GUI thread."""

    step = Signal(int, float)
    line = Signal(str)


def scores_table(before: dict | None, after: dict | None) -> str:
    """One line per score: ``name: before -> after`` (numbers to 3 decimals)."""
    if after is None:
        return "no scores: too few patches to hold any out; give a validation dataset (or 3 patches or more)"

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    before = before or {}
    return "\n".join(f"{k}: {fmt(before.get(k))} -> {fmt(after.get(k))}" for k in after)


def finetune_results(res: dict) -> str:
    """The Scores box after fine-tuning: before -> after on the held-out patches, and the step kept."""
    text = scores_table(res["before"], res["after"])
    if res.get("after") is not None:
        kept = res.get("kept_step", 0)
        text += ("\nkept: the base model's weights (no step scored better)" if kept == 0 else
                 f"\nkept: the weights of step {kept} (best held-out F1)")
    return text


def _run_training(func_name: str, on_step, on_line, **kw) -> dict:
    """``panoptem.training.finetune.<func_name>(**kw)`` reporting (step, loss) and log lines."""
    from ..training import finetune as ft
    return getattr(ft, func_name)(log=lambda msg: on_line(str(msg)),
                                  on_step=lambda rec: on_step(int(rec["step"]), float(rec["loss"])), **kw)


class _TrainingDock(Dock):
    """Shared by Fine-tune and Train: dataset folders and the new model's name, progress,
    last loss, Cancel, scores."""

    run_text = "Run"

    def _data_fields(self, train_tip: str, val_tip: str, name: str, name_tip: str) -> None:
        """The training and validation dataset folders and the new model's name."""
        self.train_dir = FileEdit(label="Training dataset", name="train_dir", mode="d", value="", tooltip=train_tip)
        self.val_dir = FileEdit(label="Validation dataset (optional)", name="val_dir", mode="d", value="",
                                tooltip=val_tip)
        self.name = LineEdit(label="New model name", name="new_name", value=name, tooltip=name_tip)
        self.invert = CheckBox(label="Invert contrast", name="invert", value=False,
                               tooltip=FinetuneParams.model_fields["invert"].description)

    def _dataset_and_name(self) -> tuple[str, str]:
        """The chosen training dataset folder and the new model's name; a :class:`PanoptemError`
        that says what to fill in when either is missing."""
        train_dir = chosen_path(self.train_dir.value)
        if not train_dir:
            raise PanoptemError("Choose the training dataset folder (made with Pick Patches + Store Dataset).")
        name = self.name.value.strip()
        if not name:
            raise PanoptemError("Fill in the new model's name.")
        return train_dir, name

    def _step_fields(self, schema: type, iterations_tip: str) -> None:
        """Iterations and patch size, starting at ``schema``'s defaults."""
        self.iterations = SpinBox(label="Iterations", name="iterations", value=default_of(schema, "iterations"),
                                  min=1, max=10**6, tooltip=iterations_tip)
        self.patch_size = SpinBox(label="Patch size (pixels)", name="patch_size",
                                  value=default_of(schema, "patch_size"), min=64, max=4096,
                                  step=32, tooltip="Training crop side in pixels (a multiple of 32, 64 or more).")

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.device = ComboBox(label="Device", name="device", choices=list(DEVICES), value="auto", tooltip=DEVICE_TIP)
        self.run_button = PushButton(text=self.run_text, name="run", tooltip="Start training with these settings.")
        self.cancel_button = PushButton(text="Cancel", name="cancel", enabled=False,
                                        tooltip="Stop after the current step; the checkpoint is kept and running "
                                                "again with the same name continues from it.")
        self.progress = ProgressBar(value=0, min=0, max=1, name="progress", label="Progress",
                                    tooltip="Training steps done of the iterations asked.")
        self.results = TextEdit(label="Scores", name="results", value="",
                                tooltip="Scores (foreground IoU, F1, precision and recall at IoU 0.5, objects "
                                        "found on background-only patches) on the validation folder or the "
                                        "held-out patches; fine-tuning shows before -> after.")
        self.results.native.setReadOnly(True)
        self.results.native.setMinimumHeight(90)
        self.result: dict | None = None
        self._stop = threading.Event()
        self._bridge = _Bridge()
        self._bridge.step.connect(self._while_open(self._on_step))
        self._bridge.line.connect(self._while_open(self._on_line))
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)

    def _footer(self) -> list:
        return [row(self.run_button, self.cancel_button, self.help_button), labelled(self.progress), self.status,
                Group("Results", [self.results])]

    def _on_step(self, step: int, loss: float) -> None:
        self.progress.value = step
        self.status.value = f"Step {step}/{self.progress.max}, loss {loss:.4f}"

    def _on_line(self, line: str) -> None:
        if line.startswith("before:"):
            self.status.value = "Training..."

    def cancel(self) -> None:
        """Stop after the step in progress (the engine saves a checkpoint there)."""
        if self.worker is not None:
            self._stop.set()
            self.status.value = "Stopping after the current step..."

    def _finished(self) -> None:
        super()._finished()
        self.cancel_button.enabled = False

    def _fail(self, err: BaseException) -> None:
        from ..training.train import TrainingCancelled
        if isinstance(err, TrainingCancelled):
            self.status.value = (f"Cancelled: {err}. Run again with the same name to continue from there.")
            return
        super()._fail(err)

    def start_training(self, func_name: str, kw: dict, results_text) -> None:
        """Run a training function in a worker; on success refresh the model pickers and
        show ``results_text(result)``."""
        self.progress.max, self.progress.value = kw["iterations"], 0
        self.results.value = ""
        self._stop.clear()
        self.cancel_button.enabled = True

        def done(res: dict) -> None:
            self.result = res
            cached_model.cache_clear()
            registry_events.changed.emit()
            self.progress.value = self.progress.max
            last = res["losses"][-1] if res.get("losses") else float("nan")
            self.status.value = f"Done: registered '{res['name']}' (last loss {last:.4f})."
            where = res.get("evaluated_on")
            self.results.value = (f"evaluated on {where}\n" if where else "") + results_text(res)

        self._start(_run_training, done, func_name, self._bridge.step.emit, self._bridge.line.emit,
                    stop=self._stop.is_set, **kw)


class FinetuneWidget(_TrainingDock):
    """Fine-tune a model on the patches of a dataset folder (see Pick Patches + Store Dataset)."""

    help_title = "Fine-tune"
    run_text = "Fine-tune"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.model = model_picker(tooltip="A panoptem (state-dict) model to start from.")
        self._data_fields("A dataset folder (images/ + masks/, e.g. from Store dataset), or a folder of several.",
                          "Scored before, during and after; empty: a share of the training patches (Held-out "
                          "fraction) is held out from training and scored instead.", "FinetunedModel",
                          "Name the fine-tuned model is registered under (letters, digits, _ . -).")
        fields = FinetuneParams.model_fields
        self.val_fraction = FloatSpinBox(label="Held-out fraction", name="val_fraction",
                                         value=default_of(FinetuneParams, "val_fraction"), min=0.0, max=0.5,
                                         step=0.05, tooltip=fields["val_fraction"].description)
        self.replay_dir = FileEdit(label="Replay dataset (optional)", name="replay_dir", mode="d", value="",
                                   tooltip="A dataset folder of the model's own training data, mixed into every "
                                           "batch so the model keeps what it knew (fewer false detections).")
        self.replay_ratio = FloatSpinBox(label="Replay ratio", name="replay_ratio",
                                         value=default_of(FinetuneParams, "replay_ratio"), min=0.0, max=0.9,
                                         step=0.05, tooltip=fields["replay_ratio"].description)
        self._step_fields(FinetuneParams, "Optimiser steps (any number from 1); 100-200 suit 16 patches.")
        self.layers = ComboBox(label="Finetunable layers", name="layers", choices=list(LAYERS),
                               value=default_of(FinetuneParams, "layers"), tooltip="none: decoder and heads only; stageK: also the encoder "
                                                     "from stage K on; all: everything.")
        self.lr = FloatSpinBox(label="Learning rate", name="lr", value=default_of(FinetuneParams, "lr"), min=1e-6,
                               max=1.0, step=1e-4,
                               tooltip="Peak learning rate of the one-cycle schedule.")
        self.lr.native.setDecimals(6)
        self.extend([Group("Fine-tune", [self.model, self.train_dir, self.val_dir, self.val_fraction, self.invert,
                                         self.name, self.iterations, self.patch_size, self.layers, self.lr, self.device]),
                     Group("Replay", [self.replay_dir, self.replay_ratio], folded=True),
                     *self._footer()])

    def run(self) -> None:
        try:
            if not self.model.value:
                raise PanoptemError("No model is available (none is registered, or all are archived); register "
                                    "or restore one in the Models dock to fine-tune.")
            train_dir, name = self._dataset_and_name()
        except PanoptemError as e:
            self._fail(e)
            return
        kw = {"model_name": self.model.value, "train_dir": train_dir, "val_dir": chosen_path(self.val_dir.value) or None,
              "name": name, "iterations": self.iterations.value, "patch_size": self.patch_size.value,
              "layers": self.layers.value, "lr": self.lr.value, "device": self.device.value,
              "val_fraction": self.val_fraction.value, "replay": chosen_path(self.replay_dir.value) or None,
              "replay_ratio": self.replay_ratio.value, "invert": self.invert.value}
        self.status.value = "Scoring the model before fine-tuning..."
        self.start_training("finetune", kw, finetune_results)

