"""A stack of label slices kept compressed in a file on disk while a streamed run links them.

A streamed 3D run holds one slice at a time; the provisional ids of the whole stack wait in
a work folder until the linking is decided, then are read back in blocks and relabelled.
Each slice is stored as strips of :data:`STRIP` rows, each compressed on its own with zstd
at level 1 and appended to one file (the index stays in memory: the file is a work file, not
kept across runs). Label slices are mostly background: a 768 x 1024 uint32 slice of
mitochondria shrinks about 500 x, costs about 0.6 ms to compress and as much to expand,
where writing its raw 3 MB into a new file cost about 6 ms and reading it back about 9 ms
on a 2-core cloud machine (fresh page-cache pages are expensive), and the dirty pages no
longer compete with the network for the disk's writeback. Strips let xz / yz stacks read
rows of every slice without expanding the whole slices.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: rows per compressed strip (the relabelling reads Z blocks of 32 rows of xz / yz stacks)
STRIP = 32


def _codec():
    from numcodecs import Zstd
    return Zstd(level=1)


class SpillStack:
    """``(n, rows, ...)`` integer slices in the file ``path`` (created, or truncated).

    ``s[i] = slice2d`` writes slice ``i`` (any order, again if need be); ``s[a:b]`` and
    ``s[:, a:b]`` read a block as an array (slices never written read as 0). The dtype widens
    when a slice needs more bytes per id (strips already stored are widened as they are read)."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(int(v) for v in shape), np.dtype(dtype)
        self._strips = -(-self.shape[1] // STRIP)
        self._at = np.full((self.shape[0], self._strips), -1, np.int64)  # byte offset, -1: never written
        self._len = np.zeros((self.shape[0], self._strips), np.int64)
        self._kind = np.zeros((self.shape[0], self._strips), np.int8)  # index into self._dtypes
        self._dtypes: list[np.dtype] = [self.dtype]
        self._codec = _codec()
        open(self.path, "wb").close()
        self._end = 0

    def _rows(self, k: int) -> slice:
        return slice(k * STRIP, min((k + 1) * STRIP, self.shape[1]))

    def __setitem__(self, i: int, value: np.ndarray) -> None:
        value = np.asarray(value)
        if value.dtype.itemsize > self.dtype.itemsize:
            self.dtype = value.dtype
            self._dtypes.append(self.dtype)
        kind = self._dtypes.index(self.dtype)
        data = np.ascontiguousarray(value, self.dtype).reshape(self.shape[1:])
        blobs = [self._codec.encode(np.ascontiguousarray(data[self._rows(k)])) for k in range(self._strips)]
        with open(self.path, "ab") as f:
            for k, b in enumerate(blobs):
                self._at[i, k], self._len[i, k], self._kind[i, k] = self._end, len(b), kind
                f.write(b)
                self._end += len(b)

    def _read_strip(self, fd: int, i: int, k: int, out: np.ndarray) -> None:
        """Strip ``k`` of slice ``i`` into ``out`` (its rows, contiguous)."""
        if self._at[i, k] < 0:
            out[...] = 0
            return
        raw = os.pread(fd, int(self._len[i, k]), int(self._at[i, k]))
        stored = self._dtypes[self._kind[i, k]]
        if stored == self.dtype:
            self._codec.decode(raw, out=out)
        else:
            out[...] = np.frombuffer(self._codec.decode(raw), stored).reshape(out.shape)

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
        r0, r1 = 0, rest[0]
        if rows is not None:
            r0, r1, _ = rows.indices(rest[0])
        return self.read(a, b, r0, r1)

    def read(self, a: int, b: int, r0: int = 0, r1: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``r0..r1-1`` of slices ``a..b-1``, into ``out`` when it is given (an array of at
        least that many slices, of this dtype, e.g. one buffer reused block after block); returns
        the block (a view of ``out``)."""
        rest = self.shape[1:]
        b, r1 = max(a, b), max(r0, rest[0] if r1 is None else r1)
        want = (b - a, r1 - r0, *rest[1:])
        if out is None or out.dtype != self.dtype or out.shape[1:] != want[1:] or len(out) < want[0]:
            out = np.empty(want, self.dtype)
        out = out[:want[0]]
        k0, k1 = r0 // STRIP, -(-r1 // STRIP)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for j, i in enumerate(range(a, b)):
                for k in range(k0, k1):
                    sl = self._rows(k)
                    if sl.start >= r0 and sl.stop <= r1:  # a whole strip: straight into the output
                        self._read_strip(fd, i, k, out[j, sl.start - r0:sl.stop - r0])
                    else:
                        strip = np.empty((sl.stop - sl.start, *rest[1:]), self.dtype)
                        self._read_strip(fd, i, k, strip)
                        lo, hi = max(r0, sl.start), min(r1, sl.stop)
                        out[j, lo - r0:hi - r0] = strip[lo - sl.start:hi - sl.start]
        finally:
            os.close(fd)
        return out
