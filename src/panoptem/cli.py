"""The ``panoptem`` command line: one sub-command per job.

User errors print one sentence (no traceback) and exit with status 2.
"""

import inspect
import json
import sys
from pathlib import Path
from typing import Optional, get_args, get_origin, Literal

import typer

from .errors import PanoptemError, one_line
from .params import PLANE_AXIS, Params2D, Params3D, make_params

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Panoptic segmentation of organelles in EM images and volumes.")
from .models.commands import model_app  # noqa: E402
app.add_typer(model_app, name="model")


def _param_options(cls) -> list[inspect.Parameter]:
    """typer options generated from a pydantic parameter schema, so the CLI,
    the API and the widgets share one list of names, defaults and help."""
    out = []
    for name, f in cls.model_fields.items():
        ann = f.annotation
        helptext = f.description or ""
        if get_origin(ann) is Literal:
            helptext += f" [choices: {', '.join(get_args(ann))}]"
            ann = str
        dashed, snake = "--" + name.replace("_", "-"), "--" + name
        names = (dashed, snake) if dashed != snake else (dashed,)
        if ann is bool:
            opt = typer.Option(f.default, *names, help=helptext, rich_help_panel="Parameters")
        else:
            opt = typer.Option(f.default, *names, help=helptext, rich_help_panel="Parameters")
        out.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann))
    return out


def _with_params(cls):
    """Decorator: append the schema's options to a command's signature; the
    command receives them as ``params`` (a validated ``cls`` instance)."""
    def deco(func):
        sig = inspect.signature(func)
        own = [p for p in sig.parameters.values() if p.name != "params"]
        names = set(cls.model_fields)

        def wrapper(**kwargs):
            pv = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            return func(params=make_params(cls, **pv), **kwargs)

        wrapper.__signature__ = sig.replace(parameters=own + _param_options(cls))
        wrapper.__name__, wrapper.__doc__ = func.__name__, func.__doc__
        return wrapper
    return deco


def _input(path: str, key: Optional[str] = None):
    """Read an input image (``sample``: the bundled crop); print what the reader assumed."""
    from .io import read_image
    from .sample import SAMPLE_PATH
    if path == "sample" and not Path(path).exists():
        path = str(SAMPLE_PATH)
    img = read_image(path, key=key)
    for note in img.notes:
        typer.echo(f"note: {note}", err=True)
    return img


KEY_HELP = "Dataset inside an HDF5 file or Zarr group (default: the only one, or OME-Zarr level 0)."
PREVIEW_HELP = ("Also write a PNG picture of the result: a few planes of the labels over the image, a scale bar, "
                "the model, the main parameters and the object count (needs matplotlib: pip install "
                "'panoptem[report]').")


@app.command("segment2d")
@_with_params(Params2D)
def segment2d_cmd(
    input: str = typer.Argument(..., help="Image: TIFF, PNG/JPEG, MRC, Zarr, HDF5, a folder of 2D images, "
                                "or 'sample' for the bundled EM crop."),
    output: Path = typer.Option(..., "-o", "--output", help="Output labels (.tif or .zarr)."),
    model: str = typer.Option("MitoLite_v1", "--model", "-m", help="Model name or card path."),
    slice_index: Optional[int] = typer.Option(None, "--slice", help="For a 3D input: the slice to segment "
                                              "(default: the middle one)."),
    plane: str = typer.Option("xy", "--plane", help="For --slice: xy, xz or yz."),
    key: Optional[str] = typer.Option(None, "--key", help=KEY_HELP),
    batch: bool = typer.Option(False, "--batch", help="Segment every slice of a stack independently."),
    unique_ids: bool = typer.Option(False, "--unique-ids", help="With --batch: ids unique across the stack "
                                    "(default: restart in every slice, as empanada)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    preview: Optional[Path] = typer.Option(None, "--preview", help=PREVIEW_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    params: Params2D = None,
):
    """2D inference (empanada's "2D Inference (Parameter Testing)")."""
    from .inference.segment2d import segment_2d, take_plane
    from .io import write_labels
    img = _input(input, key)
    data = img.data
    vs = img.voxel_size
    if data.ndim == 3 and not batch:
        ax = PLANE_AXIS.get(plane)
        if ax is None:
            raise PanoptemError(f"--plane must be xy, xz or yz, not '{plane}'.")
        idx = data.shape[ax] // 2 if slice_index is None else slice_index
        data = take_plane(data, idx, plane)
        if vs is not None:
            vs = tuple(v for i, v in enumerate(vs) if i != ax)
        if slice_index is None:
            typer.echo(f"note: segmenting the middle {plane} slice ({idx}) of the volume; choose another with "
                       "--slice and --plane, or every slice with --batch.", err=True)
    inputs = [img.path] if img.path else []
    if preview is not None:  # never over an input or the output
        from .reporting._preview import prepare_preview
        prepare_preview(preview, overwrite, inputs + [str(output)])
    labels = segment_2d(data, model, batch=batch, unique_ids=unique_ids, device=device, progress=True,
                        preview=preview, voxel_size=vs, overwrite=overwrite, **params.model_dump())
    out = write_labels(output, labels, voxel_size=vs, overwrite=overwrite, inputs=inputs)
    _report(labels, params.label_divisor, out, preview)


def _report(labels, divisor, out, preview=None):
    import numpy as np
    ids = np.unique(labels)
    ids = ids[ids > 0]
    rec = {"output": str(out), "objects": int(ids.size), "shape": list(labels.shape), "dtype": str(labels.dtype)}
    if preview is not None:
        rec["preview"] = str(preview)
    typer.echo(json.dumps(rec))


@app.command("segment3d")
@_with_params(Params3D)
def segment3d_cmd(
    input: str = typer.Argument(..., help="Volume: TIFF, MRC, Zarr, HDF5, a folder of 2D images, "
                                "or 'sample' for the bundled EM crop."),
    output: Path = typer.Option(..., "-o", "--output", help="Output labels (.tif or .zarr); a multi-class "
                                "model writes NAME_<class>.tif per class."),
    model: str = typer.Option("MitoLite_v1", "--model", "-m", help="Model name or card path."),
    key: Optional[str] = typer.Option(None, "--key", help=KEY_HELP),
    ortho: bool = typer.Option(False, "--ortho", help="Same as --orthoplane."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    batch_size: int = typer.Option(4, "--batch-size", help="Slices per network call."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Keep network outputs here (default: "
                                             "a hidden folder beside OUTPUT, removed on success). Re-running the "
                                             "same command resumes an interrupted run; with --keep-cache, "
                                             "re-decodes with new thresholds without running the network."),
    keep_cache: bool = typer.Option(False, "--keep-cache", help="Keep the cache folder after success."),
    preview: Optional[Path] = typer.Option(None, "--preview", help=PREVIEW_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    params: Params3D = None,
):
    """3D inference along one plane or ortho-plane (empanada's "3D Inference")."""
    from .inference.segment3d import segment_3d
    img = _input(input, key)
    if ortho:
        params.orthoplane = True
    res = segment_3d(img.data, model, device=device, batch_size=batch_size, progress=True,
                     voxel_size=img.voxel_size, cache_dir=cache_dir, keep_cache=keep_cache, output=output,
                     overwrite=overwrite, inputs=[img.path] if img.path else [], preview=preview,
                     **params.model_dump())
    if preview is not None and res.written:
        res.written[0]["preview"] = str(preview)
    for p in res.written:
        typer.echo(json.dumps(p))


@app.command("evaluate")
def evaluate_cmd(
    prediction: Path = typer.Argument(..., help="Predicted labels (any readable format)."),
    ground_truth: Path = typer.Argument(..., help="Ground-truth labels of the same shape."),
    label_divisor: Optional[int] = typer.Option(None, "--label-divisor", help="Evaluate per class "
                                                "(class = label // divisor)."),
    per_slice: bool = typer.Option(False, "--per-slice", help="Compare every z slice on its own and pool the "
                                   "counts (for segment2d --batch outputs, whose ids restart in every slice)."),
    ignore_smaller: int = typer.Option(0, "--ignore-smaller", help="Ground-truth objects under this many voxels "
                                       "are neither targets nor misses; predictions that found them are "
                                       "dropped too."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write an HTML report with the scores "
                                          "and pictures of the largest false objects, misses, splits and "
                                          "merges (needs matplotlib: pip install 'panoptem[report]')."),
    image: Optional[str] = typer.Option(None, "--image", help="With --report: the grey image, drawn under "
                                        "the labels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report."),
):
    """Foreground IoU, precision/recall/F1 at IoU 0.5 and 0.75, PQ, mean AP and a breakdown of errors
    (false objects, misses, splits, merges) as JSON."""
    import numpy as np

    from ._evaluate import evaluate
    from .io import read_image
    kw = dict(label_divisor=label_divisor, per_slice=per_slice, ignore_smaller=ignore_smaller)
    inputs = [str(prediction), str(ground_truth)] + ([image] if image else [])
    if report is not None:  # checked before the work
        from .reporting._files import check_target
        from .reporting._mpl import require_matplotlib
        require_matplotlib()
        check_target(report, (".html", ".htm"), overwrite, inputs)
    pred = np.asarray(read_image(prediction).data)
    gt = np.asarray(read_image(ground_truth).data)
    scores = evaluate(pred, gt, **kw)
    if report is not None:
        from .reporting import evaluation_report
        img = None if image is None else read_image(image).data
        evaluation_report(pred, gt, report, image=img, scores=scores, overwrite=overwrite, inputs=inputs,
                          names=(prediction.name, ground_truth.name), **kw)
        scores["report"] = str(report)
    typer.echo(json.dumps(scores))


@app.command("report")
def report_cmd(
    labels: str = typer.Argument(..., help="Label image or volume (any readable format)."),
    output: Path = typer.Option(..., "-o", "--output", help="Report file: .html (self-contained) or .pdf."),
    image: Optional[str] = typer.Option(None, "--image", help="Grey image of the same shape: drawn under the "
                                        "labels; adds mean intensity."),
    fmt: Optional[str] = typer.Option(None, "--format", help="html or pdf (default: from the output's suffix)."),
    voxel_size: Optional[str] = typer.Option(None, "--voxel-size", help="nm per voxel, 'z,y,x' (default: "
                                             "from the file's metadata, else 1 nm)."),
    label_divisor: Optional[int] = typer.Option(None, "--label-divisor", help="class = label // divisor."),
    top: int = typer.Option(20, "--top", help="Rows of the table of largest objects."),
    surface: bool = typer.Option(True, "--surface/--no-surface", help="Surface area and sphericity (slower)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report."),
):
    """A report of a label image: planes, histograms of volume and extent in nm, objects per slice and
    the largest objects with the measurements of `panoptem measure` (needs matplotlib)."""
    from .io import read_image
    from .reporting import report
    vs = _voxel_size_option(voxel_size, read_image(labels))
    out = Path(output)
    if fmt is not None and not out.suffix:
        out = out.with_suffix("." + fmt.lower())
    path = report(labels, out, image=image, voxel_size=vs, label_divisor=label_divisor, top=top, format=fmt,
                  surface=surface, overwrite=overwrite)
    typer.echo(json.dumps({"output": str(path), "voxel_size_nm": vs}))


def _voxel_size_option(text: Optional[str], img):
    """--voxel-size 'z,y,x' (nm: positive, finite, one per axis of ``img``), else the file's."""
    if not text:
        return img.voxel_size
    import math
    try:
        vs = tuple(float(v) for v in text.split(","))
    except ValueError:
        vs = ()
    if not vs or not all(math.isfinite(v) and v > 0 for v in vs):
        raise PanoptemError(f"--voxel-size must be positive numbers in nm separated by commas (e.g. 10,5,5), "
                            f"not '{text}'.")
    if len(vs) != img.data.ndim:
        raise PanoptemError(f"--voxel-size needs {img.data.ndim} values, got {len(vs)}.")
    return vs


@app.command("measure")
def measure_cmd(
    labels: str = typer.Argument(..., help="Label image or volume (any readable format)."),
    output: Path = typer.Option(..., "-o", "--output", help="CSV table, one row per object."),
    image: Optional[str] = typer.Option(None, "--image", help="Grey image of the same shape: adds mean intensity."),
    voxel_size: Optional[str] = typer.Option(None, "--voxel-size", help="nm per voxel, 'z,y,x' (default: "
                                             "from the file's metadata, else 1 nm)."),
    label_divisor: Optional[int] = typer.Option(None, "--label-divisor", help="class = label // divisor."),
    surface: bool = typer.Option(True, "--surface/--no-surface", help="Surface area and sphericity (slower)."),
):
    """Per-object measurements in physical units (volume, surface, extents, centroid...) to CSV."""
    import numpy as np

    from ._measure import measure, summarize, write_table
    lab = _input(labels)
    vs = _voxel_size_option(voxel_size, lab)
    img = np.asarray(_input(image).data) if image else None
    table = measure(np.asarray(lab.data), voxel_size=vs, image=img, label_divisor=label_divisor, surface=surface)
    out = write_table(table, output)
    summ = {k: [float(x) for x in v] for k, v in summarize(table).items()}
    typer.echo(json.dumps({"output": str(out), "objects": int(len(table["label"])), "voxel_size_nm": vs,
                           "summary": summ}))


@app.command("train-volume")
def train_cmd(
    image: str = typer.Argument(..., help="Training image volume (ZYX) or 2D stack."),
    labels: str = typer.Argument(..., help="Instance labels of the same shape (2D ids per slice are fine)."),
    out_dir: Path = typer.Option(..., "-o", "--out-dir", help="Folder for checkpoints and final weights."),
    train_slices: str = typer.Option(":", "--train-slices", help="Slices to train on, e.g. 0:125."),
    val_slices: Optional[str] = typer.Option(None, "--val-slices", help="Held-out slices, e.g. 135:165."),
    iterations: int = typer.Option(4000, "--iterations"),
    batch_size: int = typer.Option(8, "--batch-size"),
    patch_size: int = typer.Option(256, "--patch-size"),
    lr: float = typer.Option(2e-3, "--lr"),
    min_scale: float = typer.Option(0.33, "--min-scale", help="Smallest zoom of scale augmentation."),
    max_scale: float = typer.Option(1.25, "--max-scale", help="Largest zoom of scale augmentation."),
    seed: int = typer.Option(0, "--seed"),
    schedule_steps: int = typer.Option(0, "--schedule-steps", help="Length of the one-cycle learning-rate "
                                       "schedule (0: --iterations)."),
    anneal_from: int = typer.Option(0, "--anneal-from", help="From this step, anneal the learning rate "
                                    "(cosine) to 0 at --iterations (0: off)."),
    device: str = typer.Option("cpu", "--device"),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue from out_dir/checkpoint.pt."),
):
    """Train a single-class instance model from an image volume + instance labels (resumable)."""
    from .models.load import pick_device
    from .params import VolumeTrainParams
    from .training.from_volume import train_from_volume
    from .training.train import TrainConfig
    p = make_params(VolumeTrainParams, iterations=iterations, batch_size=batch_size, patch_size=patch_size, lr=lr,
                    min_scale=min_scale, max_scale=max_scale, seed=seed, schedule_steps=schedule_steps,
                    anneal_from=anneal_from)
    cfg = TrainConfig(iterations=p.iterations, batch_size=p.batch_size, patch_size=p.patch_size, lr=p.lr,
                      scale_range=(p.min_scale, p.max_scale), seed=p.seed, device=pick_device(device),
                      schedule_steps=p.schedule_steps, anneal_from=p.anneal_from)
    path = train_from_volume(image, labels, str(out_dir), train_slices, val_slices, cfg, resume=resume,
                             log=lambda s: typer.echo(s, err=True))
    typer.echo(json.dumps({"weights": str(path)}))


from .training.commands import training_app; app.add_typer(training_app)  # noqa: E402,E702


INTERRUPTED = "interrupted; nothing was written to the output. Re-run the same command to resume (segment3d " \
              "keeps the network outputs computed so far)."


# Libraries that decode input files: an error of theirs that escaped the readers' own checks
# is still a file the user can fix (or replace), so it gets one line, not a traceback.
_READER_LIBRARIES = ("tifffile", "imagecodecs", "PIL", "imageio", "zarr", "numcodecs", "h5py", "mrcfile")


def _known_error(e: BaseException) -> str | None:
    """One line for an error that a bad input, not a bug, explains; None otherwise."""
    first = one_line(e)[:200]
    if isinstance(e, MemoryError):
        return (f"not enough memory for this input ({first or 'MemoryError'}); crop it, use --tile-size for a "
                "large 2D image, or run on a machine with more memory.")
    if type(e).__module__.split(".")[0] in _READER_LIBRARIES:
        return (f"could not read an input file ({type(e).__name__}: {first}); check that it is complete and in "
                "the format its name says.")
    return None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"warning: {one_line(message)}", err=True)


def _click_error(name: str) -> type:
    """An exception class of the click that typer runs on (its own copy in recent typer)."""
    import importlib
    module = importlib.import_module(typer.BadParameter.__module__)
    return getattr(module, name, type(f"_No{name}", (Exception,), {}))


_UsageError, _ClickException = _click_error("UsageError"), _click_error("ClickException")
_NoArgsIsHelp, _ClickAbort = _click_error("NoArgsIsHelpError"), _click_error("Abort")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; user errors, unknown options and values that do
    not parse print one line and exit 2."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy on degenerate data: nothing a user can act on
            code = app(args=argv, prog_name="panoptem", standalone_mode=False)
    except _NoArgsIsHelp as e:  # `panoptem` or `panoptem model` alone: the help
        e.show()
        return 2
    except _UsageError as e:  # unknown option, missing argument, value of the wrong type
        where = f"; see `{e.ctx.command_path} --help`" if e.ctx is not None else ""
        typer.echo(f"error: {one_line(e.format_message()).rstrip('.')}{where}.", err=True)
        return 2
    except _ClickException as e:
        typer.echo(f"error: {one_line(e.format_message())}", err=True)
        return e.exit_code
    except (typer.Abort, _ClickAbort):
        typer.echo("aborted.", err=True)
        return 1
    except PanoptemError as e:
        typer.echo(f"error: {one_line(e)}", err=True)
        return 2
    except SystemExit as e:
        if e.code == 130:
            typer.echo(INTERRUPTED, err=True)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        return 130
    except Exception as e:  # noqa: BLE001 - only errors that a bad input explains; the rest re-raise
        msg = _known_error(e)
        if msg is None:
            raise
        typer.echo(f"error: {msg}", err=True)
        return 2
    if code == 130:  # Ctrl-C, turned into exit status 130 by the command-line library
        typer.echo(INTERRUPTED, err=True)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
