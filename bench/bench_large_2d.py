"""Peak memory and time of one large 2D image (N x N, tiled from real EM),
segmented with default settings (tile size 0: automatic tiling above 4096 pixels a
side) or --tile-size: network outputs stitched compactly, labels decoded tile by tile.
Usage: python bench/bench_large_2d.py --lucchi DIR [N] [--tile-size T]  (N e.g. 12000, 20000)
"""
from __future__ import annotations

import argparse

import numpy as np

from _common import Timer, add_lucchi_argument, emit, lucchi_dir, machine, peak_rss_mb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=8192, help="side of the image in pixels")
    ap.add_argument("--tile-size", type=int, default=0, help="0: automatic (the default of segment_2d)")
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
        lab = panoptem.segment_2d(big, tile_size=a.tile_size)
    emit(what="2d large tiled", size=[n, n], tile_size=a.tile_size, peak_rss_mb=round(peak_rss_mb()), seconds=round(t.s, 1), objects=int(len(np.unique(lab)) - 1),
         rss_before_mb=round(before), image_mb=big.nbytes / 2**20, labels_mb=lab.nbytes / 2**20, machine=machine())


if __name__ == "__main__":
    main()
