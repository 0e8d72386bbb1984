"""How close the sampled intensity range of a volume comes to its exact percentiles.

A run maps the volume's 0.5 / 99.5 percentiles to the network's input range; a volume of more
than 2 million voxels is sampled in boxes (``preprocess._sample_boxes``). This script draws
random crops of the Lucchi training volume (the whole volume first), computes each crop's exact
percentiles and the sampled ones, with panoptem's boxes and, for comparison, with 4 x 4 x 4
cubes (the sampling before slabs), and prints one JSON line per way of sampling: the mean and
largest error of the low and high values in grey levels and how many slices each reads. Usage:
    python bench/intensity_sampling.py --lucchi DIR [--crops 40] [--seed 1]
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np

from _common import add_lucchi_argument, emit, lucchi_dir


def cubes(shape, max_samples: int) -> list[tuple[slice, ...]]:
    """One cube from the middle of each cell of a 4 x 4 x 4 grid, about ``max_samples`` in all."""
    cells = [min(4, n) for n in shape]
    side = max(1, int((max_samples / np.prod(cells)) ** (1 / 3)))
    out = []
    for idx in itertools.product(*(range(c) for c in cells)):
        box = []
        for i, c, n in zip(idx, cells, shape):
            lo, hi = n * i // c, n * (i + 1) // c
            b = min(side, hi - lo)
            box.append(slice(lo + (hi - lo - b) // 2, lo + (hi - lo - b) // 2 + b))
        out.append(tuple(box))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lucchi_argument(ap)
    ap.add_argument("--crops", type=int, default=40, help="random crops besides the whole volume")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    import tifffile
    from panoptem.inference.preprocess import HIGH_PCT, LOW_PCT, _sample_boxes
    vol = tifffile.imread(lucchi_dir(a.lucchi) / "training_image.tif")
    rng = np.random.default_rng(a.seed)
    crops = [tuple(slice(0, n) for n in vol.shape)]
    for _ in range(a.crops):
        size = [int(rng.integers(lo, n + 1)) for lo, n in zip((30, 256, 256), vol.shape)]
        start = [int(rng.integers(0, n - s + 1)) for n, s in zip(vol.shape, size)]
        crops.append(tuple(slice(s, s + k) for s, k in zip(start, size)))
    ways = {"panoptem (slabs)": _sample_boxes, "4 x 4 x 4 cubes": cubes}
    errors = {k: [] for k in ways}
    for crop in crops:
        a3 = vol[crop]
        exact = np.percentile(a3, [LOW_PCT, HIGH_PCT])
        for name, boxes_of in ways.items():
            boxes = boxes_of(a3.shape, min(2_000_000, a3.size))
            got = np.percentile(np.concatenate([a3[b].ravel() for b in boxes]), [LOW_PCT, HIGH_PCT])
            slices = len({z for b in boxes for z in range(b[0].start, b[0].stop)})
            errors[name].append((*np.abs(got - exact), slices))
    for name, e in errors.items():
        e = np.array(e)
        emit(what="sampled intensity range against the exact percentiles", sampling=name, crops=len(crops),
             low_error_mean=round(float(e[1:, 0].mean()), 2), low_error_max=float(e[1:, 0].max()),
             high_error_mean=round(float(e[1:, 1].mean()), 2), high_error_max=float(e[1:, 1].max()),
             whole_volume_error=[float(e[0, 0]), float(e[0, 1])], slices_read_mean=round(float(e[:, 2].mean()), 1),
             slices_read_whole=int(e[0, 2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
