"""Find a model by name or card path and load it onto a device."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PanoptemError
from .architecture import build_model
from .card import ModelCard, load_card

ZOO = Path(__file__).parent / "zoo"
DEFAULT_MODEL = "MitoLite_v1"


def user_home() -> Path:
    """panoptem's user folder (``PANOPTEM_HOME`` or the platform's data dir)."""
    env = os.environ.get("PANOPTEM_HOME")
    if env:
        return Path(env)
    import platformdirs
    return Path(platformdirs.user_data_dir("panoptem"))


def check_outside_store(path: str | Path) -> None:
    """Refuse to write ``path`` inside the model store (built-in models, the
    user's models, archived models, downloads): an export must never replace
    a model's own files."""
    home = user_home()
    p = Path(path).expanduser().absolute()
    target = p.resolve()
    for root in (ZOO, home / "models", home / "archived", home / "cache"):
        r = Path(root).resolve()
        if target == r or r in target.parents:
            raise PanoptemError(f"Refusing to write {p}: it is inside panoptem's model store ({r}); "
                                "write exports somewhere else.")


def archived_builtins() -> set[str]:
    """Names of built-in models the user archived (``<home>/archived.json``)."""
    f = user_home() / "archived.json"
    if not f.exists():
        return set()
    import json
    try:
        names = json.loads(f.read_text())
    except (OSError, ValueError):
        return set()  # unreadable: show every built-in rather than fail everywhere
    return {str(n) for n in names} if isinstance(names, list) else set()


def card_paths() -> dict[str, Path]:
    """Every known model name and its card: built-in first, then the user's
    (archived models are left out)."""
    hidden = archived_builtins()
    found = {p.stem: p for p in sorted(ZOO.glob("*.yaml")) if p.stem not in hidden}
    user = user_home() / "models"
    if user.exists():
        for p in sorted(user.glob("*/card.yaml")):
            found[p.parent.name] = p
    return found


def get_card(name_or_path: str) -> ModelCard:
    """Model card for a registered model name or a card file path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return load_card(p)
    paths = card_paths()
    if name_or_path not in paths:
        if name_or_path in archived_builtins() or (user_home() / "archived" / name_or_path).is_dir():
            raise PanoptemError(f"Model '{name_or_path}' is archived; bring it back with "
                                f"`panoptem model restore {name_or_path}`.")
        raise PanoptemError(f"Unknown model '{name_or_path}'; choose one of {sorted(paths)} "
                            "(see `panoptem model list`) or pass the path of a .yaml card.")
    return load_card(paths[name_or_path])


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


DEVICES = "auto, cpu, cuda, cuda:N or mps"


def pick_device(device: str = "auto") -> str:
    """``auto`` -> cuda if present, else mps, else cpu; anything else is checked
    (one of ``cpu``, ``cuda``, ``cuda:N``, ``mps``, and present on this machine)."""
    import re
    dev = str(device).strip().lower()
    if dev == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    m = re.fullmatch(r"(cpu|mps|cuda)(?::(\d+))?", dev)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise PanoptemError(f"Device '{device}' is not one of {DEVICES}; use --device auto to pick the best one.")
    if m.group(1) == "cuda":
        if not torch.cuda.is_available():
            raise PanoptemError("CUDA was requested but no CUDA GPU is visible; use --device cpu or auto.")
        if m.group(2) is not None and int(m.group(2)) >= torch.cuda.device_count():
            raise PanoptemError(f"Device '{device}' does not exist: this machine has {torch.cuda.device_count()} "
                                "CUDA GPU(s), cuda:0 onwards; use one of them or --device auto.")
    if m.group(1) == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise PanoptemError("MPS (Apple GPU) was requested but is not available here; use --device cpu or auto.")
    return dev


class _EmpanadaAdapter(torch.nn.Module):
    """Calls an empanada TorchScript model with its (x, render_steps, interpolate_ins)
    signature and returns outputs at stride 4 like panoptem's own networks."""

    def __init__(self, scripted):
        super().__init__()
        self.scripted = scripted

    def forward(self, x):
        out = self.scripted(x, 2, False)
        return {"sem_logits": out["sem_logits"], "ctr_hmp": out["ctr_hmp"], "offsets": out["offsets"]}


@dataclass
class LoadedModel:
    """A network ready for inference, its card and device."""

    card: ModelCard
    module: torch.nn.Module
    device: str


def _check_sha(path: str, expected: str | None) -> None:
    if expected and sha256_of(path) != expected:
        raise PanoptemError(f"Weights file {path} does not match the sha256 in its model card; "
                            "the file is corrupt or not the one the card describes: re-download or re-export it.")


def _state_dict_model(card: ModelCard, blob, path: str) -> torch.nn.Module:
    """The card's network with the weights of ``blob`` (a state dict, or
    ``{"architecture": ..., "state_dict": ...}``), refused when they do not fit."""
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PanoptemError(f"Weights {path} of model '{card.name}' hold no state dict of tensors; register the "
                            "model's own weights file (a state dict, or export it as TorchScript).")
    arch = card.architecture or (blob.get("architecture") if isinstance(blob.get("architecture"), dict) else {})
    try:
        module = build_model(arch)
    except (TypeError, ValueError, RuntimeError) as e:
        raise PanoptemError(f"Model '{card.name}' has an invalid architecture {arch} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); fix the card's architecture.") from None
    try:
        module.load_state_dict(state)
    except RuntimeError:
        own = module.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        parts = [f"{len(missing)} parameter(s) missing" if missing else "",
                 f"{len(unexpected)} unknown" if unexpected else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else ""]
        raise PanoptemError(f"Weights {path} do not fit the network of model '{card.name}' "
                            f"({', '.join(x for x in parts if x)}): they belong to another network; check the "
                            "card's architecture or register the weights that were trained with it.") from None
    return module


def load_model(name_or_path: str = DEFAULT_MODEL, device: str = "auto") -> LoadedModel:
    """Load a model by registry name or card path.

    >>> m = load_model()            # the bundled mitochondria model on the best device
    """
    if isinstance(name_or_path, LoadedModel):
        return name_or_path
    card = get_card(name_or_path)
    dev = pick_device(device)
    w = card.weights
    path = card.weights_path()
    remote = "://" in path
    if remote:
        from .registry import fetch_weights  # downloads once into the cache, checks sha256
        path = str(fetch_weights(card))
    if not Path(path).exists():
        raise PanoptemError(f"Weights file {path} of model '{card.name}' is missing; re-register the model.")
    if not remote:
        _check_sha(path, w.sha256)
    if w.format == "state_dict":
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt file for the user
            raise PanoptemError(f"Could not read weights {path} ({type(e).__name__}); the file is corrupt.") from None
        module = _state_dict_model(card, blob, path)
    elif w.format in ("torchscript", "empanada_torchscript"):
        try:
            module = torch.jit.load(path, map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise PanoptemError(f"Could not load TorchScript model {path} ({type(e).__name__}).") from None
        if w.format == "empanada_torchscript":
            module = _EmpanadaAdapter(module)
    else:
        raise PanoptemError(f"Weights format '{w.format}' cannot run in PyTorch; export a TorchScript "
                            "or state-dict version of the model.")
    module = module.eval().to(dev)
    if dev == "cpu":
        module = module.to(memory_format=torch.channels_last)
    return LoadedModel(card, module, dev)
