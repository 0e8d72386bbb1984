"""A volume of few sections in a black frame (what aligning serial sections leaves) against the
same volume unframed: its xz / yz planes are too thin to tell the frame themselves and take it
from the xy sections. Foreground IoU of the framed run with the unframed one inside the frame,
and the voxels of objects found in the frame, per inference plane, in memory and (``--blockwise``)
in blocks.
Usage: python bench/framed_thin.py --lucchi DIR [--z 135:155] [--frame 40] [--blockwise]
One JSON line per plane and engine.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from _common import add_lucchi_argument, emit, machine, read_lucchi

PLANES = {"xy": {}, "xz": {"inference_plane": "xz"}, "yz": {"inference_plane": "yz"}, "ortho": {"orthoplane": True}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lucchi_argument(ap)
    ap.add_argument("--z", default="135:155", help="slices of the training volume (default: 135:155)")
    ap.add_argument("--crop", default="100:484,300:684", help="rows,columns of each slice (default: a 384² crop)")
    ap.add_argument("--frame", type=int, default=40, help="black pixels on every side")
    ap.add_argument("--blockwise", action="store_true", help="also in blocks of Z x 160 x 160")
    ap.add_argument("--planes", nargs="+", default=list(PLANES), choices=list(PLANES))
    a = ap.parse_args()
    import panoptem
    image, _, _ = read_lucchi(a.lucchi, a.z)
    (r0, r1), (c0, c1) = ((int(v) for v in part.split(":")) for part in a.crop.split(","))
    crop = np.ascontiguousarray(image[:, r0:r1, c0:c1])
    b = a.frame
    framed = np.zeros((len(crop), crop.shape[1] + 2 * b, crop.shape[2] + 2 * b), crop.dtype)
    framed[:, b:-b, b:-b] = crop
    engines = ["memory"] + (["blockwise"] if a.blockwise else [])
    for name in a.planes:
        kw = dict(device="cpu", **PLANES[name])
        ref = panoptem.segment_3d(crop, **kw).labels["mitochondria"] > 0
        for engine in engines:
            t = time.perf_counter()
            with tempfile.TemporaryDirectory() as d:
                extra = dict(blockwise=True, output=f"{d}/labels.zarr", block_shape=(len(crop), 160, 160),
                             n_workers=1) if engine == "blockwise" else {}
                got = np.asarray(panoptem.segment_3d(framed, **kw, **extra).labels["mitochondria"])
            seconds = time.perf_counter() - t
            inside = got[:, b:-b, b:-b] > 0
            emit(bench="framed_thin", plane=name, engine=engine, shape=list(framed.shape), frame=b, z=a.z,
                 foreground_iou=round(float((ref & inside).sum() / max((ref | inside).sum(), 1)), 4),
                 voxels_in_frame=int(np.count_nonzero(got) - np.count_nonzero(inside)),
                 seconds=round(seconds, 2), machine=machine())


if __name__ == "__main__":
    main()
