"""bioimage.io model packages: export panoptem models so other tools can run them, and
import packages (panoptem's own, or others' whose interface fits) as registered models.

A package is a flat zip: ``rdf.yaml`` (the bioimage.io description, format 0.5), the
network as TorchScript (``weights.pt``: one image ``(batch, 1, y, x)`` in; semantic
logits, centre heatmap and centre offsets out, in that order), a test input cut from the
bundled EM sample and the outputs it gives, a README, and — from panoptem — the panoptem
card and its state-dict weights as attachments, so an import restores the model exactly
(fine-tunable). The description is validated with the ``bioimageio.spec`` library, on
export and on import, offline (every file must be inside the package).

Security: YAML is read by :func:`~.card.read_yaml` (size cap, no aliases) before the spec
library sees it; every file the description names must be a bare name inside the package
(no folders, no URLs); sha256 of every file is checked; state dicts load with
``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from .._atomic import atomic_path, existing_folder
from ..errors import PanoptemError
from .card import ClassInfo, ModelCard, Normalization, Weights, read_yaml, resolve_reference

RDF = "rdf.yaml"
WEIGHTS = "weights.pt"
PANOPTEM_CARD = "panoptem_card.yaml"
PANOPTEM_WEIGHTS = "panoptem_weights.pt"
FORMAT_VERSION = "0.5.4"
OUTPUT_IDS = ("sem_logits", "ctr_hmp", "offsets")
_CITE = [{"text": "Cheng et al., Panoptic-DeepLab: a simple, strong, and fast baseline for bottom-up panoptic "
                  "segmentation (CVPR 2020); the network design panoptem's models follow.",
          "url": "https://arxiv.org/abs/1911.10194"}]
_UNITS_NM = {"nanometer": 1.0, "micrometer": 1e3, "angstrom": 0.1, "millimeter": 1e6}


def is_bioimageio_package(path: str | Path) -> bool:
    """Whether ``path`` is a zip holding a bioimage.io description (``rdf.yaml`` or ``bioimageio.yaml``)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n in (RDF, "bioimageio.yaml") or n.endswith(".bioimageio.yaml") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _spec_errors(summary) -> str:
    """The first error lines of a bioimage.io validation summary."""
    errs = [f"{'.'.join(str(x) for x in e.loc)}: {e.msg}" if e.loc else e.msg
            for d in summary.details for e in d.errors]
    return "; ".join(errs[:3]) or summary.status


def validate_package(folder: str | Path, rdf: str = RDF):
    """Validate the description ``folder/rdf`` with ``bioimageio.spec`` (its format) and check
    every file it names (in the package, matching its sha256), offline: nothing it links to
    (covers, citations, repositories) is contacted. Returns the description; raises a
    :class:`PanoptemError` when it is not a valid bioimage.io model."""
    try:
        from bioimageio.spec import InvalidDescr, load_description
    except ImportError:
        raise PanoptemError("bioimage.io packages need the bioimageio.spec package: pip install "
                            "'bioimageio.spec>=0.5.4,<0.6'.") from None
    folder = Path(folder)
    _check_files(folder, read_yaml(folder / rdf, what="bioimage.io description"), rdf)
    descr = load_description(folder / rdf, perform_io_checks=False)
    if isinstance(descr, InvalidDescr):
        raise PanoptemError(f"{rdf} is not a valid bioimage.io description: {_spec_errors(descr.validation_summary)}.")
    if getattr(descr, "type", None) != "model":
        raise PanoptemError(f"{rdf} describes a bioimage.io {descr.type}, not a model; import a model package.")
    return descr


# ---------------------------------------------------------------- export


def preprocessing(norm: Normalization, channels: int = 1) -> list[dict]:
    """bioimage.io preprocessing steps equal to panoptem's normalisation (see
    :func:`~panoptem.inference.preprocess.normalize`). ``dtype_max`` assumes 8-bit input.
    A plane and its neighbours (``channels`` > 1) share one intensity range, as in panoptem.

    >>> [p["id"] for p in preprocessing(Normalization())]
    ['ensure_dtype', 'scale_range', 'clip', 'scale_linear']
    """
    linear = {"id": "scale_linear", "kwargs": {"gain": 1.0 / norm.std, "offset": -norm.mean / norm.std}}
    if norm.mode == "dtype_max":
        return [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                {"id": "scale_linear", "kwargs": {"gain": 1.0 / (255.0 * norm.std), "offset": -norm.mean / norm.std}}]
    return [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
            {"id": "scale_range", "kwargs": {"axes": ["channel", "y", "x"] if channels > 1 else ["y", "x"],
                                             "min_percentile": float(norm.low_pct),
                                             "max_percentile": float(norm.high_pct), "eps": 1e-6}},
            {"id": "clip", "kwargs": {"min": -0.5, "max": 1.5}}, linear]


def apply_preprocessing(raw: np.ndarray, steps: list[dict]) -> np.ndarray:
    """Apply bioimage.io preprocessing ``steps`` (the kinds :func:`preprocessing` writes) to a
    (batch, channel, y, x) array, as bioimage.io runtimes do."""
    x = np.asarray(raw, np.float32)
    for s in steps:
        k = s.get("kwargs", {})
        if s["id"] == "ensure_dtype":
            x = x.astype(k.get("dtype", "float32"))
        elif s["id"] == "scale_range":
            joint = (-3, -2, -1) if "channel" in k.get("axes", ()) else (-2, -1)
            lo, hi = np.percentile(x, [k["min_percentile"], k["max_percentile"]], axis=joint, keepdims=True)
            x = ((x - lo) / (hi - lo + k.get("eps", 1e-6))).astype(np.float32)
        elif s["id"] == "clip":
            x = np.clip(x, k["min"], k["max"])
        elif s["id"] == "scale_linear":
            x = (x * np.float32(k.get("gain", 1.0)) + np.float32(k.get("offset", 0.0))).astype(np.float32)
        else:
            raise PanoptemError(f"bioimage.io preprocessing '{s['id']}' is not one panoptem can run.")
    return x


def _normalization(steps: list[dict]) -> Normalization:
    """panoptem's normalisation for a package's preprocessing steps (as :func:`preprocessing` writes
    them, without clip or ensure_dtype too); other steps are refused."""
    kinds = [s["id"] for s in steps if s["id"] not in ("ensure_dtype", "clip")]
    lin = next((s.get("kwargs", {}) for s in steps if s["id"] == "scale_linear"), {"gain": 1.0, "offset": 0.0})
    gain, offset = float(lin.get("gain", 1.0)), float(lin.get("offset", 0.0))
    if kinds in (["scale_range", "scale_linear"], ["scale_range"]) and gain > 0:
        k = next(s.get("kwargs", {}) for s in steps if s["id"] == "scale_range")
        return Normalization(mode="percentile", low_pct=float(k.get("min_percentile", 0.0)),
                             high_pct=float(k.get("max_percentile", 100.0)), mean=-offset / gain, std=1.0 / gain)
    if kinds == ["scale_linear"] and gain > 0:
        std = 1.0 / (gain * 255.0)  # x / 255 then (x - mean) / std, as dtype_max runs 8-bit data
        return Normalization(mode="dtype_max", mean=-offset * std, std=std)
    raise PanoptemError(f"The package's preprocessing ({', '.join(s['id'] for s in steps) or 'none'}) has no "
                        "panoptem equivalent: panoptem runs scale_range (percentiles) and/or scale_linear, "
                        "optionally with clip and ensure_dtype.")


def _test_image(size: int, context: int = 0) -> np.ndarray:
    """A (1, 2k + 1, size, size) uint8 crop of the bundled EM sample (tiled if it is smaller):
    its middle slice with its ``context`` (k) neighbours each side."""
    from ..sample import load_sample
    vol = np.asarray(load_sample())
    z = vol.shape[0] // 2
    planes = vol[max(0, z - context):z + context + 1]
    reps = (1, math.ceil(size / planes.shape[1]), math.ceil(size / planes.shape[2]))
    return np.tile(planes, reps)[:, :size, :size][None].astype(np.uint8)


def channel_names(context: int) -> list[str]:
    """Names of the input channels of a model that sees ``context`` neighbours each side.

    >>> channel_names(1)
    ['em_z-1', 'em', 'em_z+1']
    """
    return [f"em_z{d:+d}" if d else "em" for d in range(-context, context + 1)]


def _readme(card: ModelCard) -> str:
    import json
    lines = [f"# {card.name}", "", card.description.strip(), "",
             "Panoptic segmentation (semantic logits, object-centre heatmap, centre offsets in pixels) of "
             "2D electron-microscopy images; exported by panoptem. Decode the outputs with panoptem "
             "(`panoptem model import` this package) or any Panoptic-DeepLab post-processing.", "",
             "# Validation", ""]
    lines += [json.dumps(card.validation, indent=1)] if card.validation else ["No validation figures recorded."]
    return "\n".join(lines) + "\n"


def _axes_in(size_min: int, step: int, nm: float | None, context: int = 0) -> list[dict]:
    space = {"type": "space", "size": {"min": size_min, "step": step}}
    if nm:
        space.update(scale=float(nm), unit="nanometer")
    return [{"type": "batch"}, {"type": "channel", "channel_names": channel_names(context)}, {"id": "y", **space},
            {"id": "x", **space}]


def _axes_out(names: list[str], ratio: int, nm: float | None) -> list[dict]:
    space = {"type": "space", "size": {"tensor_id": "image", "axis_id": "y"}, "scale": float((nm or 1.0) * ratio)}
    if nm:
        space["unit"] = "nanometer"
    return [{"type": "batch"}, {"type": "channel", "channel_names": names},
            {**space, "id": "y"}, {**space, "id": "x", "size": {"tensor_id": "image", "axis_id": "x"}}]


def export_bioimageio(name_or_card, out_file: str | Path, overwrite: bool = False, authors=None,
                      license: str = "BSD-3-Clause") -> Path:
    """Write a model as a bioimage.io model package (a zip), validated with ``bioimageio.spec``.

    Parameters
    ----------
    name_or_card : registered model name or card path.
    out_file : the ``.zip`` to write (the suffix is added when missing); never replaced
        without ``overwrite``.
    authors : names for the package's ``authors`` (default: "panoptem").
    license : SPDX identifier of the weights' license.

    Returns
    -------
    The written package.
    """
    import torch

    from .export import _TupleOutputs, _load_cpu, _script
    from .home import check_outside_store
    out = Path(out_file)
    if out.suffix.lower() != ".zip":
        out = out.with_name(out.name + ".zip")
    check_outside_store(out)
    existing_folder(out.parent, "the package")
    if out.exists() and not overwrite:
        raise PanoptemError(f"{out} already exists; choose another output file or pass --overwrite.")
    lm = _load_cpu(name_or_card)
    card = lm.card
    scripted = _script(_TupleOutputs(lm.module).eval())
    pf = max(32, int(card.padding_factor))
    size = max(256, 2 * pf) // pf * pf
    raw = _test_image(size, card.context_slices)
    steps = preprocessing(card.normalization, card.input_channels)
    with torch.no_grad():
        outs = [t.numpy() for t in scripted(torch.from_numpy(apply_preprocessing(raw, steps)))]
    n_cls = card.num_classes
    names = [[c.name for c in card.classes] if n_cls == 1 else ["background", *[c.name for c in card.classes]],
             ["center"], ["dy", "dx"]]
    with tempfile.TemporaryDirectory(prefix="panoptem-bioimageio-") as d:
        stage = Path(d)
        torch.jit.save(scripted, str(stage / WEIGHTS))
        np.save(stage / "test_input.npy", raw)
        outputs = []
        for oid, arr, chans in zip(OUTPUT_IDS, outs, names):
            if arr.shape[1] != len(chans) or size % arr.shape[-1] or size % arr.shape[-2]:
                raise PanoptemError(f"Output {oid} of model '{card.name}' has shape {arr.shape}, which a "
                                    "bioimage.io package cannot describe.")
            np.save(stage / f"test_{oid}.npy", arr.astype(np.float32))
            outputs.append({"id": oid, "axes": _axes_out(chans, size // arr.shape[-1], card.voxel_size_nm),
                            "test_tensor": {"source": f"test_{oid}.npy", "sha256": _sha256(stage / f"test_{oid}.npy")},
                            "data": {"type": "float32"}})
        (stage / "README.md").write_text(_readme(card))
        attachments = []
        if card.weights.format == "state_dict":
            from .registry import _resolve
            shutil.copyfile(_resolve(card, card.weights), stage / PANOPTEM_WEIGHTS)
            pc = card.model_copy(deep=True)
            pc.weights = Weights(file=PANOPTEM_WEIGHTS, sha256=_sha256(stage / PANOPTEM_WEIGHTS), format="state_dict")
            pc.exports, pc.source_dir = [], None
            (stage / PANOPTEM_CARD).write_text(pc.to_yaml())
            attachments = [{"source": f, "sha256": _sha256(stage / f)} for f in (PANOPTEM_CARD, PANOPTEM_WEIGHTS)]
        rdf = {
            # bioimage.io names have 5 characters or more; panoptem's may be shorter ("mito")
            "format_version": FORMAT_VERSION, "type": "model",
            "name": card.name if len(card.name) >= 5 else f"{card.name} model",
            "description": (card.description.strip().splitlines() or [card.name])[0][:1000],
            "authors": [{"name": a} for a in (authors or ["panoptem"])], "cite": _CITE, "license": license,
            "documentation": "README.md", "tags": ["panoptic-segmentation", "electron-microscopy", "2d",
                                                   *[c.name for c in card.classes], "panoptem"],
            "inputs": [{"id": "image", "axes": _axes_in(2 * pf, pf, card.voxel_size_nm, card.context_slices),
                        "test_tensor": {"source": "test_input.npy", "sha256": _sha256(stage / "test_input.npy")},
                        "data": {"type": "uint8"}, "preprocessing": steps}],
            "outputs": outputs,
            "weights": {"torchscript": {"source": WEIGHTS, "sha256": _sha256(stage / WEIGHTS),
                                        "pytorch_version": torch.__version__.split("+")[0]}},
            "config": {"panoptem": {"card": PANOPTEM_CARD if attachments else None,
                                    "label_divisor": card.label_divisor,
                                    "output_stride": int(card.output_stride)}},
        }
        if attachments:
            rdf["attachments"] = attachments
        import yaml

        class _Plain(yaml.SafeDumper):  # shared sub-dicts written out, not as aliases (readers refuse those)
            def ignore_aliases(self, data):
                return True
        (stage / RDF).write_text(yaml.dump(rdf, Dumper=_Plain, sort_keys=False))
        validate_package(stage)
        with atomic_path(out, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(stage.iterdir()):
                z.write(f, f.name)
    return out


# ---------------------------------------------------------------- import


def _check_files(folder: Path, node, rdf: str) -> None:
    """Every file the description names (``source`` values, ``documentation``) is a file of the
    package (no URL, nothing outside it) and matches the ``sha256`` given beside it."""
    if isinstance(node, list):
        for v in node:
            _check_files(folder, v, rdf)
    if not isinstance(node, dict):
        return
    for k, v in node.items():
        if k not in ("source", "documentation") or not isinstance(v, str):
            _check_files(folder, v, rdf)
            continue
        if "://" in v:
            raise PanoptemError(f"{rdf} names '{v}', outside the package; panoptem imports self-contained "
                                "packages only (download the files into the package first).")
        path = Path(resolve_reference(folder, v))
        if not path.is_file():
            raise PanoptemError(f"{rdf} names '{v}', which the package does not hold; export it again.")
        sha = node.get("sha256") if k == "source" else None
        if isinstance(sha, str) and _sha256(path) != sha.lower():
            raise PanoptemError(f"'{v}' in the package does not match its sha256 in {rdf}: the package is damaged "
                                "or was changed; download or export it again.")


def _extract(f: Path, stage: Path) -> str:
    """Extract a package into ``stage`` (flat, size-capped); returns the description's name."""
    from .home import unpack
    names = unpack(f, stage, "model package")
    rdf = RDF if RDF in names else next((n for n in names if n == "bioimageio.yaml" or
                                          n.endswith(".bioimageio.yaml")), None)
    if rdf is None:
        raise PanoptemError(f"{f} holds no rdf.yaml, so it is not a bioimage.io model package.")
    return rdf


def _interface(rdf: dict) -> tuple[int, float | None]:
    """(padding factor, pixel size in nm) of a description whose interface panoptem can run:
    one (batch, channel = 1, y, x) input; outputs semantic logits, centre heatmap (1 channel)
    and offsets (2 channels), in that order; TorchScript weights."""
    why = None
    ins, outs = rdf.get("inputs") or [], rdf.get("outputs") or []
    if len(ins) != 1:
        why = f"{len(ins)} inputs (panoptem feeds one 2D image)"
    else:
        axes = ins[0].get("axes") or []
        kinds = [a.get("type") for a in axes]
        ids = [a.get("id", a.get("type")) for a in axes]
        if kinds != ["batch", "channel", "space", "space"] or ids[2:] != ["y", "x"]:
            why = f"input axes {ids} (panoptem feeds batch, channel, y, x)"
        elif len(axes[1].get("channel_names") or []) != 1:
            why = "an input of several channels (panoptem feeds one grey channel)"
    if why is None:
        chans = [len(((o.get("axes") or [{}, {}])[1]).get("channel_names") or []) for o in outs]
        if len(outs) != 3 or chans[1:] != [1, 2]:
            why = (f"{len(outs)} outputs (panoptem decodes three: semantic logits, a centre heatmap of 1 channel "
                   "and centre offsets of 2)")
    if why is None and "torchscript" not in (rdf.get("weights") or {}):
        why = f"weights as {', '.join(rdf.get('weights') or {}) or 'nothing'} (panoptem runs TorchScript)"
    if why is not None:
        raise PanoptemError(f"This bioimage.io model's interface does not fit panoptem: {why}. panoptem runs "
                            "panoptic models (one image in; semantic logits, centre heatmap and offsets out).")
    y = ins[0]["axes"][2]
    size = y.get("size")
    step = int(size.get("step") or size.get("min") or 32) if isinstance(size, dict) else 32
    nm = None
    if y.get("unit") in _UNITS_NM and y.get("scale"):
        nm = float(y["scale"]) * _UNITS_NM[y["unit"]]
    return max(step, 1), nm


def import_bioimageio(file: str | Path, name: str | None = None) -> str:
    """Register the model of a bioimage.io package; returns its name.

    A package panoptem exported brings back the panoptem card and state-dict weights it
    carries (the same model, fine-tunable). Another package is registered with its
    TorchScript weights when its interface fits (see :func:`_interface`), with the
    normalisation of its preprocessing and the pixel size of its input axes. The
    description is validated with ``bioimageio.spec`` first; any file it names must be
    a bare name inside the package, and every sha256 must match.
    """
    from . import home
    from .registry import register
    f = Path(file)
    if not f.is_file():
        raise PanoptemError(f"Model package {f} is a folder; give the package file itself." if f.is_dir() else
                            f"Model package {f} does not exist; check the path.")
    with home.staging("import-bioimageio-") as stage:
        rdf_name = _extract(f, stage)
        rdf = read_yaml(stage / rdf_name, what="bioimage.io description")
        if not isinstance(rdf, dict):
            raise PanoptemError(f"{rdf_name} in {f} is not a YAML mapping; it is not a bioimage.io package.")
        validate_package(stage, rdf_name)
        cfg = (rdf.get("config") or {}).get("panoptem") if isinstance(rdf.get("config"), dict) else None
        if not isinstance(cfg or {}, dict) or not isinstance((cfg or {}).get("card", ""), str):
            raise PanoptemError(f"{rdf_name} in {f} has a config.panoptem that is not a mapping with a card "
                                "name; export the package again.")
        cfg = cfg or {}
        attached = {Path(a.get("source", "")).name for a in rdf.get("attachments") or []}
        if cfg.get("card") and cfg["card"] in attached:
            card_path = stage / cfg["card"]
        else:
            step, nm = _interface(rdf)
            w = rdf["weights"]["torchscript"]
            sem = rdf["outputs"][0]["axes"][1].get("channel_names") or ["class1"]
            names = sem if len(sem) == 1 else sem[1:]
            try:
                card = ModelCard(
                    name=str(rdf.get("name", f.stem)), description=str(rdf.get("description", "")),
                    classes=[ClassInfo(id=i, name=str(n)) for i, n in enumerate(names, 1)],
                    label_divisor=cfg.get("label_divisor") or (1000 if len(names) > 1 else None),
                    normalization=_normalization(rdf["inputs"][0].get("preprocessing") or []),
                    padding_factor=step, voxel_size_nm=nm,
                    weights=Weights(file=Path(w["source"]).name, sha256=w.get("sha256"), format="torchscript"))
            except (ValidationError, ValueError, TypeError, KeyError, AttributeError) as e:
                why = e.errors()[0]["msg"] if isinstance(e, ValidationError) and e.errors() else str(e)
                raise PanoptemError(f"{rdf_name} in {f} describes a model panoptem cannot take ({why}).") from None
            card_path = stage / "card.yaml"
            if card_path.exists():
                raise PanoptemError(f"{f} holds a file named card.yaml beside its description; it was refused.")
            card_path.write_text(card.to_yaml())
        from .card import load_card
        card = load_card(card_path)
        for w in (card.weights, *card.exports):  # every file the card names: bare names in the package
            card.weights_path(w)
        new_name = home.check_name(name or _safe_name(card.name))
        if new_name in home.card_paths() or home.model_dir(new_name).exists():
            raise PanoptemError(f"A model named '{new_name}' already exists; import it under another name "
                                "with --name NEW_NAME.")
        register(new_name, card_path)
    return new_name


def _safe_name(text: str) -> str:
    """A model name from a description's free-text name (letters, digits, _ . -)."""
    import re
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-") or "bioimageio_model"
