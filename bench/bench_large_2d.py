"""Peak memory and time of one large 2D image (N x N, tiled from real EM),
segmented with default settings (tile size 0: automatic tiling above 4096 pixels a
side) or --tile-size: network outputs stitched compactly, labels decoded tile by tile.
Usage: python bench/bench_large_2d.py --lucchi DIR [N] [--tile-size T] [--pixel-size NM]  (N e.g. 12000, 20000)
(``--pixel-size``: the image's pixels said to be NM nm, so that it is resampled to the model's)
"""
from __future__ import annotations

import argparse

import numpy as np

from _common import Timer, add_lucchi_argument, emit, lucchi_mosaic, machine, peak_rss_mb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=8192, help="side of the image in pixels")
    ap.add_argument("--tile-size", type=int, default=0, help="0: automatic (the default of segment_2d)")
    ap.add_argument("--pixel-size", type=float, default=None, help="nm per pixel of the image (default: unknown)")
    ap.add_argument("--label", default="", help="a name for the code measured")
    add_lucchi_argument(ap)
    a = ap.parse_args()
    import panoptem
    n = a.n
    big = lucchi_mosaic(a.lucchi, n)
    before = peak_rss_mb()
    with Timer() as t:
        lab = panoptem.segment_2d(big, tile_size=a.tile_size,
                                  voxel_size=None if a.pixel_size is None else (a.pixel_size,) * 2)
    emit(what="2d large tiled", code=a.label, size=[n, n], tile_size=a.tile_size, pixel_size_nm=a.pixel_size,
         peak_rss_mb=round(peak_rss_mb()), seconds=round(t.s, 1), objects=int(len(np.unique(lab)) - 1),
         rss_before_mb=round(before), image_mb=big.nbytes / 2**20, labels_mb=lab.nbytes / 2**20, machine=machine())


if __name__ == "__main__":
    main()
