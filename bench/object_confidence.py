"""Would a minimum object confidence remove false objects? For every object of a 3D run (xy
stack, default parameters) on slices of the Lucchi volume: its size, slices, best IoU with a
ground-truth object (3D connected components of the mask) and the network's semantic
probability over its voxels (mean, median, and mean over its interior: one voxel eroded). Then,
for each threshold on the mean, the true (IoU >= 0.5) and false objects it would remove.

One JSON line per object and one summary line. Usage:
    python bench/object_confidence.py --lucchi DIR [--z 0:165] [--model MitoLite_v1] [--out FILE]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _common import add_lucchi_argument, emit_to, lucchi_dir, machine

THRESHOLDS = (0.8, 0.85, 0.9, 0.92)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lucchi_argument(ap)
    ap.add_argument("--z", default="0:165", help="slices of the training volume (default: all)")
    ap.add_argument("--model", default="MitoLite_v1")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    a = ap.parse_args()
    import cc3d
    import tifffile
    from scipy import ndimage as ndi

    import panoptem
    from panoptem.inference.engine import Predictor
    d = lucchi_dir(a.lucchi)
    z0, z1 = (int(v) for v in a.z.split(":"))
    img = tifffile.imread(d / "training_image.tif", key=range(z0, z1))
    mask = tifffile.imread(d / "training_mask.tif", key=range(z0, z1)) > 0
    lab = np.asarray(next(iter(panoptem.segment_3d(img, a.model).labels.values())))
    pr = Predictor(a.model, device="cpu")
    prob = pr.predict(img, pr.intensity(img)).semantic_probability[:, 0]
    gt = cc3d.connected_components(mask, connectivity=6)
    gt_size = np.bincount(gt.ravel())
    base = {"input": f"Lucchi training volume z{z0}-{z1 - 1}", "model": a.model, "date": time.strftime("%Y-%m-%d")}
    objects = []
    for i, sl in enumerate(ndi.find_objects(lab), 1):
        if sl is None:
            continue
        o = lab[sl] == i
        overlap = np.bincount(gt[sl][o], minlength=1)
        overlap[0] = 0
        j = int(overlap.argmax())
        iou = overlap[j] / (o.sum() + gt_size[j] - overlap[j]) if j else 0.0
        p, inner = prob[sl][o], prob[sl][ndi.binary_erosion(o)]
        rec = {"object": i, "voxels": int(o.sum()), "z": [sl[0].start + z0, sl[0].stop + z0 - 1],
               "best_iou": round(float(iou), 3), "true": bool(iou >= 0.5), "mean": round(float(p.mean()), 3),
               "median": round(float(np.median(p)), 3),
               "interior_mean": round(float(inner.mean()), 3) if inner.size else None}
        objects.append(rec)
        emit_to({"what": "object confidence", **base, **rec}, a.out)
    summary = {f"mean_below_{t}": {"true": sum(r["true"] and r["mean"] < t for r in objects),
                                   "false": sum(not r["true"] and r["mean"] < t for r in objects)}
               for t in THRESHOLDS}
    emit_to({"what": "object confidence, summary", **base, "objects": len(objects),
             "true": sum(r["true"] for r in objects), "false": sum(not r["true"] for r in objects),
             **summary, "how": f"python bench/object_confidence.py --lucchi LUCCHI --z {a.z}",
             "machine": machine()}, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
