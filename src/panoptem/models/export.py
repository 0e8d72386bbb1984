"""Export a model for other runtimes: TorchScript, empanada-napari, ONNX.

Every export writes the model file atomically, never overwrites one that
exists, writes a card next to it (``<out>.yaml``) so the file can be
registered or loaded as it is, and is recorded in the ``exports`` of the
source card when that card lives in the user's registry.

>>> export_torchscript("MitoLite_v1", "MitoLite_v1.pth", empanada_interface=True).name
'MitoLite_v1.pth'
"""
from __future__ import annotations

import inspect
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from .._atomic import atomic_path, existing_folder, write_text
from ..errors import PanoptemError
from .architecture import EmpanadaAdapter
from .card import EXPORT_FORMATS, OUTPUTS, ModelCard, Weights
from .home import check_outside_store, registered_folder, sha256_of
from .load import LoadedModel, load_model

NORMALISATION_NOTE = (
    "Normalisation differs from panoptem's: panoptem maps the {low}-{high} percentiles of each image "
    "to 0..1 before (x - mean) / std, empanada-napari divides by the dtype's maximum instead. Images "
    "that span their dtype's range (most 8-bit EM) behave alike; for low-contrast or 16-bit data, "
    "stretch the contrast to the full 8-bit range before running this model in empanada-napari."
)


class EmpanadaInterface(torch.nn.Module):
    """A panoptem network behind empanada's TorchScript calling convention.

    ``forward(x, render_steps=2, interpolate_ins=True)`` returns a dict:
    ``sem_logits`` bilinearly upsampled to ``2**render_steps / 4`` times the
    input size (the input size for the usual ``render_steps=2``; empanada asks
    ``2 + log2(downsampling)`` to get the original size back), ``ctr_hmp`` and
    ``offsets`` (dy, dx in input pixels) at 1/4 of the input, or at the input
    size when ``interpolate_ins``.
    """

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, render_steps: int = 2,
                interpolate_ins: bool = True) -> Dict[str, torch.Tensor]:
        out = self.net(x)
        sem, ctr, off = out["sem_logits"], out["ctr_hmp"], out["offsets"]
        f = 1
        for _ in range(render_steps):
            f = f * 2
        h, w = x.shape[-2] * f // 4, x.shape[-1] * f // 4
        if sem.shape[-2] != h or sem.shape[-1] != w:
            sem = F.interpolate(sem, size=[h, w], mode="bilinear", align_corners=False)
        if interpolate_ins:
            size = [x.shape[-2], x.shape[-1]]
            ctr = F.interpolate(ctr, size=size, mode="bilinear", align_corners=False)
            off = F.interpolate(off, size=size, mode="bilinear", align_corners=False)
        return {"sem_logits": sem, "ctr_hmp": ctr, "offsets": off}


class _TupleOutputs(torch.nn.Module):
    """(sem_logits, ctr_hmp, offsets) as a tuple, for ONNX."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        return out["sem_logits"], out["ctr_hmp"], out["offsets"]




# ---------------------------------------------------------------- helpers


def _load_cpu(name_or_card: str | Path | LoadedModel) -> LoadedModel:
    lm = load_model(str(name_or_card) if isinstance(name_or_card, Path) else name_or_card, device="cpu")
    lm.module.to(memory_format=torch.contiguous_format).eval()
    return lm


def _script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    if isinstance(module, torch.jit.ScriptModule):
        return module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices; TorchScript is what empanada loads
        try:
            return torch.jit.script(module.eval())
        except Exception as e:  # noqa: BLE001 - any scripting failure means: not exportable as is
            raise PanoptemError(f"This network cannot be exported to TorchScript ({type(e).__name__}: "
                                f"{str(e).splitlines()[0]}).") from None


def _check_out(out_file: str | Path, overwrite: bool, source: str | Path) -> Path:
    out = Path(out_file).expanduser()
    check_outside_store(out)
    check_outside_store(out.with_suffix(".yaml"))
    if out.suffix in (".yaml", ".yml"):
        raise PanoptemError(f"{out} would clash with the card written next to the export; use another suffix.")
    existing_folder(out.parent, "the export")
    mine = _source_files(source)
    for p in (out, out.with_suffix(".yaml")):
        if p.resolve() in mine:
            raise PanoptemError(f"Refusing to write {p}: it is a file of the model being exported (its card or "
                                "weights), which --overwrite never replaces; choose another output file.")
        if p.exists() and not overwrite:
            raise PanoptemError(f"{p} already exists; choose another output file or pass --overwrite.")
    return out


def _source_files(source: str | Path) -> set[Path]:
    """The files a model given by card path stands on (the card, its weights and exports)."""
    from .home import get_card
    card = get_card(str(source))
    files = {Path(card.weights_path(w)) for w in (card.weights, *card.exports)} if card.source_dir else set()
    if Path(str(source)).expanduser().is_file():
        files.add(Path(str(source)).expanduser())
    return {f.resolve() for f in files if "://" not in str(f)}


def _atomic(out: Path):
    return atomic_path(out, suffix=out.suffix)  # keeps the suffix: torch / onnx look at it


def _write_yaml(path: Path, data: dict | str) -> None:
    write_text(path, data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), suffix=path.suffix)


def _record(card: ModelCard, out: Path, fmt: str) -> Weights:
    """Card entry for an export. When the source card is a registered user
    model, a copy of the export joins the model's folder (under a bare name,
    as every file a card names) and is listed in its ``exports``, so a package
    of the model carries it; built-in cards and the user's own files are left alone."""
    w = Weights(file=str(out.resolve()), sha256=sha256_of(out), format=fmt)
    src = registered_folder(card)
    if src is not None:
        taken = {card.weights.file, "card.yaml"}
        fname = out.name if out.name not in taken else f"export-{fmt}{out.suffix}"
        with _atomic(src / fname) as tmp:
            shutil.copyfile(out, tmp)
        new = card.model_copy(deep=True)
        new.exports = [e for e in new.exports if e.file != fname] + [Weights(file=fname, sha256=w.sha256, format=fmt)]
        _write_yaml(src / "card.yaml", new.to_yaml())
    return w


@contextmanager
def _with_card(out: Path, card_text: Callable[[str], str]) -> Iterator[Path]:
    """A temporary path for the network file ``out``; once it is written, its card
    (``card_text(sha256 of the file)``) is written as a temporary beside it, and then both are
    moved into place, one right after the other: an earlier export's network and card are
    replaced as a pair (a run killed while writing leaves them as they were)."""
    with _atomic(out) as tmp:
        yield tmp
        text = card_text(sha256_of(tmp))
        with atomic_path(out.with_suffix(".yaml"), suffix=".yaml") as card_tmp:
            card_tmp.write_text(text, encoding="utf-8")


def _companion_text(card: ModelCard, out: Path, fmt: str) -> Callable[[str], str]:
    """The card of an export ``out`` of ``card`` (its weights: the file beside it), by sha256."""
    def text(sha256: str) -> str:
        new = card.model_copy(deep=True)
        new.weights = Weights(file=out.name, sha256=sha256, format=fmt)
        new.exports = []
        return new.to_yaml()
    return text


def empanada_config(card: ModelCard, model_file: str, sha256: str | None = None) -> dict:
    """empanada-napari's model YAML for ``card`` with weights ``model_file``.

    Includes a ``panoptem`` section (ignored by empanada) that keeps
    panoptem's own normalisation when the file is loaded back into panoptem.
    """
    n = card.normalization
    desc = card.description.strip()
    if n.mode == "percentile":
        desc = (desc + "\n\n" if desc else "") + NORMALISATION_NOTE.format(low=n.low_pct, high=n.high_pct)
    cfg = {
        "description": desc,
        "model": model_file,
        "model_quantized": None,
        "norms": {"mean": float(n.mean), "std": float(n.std)},
        "padding_factor": int(card.padding_factor),
        "thing_list": [int(i) for i in card.thing_ids],
        "labels": [int(c.id) for c in card.classes],
        "class_names": {int(c.id): c.name for c in card.classes},
    }
    if card.label_divisor:
        cfg["FINETUNE"] = {"dataset_params": {"label_divisor": int(card.label_divisor)}}
    # what empanada's fields cannot say, so that panoptem runs the file exactly as the model
    cfg["panoptem"] = {"source_model": card.name, "normalization": n.model_dump(),
                       "voxel_size_nm": card.voxel_size_nm, "sha256": sha256,
                       "input_multiple": card.input_multiple,
                       "pixel_range_nm": list(card.pixel_range_nm) if card.pixel_range_nm else None,
                       "context_spacing_nm": card.context_spacing_nm}
    return cfg


# ---------------------------------------------------------------- exports


def export_torchscript(name_or_card: str | Path, out_file: str | Path, empanada_interface: bool = False,
                       overwrite: bool = False) -> Path:
    """Save a model as TorchScript.

    Parameters
    ----------
    name_or_card : registered model name or card path.
    out_file : the ``.pth`` / ``.pt`` file to write; a card is written next to
        it (``<out>.yaml``): panoptem's format, or with ``empanada_interface``
        empanada's format (``model``, ``norms``, ``padding_factor``,
        ``thing_list``, ``labels``, ``class_names``, ``description``).
    empanada_interface : wrap the network in :class:`EmpanadaInterface` so
        empanada-napari can run it (register the yaml there).

    Returns
    -------
    The written model file.
    """
    out = _check_out(out_file, overwrite, name_or_card)
    lm = _load_cpu(name_or_card)
    card = lm.card
    module = lm.module
    if empanada_interface and card.context_slices:
        raise PanoptemError(f"Model '{card.name}' sees each plane with its neighbours ({card.input_channels} "
                            "input channels); empanada-napari feeds one plane, so it cannot run it. Export "
                            "it as TorchScript, ONNX or a bioimage.io package instead, or export a "
                            "single-plane model (such as MitoLite_v1).")
    if empanada_interface:
        # an empanada model already has the interface: keep its original network
        scripted = module.scripted if isinstance(module, EmpanadaAdapter) else _script(EmpanadaInterface(module))
        fmt = "empanada_torchscript"
    else:
        scripted = _script(module)
        fmt = "torchscript"
    text = (lambda sha: yaml.safe_dump(empanada_config(card, str(out.resolve()), sha), sort_keys=False)) \
        if empanada_interface else _companion_text(card, out, fmt)
    with _with_card(out, text) as tmp:
        torch.jit.save(scripted, str(tmp))
    _record(card, out, fmt)
    return out


def export_onnx(name_or_card: str | Path, out_file: str | Path, overwrite: bool = False,
                opset: int = 17) -> Path:
    """Save a model as ONNX (input ``image`` (N, C, H, W), C the card's input channels; outputs
    ``sem_logits``, ``ctr_hmp``, ``offsets``; batch, height and width dynamic).

    When onnxruntime is installed, its outputs are checked against PyTorch's
    on an input of another size than the one traced; a mismatch deletes the
    file and raises. A panoptem card is written next to it (``<out>.yaml``) that says how to
    feed it (normalisation, classes...) for other tools; panoptem itself runs the model it was
    exported from (:data:`~.card.ONNX_ONLY`).
    """
    try:
        import onnx
    except ImportError:
        raise PanoptemError("ONNX export needs the onnx package: pip install 'panoptem[onnx]'.") from None
    out = _check_out(out_file, overwrite, name_or_card)
    lm = _load_cpu(name_or_card)
    net = _TupleOutputs(lm.module).eval()
    step = max(32, lm.card.padding_factor)
    size = max(64, 2 * step)
    kw = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    axes = {"image": {0: "batch", 2: "height", 3: "width"},
            "sem_logits": {0: "batch", 2: "sem_height", 3: "sem_width"},
            "ctr_hmp": {0: "batch", 2: "out_height", 3: "out_width"},
            "offsets": {0: "batch", 2: "out_height", 3: "out_width"}}
    with _with_card(out, _companion_text(lm.card, out, "onnx")) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(net, (torch.zeros(1, lm.card.input_channels, size, size),), str(tmp),
                                  input_names=["image"], output_names=list(OUTPUTS), dynamic_axes=axes,
                                  opset_version=opset, **kw)
            except Exception as e:  # noqa: BLE001
                raise PanoptemError(f"This network cannot be exported to ONNX ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''}).") from None
        onnx.checker.check_model(str(tmp))
        _verify_onnx(tmp, net, (2, lm.card.input_channels, size, size + step))
    _record(lm.card, out, "onnx")
    return out


def _verify_onnx(path: Path, net: torch.nn.Module, shape: tuple[int, ...]) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        return
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    with torch.no_grad():
        ref = [t.numpy() for t in net(x)]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUTS), {"image": x.numpy()})
    for name, a, b in zip(OUTPUTS, ref, got):
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(a).max()))):
            raise PanoptemError(f"The ONNX export's {name} differs from PyTorch's; the model cannot be "
                                "exported to ONNX faithfully.")


#: the suffix of the file written into a folder given as the output, by format
_FOLDER_SUFFIX = {"package": ".panoptem", "torchscript": ".pt", "empanada": ".pth", "onnx": ".onnx",
                  "bioimageio": ".zip"}


def export_model(name_or_card: str | Path, out_file: str | Path, format: str = "package",
                 overwrite: bool = False) -> Path:
    """Write a model in one of :data:`~.card.EXPORT_FORMATS`; returns the file written
    (``out_file``, or NAME.panoptem / .pt / .pth / .onnx / .zip inside it when it is a folder).

    ``package`` (:func:`~.registry.export_package`) never overwrites; the other
    formats replace an existing file only with ``overwrite``. ``bioimageio`` writes a
    validated bioimage.io model package (:func:`~.bioimageio.export_bioimageio`).
    """
    if format not in EXPORT_FORMATS:
        raise PanoptemError(f"Export format must be one of {', '.join(EXPORT_FORMATS)}, not '{format}'.")
    folder = Path(out_file).expanduser()
    if folder.is_dir() or str(out_file).endswith(("/", os.sep)):  # a folder: the file goes in, named after the model
        from .._atomic import work_folder
        from .home import get_card
        out_file = work_folder(folder, "the export") / f"{get_card(str(name_or_card)).name}{_FOLDER_SUFFIX[format]}"
    out_file = Path(out_file).expanduser()
    if format == "package":
        from .registry import export_package
        return export_package(str(name_or_card), out_file)
    if format == "bioimageio":
        from .bioimageio import export_bioimageio
        return export_bioimageio(name_or_card, out_file, overwrite=overwrite)
    if format == "onnx":
        return export_onnx(name_or_card, out_file, overwrite=overwrite)
    return export_torchscript(name_or_card, out_file, empanada_interface=format == "empanada", overwrite=overwrite)
