"""The ortho-plane consensus alone: the three stacks of a Lucchi sub-volume are segmented once
(single-class local ids, as an ortho-plane run hands them over), then
`orthoplane_consensus` is timed on them, wall and CPU seconds.

Run it from two checkouts in turn (PYTHONPATH) to compare two versions of the consensus on one
machine. Prints one JSON line. Usage:
    python bench/bench_consensus.py --lucchi DIR [--z 0:128] [--repeat 3] [--label NAME]
"""
from __future__ import annotations

import hashlib
import statistics
import time

import numpy as np

from _common import comparison_arguments, emit, lucchi_dir, parse_slab, peak_rss_mb

from panoptem._bench import load


def main() -> None:
    ap = comparison_arguments(__doc__, "0:128", 3)
    a = ap.parse_args()
    import tifffile

    import panoptem
    from panoptem.inference.consensus import orthoplane_consensus
    from panoptem.labels import compact
    from panoptem.params import PLANES, Params3D
    z0, z1 = parse_slab(a)
    vol = tifffile.imread(lucchi_dir(a.lucchi) / "training_image.tif", key=range(z0, z1))
    res = panoptem.segment_3d(vol, panoptem.load_model(device="cpu"), orthoplane=True, return_panoptic=True)
    stacks = [compact(res.stacks[pl], return_counts=True) for pl in PLANES]
    p = Params3D()
    kw = dict(label_divisor=p.label_divisor, pixel_vote_thr=p.pixel_vote_thr, allow_one_view=p.allow_one_view,
              min_size=p.min_size, min_extent=p.min_extent)
    wall, cpu, out = [], [], None
    for _ in range(a.repeat):
        t, c = time.perf_counter(), time.process_time()
        out = orthoplane_consensus(None, compacted=stacks, **kw)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    emit(what="ortho-plane consensus alone", code=a.label, input=f"Lucchi training volume z{z0}-{z1 - 1}",
         shape=list(vol.shape), seconds=round(statistics.median(wall), 3),
         cpu_seconds=round(statistics.median(cpu), 3), runs_s=[round(v, 3) for v in wall],
         objects=int(len(np.unique(out)) - 1), labels_sha256=hashlib.sha256(out.tobytes()).hexdigest()[:16],
         peak_rss_mb=round(peak_rss_mb(), 1), load=load())


if __name__ == "__main__":
    main()
