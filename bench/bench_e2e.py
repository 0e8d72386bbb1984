"""End-to-end `segment_3d` on a slab of the Lucchi training volume, in a warm process (the
model loaded and one small run made first), wall and CPU seconds. Meant to be run from two
checkouts in turn (PYTHONPATH) to compare them on one machine. Prints one JSON line.

Usage: python bench/bench_e2e.py --lucchi DIR [--z 0:128] [--mode xy|orthoplane] [--label NAME]
"""
from __future__ import annotations

import time

from _common import comparison_arguments, emit, lucchi_dir, parse_slab

from panoptem._bench import load


def main() -> None:
    ap = comparison_arguments(__doc__, "0:128", repeat=None)
    ap.add_argument("--mode", choices=("xy", "orthoplane"), default="xy")
    a = ap.parse_args()
    import tifffile

    import panoptem
    z0, z1 = parse_slab(a)
    vol = tifffile.imread(lucchi_dir(a.lucchi) / "training_image.tif", key=range(z0, z1))
    model = panoptem.load_model(device="cpu")
    ortho = a.mode == "orthoplane"
    panoptem.segment_3d(vol[:8], model, orthoplane=ortho)  # warm-up: sessions, thread pools
    t, c = time.perf_counter(), time.process_time()
    res = panoptem.segment_3d(vol, model, orthoplane=ortho)
    emit(what="segment_3d end to end, warm process", code=a.label, mode=a.mode,
         input=f"Lucchi training volume z{z0}-{z1 - 1}", shape=list(vol.shape),
         seconds=round(time.perf_counter() - t, 2), cpu_seconds=round(time.process_time() - c, 2),
         objects=res.objects, load=load())


if __name__ == "__main__":
    main()
