"""Blockwise 3D segmentation on Dask: volumes larger than memory, on one
machine or a cluster, resumable, with the objects of a whole-volume run.

Passes (each a set of block tasks on the cluster):

1. per block: network, running median and 2D decoding with a halo; the
   block's core is kept as provisional pieces, with additive statistics
   (see :mod:`._pass1`);
2. per face: pieces that touch across block faces (see :mod:`._stitch`);
   then, once, on the client: pieces joined into 2D objects and the slice
   linker solved over the whole volume, size filters on the stitched objects;
3. with Fill holes, per block and per face: the background parts of each
   xy plane, joined across faces (see :mod:`._holes`);
4. per block: final ids written to the OME-Zarr output; then its pyramid.

Every finished block leaves a record in a work folder beside the output
(``.NAME.blockwise``); running the same call again after a crash skips
finished blocks and gives the same bytes. The folder is removed on success.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .._atomic import write_text
from ..errors import PanoptemError
from ..models.home import DEFAULT_MODEL
from ..models.load import LoadedModel
from ..inference.preprocess import PADDING_RULE
from ..params import DOWNSAMPLING, Params3D, make_params, zarr_chunks
from ._pass1 import (StackJob, _done, centre_block, centre_table, context_block, context_table, create_net_arrays,
                     decode_block, network_block)
from ._source import VolumeSource
from .blocks import BlockGrid, ortho_block_shape, triple

PLANE_AXIS = {"xy": 0, "xz": 1, "yz": 2}
PLANES = {v: k for k, v in PLANE_AXIS.items()}
DEFAULT_BLOCK = (64, 1024, 1024)
DEFAULT_HALO = (16, 128, 128)


@dataclass
class BlockwiseResult:
    """Outcome of :func:`segment_blockwise`: class name -> the written labels
    (opened lazily), objects per class, files written, seconds per pass."""

    labels: dict
    objects: dict
    written: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    blocks: int = 0
    skipped_blocks: int = 0
    #: the pixel sizes used (see :meth:`panoptem.inference.resample.PixelPlan.record`)
    pixel_size: dict | None = None


def _uniform_planes(cl, source: VolumeSource, grid, shape, folder: Path, volume: dict,
                    progress: bool = False) -> tuple:
    """The volume's planes of one value along Z, Y and X (see ``uniform_of``): read once, and
    kept in ``folder`` (the run's work, or its cache, which runs on other inputs may share) with
    ``volume`` (what tells the input: its stamp, content digest, shape...) for a resumed or
    re-decoding run on the same input."""
    from ..inference.preprocess import PADDING_RULE
    from ._cluster import run_tasks
    from ._pass1 import plane_ranges, uniform_of
    kept = folder / "uniform.json"
    volume = {**volume, "rule": PADDING_RULE}  # what counts as one value
    try:
        found = json.loads(kept.read_text())
        if found["volume"] == json.loads(json.dumps(volume, default=str)) and len(found["planes"]) == 3:
            return tuple(tuple(int(i) for i in a) for a in found["planes"])
    except (OSError, ValueError, TypeError, KeyError):
        pass  # none yet, another input's, or damaged: read the volume
    uniform = uniform_of(run_tasks(cl, plane_ranges, source, list(grid), "sections", progress), shape)
    write_text(kept, json.dumps({"volume": volume, "planes": [list(a) for a in uniform]}, default=str))
    return uniform


def _open_volume(volume, key):
    """(VolumeSource, lazy array, voxel size, input path or None, origin)."""
    from ..io import ImageData
    if isinstance(volume, ImageData) and volume.path:
        return (VolumeSource(path=volume.path, key=volume.key), volume.data, volume.voxel_size, volume.path,
                volume.origin)
    if isinstance(volume, (str, os.PathLike)):
        from ..io import read_image
        from ..sample import SAMPLE_PATH
        path = str(SAMPLE_PATH) if str(volume) == "sample" and not Path(volume).exists() else str(volume)
        img = read_image(path, key=key)
        return VolumeSource(path=path, key=key), img.data, img.voxel_size, path, img.origin
    arr = volume if hasattr(volume, "shape") and hasattr(volume, "dtype") else np.asarray(volume)
    return VolumeSource(array=arr), arr, None, None, None


def _card(model):
    if isinstance(model, LoadedModel):
        return model.card
    from ..models.home import get_card
    return get_card(str(model))


def _blockwise_plan(p: Params3D, card, voxel_size, given_by: str = "file"):
    """The pixel plan of a blockwise run, as a whole-volume run makes it. Its planes are either
    all reduced by one whole factor ``k`` (Image Downsampling by ``k``, the parameters' own
    included) or resampled by a fraction ``p/q`` along each axis (Z, Y, X: blocks lie on
    multiples of ``p`` volume and ``q`` network pixels). Returns the parameters, the plan's
    record, per stack axis (Z, Y, X) how many planes apart the neighbours of a model with
    ``context_slices`` lie and how many planes each network plane averages
    (:meth:`~panoptem.inference.resample.PixelPlan.stack_step`), and the fractions per axis
    (None: one whole reduction, or none)."""
    from ..inference.resample import PLANE_AXES, as_fraction, planes_of
    from ..inference.segment2d import pixel_plan
    plan = pixel_plan(card, p, voxel_size, 3, given_by)
    planes = planes_of(p)
    plan.check(planes)
    factors = [Fraction(1)] * 3
    for pl in planes:
        for ax, f in zip(PLANE_AXES[pl], plan.factor(pl)):
            factors[ax] = as_fraction(f)
    steps = tuple(plan.neighbour_step(pl) for pl in ("xy", "xz", "yz"))  # stacks along Z, Y, X
    strides = tuple(plan.stack_step(pl) if pl in planes else 1 for pl in ("xy", "xz", "yz"))
    used = {factors[ax] for pl in planes for ax in PLANE_AXES[pl]}
    # one whole reduction that Image Downsampling can name (a 3 from the pixel sizes runs as a
    # resampling by 3/1, the same planes)
    whole = len(used) == 1 and next(iter(used)).denominator == 1 and int(next(iter(used))) in DOWNSAMPLING
    d, resample = (int(next(iter(used))), None) if whole else (1, tuple(factors))
    return ((p if d == p.downsampling else p.model_copy(update={"downsampling": d})), plan.record(planes), steps,
            strides, resample)


def _input_stamp(path: str | None) -> list:
    """Size and modification time of the input (for a folder: of its top-level
    entries and metadata files, never a walk over every chunk of a large store)."""
    if path is None:
        return []
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [[p.name, st.st_size, st.st_mtime_ns]]
    out = []
    for q in sorted(p.iterdir())[:256]:
        st = q.stat()
        out.append([q.name, st.st_size if q.is_file() else 0, st.st_mtime_ns])
    return out


def _content_digest(vol, max_samples: int = 2_000_000) -> str:
    """A digest of a volume's voxels: all of them up to ``max_samples``, else the boxes that
    its intensity range is sampled from (spread over the whole volume, a few chunks to read),
    so a store rewritten in place with the same shape is told from the one a run began on."""
    import hashlib

    from ..inference.preprocess import _sample_boxes, read_boxes
    h = hashlib.blake2b(digest_size=16)
    if int(np.prod(vol.shape)) <= max_samples:
        boxes = [np.asarray(vol[...])]
    else:
        boxes = read_boxes(vol, _sample_boxes(vol.shape, max_samples))
    for b in boxes:
        h.update(np.ascontiguousarray(b).tobytes())
    return h.hexdigest()


def _open_mask(mask, shape) -> tuple[VolumeSource, list]:
    """The mask as workers open it, and its stamp; one error unless it is the volume's shape or
    smaller by whole factors (each side the volume's divided by a whole number, rounded up). A
    2D mask is one plane: it applies to every slice."""
    if hasattr(mask, "shape"):
        source, arr, stamp = VolumeSource(array=mask), mask, []
    else:
        from ..io import read_image
        arr = read_image(str(mask)).data
        source, stamp = VolumeSource(path=str(mask)), _input_stamp(str(mask))
    given = tuple(int(n) for n in arr.shape)
    if len(arr.shape) == 2:  # one plane (a file's single-plane axis is dropped when read): every slice's
        arr = np.asarray(arr[...])[None]
        source = VolumeSource(array=arr)
    m = tuple(int(n) for n in arr.shape)
    factors = [max(1, -(-n // s)) for n, s in zip(shape, m)] if len(m) == 3 and min(m) > 0 else []
    if not factors or any(-(-n // f) != s for n, s, f in zip(shape, m, factors)):
        raise PanoptemError(f"The mask's shape {given} is not the volume's {tuple(shape)} nor smaller by whole "
                            "factors (each side the volume's divided by a whole number, rounded up); give a mask "
                            "of such a shape (a 2D one applies to every slice).")
    return source, [list(m), stamp, _content_digest(arr)]


def segment_blockwise(volume, model=DEFAULT_MODEL, output=None, *, block_shape=None,
                      halo=None, n_workers: int | None = None, scheduler: str | None = None,
                      devices=None, mask=None, key: str | None = None, device: str = "auto", batch_size: int = 4,
                      skip_empty: bool = True, voxel_size=None, origin=None, chunks=None, cache_dir=None,
                      overwrite: bool = False,
                      keep_work: bool = False, processes: bool = True, progress: bool = False,
                      exact_context: bool = True, runtime: str = "auto", precision: str = "auto",
                      threads: int | None = None, verbose: bool = False, client=None, **params) -> BlockwiseResult:
    """Segment a 3D volume block by block on a Dask cluster.

    Parameters
    ----------
    volume : path of a volume (TIFF, MRC, Zarr/OME-Zarr, HDF5 with ``key``...), read
        lazily by each worker, or an array (sent to the workers).
    model : registered model name, card path, or a loaded model (only with
        ``processes=False`` or a picklable model).
    output : ``.zarr`` path: an OME-Zarr label image with a pyramid (one per class,
        ``NAME_<class>.zarr``, for several classes).
    block_shape : (Z, Y, X) voxels per block; the output chunks divide it along the axes it
        splits; rounded up to multiples of the network's grid (32 network pixels, on whole
        volume pixels: 320 for a factor 10/11). Default :data:`DEFAULT_BLOCK`, its in-plane
        sides divided by the enlargement where the network's grid is finer than the volume's
        (a coarse volume enlarged), so that the network is given tiles of the same size and
        memory; for ortho-plane runs of a thin volume, a block as deep as the volume where that
        feeds the network fewer pixels (:func:`~panoptem.distributed.blocks.ortho_block_shape`).
    halo : (Z, Y, X) context added around each block along the image axes (the
        stack axis gets what the median and linking need automatically). Default
        :data:`DEFAULT_HALO`, divided alike.
    n_workers, scheduler, devices : a LocalCluster with this many workers
        (default: from cores and memory), or a running scheduler's address;
        ``devices`` (e.g. ``["cuda:0", "cuda:1"]`` or ``"all"``) puts one worker on each.
    client : a ``distributed.Client`` of the caller's, used and left open; its worker processes
        are set up as on a running scheduler (threads, malloc arenas, ``devices``).
    voxel_size, origin : (Z, Y, X) nm per voxel and nm position of the first voxel, written with the
        labels (default: the file's; the origin as an OME-Zarr translation).
    mask : array (the volume's shape, or smaller by whole factors): blocks without
        mask are skipped, labels outside it are 0.
    skip_empty : blocks whose region holds a single value are background, without the network.
    exact_context : for networks with a global-context branch (panoptem's own), first
        gather each whole slice's context so blocks see what a whole-slice run sees
        (about 60 % more network time; off: each block's own context, slightly
        different outputs near faces).
    runtime, precision : how each worker runs the network (see :mod:`panoptem.inference.runtime`;
        ``auto``: ONNX Runtime on CPU workers, the context pass included; float16 autocast
        on GPUs).
    threads : intra-op threads of each worker's network (default: the worker's share of
        the cores).
    cache_dir : keep the network outputs there (default: in the run's work folder, removed
        on success); a later run with other thresholds then re-decodes without the network.
    **params : the fields of :class:`~panoptem.params.Params3D`; a stack along
        ``inference_plane``, or ``orthoplane=True`` with ``fusion="probability"``.

    Returns
    -------
    :class:`BlockwiseResult`

    Examples
    --------
    ::

        res = segment_blockwise("big.zarr", output="mito.zarr", block_shape=(64, 512, 512), n_workers=2)
    """
    from ._cluster import check_not_bootstrapping
    check_not_bootstrapping()
    t_all = time.perf_counter()
    p = make_params(Params3D, **params)
    if output is None or Path(output).suffix.lower() != ".zarr":
        raise PanoptemError("Blockwise runs write OME-Zarr: give an output path ending in .zarr.")
    out = Path(output).expanduser().absolute()
    cache_dir = Path(cache_dir).expanduser().absolute() if cache_dir else None  # as workers elsewhere find it
    block_shape = None if block_shape is None else triple(block_shape, "--block-shape")
    halo = None if halo is None else triple(halo, "--halo")
    if (block_shape is not None and min(block_shape) < 1) or (halo is not None and min(halo) < 0):
        raise PanoptemError(f"Block shape must be positive and halo 0 or more, not {block_shape} / {halo}.")
    if p.return_panoptic:
        raise PanoptemError("Blockwise runs do not return the per-plane stacks; drop return_panoptic.")
    if p.tta:
        raise PanoptemError("Test-time augmentation (tta) is not available in blockwise runs; run without it, "
                            "or on the whole volume.")
    if any(p.chunk_size) and chunks is None:
        chunks = zarr_chunks(p.chunk_size, (sys.maxsize,) * 3)
    if batch_size < 1:
        raise PanoptemError(f"Batch size must be 1 or more, not {batch_size}.")
    from ..inference.runtime import PRECISIONS, RUNTIMES, check_choice, network_threads
    runtime, precision = check_choice("Runtime", runtime, RUNTIMES), check_choice("Precision", precision, PRECISIONS)
    threads = None if threads is None else network_threads(threads)
    from ._cluster import check_cluster
    check_cluster(n_workers, scheduler, client)  # before any work
    source, vol, vs, in_path, file_origin = _open_volume(volume, key)
    if cache_dir is not None:
        from ..inference.cache import check_cache_dir
        check_cache_dir(cache_dir, [out], [in_path])
    if vol.ndim != 3:
        raise PanoptemError(f"Blockwise inference needs a ZYX volume, got shape {tuple(vol.shape)}.")
    given_by = "voxel_size" if voxel_size else "file"
    voxel_size = voxel_size or vs
    origin = origin if origin is not None else file_origin
    card = _card(model)
    from ..inference.segment2d import check_classes
    check_classes(card, p)
    card_path = None if isinstance(model, LoadedModel) else Path(str(model)).expanduser()
    if card_path is not None and card_path.suffix in (".yaml", ".yml") and card_path.exists():
        model = str(card_path.absolute())  # a card path, as workers elsewhere find it
    if p.orthoplane and p.fusion == "probability" and card.num_classes > 1:
        raise PanoptemError("Probability fusion is implemented for single-class models only; use fusion=consensus.")
    p, plan_record, steps, strides, resample = _blockwise_plan(p, card, voxel_size, given_by)
    if plan_record["input_voxel_size_nm"]:  # as run (pixel_size included): written with the labels
        voxel_size = tuple(plan_record["input_voxel_size_nm"])
    from ..io.writers import check_origin
    origin = check_origin(origin, voxel_size, 3)
    # network pixels per volume pixel in-plane (default blocks and memory follow it)
    enlarge = max(Fraction(1), 1 / resample[1], 1 / resample[2]) if resample else Fraction(1)
    halo = halo if halo is not None else _in_plane(DEFAULT_HALO, enlarge)
    axis = 0 if p.orthoplane else PLANE_AXIS[p.inference_plane]
    # block starts lie on both grids: the network's padding and output stride, whole volume pixels
    align = math.lcm(int(card.padding_factor), int(card.output_stride)) * (
        math.lcm(*(f.numerator for f in resample)) if resample else p.downsampling)
    if block_shape is None:
        block_shape = _in_plane(DEFAULT_BLOCK, enlarge, 128)  # output chunks of 128 or 256
        if p.orthoplane:  # a thin volume: blocks as deep as it, where that feeds the network less
            block_shape = ortho_block_shape(vol.shape, block_shape, halo, align,
                                            exact_context and _has_context(model, card))
    if isinstance(devices, str):
        from ._cluster import visible_gpus
        devices = visible_gpus() if devices == "all" else [d for d in devices.split(",") if d]
        if not devices:
            raise PanoptemError("--devices all: no GPU is visible; leave --devices out to run on CPU workers.")
    if devices and scheduler is None and client is None:  # a local cluster's devices are this machine's
        from ..models.load import pick_device
        for d in devices:  # before any work
            try:
                pick_device(d)
            except PanoptemError as e:
                raise PanoptemError(f"--devices {','.join(devices)}: {e} Leave --devices out to run on CPU "
                                    "workers.") from None
    # outputs
    stem = out.name[: -len(".zarr")]
    classes = card.classes
    outputs = [(out if len(classes) == 1 else out.with_name(f"{stem}_{c.name}.zarr"), c) for c in classes]
    from .._atomic import check_output
    for path, _ in outputs:
        check_output(path, overwrite, [in_path] if in_path else [])
    aligned = _aligned(block_shape, align, axis, p.orthoplane)
    aligned = tuple(-(-b // k) * k for b, k in zip(aligned, strides))  # whole groups of averaged planes
    chunk_shape = _chunks(chunks, aligned, vol.shape)  # before any work
    msource, mask_stamp = _open_mask(mask, vol.shape) if mask is not None else (None, None)
    from .._atomic import discard, exclusive_output, move_into_place
    with exclusive_output(out):
        from ..inference.engine import card_intensity
        intensity = card_intensity(card, vol)
        work = out.parent / f".{out.name}.blockwise"
        net_key = {"model": card.name, "weights": card.weights.sha256 or card.weights.file,
                   "downsampling": p.downsampling, "plane": p.inference_plane, "orthoplane": p.orthoplane,
                   "block": block_shape, "halo": halo, "shape": list(vol.shape), "dtype": str(np.dtype(vol.dtype)),
                   "intensity": list(intensity), "input": _input_stamp(in_path), "key": source.key,
                   "content": _content_digest(vol), "mask": mask_stamp,  # arrays too: a shared cache
                   "skip_empty": skip_empty, "exact_context": exact_context,
                   "padding": PADDING_RULE}  # outputs cleared on zero padding (earlier releases' were not)
        if card.num_classes > 1:  # every class's channel (an earlier release stored one too few)
            net_key["channels"] = card.probability_channels
        if card.context_slices:  # the neighbours the network saw
            net_key["neighbour_steps"] = list(steps)
        if resample:  # the network's grid resampled from the volume's
            net_key["factors"] = [str(f) for f in resample]
        if max(strides) > 1:  # xz / yz planes averaged along their axis
            net_key["stack_steps"] = list(strides)
        if precision == "int8":  # a quantized network's outputs
            net_key["precision"] = "int8"
        if p.invert:  # the network saw the volume inverted
            net_key["invert"] = True
        run_key = {"net": net_key, "params": p.model_dump()}
        work_existed = work.exists()  # an interrupted run's, to resume: kept whatever this run meets
        try:  # a run refused here (a cache of another run) leaves no work folder it made
            _prepare_work(work, run_key, array_source=in_path is None)
            block_shape = aligned
            grid = BlockGrid(vol.shape, block_shape, halo)
            consensus = p.orthoplane and p.fusion == "consensus"
            views = ["xy", "xz", "yz"] if consensus else ["fused" if p.orthoplane else p.inference_plane]
            jobs, grids = [], []
            for view in views:
                a = 0 if view == "fused" else PLANE_AXIS[view]
                net = Path(cache_dir) / f"{view}.zarr" if cache_dir else work / f"net_{view}.zarr"
                # an xz / yz stack whose planes average k: its passes run on the volume so reduced along its
                # axis, in blocks of the same number (block shapes along it are multiples of k)
                k = 1 if view == "fused" else strides[a]
                shape_v = tuple(-(-n // k) if ax == a else n for ax, n in enumerate(vol.shape))
                block_v = tuple(b // k if ax == a else b for ax, b in enumerate(block_shape))
                averaged = strides if view == "fused" else tuple(k if ax == a else 1 for ax in range(3))  # neighbours
                job = StackJob(source=dataclasses.replace(source, axis=a, stride=k) if k > 1 else source, model=model,
                               device=device, params=p.model_dump(), intensity=intensity,
                               axis=a, shape=shape_v, halo=halo, align=align, work=str(work / f"stack_{view}"),
                               net=str(net), block_shape=block_v, batch_size=batch_size, skip_empty=skip_empty,
                               fusion=view == "fused", n_channels=card.probability_channels,
                               class_ids=tuple(c.id for c in card.classes), thing_ids=tuple(card.thing_ids),
                               context=exact_context and _has_context(model, card) and
                               _tiles_slices(shape_v, block_v, a, view == "fused"), mask=msource,
                               runtime=runtime, precision=precision, threads=threads,
                               context_slices=card.context_slices,
                               neighbour_steps=tuple(st / d for st, d in zip(steps, averaged)),
                               stride=k, input_shape=tuple(vol.shape), resample=resample,
                               fused_strides=strides if view == "fused" else (1, 1, 1))
                if cache_dir:
                    _check_cache(Path(cache_dir), net, {**net_key, "view": view})
                Path(job.work).mkdir(parents=True, exist_ok=True)
                create_net_arrays(job)
                _create_provisional(Path(job.work), shape_v, block_v)
                jobs.append(job)
                grids.append(grid if k == 1 else BlockGrid(shape_v, block_v, halo))
        except PanoptemError:
            if not work_existed:
                shutil.rmtree(work, ignore_errors=True)
            raise
        log = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else None
        from ._cluster import callers_client, check_workers_see, client_for, run_tasks
        timings: dict[str, float] = {}
        with ExitStack() as stack:
            try:
                cl = stack.enter_context(
                    callers_client(client, devices) if client is not None else
                    client_for(n_workers, scheduler, devices, processes=processes, log=log,
                               bytes_per_worker=_worker_bytes(block_shape, halo, batch_size, enlarge)))
            except PanoptemError:  # no cluster (a scheduler not reached): nothing was done to keep
                if not work_existed:
                    shutil.rmtree(work, ignore_errors=True)
                raise
            check_workers_see(cl, [source.path, work, cache_dir, msource.path if msource is not None else None],
                              None if isinstance(model, LoadedModel) else model)
            # the planes of one value, as a whole-volume run sees them: a block's crop of a plane may be
            # of one value alone, and xz / yz planes see a blank section edge-on
            t = time.perf_counter()
            uniform = _uniform_planes(cl, source, grid, vol.shape, Path(cache_dir) if cache_dir else work,
                                      {k: net_key[k] for k in ("input", "key", "content", "shape", "dtype")}, progress)
            jobs = [dataclasses.replace(j, uniform=uniform) for j in jobs]
            timings["sections_s"] = time.perf_counter() - t
            infos, summaries = [], []
            for job, g in zip(jobs, grids):
                info, summ = _run_stack(cl, job, g, card, p, progress, timings)
                infos.append(info)
                summaries += summ
            t = time.perf_counter()
            cjob = None
            if consensus:
                from ._consensus import ConsensusJob, group, number, overlaps_block, stats_block
                cjob = ConsensusJob(jobs, str(work / "consensus"), p.label_divisor, p.pixel_vote_thr,
                                    p.allow_one_view, stuff=p.semantic_only or any(c.id not in card.thing_ids
                                                                                   for c in classes))
                Path(cjob.work).mkdir(exist_ok=True)
                group(cjob, run_tasks(cl, overlaps_block, cjob, list(grid), "consensus", progress))
                kept = number(cjob, run_tasks(cl, stats_block, cjob, list(grid), "consensus", False), vol.shape,
                              p.min_size, p.min_extent)
                # the kept objects are the written ones, unless semantic segments are voted over them
                info = {"max_id": (max(c.id for c in classes) + 1) * (p.label_divisor or 0) + sum(kept.values()),
                        "dtype": "uint64", "per_class": None if cjob.stuff else kept}
                timings["consensus_s"] = time.perf_counter() - t
            else:
                info = infos[0]
            t = time.perf_counter()
            dtype = np.dtype(np.uint64) if info["max_id"] >= 2**32 else np.dtype(np.uint32)
            span = _spans(block_shape, vol.shape)
            factors = _block_pyramid(vol.shape, voxel_size, span)
            tmp_outputs = []
            for path, c in outputs:
                tmp = work / f"out_{c.name}.zarr"
                if not (tmp / "0").exists():  # blocks marked written went to an earlier output
                    shutil.rmtree(Path(jobs[0].work) / "written", ignore_errors=True)
                _create_output(tmp, vol.shape, chunk_shape, np.uint8 if c.kind == "semantic" else dtype, factors,
                               span)
                tmp_outputs.append((str(tmp), c.id, c.kind))
            from ._write import WriteJob, write_block
            # objects are counted from the written ids where the linking's count no longer holds
            counted = msource is not None or not info["per_class"] or bool(p.label_erosion) or \
                any(c.kind == "semantic" for c in classes)
            wjob = WriteJob(jobs[0], tmp_outputs, p.label_divisor, len(classes) == 1, msource, factors, cjob,
                            p.label_erosion, p.label_dilation, grid, p.fill_holes_in_segmentation, ids=counted)
            if wjob.holes:
                from ._holes import hole_faces, holes_block, holes_face, resolve
                run_tasks(cl, holes_block, wjob, list(grid), "holes", progress)
                resolve(wjob, grid, run_tasks(cl, holes_face, wjob, hole_faces(grid), "holes", False))
            written_ids = run_tasks(cl, write_block, wjob, list(grid), "writing", progress)
            import zarr

            from .._provenance import KEY, run_record
            from ..io.ome import write_metadata
            prov = run_record("segment3d blockwise", card, p.model_dump(), [in_path] if in_path else [], plan_record,
                              runtime=runtime, precision=precision, block_shape=list(block_shape),
                              halo=list(halo))
            for (tmp, _, kind), (path, c) in zip(tmp_outputs, outputs):
                group = zarr.open_group(tmp, mode="a", zarr_format=2)
                write_metadata(group, voxel_size, factors, path.name[: -len(".zarr")], labels=True, origin=origin)
                group.attrs[KEY] = prov
            timings["write_s"] = time.perf_counter() - t
        written, labels, objects = [], {}, {}
        for i, ((tmp, _, kind), (path, c)) in enumerate(zip(tmp_outputs, outputs)):
            move_into_place(tmp, path)
            from ..io import read_image
            labels[c.name] = read_image(path).data
            objects[c.name] = (_count([ids[i] for ids in written_ids], c) if counted
                               else info["per_class"].get(c.id if p.label_divisor else 0, 0))
            written.append({"output": str(Path(output).with_name(path.name)),  # as given, as whole-volume runs
                            "class": c.name, "objects": objects[c.name],
                            "shape": list(vol.shape), "dtype": str(labels[c.name].dtype)})
        from .._atomic import KEPT, drop_resume_state
        if not keep_work:  # renamed first: a run killed while removing it leaves no half work folder
            discard(work, out)
        else:  # kept on purpose: another engine writing this output leaves it
            (work / KEPT).touch()
        drop_resume_state(out, "blockwise")  # the folders are named after the output as given
    timings["total_s"] = time.perf_counter() - t_all
    skipped = sum(1 for s in summaries if s.get("skipped"))
    return BlockwiseResult(labels, objects, written, timings, len(grid), skipped, plan_record)


def _run_stack(cl, job: StackJob, grid: BlockGrid, card, p: Params3D, progress: bool, timings: dict):
    """The block passes of one stack, then its stitching and linking; returns
    the linking's summary and the network pass's per-block summaries."""
    from ._cluster import run_tasks
    from ._stitch import faces, solve
    view = "fused" if job.fusion else PLANES[job.axis]

    def add(k, v):
        timings[k] = timings.get(k, 0.0) + v

    t = time.perf_counter()
    blocks = list(grid)
    if job.context:
        job.context_dir().mkdir(parents=True, exist_ok=True)
        todo = [b for b in blocks if not _done(Path(job.net).with_suffix(".done"), "", b.index)]
        if todo:
            run_tasks(cl, context_block, job, todo, f"{view} context", progress)
            context_table(job, grid)
    add("context_pass_s", time.perf_counter() - t)
    t = time.perf_counter()
    summaries = run_tasks(cl, network_block, job, blocks, f"{view} network", progress)
    add("network_pass_s", time.perf_counter() - t)
    add("network_s", sum(s.get("network_s", 0.0) for s in summaries))
    t = time.perf_counter()
    centre_table(job, run_tasks(cl, centre_block, job, blocks, "centres", False))
    decoded = run_tasks(cl, decode_block, job, blocks, f"{view} decoding", progress)
    add("decode_pass_s", time.perf_counter() - t)
    add("decode_s", sum(s.get("decode_s", 0.0) for s in decoded))
    t = time.perf_counter()
    pairs = run_tasks(cl, _face_task, (job, grid), faces(grid, job.axis), "faces", False)
    halos = run_tasks(cl, _halo_task, (job, grid), [b.index for b in grid], "halos", False)
    info = solve(job, grid, pairs, halos, list(card.thing_ids) or [1], p.min_size, p.min_extent)
    add("stitch_link_s", time.perf_counter() - t)
    return info, summaries


def _face_task(job_grid, face):
    from ._stitch import face_pairs
    job, grid = job_grid
    return face_pairs(job, grid, face)


def _halo_task(job_grid, index):
    from ._stitch import halo_matches
    job, grid = job_grid
    return halo_matches(job, grid, index)


def _prepare_work(work: Path, run_key: dict, array_source: bool) -> None:
    """The work folder of this run: kept as it is from an interrupted run of the
    same call; with only the decoding parameters changed, its network outputs
    are kept; otherwise made afresh. (An in-memory input cannot be recognised
    again, so its runs always start afresh.)"""
    stamp = work / "run.json"
    old = None
    if stamp.exists() and not array_source:
        try:
            old = json.loads(stamp.read_text())
        except (OSError, ValueError):  # cut short (a full disk, an old release's in-place write): start afresh
            old = None
    text = json.dumps(run_key, sort_keys=True, default=str)
    if old is not None and json.dumps(old, sort_keys=True, default=str) == text:
        return
    if old is not None and json.dumps(old.get("net"), sort_keys=True, default=str) == \
            json.dumps(run_key["net"], sort_keys=True, default=str):
        for child in work.iterdir():  # keep the network's outputs (net_*), redo the rest
            if not child.name.startswith("net_"):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_text(stamp, text)


def _in_plane(shape, enlarge=1, multiple: int = 1) -> tuple[int, int, int]:
    """A default (Z, Y, X) block or halo for a network grid ``enlarge`` times finer than the
    volume's (a whole number or a fraction): about the same in network pixels along Y and X
    (rounded up to ``multiple``).

    >>> _in_plane((64, 1024, 1024), 3, 128), _in_plane((16, 128, 128), 3)
    ((64, 384, 384), (16, 43, 43))
    """
    if enlarge == 1:
        return tuple(shape)
    return (shape[0], *(-(-n // (enlarge * multiple)) * multiple for n in shape[1:]))


def _worker_bytes(block_shape, halo, batch_size: int, enlarge=1) -> int:
    """Memory one worker needs, roughly: torch and the model, a block's region
    (input, decode arrays: ~12 bytes per core voxel, ``enlarge`` squared times that where the
    network's grid is finer) and a batch of network activations (~300 bytes per network pixel
    for panoptem's networks)."""
    core = int(np.prod(block_shape) * enlarge ** 2)
    plane = int((block_shape[1] + 2 * halo[1]) * (block_shape[2] + 2 * halo[2]) * enlarge ** 2)
    return (700 << 20) + 12 * core + 300 * plane * batch_size


def _has_context(model, card) -> bool:
    """Whether the network has a global-context branch it can be given."""
    from ..inference.predict import supports_context
    if isinstance(model, LoadedModel):
        return supports_context(model.module)
    return card.weights.format == "state_dict" and card.padding_factor % 32 == 0


def _tiles_slices(shape, block_shape, axis: int, fusion: bool) -> bool:
    """Whether blocks cut slices into tiles (else every block sees whole slices)."""
    views = [0, 1, 2] if fusion else [axis]
    return any(block_shape[ax] < shape[ax] for v in views for ax in range(3) if ax != v)


def _aligned(block_shape, align: int, axis: int, all_axes: bool) -> tuple[int, int, int]:
    """Block shape rounded up to multiples of ``align`` along the image axes, so
    blocks start on the network's grid."""
    return tuple(b if (ax == axis and not all_axes) else -(-b // align) * align
                 for ax, b in enumerate(block_shape))


def _check_cache(cache: Path, net: Path, key: dict) -> None:
    """A network cache made by another run (model, input, blocks...) is refused."""
    from ..inference.cache import check_store, differing
    stamp = cache / f"{net.stem}.json"
    text = json.dumps(key, sort_keys=True, default=str)
    check_store(net, "blockwise")
    old = stamp.read_bytes() if stamp.exists() else None
    if old is not None and old != text.encode():
        try:
            why = differing(json.loads(old), json.loads(text))
        except (ValueError, AttributeError, TypeError):  # cut short or not a record (earlier releases wrote in place)
            why = f"its record {stamp.name} is damaged"
        raise PanoptemError(f"The cache {cache} holds network outputs of a different run ({why}); choose "
                            "another --cache-dir or delete that folder.")
    write_text(stamp, text)


def _create_provisional(work: Path, shape, block_shape) -> None:
    import zarr
    path = work / "provisional.zarr"
    if not path.exists():
        zarr.create_array(str(path), shape=tuple(shape), chunks=tuple(min(b, n) for b, n in zip(block_shape, shape)),
                          dtype="uint32", fill_value=0, zarr_format=2)


def _spans(block_shape, shape) -> tuple[int, ...]:
    """The block shape as chunks and pyramid levels must respect it: along an axis with one
    block (a block as deep as the volume), any multiple of every chunk and factor will do
    (the volume's side rounded up to 4096), so a 165-deep block gets 64-deep chunks and a
    pyramid, not 1-deep chunks and none."""
    return tuple(b if b < n else -(-n // 4096) * 4096 for b, n in zip(block_shape, shape))


def _chunks(chunks, block_shape, shape) -> tuple[int, ...]:
    """The output's chunks: ``chunks``, or the largest divisors of the block's sides up to
    (64, 256, 256); a chunk never straddles two blocks."""
    span = _spans(block_shape, shape)
    if chunks is None:
        return tuple(math.gcd(b, c) for b, c in zip(span, (64, 256, 256)))
    c = triple(chunks, "--chunks")
    if any(b < n and b % k for b, n, k in zip(block_shape, shape, c)):  # an axis one block spans takes any
        raise PanoptemError(f"Output chunks {c} must divide the block shape {tuple(block_shape)} (along axes "
                            "the blocks split); give chunks that do, or another --block-shape.")
    return c


def _block_pyramid(shape, voxel_size, block_shape) -> list[tuple[int, ...]]:
    """The pyramid levels every block can write itself: those whose total
    factors divide the block shape."""
    from ..io.ome import pyramid_factors
    out, total = [], [1, 1, 1]
    for f in pyramid_factors(shape, voxel_size):
        total = [t * v for t, v in zip(total, f)]
        if any(b % t for b, t in zip(block_shape, total)):
            break
        out.append(f)
    return out


def _create_output(path: Path, shape, chunks, dtype, factors, block_shape) -> None:
    """The output group with level ``"0"`` and the pyramid levels, chunked so
    that every chunk of every level belongs to one block."""
    import zarr

    from ..io.ome import create_level, level_shapes
    from ..io.zarr_write import label_compressor
    if (path / "0").exists():
        return
    g = zarr.open_group(str(path), mode="a", zarr_format=2)
    base = g.create_array("0", shape=tuple(shape), chunks=tuple(min(c, n) for c, n in zip(chunks, shape)),
                          dtype=dtype, fill_value=0,
                          compressors=label_compressor(),
                          chunk_key_encoding={"name": "v2", "separator": "/"})
    total = [1, 1, 1]
    for i, (f, lshape) in enumerate(zip(factors, level_shapes(shape, factors)), start=1):
        total = [t * v for t, v in zip(total, f)]
        create_level(g, i, lshape, [c if b >= n else math.gcd(c, b // t)  # an axis one block spans: as asked
                                    for c, b, t, n in zip(chunks, block_shape, total, shape)], base)


def _count(block_ids: list[np.ndarray], c) -> int:
    """Objects of class ``c`` from the ids each block wrote (a semantic class counts once)."""
    n = len(np.unique(np.concatenate(block_ids))) if block_ids else 0
    return min(n, 1) if c.kind == "semantic" else n
