"""Write a segmentation (and optionally its image) as a dataset-like folder (no Qt)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..errors import PanoptemError
from ..io.writers import FORMATS


def parse_voxel_size(text: str, ndim: int) -> tuple[float, ...] | None:
    """``"40, 5, 5"`` -> (40.0, 5.0, 5.0); empty -> None; a wrong count or a non-number is refused."""
    text = text.strip()
    if not text:
        return None
    try:
        vs = tuple(float(v) for v in text.replace(";", ",").split(","))
    except ValueError:
        raise PanoptemError(f"Voxel size '{text}' is not numbers; write it like '40, 5, 5' (nm).") from None
    if len(vs) != ndim or not all(np.isfinite(v) and v > 0 for v in vs):
        raise PanoptemError(f"Voxel size needs {ndim} positive numbers (nm, ordered like the axes), got '{text}'.")
    return vs


def export_segmentation(folder, name: str, labels, image=None, voxel_size=None, fmt: str = "tiff",
                        slices: bool = False, meshes: bool = False, origin=None) -> list[Path]:
    """Write ``labels`` to ``<folder>/<name>/masks`` (and ``image`` to ``.../images``) as TIFF
    or Zarr: one file ``<name>.<ext>``, or with ``slices`` one 2D file ``<name>_<z:04d>.<ext>``
    per plane of a 3D array; with ``meshes``, the surface of every object of a 3D array as
    ``.../meshes/<label>.ply`` (x, y, z in nm from ``origin``, see :func:`panoptem.export_meshes`).
    Returns the files written; an existing ``<folder>/<name>`` is refused."""
    from ..io import write_image, write_labels
    if fmt not in FORMATS:
        raise PanoptemError(f"Format must be one of {', '.join(FORMATS)}, not '{fmt}'.")
    name = name.strip()
    if not name or name in (".", "..") or Path(name).name != name:
        raise PanoptemError("Fill in a name for the export folder: without '/', and not '.' or '..'.")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise PanoptemError(f"{folder} is a file, not a folder; choose a folder for the export.")
    root = folder / name
    if root.exists():
        raise PanoptemError(f"{root} already exists; choose another name or folder.")
    if image is not None and tuple(image.shape) != tuple(labels.shape):
        raise PanoptemError(f"The image has shape {tuple(image.shape)} but the labels {tuple(labels.shape)}; "
                            "choose the image the labels were made on.")
    if slices and labels.ndim != 3:
        raise PanoptemError("2D slices need a 3D labels layer; untick 2D slices for a 2D one.")
    if meshes and labels.ndim != 3:
        raise PanoptemError("Surface meshes are made of 3D objects; untick Surface meshes for a 2D labels layer.")
    ext = FORMATS[fmt]
    if slices:
        vs = None if voxel_size is None else tuple(voxel_size)[1:]
        items = [(f"{name}_{z:04d}{ext}", z) for z in range(labels.shape[0])]
    else:
        vs, items = voxel_size, [(f"{name}{ext}", None)]
    written = []
    try:
        root.mkdir(parents=True)  # this export's own folder: the only one removed if it fails
    except OSError as e:
        raise PanoptemError(f"Cannot make the export folder {root} ({e.strerror or e}); choose another name "
                            "or a folder you can write to.") from None
    try:
        for sub, arr, write in (("masks", labels, write_labels), ("images", image, write_image)):
            if arr is None:
                continue
            (root / sub).mkdir()
            for fname, z in items:
                written.append(write(root / sub / fname, np.asarray(arr if z is None else arr[z]), voxel_size=vs))
        if meshes:
            from ..meshes import export_meshes
            res = export_meshes(np.asarray(labels), root / "meshes", voxel_size=voxel_size, origin=origin)
            written += [root / "meshes" / o["file"] for o in res["objects"]]
    except BaseException:  # nothing half-written stays to block the next try
        shutil.rmtree(root, ignore_errors=True)
        raise
    return written
