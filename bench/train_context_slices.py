"""A training lever measured: neighbouring slices as input channels (2.5D).

Fine-tunes ``MitoLite_v1`` on the Lucchi training slices 0-124 with each slice's neighbours
(z-1, z, z+1, clamped at the volume's ends) as three input channels, or, as the control, with
the slice alone (``--context 0``): the same code, recipe and seed, the input the only
difference. The 3-channel network starts as ``MitoLite_v1`` exactly (its first convolution
takes the centre channel with the trained weights and the neighbours with zeros). With
``--scratch`` it trains from random weights instead (give ``MitoLite_v1``'s recipe, from its
card, to compare with it). Images are normalised as the card's percentiles say (the centre
slice's range for all three channels) with the card's default mean and std.

The held-out block (``--val-slices``, default 135-164) is segmented in 3D while training (xy
stack, default parameters; the network is a model with card ``context_slices`` k, so panoptem's
own pipeline hands it each plane with its neighbours, clamped at the block's ends) and the best
weights by 3D F1, then IoU, are kept and scored in 2D (each slice with its neighbours in the
volume, decoded on its own) and 3D as ``release_mitolite.py`` scores a model.

Appends one JSON line to ``bench/results/train_levers.jsonl`` (or ``--out``). Usage:
    python bench/train_context_slices.py --lucchi DIR --run-dir RUN [--context 1] [--iterations 2000] [--scratch]
    python bench/train_context_slices.py --lucchi DIR --context 1 --score RUN/best.pt --val-slices 125:165
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _common import add_lucchi_argument, emit_to, lucchi_dir, machine

RESULTS = Path(__file__).resolve().parent / "results" / "train_levers.jsonl"
TRAIN, VAL = slice(0, 125), slice(135, 165)


def inflated_state(state: dict, k: int) -> dict:
    """``MitoLite_v1``'s weights with a first convolution of 2k+1 input channels: the trained
    weights on the centre channel, zeros on the neighbours (the same function at the start)."""
    out = dict(state)
    w = state["stem.0.weight"]
    new = torch.zeros(w.shape[0], 2 * k + 1, *w.shape[2:], dtype=w.dtype)
    new[:, k] = w[:, 0]
    out["stem.0.weight"] = new
    return out


def build_with_channels(k: int):
    """``build_model`` of a network whose first convolution takes 2k+1 channels."""
    from panoptem.models.architecture import build_model

    def build(arch):
        return build_model({**arch, "in_channels": 2 * k + 1})
    return build


def context_model(net, k: int, arch: dict):
    """``net`` as a loaded model whose card says it sees ``k`` neighbours on each side, so that
    panoptem's pipelines hand it each plane with them."""
    from panoptem.models.card import ModelCard, Weights
    from panoptem.models.load import LoadedModel
    card = ModelCard(name="validation", architecture={**arch, "in_channels": 2 * k + 1}, context_slices=k,
                     weights=Weights(file="(in training)"))
    return LoadedModel(card, net.eval(), "cpu")


def scores_3d(model, image, mask, val: slice = VAL) -> dict:
    """3D figures (xy stack, default parameters) of a :func:`context_model` on ``val``."""
    import panoptem
    from panoptem.training.from_volume import score_3d
    t = time.perf_counter()
    res = panoptem.segment_3d(np.asarray(image[val]), model, runtime="torch")
    return {**score_3d(next(iter(res.labels.values())), np.asarray(mask[val]), 500),
            "seconds": round(time.perf_counter() - t, 1)}


def scores(net, k: int, image, mask, gt2d, arch: dict, val: slice = VAL) -> tuple[dict, dict]:
    """(3D, 2D) figures of ``net`` on the held-out slices ``val`` (see the module docstring)."""
    import panoptem
    from panoptem import evaluate
    model = context_model(net, k, arch)
    s3 = scores_3d(model, image, mask, val)
    zs = range(*val.indices(len(image)))
    m = np.asarray(mask[val])
    if k:  # each slice on its own, with its neighbours in the volume
        lab = np.stack([panoptem.segment_2d(panoptem.take_plane(image, z, "xy", k), model, with_neighbours=True,
                                            runtime="torch") for z in zs])
    else:
        lab = panoptem.segment_2d(np.asarray(image[val]), model, batch=True, runtime="torch")
    tp = fp = fn = 0
    for i, z in enumerate(zs):
        r = evaluate(lab[i], np.asarray(gt2d[z]))
        tp, fp, fn = tp + r["tp_50"], fp + r["fp_50"], fn + r["fn_50"]
    fg, mm = lab > 0, m > 0
    s2 = dict(foreground_iou=round(float((fg & mm).sum() / (fg | mm).sum()), 4),
              f1_50=round(tp / max(tp + (fp + fn) / 2, 1e-9), 4), precision_50=round(tp / max(tp + fp, 1), 4),
              recall_50=round(tp / max(tp + fn, 1), 4), n_pred=int(tp + fp), n_gt=int(tp + fn))
    return s3, s2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lucchi_argument(ap)
    ap.add_argument("--run-dir", type=Path, default=None, help="checkpoints, logs and the kept weights")
    ap.add_argument("--context", type=int, default=1, help="neighbours on each side (0: the control)")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--hard-negatives", type=float, default=0.3)
    ap.add_argument("--pale", type=float, default=0.25)
    ap.add_argument("--validate-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--scratch", action="store_true", help="from random weights, not from MitoLite_v1 (the "
                    "control is then MitoLite_v1 itself: give its recipe, see the model card)")
    ap.add_argument("--schedule-steps", type=int, default=0)
    ap.add_argument("--anneal-from", type=int, default=0)
    ap.add_argument("--run", default=None, help="the result line's run name")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--score", type=Path, default=None, metavar="WEIGHTS",
                    help="only score these weights (a run's best.pt, or a model's state dict) on --val")
    ap.add_argument("--val-slices", "--val", dest="val", default="135:165",
                    help="the held-out slices validated on while training, or scored with --score (default "
                    "135:165; never 0-124, the training slices)")
    a = ap.parse_args()
    import tifffile

    import panoptem.training.train as training
    from panoptem.training.dataset import VolumeSlices
    from panoptem.training.from_volume import init_weights, parse_range
    from panoptem.training.train import TrainConfig, better_scores
    lucchi, k = lucchi_dir(a.lucchi), a.context
    image = tifffile.imread(lucchi / "training_image.tif")
    gt2d = tifffile.imread(lucchi / "training_instances2d.tif")
    mask = tifffile.imread(lucchi / "training_mask.tif")
    val = parse_range(a.val)
    zs = range(*val.indices(len(image)))
    if not len(zs) or zs.start < TRAIN.stop:
        raise SystemExit(f"--val-slices {a.val} is empty or overlaps the training slices 0-124")
    arch, state = init_weights("MitoLite_v1")
    if a.score is not None:
        return score_only(a, arch, image, mask, gt2d, val)
    if a.run_dir is None:
        raise SystemExit("give --run-dir for the run's checkpoints and weights (or --score WEIGHTS)")
    cfg = TrainConfig(iterations=a.iterations, lr=a.lr, hard_negatives=a.hard_negatives, pale=a.pale,
                      validate_every=a.validate_every, seed=a.seed, architecture={**arch, "in_channels": 2 * k + 1},
                      schedule_steps=a.schedule_steps, anneal_from=a.anneal_from,
                      init=None if a.scratch else "MitoLite_v1")
    best, during = None, []
    a.run_dir.mkdir(parents=True, exist_ok=True)

    def validate(model, step):
        nonlocal best
        s3 = {"step": step, **scores_3d(context_model(model, k, arch), image, mask, val)}
        s3.pop("seconds")
        during.append(s3)
        print(json.dumps({"val3d": s3}), flush=True)
        if better_scores(s3, best):
            best = s3
            torch.save({"state_dict": {n: v.clone() for n, v in model.state_dict().items()}, "step": step},
                       a.run_dir / "best.pt")

    t0 = time.perf_counter()
    # each training slice with its k neighbours, every channel augmented alike
    dataset = VolumeSlices(image, gt2d, TRAIN, name="training_instances2d.tif", context=k)
    start = None if a.scratch else inflated_state(state, k)
    training.train(dataset, a.run_dir, cfg, resume=False, init_state=start,
                   log=lambda s: print(s, flush=True), validate=validate)
    minutes = (time.perf_counter() - t0) / 60
    net = build_with_channels(k)(arch)
    net.load_state_dict(torch.load(a.run_dir / "best.pt", weights_only=True)["state_dict"])
    net.eval()
    s3, s2 = scores(net, k, image, mask, gt2d, arch, val)
    emit_to({"what": "training lever", "run": a.run or f"context{k}",
             "recipe": f"neighbouring slices as input channels: z-{k}..z+{k} ({2 * k + 1} channels); "
                       + ("from scratch" if a.scratch else "--init MitoLite_v1")
                       + f" --iterations {a.iterations} --schedule-steps {a.schedule_steps} --anneal-from "
                       f"{a.anneal_from} --lr {a.lr} --hard-negatives {a.hard_negatives} --pale {a.pale} "
                       f"--validate-every {a.validate_every} --seed {a.seed} --val-slices {a.val}",
             "kept_step": best["step"], "minutes": round(minutes, 1),
             **{f"{kk}_2d": v for kk, v in s2.items() if not kk.startswith("n_")},
             **{f"{kk}_3d": v for kk, v in s3.items() if kk != "seconds"},
             "seconds_3d_block": s3["seconds"], "n_pred_2d": s2["n_pred"], "n_gt_2d": s2["n_gt"],
             "val3d_f1_during": [d["f1_50"] for d in during],
             "data": f"lucchi z{val.start}-{val.stop - 1} (validation, never trained on)",
             "params": "defaults (min_piece_area 40 in 2D; xy stack, median 3 in 3D)",
             "how": "python bench/train_context_slices.py --lucchi LUCCHI --run-dir RUN --context "
                    f"{k} (2D pooled over slices vs 2D objects; 3D vs 3D connected components, objects under "
                    "500 voxels ignored)",
             "machine": machine(), "date": time.strftime("%Y-%m-%d")}, a.out)
    return 0


def score_only(a, arch: dict, image, mask, gt2d, val: slice) -> int:
    """``--score``: the 3D and 2D figures of saved weights on slices ``--val-slices`` (never
    trained on: training slices are 0-124)."""
    zs = range(*val.indices(len(image)))
    blob = torch.load(a.score, map_location="cpu", weights_only=True)
    net = build_with_channels(a.context)(arch)
    net.load_state_dict(blob.get("state_dict", blob))
    net.eval()
    s3, s2 = scores(net, a.context, image, mask, gt2d, arch, val)
    emit_to({"what": "training lever, scored", "run": a.run or a.score.name, "context": a.context,
             **{f"{kk}_2d": v for kk, v in s2.items()}, **{f"{kk}_3d": v for kk, v in s3.items()},
             "data": f"lucchi z{zs.start}-{zs.stop - 1} (never trained on)",
             "params": "defaults (min_piece_area 40 in 2D; xy stack, median 3 in 3D)",
             "how": f"python bench/train_context_slices.py --lucchi LUCCHI --context {a.context} --score WEIGHTS "
                    f"--val-slices {a.val}", "machine": machine(), "date": time.strftime("%Y-%m-%d")},
            a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
