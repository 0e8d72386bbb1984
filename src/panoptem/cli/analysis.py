"""``panoptem evaluate``, ``panoptem report``, ``panoptem measure`` and ``panoptem mesh``."""

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import PanoptemError
from ..params import MeasureParams
from ._app import app
from ._options import note_voxels_as_nm, read_input, voxel_size_option, with_params


#: the dataset inside an HDF5 / Zarr / N5 file, for each file a command reads
KEY = typer.Option(None, "--key", help="Dataset of the labels inside an HDF5 / Zarr / N5 file holding several.")
IMAGE_KEY = typer.Option(None, "--image-key", help="Dataset of --image inside an HDF5 / Zarr / N5 file.")


def _read(path, key: str | None, option: str):
    """:func:`read_input` of ``path`` and ``key``, its errors naming ``option`` where they ask for a key."""
    try:
        return read_input(str(path), key)
    except PanoptemError as e:
        raise PanoptemError(str(e).replace("(--key)", f"({option})")) from None


@app.command("evaluate")
def evaluate_cmd(
    prediction: Path = typer.Argument(..., help="Predicted labels (any readable format)."),
    ground_truth: Path = typer.Argument(..., help="Ground-truth labels of the same shape."),
    key: Optional[str] = typer.Option(None, "--key", help="Dataset of the prediction inside an HDF5 / Zarr / N5 "
                                      "file holding several."),
    gt_key: Optional[str] = typer.Option(None, "--gt-key", help="Dataset of the ground truth inside an HDF5 / "
                                         "Zarr / N5 file (e.g. volumes/labels/mitochondria)."),
    image_key: Optional[str] = IMAGE_KEY,
    label_divisor: Optional[int] = typer.Option(None, "--label-divisor", help="Evaluate per class "
                                                "(class = label // divisor)."),
    per_slice: bool = typer.Option(False, "--per-slice", help="Compare every z slice on its own and pool the "
                                   "counts (for segment2d --batch outputs, whose ids restart in every slice)."),
    ignore_smaller: int = typer.Option(0, "--ignore-smaller", help="Ground-truth objects under this many voxels "
                                       "are neither targets nor misses; predictions that found them are "
                                       "dropped too."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write an HTML report with the scores "
                                          "and pictures of the largest false objects, misses, splits and "
                                          "merges (needs matplotlib: pip install 'panoptem\\[report]')."),
    image: Optional[str] = typer.Option(None, "--image", help="With --report: the grey image, drawn under "
                                        "the labels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report."),
):
    """Foreground IoU, precision/recall/F1 at IoU 0.5 and 0.75, PQ, mean AP and a breakdown of errors
    (false objects, misses, splits, merges) as JSON."""
    import numpy as np

    from .._evaluate import evaluate
    kw = dict(label_divisor=label_divisor, per_slice=per_slice, ignore_smaller=ignore_smaller)
    inputs = [str(prediction), str(ground_truth)] + ([image] if image else [])
    if report is not None:  # checked before the work
        from ..reporting._files import check_target
        from ..reporting._mpl import require_matplotlib
        require_matplotlib()
        check_target(report, (".html", ".htm"), overwrite, inputs)
    from .._memory import array_bytes, check_fits
    pred, gt = _read(prediction, key, "--key").data, _read(ground_truth, gt_key, "--gt-key").data
    check_fits(array_bytes(pred, gt), "Evaluating the two label images in memory",
               "crop both to the same region and evaluate that.")
    pred, gt = np.asarray(pred), np.asarray(gt)
    scores = evaluate(pred, gt, **kw)
    if report is not None:
        from ..reporting import evaluation_report
        img = None if image is None else _read(image, image_key, "--image-key").data
        evaluation_report(pred, gt, report, image=img, scores=scores, overwrite=overwrite, inputs=inputs,
                          names=(prediction.name, ground_truth.name), **kw)
        scores["report"] = str(report)
    typer.echo(json.dumps(scores))


# the options of blockwise measurement, for `measure` and `report`
BLOCKWISE = typer.Option(False, "--blockwise", help="Measure a 3D volume block by block on Dask (volumes "
                         "larger than memory); same columns.", rich_help_panel="Blockwise")
BLOCK_SHAPE = typer.Option(None, "--block-shape", help="Z,Y,X voxels per block (default 64,512,512).",
                           rich_help_panel="Blockwise")
WORKERS = typer.Option(None, "--workers", help="Local worker processes.", rich_help_panel="Blockwise")
SCHEDULER = typer.Option(None, "--scheduler", help="Address of a running Dask scheduler.",
                         rich_help_panel="Blockwise")


def _measured(lab, image: str | None, vs, blockwise: bool, block_shape, workers, scheduler, params,
              image_key: str | None = None, per_slice: bool = False) -> dict:
    """The measurement table of ``lab`` (read with read_input): block by block on Dask, or in
    memory (refused up front where it cannot fit); ``per_slice``: see :func:`panoptem.measure`."""
    import numpy as np

    from .._measure import measure
    if per_slice and blockwise:
        raise PanoptemError("--per-slice measures a stack of 2D images in memory, slice by slice; leave out "
                            "--blockwise.")
    if blockwise:
        from ..distributed.measure import MEASURE_BLOCK, measure_blockwise
        if image:  # read lazily here first: its errors name the option to give
            _read(image, image_key, "--image-key")
        return measure_blockwise(lab.path, voxel_size=vs, image=image, key=lab.key, image_key=image_key,
                                 block_shape=block_shape or MEASURE_BLOCK, n_workers=workers, scheduler=scheduler,
                                 progress=True, **params.model_dump())
    if any(v is not None for v in (block_shape, workers, scheduler)):
        raise PanoptemError("--block-shape, --workers and --scheduler need --blockwise.")
    from .._memory import array_bytes, check_fits
    img = _read(image, image_key, "--image-key").data if image else None
    check_fits(array_bytes(lab.data, img), "Measuring in memory", "add --blockwise to measure block by block.")
    return measure(np.asarray(lab.data), voxel_size=vs, image=None if img is None else np.asarray(img),
                   per_slice=per_slice, **params.model_dump())


@app.command("report")
@with_params(MeasureParams)
def report_cmd(
    labels: str = typer.Argument(..., help="Label image or volume (any readable format)."),
    output: Path = typer.Option(..., "-o", "--output", help="Report file: .html (self-contained) or .pdf."),
    image: Optional[str] = typer.Option(None, "--image", help="Grey image of the same shape: drawn under the "
                                        "labels; adds mean intensity."),
    fmt: Optional[str] = typer.Option(None, "--format", help="html or pdf (default: from the output's suffix)."),
    voxel_size: Optional[str] = typer.Option(None, "--voxel-size", help="nm per voxel, 'z,y,x' (default: "
                                             "from the file's metadata, else 1 nm)."),
    top: int = typer.Option(20, "--top", help="Rows of the table of largest objects."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report."),
    key: Optional[str] = KEY,
    image_key: Optional[str] = IMAGE_KEY,
    blockwise: bool = BLOCKWISE,
    block_shape: Optional[str] = BLOCK_SHAPE,
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    params: MeasureParams = None,
):
    """A report of a label image: planes, histograms of volume and extent in nm, objects per slice and
    the largest objects with the measurements of `panoptem measure` (needs matplotlib)."""
    from ..reporting import prepare_report, report
    lab = read_input(labels, key)
    vs = voxel_size_option(voxel_size, lab)
    out = Path(output)
    if fmt is not None and not out.suffix:
        out = out.with_suffix("." + fmt.lower())
    prepare_report(out, fmt, overwrite, [labels] + ([image] if image else []))  # before a long measurement
    table = _measured(lab, image, vs, blockwise, block_shape, workers, scheduler, params, image_key)
    path = report(labels, out, image=image, voxel_size=vs, top=top, format=fmt, overwrite=overwrite,
                  table=table, key=key, image_key=image_key)
    note_voxels_as_nm(vs, lab.data.ndim)
    typer.echo(json.dumps({"output": str(path), "voxel_size_nm": vs}))


@app.command("measure")
@with_params(MeasureParams)
def measure_cmd(
    labels: str = typer.Argument(..., help="Label image or volume (any readable format)."),
    output: Path = typer.Option(..., "-o", "--output", help="Table, one row per object: .csv, .xlsx, or "
                                ".parquet (needs pyarrow)."),
    image: Optional[str] = typer.Option(None, "--image", help="Grey image of the same shape: adds mean intensity."),
    voxel_size: Optional[str] = typer.Option(None, "--voxel-size", help="nm per voxel, 'z,y,x' (default: "
                                             "from the file's metadata, else 1 nm)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing table."),
    key: Optional[str] = KEY,
    image_key: Optional[str] = IMAGE_KEY,
    per_slice: bool = typer.Option(False, "--per-slice", help="Measure every z slice on its own as a 2D image "
                                   "(for segment2d --batch outputs, whose ids restart in every slice); the "
                                   "table's first column is the slice."),
    blockwise: bool = BLOCKWISE,
    block_shape: Optional[str] = BLOCK_SHAPE,
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    params: MeasureParams = None,
):
    """Per-object measurements in physical units (volume, surface, extents, centroid...) to CSV."""
    from .._atomic import check_output
    from .._measure import summarize, write_table
    from .._table import check_table_name
    check_table_name(output)  # before the measurement
    check_output(output, overwrite, [labels] + ([image] if image else []))  # before the measurement
    lab = read_input(labels, key)
    vs = voxel_size_option(voxel_size, lab)
    table = _measured(lab, image, vs, blockwise, block_shape, workers, scheduler, params, image_key, per_slice)
    out = write_table(table, output, replace_folder=overwrite, overwrite=overwrite)  # named as given
    note_voxels_as_nm(vs, lab.data.ndim)
    summ = {k: [float(x) for x in v] for k, v in summarize(table).items()}
    typer.echo(json.dumps({"output": str(out), "objects": int(len(table["label"])), "voxel_size_nm": vs,
                           "summary": summ}))


@app.command("mesh")
def mesh_cmd(
    labels: str = typer.Argument(..., help="Label volume (ZYX, any readable format)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder of meshes: <label>.<format> per object and "
                                "meshes.json listing them."),
    fmt: str = typer.Option("ply", "--format", help="ply (binary), obj (text) or stl (binary)."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Only these labels, comma-separated (default: every "
                                      "object)."),
    voxel_size: Optional[str] = typer.Option(None, "--voxel-size", help="nm per voxel, 'z,y,x' (default: "
                                             "from the file's metadata, else 1 nm)."),
    key: Optional[str] = KEY,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing mesh folder."),
    blockwise: bool = typer.Option(False, "--blockwise", help="Find the objects' boxes block by block on Dask "
                                   "(volumes larger than memory); each object is then read alone.",
                                   rich_help_panel="Blockwise"),
    block_shape: Optional[str] = BLOCK_SHAPE,
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
):
    """Surface meshes of the objects (those whose area `panoptem measure` gives), one file per object, x, y, z
    in nm: for Blender, Amira, Imaris, ParaView, MeshLab."""
    from ..meshes import MESH_FORMATS, export_meshes
    if fmt not in MESH_FORMATS:
        raise PanoptemError(f"--format must be one of {', '.join(MESH_FORMATS)}, not '{fmt}'.")
    wanted = None
    if ids is not None:
        try:
            wanted = [int(v) for v in ids.split(",") if v.strip()]
        except ValueError:
            wanted = []
        if not wanted or min(wanted) < 1:
            raise PanoptemError(f"--ids must be labels (whole numbers from 1) separated by commas, not '{ids}'.")
    from .._atomic import check_output
    check_output(output, overwrite, [labels])  # before the work
    lab = read_input(labels, key)
    if lab.data.ndim != 3:
        raise PanoptemError(f"'{labels}' is a {lab.data.ndim}D image; meshes are made of 3D objects: give a "
                            "ZYX label volume.")
    vs = voxel_size_option(voxel_size, lab)
    table = _measured(lab, None, vs, blockwise, block_shape, workers, scheduler, MeasureParams(surface=False))
    origin = None if lab.origin is None else tuple(0.0 if o is None else float(o) for o in lab.origin)
    res = export_meshes(lab.data, output, voxel_size=vs, origin=origin, ids=wanted, fmt=fmt, table=table,
                        overwrite=overwrite, inputs=[labels], progress=True)
    note_voxels_as_nm(vs, 3)
    typer.echo(json.dumps({"output": str(Path(output).expanduser().absolute()), "objects": len(res["objects"]),
                           "format": fmt, "voxel_size_nm": res["voxel_size_nm"], "origin_nm": res["origin_nm"],
                           "area_nm2": round(sum(o["area_nm2"] for o in res["objects"]), 3)}))
