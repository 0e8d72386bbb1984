"""Per-object measurements of a 3D label volume, block by block on Dask.

Every block adds up, per label in its core, the voxel count, coordinate sums
and second moments, bounding box and intensity sum, and the part of the
object's surface mesh that lies in its core (the mesh is traced on the
block's core plus a halo wide enough for the smoothing, and a triangle
belongs to the block holding its first corner). Summed over blocks these
give exactly the columns of :func:`panoptem.measure` (up to float rounding).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import marching_cubes, mesh_surface_area

from ..errors import PanoptemError
from ..labels import nonzero_ids
from ._source import VolumeSource, read_region
from .blocks import Block, BlockGrid

HALO = 4  # >= the smoothing's reach (3 voxels) + 1
#: an object's part of at most this many voxels in a block also gets its binary mesh in the first
#: pass (cheap); a larger part only where the smoothing eats it here, or, rarely, in a second pass
#: when the object as a whole is meshed binary (it has thin parts elsewhere)
SMALL_PART = 20_000
#: voxels per block: a block reads its core and a halo of 4, whole chunks of the labels around it, so
#: larger blocks read fewer chunks per voxel (on Lucchi's labels in 64 x 256 x 256 chunks: 6.8 CPU-s
#: in 36 blocks of 64 x 256 x 256, 4.4 in 12 of this shape)
MEASURE_BLOCK = (64, 512, 512)


def _wide(ids: np.ndarray) -> np.ndarray:
    """Ids as one 64-bit type for every block: uint64 for unsigned labels (ids past 2^63 keep
    their value and order), int64 for signed ones."""
    return ids.astype(np.uint64 if ids.dtype.kind == "u" else np.int64)


def _block_stats(job: dict, block: Block) -> dict:
    """Per label in ``block``'s core: voxel count, sums of coordinates and their products
    (absolute voxel coordinates), bounding box, intensity sum, and its surface parts. Taken
    over the core's runs of equal labels along x (:func:`panoptem._measure._runs`), as the
    in-memory measure takes them: a run's coordinate sums have closed forms."""
    from .._measure import _boxes, _runs
    lab_full = read_region(job["labels"].open(), block.region)
    lab = lab_full[block.core_in_region()]
    img = None if job["image"] is None else np.asarray(read_region(job["image"].open(), block.core))
    runs = _runs(lab, img)
    ids = nonzero_ids(runs["value"])
    if ids.size and ids[0] < 0:
        raise PanoptemError(f"The label image holds negative labels ({ids[0]} in voxels "
                            f"{tuple((s.start, s.stop) for s in block.core)}); labels must be 0 (background) "
                            "or positive.")
    out = {"label": _wide(ids)}
    out["block"] = block.index
    if job["surface"]:
        out["surface_label"], out["area"], out["area_bin"], out["kept"] = _surfaces(
            lab_full, block, job["shape"], job["voxel_size"])
    if ids.size == 0:
        return out
    n = ids.size
    obj = np.searchsorted(ids, runs["value"])
    origin = [s.start for s in block.core]
    L = runs["length"].astype(np.float64)
    out["count"] = np.bincount(obj, L, minlength=n).astype(np.int64)
    lo, hi = _boxes(runs, obj, n, 3)
    z, y, x = ((runs[ax] + o).astype(np.float64) for ax, o in zip("zyx", origin))
    sx = L * x + L * (L - 1) / 2  # sum of x .. x+L-1 over a run
    sxx = L * x ** 2 + x * L * (L - 1) + (L - 1) * L * (2 * L - 1) / 6
    weights = {"s_z": z * L, "s_y": y * L, "s_x": sx, "s_00": z * z * L, "s_01": z * y * L, "s_02": z * sx,
               "s_11": y * y * L, "s_12": y * sx, "s_22": sxx}
    for k, w in weights.items():
        out[k] = np.bincount(obj, w, minlength=n)
    for a, ax in enumerate("zyx"):
        out[f"lo_{ax}"], out[f"hi_{ax}"] = lo[:, a] + origin[a], hi[:, a] + origin[a]
    if img is not None:
        out["s_int"] = np.bincount(obj, runs["intensity"], minlength=n)
        out["s_fin"] = np.bincount(obj, runs["finite"], minlength=n)
    return out


def _meeting(lab: np.ndarray, cells: tuple[slice, ...]) -> tuple[np.ndarray, list[tuple[slice, ...]]]:
    """The labels of ``lab`` that meet the box ``cells``, and each one's bounding box in ``lab``."""
    from .._measure import _boxes, _runs
    runs = _runs(lab, None)
    (z0, z1), (y0, y1), (x0, x1) = ((c.start, c.stop) for c in cells)
    meet = ((runs["z"] >= z0) & (runs["z"] < z1) & (runs["y"] >= y0) & (runs["y"] < y1)
            & (runs["x"] < x1) & (runs["x"] + runs["length"] > x0))
    ids = nonzero_ids(runs["value"][meet])
    at = np.minimum(np.searchsorted(ids, runs["value"]), max(ids.size - 1, 0))
    mine = ids[at] == runs["value"] if ids.size else np.zeros(runs["value"].shape, bool)
    lo, hi = _boxes({k: v[mine] for k, v in runs.items()}, at[mine], ids.size, 3)
    return ids, [tuple(slice(int(a), int(b)) for a, b in zip(l, h)) for l, h in zip(lo, hi)]


def _surfaces(lab: np.ndarray, block: Block, shape, vs, binary_of=None):
    """Per label meeting this block's mesh cells (its core and one voxel on): the smoothed-mesh
    area of the cells this block owns, the binary-mesh area (for small parts and where the
    smoothing eats the part, :func:`~panoptem._measure.smooth_keeps`; NaN otherwise) and how many
    of the object's voxels in the core the smoothing keeps. ``binary_of``: only the binary-mesh
    areas of these labels (the second pass)."""
    from .._measure import _PAD, _SIGMA, smooth_keeps
    # zero padding where the region ends at the volume's border (the in-memory measure pads crops)
    pad = [(_PAD if r.start == 0 else 0, _PAD if r.stop == n else 0) for r, n in zip(block.region, shape)]
    lab = np.pad(lab, pad)
    core = [slice(c.start - r.start + p[0], c.stop - r.start + p[0]) for c, r, p in zip(block.core, block.region, pad)]
    ids, boxes = _meeting(lab, tuple(slice(c.start, c.stop + 1) for c in core))
    if binary_of is not None:
        keep = np.isin(ids, binary_of)
        ids, boxes = ids[keep], [b for b, k in zip(boxes, keep) if k]
    reach = _PAD + 1
    area = np.zeros(ids.size)
    area_bin = np.full(ids.size, np.nan)
    kept = np.zeros(ids.size, np.int64)
    for i, box in enumerate(boxes):
        sl = tuple(slice(max(0, b.start - reach), min(n, b.stop + reach)) for b, n in zip(box, lab.shape))
        mask = (lab[sl] == ids[i]).astype(np.float32)
        # cells this block owns; at the volume's border also those of the zero padding
        mine = [slice(-reach if b.start == 0 else c.start - s.start, lab.shape[a] if b.stop == n else c.stop - s.start)
                for a, (c, s, b, n) in enumerate(zip(core, sl, block.core, shape))]
        if binary_of is not None:
            area_bin[i] = _area_in(mask, mine, vs)
            continue
        smooth = ndimage.gaussian_filter(mask, _SIGMA, mode="constant")
        sub = tuple(slice(max(c.start, s.start) - s.start, max(min(c.stop, s.stop) - s.start, 0))
                    for c, s in zip(core, sl))
        voxels = np.count_nonzero(mask[sub])
        kept[i] = np.count_nonzero((smooth[sub] > 0.5) & (mask[sub] > 0))
        area[i] = _area_in(smooth, mine, vs)
        if voxels <= SMALL_PART or not smooth_keeps(kept[i], voxels):
            area_bin[i] = _area_in(mask, mine, vs)
    if binary_of is not None:
        return _wide(ids), area_bin
    return _wide(ids), area, area_bin, kept


def _binary_areas(job: dict, item) -> dict:
    """The second pass of a block: binary-mesh areas of the labels ``item[1]``."""
    block, labels = item
    lab_full = read_region(job["labels"].open(), block.region)
    ids, area_bin = _surfaces(lab_full, block, job["shape"], job["voxel_size"], binary_of=labels)
    return {"block": block.index, "surface_label": ids, "area_bin": area_bin}


def _missing_binary(parts: list[dict]) -> dict[int, np.ndarray]:
    """Per block index, the labels meshed binary as a whole (:func:`~panoptem._measure.smooth_keeps`
    of their summed counts) whose binary area that block left out."""
    from .._measure import smooth_keeps
    parts = [p for p in parts if "surface_label" in p]
    if not parts:
        return {}
    sl = np.concatenate([p["surface_label"] for p in parts])
    ids, inv = np.unique(sl, return_inverse=True)
    kept = np.bincount(inv, np.concatenate([p["kept"] for p in parts]), minlength=ids.size)
    counted = [p for p in parts if "count" in p]
    voxels = np.zeros(ids.size)
    if counted:
        cl = np.concatenate([p["label"] for p in counted])
        np.add.at(voxels, np.searchsorted(ids, cl), np.concatenate([p["count"] for p in counted]))
    binary = ids[~smooth_keeps(kept, voxels)]
    todo = {}
    for p in parts:
        gap = p["surface_label"][np.isnan(p["area_bin"]) & np.isin(p["surface_label"], binary)]
        if gap.size:
            todo[p["block"]] = gap
    return todo


def _area_in(vol: np.ndarray, core, vs) -> float:
    """Area of the level-0.5 mesh of ``vol`` whose triangles start in ``core``."""
    if vol.max() <= 0.5 or vol.min() >= 0.5:
        return 0.0
    verts, faces, _, _ = marching_cubes(vol, level=0.5, spacing=(1.0, 1.0, 1.0))
    first = np.floor(verts[faces].min(axis=1) + 1e-6).astype(np.int64)  # the cell a triangle lies in
    own = np.all([(first[:, a] >= core[a].start) & (first[:, a] < core[a].stop) for a in range(3)], axis=0)
    if not own.any():
        return 0.0
    return float(mesh_surface_area(verts * np.asarray(vs, np.float64), faces[own]))


def measure_blockwise(labels, voxel_size=None, image=None, label_divisor: int | None = None,
                      surface: bool = True, block_shape=MEASURE_BLOCK, n_workers: int | None = None,
                      scheduler: str | None = None, client=None, processes: bool = True,
                      progress: bool = False, key: str | None = None,
                      image_key: str | None = None) -> dict[str, np.ndarray]:
    """:func:`panoptem.measure` of a 3D label volume (a path, read lazily by the
    workers, or an array), computed block by block on Dask; same columns. ``key``,
    ``image_key``: the dataset inside an HDF5 / Zarr / N5 labels or image file.

    For example::

        table = measure_blockwise("mito.zarr", voxel_size=(5, 5, 5), n_workers=2)
    """
    from ..io import read_image
    from .._measure import _voxel_size
    from ._cluster import check_cluster, check_not_bootstrapping
    from .blocks import triple
    check_not_bootstrapping()
    check_cluster(n_workers, scheduler, client)
    if isinstance(labels, (str,)) or hasattr(labels, "__fspath__"):
        img = read_image(str(labels), key=key)
        src, shape, vs_file = VolumeSource(path=str(labels), key=key), img.shape, img.voxel_size
        dtype = img.data.dtype
    else:
        src, shape, vs_file, dtype = VolumeSource(array=labels), labels.shape, None, labels.dtype
    if len(shape) != 3:
        raise PanoptemError(f"Blockwise measurement needs a 3D label volume, not shape {tuple(shape)}.")
    if np.dtype(dtype).kind not in "ui":
        raise PanoptemError(f"Labels must be integers, not {dtype}; convert them first.")
    vs = _voxel_size(voxel_size if voxel_size is not None else vs_file, 3)
    isrc = None
    if image is not None:
        if isinstance(image, str) or hasattr(image, "__fspath__"):
            ii = read_image(str(image), key=image_key)
            isrc, ishape = VolumeSource(path=str(image), key=image_key), ii.shape
        else:
            isrc, ishape = VolumeSource(array=image), image.shape
        if tuple(ishape) != tuple(shape):
            raise PanoptemError(f"The image has shape {tuple(ishape)} but the labels have shape {tuple(shape)}; "
                                "give an image of the same size as the labels.")
    if label_divisor is not None and int(label_divisor) < 1:
        raise PanoptemError(f"label_divisor must be a positive integer or None, not {label_divisor}.")
    grid = BlockGrid(shape, triple(block_shape, "--block-shape"), (HALO if surface else 0,) * 3)
    job = {"labels": src, "image": isrc, "surface": surface, "shape": tuple(shape), "voxel_size": tuple(vs)}
    from ._cluster import callers_client, check_workers_see, client_for, run_tasks
    with (callers_client(client) if client is not None else
          client_for(n_workers, scheduler, processes=processes)) as cl:
        check_workers_see(cl, [src.path, isrc.path if isrc is not None else None])
        parts = run_tasks(cl, _block_stats, job, list(grid), "measuring", progress)
        todo = _missing_binary(parts) if surface else {}
        if todo:
            blocks = list(grid)
            parts += run_tasks(cl, _binary_areas, job, [(blocks[i], labs) for i, labs in todo.items()],
                               "measuring thin objects", False)
    return _combine(parts, vs, surface, image is not None, label_divisor, dtype)


def _combine(parts: list[dict], vs, surface: bool, intensity: bool, label_divisor, dtype) -> dict:
    parts = [p for p in parts if "count" in p or "surface_label" in p]
    counted = [p for p in parts if "count" in p]
    all_ids = np.concatenate([p["label"] for p in counted]) if counted else np.zeros(0, np.int64)
    ids, inv = np.unique(all_ids, return_inverse=True)
    n = ids.size

    def total(k):
        return np.bincount(inv, np.concatenate([p[k] for p in counted]), minlength=n) if n else np.zeros(0)

    def ext(k, fn, fill):
        v = np.full(n, fill, np.int64)
        if n:
            fn.at(v, inv, np.concatenate([p[k] for p in counted]))
        return v

    count = total("count").astype(np.int64)
    cnt = np.maximum(count, 1)
    mean = np.stack([total(f"s_{ax}") / cnt for ax in "zyx"], axis=1) if n else np.zeros((0, 3))
    cov = np.zeros((n, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            cov[:, a, b] = cov[:, b, a] = total(f"s_{a}{b}") / cnt - mean[:, a] * mean[:, b]
    lo = np.stack([ext(f"lo_{ax}", np.minimum, np.iinfo(np.int64).max) for ax in "zyx"], axis=1) if n else \
        np.zeros((0, 3), np.int64)
    hi = np.stack([ext(f"hi_{ax}", np.maximum, 0) for ax in "zyx"], axis=1) if n else np.zeros((0, 3), np.int64)
    out_dtype = np.dtype(dtype) if np.dtype(dtype).kind == "u" else np.dtype(np.int64)
    table = {"label": ids.astype(out_dtype)}
    table["class_id"] = (ids // int(label_divisor) if label_divisor is not None else np.ones(n, np.int64)
                         ).astype(out_dtype)
    table["voxels"] = count
    size = count * float(np.prod(vs))
    table["volume_nm3"] = size
    for a, ax in enumerate("zyx"):
        table[f"centroid_{ax}_nm"] = mean[:, a] * vs[a]
    for a, ax in enumerate("zyx"):
        table[f"bbox_min_{ax}"] = lo[:, a]
    for a, ax in enumerate("zyx"):
        table[f"bbox_max_{ax}"] = hi[:, a]
    for a, ax in enumerate("zyx"):
        table[f"extent_{ax}_nm"] = (hi[:, a] - lo[:, a]) * vs[a]
    table["equivalent_diameter_nm"] = np.cbrt(6.0 * size / np.pi)
    phys = cov * np.outer(vs, vs)
    eig = np.clip(np.linalg.eigvalsh(phys) if n else np.zeros((0, 3)), 0, None)
    table["major_axis_length_nm"] = np.sqrt(20.0 * eig[:, -1])
    table["minor_axis_length_nm"] = np.sqrt(20.0 * eig[:, 0])
    if surface:
        kept = np.zeros(n, np.int64)
        area = np.zeros(n)
        area_bin = np.zeros(n)
        first = [p for p in parts if "kept" in p]
        second = [p for p in parts if "surface_label" in p and "kept" not in p]  # binary areas only
        for group, cols in ((first, {"kept": kept, "area": area, "area_bin": area_bin}), (second, {"area_bin": area_bin})):
            if group:
                j = np.searchsorted(ids, np.concatenate([p["surface_label"] for p in group]))
                for k, column in cols.items():
                    np.add.at(column, j, np.nan_to_num(np.concatenate([p[k] for p in group])))
        from .._measure import smooth_keeps
        boundary = np.where(smooth_keeps(kept, count), area, area_bin)
        table["surface_area_nm2"] = boundary
        with np.errstate(divide="ignore", invalid="ignore"):
            table["sphericity"] = np.where(boundary > 0, np.cbrt(np.pi) * np.cbrt(6.0 * size) ** 2 / boundary, 0.0)
    if intensity:
        from .._measure import mean_intensity
        table["mean_intensity"] = mean_intensity(total("s_int"), total("s_fin"))
    return table
