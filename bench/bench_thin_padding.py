"""Padding of thin planes: a deep volume's xz planes (165 rows on Lucchi) are padded to a multiple of
the card's ``input_multiple`` before the network (MitoLite_v1: 16, 176 rows; 32, 192 rows, until
2026-12-04); panoptem's own network also runs on multiples of 8. For each factor: the network's
seconds on the same planes, the foreground of the decoded planes against the ground truth, over all
rows and over the rows near the padded edge, and the objects of each plane against the connected
pieces of the truth in that plane (F1@0.5 pooled over the planes, pieces under 40 pixels ignored):
hundreds of objects, a finer measure than the volume's few dozen 3D objects. ``--axis yz`` takes yz
planes instead. One JSON line per factor and round. ``--deep``: then the whole ortho-plane run of
the 165-slice volume with factors 32 and 16 (the card's ``input_multiple`` set for the run), scored
in 3D against the ground truth's connected components (pieces under 500 voxels ignored), over the
volume and over the validation slices 135-164. ``--xy-crops``: instead, xy planes whose sides are
not multiples of 32 (the validation block cropped three ways) at ``input_multiple`` 32 and 16,
scored in 2D (every slice on its own) and in 3D (xy stack).

Usage: python bench/bench_thin_padding.py --lucchi DIR [--planes 48] [--axis xz|yz] [--rounds 2] [--deep]
       [--xy-crops [--z 135:165]] [--out FILE]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _common import add_lucchi_argument, emit_to, lucchi_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lucchi_argument(ap)
    ap.add_argument("--planes", type=int, default=48, help="planes, evenly spaced along y (xz) or x (yz)")
    ap.add_argument("--axis", choices=("xz", "yz"), default="xz")
    ap.add_argument("--rounds", type=int, default=2, help="the factors in turn, this many times")
    ap.add_argument("--deep", action="store_true", help="also the whole ortho-plane run per factor")
    ap.add_argument("--xy-crops", action="store_true", help="only: cropped xy planes at 32 and 16")
    ap.add_argument("--z", default="135:165", help="--xy-crops: the slices start:stop (the validation block)")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    a = ap.parse_args()
    if a.xy_crops:
        start, stop = (int(v) for v in a.z.split(":"))
        return _xy_crops(lucchi_dir(a.lucchi), range(start, stop), a.out)
    import tifffile

    from panoptem._bench import load, machine
    from panoptem.inference.cache import at_cache_precision
    from panoptem.inference.decode import decode_planes, decode_settings
    from panoptem.inference.engine import Predictor
    from panoptem.inference.predict import predict_batch
    from panoptem.params import Params3D
    d = lucchi_dir(a.lucchi)
    vol = tifffile.imread(d / "training_image.tif")
    gt = tifffile.imread(d / "training_mask.tif") > 0
    import cc3d

    from panoptem import evaluate
    ax = 1 if a.axis == "xz" else 2
    at = np.linspace(0, vol.shape[ax] - 1, a.planes).astype(int)
    planes = np.ascontiguousarray(np.moveaxis(np.take(vol, at, axis=ax), ax, 0))  # (planes, z, x or y)
    truth = np.ascontiguousarray(np.moveaxis(np.take(gt, at, axis=ax), ax, 0))
    pieces = np.stack([cc3d.connected_components(t, connectivity=4) for t in truth])
    pr = Predictor(device="cpu", runtime="torch", threads=None)
    rng = pr.intensity(vol)
    settings = decode_settings(Params3D(), pr.card)
    net = pr.network
    depth = planes.shape[1]
    edge = min(30, depth)

    def iou(a_, b_):
        return float((a_ & b_).sum() / max((a_ | b_).sum(), 1))

    predict_batch(net, planes[:4], rng)  # warm-up
    for rnd in range(a.rounds):  # factors in turn: this CPU's speed drifts
        for pf in (32, 16, 8):
            t = time.perf_counter()
            outs = [at_cache_precision(predict_batch(net, planes[i:i + 8], rng, padding_factor=pf))
                    for i in range(0, len(planes), 8)]
            seconds = time.perf_counter() - t
            lab = np.concatenate([np.stack(decode_planes(o.semantic_probability, o.heatmap, o.offsets,
                                                         out_shape=planes.shape[1:], **settings)) for o in outs])
            fg = lab > 0
            e = evaluate(lab, pieces, iou_thresholds=(0.5,), per_slice=True, ignore_smaller=40)
            rec = {"what": "bench/bench_thin_padding.py", "date": time.strftime("%Y-%m-%d"),
                   "input": f"Lucchi training volume {list(vol.shape)}, {len(planes)} {a.axis} planes",
                   "round": rnd,
                   "padding_factor": pf, "padded_rows": -(-depth // pf) * pf, "rows": depth,
                   "network_s": round(seconds, 3), "foreground_iou_vs_truth": round(iou(fg, truth), 4),
                   f"foreground_iou_last_{edge}_rows": round(iou(fg[:, -edge:], truth[:, -edge:]), 4),
                   f"foreground_iou_first_{edge}_rows": round(iou(fg[:, :edge], truth[:, :edge]), 4),
                   "f1_50_per_plane": round(e["f1_50"], 4), "precision_50": round(e["precision_50"], 4),
                   "recall_50": round(e["recall_50"], 4), "objects": e["n_pred"], "objects_truth": e["n_gt"],
                   "load": load(), "machine": machine()}
            emit_to(rec, a.out)
    if a.deep:
        _deep(vol, d, a.out)


def _deep(vol: np.ndarray, d: Path, out) -> None:
    """Ortho-plane of the whole volume with the card's padding factor at 32, then 16."""
    import tifffile

    import panoptem
    from panoptem._bench import load, machine
    gt = tifffile.imread(d / "training_instances3d_cc.tif")
    lm = panoptem.load_model(device="cpu")
    first = lm.card.input_multiple
    labels = {}
    try:
        for pf in (32, 16):
            lm.card.input_multiple = pf  # the inputs' padding; the tile and block grids stay at 32
            t, c = time.perf_counter(), time.process_time()
            res = panoptem.segment_3d(vol, lm, orthoplane=True)
            seconds, cpu = time.perf_counter() - t, time.process_time() - c
            lab = labels[pf] = np.asarray(next(iter(res.labels.values())))
            rec = {"what": "bench/bench_thin_padding.py --deep", "date": time.strftime("%Y-%m-%d"),
                   "input": f"Lucchi training volume {list(vol.shape)}, ortho-plane", "padding_factor": pf,
                   "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1)}
            for part, z in (("volume", slice(None)), ("validation_z135_164", slice(135, None))):
                e = panoptem.evaluate(lab[z], gt[z], ignore_smaller=500)
                rec[part] = {"f1_50": round(e["f1_50"], 3), "foreground_iou": round(e["foreground_iou"], 4),
                             "objects": e["n_pred"], "objects_truth": e["n_gt"]}
            if len(labels) == 2:
                a_, b_ = labels[32] > 0, labels[16] > 0
                rec["foreground_iou_vs_factor_32"] = round(float((a_ & b_).sum() / (a_ | b_).sum()), 4)
            emit_to({**rec, "load": load(), "machine": machine()}, out)
    finally:
        lm.card.input_multiple = first


#: (rows, columns) of the validation block kept by --xy-crops
CROPS = ((slice(0, 760), slice(0, 1000)), (slice(5, 755), slice(17, 1010)), (slice(0, 700), slice(0, 900)))


def _xy_crops(d: Path, zs: range, out) -> None:
    """Slices ``zs`` (by default the validation block) cropped to sides that are not multiples
    of 32, at input multiples 32 and 16: 2D F1 and foreground IoU, 3D F1 and IoU (see the
    module docstring)."""
    import cc3d
    import tifffile

    import panoptem
    from panoptem._bench import load, machine
    img = tifffile.imread(d / "training_image.tif", key=zs)
    gt2d = tifffile.imread(d / "training_instances2d.tif", key=zs)
    mask = tifffile.imread(d / "training_mask.tif", key=zs) > 0
    lm = panoptem.load_model(device="cpu")
    first = lm.card.input_multiple
    try:
        for rows, cols in CROPS:
            im, m = np.ascontiguousarray(img[:, rows, cols]), mask[:, rows, cols]
            for multiple in (32, 16):
                lm.card.input_multiple = multiple
                lab = panoptem.segment_2d(im, lm, batch=True)
                e2 = panoptem.evaluate(lab, gt2d[:, rows, cols], iou_thresholds=(0.5,), per_slice=True)
                lab3 = np.asarray(next(iter(panoptem.segment_3d(im, lm).labels.values())))
                e3 = panoptem.evaluate(lab3, cc3d.connected_components(m, connectivity=6), iou_thresholds=(0.5,),
                                       ignore_smaller=500)
                fg = lab > 0
                emit_to({"what": "bench/bench_thin_padding.py --xy-crops", "date": time.strftime("%Y-%m-%d"),
                         "input": f"Lucchi z{zs.start}-{zs.stop - 1} cropped to {list(im.shape)}",
                         "input_multiple": multiple, "f1_50_2d": round(e2["f1_50"], 4),
                         "foreground_iou_2d": round(float((fg & m).sum() / (fg | m).sum()), 4),
                         "f1_50_3d": round(e3["f1_50"], 4), "foreground_iou_3d": round(e3["foreground_iou"], 4),
                         "objects_3d": e3["n_pred"], "load": load(), "machine": machine()}, out)
    finally:
        lm.card.input_multiple = first


if __name__ == "__main__":
    main()
