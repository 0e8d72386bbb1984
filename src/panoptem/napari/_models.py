"""Widget "Models": inspect, register, export, import, archive and restore models
(a thin layer over :mod:`panoptem.models.registry` and :mod:`panoptem.models.export`)."""
from __future__ import annotations

from pathlib import Path

import napari
from magicgui.widgets import (
    ComboBox,
    FileEdit,
    LineEdit,
    PushButton,
    TextEdit,
)

from ..errors import PanoptemError
from ..models.card import EXPORT_FORMATS
from ._forms import Group, chosen_path, row
from ._inference import cached_model, follow_registry, model_picker, registry_events
from ._worker import Dock


def model_info_text(name: str) -> str:
    """The text ``panoptem model info NAME`` prints."""
    from ..models.card import card_info
    from ..models.home import get_card
    return card_info(get_card(name))


def archived_names(*_) -> list[str]:
    from ..models.home import list_models
    return [m.name for m in list_models(include_archived=True) if m.archived]


def export_model(name: str, out_file: str | Path, fmt: str) -> Path:
    """Write model ``name`` as ``fmt`` (one of :data:`~panoptem.models.card.EXPORT_FORMATS`)."""
    from ..models.export import export_model as export
    return export(name, out_file, fmt)


class ModelsWidget(Dock):
    """Pick a model to see its card, export or archive it; register a card, import a
    package, restore an archived model. Changes to the registry run in a worker thread."""

    help_title = "Models"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.model = model_picker(tooltip="The model to show, export or archive.")
        self.info_button = PushButton(text="Get model info", name="info",
                                      tooltip="Show the model's card again (it shows whenever the model changes).")
        self.info = TextEdit(label="Model card", name="info_text", value="",
                             tooltip="Classes, label divisor to annotate with, patch-size divisibility, "
                                     "validation figures and weights of the chosen model.")
        self.info.native.setReadOnly(True)
        self.info.native.setMinimumHeight(120)
        self.new_name = LineEdit(label="New name", name="new_name",
                                 tooltip="Register / Import: letters, digits, '_', '.' and '-'.")
        self.card = FileEdit(label="Card file", name="card", mode="r", filter="*.yaml *.yml", value="",
                             tooltip="Register: a panoptem model card or an empanada model .yaml.")
        self.weights = LineEdit(label="Weights (optional)", name="weights",
                                tooltip="Weights file or http(s)/file URL; empty: the one the card names.")
        self.register_button = PushButton(text="Register", name="register",
                                          tooltip="Register the card (and weights) under New name.")
        self.out_file = FileEdit(label="Output file", name="out_file", mode="w", value="",
                                 tooltip="Export: the file to write (never over an existing one).")
        self.format = ComboBox(label="Format", name="format", choices=list(EXPORT_FORMATS), value="package",
                               tooltip="package: one .panoptem file to share; torchscript; empanada: TorchScript "
                                       "+ yaml for empanada-napari; onnx; bioimageio: a bioimage.io model package "
                                       "(.zip) that other tools run.")
        self.export_button = PushButton(text="Export", name="export", tooltip="Write the chosen model to Output file.")
        self.package = FileEdit(label="Package", name="package", mode="r", filter="*.panoptem *.zip", value="",
                                tooltip="Import: a .panoptem package made by Export, or a bioimage.io model "
                                        "package (.zip) whose interface fits panoptem's.")
        self.import_button = PushButton(text="Import", name="import_",
                                        tooltip="Register the package's model (under New name, if given).")
        self.archive_button = PushButton(text="Archive model", name="archive",
                                         tooltip="Hide the chosen model from every picker (Restore brings it back).")
        self.archived = ComboBox(label="Archived", name="archived", choices=archived_names,
                                 tooltip="Archived models, to restore.")
        self.restore_button = PushButton(text="Restore", name="restore", tooltip="Bring the archived model back.")
        self.buttons = {"info": self.info_button, "register": self.register_button, "export": self.export_button,
                        "import": self.import_button, "archive": self.archive_button,
                        "restore": self.restore_button}
        for key, b in self.buttons.items():
            b.changed.connect(getattr(self, f"do_{key}"))
        self.extend([Group("Model", [self.model, row(self.info_button, self.archive_button), self.info]),
                     Group("Export", [self.out_file, self.format, self.export_button]),
                     Group("Register or import", [self.new_name, self.card, self.weights, self.register_button,
                                                  self.package, self.import_button]),
                     Group("Archived models", [self.archived, self.restore_button]),
                     row(self.help_button), self.status])
        follow_registry(self.archived)
        self.model.changed.connect(self._show_info)
        self._show_info()

    def _start(self, func, done, changes: bool, *args) -> None:
        def on_result(res):
            if changes:
                cached_model.cache_clear()
                registry_events.changed.emit()
            done(res)

        super()._start(func, on_result, *args)

    def _name(self) -> str:
        if not self.model.value:
            raise PanoptemError("Choose a model first (none is registered: use Register or Import).")
        return self.model.value

    def _guard(self, action) -> None:
        try:
            action()
        except PanoptemError as e:
            self._fail(e)

    def _show_info(self, *_) -> None:
        """The card of the model in the picker (reading a card is quick: no thread)."""
        name = self.model.value
        if not name:
            self.info.value = ""
            return
        try:
            self.info.value = model_info_text(name)
        except PanoptemError as e:
            self.info.value = f"Cannot read the card of '{name}': {e}"

    def do_info(self) -> None:
        def go():
            name = self._name()
            self._show_info()
            self.status.value = f"Model '{name}'."
        self._guard(go)

    def do_register(self) -> None:
        def go():
            from ..models.registry import register
            name, card = self.new_name.value.strip(), chosen_path(self.card.value)
            if not name or not card:
                raise PanoptemError("Fill in New name and Card file to register a model.")
            weights = self.weights.value.strip() or None
            self._start(register, lambda p: self._done(f"Registered '{name}' ({p}).", name), True,
                        name, card, weights)
        self._guard(go)

    def do_export(self) -> None:
        def go():
            name, out = self._name(), chosen_path(self.out_file.value)
            if not out:
                raise PanoptemError("Choose an output file to export to.")
            self._start(export_model, lambda p: self._done(f"Exported '{name}' to {p}."), False,
                        name, out, self.format.value)
        self._guard(go)

    def do_import(self) -> None:
        def go():
            from ..models.registry import import_package
            pkg = chosen_path(self.package.value)
            if not pkg:
                raise PanoptemError("Choose a .panoptem package to import.")
            self._start(import_package, lambda n: self._done(f"Imported '{n}'.", n), True,
                        pkg, self.new_name.value.strip() or None)
        self._guard(go)

    def do_archive(self) -> None:
        def go():
            from ..models.registry import archive
            name = self._name()
            self._start(archive, lambda _: self._done(f"Archived '{name}'."), True, name)
        self._guard(go)

    def do_restore(self) -> None:
        def go():
            from ..models.registry import restore
            name = self.archived.value
            if not name:
                raise PanoptemError("No model is archived.")
            self._start(restore, lambda _: self._done(f"Restored '{name}'.", name), True, name)
        self._guard(go)

    def _done(self, msg: str, select: str | None = None) -> None:
        if select is not None and select in self.model.choices:
            self.model.value = select
        self._show_info()
        self.status.value = msg
