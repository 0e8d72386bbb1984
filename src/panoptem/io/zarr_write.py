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
"""
from __future__ import annotations

from typing import Any

import numpy as np


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
