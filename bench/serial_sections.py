"""Serial sections simulated from the isotropic Lucchi volume: every k-th slice, so that the
sections lie 5k nm apart while the pixels stay 5 nm, segmented as an xy stack with the voxel
size said (``voxel_size=(5k, 5, 5)``). Scored against the mask's slices: foreground IoU, 3D F1@0.5
against the 3D connected components of the sub-sampled mask (objects under 500 / k voxels
ignored) and 2D F1@0.5 per section against the 2D instance labels. ``--as-they-are`` adds runs
with resampling off, where a model that sees neighbouring planes is given the next sections as
its neighbours (what panoptem did before it interpolated them to the model's spacing).

The volume holds the training slices of the shipped models (0-124) as well as the held-out
block: compare models and settings with each other here, not with held-out figures.

One JSON line per run. Usage:
    python bench/serial_sections.py --lucchi DIR [--models MitoLite_v1,MitoLite_3slice_v1] [--every 8,4]
        [--median 1,3] [--as-they-are] [--out FILE]
"""
from __future__ import annotations

import argparse
import time

from _common import add_lucchi_argument, emit_to, lucchi_dir, machine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lucchi_argument(ap)
    ap.add_argument("--models", default="MitoLite_v1,MitoLite_3slice_v1")
    ap.add_argument("--every", default="8,4", help="keep every k-th slice (sections 5k nm apart)")
    ap.add_argument("--median", default="1,3", help="Median Filter Size values to run")
    ap.add_argument("--as-they-are", action="store_true",
                    help="also run with resampling off (the neighbours are the next sections)")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    a = ap.parse_args()
    import cc3d
    import tifffile
    import panoptem
    d = lucchi_dir(a.lucchi)
    vol = tifffile.imread(d / "training_image.tif")
    mask = tifffile.imread(d / "training_mask.tif") > 0
    inst2d = tifffile.imread(d / "training_instances2d.tif")
    models = {m: panoptem.load_model(m) for m in a.models.split(",")}
    for k in (int(v) for v in a.every.split(",")):
        sub, gt2 = vol[::k], inst2d[::k]
        gt3 = cc3d.connected_components(mask[::k], connectivity=6)
        for name, model in models.items():
            for resample in ((True, False) if a.as_they_are and model.card.context_slices else (True,)):
                for med in (int(v) for v in a.median.split(",")):
                    t = time.perf_counter()
                    res = panoptem.segment_3d(sub, model, median_slices=med, voxel_size=(5.0 * k, 5.0, 5.0),
                                              resample=resample)
                    lab = res.labels["mitochondria"]
                    r3 = panoptem.evaluate(lab, gt3, ignore_smaller=500 // k)
                    r2 = panoptem.evaluate(lab, gt2, per_slice=True)
                    emit_to(dict(what="serial sections, simulated", sections_nm_apart=5 * k, sections=len(sub),
                                 model=name, median=med,
                                 neighbours=("interpolated to the model's spacing" if resample else
                                             "the next sections") if model.card.context_slices else None,
                                 network_pixel_nm=res.pixel_size["network_pixel_nm"]["xy"][-1],
                                 date=time.strftime("%Y-%m-%d"),
                                 foreground_iou=round(r3["foreground_iou"], 4), f1_50_3d=round(r3["f1_50"], 4),
                                 n_pred=r3["n_pred"], n_gt=r3["n_gt"], f1_50_2d_per_section=round(r2["f1_50"], 4),
                                 seconds=round(time.perf_counter() - t, 1), machine=machine(),
                                 how=f"python bench/serial_sections.py --lucchi LUCCHI --every {a.every} "
                                     f"--median {a.median}{' --as-they-are' if a.as_they_are else ''}"), a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
