"""What a worker needs to open the volume and the model itself, once per process."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

_lock = threading.Lock()
_volumes: dict = {}
_models: dict = {}
_device: list[str | None] = [None]  # set on a worker by DevicePlugin


@dataclass(frozen=True)
class VolumeSource:
    """A volume a worker opens itself: a file (``path`` + ``key``, read
    lazily, never shipped) or, for in-memory arrays, the array itself."""

    path: str | None = None
    key: str | None = None
    array: object = None
    pixel_size_nm: float | None = None

    def open(self):
        if self.array is not None:
            return self.array
        k = (self.path, self.key, self.pixel_size_nm)
        with _lock:
            if k not in _volumes:
                from ..io import read_image
                _volumes[k] = read_image(self.path, key=self.key).data
            return _volumes[k]


def set_worker_device(device: str | None) -> None:
    _device[0] = device


def worker_device(requested: str) -> str:
    """The device of this worker: the one its plugin assigned, else ``requested``."""
    return _device[0] or requested


def worker_model(spec, device: str):
    """The model ``spec`` (name, card path or a loaded model) on ``device``,
    loaded once per process and kept."""
    from ..models.load import LoadedModel, load_model
    if isinstance(spec, LoadedModel):
        return spec
    k = (str(spec), device)
    with _lock:
        if k not in _models:
            _models[k] = load_model(str(spec), device)
        return _models[k]


def read_region(volume, region) -> np.ndarray:
    return np.asarray(volume[tuple(region)])
