"""Writing to Zarr arrays at the speed of the bytes.

Before zarr-python 3 stores a chunk it asks whether the chunk holds nothing but the fill value
(such a chunk is not stored, or deleted). Its test (``NDBuffer.all_equal``) compares through a
broadcast copy of the fill value and costs about 20 x a plain ``any()``: on network outputs and
label volumes it took most of the time of a write. Two remedies, one per kind of array:

- :func:`dense`: for arrays whose chunks are (almost) never empty, such as network outputs: no
  test at all, every chunk is stored. (zarr keeps this setting with the open array, not in the
  store: apply it to the array object that writes.)
- :func:`put`: writes labels (integers, fill value 0) with the same test done as one ``any()``,
  so empty chunks are still left out.

And :class:`ChunkRows` gathers batches of rows into whole chunks: a chunk several batches fill
is written once, not read back and rewritten by each.
"""
from __future__ import annotations

from typing import Any

import numpy as np


#: zstd level of label volumes: level 5 encoded 64 x 512 x 512 uint32 labels 2.2-2.9 x slower than
#: level 3 (dense 0.50 against 0.23 s, one thread) for files 13-19 % smaller; labels compress 24-1100 x
#: either way (``bench/bench_label_codec.py``)
LABEL_CLEVEL = 3


def label_compressor():
    """The codec of label volumes panoptem writes: Blosc zstd with byte shuffle."""
    import numcodecs
    return numcodecs.Blosc(cname="zstd", clevel=LABEL_CLEVEL, shuffle=numcodecs.Blosc.SHUFFLE)


def dense(arr):
    """``arr`` (a zarr array) opened to store every chunk it is given, without testing it
    (unchanged on a zarr too old to set this per array: slower, same contents)."""
    with_config = getattr(arr, "with_config", None)
    return with_config({"write_empty_chunks": True}) if with_config is not None else arr


def _prototype():
    """zarr's CPU buffer prototype with :class:`_LabelBuffer` as its array buffer; None on a
    zarr without a public buffer API (writes then take zarr's own test)."""
    try:
        from zarr.buffer import cpu
        base = cpu.buffer_prototype
    except (ImportError, AttributeError):
        return None

    class _LabelBuffer(cpu.NDBuffer):
        """An array buffer whose fill-value test for integers is one pass over the bytes."""

        def all_equal(self, other: Any, equal_nan: bool = True) -> bool:
            data = self._data
            if isinstance(data, np.ndarray) and data.dtype.kind in "biu" and np.ndim(other) == 0:
                return not data.any() if other == 0 else not (data != other).any()
            return super().all_equal(other, equal_nan)

    return base._replace(nd_buffer=_LabelBuffer)


_PROTOTYPE: list = []


def put(arr, selection, value) -> None:
    """``arr[selection] = value`` for a zarr array (basic selection: ints and slices),
    with a fast test for chunks that hold only the fill value."""
    if not _PROTOTYPE:
        _PROTOTYPE.append(_prototype())
    if _PROTOTYPE[0] is None:
        arr[selection] = value
    else:
        arr.set_basic_selection(selection, value, prototype=_PROTOTYPE[0])


class ChunkRows:
    """Rows (slices along the first axis) of several arrays, written as batches of them come but
    gathered into whole chunks of ``depth`` rows (chunk edges at multiples of ``depth``); rows up
    to ``stop`` go as they are. A batch that does not follow the one before first writes what
    was gathered (:meth:`flush`). ``where``: per array, the index of its axes after the second
    (default: all); ``written(first, stop)`` is called once rows ``first:stop`` are in every array.

    >>> a = np.zeros((5, 1, 2), np.uint8); spans = []
    >>> rows = ChunkRows([a], depth=2, stop=5, written=lambda i, j: spans.append((i, j)))
    >>> for i in range(5):
    ...     rows.add(i, (np.full((1, 1, 2), i + 1, np.uint8),))
    >>> spans, a[:, 0, 0].tolist()
    ([(0, 2), (2, 4), (4, 5)], [1, 2, 3, 4, 5])
    """

    def __init__(self, arrays, depth: int, stop: int, where=None, written=None):
        self.arrays, self.depth, self.stop = list(arrays), int(depth), int(stop)
        self.where = list(where) if where is not None else [()] * len(self.arrays)
        self.written = written
        self.first, self.end, self.parts = 0, 0, []

    def add(self, first: int, parts: tuple) -> None:
        """Rows ``first:first + len(parts[0])`` of every array, one part per array."""
        if self.parts and first != self.end:
            self.flush()
        if not self.parts:
            self.first = first
        self.parts.append(parts)
        self.end = first + len(parts[0])
        cut = self.end if self.end >= self.stop else self.end - self.end % self.depth
        if cut > self.first:
            self._write(cut)

    def flush(self) -> None:
        """Write every row gathered so far."""
        if self.parts:
            self._write(self.end)

    def _write(self, cut: int) -> None:
        joined = [np.concatenate(p) if len(self.parts) > 1 else p[0] for p in zip(*self.parts)]
        n = cut - self.first
        for arr, idx, x in zip(self.arrays, self.where, joined):
            if x.shape[1] != arr.shape[1]:  # zarr would store the part that fits, without a word
                raise ValueError(f"{x.shape[1]} channels for an array of {arr.shape[1]}")
            arr[(slice(self.first, cut), slice(None), *idx)] = x[:n]
        if self.written is not None:
            self.written(self.first, cut)
        self.parts = [tuple(x[n:] for x in joined)] if self.end > cut else []
        self.first = cut
