"""What a worker needs to open the volume and the model itself, once per process."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

_lock = threading.Lock()
_volumes: dict = {}
_models: dict = {}
_device: list[str | None] = [None]  # set on a worker by its setup plugin (_cluster._WorkerSetup)


@dataclass(frozen=True)
class VolumeSource:
    """A volume a worker opens itself: a file (``path`` + ``key``, read
    lazily, never shipped) or, for in-memory arrays, the array itself.
    ``stride`` k > 1: the volume as an xz / yz stack along ``axis`` sees it, each plane
    along that axis the mean of k (see :class:`MeanPlanes`)."""

    path: str | None = None
    key: str | None = None
    array: object = None
    pixel_size_nm: float | None = None
    axis: int = 0
    stride: int = 1

    def __post_init__(self):
        if self.path is not None:  # workers of another host or folder open it where the caller does
            import os
            object.__setattr__(self, "path", os.path.abspath(os.path.expanduser(self.path)))

    def open(self):
        if self.array is not None:
            vol = self.array
        else:
            # the file as it is now: one replaced at the same path (a later run of a cluster that
            # outlives runs) is opened anew, and the old one let go
            k = (self.path, self.key, self.pixel_size_nm, file_stamp(self.path))
            with _lock:
                if k not in _volumes:
                    from ..io import read_image
                    for old in [o for o in _volumes if o[:3] == k[:3]]:  # this dataset's earlier file
                        del _volumes[old]
                    _volumes[k] = read_image(self.path, key=self.key).data
                vol = _volumes[k]
        return MeanPlanes(vol, self.axis, self.stride) if self.stride > 1 else vol


class MeanPlanes:
    """A ZYX volume read with every ``k`` planes along ``axis`` as their mean (float32; the
    last plane of fewer where the axis ends): what an xz / yz stack brought to the network's
    pixels along its axis segments (:func:`~panoptem.inference.segment3d.stack_means`)."""

    def __init__(self, volume, axis: int, k: int):
        self.volume, self.axis, self.k = volume, int(axis), int(k)
        n = volume.shape[self.axis]
        self.shape = tuple(-(-n // self.k) if ax == self.axis else s for ax, s in enumerate(volume.shape))
        self.dtype, self.ndim = np.dtype(np.float32), 3

    def __getitem__(self, region) -> np.ndarray:
        from ..inference.segment3d import stack_means
        a, k, n = self.axis, self.k, self.volume.shape[self.axis]
        sl = list(region)
        lo, hi, _ = sl[a].indices(self.shape[a])
        sl[a] = slice(lo * k, min(hi * k, n))
        block = np.moveaxis(np.asarray(self.volume[tuple(sl)]), a, 0)
        return np.moveaxis(stack_means(block, k), 0, a)


def file_stamp(path) -> tuple | None:
    """Which file or folder stands at ``path`` now (inode, modification time, size), or None."""
    import os
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


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
    from ..models.home import get_card
    card = get_card(str(spec))  # as registered now: a model registered anew under the name is loaded anew
    k = (str(spec), device, card.weights.sha256, file_stamp(card.weights_path()))
    with _lock:
        if k not in _models:
            for old in [o for o in _models if o[:2] == k[:2]]:
                del _models[old]
            _models[k] = load_model(str(spec), device)
        return _models[k]


def read_region(volume, region) -> np.ndarray:
    return np.asarray(volume[tuple(region)])
