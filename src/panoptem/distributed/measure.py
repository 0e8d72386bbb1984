"""Per-object measurements of a 3D label volume, block by block on Dask.

Every block adds up, per label in its core, the voxel count, coordinate sums
and second moments, bounding box and intensity sum, and per label within the
smoothing's reach of its core, the sums that give the level of the object's
surface mesh (:func:`panoptem._measure.level_sums`). A second pass meshes each
object at its level on the block's core plus a halo wide enough for the
smoothing (a triangle belongs to the block holding its first corner). Summed
over blocks these give the columns of :func:`panoptem.measure` (up to float
rounding).
"""
from __future__ import annotations

import numpy as np
from skimage.measure import marching_cubes, mesh_surface_area

from ..errors import PanoptemError
from ..labels import nonzero_ids
from ._source import VolumeSource, read_region
from .blocks import Block, BlockGrid

#: voxels per block: a block reads its core and a halo (the surface smoothing's margin), whole
#: chunks of the labels around it, so larger blocks read fewer chunks per voxel (on Lucchi's labels
#: in 64 x 256 x 256 chunks: 6.8 CPU-s in 36 blocks of 64 x 256 x 256, 4.4 in 12 of this shape)
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
        out.update(_level_parts(lab_full, block, job["shape"], job["voxel_size"]))
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


def _padded(lab: np.ndarray, block: Block, shape, vs):
    """The block's region of the labels, zero-padded by the smoothing's margin where it ends at
    the volume's border (the in-memory measure pads each crop so), and the voxels this block
    owns in it: its core, and at the volume's border the padding past it."""
    from .._measure import smoothing
    margin = smoothing(vs)[1]
    pad = [(int(m) if r.start == 0 else 0, int(m) if r.stop == n else 0)
           for m, r, n in zip(margin, block.region, shape)]
    lab = np.pad(lab, pad)
    own = tuple(slice(0 if c.start == 0 else c.start - r.start + p[0],
                      lab.shape[a] if c.stop == n else c.stop - r.start + p[0])
                for a, (c, r, p, n) in enumerate(zip(block.core, block.region, pad, shape)))
    return lab, own, margin


def _near(lab: np.ndarray, own, margin):
    """The labels with voxels within the smoothing's margin of the owned voxels, each one's
    crop (its box in ``lab`` widened by the margin) and the owned voxels in that crop."""
    near = tuple(slice(max(0, o.start - int(m)), min(n, o.stop + int(m))) for o, m, n in zip(own, margin, lab.shape))
    ids, boxes = _meeting(lab, near)
    for label, box in zip(ids, boxes):
        sl = tuple(slice(max(0, b.start - int(m)), min(n, b.stop + int(m))) for b, m, n in zip(box, margin, lab.shape))
        mine = tuple(slice(max(o.start, c.start) - c.start, max(min(o.stop, c.stop) - c.start, 0))
                     for o, c in zip(own, sl))
        yield label, sl, mine


def _level_parts(lab: np.ndarray, block: Block, shape, vs) -> dict:
    """Pass 1's surface part of a block: per label near its owned voxels, the
    :func:`~panoptem._measure.level_sums` and the smoothed peak over them (sparse: the bins
    where the sums are not all 0)."""
    from .._measure import level_sums, smooth_mask
    lab, own, margin = _padded(lab, block, shape, vs)
    labels, peaks, at, bins, sums = [], [], [], [], []
    for i, (label, sl, mine) in enumerate(_near(lab, own, margin)):
        smooth = smooth_mask((lab[sl] == label).astype(np.float32), vs)
        part = level_sums(smooth, mine)
        used = np.flatnonzero(part.any(axis=0))
        labels.append(label)
        peaks.append(float(smooth[mine].max()) if smooth[mine].size else 0.0)
        at.append(np.full(used.size, i, np.int64))
        bins.append(used)
        sums.append(part[:, used])
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
    return {"surface_label": _wide(np.asarray(labels, lab.dtype)), "peak": np.asarray(peaks, np.float64),
            "level_at": cat(at, np.int64), "level_bin": cat(bins, np.int64),
            "level_sums": np.concatenate(sums, axis=1) if sums else np.zeros((5, 0))}


def _levels(parts: list[dict], ids: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Each label's mesh level from the blocks' sums (:func:`~panoptem._measure.volume_level`;
    NaN: meshed unsmoothed)."""
    from .._measure import _LEVEL_BINS, volume_level
    parts = [p for p in parts if "surface_label" in p]
    levels = np.full(ids.size, np.nan)
    if not parts:
        return levels
    j = np.concatenate([np.searchsorted(ids, p["surface_label"])[p["level_at"]] for p in parts])
    bins = np.concatenate([p["level_bin"] for p in parts])
    sums = np.concatenate([p["level_sums"] for p in parts], axis=1)
    peak = np.zeros(ids.size)
    for p in parts:
        np.maximum.at(peak, np.searchsorted(ids, p["surface_label"]), p["peak"])
    if not j.size:
        return levels
    order = np.argsort(j, kind="stable")
    j, bins, sums = j[order], bins[order], sums[:, order]
    starts = np.flatnonzero(np.r_[True, np.diff(j) != 0])
    for a, b in zip(starts, np.r_[starts[1:], j.size]):
        dense = np.zeros((5, _LEVEL_BINS))
        np.add.at(dense, (slice(None), bins[a:b]), sums[:, a:b])
        level = volume_level(dense, peak[j[a]], count[j[a]])
        levels[j[a]] = np.nan if level is None else level
    return levels


def _block_areas(job: dict, item) -> dict:
    """Pass 2 of a block: the area of each label's mesh (at its level, ``item[1]``: label ->
    level, NaN for the unsmoothed mask at 0.5) in the cells this block owns."""
    from .._measure import smooth_mask
    block, levels = item
    lab, own, margin = _padded(read_region(job["labels"].open(), block.region), block, job["shape"],
                               job["voxel_size"])
    vs = job["voxel_size"]
    labels, areas = [], []
    for label, sl, mine in _near(lab, own, margin):
        level = levels.get(int(label))
        if level is None:
            continue
        mask = (lab[sl] == label).astype(np.float32)
        vol, level = (mask, 0.5) if np.isnan(level) else (smooth_mask(mask, vs), level)
        labels.append(label)
        areas.append(_area_in(vol, mine, vs, level))
    return {"area_label": _wide(np.asarray(labels, lab.dtype)), "area": np.asarray(areas, np.float64)}


def _area_in(vol: np.ndarray, cells, vs, level: float) -> float:
    """Area of the mesh of ``vol`` at ``level`` whose triangles start in ``cells``."""
    if vol.max() <= level or vol.min() >= level:
        return 0.0
    verts, faces, _, _ = marching_cubes(vol, level=level, spacing=(1.0, 1.0, 1.0))
    first = np.floor(verts[faces].min(axis=1) + 1e-6).astype(np.int64)  # the cell a triangle lies in
    mine = np.all([(first[:, a] >= cells[a].start) & (first[:, a] < cells[a].stop) for a in range(3)], axis=0)
    if not mine.any():
        return 0.0
    return float(mesh_surface_area(verts * np.asarray(vs, np.float64), faces[mine]))


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
    from .._measure import smoothing
    grid = BlockGrid(shape, triple(block_shape, "--block-shape"),
                     tuple(int(m) for m in smoothing(vs)[1]) if surface else (0, 0, 0))
    job = {"labels": src, "image": isrc, "surface": surface, "shape": tuple(shape), "voxel_size": tuple(vs)}
    from ._cluster import callers_client, check_workers_see, client_for, run_tasks
    with (callers_client(client) if client is not None else
          client_for(n_workers, scheduler, processes=processes)) as cl:
        check_workers_see(cl, [src.path, isrc.path if isrc is not None else None])
        parts = run_tasks(cl, _block_stats, job, list(grid), "measuring", progress)
        if surface:
            ids, count = _counts(parts)
            levels = dict(zip(ids.tolist(), _levels(parts, ids, count).tolist()))
            blocks = {p["block"]: p for p in parts}
            todo = [(b, {int(k): levels[int(k)] for k in blocks[b.index]["surface_label"]}) for b in grid]
            parts += run_tasks(cl, _block_areas, job, [t for t in todo if t[1]], "meshing surfaces", progress)
    return _combine(parts, vs, surface, image is not None, label_divisor, dtype)


def _counts(parts: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Every label and its voxel count, from pass 1's parts."""
    counted = [p for p in parts if "count" in p]
    if not counted:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ids, inv = np.unique(np.concatenate([p["label"] for p in counted]), return_inverse=True)
    return ids, np.bincount(inv, np.concatenate([p["count"] for p in counted]), minlength=ids.size).astype(np.int64)


def _combine(parts: list[dict], vs, surface: bool, intensity: bool, label_divisor, dtype) -> dict:
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
        boundary = np.zeros(n)
        meshed = [p for p in parts if "area_label" in p]
        if meshed:
            np.add.at(boundary, np.searchsorted(ids, np.concatenate([p["area_label"] for p in meshed])),
                      np.concatenate([p["area"] for p in meshed]))
        table["surface_area_nm2"] = boundary
        with np.errstate(divide="ignore", invalid="ignore"):
            table["sphericity"] = np.where(boundary > 0, np.cbrt(np.pi) * np.cbrt(6.0 * size) ** 2 / boundary, 0.0)
    if intensity:
        from .._measure import mean_intensity
        table["mean_intensity"] = mean_intensity(total("s_int"), total("s_fin"))
    return table
