"""Create / Merge Tiles: cut a large 2D image (and its mask) into square tiles to annotate or
process one at a time, and put the tiles (masks painted meanwhile) back together.

A tile folder holds ``images/Y_X.tif`` (Y, X: the tile's first pixel), ``masks/Y_X.tif`` when a
mask was given (or painted later: a missing mask tile is background) and ``tiles.json``, which
says how to put them back. Edge tiles are padded with 0 to the full tile size (panoptem takes
such zero squares for padding); merging cuts the padding off again. The image keeps its dtype;
masks are written as panoptem writes labels (uint32, uint64 where ids need it).
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np

from ._atomic import check_output, exclusive_output, move_into_place, write_text
from .errors import PanoptemError

#: the record of a tile folder
RECORD = "tiles.json"


def _tile_name(y: int, x: int, width: int) -> str:
    return f"{y:0{width}d}_{x:0{width}d}.tif"


def _two_d(img, what: str):
    if img.data.ndim != 2:
        raise PanoptemError(f"Tiles are cut from a 2D image; the {what} has shape {tuple(img.data.shape)}. For "
                            "volumes use segment3d --blockwise, or pick patches.")
    return img.data


def create_tiles(image, out_dir, tile_size: int = 512, mask=None, overwrite: bool = False) -> list[Path]:
    """Cut a 2D image (a path, read lazily: a BigTIFF is never held whole) and its optional mask
    into ``tile_size`` squares in ``out_dir`` (see the module's docstring); returns the image tiles.
    An existing tile folder is replaced only with ``overwrite``."""
    from .io import read_image, write_image, write_labels
    from .params import is_whole
    if not is_whole(tile_size) or not 16 <= int(tile_size) <= 100_000:
        raise PanoptemError(f"Tile size must be a whole number of pixels from 16 to 100000, not {tile_size}.")
    size = int(tile_size)
    img = read_image(image)
    data = _two_d(img, "image")
    m = None
    if mask is not None:
        m = _two_d(read_image(mask), "mask")
        if tuple(m.shape) != tuple(data.shape):
            raise PanoptemError(f"The mask has shape {tuple(m.shape)} but the image {tuple(data.shape)}; give the "
                                "image's mask.")
        if np.dtype(m.dtype).kind not in "uib":
            raise PanoptemError(f"The mask has dtype {m.dtype}; give integer labels.")
    out = Path(out_dir).expanduser()
    inputs = [image] + ([mask] if mask is not None else [])
    if (out.exists() or out.is_symlink()) and not (out.is_dir() and not any(out.iterdir())):
        if not overwrite:
            raise PanoptemError(f"'{out}' already exists; choose another folder or pass --overwrite.")
        if not (out.is_dir() and (out / RECORD).is_file()):
            raise PanoptemError(f"'{out}' is not a tile folder ({RECORD} is missing); --overwrite replaces only "
                                "a tile folder: choose another folder.")
    check_output(out, overwrite=True, inputs=inputs)  # never an input, nor inside one
    h, w = data.shape
    width = len(str(max(h, w)))
    vs = img.voxel_size
    names = []
    with exclusive_output(out):  # made aside, then moved into place: never half a tile folder
        tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.part"
        try:
            for y in range(0, h, size):
                for x in range(0, w, size):
                    names.append(_tile_name(y, x, width))
                    tile = np.zeros((size, size), data.dtype)
                    part = np.asarray(data[y:y + size, x:x + size])
                    tile[:part.shape[0], :part.shape[1]] = part
                    write_image(tmp / "images" / names[-1], tile, voxel_size=vs)
                    if m is not None:
                        lab = np.zeros((size, size), m.dtype)
                        lab[:part.shape[0], :part.shape[1]] = np.asarray(m[y:y + size, x:x + size])
                        write_labels(tmp / "masks" / names[-1], lab, voxel_size=vs)
            record = {"format": "panoptem tiles", "version": 1, "shape": [h, w], "tile_size": size,
                      "image_dtype": str(np.dtype(data.dtype)), "voxel_size": list(vs) if vs else None,
                      "image": str(Path(image).name), "tiles": names}
            write_text(tmp / RECORD, json.dumps(record, indent=1))
            move_into_place(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [out / "images" / n for n in names]


def _record(folder: Path) -> dict:
    f = folder / RECORD
    if not f.is_file():
        raise PanoptemError(f"'{folder}' holds no {RECORD}: it is not a tile folder made by create_tiles "
                            "(panoptem tiles create).")
    try:
        rec = json.loads(f.read_text())
        h, w = (int(v) for v in rec["shape"])
        size = int(rec["tile_size"])
        names = [str(n) for n in rec["tiles"]]
        np.dtype(rec["image_dtype"])
        vs = rec.get("voxel_size")
        if vs is not None and (not isinstance(vs, list) or len(vs) != 2):
            raise ValueError("voxel_size")
        rec["voxel_size"] = None if vs is None else tuple(float(v) for v in vs)
    except (OSError, ValueError, KeyError, TypeError):
        raise PanoptemError(f"{f} is damaged; cut the tiles again.") from None
    if h < 1 or w < 1 or size < 1:
        raise PanoptemError(f"{f} is damaged; cut the tiles again.")
    return {**rec, "shape": (h, w), "tile_size": size, "tiles": names}


def _place(name: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in Path(name).stem.split("_"))
    except ValueError:
        raise PanoptemError(f"Tile '{name}' is not named Y_X.tif; keep the names create_tiles gave.") from None
    return y, x


def merge_tiles(folder, out_dir, overwrite: bool = False) -> dict[str, Path]:
    """Put the tiles of ``folder`` back together: ``out_dir/image.tif`` in the image's dtype and,
    where the folder has masks, ``out_dir/mask.tif`` (tiles without a mask are background).
    Returns the files written by kind."""
    from ._memory import check_fits
    from .io.readers import read_plane
    from .training.dataset import label_mask
    src = Path(folder).expanduser()
    rec = _record(src)
    (h, w), size = rec["shape"], rec["tile_size"]
    masks_dir = src / "masks"
    have_masks = masks_dir.is_dir() and any(masks_dir.iterdir())
    check_fits(h * w * (np.dtype(rec["image_dtype"]).itemsize + 4 * have_masks),
               f"Merging {h} x {w} tiles (the image{' and its mask' if have_masks else ''}, held in memory)",
               "merge on a machine with more memory, or use the tiles as they are.")
    image = np.zeros((h, w), np.dtype(rec["image_dtype"]))
    mask = np.zeros((h, w), np.uint32) if have_masks else None
    for name in rec["tiles"]:
        y, x = _place(name)
        if not (0 <= y < h and 0 <= x < w):
            raise PanoptemError(f"Tile '{name}' lies outside the {h} x {w} image; keep the names create_tiles gave.")
        cut = (slice(y, min(y + size, h)), slice(x, min(x + size, w)))
        need = (cut[0].stop - y, cut[1].stop - x)
        for kind, dest in (("images", image), ("masks", mask)):
            if dest is None:
                continue
            f = src / kind / name
            if not f.is_file():
                if kind == "images":
                    raise PanoptemError(f"Image tile {f} is missing; cut the tiles again.")
                continue  # not painted: background
            tile = read_plane(str(f))
            if tile.shape != (size, size):
                raise PanoptemError(f"{f} is {tile.shape[0]} x {tile.shape[1]} pixels, not the {size} x {size} it "
                                    "was cut as; keep the tiles' size.")
            tile = tile[:need[0], :need[1]]
            if kind == "masks":
                tile = label_mask(tile, f"Mask tile {f}")  # whole-numbered floats (as Fiji saves) are labels too
                if mask.dtype == np.uint32 and tile.size and int(tile.max()) > np.iinfo(np.uint32).max:
                    mask = dest = mask.astype(np.uint64)  # ids past 32 bits: the whole mask in 64
            dest[cut] = tile
    out = Path(out_dir).expanduser()
    targets = {"image": out / "image.tif"}
    if mask is not None:
        targets["mask"] = out / "mask.tif"
    for p in targets.values():
        check_output(p, overwrite, inputs=[src])
    vs = rec["voxel_size"]
    from contextlib import ExitStack

    from .io.writers import fill, label_dtype, open_image_writer, open_label_writer
    with ExitStack() as stack:  # both complete before either is moved into place: an old pair stays a pair
        writers = {"image": stack.enter_context(open_image_writer(targets["image"], image.shape, image.dtype, vs,
                                                                  overwrite, [src]))}
        fill(writers["image"], image)
        if mask is not None:
            writers["mask"] = stack.enter_context(open_label_writer(targets["mask"], mask.shape, label_dtype(mask),
                                                                    vs, None, overwrite, [src]))
            fill(writers["mask"], mask)
        for w in writers.values():
            w.finish()
    return {k: w.path for k, w in writers.items()}
