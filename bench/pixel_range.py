"""At which pixel size does a model segment best? The held-out Lucchi block (5 nm) is given to
the network at coarser pixels (the run is told a finer pixel size, so it shrinks each plane by
the ratio, and the labels come back on the 5 nm grid), and scored each time: 3D (xy stack,
default parameters, against the 3D connected components of the mask, objects under 500 voxels
ignored), 2D per slice (the same labels against the 2D instance labels, TP/FP/FN pooled) and
seconds. This is the measurement behind the bundled cards' ``pixel_range_nm``.

The shipped models were trained on 5 nm slices shown at zooms of 0.33-1.25 (about 4-15 nm
pixels); ``--block 0:165`` scores the whole volume instead (it holds their training slices:
compare rows with each other only). ``--shrink 0.5`` first shrinks the block in-plane (labels
alike) and calls it 5 nm still: a stand-in for a tissue whose mitochondria are half as wide.

One JSON line per run. Usage:
    python bench/pixel_range.py --lucchi DIR [--models MitoLite_v1,MitoLite_3slice_v1]
        [--network-nm 5,5.56,6.25,7.14,8.33,10,12.5] [--block 135:165] [--shrink 1] [--out FILE]
"""
from __future__ import annotations

import argparse
import time

from _common import add_lucchi_argument, emit_to, machine, read_lucchi


def shrunk(stack, s: float, image: bool = False):
    """Each plane of ``stack`` resized by ``s`` as panoptem resizes planes: an image bilinearly
    (antialiased), labels by nearest neighbour."""
    import numpy as np

    from panoptem.inference.resample import nearest_to, resample_planes
    shape = tuple(round(n * s) for n in np.shape(stack)[-2:])
    if image:
        return np.clip(resample_planes(stack, shape), 0, 255).astype(np.asarray(stack).dtype)
    return np.stack([nearest_to(p, shape) for p in stack]).astype(np.uint32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lucchi_argument(ap)
    ap.add_argument("--models", default="MitoLite_v1,MitoLite_3slice_v1")
    ap.add_argument("--network-nm", default="5,5.56,6.25,7.14,8.33,10,12.5",
                    help="pixel sizes (nm) the network is given the 5 nm block at")
    ap.add_argument("--block", default="135:165", help="slices of the training volume (default: the held-out block)")
    ap.add_argument("--shrink", type=float, default=1.0, help="shrink the block in-plane first (objects smaller)")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    a = ap.parse_args()
    import cc3d

    import panoptem
    z0, z1 = (int(v) for v in a.block.split(":"))
    vol, mask, gt2 = read_lucchi(a.lucchi, a.block)
    gt3 = cc3d.connected_components(mask, connectivity=6)
    if a.shrink != 1.0:
        vol, gt3, gt2 = shrunk(vol, a.shrink, True), shrunk(gt3, a.shrink), shrunk(gt2, a.shrink)
    for name in a.models.split(","):
        model = panoptem.load_model(name)
        # without its range, the card resamples to its 5 nm exactly: the told size sets the network's
        model.card = model.card.model_copy(update={"pixel_range_nm": None})
        for nm in (float(v) for v in a.network_nm.split(",")):
            t = time.perf_counter()
            # told pixels of 5 x 5 / nm nm, the run shrinks each plane by nm / 5 (and keeps z)
            told = 25.0 / nm
            res = panoptem.segment_3d(vol, model, voxel_size=(5.0, told, told))
            s = time.perf_counter() - t
            lab = res.labels["mitochondria"]
            r3 = panoptem.evaluate(lab, gt3, ignore_smaller=round(500 * a.shrink ** 2))
            r2 = panoptem.evaluate(lab, gt2, per_slice=True)
            emit_to(dict(what="pixel size sweep", model=name, block=f"lucchi z{z0}-{z1 - 1}", shrink=a.shrink,
                         network_pixel_nm=round(5.0 * res.pixel_size["factors"]["xy"][0], 3),
                         foreground_iou=round(r3["foreground_iou"], 4), f1_50_3d=round(r3["f1_50"], 4),
                         n_pred=r3["n_pred"], n_gt=r3["n_gt"], f1_50_2d_per_slice=round(r2["f1_50"], 4),
                         precision_50_2d=round(r2["precision_50"], 4), recall_50_2d=round(r2["recall_50"], 4),
                         seconds=round(s, 1), date=time.strftime("%Y-%m-%d"), machine=machine(),
                         how=f"python bench/pixel_range.py --lucchi LUCCHI --block {a.block} --shrink {a.shrink} "
                             f"--models {name} --network-nm {nm}"),
                    a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
