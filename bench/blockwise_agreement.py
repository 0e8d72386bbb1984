"""How close a blockwise run comes to a whole-volume run with the real model,
per halo: foreground agreement and the share of objects matched at IoU >= 0.9.

The network sees each block with a halo of context; MitoLite's global-context
branch (an average over the whole slice) and zero padding at block faces make
its outputs near faces differ slightly from whole-slice ones, and a wider halo
shrinks the difference. One JSON line per halo.

    python bench/blockwise_agreement.py --lucchi DIR [--crop 96,512,512] [--halos 32,64,128]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, machine  # noqa: E402


def agreement(a: np.ndarray, b: np.ndarray, thr: float = 0.9) -> dict:
    """Foreground agreement and objects of ``a`` matched in ``b`` at IoU >= ``thr``."""
    from panoptem.labels import compact, overlap_table
    fa, fb = a > 0, b > 0
    la, ia, ca = compact(a, return_counts=True)
    lb, ib, cb = compact(b, return_counts=True)
    x, y, inter = overlap_table(la, lb, ia.size, ib.size)
    iou = inter / (ca[x - 1] + cb[y - 1] - inter)
    matched = np.unique(x[iou >= thr]).size
    return {"foreground_agreement": float((fa == fb).mean()),
            "foreground_iou": float((fa & fb).sum() / max((fa | fb).sum(), 1)),
            "objects_whole": int(ia.size), "objects_blockwise": int(ib.size),
            "matched_iou_0.9": round(matched / max(ia.size, 1), 4)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lucchi", required=True, help="folder holding the Lucchi training_image.tif")
    ap.add_argument("--crop", default="96,512,512", help="Z,Y,X from the volume's start")
    ap.add_argument("--block-shape", default="32,128,128")
    ap.add_argument("--halos", default="32,64,128", help="in-plane halos to try (Z halo = 16)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="MitoLite_v1")
    ap.add_argument("--block-context", action="store_true", help="each block's own global context")
    a = ap.parse_args()
    import panoptem
    from panoptem.distributed import segment_blockwise
    from panoptem.io import read_image
    crop = tuple(int(v) for v in a.crop.split(","))
    image = Path(a.lucchi) / "training_image.tif"
    vol = np.ascontiguousarray(np.asarray(read_image(image).data[: crop[0], : crop[1], : crop[2]]))
    t = time.perf_counter()
    whole = panoptem.segment_3d(vol, a.model, device="cpu").labels["mitochondria"]
    emit(what="whole volume", shape=list(vol.shape), seconds=round(time.perf_counter() - t, 1), machine=machine())
    with tempfile.TemporaryDirectory() as tmp:
        for h in (int(v) for v in a.halos.split(",")):
            t = time.perf_counter()
            res = segment_blockwise(vol, a.model, Path(tmp) / f"h{h}.zarr", block_shape=a.block_shape,
                                    halo=(16, h, h), n_workers=a.workers, device="cpu",
                                    exact_context=not a.block_context)
            got = np.asarray(res.labels["mitochondria"][:])
            emit(what="blockwise vs whole", context="block" if a.block_context else "exact", model=a.model, shape=list(vol.shape), block=a.block_shape,
                 halo=[16, h, h], workers=a.workers, seconds=round(time.perf_counter() - t, 1),
                 load_avg_1m=round(os.getloadavg()[0], 2), **agreement(whole, got))


if __name__ == "__main__":
    main()
