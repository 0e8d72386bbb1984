"""Everything behind the network, alone: the network's outputs for each batch are computed
once and kept in memory, then `segment_3d` is run again one stage after another, so its
time is the rounding to cache precision, the running median, decoding, linking, relabelling
and (ortho-plane) the consensus, without the network's noise.

Run it from two checkouts in turn (PYTHONPATH) to compare two versions of that work on one
machine. Prints one JSON line per mode. Usage:
    python bench/bench_behind_network.py --lucchi DIR [--z 135:165] [--repeat 3] [--label NAME] [--mode xy|orthoplane|both]
"""
from __future__ import annotations

import hashlib
import statistics
import time

import numpy as np

from _common import comparison_arguments, emit, lucchi_dir, parse_slab

from panoptem._bench import load


def main() -> None:
    ap = comparison_arguments(__doc__, "135:165", 3)
    ap.add_argument("--mode", choices=("xy", "orthoplane", "both"), default="both")
    a = ap.parse_args()
    import tifffile

    import panoptem
    from panoptem.inference import engine
    z0, z1 = parse_slab(a)
    vol = tifffile.imread(lucchi_dir(a.lucchi) / "training_image.tif")[z0:z1]
    model = panoptem.load_model(device="cpu")
    memo: dict[str, object] = {}
    network = engine.Predictor.predict

    def remembered(self, planes, intensity=None, timings=None, blank="auto"):
        # planes, or the network input made of them ahead (Predictor.prepare), and padding given per pixel
        parts = planes.inputs() if isinstance(planes, engine.Prepared) else [np.asarray(planes)]
        if not isinstance(blank, str):
            parts.append(np.asarray(blank))
        h = hashlib.blake2b(digest_size=16)
        for x in parts:
            h.update(np.ascontiguousarray(x).tobytes())
            h.update(str(x.shape).encode())
        key = h.hexdigest()
        if key not in memo:
            memo[key] = network(self, planes, intensity, timings, blank)
        return memo[key]

    engine.Predictor.predict = remembered
    for mode, kw in (("xy", {}), ("orthoplane", {"orthoplane": True})):
        if a.mode not in ("both", mode):
            continue
        panoptem.segment_3d(vol, model, overlap=False, **kw)  # the network, once
        wall, cpu = [], []
        for _ in range(a.repeat):
            t, c = time.perf_counter(), time.process_time()
            res = panoptem.segment_3d(vol, model, overlap=False, **kw)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        stages = {k[:-2]: round(v, 3) for k, v in res.timings.items()
                  if k.endswith("_s") and not k.endswith("cpu_s") and k[:-2] in
                  ("quantise", "median", "decode", "link", "relabel", "consensus", "split")}
        emit(what="behind the network", code=a.label, mode=mode, input=f"Lucchi training volume z{z0}-{z1 - 1}",
             shape=list(vol.shape), seconds=round(statistics.median(wall), 3),
             cpu_seconds=round(statistics.median(cpu), 3), runs_s=[round(v, 3) for v in wall],
             last_run_stages_s=stages, objects=res.objects, load=load())


if __name__ == "__main__":
    main()
