"""Read-on-demand arrays: numpy-style indexing that reads only what it needs and returns numpy.

Both classes pickle (the file is reopened in the receiving process), so they can travel to
Dask workers or subprocesses.
"""
from __future__ import annotations

import operator
import threading
from pathlib import Path
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import PanoptemError


def _is_index_array(k) -> bool:
    return isinstance(k, (np.ndarray, list))


def _expand_key(key, ndim: int):
    """One entry per axis (Ellipsis expanded, missing axes filled with ``:``); None when the
    key needs a full read (newaxis, multi-dimensional boolean masks, scalar booleans)."""
    key = key if isinstance(key, tuple) else (key,)
    key = tuple(np.asarray(k) if isinstance(k, list) else k for k in key)
    for k in key:
        if k is None or isinstance(k, (bool, np.bool_)):
            return None
        if isinstance(k, np.ndarray) and k.dtype == bool and k.ndim != 1:
            return None
    n_ellipsis = sum(k is Ellipsis for k in key)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    n_real = len(key) - n_ellipsis
    if n_real > ndim:
        raise IndexError(f"too many indices for array: array is {ndim}-dimensional, but {n_real} were indexed")
    fill = (slice(None),) * (ndim - n_real)
    if n_ellipsis:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        return key[:i] + fill + key[i + 1:]
    return key + fill


class LazyArray:
    """Base of the lazy arrays: ``shape``, ``dtype``, ``ndim`` and numpy indexing.

    Subclasses implement ``_read(key)``, where ``key`` has one entry per axis, each an
    in-range int or a slice with normalised start/stop and a positive step. Integer and
    boolean array indices are served by reading their bounding range, then indexing it.
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None):
        a = self[...]
        return a if dtype is None else a.astype(dtype, copy=False)

    def _read(self, key: tuple) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, key) -> np.ndarray:
        full = _expand_key(key, self.ndim)
        if full is None:
            return np.asarray(self._read(tuple(slice(0, n, 1) for n in self.shape)))[key]
        advanced = any(_is_index_array(k) for k in full)
        basic, post, need_post = [], [], False
        for k, n in zip(full, self.shape):
            if _is_index_array(k):
                idx = np.arange(n)[k]
                lo, hi = (int(idx.min()), int(idx.max()) + 1) if idx.size else (0, 0)
                basic.append(slice(lo, hi, 1))
                post.append(idx - lo)
                need_post = True
            elif isinstance(k, slice):
                r = range(*k.indices(n))
                if r.step > 0 or len(r) == 0:
                    basic.append(slice(r.start, max(r.stop, r.start), r.step) if len(r) else slice(0, 0, 1))
                    post.append(slice(None))
                else:  # negative step: read forwards, then reverse
                    basic.append(slice(r[-1], r[0] + 1, -r.step))
                    post.append(slice(None, None, -1))
                    need_post = True
            else:
                i = operator.index(k)
                if not -n <= i < n:
                    raise IndexError(f"index {i} is out of bounds for axis with size {n}")
                i %= n
                if advanced:  # keep the axis so numpy places the advanced dimensions as usual
                    basic.append(slice(i, i + 1, 1))
                    post.append(0)
                else:
                    basic.append(i)
        out = np.asarray(self._read(tuple(basic)))
        return out[tuple(post)] if need_post else out


class StoreArray(LazyArray):
    """A zarr / h5py / TIFF-as-zarr array opened on first use, with singleton axes dropped.

    Parameters
    ----------
    opener : picklable callable returning the array-like (e.g. a ``functools.partial``).
    shape, dtype : of the array returned by ``opener``.
    name : the file, for messages: a part that cannot be decoded raises a
        one-line :class:`~panoptem.errors.PanoptemError` naming it.
    """

    def __init__(self, opener: Callable, shape: Sequence[int], dtype, name: str = ""):
        self._opener = opener
        args = getattr(opener, "args", ())  # a functools.partial(open, path, ...) names its file
        self.name = name or (str(args[0]) if args else "")
        self._src_shape = tuple(int(n) for n in shape)
        self.shape = tuple(n for n in self._src_shape if n != 1)
        self.dtype = np.dtype(dtype)
        self._array = None
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"_opener": self._opener, "_src_shape": self._src_shape, "shape": self.shape, "dtype": self.dtype,
                "name": self.name}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._array, self._lock = None, threading.Lock()

    @property
    def source(self):
        """The underlying (un-squeezed) array, opened on first use."""
        if self._array is None:
            with self._lock:
                if self._array is None:
                    self._array = self._opener()
        return self._array

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """The stored chunk shape (singleton axes dropped), or None where the store has none."""
        c = getattr(self.source, "chunks", None)
        if not c or len(c) != len(self._src_shape):
            return None
        return tuple(int(k) for k, n in zip(c, self._src_shape) if n != 1)

    def _read(self, key: tuple) -> np.ndarray:
        it = iter(key)
        src_key = tuple(0 if n == 1 else next(it) for n in self._src_shape)
        try:
            return np.asarray(self.source[src_key])
        except (PanoptemError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - a part of the file cannot be decoded: corrupt or truncated
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
            raise PanoptemError(f"Could not read part of '{Path(str(self.name)).name or 'the input'}' "
                                f"({type(e).__name__}{': ' + first[:200] if first else ''}); the file is corrupt or "
                                "truncated: copy it again or re-save it.") from None


def _tail_shape(key: tuple, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(len(range(*k.indices(n))) for k, n in zip(key, shape) if isinstance(k, slice))


class ImageStack(LazyArray):
    """A ZYX stack of 2D image files, one file read per requested slice.

    Parameters
    ----------
    files : the slice files, in stack order.
    read_plane : picklable function ``path -> 2D ndarray``.
    plane_shape, dtype : every slice must have these, else reading it raises PanoptemError.
    """

    def __init__(self, files: Sequence[str], read_plane: Callable, plane_shape: Sequence[int], dtype):
        self.files = [str(f) for f in files]
        self._read_plane = read_plane
        self.shape = (len(self.files), *(int(n) for n in plane_shape))
        self.dtype = np.dtype(dtype)

    def plane(self, i: int) -> np.ndarray:
        """Slice ``i`` (checked for shape and dtype)."""
        a = self._read_plane(self.files[i])
        if a.shape != self.shape[1:] or a.dtype != self.dtype:
            raise PanoptemError(
                f"Slice {self.files[i]} is {a.shape} {a.dtype} but the stack is {self.shape[1:]} {self.dtype}; "
                "make every image in the folder the same size and type.")
        return a

    def _read(self, key: tuple) -> np.ndarray:
        k0, rest = key[0], key[1:]
        if not isinstance(k0, slice):
            return self.plane(k0)[rest]
        zs = range(k0.start, k0.stop, k0.step)
        out = np.empty((len(zs), *_tail_shape(rest, self.shape[1:])), self.dtype)
        for j, z in enumerate(zs):
            out[j] = self.plane(z)[rest]
        return out
