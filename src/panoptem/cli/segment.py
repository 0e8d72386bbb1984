"""``panoptem segment2d`` and ``panoptem segment3d``."""

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import PanoptemError
from ..models.home import DEFAULT_MODEL
from ..params import PLANE_AXIS, Params2D, Params3D
from ._app import app
from ._options import KEY_HELP, PRECISION_HELP, PREVIEW_HELP, RUNTIME_HELP, THREADS_HELP, read_input, with_params


@app.command("segment2d")
@with_params(Params2D)
def segment2d_cmd(
    input: str = typer.Argument(..., help="Image: TIFF, PNG/JPEG, MRC, Zarr, HDF5, a folder of 2D images, "
                                "or 'sample' for the bundled EM crop."),
    output: Path = typer.Option(..., "-o", "--output", help="Output labels (.tif or .zarr)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model name or card path."),
    slice_index: Optional[int] = typer.Option(None, "--slice", help="For a 3D input: the slice to segment "
                                              "(default: the middle one)."),
    plane: str = typer.Option("xy", "--plane", help="For --slice: xy, xz or yz."),
    key: Optional[str] = typer.Option(None, "--key", help=KEY_HELP),
    batch: bool = typer.Option(False, "--batch", help="Segment every slice of a stack independently."),
    unique_ids: bool = typer.Option(False, "--unique-ids", help="With --batch: ids unique across the stack "
                                    "(default: restart in every slice, as empanada)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    runtime: str = typer.Option("auto", "--runtime", help=RUNTIME_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    preview: Optional[Path] = typer.Option(None, "--preview", help=PREVIEW_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    params: Params2D = None,
):
    """2D inference (empanada's "2D Inference (Parameter Testing)")."""
    from ..inference.segment2d import segment_2d, take_plane
    from ..io import write_labels
    if unique_ids and not batch:
        raise PanoptemError("--unique-ids numbers the objects of a --batch run across its slices; add --batch, "
                            "or drop --unique-ids.")
    img = read_input(input, key, model, params.pixel_size)
    data = img.data
    vs, origin = img.voxel_size, img.origin
    chose_plane = slice_index is not None or plane != "xy"
    if chose_plane and (data.ndim == 2 or batch):  # nothing to choose: say so rather than ignore them
        why = "the input is one 2D image" if data.ndim == 2 else "--batch segments every xy slice"
        raise PanoptemError(f"--slice and --plane choose one plane of a volume, but {why}; drop them.")
    neighbours, given_by, intensity, volume_nm = False, "file", None, None
    data_was_volume, idx, edge_on = data.ndim == 3 and not batch, None, None
    if data_was_volume:
        ax = PLANE_AXIS.get(plane)
        if ax is None:
            raise PanoptemError(f"--plane must be xy, xz or yz, not '{plane}'.")
        idx = data.shape[ax] // 2 if slice_index is None else slice_index
        from ..inference.segment2d import neighbour_step, plane_pixels, stack_step
        from ..models.home import get_card
        card = get_card(model)
        k = card.context_slices  # the neighbours along the plane's axis a model sees, if any
        from ..inference.engine import card_intensity
        intensity = card_intensity(card, data)  # the volume's, as the 3D run scales the plane
        step = neighbour_step(card, params, vs, plane)
        # an xz / yz slice as the 3D stack gives it to the network: the mean of its group of slices, with
        # the blank sections and (a thin volume's) padding the stack takes from the xy sections
        stride = stack_step(card, params, vs, plane)
        if ax != 0:
            from ..inference.segment3d import plane_edge_on
            edge_on = plane_edge_on(data, ax, idx // stride, stride)
        data = take_plane(data, idx, plane, neighbours=k, step=step, stride=stride)
        neighbours = k > 0
        vs, plane_params, volume_nm = plane_pixels(vs, ax, params)
        given_by = "file" if plane_params is params else "file + pixel_size"
        params = plane_params
        if origin is not None:
            origin = tuple(v for i, v in enumerate(origin) if i != ax)
        if slice_index is None:
            typer.echo(f"note: segmenting the middle {plane} slice ({idx}) of the volume; choose another with "
                       "--slice and --plane, or every slice with --batch.", err=True)
    inputs = [img.path] if img.path else []
    from ..io.writers import prepare_target
    prepare_target(output, overwrite, inputs)  # before the work
    if preview is not None:  # never over an input or the output
        from ..reporting._preview import prepare_preview
        prepare_preview(preview, overwrite, inputs, [str(output)])
    import shutil

    from .._atomic import exclusive_output
    out = Path(output).expanduser().absolute()
    # a stack's slices are kept beside the output as they are made: running the command again resumes
    kept = out.parent / f".{out.name}.panoptem-slices" if batch else None
    with exclusive_output(out):
        earlier = kept is not None and kept.exists()  # an interrupted run's: kept whatever this run meets
        try:
            labels = segment_2d(data, model, batch=batch, unique_ids=unique_ids, device=device, progress=True,
                                runtime=runtime, precision=precision, threads=threads,
                                preview=preview, voxel_size=vs, overwrite=overwrite, with_neighbours=neighbours,
                                intensity=intensity, resume_dir=kept, volume_pixel_nm=volume_nm, edge_on=edge_on,
                                **params.model_dump())
        except PanoptemError:  # refused (a bad input, options...): nothing left behind; interrupted: kept
            if kept is not None and not earlier:
                shutil.rmtree(kept, ignore_errors=True)
            raise
        written_vs = vs
        if labels.ndim == 2 or vs is not None:  # the pixel size as run (--pixel-size included) goes with them
            from ..inference.segment2d import pixel_plan  # (a --batch stack's unknown z spacing stays unknown)
            from ..models.home import get_card
            written_vs = pixel_plan(get_card(model), params, vs, labels.ndim, volume_pixel_nm=volume_nm).voxel_size or vs
        pixels = pixel_note(model, params, vs, 2, given_by=given_by, volume_pixel_nm=volume_nm)
        from .._provenance import run_record
        from ..models.home import get_card
        where = {"plane": plane, "slice": idx} if data_was_volume else {"batch": batch}
        prov = run_record("segment2d", get_card(model), params.model_dump(), inputs, pixels, key=key,
                          runtime=runtime, precision=precision, **where)
        written = write_labels(output, labels, voxel_size=written_vs, overwrite=overwrite, inputs=inputs,
                               origin=origin if written_vs is not None else None, provenance=prov)
        _report(labels, params.label_divisor, written, preview, pixels, per_slice=batch and not unique_ids)
        if kept is not None:
            shutil.rmtree(kept, ignore_errors=True)
        from .._atomic import drop_resume_state
        drop_resume_state(out, "2d")


def pixel_note(model: str, params, voxel_size, ndim: int, planes=("xy",), given_by: str = "file",
               volume_pixel_nm: float | None = None) -> dict:
    """Print the pixel sizes a run used and what it resampled (a ``note:`` line, after the run so
    that a refused run prints its one error line only); returns the record for the JSON summary
    (``given_by``: where ``voxel_size`` came from; ``volume_pixel_nm``: see ``segment_2d``)."""
    from ..inference.segment2d import pixel_plan
    from ..models.home import get_card
    card = get_card(model)
    plan = pixel_plan(card, params, voxel_size, ndim, given_by, volume_pixel_nm)
    typer.echo(f"note: {plan.describe(planes)}", err=True)
    if ndim == 3:
        far = neighbour_spacing(card, plan, planes)
        if far:
            typer.echo(f"note: {far}", err=True)
    contrast = contrast_note(card, params.invert)
    if contrast:
        typer.echo(f"note: {contrast}", err=True)
    return plan.record(planes)


def contrast_note(card, invert: bool) -> str | None:
    """A note when a model was trained or fine-tuned on images with bright membranes (its card's
    ``training`` says ``invert``) and a run sees its images as they are, else None.

    >>> from panoptem.models.card import ModelCard, Weights
    >>> card = ModelCard(name="m", weights=Weights(file="m.pt"), training={"invert": True})
    >>> print(contrast_note(card, False))  # doctest: +NORMALIZE_WHITESPACE
    model m was trained on images with bright membranes, inverted (--invert); this run sees the
    images as they are: if they have bright membranes too, run it with --invert.
    >>> contrast_note(card, True) is None
    True
    """
    if invert or not card.trained_inverted:
        return None
    return (f"model {card.name} was trained on images with bright membranes, inverted (--invert); this run sees "
            "the images as they are: if they have bright membranes too, run it with --invert.")


def neighbour_spacing(card, plan, planes) -> str | None:
    """A note when a model that sees neighbouring planes (``context_slices``) runs on planes
    whose neighbours lie much farther apart (or closer) than in its training data, saying what
    the run gives it (see :class:`~panoptem.inference.resample.PixelPlan`), else None.

    >>> from panoptem.models.card import ModelCard, Weights
    >>> from panoptem.inference.resample import plan_pixels
    >>> card = ModelCard(name="m", weights=Weights(file="m.pt"), context_slices=1, voxel_size_nm=5.0)
    >>> print(neighbour_spacing(card, plan_pixels(5.0, (40.0, 5.0, 5.0)), ("xy",)))  # doctest: +NORMALIZE_WHITESPACE
    model m sees each plane with neighbours 5 nm away; here the xy planes are 40 nm apart, so it is
    given neighbours 5 nm away, made from the planes around them. On serial sections a
    single-plane model such as MitoLite_v1 may still suit the data better.
    >>> neighbour_spacing(card, plan_pixels(5.0, (6.0, 5.0, 5.0)), ("xy", "xz", "yz")) is None
    True
    """
    from ..params import PLANE_AXIS
    vs, m = plan.voxel_size, card.neighbour_spacing_nm
    if not card.context_slices or not m or vs is None or len(vs) != 3:
        return None
    off = [(pl, float(vs[PLANE_AXIS[pl]])) for pl in planes if not m / 1.5 <= float(vs[PLANE_AXIS[pl]]) <= 1.5 * m]
    if not off:
        return None
    where = ", ".join(f"the {pl} planes are {d:g} nm apart" for pl, d in off)
    given = (f"it is given neighbours {m:g} nm away, made from the planes around them"
             if all(plan.neighbour_step(pl) != 1.0 for pl, _ in off)
             else "yet its neighbours are the next planes (resampling is off)")
    return (f"model {card.name} sees each plane with neighbours {m:g} nm away; here {where}, so {given}. On "
            "serial sections a single-plane model such as MitoLite_v1 may still suit the data better.")


def _report(labels, divisor, out, preview=None, pixels=None, per_slice: bool = False):
    """Print the run's JSON summary; ``per_slice``: ids restart in every slice (a --batch stack),
    so its objects are counted slice by slice."""
    import fastremap
    import numpy as np
    # slice by slice: the labels may be read lazily from disk
    parts = [fastremap.unique(np.asarray(labels[z])) for z in range(labels.shape[0])] if labels.ndim == 3 else \
        [fastremap.unique(np.asarray(labels))]
    n = sum(int((p > 0).sum()) for p in parts) if per_slice else int((np.unique(np.concatenate(parts)) > 0).sum())
    from ..io import read_image
    rec = {"output": str(out), "objects": n, "shape": list(labels.shape),
           "dtype": str(read_image(out).data.dtype)}  # as written
    if preview is not None:
        rec["preview"] = str(preview)
    if pixels is not None:
        rec["pixel_size"] = pixels
    typer.echo(json.dumps(rec))


@app.command("segment3d")
@with_params(Params3D)
def segment3d_cmd(
    input: str = typer.Argument(..., help="Volume: TIFF, MRC, Zarr, HDF5, a folder of 2D images, "
                                "or 'sample' for the bundled EM crop."),
    output: Path = typer.Option(..., "-o", "--output", help="Output labels (.tif or .zarr); a multi-class "
                                "model writes NAME_<class>.tif per class."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model name or card path."),
    key: Optional[str] = typer.Option(None, "--key", help=KEY_HELP),
    ortho: bool = typer.Option(False, "--ortho", help="Same as --orthoplane."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    batch_size: int = typer.Option(0, "--batch-size", help="Slices per network call (0: automatic, from the "
                                   "slice size and, on a GPU, its free memory)."),
    runtime: str = typer.Option("auto", "--runtime", help=RUNTIME_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Keep network outputs here (default: "
                                             "a hidden folder beside OUTPUT, removed on success). Re-running the "
                                             "same command resumes an interrupted run; with --keep-cache, "
                                             "re-decodes with new thresholds without running the network."),
    keep_cache: bool = typer.Option(False, "--keep-cache", help="Keep the cache folder after success."),
    preview: Optional[Path] = typer.Option(None, "--preview", help=PREVIEW_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    blockwise: bool = typer.Option(False, "--blockwise", help="Run block by block on Dask (OUTPUT must be "
                                   ".zarr): volumes larger than memory, several workers or GPUs, a cluster; "
                                   "resumes after a crash.", rich_help_panel="Blockwise"),
    block_shape: Optional[str] = typer.Option(None, "--block-shape", help="Z,Y,X voxels per block "
                                              "(default 64,1024,1024; Y and X divided by k where the network's "
                                              "grid is k times finer; ortho-plane: as deep as a thin volume "
                                              "where that is cheaper).", rich_help_panel="Blockwise"),
    halo: Optional[str] = typer.Option(None, "--halo", help="Z,Y,X voxels of context around each block along "
                                       "the image axes (default 16,128,128, divided alike).",
                                       rich_help_panel="Blockwise"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local worker processes (default: from "
                                          "cores and memory; one per device with --devices).",
                                          rich_help_panel="Blockwise"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of a running Dask scheduler "
                                            "(e.g. tcp://host:8786) instead of local workers.",
                                            rich_help_panel="Blockwise"),
    devices: Optional[str] = typer.Option(None, "--devices", help="One worker per device: cuda:0,cuda:1 or "
                                          "'all' visible GPUs.", rich_help_panel="Blockwise"),
    mask: Optional[str] = typer.Option(None, "--mask", help="Volume (same shape or smaller by whole factors; a "
                                       "2D mask applies to every slice): only blocks with mask are segmented, "
                                       "labels outside it are 0.",
                                       rich_help_panel="Blockwise"),
    exact_context: bool = typer.Option(True, "--exact-context/--block-context", help="Give the network each "
                                       "whole slice's global context (panoptem's own models; about 60 % more "
                                       "network time) or each block's own (faster, slightly different near "
                                       "block faces).", rich_help_panel="Blockwise"),
    params: Params3D = None,
):
    """3D inference along one plane or ortho-plane (empanada's "3D Inference")."""
    from ..inference.segment3d import segment_3d
    img = read_input(input, key, model, params.pixel_size)
    if ortho:
        params.orthoplane = True
    extra = {}
    volume = img.data
    if blockwise:
        volume = img  # each worker opens the file itself
        extra = dict(blockwise=True, block_shape=block_shape, halo=halo, n_workers=workers, scheduler=scheduler,
                     devices=devices, mask=mask, exact_context=exact_context)
    elif any(v is not None for v in (block_shape, halo, workers, scheduler, devices, mask)):
        raise PanoptemError("--block-shape, --halo, --workers, --scheduler, --devices and --mask need --blockwise.")
    res = segment_3d(volume, model, device=device, batch_size=batch_size, runtime=runtime, precision=precision,
                     threads=threads, progress=True,
                     voxel_size=img.voxel_size, origin=img.origin, cache_dir=cache_dir, keep_cache=keep_cache,
                     output=output,
                     overwrite=overwrite, inputs=[img.path] if img.path else [], preview=preview,
                     **extra, **params.model_dump())
    if preview is not None and res.written:
        res.written[0]["preview"] = str(preview)
    from ..inference.resample import planes_of
    pixels = pixel_note(model, params, img.voxel_size, 3, planes_of(params))  # the run's plan, from the file
    if res.written:
        res.written[0]["pixel_size"] = pixels
    for p in res.written:
        typer.echo(json.dumps(p))
