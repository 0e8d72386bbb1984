"""The network alone on xy planes and on thin xz planes of one slab, per pixel, at several batch
sizes, in rounds that take turns: does the network cost more per pixel on the thin planes of an
ortho-plane run? (An ortho-plane run of a deep slab feeds the network 3 x the xy stack's pixels,
so its network alone costs 3 x the xy stack's exactly when the answer is no.)

Prints one JSON line per plane kind and batch size, with the megapixels per second of every
round. Usage:
    python bench/bench_network_planes.py --lucchi DIR [--z 0:128] [--repeat 2] [--seconds 6] [--label NAME]
"""
from __future__ import annotations

import time

import numpy as np

from _common import comparison_arguments, emit, lucchi_dir, machine, parse_slab

from panoptem._bench import load


def main() -> None:
    ap = comparison_arguments(__doc__, "0:128", 2)
    ap.add_argument("--seconds", type=float, default=6.0, help="time spent on each case per round")
    a = ap.parse_args()
    import tifffile

    import panoptem
    from panoptem.inference.engine import Predictor
    z0, z1 = parse_slab(a)
    vol = tifffile.imread(lucchi_dir(a.lucchi) / "training_image.tif")[z0:z1]
    lm = panoptem.load_model(device="cpu")
    pred = Predictor(lm, device="cpu", runtime="auto")
    intensity = pred.intensity(vol)
    xz = np.ascontiguousarray(np.moveaxis(vol, 1, 0))  # (Y, Z, X): thin planes, as an xz stack sees them
    # a batch is never larger than the planes there are (a thin slab runs fewer xy batches)
    cases = [("xy", vol, b) for b in (2, 4, 8) if b <= len(vol)] + [("xz", xz, b) for b in (8, 16, 32, 64)
                                                                   if b <= len(xz)]
    pred.predict(vol[:2], intensity)  # warm up
    rates: dict[tuple[str, int], list[float]] = {(k, b): [] for k, _, b in cases}
    for _ in range(a.repeat):
        for kind, planes, b in cases:
            pixels, i, t = 0, 0, time.perf_counter()
            while time.perf_counter() - t < a.seconds:
                start = i % (len(planes) - b + 1)
                pred.predict(planes[start:start + b], intensity)
                pixels, i = pixels + b * planes[0].size, i + b
            rates[(kind, b)].append(round(pixels / (time.perf_counter() - t) / 1e6, 3))
    for (kind, b), r in rates.items():
        emit(what="network alone, megapixels per second", code=a.label, planes=kind,
             plane_shape=list((vol if kind == "xy" else xz).shape[1:]), batch=b, mpx_per_s=r,
             runtime=pred.runtime, input=f"Lucchi training volume z{z0}-{z1 - 1}", load=load(), machine=machine())


if __name__ == "__main__":
    main()
