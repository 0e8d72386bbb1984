"""Writer contribution: a labels layer to OME-TIFF or OME-Zarr with its voxel size."""
from __future__ import annotations

from collections.abc import Sequence

from ._layers import origin_from_meta, voxel_size_from_meta


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write one labels layer with :func:`panoptem.io.write_labels`; returns the path written.

    The voxel size comes from the layer's ``metadata['voxel_size']`` (set by
    panoptem's reader), else from its scale unless that is all ones; its position from its
    ``translate`` (see :func:`~._layers.origin_from_meta`; kept by OME-Zarr). A layer panoptem made
    or read keeps its record of how (``metadata['panoptem']``), marked as saved from napari: the
    labels may have been proofread since.
    """
    from ..io import write_labels as _write
    if isinstance(data, Sequence):  # a multiscale layer's levels: its full resolution (the pyramid is made anew)
        data = data[0]
    prov = (meta.get("metadata") or {}).get("panoptem")
    if isinstance(prov, dict):
        prov = {**prov, "saved_from": "a napari labels layer (its labels may have been edited since)"}
    out = _write(path, data, voxel_size=voxel_size_from_meta(meta, data.ndim), overwrite=True,
                 origin=origin_from_meta(meta, data.ndim), provenance=prov if isinstance(prov, dict) else None)
    return [str(out)]
