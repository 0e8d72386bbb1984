"""Seconds per 1024 x 1024 slice: network only and end to end (segment_2d).

Input: a 1024^2 crop of real EM (Lucchi slice 150, reflect-padded to 1024 rows)
with ``--lucchi DIR``, else the bundled sample tiled to 1024^2.
Prints one JSON line per measurement. Usage: python bench/bench_2d.py [--lucchi DIR] [--model NAME] [--repeats N]
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np

from _common import Timer, add_lucchi_argument, emit, lucchi_dir, machine


def test_image(lucchi=None) -> tuple[np.ndarray, str]:
    if lucchi is not None:
        import tifffile
        img = tifffile.imread(lucchi_dir(lucchi) / "training_image.tif", key=150)
        return np.pad(img, ((0, 1024 - img.shape[0]), (0, 0)), mode="reflect"), "lucchi z150 padded"
    from panoptem.sample import load_sample
    s = load_sample()[15]
    return np.tile(s, (3, 3))[:1024, :1024], "sample tiled"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="MitoLite_v1")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tta", action="store_true", help="test-time augmentation (flips)")
    add_lucchi_argument(ap, required=False)
    a = ap.parse_args()
    import panoptem
    from panoptem.inference.engine import Predictor
    img, what = test_image(a.lucchi)
    model = panoptem.load_model(a.model, a.device)
    pred = Predictor(model, runtime="auto", tta=a.tta)  # as segment_2d runs it
    rng = pred.intensity(img)
    pred.predict(img, rng)  # warm-up
    panoptem.segment_2d(img, model, tta=a.tta)
    net, e2e = [], []
    for _ in range(a.repeats):
        with Timer() as t:
            pred.predict(img, rng)
        net.append(t.s)
        with Timer() as t:
            labels = panoptem.segment_2d(img, model, tta=a.tta)
        e2e.append(t.s)
    n = int(len(np.unique(labels)) - 1)
    for name, ts in (("network_only", net), ("end_to_end", e2e)):
        emit(what=f"2d {name}", input=what, size=list(img.shape), model=a.model, device=model.device, runtime=pred.runtime, tta=a.tta,
             seconds_median=round(statistics.median(ts), 4), seconds_min=round(min(ts), 4),
             pixels_per_s=round(img.size / statistics.median(ts)), objects=n, machine=machine())


if __name__ == "__main__":
    main()
