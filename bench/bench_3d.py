"""3D inference speed per plane and for ortho-plane: end-to-end seconds and
the network-only seconds over the same slices (``timings`` of Result3D), so
the cost of everything around the network is known.

Input: the Lucchi validation block z135-164 (30 x 768 x 1024) with ``--lucchi DIR``,
else the bundled sample. Usage: python bench/bench_3d.py [--lucchi DIR] [--model NAME] [--modes xy,xz,yz,ortho]
"""
from __future__ import annotations

import argparse

from _common import Timer, add_lucchi_argument, emit, lucchi_dir, machine


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="MitoLite_v1")
    ap.add_argument("--modes", default="xy,xz,yz,ortho")
    ap.add_argument("--batch-size", type=int, default=4)
    add_lucchi_argument(ap, required=False)
    a = ap.parse_args()
    import panoptem
    if a.lucchi is not None:
        import tifffile
        vol = tifffile.imread(lucchi_dir(a.lucchi) / "training_image.tif", key=range(135, 165))
        what = "lucchi z135-164"
    else:
        vol, what = panoptem.load_sample(), "bundled sample"
    model = panoptem.load_model(a.model)
    panoptem.segment_2d(vol[0], model)  # warm-up
    for mode in a.modes.split(","):
        kw = dict(orthoplane=True) if mode == "ortho" else dict(inference_plane=mode)
        with Timer() as t:
            res = panoptem.segment_3d(vol, model, batch_size=a.batch_size, **kw)
        tm = res.timings
        emit(what=f"3d {mode}", input=what, shape=list(vol.shape), model=a.model, device=model.device,
             seconds=round(t.s, 2), network_seconds=round(tm.get("network_s", 0), 2),
             decode_link_seconds=round(tm.get("decode_link_s", 0), 2),
             consensus_seconds=round(tm.get("consensus_s", 0), 2),
             overhead_fraction=round(1 - tm.get("network_s", 0) / t.s, 3),
             voxels_per_s=round(vol.size / t.s), objects=res.objects, machine=machine())


if __name__ == "__main__":
    main()
