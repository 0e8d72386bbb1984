"""A stack of label slices kept in a raw file on disk while a streamed run links them.

A streamed 3D run holds one slice at a time; the provisional ids of the whole stack wait in
a work folder until the linking is decided, then are read back in blocks and relabelled.
A raw file costs one copy per slice to write and one per block to read, where a compressed
chunked store costs several times more CPU than the slice itself; the page cache keeps it
in memory when memory is free, and the operating system spills it to disk when it is not
(unlike a memory map, it never counts toward the process's resident memory).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class SpillStack:
    """``(n, *shape)`` integer slices in the raw file ``path`` (created, or truncated).

    ``s[i] = slice2d`` writes slice ``i`` (any order); ``s[a:b]`` and ``s[:, a:b]`` read a
    block as an array (slices never written read as 0). The dtype widens (the file is
    rewritten) when a slice needs more bytes per id."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(int(v) for v in shape), np.dtype(dtype)
        with open(self.path, "wb") as f:
            f.truncate(self._nbytes(self.dtype))

    def _nbytes(self, dtype: np.dtype) -> int:
        return int(np.prod(self.shape)) * dtype.itemsize

    def _slice_bytes(self, dtype: np.dtype) -> int:
        return int(np.prod(self.shape[1:])) * dtype.itemsize

    def __setitem__(self, i: int, value: np.ndarray) -> None:
        value = np.asarray(value)
        if value.dtype.itemsize > self.dtype.itemsize:
            self._widen(value.dtype)
        data = np.ascontiguousarray(value, self.dtype)
        with open(self.path, "r+b") as f:
            f.seek(int(i) * self._slice_bytes(self.dtype))
            f.write(memoryview(data).cast("B"))

    def __getitem__(self, key) -> np.ndarray:
        """``s[i]``, ``s[a:b]`` (slices a..b-1) or ``s[:, a:b]`` (rows a..b-1 of every slice)."""
        n, rest = self.shape[0], self.shape[1:]
        if isinstance(key, (int, np.integer)):
            return self[int(key):int(key) + 1][0]
        rows = None
        if isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None):
            key, rows = slice(None), key[1]
        if not isinstance(key, slice) or key.step not in (None, 1) or (rows is not None and (
                not isinstance(rows, slice) or rows.step not in (None, 1))):
            raise TypeError(f"SpillStack reads s[i], s[a:b] or s[:, a:b], not {key!r}")
        a, b, _ = key.indices(n)
        b = max(a, b)
        if rows is None:
            per = int(np.prod(rest))
            return np.fromfile(self.path, self.dtype, (b - a) * per, offset=a * per * self.dtype.itemsize
                               ).reshape(b - a, *rest)
        r0, r1, _ = rows.indices(rest[0])
        r1 = max(r0, r1)
        row = int(np.prod(rest[1:]))
        out = np.empty((b - a, r1 - r0, *rest[1:]), self.dtype)
        with open(self.path, "rb") as f:
            for j, i in enumerate(range(a, b)):
                f.seek((i * rest[0] + r0) * row * self.dtype.itemsize)
                f.readinto(memoryview(out[j]).cast("B"))
        return out

    def _widen(self, dtype: np.dtype) -> None:
        tmp = self.path.with_name(self.path.name + ".wide")
        wide = SpillStack(tmp, self.shape, dtype)
        with open(tmp, "r+b") as f:
            for i in range(self.shape[0]):
                f.write(memoryview(np.ascontiguousarray(self[i], dtype)).cast("B"))
        os.replace(tmp, self.path)
        self.dtype = wide.dtype
