"""2D accuracy against Min piece area on the Lucchi validation slices (z135-164):
every slice segmented on its own, scored per slice against the 2D ground-truth
objects (pooled TP/FP/FN). The network runs once; the pieces are then dropped with
the function segment_2d uses. Usage: python bench/min_piece_area.py --lucchi DIR
"""
from __future__ import annotations

import argparse

from _common import add_lucchi_argument, emit, lucchi_dir, machine


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--areas", default="0,10,20,40,80,150", help="comma-separated areas in pixels")
    add_lucchi_argument(ap)
    a = ap.parse_args()
    import numpy as np
    import tifffile

    import panoptem
    from panoptem.inference.postprocess import remove_small_pieces
    zs = range(135, 165)
    folder = lucchi_dir(a.lucchi)
    img = tifffile.imread(folder / "training_image.tif", key=zs)
    gt = tifffile.imread(folder / "training_instances2d.tif", key=zs)
    lab = panoptem.segment_2d(img, batch=True, min_piece_area=0)  # every piece, then each area filters
    for area in (int(v) for v in a.areas.split(",")):
        pred = np.stack([remove_small_pieces(s, area) for s in lab]) if area else lab
        e = panoptem.evaluate(pred, gt, per_slice=True)
        emit(what="2d min_piece_area", min_piece_area=area, slices="135-164",
             **{k: round(e[k], 4) for k in ("foreground_iou", "f1_50", "precision_50", "recall_50")},
             objects=e.get("n_pred"), machine=machine())


if __name__ == "__main__":
    main()
