"""Coarse volumes, whole-volume and blockwise: the held-out Lucchi block (5 nm) shrunk in-plane by
block means to 15 or 20 nm pixels (z stays 5 nm), segmented with ``MitoLite_v1`` (best at 6-10 nm)
both ways, and scored against the masks shrunk alike (3D: xy stack against the 3D connected
components, objects under 500 voxels of 5 nm ignored, scaled; 2D per slice, pooled).

Both runs take the same pixel size (15 nm: x1.5 to 10 nm, the fraction 2/3; 20 nm: x2 to 10 nm),
and the blockwise labels are compared voxel by voxel with the whole-volume ones.

One JSON line per run. Usage:
    python bench/blockwise_coarse.py --lucchi DIR [--reduce 3,4] [--block 135:165]
        [--block-shape 32,128,128] [--halo 0,64,64] [--workers 2] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import add_lucchi_argument, emit_to, machine, read_lucchi


def reduced(stack, r: int, labels: bool = False):
    """``stack`` shrunk in-plane by ``r``: block means for an image, the middle pixel of each
    ``r`` x ``r`` cell for labels (sides cropped to multiples of ``r``)."""
    import numpy as np
    n, h, w = stack.shape
    h, w = h - h % r, w - w % r
    if labels:
        return np.ascontiguousarray(stack[:, r // 2:h:r, r // 2:w:r])
    cells = stack[:, :h, :w].astype(np.float32).reshape(n, h // r, r, w // r, r)
    return np.round(cells.mean(axis=(2, 4))).astype(stack.dtype)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lucchi_argument(ap)
    ap.add_argument("--reduce", default="3,4", help="in-plane reductions of the 5 nm block (15 and 20 nm)")
    ap.add_argument("--block", default="135:165", help="slices of the training volume (default: the held-out block)")
    ap.add_argument("--block-shape", default="32,128,128")
    ap.add_argument("--halo", default="0,64,64")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    a = ap.parse_args()
    import cc3d
    import numpy as np

    import panoptem
    from panoptem.distributed import segment_blockwise
    z0, z1 = (int(v) for v in a.block.split(":"))
    vol5, mask5, inst5 = read_lucchi(a.lucchi, a.block)
    block = tuple(int(v) for v in a.block_shape.split(","))
    halo = tuple(int(v) for v in a.halo.split(","))
    how = (f"python bench/blockwise_coarse.py --lucchi LUCCHI --reduce {a.reduce} --block {a.block} "
           f"--block-shape {a.block_shape} --halo {a.halo} --workers {a.workers}")
    for r in (int(v) for v in a.reduce.split(",")):
        vol = reduced(vol5, r)
        gt3 = cc3d.connected_components(reduced(mask5, r, True), connectivity=6)
        gt2 = reduced(inst5, r, True)
        vs = (5.0, 5.0 * r, 5.0 * r)
        runs = {}
        t = time.perf_counter()
        res = panoptem.segment_3d(vol, "MitoLite_v1", voxel_size=vs)
        runs["whole volume"] = (res.labels["mitochondria"], res.pixel_size, time.perf_counter() - t, None)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            bw = segment_blockwise(vol, "MitoLite_v1", Path(tmp) / "m.zarr", voxel_size=vs, block_shape=block,
                                   halo=halo, n_workers=a.workers)
            lab = np.asarray(bw.labels["mitochondria"][:])
            runs["blockwise"] = (lab, bw.pixel_size, time.perf_counter() - t, bw.blocks)
        whole = runs["whole volume"][0]
        for how_run, (lab, plan, s, blocks) in runs.items():
            r3 = panoptem.evaluate(lab, gt3, ignore_smaller=max(1, round(500 / r ** 2)))
            r2 = panoptem.evaluate(lab, gt2, per_slice=True)
            emit_to(dict(what="coarse volume", run=how_run, block=f"lucchi z{z0}-{z1 - 1}", shape=list(vol.shape),
                         input_voxel_nm=list(vs), network_pixel_nm=plan["network_pixel_nm"]["xy"],
                         blocks=blocks,
                         foreground_iou=round(r3["foreground_iou"], 4), f1_50_3d=round(r3["f1_50"], 4),
                         n_pred=r3["n_pred"], n_gt=r3["n_gt"], f1_50_2d_per_slice=round(r2["f1_50"], 4),
                         foreground_agreement_with_whole=round(float(((lab > 0) == (whole > 0)).mean()), 5),
                         seconds=round(s, 2), load_1min=round(os.getloadavg()[0], 2), date=time.strftime("%Y-%m-%d"), machine=machine(), how=how),
                    a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
