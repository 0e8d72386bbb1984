"""What the commands share: options generated from the parameter schema, reading inputs,
one-line user errors."""

import functools
import inspect
from pathlib import Path
from typing import Literal, Optional, get_args, get_origin

import typer

from ..errors import PanoptemError, one_line
from ..params import make_params


def _listed(name: str, text: str) -> list[int]:
    """``"24,32,64"`` -> [24, 32, 64] for a list-valued option."""
    try:
        return [int(v) for v in str(text).replace(";", ",").split(",")]
    except ValueError:
        raise PanoptemError(f"--{name.replace('_', '-')} must be whole numbers separated by commas, "
                            f"not '{text}'.") from None


def param_options(cls, exclude: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """typer options generated from a pydantic parameter schema, so the CLI,
    the API and the widgets share one list of names, defaults and help.

    ``--name-with-dashes`` and ``--name_with_underscores`` both work; a flag that is on by
    default gets ``--no-name``; a list is given as comma-separated numbers; a field's
    ``json_schema_extra={"cli_aliases": [...]}`` adds short names."""
    out = []
    for name, f in cls.model_fields.items():
        if name in exclude:
            continue
        ann = f.annotation
        helptext = f.description or ""
        optional = type(None) in get_args(ann)
        inner = next((a for a in get_args(ann) if a is not type(None)), ann) if optional else ann
        if get_origin(inner) is Literal:
            helptext += f" [choices: {', '.join(get_args(inner))}]"
            inner = str
        elif get_origin(inner) is list:
            helptext += " (comma-separated)"
            inner = str
        dashed, snake = "--" + name.replace("_", "-"), "--" + name
        names = (dashed, snake) if dashed != snake else (dashed,)
        if inner is bool and f.default is True:
            names = (f"{dashed}/--no-{dashed[2:]}",)
        names += tuple((f.json_schema_extra or {}).get("cli_aliases", ()))
        ann = Optional[inner] if optional else inner
        default = f.default if not isinstance(f.default, list) else ",".join(map(str, f.default))
        opt = typer.Option(default, *names, help=helptext, rich_help_panel="Parameters")
        out.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann))
    return out


def with_params(cls, exclude: tuple[str, ...] = ()):
    """Decorator: append the schema's options (but ``exclude``) to a command's signature;
    the command receives them as ``params`` (a validated ``cls`` instance, the excluded
    fields at their defaults)."""
    def deco(func):
        sig = inspect.signature(func)
        own = [p for p in sig.parameters.values() if p.name != "params"]
        names = set(cls.model_fields) - set(exclude)
        lists = {n for n in names if get_origin(next((a for a in get_args(cls.model_fields[n].annotation)
                                                      if a is not type(None)), None)) is list
                 or get_origin(cls.model_fields[n].annotation) is list}

        def wrapper(**kwargs):
            pv = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            for k in lists & set(pv):
                if isinstance(pv[k], str):
                    pv[k] = _listed(k, pv[k]) if pv[k].strip() else None
            return func(params=make_params(cls, **pv), **kwargs)

        wrapper.__signature__ = sig.replace(parameters=own + param_options(cls, exclude))
        wrapper.__name__, wrapper.__doc__ = func.__name__, func.__doc__
        return wrapper
    return deco


def read_input(path: str, key: Optional[str] = None, model: Optional[str] = None, pixel_size=None):
    """Read an input image (``sample``: the bundled crop); print what the reader assumed.
    With ``model``, an OME-Zarr multiscale is read at the level nearest the model's pixel size,
    unless the user gives the ``pixel_size`` (--pixel-size): that is the full-resolution level's,
    which is read then."""
    from ..io import read_image
    from ..sample import SAMPLE_PATH
    if path == "sample" and not Path(path).exists():
        path = str(SAMPLE_PATH)
    pixel = None
    if model is not None and pixel_size is None:
        from ..models.home import get_card
        pixel = get_card(model).working_pixel_nm
    img = read_image(path, key=key, pixel_size_nm=pixel)
    for note in img.notes:
        typer.echo(f"note: {note}", err=True)
    return img


def note_voxels_as_nm(voxel_size, ndim: int) -> None:
    """After a measurement without a voxel size: say that its nm columns count voxels."""
    if voxel_size is None:
        axes = ",".join("ZYX"[-ndim:])
        typer.echo("note: voxel size unknown (the file does not say): measured as 1 nm per voxel, so the nm "
                   f"columns count voxels; pass --voxel-size {axes} in nm.", err=True)


def voxel_size_option(text: Optional[str], img):
    """--voxel-size 'z,y,x' (nm: positive, finite, one per axis of ``img``), else the file's."""
    if not text:
        return img.voxel_size
    import math
    try:
        vs = tuple(float(v) for v in text.split(","))
    except ValueError:
        vs = ()
    from .._measure import MAX_VOXEL_NM
    if not vs or not all(math.isfinite(v) and 0 < v <= MAX_VOXEL_NM for v in vs):
        raise PanoptemError(f"--voxel-size must be positive numbers in nm (at most {MAX_VOXEL_NM:g}) separated by "
                            f"commas (e.g. 10,5,5), not '{text}'.")
    if len(vs) != img.data.ndim:
        raise PanoptemError(f"--voxel-size needs {img.data.ndim} values, got {len(vs)}.")
    return vs


def user_errors(func):
    """Print a :class:`PanoptemError` as one line and exit 2 (also when the
    typer app is called directly, not through ``panoptem.cli.main``)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PanoptemError as e:
            typer.echo(f"error: {one_line(e)}", err=True)
            raise typer.Exit(2) from None
    return wrapper


DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps."
RUNTIME_HELP = ("How the network runs: auto (ONNX Runtime on a CPU when installed, for panoptem's own "
                "networks; else PyTorch), torch or onnx.")
PRECISION_HELP = ("auto (fp32 on a CPU, fp16 on CUDA), fp32, bf16, fp16 (CUDA only) or int8 (CPU, ONNX Runtime: "
                  "the network about 2.6 x faster, objects as fp32's on the held-out block; see the README).")
THREADS_HELP = "Threads of the network (default: every core; beside a GPU, 1 host thread for PyTorch)."
KEY_HELP = ("Dataset inside an HDF5 file, Zarr group or N5 container (default: the only one; for OME-Zarr "
            "the level nearest the model's pixel size).")
PREVIEW_HELP = ("Also write a PNG picture of the result: a few planes of the labels over the image, a scale bar, "
                "the model, the main parameters and the object count (needs matplotlib: pip install "
                "'panoptem\\[report]').")
