"""magicgui forms generated from the pydantic parameter schema, so names, defaults,
ranges and tooltips live in one place (:mod:`panoptem.params`), and the layout pieces
every dock shares: titled groups (optionally folded) and a full-width status line."""
from __future__ import annotations

import re
from typing import Iterator, Literal, get_args, get_origin

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)
from magicgui.widgets.bases import ValuedContainerWidget
from pydantic import BaseModel

from ..params import DOWNSAMPLING, MEDIAN_SIZES

#: fields whose allowed values are a fixed list (checked by a validator in params.py)
CHOICES = {"downsampling": DOWNSAMPLING, "median_slices": MEDIAN_SIZES}


def chosen_path(value) -> str:
    """A FileEdit's value as a string, '' when nothing was chosen."""
    s = str(value or "")
    return "" if s in ("", ".") else s


def row(*widgets, layout: str = "horizontal") -> Container:
    """Widgets side by side (or stacked) without a label column (buttons, mostly)."""
    return Container(widgets=list(widgets), layout=layout, labels=False)


def labelled(*widgets) -> Container:
    """Widgets stacked with their names beside them (outside a group)."""
    return Container(widgets=list(widgets), labels=True)


def status_label() -> Label:
    """A word-wrapped line for messages (results, errors), selectable for copying.

    Put it straight into an unlabelled, vertical container (a dock's outer column):
    there it gets the full width and as many lines as its text needs."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy
    lab = Label(value="", name="status", label="")
    lab.native.setWordWrap(True)
    lab.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    lab.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
    lab.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
    return lab


def compact_combo(box):
    """A ComboBox that does not widen the dock to its longest item (long layer names)."""
    from qtpy.QtWidgets import QComboBox
    box.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    box.native.setMinimumContentsLength(12)
    return box


class Group(Container):
    """A titled block of labelled widgets. ``folded=None``: always open, with a bold
    title; True/False: a header button that hides / shows the block (starts as given)."""

    def __init__(self, title: str, widgets, folded: bool | None = None, name: str | None = None):
        super().__init__(labels=False, name=name or re.sub(r"\W+", "_", title.lower()).strip("_"))
        self.title = title
        self.body = Container(widgets=list(widgets), labels=True)
        self.body.margins = (6, 0, 0, 0)
        if folded is None:
            self.header = Label(value=f"<b>{title}</b>", label="")
        else:
            self.header = PushButton(text="", name=f"{self.name}_toggle",
                                     tooltip=f"Show or hide the {title.lower()}.")
            self.header.changed.connect(self.toggle)
            self._set_folded(folded)
        self.extend([self.header, self.body])

    @property
    def folded(self) -> bool:
        """Whether the block is hidden (always False for a group without a header button)."""
        return getattr(self, "_folded", False)

    def _set_folded(self, folded: bool) -> None:
        self._folded = bool(folded)
        self.body.visible = not folded
        if isinstance(self.header, PushButton):
            self.header.text = f"{'▸' if folded else '▾'} {self.title}"

    def toggle(self) -> None:
        """Fold an open group, open a folded one."""
        self._set_folded(not self._folded)


def iter_controls(widget) -> Iterator:
    """Every leaf widget (controls and labels) inside ``widget``; file pickers and other
    valued containers count as one control."""
    if isinstance(widget, Container) and not isinstance(widget, ValuedContainerWidget):
        for w in widget:
            yield from iter_controls(w)
    else:
        yield widget


#: decimals a float's spin box shows (a threshold of 0.125 can be typed in, as on the command line)
DECIMALS = 3


def _bounds(field, unit: float = 10 ** -DECIMALS) -> tuple[float | None, float | None]:
    """The field's range as a spin box holds it: an exclusive bound (``gt``, ``lt``) moved in by
    ``unit``, the box's smallest step, so the box offers no value the field refuses."""
    lo = hi = None
    for m in field.metadata:
        lo = getattr(m, "ge", lo)
        hi = getattr(m, "le", hi)
        if getattr(m, "gt", None) is not None:
            lo = m.gt + unit
        if getattr(m, "lt", None) is not None:
            hi = m.lt - unit
    return lo, hi


def short_label(description: str) -> str:
    """empanada-napari's name at the head of a description: the text before the first ':',
    without a parenthesis, a ', in <unit>' tail or a final full stop."""
    head = description.split(":", 1)[0]
    head = re.split(r"\s*\(|,\s+in\s+", head)[0]
    return head.strip().rstrip(".")


def field_labels(model_cls: type[BaseModel]) -> dict[str, str]:
    """Label shown for each field: :func:`short_label` of its description (e.g. 'Image
    Downsampling'); a label shared by several fields gets the field name added."""
    raw = {n: short_label(f.description or n) for n, f in model_cls.model_fields.items()}
    dup = {v for v in raw.values() if list(raw.values()).count(v) > 1}
    return {n: (f"{v} ({n.replace('_', ' ')})" if v in dup else v) for n, v in raw.items()}


#: what an optional number's spin box shows at 0 (None: not given)
UNSET_TEXT = "from the image"


def _optional(ann):
    """``X`` for an ``X | None`` annotation, else None."""
    args = get_args(ann)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return None


def field_widget(name: str, field, label: str):
    """One magicgui widget for one pydantic field, with its default and description as tooltip.
    An optional number is a spin box whose 0 (shown as :data:`UNSET_TEXT`) stands for None."""
    ann, default, tip = field.annotation, field.default, field.description or ""
    kw = {"name": name, "label": label, "tooltip": tip}
    if _optional(ann) is float:
        _, hi = _bounds(field)
        box = FloatSpinBox(value=default or 0.0, min=0.0, max=hi if hi is not None else 1e9, step=0.5, **kw)
        box.native.setSpecialValueText(UNSET_TEXT)
        box.native.setDecimals(DECIMALS)
        return box
    if name in CHOICES:
        return ComboBox(choices=list(CHOICES[name]), value=default, **kw)
    if get_origin(ann) is Literal:
        return ComboBox(choices=list(get_args(ann)), value=default, **kw)
    if ann is bool:
        return CheckBox(value=default, **kw)
    if get_origin(ann) is list:  # numbers typed as on the command line: "16,256,256"
        return LineEdit(value=",".join(map(str, default)), **kw)
    lo, hi = _bounds(field, 1 if ann is int else 10 ** -DECIMALS)
    if ann is int:
        return SpinBox(value=default, min=int(lo if lo is not None else 0),
                       max=int(hi if hi is not None else 10**9), **kw)
    if ann is float:
        box = FloatSpinBox(value=default, min=lo if lo is not None else 0.0,
                           max=hi if hi is not None else 1e9, step=0.05, **kw)
        box.native.setDecimals(DECIMALS)
        return box
    raise TypeError(f"no widget for field {name}: {ann}")  # a new field type needs a case here


class ParamsForm:
    """Widgets for every field of a parameter model (``widgets``, to put into a container),
    ``form[name]`` for one of them, and ``values()`` / ``params()`` to read them back."""

    def __init__(self, model_cls: type[BaseModel], exclude: tuple[str, ...] = ()):
        labels = field_labels(model_cls)
        self.model_cls = model_cls
        self.widgets = [field_widget(n, f, labels[n]) for n, f in model_cls.model_fields.items()
                        if n not in exclude]
        self._by_name = {w.name: w for w in self.widgets}

    def __getitem__(self, name: str):
        return self._by_name[name]

    def take(self, *names: str) -> list:
        """The widgets of these fields, in this order (to build a group)."""
        return [self._by_name[n] for n in names]

    def values(self) -> dict:
        """Field values (an optional number's 0 is None)."""
        opt = {n for n, f in self.model_cls.model_fields.items() if _optional(f.annotation) is not None}
        return {w.name: (None if w.name in opt and not w.value else w.value) for w in self.widgets}

    def set_values(self, **values) -> None:
        for k, v in values.items():
            if isinstance(self[k], LineEdit) and isinstance(v, (list, tuple)):
                v = ",".join(map(str, v))
            self[k].value = 0.0 if v is None and isinstance(self[k], FloatSpinBox) else v

    def params(self):
        """The validated parameter object (a PanoptemError says which field is wrong)."""
        from ..params import make_params
        return make_params(self.model_cls, **self.values())
