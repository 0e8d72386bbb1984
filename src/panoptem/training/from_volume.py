"""Train a single-class instance model from an image volume and 2D instance
labels (e.g. the Lucchi training volume), holding out a validation block: the
volume's slices are one more source of :class:`~.dataset.TrainingData`, trained
by the same loop as dataset folders. The held-out block is segmented in 3D while
training, and the weights with the best 3D score are kept."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import PanoptemError
from .dataset import VolumeSlices
from .train import BestWeights, TrainConfig, drop_records_after, one_run_per_folder, train


def parse_range(text: str) -> slice:
    """``"0:125"`` -> ``slice(0, 125)``."""
    try:
        a, b = text.split(":")
        start, stop = int(a) if a.strip() else None, int(b) if b.strip() else None
    except ValueError:
        raise PanoptemError(f"Slice range '{text}' is not START:STOP (e.g. 0:125, or : for all).") from None
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        raise PanoptemError(f"Slice range '{text}' has a negative bound; give slice numbers from 0.")
    return slice(start, stop)


def score_3d(labels: np.ndarray, mask: np.ndarray, min_size: int) -> dict:
    """3D scores of predicted ``labels`` against the 3D connected components (6-connected) of
    the ground-truth ``mask``; ground-truth objects under ``min_size`` voxels are ignored (the
    size filter would remove them from any prediction)."""
    import cc3d

    from .._evaluate import evaluate
    gt = cc3d.connected_components(np.asarray(mask) > 0, connectivity=6)
    r = evaluate(labels, gt, iou_thresholds=(0.5,), ignore_smaller=min_size)
    return {k: (round(float(r[k]), 4) if isinstance(r[k], float) else int(r[k]))
            for k in ("foreground_iou", "f1_50", "precision_50", "recall_50", "n_pred", "n_gt")}


def init_weights(name: str) -> tuple[dict, dict]:
    """(architecture, state dict) of a registered model or a weights file to start from."""
    from ..models.architecture import PanopticNet
    from ..models.load import load_model
    m = load_model(name, device="cpu")
    if not isinstance(m.module, PanopticNet):
        raise PanoptemError(f"--init {name}: training starts only from a panoptem network (weights saved as a "
                            "state dict, e.g. MitoLite_v1), not from an exported or foreign model.")
    return m.module.config, {k: v.detach().clone() for k, v in m.module.state_dict().items()}


@one_run_per_folder(lambda a: Path(a["out_dir"]).expanduser())
def train_from_volume(image_path: str, labels_path: str, out_dir: str, train_slices: str,
                      val_slices: str | None, cfg: TrainConfig, resume: bool = True, log=print,
                      init: str | None = None, min_size: int = 500, context_slices: int | None = None,
                      invert: bool = False) -> Path:
    """Train on ``train_slices`` of a ZYX volume and return the weights to keep.

    With ``val_slices``, the held-out block is segmented in 3D (xy stack, default
    parameters) every ``cfg.validate_every`` steps and at the end, scored with
    :func:`score_3d` (``min_size``), logged to ``val3d.jsonl``, and the best weights
    (:func:`~.train.better_scores`) are written to ``out_dir/best.pt`` (their scores to
    ``best.json``), which is returned; a resumed run remembers the best of the steps up to its
    checkpoint (:class:`~.train.BestWeights`), a restarted one starts afresh.
    Without, the last weights are returned.
    ``init``: a registered model (or card / weights path) to start from, with its architecture.
    ``context_slices`` k: the network sees each slice with its k neighbours on each side (2k + 1
    input channels; None: 0, or the ``init`` model's). ``invert``: the volume has bright membranes;
    it is inverted for training and for the held-out block's scoring (segment with invert too).
    """
    from .._atomic import check_outside_inputs
    from ..io import read_image
    check_outside_inputs(out_dir, [image_path, labels_path], "the checkpoints (-o)")
    img = read_image(image_path).data
    lab = read_image(labels_path).data
    if img.shape != lab.shape:
        raise PanoptemError(f"Image {img.shape} and labels {lab.shape} must have the same shape.")
    tr = parse_range(train_slices)
    if img.ndim != 3 or not len(range(*tr.indices(img.shape[0]))):
        raise PanoptemError(f"Training slices '{train_slices}' select nothing of the image {tuple(img.shape)}; "
                            "give a ZYX volume and a range inside it.")
    init_state = None
    if init:
        arch, init_state = init_weights(init)
        cfg.architecture, cfg.init = arch, init
    k = (int(cfg.architecture.get("in_channels", 1)) - 1) // 2
    if context_slices is not None and context_slices != k:
        if init:
            raise PanoptemError(f"--init {init} sees {k} neighbour(s) on each side; --context-slices "
                                f"{context_slices} would change its first layer: leave it out, or train from "
                                "scratch.")
        k = int(context_slices)
        cfg.architecture = {**cfg.architecture, "in_channels": 2 * k + 1}
    train_zs = range(*tr.indices(img.shape[0]))
    vs = parse_range(val_slices) if val_slices else None
    if vs is not None:  # held-out slices are never trained on
        held = set(range(*vs.indices(img.shape[0])))
        if len(held) == 1:  # segmented and scored as a volume
            raise PanoptemError(f"Validation slices '{val_slices}' select one slice; the held-out block is "
                                "segmented in 3D, so hold out 2 or more (e.g. 135:165).")
        overlap = sorted(held.intersection(train_zs))
        if overlap and train_slices.strip() != ":":
            raise PanoptemError(f"Training slices '{train_slices}' and validation slices '{val_slices}' share "
                                f"{len(overlap)} slice(s) (z {overlap[0]}...): a model scored on slices it was "
                                "trained on looks better than it is; give ranges that do not overlap.")
        if overlap:  # all slices but the held-out ones
            train_zs = [z for z in train_zs if z not in held]
            log(f"training on the {len(train_zs)} slices outside the validation slices {val_slices}")
            if not train_zs:
                raise PanoptemError(f"Validation slices '{val_slices}' leave no slice to train on; hold out fewer.")
    ds = VolumeSlices(img, lab, train_zs, name=Path(labels_path).name, context=k, invert=invert)
    # a resumed run is this run: the same volume, slices, held-out block and scoring
    run = {"image": str(Path(image_path).absolute()), "labels": str(Path(labels_path).absolute()),
           "train_slices": train_slices, "val_slices": val_slices, "min_size": min_size}
    if invert:  # only then: runs of earlier releases stay resumable
        run["invert"] = True
    restart = "pass --restart to start afresh, or give another -o folder"
    if vs is None:
        return train(ds, out_dir, cfg, resume=resume, log=log, init_state=init_state, run=run, restart=restart)
    vimg, vlab = np.asarray(img[vs]), np.asarray(lab[vs])
    if not len(vimg):
        raise PanoptemError(f"Validation slices '{val_slices}' select nothing of the image {tuple(img.shape)}.")
    from .._atomic import work_folder
    from .train import claim_run
    out = work_folder(out_dir, "checkpoints and weights")
    # before the folder's scores are read; a restarted run scores afresh
    claim_run(out, cfg, run, resume, restart, ("best.pt", "best.json", "val3d.jsonl"))
    from ..models.architecture import architecture_config
    best = BestWeights(out / "best.pt", architecture_config(cfg.architecture), record=out / "best.json")

    def resumed(step: int, extra: dict | None) -> None:
        # what a killed run scored after the checkpoint goes: this run scores those steps again, or ends before
        best.restore(extra, step)
        drop_records_after(out / "val3d.jsonl", step)

    def validate(model, step: int) -> None:
        from ..inference.segment3d import segment_3d
        from ..models.card import ModelCard, Weights
        from ..models.load import LoadedModel
        card = ModelCard(name="validation", architecture=architecture_config(model.config), context_slices=k,
                         weights=Weights(file="(in training)"))
        res = segment_3d(vimg, LoadedModel(card, model, cfg.device), runtime="torch", min_size=min_size,
                         invert=invert)
        scores = {"step": step, **score_3d(next(iter(res.labels.values())), vlab, min_size)}
        log(json.dumps({"val3d": scores}))
        with open(out / "val3d.jsonl", "a") as f:
            f.write(json.dumps(scores) + "\n")
        best.offer(model, step, scores)

    zs = range(*vs.indices(img.shape[0]))[::4]  # 2D checks in training: every 4th held-out slice
    from ..inference.segment2d import take_plane
    val = ([take_plane(img, z, "xy", neighbours=k) if k else np.asarray(img[z]) for z in zs], list(vlab[::4]))
    train(ds, out_dir, cfg, resume=resume, val=val, log=log, init_state=init_state, validate=validate, run=run,
          restart=restart, extra_state=best.state, on_resume=resumed)
    if best.scores is None:  # an earlier panoptem checkpointed the last step before scoring it; killed in between
        raise PanoptemError(f"{out_dir} holds a finished run whose held-out slices were never scored; run again "
                            "with --restart.")
    log(f"kept the weights of step {best.step} (best 3D F1@0.5 on the held-out slices, the later on a "
        f"tie): {json.dumps(best.scores)}")
    return best.file
