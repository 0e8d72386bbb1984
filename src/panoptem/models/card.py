"""Model cards: what a model is, how to feed it and where its weights are.

Two YAML formats load: panoptem's own (below) and empanada's model configs
(keys ``model``, ``norms``, ``padding_factor``, ``thing_list``, ``labels``,
``class_names``), so MitoNet users can bring their files.
"""
from __future__ import annotations

import math

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ..errors import PanoptemError

#: output stride of panoptem's networks: heatmap and offsets come at 1/4 of the network input
OUTPUT_STRIDE = 4
#: the outputs of panoptem's networks, in the order of exported graphs
OUTPUTS = ("sem_logits", "ctr_hmp", "offsets")
#: what a model can be exported as: a ``.panoptem`` package to share, TorchScript, TorchScript
#: with empanada-napari's interface and card, ONNX, or a bioimage.io model package (a zip)
#: (see :func:`panoptem.models.export.export_model`)
EXPORT_FORMATS = ("package", "torchscript", "empanada", "onnx", "bioimageio")
#: a card is a few kB; anything much larger is not a card (and may be a YAML bomb)
MAX_CARD_BYTES = 1 << 20
REMOTE_SCHEMES = ("https://", "http://")


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: ``*ref`` can expand a few hundred
    bytes into gigabytes ("billion laughs"), and cards never need them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"aliases (*name) are not allowed (line {mark.line + 1})")
        return super().compose_node(parent, index)


def read_yaml(path: str | Path, what: str = "Model card", max_bytes: int = MAX_CARD_BYTES):
    """Parse a small YAML file safely: size-capped, no aliases, no Python tags.

    Any problem raises one :class:`PanoptemError` line naming the file.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise PanoptemError(f"{what} {p} is {size} bytes, more than a card can be ({max_bytes}); "
                                "check that you passed the right file.")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PanoptemError(f"{what} {p} cannot be read ({type(e).__name__}); check the file.") from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except (RecursionError, ValueError) as e:  # nesting deeper than Python's stack, a 5000-digit number
        raise PanoptemError(f"{what} {p} cannot be read ({type(e).__name__}: its nesting or numbers are "
                            "beyond any card's); check that you passed the right file.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PanoptemError(f"{what} {p} is not valid YAML{where}: {problem}; fix or replace the file.") from None


def resolve_reference(folder: str | Path, ref: str) -> str:
    """Where a file named in a card lives: an http(s) URL as it is, or a file
    directly inside the card's ``folder``.

    Absolute paths elsewhere, ``..``, subfolders, other URL schemes and symbolic
    links leading out of the folder are refused, so a card or package cannot
    pull other local files into the model store.
    """
    if ref.startswith(REMOTE_SCHEMES):
        return ref
    if "://" in ref:
        raise PanoptemError(f"Model card file '{ref}': only https:// or http:// addresses or file names "
                            "beside the card are allowed; pass a local file with --weights.")
    base = Path(folder).resolve()
    p = Path(ref)
    if ".." in p.parts or (not p.is_absolute() and len(p.parts) != 1):
        raise PanoptemError(f"Model card file '{ref}' must be a bare file name beside the card (no folders, "
                            "no '..'); move the file next to the card or pass it with --weights.")
    full = p if p.is_absolute() else base / p
    if full.parent.resolve() != base or full.resolve().parent != base:
        raise PanoptemError(f"Model card file '{ref}' is not a file in the card's folder {base} (or is a link "
                            "leading out of it); move the file next to the card or pass it with --weights.")
    return str(full)


class ClassInfo(BaseModel):
    id: int
    name: str
    kind: Literal["instance", "semantic"] = "instance"


class Normalization(BaseModel):
    """How raw intensities become network input.

    ``percentile``: the ``low_pct``..``high_pct`` percentiles of the image (2D)
    or volume (3D) map to 0..1. ``dtype_max``: divide by the dtype's maximum
    (empanada's rule; integer images only). Then ``(x - mean) / std``.
    """

    mode: Literal["percentile", "dtype_max"] = "percentile"
    low_pct: float = 0.5
    high_pct: float = 99.5
    mean: float = 0.5
    std: float = 0.25


#: why a card of an ONNX export neither registers nor loads
ONNX_ONLY = ("An ONNX export is a network for other tools (its card says how to feed it); panoptem runs the "
             "model it was exported from, in ONNX Runtime with --runtime onnx: register that model's .panoptem "
             "package, TorchScript or state-dict weights instead.")


class Weights(BaseModel):
    file: str
    sha256: str | None = None
    format: Literal["state_dict", "torchscript", "empanada_torchscript", "onnx"] = "state_dict"

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, v: str | None) -> str | None:
        """64 hex digits, kept lower-case (it names the download cache's folder)."""
        if v is None:
            return None
        if not re.fullmatch(r"[0-9a-fA-F]{64}", str(v)):
            raise ValueError(f"sha256 must be 64 hexadecimal digits, not '{str(v)[:80]}'")
        return str(v).lower()


class ModelCard(BaseModel):
    name: str
    description: str = ""
    classes: list[ClassInfo] = Field(default_factory=lambda: [ClassInfo(id=1, name="mitochondria")])
    label_divisor: int | None = None
    normalization: Normalization = Field(default_factory=Normalization)
    padding_factor: int = 32
    #: the network's input sides are padded to a multiple of this (None: ``padding_factor``, which
    #: also sets the tile and block grids and the patch size); divides ``padding_factor``
    input_multiple: int | None = None
    output_stride: int = OUTPUT_STRIDE
    #: the network sees each plane with this many neighbours on each side along the stack's axis
    #: (2k + 1 input channels, the plane in the middle); 0: the plane alone
    context_slices: int = 0
    #: how far apart (nm) the neighbouring planes were in training (None: ``voxel_size_nm``, as for
    #: a near-isotropic FIB-SEM volume; set it for a model trained on serial sections)
    context_spacing_nm: float | None = None
    #: pixel size (nm) of the training data
    voxel_size_nm: float | None = None
    #: pixel sizes (nm, smallest and largest) the model segments best at, as measured; inference
    #: brings an input of known pixel size into this range (None: to ``voxel_size_nm``); see
    #: :func:`panoptem.inference.resample.working_pixel`
    pixel_range_nm: tuple[float, float] | None = None
    architecture: dict = Field(default_factory=dict)
    weights: Weights
    validation: dict = Field(default_factory=dict)
    training: dict = Field(default_factory=dict)
    exports: list[Weights] = Field(default_factory=list)
    #: folder the card was read from; relative weight paths resolve against it
    source_dir: str | None = Field(default=None, exclude=True)

    @property
    def trained_inverted(self) -> bool:
        """Whether the model was trained or fine-tuned on images with bright membranes, inverted
        (``training`` says ``invert``): its runs on such images invert them too."""
        return bool((self.training or {}).get("invert"))

    @model_validator(mode="after")
    def _input_multiple_fits(self) -> "ModelCard":
        if self.padding_factor < 1:
            raise ValueError(f"padding_factor must be at least 1, not {self.padding_factor}")
        if self.output_stride != OUTPUT_STRIDE:
            raise ValueError(f"output_stride must be {OUTPUT_STRIDE} (panoptem decodes networks whose heatmap and "
                             f"offsets come at a quarter of the input's side), not {self.output_stride}")
        if self.input_multiple is None and self.padding_factor % self.output_stride:
            raise ValueError(f"padding_factor {self.padding_factor} must be a multiple of output_stride "
                             f"({self.output_stride}): the outputs' grid must fit the padded input")
        m = self.input_multiple
        if m is not None and (m < 1 or self.padding_factor % m or m % self.output_stride):
            raise ValueError(f"input_multiple {m} must divide padding_factor ({self.padding_factor}) and be a "
                             f"multiple of output_stride ({self.output_stride})")
        if self.context_slices < 0:
            raise ValueError(f"context_slices must be 0 or more, not {self.context_slices}")
        for what in ("voxel_size_nm", "context_spacing_nm"):
            v = getattr(self, what)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{what} must be a positive number of nm, not {v}")
        r = self.pixel_range_nm
        if r is not None and not (all(math.isfinite(v) for v in r) and 0 < r[0] <= r[1]):
            raise ValueError(f"pixel_range_nm must be two positive numbers of nm, smallest first, not {list(r)}")
        given = self.architecture.get("in_channels")
        if given is not None and given != self.input_channels:
            raise ValueError(f"the architecture takes {given} input channel(s) but context_slices "
                             f"{self.context_slices} means {self.input_channels}")
        given = self.architecture.get("num_classes")
        if given is not None and given != self.probability_channels:
            raise ValueError(f"the architecture gives {given} semantic channel(s) but {self.num_classes} class(es) "
                             f"need {self.probability_channels} (one for a single class, else background + one "
                             "per class)")
        return self

    @property
    def neighbour_spacing_nm(self) -> float | None:
        """How far apart (nm) the model's neighbouring planes were in training, if known."""
        return self.context_spacing_nm or self.voxel_size_nm

    @property
    def working_pixel_nm(self) -> float | None:
        """The pixel size (nm) the model is best given: the middle (by ratio) of ``pixel_range_nm``,
        else ``voxel_size_nm`` (e.g. to choose an OME-Zarr level)."""
        r = self.pixel_range_nm
        return (r[0] * r[1]) ** 0.5 if r else self.voxel_size_nm

    @property
    def input_channels(self) -> int:
        """Planes the network sees at once: the plane and its ``context_slices`` neighbours each side."""
        return 2 * self.context_slices + 1

    @property
    def pad_multiple(self) -> int:
        """What the network's input sides are padded to a multiple of (see ``input_multiple``)."""
        return self.input_multiple or self.padding_factor

    @property
    def thing_ids(self) -> list[int]:
        return [c.id for c in self.classes if c.kind == "instance"]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def probability_channels(self) -> int:
        """Channels of the network's semantic probability: one for a single class, else
        background and one per class."""
        return 1 if self.num_classes == 1 else self.num_classes + 1

    def weights_path(self, w: Weights | None = None) -> str:
        """URL or local path of the weights (or of export ``w``); local files
        must lie in the card's folder (see :func:`resolve_reference`)."""
        f = (w or self.weights).file
        if self.source_dir is None:  # a card built in code
            return f
        return resolve_reference(self.source_dir, f)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(exclude={"source_dir"}), sort_keys=False)


def card_info(card: ModelCard) -> str:
    """What ``panoptem model info`` prints (and the Models widget shows), one line per item:
    name, description, classes with the first label to paint, the label divisor to annotate
    with, patch-size divisibility, training pixel size, validation figures, weights and exports.

    >>> print(card_info(ModelCard(name="m", description="A test.", weights=Weights(file="m.pt"))), end="")
    name: m
    description: A test.
    classes:
      1: mitochondria (instance); first label to paint: 1
    label divisor to annotate with: None
    patch size must be divisible by: 32
    weights: m.pt (state_dict)
    """
    import json
    div = card.label_divisor
    lines = [f"name: {card.name}", f"description: {card.description.strip()}", "classes:"]
    for c in card.classes:
        first = c.id * div + 1 if (div and c.kind == "instance") else (c.id * div if div else c.id)
        lines.append(f"  {c.id}: {c.name} ({c.kind}); first label to paint: {first}")
    lines += [f"label divisor to annotate with: {div}", f"patch size must be divisible by: {card.padding_factor}"]
    if card.context_slices:
        k = card.context_slices
        lines.append(f"input: each plane with {k} neighbour{'s' * (k > 1)} on each side along the stack "
                     f"({card.input_channels} channels; a lone 2D image fills them with itself)"
                     + (f", {card.neighbour_spacing_nm:g} nm apart" if card.neighbour_spacing_nm else ""))
    if card.voxel_size_nm:
        lines.append(f"training pixel size: {card.voxel_size_nm} nm")
    if card.pixel_range_nm:
        lo, hi = card.pixel_range_nm
        lines.append(f"segments best at pixels of {lo:g}-{hi:g} nm (inputs of known pixel size are brought there)")
    if card.validation:
        lines.append("validation: " + json.dumps(card.validation))
    lines.append(f"weights: {card.weights_path()} ({card.weights.format})")
    lines += [f"export: {card.weights_path(w)} ({w.format})" for w in card.exports]
    return "\n".join(lines) + "\n"


def _from_empanada(d: dict, name: str) -> ModelCard:
    thing = set(int(t) for t in d.get("thing_list", []))
    names = {int(k): v for k, v in (d.get("class_names") or {}).items()}
    labels = [int(x) for x in d.get("labels", sorted(names) or [1])]
    classes = [ClassInfo(id=i, name=str(names.get(i, f"class{i}")),
                         kind="instance" if i in thing else "semantic") for i in labels]
    norms = d.get("norms") or {}
    ft = (d.get("FINETUNE") or {}).get("dataset_params") or {}
    # written by panoptem's empanada export, so its models keep their own normalisation here
    extra = d.get("panoptem") or {}
    norm = (Normalization(**extra["normalization"]) if "normalization" in extra else
            Normalization(mode="dtype_max", mean=float(norms.get("mean", 0.0)), std=float(norms.get("std", 1.0))))
    return ModelCard(
        name=name,
        description=str(d.get("description", "")),
        classes=classes,
        label_divisor=ft.get("label_divisor"),
        normalization=norm,
        padding_factor=int(d.get("padding_factor", 16)),
        voxel_size_nm=extra.get("voxel_size_nm"),
        input_multiple=extra.get("input_multiple"),
        pixel_range_nm=extra.get("pixel_range_nm"),
        context_spacing_nm=extra.get("context_spacing_nm"),
        weights=Weights(file=str(d["model"]), sha256=extra.get("sha256"), format="empanada_torchscript"),
        exports=[Weights(file=str(d["model_quantized"]), format="empanada_torchscript")]
        if d.get("model_quantized") else [],
    )


def load_card(path: str | Path) -> ModelCard:
    """Read a model card (panoptem or empanada YAML)."""
    p = Path(path)
    if not p.is_file():
        raise PanoptemError(f"Model card {p} does not exist; check the path.")
    d = read_yaml(p)
    if not isinstance(d, dict):
        raise PanoptemError(f"Model card {p} is not a YAML mapping; fix or replace the file.")
    try:
        if "model" in d and "norms" in d:
            card = _from_empanada(d, d.get("name") or p.stem)
        else:
            card = ModelCard(**d)
    except (ValidationError, KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        if isinstance(e, ValidationError) and e.errors():
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"]))
            msg = first["msg"].removeprefix("Value error, ")
            e = f"{where}: {msg}" if where else msg
        raise PanoptemError(f"Model card {p} is incomplete or malformed: {e}".split("\n")[0]
                            + "; compare it with `panoptem model info`'s output.") from None
    card.source_dir = str(p.parent)
    return card
