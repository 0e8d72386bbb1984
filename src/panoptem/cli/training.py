"""``panoptem train-volume``, ``panoptem patches``, ``panoptem finetune`` and ``panoptem train``.

Heavy imports (torch) happen inside the commands, so ``panoptem --help`` stays fast.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import PanoptemError
from ._app import app
from ._options import user_errors


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
    from ..models.load import pick_device
    from ..params import VolumeTrainParams, make_params
    from ..training.from_volume import train_from_volume
    from ..training.train import TrainConfig
    p = make_params(VolumeTrainParams, iterations=iterations, batch_size=batch_size, patch_size=patch_size, lr=lr,
                    min_scale=min_scale, max_scale=max_scale, seed=seed, schedule_steps=schedule_steps,
                    anneal_from=anneal_from)
    cfg = TrainConfig(iterations=p.iterations, batch_size=p.batch_size, patch_size=p.patch_size, lr=p.lr,
                      scale_range=(p.min_scale, p.max_scale), seed=p.seed, device=pick_device(device),
                      schedule_steps=p.schedule_steps, anneal_from=p.anneal_from)
    path = train_from_volume(image, labels, str(out_dir), train_slices, val_slices, cfg, resume=resume,
                             log=lambda s: typer.echo(s, err=True))
    typer.echo(json.dumps({"weights": str(path)}))


@app.command("patches")
@user_errors
def patches_cmd(
    input: str = typer.Argument(..., help="Image, 2D stack or volume (any readable format)."),
    output: Path = typer.Option(..., "-o", "--output", help="Dataset folder (created, or appended to)."),
    n: int = typer.Option(16, "--n", "-n", help="Number of patches (points first, random ones fill up)."),
    patch_size: int = typer.Option(256, "--patch-size", help="Patch side in pixels."),
    points: Optional[Path] = typer.Option(None, "--points", help="CSV of points to centre patches on "
                                          "(napari's points export, or z,y,x / y,x per line)."),
    plane: str = typer.Option("xy", "--plane", help="xy, xz, yz, or random (3D only; isotropic data)."),
    is_2d_stack: bool = typer.Option(False, "--is-2d-stack", help="A 3D input is a stack of unrelated 2D images."),
    flipbook: bool = typer.Option(False, "--flipbook", help="3D only: keep the planes around each patch "
                                  "(DATASET/flipbooks/) to see context while painting the middle one."),
    flipbook_depth: int = typer.Option(5, "--flipbook-depth", help="Planes per flipbook."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Labels of the same shape: crop them too "
                                         "(paired patches); without, masks are left to paint."),
    classes: List[str] = typer.Option(["1,mitochondria,instance"], "--class", help="id,name,instance|semantic; "
                                      "repeat for several classes."),
    label_divisor: Optional[int] = typer.Option(None, "--label-divisor", help="Divisor the masks are painted "
                                                "with (class * divisor + n)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random picks."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace patches of the same name (default: "
                                   "store them under new names)."),
):
    """Pick patches to annotate (or image + label pairs) and store them as a dataset folder."""
    from ..io import read_image
    from ..params import PatchParams, make_params
    from ..training.dataset import store_dataset
    from ..training.patches import pick_patches
    make_params(PatchParams, n=n, patch_size=patch_size, plane=plane, flipbook_depth=flipbook_depth,
                label_divisor=label_divisor, seed=seed)
    class_names = _classes(classes)
    img = read_image(input)
    lab = read_image(labels).data if labels else None
    from ..io import read_points
    pts = read_points(points, 2 if img.data.ndim == 2 else 3) if points else None
    picked = pick_patches(img.data, n=n, patch_size=patch_size, points=pts, plane=plane, is_2d_stack=is_2d_stack,
                          flipbook=flipbook, flipbook_depth=flipbook_depth, labels=lab, seed=seed,
                          source=Path(input).stem or "image")
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
    names = store_dataset(picked, output, class_names=class_names, label_divisor=label_divisor,
                          overwrite=overwrite)
    n_masks = sum(p.labels is not None for p in picked)
    typer.echo(json.dumps({"dataset": str(output), "images": len(names), "masks": n_masks, "names": names}))
    if n_masks == 0:
        div = f" as class * {label_divisor} + n" if label_divisor else ""
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
def finetune_cmd(
    model: str = typer.Argument(..., help="Model to fine-tune (name or card path; a panoptem model)."),
    train_dir: Path = typer.Option(..., "--train-dir", help="Dataset folder: images/ and masks/ of the same names."),
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Dataset folder to score on before and after "
                                           "(default: the training patches)."),
    name: str = typer.Option(..., "--name", help="Name of the new model (letters, digits, _ . -)."),
    iterations: int = typer.Option(100, "--iterations", help="Optimiser steps."),
    patch_size: int = typer.Option(256, "--patch-size", help="Training crop in pixels (multiple of 32, at least 64)."),
    layers: str = typer.Option("none", "--layers", help="Finetunable layers: none (decoder and heads), stage4, "
                               "stage3, stage2, stage1 or all."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate."),
    batch_size: int = typer.Option(8, "--batch-size", help="Patches per step (at most the number of patches)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a user model of the same name."),
):
    """Fine-tune a model on annotated patches; register and score it (before / after)."""
    from ..training.finetune import finetune
    r = finetune(model, train_dir, val_dir=val_dir, name=name, iterations=iterations, patch_size=patch_size,
                 layers=layers, lr=lr, batch_size=batch_size, device=device, seed=seed, overwrite=overwrite,
                 log=lambda s: typer.echo(s, err=True))
    typer.echo(_summary(r))


@app.command("train")
@user_errors
def train_new_cmd(
    train_dir: List[Path] = typer.Option(..., "--train-dir", help="Dataset folder; repeat for several."),
    name: str = typer.Option(..., "--name", help="Name of the new model."),
    labels: List[str] = typer.Option(["1,mitochondria,instance"], "--labels", help="id,name,instance|semantic; "
                                     "repeat (or separate with ';') for several classes."),
    label_divisor: Optional[int] = typer.Option(None, "--label-divisor", help="Divisor the masks are painted "
                                                "with (class * divisor + n); needed for several classes."),
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Dataset folder to score on."),
    iterations: int = typer.Option(2000, "--iterations"),
    patch_size: int = typer.Option(256, "--patch-size", help="Training crop in pixels (multiple of 32, at least 64)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(2e-3, "--lr"),
    gamma: float = typer.Option(0.7, "--gamma", help="Folder re-weighting: image weight (1/count)^gamma."),
    widths: Optional[str] = typer.Option(None, "--widths", help="Channel widths of stem and 4 stages, "
                                         "e.g. 24,32,64,128,192."),
    description: str = typer.Option("", "--description"),
    voxel_size_nm: Optional[float] = typer.Option(None, "--voxel-size-nm", help="Pixel size of the training data."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Checkpoints and logs (default: "
                                           "PANOPTEM_HOME/training/NAME)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue from the checkpoint in --out-dir."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a user model of the same name."),
):
    """Train a new model (one or several classes) from dataset folders and register it."""
    from ..training.finetune import parse_widths, train_new
    arch = {}
    if widths:
        arch["widths"] = parse_widths(widths)
    r = train_new(train_dir, name, labels=_classes(labels), label_divisor=label_divisor, iterations=iterations,
                  patch_size=patch_size, architecture=arch, val_dir=val_dir, lr=lr, batch_size=batch_size,
                  gamma=gamma, device=device, description=description, voxel_size_nm=voxel_size_nm,
                  out_dir=out_dir, resume=resume, seed=seed, overwrite=overwrite,
                  log=lambda s: typer.echo(s, err=True))
    typer.echo(_summary(r))
