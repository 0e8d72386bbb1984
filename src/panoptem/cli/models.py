"""``panoptem model ...``: list, inspect, register, export, import, archive models.

Heavy imports (torch) happen inside the commands, so ``panoptem --help`` stays fast.
"""

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import PanoptemError
from ._app import app
from ._options import user_errors

model_app = typer.Typer(no_args_is_help=True, help="List, inspect, register, export, import and archive models.")
app.add_typer(model_app, name="model")


@model_app.command("list")
@user_errors
def model_list(all_: bool = typer.Option(False, "--all", help="Also show archived models.")):
    """Registered models, one per line."""
    from ..models.home import get_card, list_models
    for m in list_models(include_archived=all_):
        card = get_card(str(m.card_path))
        desc = card.description.splitlines()[0] if card.description else ""
        typer.echo(f"{m.name}\t{'(archived) ' if m.archived else ''}{desc}")


@model_app.command("info")
@user_errors
def model_info(name: str = typer.Argument(..., help="Model name or card path.")):
    """Description, classes, label divisor to annotate with, patch-size divisibility."""
    from ..models.card import card_info
    from ..models.home import get_card
    typer.echo(card_info(get_card(name)), nl=False)


@model_app.command("register")
@user_errors
def model_register(
    name: str = typer.Argument(..., help="New model name (letters, digits, _ . -)."),
    card: Path = typer.Option(..., "--card", help="Model card: panoptem YAML or empanada's model YAML."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights file or http(s)/file URL "
                                          "(default: the one the card names)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a registered model of the same name."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="Weights URL whose card gives no "
                                          "sha256: download it now and record its sha256 (otherwise refused)."),
):
    """Register a model (e.g. MitoNet_v1: --card MitoNet_v1.yaml --weights MitoNet_v1.pth)."""
    from ..models.registry import register
    path = register(name, card, weights=weights, overwrite=overwrite, allow_unverified=allow_unverified)
    typer.echo(json.dumps({"registered": name, "card": str(path)}))


@model_app.command("export")
@user_errors
def model_export(
    name: str = typer.Argument(..., help="Model name or card path."),
    output: str = typer.Option(..., "-o", "--output", help="File to write, or a folder to write "
                                "MODEL.panoptem (.pt, .pth, .onnx, .zip by --format) into."),
    format: str = typer.Option("package", "--format", "-f", help="package: one .panoptem file to share "
                               "(import it with `panoptem model import`); torchscript; empanada: TorchScript "
                               "+ yaml that empanada-napari can register; onnx; bioimageio: a bioimage.io model "
                               "package (.zip, validated with bioimageio.spec)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing TorchScript/ONNX/bioimage.io outputs."),
):
    """Write a model for sharing or for another runtime."""
    from ..models.card import EXPORT_FORMATS
    from ..models.export import export_model
    if format not in EXPORT_FORMATS:
        raise PanoptemError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not '{format}'.")
    out = export_model(name, output, format, overwrite=overwrite)
    rec = {"exported": name, "format": format, "file": str(out)}
    if format not in ("package", "bioimageio"):
        rec["card"] = str(out.with_suffix(".yaml"))
    typer.echo(json.dumps(rec))


@model_app.command("import")
@user_errors
def model_import(
    file: Path = typer.Argument(..., help="A .panoptem model package, or a bioimage.io model package (.zip with "
                                "rdf.yaml) whose interface fits panoptem's."),
    name: Optional[str] = typer.Option(None, "--name", help="Register under this name instead of the package's."),
):
    """Register the model in a .panoptem package or a bioimage.io model package."""
    from ..models.registry import import_package
    typer.echo(json.dumps({"imported": import_package(file, name=name)}))


@model_app.command("archive")
@user_errors
def model_archive(name: str = typer.Argument(..., help="Model name.")):
    """Hide a model from the list (built-in ones too); undo with `restore`."""
    from ..models.registry import archive
    archive(name)
    typer.echo(json.dumps({"archived": name}))


@model_app.command("restore")
@user_errors
def model_restore(name: str = typer.Argument(..., help="Name of an archived model.")):
    """Bring an archived model back."""
    from ..models.registry import restore
    restore(name)
    typer.echo(json.dumps({"restored": name}))
