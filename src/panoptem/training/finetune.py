"""Fine-tune a model on a few annotated patches, or train a new one from
dataset folders; either way the result is scored and registered as a user model.

Unlike empanada, any number of patches works (batches of ``min(8, n)`` drawn
with replacement, counted in iterations, never in epochs), and images of any
dtype are scaled by the model card's rule in training exactly as in inference.

For example (needs a dataset folder)::

    r = finetune("MitoLite_v1", "my_patches", name="MitoLite_myTissue", iterations=200)
    r["before"]["foreground_iou"], r["after"]["foreground_iou"]
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from typing import TYPE_CHECKING

from .._atomic import discard, write_text
from ..errors import PanoptemError
from ..models.card import ClassInfo, ModelCard, Normalization, Weights
from ..params import LAYERS
from .train import one_run_per_folder

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
        got = f"{len(widths)} numbers" if len(widths) != 5 else "a number below 1"
        raise PanoptemError(f"Widths need 5 positive numbers (stem and 4 stages), not {got}: '{text}'.")
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


def evaluate_pairs(model, images, masks, divisors=None, runtime: str = "auto", **params) -> dict:
    """Segment every image with ``model`` (:func:`~panoptem.segment_2d`, ``runtime``) and
    pool the scores over all of them.

    Returns ``foreground_iou`` (pixels pooled), ``precision_50``, ``recall_50``,
    ``f1_50`` (objects matched at IoU 0.5, counts pooled), ``n_images``,
    ``n_gt``, ``n_pred``, ``n_empty`` (images whose mask holds no object: true
    negatives) and ``false_on_empty`` (objects predicted on them, counted as false
    positives in the precision). With several classes, objects match within their
    class (``divisors`` gives each mask's label divisor).
    """
    from .._evaluate import evaluate
    from ..inference.segment2d import segment_2d
    from ..params import Params2D, make_params
    pdiv = make_params(Params2D, **params).label_divisor
    multi = model.card.num_classes > 1 and pdiv is not None
    divisors = divisors if divisors is not None else [None] * len(images)
    tp = fp = fn = n_gt = n_pred = inter = union = n_empty = false_on_empty = 0
    for im, gt, div in zip(images, masks, divisors):
        # a plane with its neighbours, (2k + 1, H, W), for a model that sees them
        pred = segment_2d(im, model, runtime=runtime, with_neighbours=np.ndim(im) == 3, **params)
        gt = np.asarray(gt).astype(np.int64)
        if multi and div:  # the masks' divisor -> the prediction's
            gt = np.where(gt > 0, (gt // div) * pdiv + gt % div, 0)
        r = evaluate(pred, gt, iou_thresholds=(0.5,), label_divisor=pdiv if multi else None)
        tp, fp, fn = tp + r["tp_50"], fp + r["fp_50"], fn + r["fn_50"]
        n_gt, n_pred = n_gt + r["n_gt"], n_pred + r["n_pred"]
        if not gt.any():
            n_empty += 1
            false_on_empty += r["n_pred"]
        p, g = pred > 0, gt > 0
        inter += int(np.count_nonzero(p & g))
        union += int(np.count_nonzero(p | g))
    empty = n_gt == 0 and n_pred == 0 and union == 0

    def ratio(a, b):  # nothing to find and nothing found is a perfect score, as in evaluate()
        return round(a / b, 4) if b else (1.0 if empty else 0.0)
    return dict(foreground_iou=ratio(inter, union), f1_50=ratio(tp, tp + fp / 2 + fn / 2),
                precision_50=ratio(tp, tp + fp), recall_50=ratio(tp, tp + fn), n_images=len(images),
                n_gt=int(n_gt), n_pred=int(n_pred), n_empty=int(n_empty), false_on_empty=int(false_on_empty))


def scores_line(s: dict | None) -> str:
    """One line of scores: foreground IoU, F1 / precision / recall at IoU 0.5, objects, and
    what was found on background-only patches.

    >>> scores_line(dict(foreground_iou=0.5, f1_50=0.6, precision_50=0.75, recall_50=0.5, n_images=3,
    ...                  n_gt=4, n_pred=3, n_empty=1, false_on_empty=0))
    'IoU 0.500, F1@0.5 0.600 (precision 0.750, recall 0.500), 3 objects found / 4 true on 3 patches, 0 on the 1 background-only patch'
    """
    if s is None:
        return "not measured"
    empty = (f", {s['false_on_empty']} on the {s['n_empty']} background-only patch{'es' if s['n_empty'] != 1 else ''}"
             if s.get("n_empty") else "")
    return (f"IoU {s['foreground_iou']:.3f}, F1@0.5 {s['f1_50']:.3f} (precision {s['precision_50']:.3f}, recall "
            f"{s['recall_50']:.3f}), {s['n_pred']} objects found / {s['n_gt']} true on {s['n_images']} "
            f"patch{'es' if s['n_images'] != 1 else ''}{empty}")


def split_held_out(masks, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices (train, held out) of patches: ``round(n * fraction)`` held out (at least 1,
    leaving at least 2 to train on), drawn at random (``seed``) from patches with objects
    and background-only ones in proportion, keeping a patch with objects on each side.
    None when there are fewer than 3 patches or fewer than 2 with objects: a held-out set of
    background alone would score a model that finds nothing best.

    >>> masks = [np.ones((2, 2))] * 6 + [np.zeros((2, 2))] * 2
    >>> train, held = split_held_out(masks, 0.25)
    >>> len(train), len(held), int(sum(masks[i].any() for i in held))
    (6, 2, 1)
    """
    n = len(masks)
    pos = [i for i, m in enumerate(masks) if np.any(m)]
    if fraction <= 0 or n < 3 or len(pos) < 2:
        return list(range(n)), []
    k = min(max(1, round(n * fraction)), n - 2)
    neg = [i for i in range(n) if not np.any(masks[i])]
    # background-only patches count (they keep precision honest): one at least when two or more are held out
    k_neg = min(len(neg), max(round(k * len(neg) / n), 1 if neg and k >= 2 else 0))
    k_neg = min(k_neg, k - 1)  # ... but never all of them
    k_pos = min(k - k_neg, len(pos) - 1)
    k_neg = min(k - k_pos, len(neg))
    rng = np.random.default_rng(seed)
    held = sorted([int(i) for i in rng.choice(pos, k_pos, replace=False)] +
                  [int(i) for i in rng.choice(neg, k_neg, replace=False)]) if (k_pos or k_neg) else []
    return [i for i in range(n) if i not in held], held


def _where(folder) -> str | None:
    """A dataset folder as a run records it (absolute), None for none."""
    return None if folder is None else str(Path(folder).expanduser().absolute())


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
    if val_dir is None:
        return train.images, train.masks, train.divisors, "training patches (no validation folder given)"
    return (*_scored_folders(val_dir, train), f"validation folder {val_dir}")


def _scored_folders(val_dir, train: "DatasetFolders", context: int = 0) -> tuple[list, list, list]:
    """(images, masks, divisors) of the validation folder(s): a folder's ``dataset.json`` gives its
    masks' divisor, else the one the training folders were given (as for training)."""
    from .dataset import dataset_folders, load_dataset
    ims, mks, divs = [], [], []
    trained = {Path(f).resolve() for f in train.folders}
    for f in dataset_folders([val_dir]):
        if f.resolve() in trained:
            raise PanoptemError(f"The validation folder {f} is also trained on: scores on patches a model was "
                                "trained on look better than they are; give a folder of other patches (or, to "
                                "fine-tune, leave --val-dir out: a share of the patches is held out).")
        i, m, meta = load_dataset(f, context)
        ims += i; mks += m
        divs += [meta["label_divisor"] if meta["has_meta"] else train.label_divisor] * len(i)
    return ims, mks, divs


def _check_patch_size(patch_size: int, card: ModelCard | None = None) -> int:
    """A multiple of the padding factor, 2 of them at least (the deepest layer needs 2 x 2 pixels
    to train with batch norm on one patch)."""
    pf = max(32, card.padding_factor if card else 32)
    if patch_size < 2 * pf or patch_size % pf:
        raise PanoptemError(f"Patch size must be a multiple of {pf} and at least {2 * pf}, not {patch_size}.")
    return int(patch_size)


class _Mixed:
    """Batches of a fine-tuning set with a share of replayed data (the model's own training
    data): ``round(batch * ratio)`` patches of each batch, at least 1, come from ``replay``."""

    def __init__(self, own, replay, ratio: float):
        self.own, self.replay, self.ratio = own, replay, float(ratio)
        self.invert = own.invert  # the user's patches' contrast (the replayed data is the model's own)

    def __len__(self) -> int:
        return len(self.own)

    def replayed(self, batch_size: int) -> int:
        """Patches of a batch of ``batch_size`` drawn from the replay data."""
        if batch_size < 2 or self.ratio <= 0:
            return 0
        return min(max(1, round(batch_size * self.ratio)), batch_size - 1)

    def batch(self, rng, cfg):
        import dataclasses

        import torch
        k = self.replayed(cfg.batch_size)
        a = self.own.batch(rng, dataclasses.replace(cfg, batch_size=cfg.batch_size - k))
        if not k:
            return a
        b = self.replay.batch(rng, dataclasses.replace(cfg, batch_size=k))
        return tuple(torch.cat([x, y]) for x, y in zip(a, b))


def _subset(data: "DatasetFolders", idx: list[int], gamma: float):
    """The patches ``idx`` of ``data`` as training data, each folder keeping its own weight."""
    from .dataset import TrainingData
    bounds = np.cumsum([0, *data.counts])
    sources = []
    for j, folder in enumerate(data.folders):
        mine = [i for i in idx if bounds[j] <= i < bounds[j + 1]]
        if mine:
            sources.append((folder, [data.images[i] for i in mine], [data.masks[i] for i in mine],
                            data.divisors[mine[0]], [data.names[i].split("/", 1)[1] for i in mine]))
    return TrainingData(sources, data.classes, gamma, data.normalization, data.invert)


def _validation(val_dir, data: "DatasetFolders", fraction: float, seed: int, gamma: float, context: int = 0):
    """(training data, (images, masks, divisors) to score on or None, description, held-out names)."""
    if val_dir is not None:
        ims, mks, divs = _scored_folders(val_dir, data, context)
        return data, (ims, mks, divs), f"validation folder {val_dir} ({len(ims)} patches)", []
    train_idx, held = split_held_out(data.masks, fraction, seed)
    if not held:
        return data, None, None, []
    val = ([data.images[i] for i in held], [data.masks[i] for i in held], [data.divisors[i] for i in held])
    n_empty = sum(not np.any(m) for m in val[1])
    where = (f"{len(held)} held-out patch{'es' if len(held) != 1 else ''} of {len(data)}"
             f"{f' ({n_empty} background-only)' if n_empty else ''}, not trained on")
    return _subset(data, train_idx, gamma), val, where, [data.names[i] for i in held]


def _scoring(segment_params: dict | None, invert: bool) -> dict:
    """The inference parameters a training run scores with: ``segment_params`` with the run's
    ``invert`` (the images' contrast, given once)."""
    params = dict(segment_params or {})
    if bool(params.get("invert", invert)) != bool(invert):
        raise PanoptemError("invert is given twice, differently (the run's and segment_params'): the images "
                            "are scored with the contrast they are trained with; give it once.")
    params["invert"] = bool(invert)
    return params


def _training_folder(a: dict) -> Path:
    """Where a run named ``a["name"]`` trains: ``a["out_dir"]``, else the models home's folder."""
    from ..models.home import training_dir
    return Path(a["out_dir"]).expanduser() if a["out_dir"] else training_dir(a["name"])


@one_run_per_folder(_training_folder)
def finetune(model_name: str, train_dir, val_dir=None, name: str = "FinetunedModel", iterations: int = 100,
             patch_size: int = 256, layers: str = "none", lr: float = 1e-3, device: str = "auto",
             batch_size: int = 8, gamma: float = 0.7, scale_range: tuple[float, float] = (0.75, 1.33),
             seed: int = 0, val_fraction: float = 0.25, validate_every: int = 0, replay=None,
             replay_ratio: float = 0.25, overwrite: bool = False, segment_params: dict | None = None, log=print,
             on_step=None, stop=None, out_dir=None, resume: bool = True, invert: bool = False) -> dict:
    """Fine-tune a registered model on a dataset folder and register the result.

    Scores are never measured on the patches trained on: on ``val_dir``, or else on a
    share (``val_fraction``) of the patches held out from training. The held-out
    set is scored before training, every ``validate_every`` steps and at the end; the
    weights with the best held-out F1@0.5 (then foreground IoU) are kept — the base
    model's own when no step beats it. Background-only patches count: objects found
    on them are false positives. ``replay`` (dataset folders of the model's own
    training data) makes ``replay_ratio`` of every batch, so the model keeps what it knew.

    Parameters
    ----------
    model_name : registered name or card path of a panoptem (state-dict) model.
    train_dir : dataset folder (``images/`` + ``masks/``, see
        :func:`~panoptem.training.dataset.store_dataset`), a root of several, or a list of them.
    val_dir : dataset folder to score on (then every patch of ``train_dir`` is trained on).
    name : name of the new model.
    iterations : optimiser steps, each on ``min(batch_size, n_patches)``
        patches drawn with replacement (1 patch works as well as 1000).
    patch_size : training crop in pixels (multiple of 32, at least 64); smaller images are
        padded, larger ones cropped at random.
    layers : "Finetunable layers": ``none`` trains decoder and heads only,
        ``stage4`` ... ``stage1`` also the encoder from that stage on, ``all`` everything.
    lr : peak learning rate (one-cycle schedule).
    device : "auto", "cpu", "cuda", "cuda:N" or "mps".
    val_fraction : share of the patches held out without ``val_dir`` (at least 1, and only
        with 3 patches or more, 2 of them with objects; else nothing is scored and the last
        weights are kept).
    validate_every : steps between scorings of the held-out set (0: about 10 per run).
    replay : dataset folder(s) of the model's own training data to mix in.
    replay_ratio : share of every batch drawn from ``replay``.
    segment_params : inference parameters for the scoring (``segment_2d``'s).
    invert : the patches have bright membranes: they are inverted for training and scoring (the
        replayed data is not), and the new model is run with ``invert`` as well.
    log : receives progress lines; ``on_step`` receives every step's record
        (``step``, ``loss``, ...); raising from it stops the run.
    stop : asked after every step; True stops the run after that step, keeps a
        checkpoint in the work folder and raises
        :class:`~panoptem.training.train.TrainingCancelled`.
    out_dir : work folder (checkpoint, best weights, log); default
        ``<PANOPTEM_HOME>/training/<name>``, removed once the model is registered.
        With ``resume`` a run stopped there continues from its checkpoint.

    Returns
    -------
    dict with ``before`` and ``after`` scores on the held-out set (``foreground_iou``,
    ``f1_50``, ``precision_50``, ``recall_50``, ...; see :func:`evaluate_pairs`; None when
    nothing could be held out), ``evaluated_on``, ``held_out`` (patch names),
    ``kept_step`` (the step whose weights were kept; 0: the base model's),
    ``validation`` (one record per scoring), ``weights`` and ``card`` (paths of the
    registered model), ``name``, ``losses`` (one per iteration).
    """
    from ..models.architecture import architecture_config
    from ..models.home import check_new_name, get_card
    from ..models.load import LoadedModel, load_model, pick_device
    from ..params import FinetuneParams, make_params
    from .dataset import DatasetFolders
    from .train import BestWeights, TrainConfig, _atomic_save, train
    opts = make_params(FinetuneParams, iterations=iterations, patch_size=patch_size, layers=layers, lr=lr,
                       batch_size=batch_size, gamma=gamma, scale_range=tuple(scale_range), seed=seed,
                       val_fraction=val_fraction, validate_every=validate_every, replay_ratio=replay_ratio,
                       invert=invert)
    iterations, lr, batch_size, gamma, seed = opts.iterations, opts.lr, opts.batch_size, opts.gamma, opts.seed
    params = _scoring(segment_params, opts.invert)
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
    context = card.context_slices  # a model that sees neighbours trains on flipbook patches' planes around each
    dirs = [train_dir] if isinstance(train_dir, (str, Path)) else list(train_dir)
    data = DatasetFolders(dirs, card.classes, card.label_divisor, gamma, card.normalization, context=context,
                          invert=opts.invert)
    train_data, val, where, held = _validation(val_dir, data, opts.val_fraction, seed, gamma, context)
    replay_dirs = [replay] if isinstance(replay, (str, Path)) else list(replay or [])
    source = train_data
    if replay_dirs:
        source = _Mixed(train_data, DatasetFolders(replay_dirs, card.classes, card.label_divisor, gamma,
                                                   card.normalization, context=context), opts.replay_ratio)
    if val is None:
        log(f"note: {len(data)} patch(es) are too few to hold any out, and no validation folder was given: "
            "before/after are not measured and the last weights are kept; give --val-dir (or 3 patches or "
            "more) for honest figures.")
        before = None
    else:
        before = evaluate_pairs(base, *val, **params)
        log(f"before: {scores_line(before)} ({where})")
    n_batch = min(batch_size, len(train_data) + (len(source.replay) if replay_dirs else 0))
    if replay_dirs:
        n_batch = max(n_batch, 2)
        k = source.replayed(n_batch)
        log(f"replay: {k} of every {n_batch} patches from {', '.join(str(d) for d in replay_dirs)}")
    every = opts.validate_every or max(1, int(iterations) // 10)
    # checkpointed as it is scored (at most every 200 steps): a killed run resumes from its last scoring
    cfg = TrainConfig(iterations=int(iterations), batch_size=n_batch, patch_size=patch_size,
                      lr=lr, weight_decay=1e-4, scale_range=opts.scale_range, seed=seed,
                      checkpoint_every=min(200, every), validate_every=every,
                      architecture=architecture_config(base.module.config), device=dev)
    losses: list[float] = []
    stage = _training_folder({"out_dir": out_dir, "name": name})
    keep = out_dir is not None
    history_file = stage / "scores.json"
    history: list[dict] = []
    best = BestWeights(stage / "best.pt", cfg.architecture, start=(0, before))

    def validate(model, step: int) -> None:
        # PyTorch: weights that change every step are not worth an ONNX export (nor a cache file each)
        scores = evaluate_pairs(LoadedModel(card, model, dev), *val, runtime="torch", **params)
        history[:] = [h for h in history if h["step"] < step] + [{"step": step, **scores}]
        write_text(history_file, json.dumps(history))  # a resumed run reports every step scored
        log(f"step {step}: {scores_line(scores)}")
        best.offer(model, step, scores)

    def resumed(step: int, extra: dict | None) -> None:
        # what a killed run scored after the checkpoint goes: this run scores those steps again, or ends before
        best.restore(extra, step)
        old = json.loads(history_file.read_text()) if history_file.exists() else []
        history[:] = [h for h in old if h["step"] <= step]
        if history != old:
            write_text(history_file, json.dumps(history))

    # a run stopped, refused or failed leaves its work folder (its checkpoint) to the next run of the
    # name, which resumes it only when it is the same run
    from .._atomic import work_folder
    from .train import claim_run
    run = {"base_model": model_name, "train_dir": [_where(d) for d in dirs], "val_dir": _where(val_dir),
           "layers": layers, "gamma": gamma, "val_fraction": opts.val_fraction,
           "replay": [_where(r) for r in replay_dirs], "replay_ratio": opts.replay_ratio if replay_dirs else None}
    if opts.invert:  # only then: runs of earlier releases stay resumable
        run["invert"] = True
    restart = f"pass --restart (resume=False in Python) to start afresh, or choose another --name than '{name}'"
    # before its scores are read; a restarted run scores afresh
    claim_run(work_folder(stage, "checkpoints and weights"), cfg, run, resume, restart,
              ("best.pt", "scores.json", "kept.pt"))
    state = {k: v.detach().cpu().clone() for k, v in base.module.state_dict().items()}
    scored = val is not None
    weights = train(source, stage, cfg, resume=resume, log=log, init_state=state, frozen=frozen,
                    on_step=lambda r: (losses.append(r["loss"]), on_step and on_step(r)), stop=stop,
                    validate=validate if scored else None, run=run, restart=restart,
                    extra_state=best.state if scored else None, on_resume=resumed if scored else None)
    kept_step = best.step if scored else int(iterations)  # nothing held out to score: the last step's weights
    after = best.scores
    if kept_step != int(iterations):
        chosen = stage / "kept.pt"
        if best.weights is None:
            _atomic_save({"architecture": cfg.architecture, "state_dict": state}, chosen)
            log("kept the base model's weights: no step scored better on the held-out patches")
        else:
            _atomic_save({"architecture": cfg.architecture, "state_dict": best.weights}, chosen)
            log(f"kept the weights of step {kept_step} (best held-out F1@0.5), not those of the last step")
        weights = chosen
    if after is not None:
        log(f"after: {scores_line(after)} ({where}; step {kept_step})")
    new_card = card.model_copy(deep=True)
    new_card.description = (f"{card.name} fine-tuned on {len(train_data)} patch(es) from "
                            f"{', '.join(Path(d).name for d in dirs)} "
                            f"({iterations} iterations, finetunable layers: {layers}).\n"
                            f"Base model: {card.description.strip()}").strip()
    new_card.architecture = cfg.architecture
    new_card.validation = {"evaluated_on": where or "nothing (too few patches to hold out)",
                           "before": before, "after": after, "kept_step": kept_step,
                           "scored_steps": [h["step"] for h in history]}
    new_card.training = {"base_model": card.name, "train_dirs": [str(d) for d in dirs], "n_patches": len(train_data),
                         "held_out": held, "iterations": int(iterations), "layers": layers, "lr": lr,
                         "patch_size": patch_size, "batch_size": cfg.batch_size,
                         "replay_dirs": [str(d) for d in replay_dirs],
                         "replay_ratio": opts.replay_ratio if replay_dirs else 0.0,
                         "final_loss": float(np.mean(losses[-5:])) if losses else None}
    if opts.invert:
        new_card.training["invert"] = True  # its users' images have bright membranes: segment with invert
    path = _register(new_card, weights, name, overwrite)
    if not keep:  # registered: the default work folder goes
        discard(stage)  # renamed first: a run killed while removing it leaves no half checkpoint to resume
    return {"name": name, "before": before, "after": after, "evaluated_on": where, "held_out": held,
            "kept_step": kept_step, "validation": history, "weights": get_card(name).weights_path(),
            "card": str(path), "losses": losses}


def train_new(train_dirs, name: str, labels=((1, "mitochondria", "instance"),), label_divisor: int | None = None,
              iterations: int = 2000, patch_size: int = 256, architecture: dict | None = None, val_dir=None,
              lr: float = 2e-3, batch_size: int = 8, gamma: float = 0.7, device: str = "auto",
              description: str = "", voxel_size_nm: float | None = None, out_dir=None, resume: bool = True,
              seed: int = 0, overwrite: bool = False, segment_params: dict | None = None, log=print,
              on_step=None, stop=None, invert: bool = False) -> dict:
    """Train a new model from dataset folders and register it (``log``,
    ``on_step``, ``stop`` and ``invert`` as in :func:`finetune`).

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
    out_dir : checkpoints and logs; default ``<PANOPTEM_HOME>/training/<name>``, removed once the
        model is registered. With ``resume`` an interrupted run continues from its checkpoint.

    Returns
    -------
    dict with ``after`` scores, ``evaluated_on``, ``weights``, ``card``, ``name``, ``losses``.
    """
    from ..models.architecture import architecture_config
    from ..models.home import check_new_name
    from ..models.load import pick_device
    from .dataset import DatasetFolders, dataset_folders, load_dataset, parse_classes
    from ..params import TrainParams, make_params
    from .train import TrainConfig, train
    arch = dict(architecture or {})
    opts = make_params(TrainParams, iterations=iterations, patch_size=patch_size, lr=lr, batch_size=batch_size,
                       gamma=gamma, seed=seed, widths=arch.get("widths"), label_divisor=label_divisor,
                       voxel_size_nm=voxel_size_nm, invert=invert)
    iterations, lr, batch_size, gamma, seed = opts.iterations, opts.lr, opts.batch_size, opts.gamma, opts.seed
    params = _scoring(segment_params, opts.invert)
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
    data = DatasetFolders(dirs, classes, label_divisor, gamma, norm, invert=opts.invert)
    out = _training_folder({"out_dir": out_dir, "name": name})
    cfg = TrainConfig(iterations=int(iterations), batch_size=min(batch_size, len(data)), patch_size=patch_size,
                      lr=lr, seed=seed, architecture=arch, device=dev,
                      validate_every=max(1, min(500, int(iterations) // 5)))
    ims, mks, divs, where = _eval_set(val_dir, data)
    val = None
    if val_dir is not None:
        vals = [load_dataset(f) for f in dataset_folders([val_dir])]
        val = ([i for v in vals for i in v[0]], [m for v in vals for m in v[1]])
    losses: list[float] = []
    run = {"train_dirs": [_where(d) for d in dirs], "labels": [list(c) for c in classes],
           "label_divisor": label_divisor, "val_dir": _where(val_dir), "gamma": gamma}
    if opts.invert:  # only then: runs of earlier releases stay resumable
        run["invert"] = True
    weights = train(data, out, cfg, resume=resume, val=val, log=log,
                    on_step=lambda r: (losses.append(r["loss"]), on_step and on_step(r)), stop=stop, run=run,
                    restart=f"pass --restart (resume=False in Python) to start afresh, or choose another "
                            f"--name than '{name}' (or another --out-dir)")
    card = ModelCard(
        name=name,
        description=description or (f"Trained from scratch on {len(data)} image(s) of "
                                    f"{', '.join(Path(d).name for d in dirs)} ({iterations} iterations)."),
        classes=[ClassInfo(id=c, name=n, kind=k) for c, n, k in classes],
        label_divisor=label_divisor, normalization=norm, voxel_size_nm=voxel_size_nm, architecture=arch,
        weights=Weights(file=str(weights), format="state_dict"))
    after = evaluate_pairs(_loaded(card, weights, dev), ims, mks, divs, **params)
    log(f"after: {after} on {where}")
    card.validation = {"evaluated_on": where, "after": after}
    card.training = {"train_dirs": [str(d) for d in dirs], "n_images": len(data), "iterations": int(iterations),
                     "lr": lr, "patch_size": patch_size, "batch_size": cfg.batch_size, "gamma": gamma,
                     "label_divisor": label_divisor}
    if opts.invert:
        card.training["invert"] = True
    path = _register(card, weights, name, overwrite)
    if not out_dir:  # registered: its default work folder goes (a later run of the name starts afresh)
        discard(out)
    from ..models.home import get_card
    return {"name": name, "after": after, "evaluated_on": where, "weights": get_card(name).weights_path(),
            "card": str(path), "losses": losses}
