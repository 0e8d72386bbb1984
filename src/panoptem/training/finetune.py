"""Fine-tune a model on a few annotated patches, or train a new one from
dataset folders; either way the result is scored and registered as a user model.

Unlike empanada, any number of patches works (batches of ``min(8, n)`` drawn
with replacement, counted in iterations, never in epochs), and images of any
dtype are scaled by the model card's rule in training exactly as in inference.

>>> r = finetune("MitoLite_v1", "my_patches", name="MitoLite_myTissue", iterations=200)  # doctest: +SKIP
>>> r["before"]["foreground_iou"], r["after"]["foreground_iou"]                         # doctest: +SKIP
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from typing import TYPE_CHECKING

from ..errors import PanoptemError
from ..models.card import ClassInfo, ModelCard, Normalization, Weights
from ..params import LAYERS

if TYPE_CHECKING:
    from .dataset import DatasetFolders

ENCODER = ("stem", "stage1", "stage2", "stage3", "stage4")


def parse_widths(text: str | None) -> list[int] | None:
    """Channel widths of the stem and the 4 encoder stages from ``"24,32,64,128,192"``
    (the network's size); empty: None (the default network).

    >>> parse_widths("16, 24,48,96,128")
    [16, 24, 48, 96, 128]
    """
    if text is None or not str(text).strip():
        return None
    try:
        widths = [int(w) for w in str(text).replace(";", ",").split(",")]
    except ValueError:
        raise PanoptemError(f"Widths must be 5 comma-separated integers, not '{text}'.") from None
    if len(widths) != 5 or min(widths) < 1:
        raise PanoptemError(f"Widths need 5 positive numbers (stem and 4 stages), not {len(widths)}: '{text}'.")
    return widths


def frozen_modules(layers: str) -> tuple[str, ...]:
    """Encoder modules kept fixed for a "Finetunable layers" choice: ``stageK``
    trains stage K and deeper; ``none`` trains only decoder and heads; ``all`` everything.

    >>> frozen_modules("stage3")
    ('stem', 'stage1', 'stage2')
    """
    if layers not in LAYERS:
        raise PanoptemError(f"layers must be one of {', '.join(LAYERS)}, not '{layers}'.")
    if layers == "all":
        return ()
    if layers == "none":
        return ENCODER
    return ENCODER[:ENCODER.index(layers)]


def evaluate_pairs(model, images, masks, divisors=None, **params) -> dict:
    """Segment every image with ``model`` (:func:`~panoptem.segment_2d`) and
    pool the scores over all of them.

    Returns ``foreground_iou`` (pixels pooled), ``precision_50``, ``recall_50``,
    ``f1_50`` (objects matched at IoU 0.5, counts pooled), ``n_images``,
    ``n_gt``, ``n_pred``. With several classes, objects match within their
    class (``divisors`` gives each mask's label divisor).
    """
    from .._evaluate import evaluate
    from ..inference.segment2d import segment_2d
    from ..params import Params2D, make_params
    pdiv = make_params(Params2D, **params).label_divisor
    multi = model.card.num_classes > 1 and pdiv is not None
    divisors = divisors if divisors is not None else [None] * len(images)
    tp = fp = fn = n_gt = n_pred = inter = union = 0
    for im, gt, div in zip(images, masks, divisors):
        pred = segment_2d(im, model, **params)
        gt = np.asarray(gt).astype(np.int64)
        if multi and div:  # the masks' divisor -> the prediction's
            gt = np.where(gt > 0, (gt // div) * pdiv + gt % div, 0)
        r = evaluate(pred, gt, iou_thresholds=(0.5,), label_divisor=pdiv if multi else None)
        tp, fp, fn = tp + r["tp_50"], fp + r["fp_50"], fn + r["fn_50"]
        n_gt, n_pred = n_gt + r["n_gt"], n_pred + r["n_pred"]
        p, g = pred > 0, gt > 0
        inter += int(np.count_nonzero(p & g))
        union += int(np.count_nonzero(p | g))
    empty = n_gt == 0 and n_pred == 0 and union == 0

    def ratio(a, b):  # nothing to find and nothing found is a perfect score, as in evaluate()
        return round(a / b, 4) if b else (1.0 if empty else 0.0)
    return dict(foreground_iou=ratio(inter, union), f1_50=ratio(tp, tp + fp / 2 + fn / 2),
                precision_50=ratio(tp, tp + fp), recall_50=ratio(tp, tp + fn), n_images=len(images),
                n_gt=int(n_gt), n_pred=int(n_pred))


def _register(card: ModelCard, weights: Path, name: str, overwrite: bool) -> Path:
    from ..models.registry import register
    card = card.model_copy(deep=True)
    card.name = name
    card.weights = Weights(file=Path(weights).name, format="state_dict")
    card.exports = []  # exports of a base model do not hold these weights
    card.source_dir = None
    with tempfile.TemporaryDirectory(prefix="panoptem-card-") as d:
        path = Path(d) / "card.yaml"
        path.write_text(card.to_yaml())
        return register(name, path, weights=str(weights), overwrite=overwrite)


def _loaded(card: ModelCard, weights: Path, device: str):
    """A :class:`~panoptem.models.load.LoadedModel` from freshly trained weights (nothing registered yet)."""
    from ..models.load import load_weights
    card = card.model_copy(deep=True)
    card.weights = Weights(file=str(weights), format="state_dict")
    return load_weights(card, weights, device)


def _eval_set(val_dir, train: "DatasetFolders"):
    """(images, masks, divisors, description) to score on: the validation
    folder, or the training patches themselves."""
    from .dataset import dataset_folders, load_dataset
    if val_dir is None:
        return train.images, train.masks, train.divisors, "training patches (no validation folder given)"
    ims, mks, divs = [], [], []
    for f in dataset_folders([val_dir]):
        i, m, meta = load_dataset(f)
        ims += i; mks += m; divs += [meta["label_divisor"]] * len(i)
    return ims, mks, divs, f"validation folder {val_dir}"


def _check_patch_size(patch_size: int, card: ModelCard | None = None) -> int:
    """A multiple of the padding factor, 2 of them at least (the deepest layer needs 2 x 2 pixels
    to train with batch norm on one patch)."""
    pf = max(32, card.padding_factor if card else 32)
    if patch_size < 2 * pf or patch_size % pf:
        raise PanoptemError(f"Patch size must be a multiple of {pf} and at least {2 * pf}, not {patch_size}.")
    return int(patch_size)


def finetune(model_name: str, train_dir, val_dir=None, name: str = "FinetunedModel", iterations: int = 100,
             patch_size: int = 256, layers: str = "none", lr: float = 1e-3, device: str = "auto",
             batch_size: int = 8, gamma: float = 0.7, scale_range: tuple[float, float] = (0.75, 1.33),
             seed: int = 0, overwrite: bool = False, segment_params: dict | None = None, log=print,
             on_step=None, stop=None, out_dir=None, resume: bool = True) -> dict:
    """Fine-tune a registered model on a dataset folder and register the result.

    Parameters
    ----------
    model_name : registered name or card path of a panoptem (state-dict) model.
    train_dir : dataset folder (``images/`` + ``masks/``, see
        :func:`~panoptem.training.dataset.store_dataset`), or a root of several.
    val_dir : dataset folder to score on before and after; without it the
        training patches are scored (said in ``evaluated_on``).
    name : name of the new model.
    iterations : optimiser steps, each on ``min(batch_size, n_patches)``
        patches drawn with replacement (1 patch works as well as 1000).
    patch_size : training crop in pixels (multiple of 32, at least 64); smaller images are
        padded, larger ones cropped at random.
    layers : "Finetunable layers": ``none`` trains decoder and heads only,
        ``stage4`` ... ``stage1`` also the encoder from that stage on, ``all`` everything.
    lr : peak learning rate (one-cycle schedule).
    device : "auto", "cpu", "cuda", "cuda:N" or "mps".
    segment_params : inference parameters for the scoring (``segment_2d``'s).
    log : receives progress lines; ``on_step`` receives every step's record
        (``step``, ``loss``, ...); raising from it stops the run.
    stop : asked after every step; True stops the run after that step, keeps a
        checkpoint in the work folder and raises
        :class:`~panoptem.training.train.TrainingCancelled`.
    out_dir : work folder (checkpoint, log); default
        ``<PANOPTEM_HOME>/training/<name>``, removed once the model is registered.
        With ``resume`` a run stopped there continues from its checkpoint.

    Returns
    -------
    dict with ``before`` and ``after`` scores (``foreground_iou``, ``f1_50``,
    ...; see :func:`evaluate_pairs`), ``evaluated_on``, ``weights`` and
    ``card`` (paths of the registered model), ``name``, ``losses`` (one per iteration).
    """
    from ..models.architecture import architecture_config
    from ..models.home import check_new_name, get_card, training_dir
    from ..models.load import load_model, pick_device
    from .dataset import DatasetFolders
    from ..params import FinetuneParams, make_params
    from .train import TrainConfig, TrainingCancelled, train
    opts = make_params(FinetuneParams, iterations=iterations, patch_size=patch_size, layers=layers, lr=lr,
                       batch_size=batch_size, gamma=gamma, scale_range=tuple(scale_range), seed=seed)
    iterations, lr, batch_size, gamma, seed = opts.iterations, opts.lr, opts.batch_size, opts.gamma, opts.seed
    check_new_name(name, overwrite)
    card = get_card(model_name)
    if card.weights.format != "state_dict":
        raise PanoptemError(f"Model '{card.name}' is a {card.weights.format} model, which panoptem cannot "
                            "fine-tune; fine-tune a panoptem model (e.g. MitoLite_v1) or train a new one with "
                            "`panoptem train`.")
    frozen = frozen_modules(layers)
    _check_patch_size(patch_size, card)
    dev = pick_device(device)
    base = load_model(model_name, device=dev)
    data = DatasetFolders([train_dir], card.classes, card.label_divisor, gamma, card.normalization)
    params = segment_params or {}
    ims, mks, divs, where = _eval_set(val_dir, data)
    before = evaluate_pairs(base, ims, mks, divs, **params)
    log(f"before: {before} on {where}")
    cfg = TrainConfig(iterations=int(iterations), batch_size=min(batch_size, len(data)), patch_size=patch_size,
                      lr=lr, weight_decay=1e-4, scale_range=opts.scale_range, seed=seed,
                      checkpoint_every=int(iterations), validate_every=int(iterations) + 1,
                      architecture=architecture_config(base.module.config), device=dev)
    losses: list[float] = []
    stage = Path(out_dir) if out_dir else training_dir(name)
    keep = out_dir is not None
    try:
        state = {k: v.detach().cpu().clone() for k, v in base.module.state_dict().items()}
        weights = train(data, stage, cfg, resume=resume, log=log, init_state=state, frozen=frozen,
                        on_step=lambda r: (losses.append(r["loss"]), on_step and on_step(r)), stop=stop)
        new_card = card.model_copy(deep=True)
        after = evaluate_pairs(_loaded(new_card, weights, dev), ims, mks, divs, **params)
        log(f"after: {after}")
        new_card.description = (f"{card.name} fine-tuned on {len(data)} patch(es) from {Path(train_dir).name} "
                                f"({iterations} iterations, finetunable layers: {layers}).\n"
                                f"Base model: {card.description.strip()}").strip()
        new_card.architecture = cfg.architecture
        new_card.validation = {"evaluated_on": where, "before": before, "after": after}
        new_card.training = {"base_model": card.name, "train_dirs": [str(train_dir)], "n_patches": len(data),
                             "iterations": int(iterations), "layers": layers, "lr": lr, "patch_size": patch_size,
                             "batch_size": cfg.batch_size,
                             "final_loss": float(np.mean(losses[-5:])) if losses else None}
        path = _register(new_card, weights, name, overwrite)
    except TrainingCancelled:
        keep = True  # the checkpoint: fine-tuning again with the same name continues from it
        raise
    finally:
        if not keep:
            shutil.rmtree(stage, ignore_errors=True)
    return {"name": name, "before": before, "after": after, "evaluated_on": where,
            "weights": get_card(name).weights_path(), "card": str(path), "losses": losses}


def train_new(train_dirs, name: str, labels=((1, "mitochondria", "instance"),), label_divisor: int | None = None,
              iterations: int = 2000, patch_size: int = 256, architecture: dict | None = None, val_dir=None,
              lr: float = 2e-3, batch_size: int = 8, gamma: float = 0.7, device: str = "auto",
              description: str = "", voxel_size_nm: float | None = None, out_dir=None, resume: bool = True,
              seed: int = 0, overwrite: bool = False, segment_params: dict | None = None, log=print,
              on_step=None, stop=None) -> dict:
    """Train a new model from dataset folders and register it (``log``,
    ``on_step`` and ``stop`` as in :func:`finetune`).

    Parameters
    ----------
    train_dirs : one or several dataset folders (roots of several work too);
        each folder's images are drawn with weight ``(1/count) ** gamma``.
    name : name of the new model.
    labels : the classes, ``[(id, name, "instance"|"semantic"), ...]`` or
        ``["1,mitochondria,instance", ...]``. One class gives a sigmoid
        channel, several give background + one softmax channel each;
        semantic-only classes get no instance targets.
    label_divisor : divisor the masks are painted with (``class * divisor + n``;
        needed for several classes; a folder's ``dataset.json`` wins for its masks).
        Also written to the card as the divisor to annotate with.
    architecture : :class:`~panoptem.models.architecture.PanopticNet` settings
        (``widths``, ``depths``, ``decoder_channels``, ``head_channels``);
        ``num_classes`` follows from ``labels``.
    val_dir : dataset folder scored at the end (and for the semantic IoU in
        the training log); without it the training images are scored.
    out_dir : checkpoints and logs; default ``<PANOPTEM_HOME>/training/<name>``.
        With ``resume`` an interrupted run continues from its checkpoint.

    Returns
    -------
    dict with ``after`` scores, ``evaluated_on``, ``weights``, ``card``, ``name``, ``losses``.
    """
    from ..models.architecture import architecture_config
    from ..models.home import check_new_name, training_dir
    from ..models.load import pick_device
    from .dataset import DatasetFolders, dataset_folders, load_dataset, parse_classes
    from ..params import TrainParams, make_params
    from .train import TrainConfig, train
    arch = dict(architecture or {})
    opts = make_params(TrainParams, iterations=iterations, patch_size=patch_size, lr=lr, batch_size=batch_size,
                       gamma=gamma, seed=seed, widths=arch.get("widths"), label_divisor=label_divisor,
                       voxel_size_nm=voxel_size_nm)
    iterations, lr, batch_size, gamma, seed = opts.iterations, opts.lr, opts.batch_size, opts.gamma, opts.seed
    check_new_name(name, overwrite)
    classes = parse_classes(labels)
    if len(classes) > 1 and not label_divisor:
        raise PanoptemError("Several classes need --label-divisor: the divisor the masks were painted with "
                            "(label = class * divisor + n).")
    _check_patch_size(patch_size)
    dirs = [train_dirs] if isinstance(train_dirs, (str, Path)) else list(train_dirs)
    n_ch = 1 if len(classes) == 1 else len(classes) + 1
    if arch.get("num_classes", n_ch) != n_ch:
        raise PanoptemError(f"{len(classes)} class(es) need num_classes={n_ch} (background + classes when "
                            "there are several); leave num_classes out of the architecture.")
    arch["num_classes"] = n_ch
    arch = architecture_config(arch)  # the card records every setting, not only those given
    dev = pick_device(device)
    norm = Normalization()
    data = DatasetFolders(dirs, classes, label_divisor, gamma, norm)
    out = Path(out_dir) if out_dir else training_dir(name)
    cfg = TrainConfig(iterations=int(iterations), batch_size=min(batch_size, len(data)), patch_size=patch_size,
                      lr=lr, seed=seed, architecture=arch, device=dev,
                      validate_every=max(1, min(500, int(iterations) // 5)))
    ims, mks, divs, where = _eval_set(val_dir, data)
    val = None
    if val_dir is not None:
        vals = [load_dataset(f) for f in dataset_folders([val_dir])]
        val = ([i for v in vals for i in v[0]], [m for v in vals for m in v[1]])
    losses: list[float] = []
    weights = train(data, out, cfg, resume=resume, val=val, log=log,
                    on_step=lambda r: (losses.append(r["loss"]), on_step and on_step(r)), stop=stop)
    card = ModelCard(
        name=name,
        description=description or (f"Trained from scratch on {len(data)} image(s) of "
                                    f"{', '.join(Path(d).name for d in dirs)} ({iterations} iterations)."),
        classes=[ClassInfo(id=c, name=n, kind=k) for c, n, k in classes],
        label_divisor=label_divisor, normalization=norm, voxel_size_nm=voxel_size_nm, architecture=arch,
        weights=Weights(file=str(weights), format="state_dict"))
    after = evaluate_pairs(_loaded(card, weights, dev), ims, mks, divs, **(segment_params or {}))
    log(f"after: {after} on {where}")
    card.validation = {"evaluated_on": where, "after": after}
    card.training = {"train_dirs": [str(d) for d in dirs], "n_images": len(data), "iterations": int(iterations),
                     "lr": lr, "patch_size": patch_size, "batch_size": cfg.batch_size, "gamma": gamma,
                     "label_divisor": label_divisor}
    path = _register(card, weights, name, overwrite)
    from ..models.home import get_card
    return {"name": name, "after": after, "evaluated_on": where, "weights": get_card(name).weights_path(),
            "card": str(path), "losses": losses}
