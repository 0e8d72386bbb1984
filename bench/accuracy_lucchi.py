"""Accuracy on the held-out validation block of Lucchi (slices 135-164 of the
training volume; the bundled model trained on slices 0-124 only).

2D: every validation slice segmented on its own, scored against the 2D
ground-truth objects (pooled TP/FP/FN over slices), foreground IoU over the
block. 3D: the block segmented as a volume with several settings, scored
against the 3D connected components of the ground-truth mask of the block.
Prints one JSON line per configuration. Usage:
    python bench/accuracy_lucchi.py --lucchi DIR [--model NAME] [--only 2d|3d] [--z0 135 --z1 165] [--pixel-size 5]
        [--precision int8]

``--pixel-size 5`` tells panoptem the volume's pixel size (the TIFF does not say), as a file with
that metadata would: the run then brings it into the model's working range. ``--precision int8``
runs the network in int8 and scores each 3D result also against the same run in float32
(``vs_fp32``: foreground IoU and object F1 between the two), the tolerance of a faster network.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _common import Timer, add_lucchi_argument, emit, lucchi_dir, machine

CONFIGS_3D = [
    ("xy stack, median 1", dict(inference_plane="xy", median_slices=1)),
    ("xy stack, median 3", dict(inference_plane="xy", median_slices=3)),
    ("xy stack, median 7", dict(inference_plane="xy", median_slices=7)),
    ("xz stack, median 3", dict(inference_plane="xz", median_slices=3)),
    ("yz stack, median 3", dict(inference_plane="yz", median_slices=3)),
    ("ortho consensus, median 3", dict(orthoplane=True, median_slices=3)),
    ("ortho consensus, median 7", dict(orthoplane=True, median_slices=7)),
    ("ortho probability fusion, median 3", dict(orthoplane=True, fusion="probability", median_slices=3)),
]


def _data(z0: int, z1: int) -> str:
    """Which slices were scored: the held-out block, or slices the model was trained on too."""
    return f"lucchi z{z0}-{z1 - 1} " + ("(validation)" if z0 >= 135 else "(includes training slices 0-124)")


def validate_2d(model, lucchi, z0: int = 135, z1: int = 165, neighbours: int = 0, **params) -> dict:
    """2D validation figures of a model on slices z0..z1-1 of the Lucchi volume in folder
    ``lucchi`` (each slice on its own; with ``neighbours`` k, each slice with its k neighbours on
    each side, for a model that sees them, decoded on its own)."""
    import tifffile

    import panoptem
    from panoptem import evaluate
    zs = range(z0, z1)
    img = tifffile.imread(lucchi / "training_image.tif", key=zs)
    gt2d = tifffile.imread(lucchi / "training_instances2d.tif", key=zs)
    mask = tifffile.imread(lucchi / "training_mask.tif", key=zs) > 0
    with Timer() as t:
        if neighbours:
            vol = tifffile.imread(lucchi / "training_image.tif")
            lab = np.stack([panoptem.segment_2d(panoptem.take_plane(vol, z, "xy", neighbours), model,
                                                with_neighbours=True, **params) for z in zs])
        else:
            lab = panoptem.segment_2d(img, model, batch=True, **params)
    tp = fp = fn = 0
    for z in range(len(img)):
        r = evaluate(lab[z], gt2d[z])
        tp += r["tp_50"]
        fp += r["fp_50"]
        fn += r["fn_50"]
    fg = lab > 0
    return dict(data=_data(z0, z1),
                foreground_iou=round(float((fg & mask).sum() / (fg | mask).sum()), 4),
                f1_50=round(tp / max(tp + (fp + fn) / 2, 1e-9), 4), precision_50=round(tp / max(tp + fp, 1), 4),
                recall_50=round(tp / max(tp + fn, 1), 4), n_gt=int(tp + fn), n_pred=int(tp + fp),
                seconds=round(t.s, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="MitoLite_v1")
    ap.add_argument("--only", choices=["2d", "3d"], default=None)
    ap.add_argument("--z0", type=int, default=135)
    ap.add_argument("--z1", type=int, default=165)
    ap.add_argument("--configs", default=None, help="comma-separated indices into CONFIGS_3D")
    ap.add_argument("--tta", action="store_true", help="test-time augmentation (flips) in every run")
    ap.add_argument("--ignore-smaller", type=int, default=0, help="3D: ground-truth objects under this many "
                    "voxels count neither as targets nor as misses (500: the min-size filter)")
    ap.add_argument("--pixel-size", type=float, default=None, help="tell panoptem the pixel size (nm; Lucchi: 5)")
    ap.add_argument("--precision", default="auto", help="the network's precision (auto, fp32, int8, ...)")
    ap.add_argument("--min-piece-area", type=int, default=None, help="2D: Min piece area (default: panoptem's, "
                    "40; 0 keeps every piece, as empanada does)")
    add_lucchi_argument(ap)
    a = ap.parse_args()
    lucchi = lucchi_dir(a.lucchi)
    told = dict(pixel_size=a.pixel_size) if a.pixel_size else {}
    lowered = a.precision not in ("auto", "fp32")
    told["precision"] = a.precision
    import cc3d
    import tifffile

    import panoptem
    from panoptem import evaluate

    zs = range(a.z0, a.z1)
    img = tifffile.imread(lucchi / "training_image.tif", key=zs)
    mask = tifffile.imread(lucchi / "training_mask.tif", key=zs) > 0
    model = panoptem.load_model(a.model)
    if a.only in (None, "2d"):
        k = model.card.context_slices  # a model that sees neighbours gets each slice's
        pieces = {} if a.min_piece_area is None else {"min_piece_area": a.min_piece_area}
        emit(what="accuracy 2d", model=a.model, tta=a.tta, neighbours=k, pixel_size_nm=a.pixel_size,
             precision=a.precision, min_piece_area=pieces.get("min_piece_area", 40),
             date=time.strftime("%Y-%m-%d"),
             **validate_2d(model, lucchi, a.z0, a.z1, neighbours=k, tta=a.tta, **told, **pieces),
             machine=machine())
    if a.only in (None, "3d"):
        gt3d = cc3d.connected_components(mask.astype(np.uint8), connectivity=6)
        chosen = CONFIGS_3D if a.configs is None else [CONFIGS_3D[int(i)] for i in a.configs.split(",")]
        for name, cfg in chosen:
            with Timer() as t:
                res = panoptem.segment_3d(img, model, tta=a.tta, **cfg, **told)
            pred = next(iter(res.labels.values()))
            r = evaluate(pred, gt3d, ignore_smaller=a.ignore_smaller)
            vs = {}
            if lowered:  # the same run in float32: how far the faster network moves the result
                ref = panoptem.segment_3d(img, model, tta=a.tta, **cfg, **{**told, "precision": "fp32"})
                q = evaluate(pred, next(iter(ref.labels.values())))
                vs = dict(vs_fp32=dict(foreground_iou=round(q["foreground_iou"], 4), f1_50=round(q["f1_50"], 4),
                                       n_fp32=q["n_gt"]))
            emit(what="accuracy 3d", config=name, tta=a.tta, pixel_size_nm=a.pixel_size, precision=a.precision, **vs,
                 network_pixel_nm=res.pixel_size["network_pixel_nm"], data=_data(a.z0, a.z1),
                 ignore_smaller=a.ignore_smaller, date=time.strftime("%Y-%m-%d"),
                 model=a.model, foreground_iou=round(r["foreground_iou"], 4), f1_50=round(r["f1_50"], 4),
                 f1_75=round(r["f1_75"], 4), pq=round(r["pq"], 4), n_pred=r["n_pred"], n_gt=r["n_gt"],
                 seconds=round(t.s, 1), timings={k: round(v, 2) for k, v in res.timings.items()})


if __name__ == "__main__":
    main()
