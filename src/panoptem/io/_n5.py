"""Reading N5 datasets (the format of BigDataViewer, Paintera and many EM
pipelines), which zarr-python 3 no longer opens.

An N5 container is a folder; a dataset is a folder whose ``attributes.json``
holds ``dimensions``, ``blockSize`` (fastest axis first), ``dataType`` and
``compression``; block ``(i, j, k)`` (fastest first) is the file ``i/j/k``: a
big-endian header (mode, number of axes, the block's own size per axis) and
the compressed big-endian elements, fastest axis first. Decompression uses
numcodecs (raw, gzip, zlib, zstd, blosc, lz4, xz, bzip2).
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from ..errors import PanoptemError

_DTYPES = {"uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64"}


def _attrs(p: Path) -> dict:
    f = p / "attributes.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, ValueError):
        return {}


def is_n5(p: Path) -> bool:
    """Whether folder ``p`` is an N5 container or dataset."""
    a = _attrs(Path(p))
    return "n5" in a or {"dimensions", "blockSize", "dataType"} <= set(a)


def datasets(root: Path) -> list[str]:
    """Paths of the datasets inside an N5 container (``""`` for a dataset itself)."""
    root = Path(root)
    out = []
    for f in sorted(root.rglob("attributes.json")):
        if {"dimensions", "blockSize", "dataType"} <= set(_attrs(f.parent)):
            out.append(f.parent.relative_to(root).as_posix() if f.parent != root else "")
    return out


def _codec(compression: dict):
    import numcodecs
    kind = (compression or {"type": "raw"}).get("type", "raw")
    if kind == "raw":
        return None
    codecs = {"gzip": lambda c: numcodecs.GZip(level=c.get("level", 1)) if c.get("useZlib") is not True
              else numcodecs.Zlib(), "zstd": lambda c: numcodecs.Zstd(), "blosc": lambda c: numcodecs.Blosc(),
              "lz4": lambda c: numcodecs.LZ4(), "xz": lambda c: numcodecs.LZMA(), "bzip2": lambda c: numcodecs.BZ2()}
    if kind not in codecs:
        raise PanoptemError(f"N5 compression '{kind}' is not supported; convert the dataset to Zarr first.")
    return codecs[kind](compression)


class N5Array:
    """One N5 dataset as a read-only array in C order (slowest axis first)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        a = _attrs(self.path)
        if not {"dimensions", "blockSize", "dataType"} <= set(a):
            raise PanoptemError(f"'{self.path}' is not an N5 dataset (no dimensions/blockSize/dataType).")
        if a["dataType"] not in _DTYPES:
            raise PanoptemError(f"N5 data type '{a['dataType']}' is not supported.")
        self.attrs = a
        self.shape = tuple(int(n) for n in reversed(a["dimensions"]))
        self.block = tuple(int(n) for n in reversed(a["blockSize"]))
        self.dtype = np.dtype(a["dataType"])
        self.ndim = len(self.shape)
        self._codec = _codec(a.get("compression"))

    def voxel_size(self) -> list[float | None] | None:
        """nm per axis from ``resolution`` (+ ``units``) or ``pixelResolution`` attributes; a
        scale level of the N5 Viewer layout gives the full resolution's ``pixelResolution`` and
        its own ``downsamplingFactors``, whose product is its pixel size."""
        from . import _meta
        res = self.attrs.get("resolution")
        units = self.attrs.get("units")
        factors = [1.0] * self.ndim
        if res is None and isinstance(self.attrs.get("pixelResolution"), dict):
            res, units = self.attrs["pixelResolution"].get("dimensions"), self.attrs["pixelResolution"].get("unit")
            factors = self._factors()
        if not isinstance(res, list) or len(res) != self.ndim or factors is None:
            return None
        if isinstance(units, str) or units is None:
            units = [units] * self.ndim
        try:
            return [_meta.to_nm(float(r) * f, u or "nm") for r, f, u in zip(reversed(res), reversed(factors),
                                                                             reversed(units))]
        except (TypeError, ValueError):
            return None

    def _factors(self) -> list[float] | None:
        """A scale level's ``downsamplingFactors`` (x, y, z; all 1 where absent); None where
        they are not one positive number per axis."""
        f = self.attrs.get("downsamplingFactors")
        if f is None:
            return [1.0] * self.ndim
        try:
            f = [float(v) for v in f]
        except (TypeError, ValueError):
            return None
        return f if len(f) == self.ndim and all(math.isfinite(v) and v > 0 for v in f) else None

    def origin(self) -> tuple[float, ...] | None:
        """nm position of the first voxel, slowest axis first, from an ``offset`` beside
        ``resolution`` (both x, y, z in N5, as funlib/daisy write them); None where not given."""
        from . import _meta
        a = self.attrs
        if not (isinstance(a.get("resolution"), list) and isinstance(a.get("offset"), list)):
            return None
        flipped = {"resolution": a["resolution"][::-1], "offset": a["offset"][::-1]}
        if "units" in a:
            flipped["units"] = a["units"][::-1] if isinstance(a["units"], list) else a["units"]
        return _meta.attrs_origin(flipped, self.ndim)

    def _read_block(self, idx: tuple[int, ...]) -> np.ndarray | None:
        f = self.path.joinpath(*[str(i) for i in reversed(idx)])
        if not f.is_file():
            return None
        raw = f.read_bytes()
        mode, nd = struct.unpack(">HH", raw[:4])
        size = struct.unpack(f">{nd}I", raw[4:4 + 4 * nd])
        off = 4 + 4 * nd + (4 if mode == 1 else 0)
        body = raw[off:] if self._codec is None else self._codec.decode(raw[off:])
        n = int(np.prod(size))
        a = np.frombuffer(body, self.dtype.newbyteorder(">"), count=n)
        return a.reshape(tuple(reversed(size))).astype(self.dtype)

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        sl = []
        for k, n in zip(key, self.shape):
            if isinstance(k, slice):
                sl.append(range(*k.indices(n)))
            else:
                i = int(k) + (n if int(k) < 0 else 0)
                sl.append(range(i, i + 1))
        lo = [r.start if len(r) else 0 for r in sl]
        hi = [(r[-1] + 1) if len(r) else 0 for r in sl]
        out = np.zeros([h - l for l, h in zip(lo, hi)], self.dtype)
        if out.size:
            first = [l // b for l, b in zip(lo, self.block)]
            last = [(h - 1) // b for h, b in zip(hi, self.block)]
            import itertools
            for idx in itertools.product(*(range(f, t + 1) for f, t in zip(first, last))):
                blk = self._read_block(idx)
                if blk is None:
                    continue
                start = [i * b for i, b in zip(idx, self.block)]
                src, dst = [], []
                for s0, l, h, n in zip(start, lo, hi, blk.shape):
                    a, b = max(s0, l), min(s0 + n, h)
                    src.append(slice(a - s0, b - s0))
                    dst.append(slice(a - l, b - l))
                out[tuple(dst)] = blk[tuple(src)]
        steps = tuple(slice(None, None, r.step) for r in sl)
        out = out[steps]
        squeeze = tuple(i for i, k in enumerate(key) if not isinstance(k, slice))
        return out.squeeze(axis=squeeze) if squeeze else out


def open_dataset(root: str | Path, key: str) -> N5Array:
    return N5Array(Path(root) / key if key else Path(root))
