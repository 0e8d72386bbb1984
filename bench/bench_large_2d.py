"""Peak memory and time of one large 2D image (N x N, tiled from real EM),
segmented with tile_size=2048: network outputs stitched compactly, labels
decoded tile by tile. Usage: python bench/bench_large_2d.py --lucchi DIR [N]  (N e.g. 8192, 20000)
"""
from __future__ import annotations

import argparse

import numpy as np

from _common import Timer, add_lucchi_argument, emit, lucchi_dir, machine, peak_rss_mb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=8192, help="side of the image in pixels")
    add_lucchi_argument(ap)
    a = ap.parse_args()
    import tifffile

    import panoptem
    n = a.n
    img = tifffile.imread(lucchi_dir(a.lucchi) / "training_image.tif", key=range(140, 150))
    mosaic = np.concatenate([np.concatenate(list(img[:5]), 1), np.concatenate(list(img[5:]), 1)], 0)
    big = np.tile(mosaic, (-(-n // mosaic.shape[0]), -(-n // mosaic.shape[1])))[:n, :n].copy()
    before = peak_rss_mb()
    with Timer() as t:
        lab = panoptem.segment_2d(big, tile_size=2048)
    emit(what="2d large tiled", size=[n, n], seconds=round(t.s, 1), objects=int(len(np.unique(lab)) - 1),
         rss_before_mb=round(before), image_mb=big.nbytes / 2**20, labels_mb=lab.nbytes / 2**20, machine=machine())


if __name__ == "__main__":
    main()
