"""Each slice's labels of a 2D run over a stack (``segment2d --batch``), kept on disk as they are
made, with the hash of the slice's input: an interrupted run resumes where it stopped, and the
stack's labels are never held in memory all at once.

Layout: a Zarr group with ``labels`` (N, H, W) uint64 (one chunk row per slice), ``hash``
(N, 16) uint8 (see :func:`~.cache.plane_hashes`), ``done`` (N,) bool, and the run's ``key`` in
its attributes. A store made by a run with another key (model, parameters, shape...) is
started afresh; a slice whose input changed is made again.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .cache import HASH_BYTES


class SliceStore:
    """The labels of the slices of one 2D run over ``shape`` (N, H, W), kept at ``path``."""

    def __init__(self, path: str | Path, key: dict, shape):
        import zarr

        from ..io.zarr_write import label_compressor
        self.path = Path(path)
        key = json.loads(json.dumps(key, default=str))
        n, h, w = (int(s) for s in shape)
        group = None
        if self.path.exists():
            try:
                group = zarr.open_group(str(self.path), mode="r+")
                if group.attrs.get("key") != key or group["labels"].shape != (n, h, w):
                    group = None
                else:
                    self._hash = np.asarray(group["hash"][...])
                    self._done = np.asarray(group["done"][...])
            except Exception:  # noqa: BLE001 - another run's, or damaged: ours to start afresh
                group = None
            if group is None:
                shutil.rmtree(self.path, ignore_errors=True)
        if group is None:
            group = zarr.open_group(str(self.path), mode="w", zarr_format=2)
            group.create_array("labels", shape=(n, h, w), chunks=(1, min(h, 2048), min(w, 2048)), dtype=np.uint64,
                               fill_value=0, compressors=label_compressor(),
                               chunk_key_encoding={"name": "v2", "separator": "/"})
            group.create_array("hash", shape=(n, HASH_BYTES), dtype=np.uint8, fill_value=0)
            group.create_array("done", shape=(n,), dtype=bool, fill_value=False)
            group.attrs["key"] = key  # last: a store killed while made has none, and is made again
            self._hash, self._done = np.zeros((n, HASH_BYTES), np.uint8), np.zeros(n, bool)
        self._group = group

    @property
    def labels(self):
        """The labels of every slice, read lazily (zeros where a slice is not done)."""
        return self._group["labels"]

    def valid(self, i: int, digest: np.ndarray) -> bool:
        """Whether slice ``i`` is done, from an input whose hash is ``digest``."""
        return bool(self._done[i]) and np.array_equal(self._hash[i], digest)

    def put(self, index: list[int], labels: list[np.ndarray], digests: np.ndarray) -> None:
        """Keep the labels of slices ``index`` (and their inputs' hashes), then mark them done."""
        stale = [i for i in index if self._done[i]]  # done from an input since changed: unmarked first
        if stale:
            self._done[stale] = False
            self._group["done"][min(stale):max(stale) + 1] = self._done[min(stale):max(stale) + 1]
        for i, lab, d in zip(index, labels, digests):
            self._group["labels"][i] = lab
            self._hash[i] = d
            self._done[i] = True
        if index:
            lo, hi = min(index), max(index) + 1
            self._group["hash"][lo:hi] = self._hash[lo:hi]
            self._group["done"][lo:hi] = self._done[lo:hi]  # after the labels: a slice marked done is whole
