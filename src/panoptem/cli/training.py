"""``panoptem train-volume``, ``panoptem patches``, ``panoptem finetune`` and ``panoptem train``.

Heavy imports (torch) happen inside the commands, so ``panoptem --help`` stays fast.
"""

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import PanoptemError
from ..params import FinetuneParams, PatchParams, TrainParams, VolumeTrainParams
from ._app import app
from ._options import DEVICE_HELP, user_errors, with_params


@app.command("train-volume")
@with_params(VolumeTrainParams, exclude=("gamma",))  # one source: nothing to re-weight
def train_cmd(
    image: str = typer.Argument(..., help="Training image volume (ZYX) or 2D stack."),
    labels: str = typer.Argument(..., help="Instance labels of the same shape (2D ids per slice are fine)."),
    out_dir: Path = typer.Option(..., "-o", "--out-dir", help="Folder for checkpoints and final weights."),
    train_slices: str = typer.Option(":", "--train-slices", help="Slices to train on, e.g. 0:125."),
    val_slices: Optional[str] = typer.Option(None, "--val-slices", help="Held-out slices, e.g. 135:165."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue from out_dir/checkpoint.pt."),
    params: VolumeTrainParams = None,
):
    """Train a single-class instance model from an image volume + instance labels (resumable)."""
    from ..models.load import pick_device
    from ..training.from_volume import train_from_volume
    from ..training.train import TrainConfig
    p = params
    cfg = TrainConfig(iterations=p.iterations, batch_size=p.batch_size, patch_size=p.patch_size, lr=p.lr,
                      scale_range=(p.min_scale, p.max_scale), seed=p.seed, device=pick_device(device),
                      schedule_steps=p.schedule_steps, anneal_from=p.anneal_from, hard_negatives=p.hard_negatives,
                      pale=p.pale, validate_every=p.validate_every)
    path = train_from_volume(image, labels, str(out_dir), train_slices, val_slices, cfg, resume=resume,
                             log=lambda s: typer.echo(s, err=True), init=p.init, context_slices=p.context_slices,
                             invert=p.invert)
    typer.echo(json.dumps({"weights": str(path)}))


@app.command("patches")
@user_errors
@with_params(PatchParams)
def patches_cmd(
    input: str = typer.Argument(..., help="Image, 2D stack or volume (any readable format)."),
    output: Path = typer.Option(..., "-o", "--output", help="Dataset folder (created, or appended to)."),
    points: Optional[Path] = typer.Option(None, "--points", help="CSV of points to centre patches on "
                                          "(napari's points export, or z,y,x / y,x per line)."),
    is_2d_stack: bool = typer.Option(False, "--is-2d-stack", help="A 3D input is a stack of unrelated 2D images."),
    flipbook: bool = typer.Option(False, "--flipbook", help="3D only: keep the planes around each patch "
                                  "(DATASET/flipbooks/) to see context while painting the middle one."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Labels of the same shape: crop them too "
                                         "(paired patches); without, masks are left to paint."),
    classes: List[str] = typer.Option(["1,mitochondria,instance"], "--class", help="id,name,instance|semantic; "
                                      "repeat for several classes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace patches of the same name, keeping "
                                   "a mask painted for the same image (default: store them under new names)."),
    params: PatchParams = None,
):
    """Pick patches to annotate (or image + label pairs) and store them as a dataset folder."""
    from ..io import read_image, read_points
    from ..training.dataset import store_dataset
    from ..training.patches import pick_patches
    from .._atomic import check_outside_inputs
    p = params
    class_names = _classes(classes)
    check_outside_inputs(output, [input, labels, points], "the dataset (-o)")
    img = read_image(input)
    lab = read_image(labels).data if labels else None
    pts = read_points(points, 2 if img.data.ndim == 2 else 3) if points else None
    picked = pick_patches(img.data, n=p.n, patch_size=p.patch_size, points=pts, plane=p.plane,
                          is_2d_stack=is_2d_stack, flipbook=flipbook, flipbook_depth=p.flipbook_depth, labels=lab,
                          seed=p.seed, source=Path(input).stem or "image")
    empty = []
    if lab is not None:  # paired mode: a patch without any label teaches nothing new here
        empty = [p.name for p in picked if not p.annotated()[1].any()]
        picked = [p for p in picked if p.annotated()[1].any()]
    if not picked:
        why = f"the labels of all {len(empty)} picked patch(es) are empty" if empty else "no patch was picked"
        raise PanoptemError(f"Nothing to store: {why}; give --n 1 or more, or --points where there are objects.")
    if empty:
        typer.echo(f"left out {len(empty)} patch(es) whose labels are empty: {', '.join(empty[:5])}"
                   f"{' ...' if len(empty) > 5 else ''}", err=True)
    names = store_dataset(picked, output, class_names=class_names, label_divisor=p.label_divisor,
                          overwrite=overwrite)
    n_masks = sum(p.labels is not None for p in picked)
    typer.echo(json.dumps({"dataset": str(output), "images": len(names), "masks": n_masks, "names": names}))
    if n_masks == 0:
        div = f" as class * {p.label_divisor} + n" if p.label_divisor else ""
        typer.echo(f"masks are to be painted: paint the objects of each image in {output}/images and save "
                   f"them{div} as {output}/masks/<same name>.tif; then run `panoptem finetune`.", err=True)


def _classes(items: List[str]) -> list:
    from ..training.dataset import parse_classes
    return parse_classes([c for item in items for c in item.split(";") if c.strip()])


def _summary(result: dict) -> str:
    import numpy as np
    losses = result.pop("losses", [])
    if losses:
        result["loss_first5"] = round(float(np.mean(losses[:5])), 5)
        result["loss_last5"] = round(float(np.mean(losses[-5:])), 5)
    return json.dumps(result)


@app.command("finetune")
@user_errors
@with_params(FinetuneParams)
def finetune_cmd(
    model: str = typer.Argument(..., help="Model to fine-tune (name or card path; a panoptem model)."),
    train_dir: List[Path] = typer.Option(..., "--train-dir", help="Dataset folder: images/ and masks/ of the same "
                                         "names; repeat for several."),
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Dataset folder to score on before, during "
                                           "and after (default: --val-fraction of the training patches, held "
                                           "out from training)."),
    replay: List[Path] = typer.Option([], "--replay", help="Dataset folder of the model's own training data, "
                                      "mixed into every batch at --replay-ratio; repeat for several."),
    name: str = typer.Option(..., "--name", help="Name of the new model (letters, digits, _ . -)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a user model of the same name."),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue a stopped fine-tuning of this --name "
                                "(the same command only), or start it afresh."),
    params: FinetuneParams = None,
):
    """Fine-tune a model on annotated patches; score it on held-out patches (before / during / after), keep the
    best weights and register them."""
    from ..training.finetune import finetune
    r = finetune(model, train_dir, val_dir=val_dir, name=name, device=device, overwrite=overwrite,
                 replay=replay or None, log=lambda s: typer.echo(s, err=True), resume=resume,
                 **params.model_dump())
    r.pop("validation", None)
    typer.echo(_summary(r))


@app.command("train")
@user_errors
@with_params(TrainParams)
def train_new_cmd(
    train_dir: List[Path] = typer.Option(..., "--train-dir", help="Dataset folder; repeat for several."),
    name: str = typer.Option(..., "--name", help="Name of the new model."),
    labels: List[str] = typer.Option(["1,mitochondria,instance"], "--labels", help="id,name,instance|semantic; "
                                     "repeat (or separate with ';') for several classes."),
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Dataset folder to score on."),
    description: str = typer.Option("", "--description", help="Description written to the model card."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Checkpoints and logs (default: "
                                           "PANOPTEM_HOME/training/NAME)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue from the checkpoint in --out-dir."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a user model of the same name."),
    params: TrainParams = None,
):
    """Train a new model (one or several classes) from dataset folders and register it."""
    from ..training.finetune import train_new
    opts = params.model_dump()
    widths = opts.pop("widths")
    r = train_new(train_dir, name, labels=_classes(labels), architecture={"widths": widths} if widths else {},
                  val_dir=val_dir, device=device, description=description, out_dir=out_dir, resume=resume,
                  overwrite=overwrite, log=lambda s: typer.echo(s, err=True), **opts)
    typer.echo(_summary(r))
