"""OME-Zarr (NGFF 0.4) label and image groups: a multiscale pyramid below
level ``"0"`` and the metadata, written with the ome-zarr library.

Levels halve the axes whose voxels are not much coarser than the finest axis
(so anisotropic stacks shrink in-plane first), by taking every second voxel:
nearest-neighbour, which keeps label ids intact.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .zarr_write import put

#: stop adding levels once every axis of the next level would be this small
MIN_LEVEL_SIZE = 64
MAX_LEVELS = 8


def pyramid_factors(shape: Sequence[int], voxel_size: Sequence[float] | None) -> list[tuple[int, ...]]:
    """Per level after ``"0"``, the factor (1 or 2) of every axis from the level above.

    >>> pyramid_factors((30, 1024, 1024), (30.0, 5.0, 5.0))[:3]
    [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    """
    size = [float(v) for v in (voxel_size or [1.0] * len(shape))]
    dims = [int(n) for n in shape]
    out = []
    while len(out) < MAX_LEVELS and max(dims) // 2 >= MIN_LEVEL_SIZE:
        finest = min(size)
        f = tuple(2 if (s <= 1.5 * finest and n // 2 >= 1) else 1 for s, n in zip(size, dims))
        if all(v == 1 for v in f):
            break
        out.append(f)
        dims = [-(-n // v) for n, v in zip(dims, f)]
        size = [s * v for s, v in zip(size, f)]
    return out


def write_metadata(group, voxel_size: Sequence[float] | None, factors: list[tuple[int, ...]], name: str,
                   labels: bool = True, origin: Sequence[float] | None = None) -> None:
    """NGFF 0.4 multiscale metadata of a zarr group holding arrays ``"0"``, ``"1"``...; ``origin``
    (nm, with a voxel size): every level's translation, the same for all since a level keeps
    every second voxel of the one above, starting with the first."""
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import add_metadata, write_multiscales_metadata
    ndim = group["0"].ndim
    scale = [float(v) for v in voxel_size] if voxel_size else [1.0] * ndim
    shift = [{"type": "translation", "translation": [float(o) for o in origin]}] if origin and voxel_size else []
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}, *shift]}]
    for i, f in enumerate(factors, start=1):
        scale = [s * v for s, v in zip(scale, f)]
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": list(scale)},
                                                                        *shift]})
    axes = [{"name": n, "type": "space", **({"unit": "nanometer"} if voxel_size else {})} for n in "zyx"[-ndim:]]
    fmt = FormatV04()
    write_multiscales_metadata(group, datasets, fmt=fmt, axes=axes, name=name)
    if labels:
        add_metadata(group, {"image-label": {"version": fmt.version}}, fmt=fmt)


def level_shapes(shape: Sequence[int], factors: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Shapes of levels ``"1"``... for ``factors`` (see :func:`pyramid_factors`)."""
    out, cur = [], tuple(int(n) for n in shape)
    for f in factors:
        cur = tuple(-(-n // v) for n, v in zip(cur, f))
        out.append(cur)
    return out


def create_level(group, i: int, shape, chunks, like):
    """Array ``str(i)`` of ``group``, empty, with the codecs of array ``like``."""
    return group.create_array(str(i), shape=tuple(shape), chunks=tuple(max(1, min(c, n)) for c, n in zip(chunks, shape)),
                              dtype=like.dtype, fill_value=0, compressors=like.compressors,
                              chunk_key_encoding={"name": "v2", "separator": "/"}, overwrite=True)


class _LevelTarget:
    """A zarr array as a target of ``dask.array.store``, written through :func:`.zarr_write.put`."""

    def __init__(self, arr):
        self.arr = arr

    def __setitem__(self, key, value):
        put(self.arr, key, value)


def write_pyramid_and_metadata(path: str, voxel_size: Sequence[float] | None, name: str, labels: bool = True,
                               levels: bool = True, origin: Sequence[float] | None = None) -> int:
    """Add pyramid levels below array ``"0"`` of the zarr group at ``path``
    (computed with dask, on the active distributed client if there is one)
    and write its NGFF 0.4 metadata; returns the number of levels."""
    import dask.array as da
    import zarr

    group = zarr.open_group(path, mode="a", zarr_format=2)
    base = group["0"]
    factors = pyramid_factors(base.shape, voxel_size) if levels else []
    prev = base
    for i, (f, shape) in enumerate(zip(factors, level_shapes(base.shape, factors)), start=1):
        src = da.from_zarr(prev)[tuple(slice(None, None, v) for v in f)]
        arr = create_level(group, i, shape, base.chunks, base)
        da.store(src.rechunk(arr.chunks), _LevelTarget(arr), lock=False)
        prev = arr
    write_metadata(group, voxel_size, factors, name, labels, origin)
    return 1 + len(factors)


def level_arrays(path: str) -> list[np.ndarray]:
    """The arrays of a multiscale group, finest first (for tests and viewers)."""
    import zarr
    g = zarr.open_group(path, mode="r")
    return [g[d["path"]] for d in g.attrs["multiscales"][0]["datasets"]]
