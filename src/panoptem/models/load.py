"""Load a model (found by :mod:`.home` from its name or card path) onto a device."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..errors import PanoptemError
from .card import ONNX_ONLY, ModelCard
from .home import DEFAULT_MODEL, get_card, sha256_of

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def _surely_no_gpu() -> bool:
    """True where the system itself shows that PyTorch could find no GPU (Linux without an
    NVIDIA or AMD GPU driver): ``auto`` then means the CPU without importing PyTorch."""
    if not sys.platform.startswith("linux"):
        return False
    return not any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd"))


def pick_device(device: str = "auto") -> str:
    """``auto`` -> cuda if present, else mps, else cpu; anything else is checked
    (one of ``cpu``, ``cuda``, ``cuda:N``, ``mps``, and present on this machine)."""
    import re
    dev = str(device).strip().lower()
    if dev in ("auto", "cpu") and (dev == "cpu" or _surely_no_gpu()):
        return "cpu"
    import torch
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


class LoadedModel:
    """A network ready for inference, its card and device.

    ``module`` is the PyTorch network. Given ``weights`` (the local weights file) and
    ``weights_sha256`` instead of a module, the network is built from them on first use:
    a run whose network is already cached for ONNX Runtime never imports PyTorch.
    """

    def __init__(self, card: ModelCard, module: Any = None, device: str = "cpu", *,
                 weights: str | Path | None = None, weights_sha256: str | None = None):
        if module is None and weights is None:
            raise PanoptemError("A loaded model needs its network or its weights file.")
        self.card, self._module, self.device = card, module, device
        self.weights, self.weights_sha256 = weights, weights_sha256
        self._folded: tuple = (None, None)  # (the module it was made from, its folded copy)

    @property
    def module(self):
        """The PyTorch network (built from the weights file on first use)."""
        if self._module is None:
            self._module = _build(self.card, str(self.weights), self.device)
        return self._module

    @property
    def inference_module(self):
        """The network to run for inference: for panoptem's own networks in evaluation mode a
        copy with the batch norms folded into the convolutions and its weights in channels-last
        order, as the input is (made once), else :attr:`module`. On a GPU, weights left in the
        other order were converted on every call: thin planes ran 1.8-2.3 x slower
        (``bench/bench_gpu_forward.py``)."""
        from .architecture import PanopticNet, folded_batch_norms
        module = self.module
        if not isinstance(module, PanopticNet) or module.training:
            return module
        if self._folded[0] is not module:
            import torch
            folded = folded_batch_norms(module).to(memory_format=torch.channels_last)
            self._folded = (module, folded)
        return self._folded[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_folded"] = (None, None)  # remade where it is used (a Dask worker): not sent along
        return state

    @property
    def loaded(self) -> bool:
        """Whether the PyTorch network has been built."""
        return self._module is not None

    @property
    def own_network(self) -> bool:
        """Whether the network is one of panoptem's own (a state dict for its architecture),
        known without building it."""
        if self._module is None:
            return self.card.weights.format == "state_dict"
        from .architecture import PanopticNet
        return isinstance(self._module, PanopticNet)

    def __repr__(self) -> str:
        return f"LoadedModel({self.card.name!r}, device={self.device!r})"


def _check_sha(path: str, expected: str | None) -> None:
    if expected and sha256_of(path) != expected:
        raise PanoptemError(f"Weights file {path} does not match the sha256 in its model card; "
                            "the file is corrupt or not the one the card describes: re-download or re-export it.")


def _state_dict_model(card: ModelCard, blob, path: str):
    """The card's network with the weights of ``blob`` (a state dict, or
    ``{"architecture": ..., "state_dict": ...}``), refused when they do not fit."""
    import torch

    from .architecture import build_model
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
    got = (module.config["in_channels"], module.config["num_classes"])
    if got != (card.input_channels, card.probability_channels):  # the weights' own architecture, not the card's
        raise PanoptemError(f"Weights {path} hold a network of {got[0]} input and {got[1]} semantic channel(s), but "
                            f"model '{card.name}' needs {card.input_channels} and {card.probability_channels} "
                            f"(context_slices {card.context_slices}, {card.num_classes} class(es)); fix the card "
                            "or register the weights trained for it.")
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
    path = card.weights_path()
    remote = "://" in path
    if remote:
        from .registry import fetch_weights  # downloads once into the cache, checks sha256
        path = str(fetch_weights(card))
    if not Path(path).exists():
        raise PanoptemError(f"Weights file {path} of model '{card.name}' is missing; re-register the model.")
    if not remote:
        _check_sha(path, card.weights.sha256)
    return load_weights(card, path, dev, sha256=card.weights.sha256)


def load_weights(card: ModelCard, path: str | Path, device: str = "cpu", sha256: str | None = None) -> LoadedModel:
    """The network of ``card`` with the weights in the local file ``path`` (in the card's
    weights format), on ``device`` (``auto`` picks one): e.g. freshly trained weights
    that are not registered yet. :func:`load_model` finds and checks the file first.

    On a CPU, panoptem's own network whose ONNX Runtime export is already cached (see
    :func:`panoptem.inference.runtime.onnx_net`) is built only when PyTorch is asked for."""
    dev = pick_device(device)
    if dev == "cpu" and card.weights.format == "state_dict":
        from ..inference.runtime import onnx_cached
        sha = sha256 or sha256_of(str(path))
        lazy = LoadedModel(card, None, dev, weights=path, weights_sha256=sha)
        if onnx_cached(lazy):
            return lazy
        return LoadedModel(card, _build(card, str(path), dev), dev, weights=path, weights_sha256=sha)
    return LoadedModel(card, _build(card, str(path), dev), dev, weights=path, weights_sha256=sha256)


def _build(card: ModelCard, path: str, dev: str):
    """The PyTorch network of ``card`` with the weights in ``path``, on ``dev``."""
    import torch
    w = card.weights
    if w.format == "state_dict":
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt file for the user
            raise PanoptemError(f"Could not read weights {path} ({type(e).__name__}); the file is corrupt.") from None
        module = _state_dict_model(card, blob, str(path))
    elif w.format in ("torchscript", "empanada_torchscript"):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise PanoptemError(f"Could not load TorchScript model {path} ({type(e).__name__}).") from None
        if w.format == "empanada_torchscript":
            from .architecture import EmpanadaAdapter
            module = EmpanadaAdapter(module)
    elif w.format == "onnx":
        raise PanoptemError(ONNX_ONLY)
    else:
        raise PanoptemError(f"Weights format '{w.format}' cannot run in PyTorch; export a TorchScript "
                            "or state-dict version of the model.")
    module = module.eval().to(dev)
    if dev == "cpu":
        module = module.to(memory_format=torch.channels_last)
    return module
