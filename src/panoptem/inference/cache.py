"""On-disk cache of network outputs per plane (Zarr), with a per-slice
completion mask: an interrupted 3D run resumes where it stopped, and a
finished one can be re-decoded with other thresholds without the network.

Layout: ``<cache>/<plane>.zarr`` with arrays ``probability`` (N, C, H, W)
uint8 (probability x 255), ``heatmap`` (N, 1, h, w) and ``offsets``
(N, 2, h, w) float16, ``done`` (N,) bool, and attrs describing what was run;
a cache made with a different model, input or downsampling is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import PanoptemError
from .predict import ModelOutput


class OutputCache:
    """Network outputs of one stack, stored slice by slice."""

    def __init__(self, path: str | Path, plane: str, n: int, prob_shape, grid_shape, key: dict):
        import zarr
        self.path = Path(path) / f"{plane}.zarr"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        g = zarr.open_group(str(self.path), mode="a")
        stored = g.attrs.get("key")
        if stored is not None and json.loads(json.dumps(stored)) != json.loads(json.dumps(key)):
            raise PanoptemError(f"The cache {self.path} was made by a different run (model, input or "
                                "downsampling differ); choose another --cache-dir or delete that folder.")
        if "done" not in g:
            c, h, w = prob_shape
            gh, gw = grid_shape
            g.create_array("probability", shape=(n, c, h, w), chunks=(1, c, h, w), dtype="uint8", fill_value=0)
            g.create_array("heatmap", shape=(n, 1, gh, gw), chunks=(1, 1, gh, gw), dtype="float16", fill_value=0)
            g.create_array("offsets", shape=(n, 2, gh, gw), chunks=(1, 2, gh, gw), dtype="float16", fill_value=0)
            g.create_array("done", shape=(n,), chunks=(n,), dtype="bool", fill_value=False)
            g.attrs["key"] = key
        self.group = g
        self._done = np.asarray(g["done"][:])

    def done(self, i: int) -> bool:
        return bool(self._done[i])

    def put(self, i0: int, out: ModelOutput) -> None:
        """Store outputs of slices i0.. and mark them complete (data first, then the mark)."""
        i1 = i0 + len(out)
        self.group["probability"][i0:i1] = np.round(out.semantic_probability * 255).astype(np.uint8)
        self.group["heatmap"][i0:i1] = out.heatmap.astype(np.float16)
        self.group["offsets"][i0:i1] = out.offsets.astype(np.float16)
        self._done[i0:i1] = True
        self.group["done"][:] = self._done

    def get(self, i0: int, i1: int) -> ModelOutput:
        return ModelOutput(self.group["probability"][i0:i1].astype(np.float32) / 255.0,
                           self.group["heatmap"][i0:i1].astype(np.float32),
                           self.group["offsets"][i0:i1].astype(np.float32))
