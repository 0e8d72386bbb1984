"""Peak memory and time of one large 2D image (N x N, tiled from real EM),
segmented with tile_size=2048: network outputs stitched compactly, labels
decoded tile by tile. Usage: python bench/bench_large_2d.py N  (e.g. 8192, 20000)
"""
from __future__ import annotations

import sys

import numpy as np

from _common import LUCCHI, Timer, emit, machine, peak_rss_mb


def main():
    import tifffile

    import panoptem
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
    img = tifffile.imread(LUCCHI / "training_image.tif", key=range(140, 150))
    mosaic = np.concatenate([np.concatenate(list(img[:5]), 1), np.concatenate(list(img[5:]), 1)], 0)
    big = np.tile(mosaic, (-(-n // mosaic.shape[0]), -(-n // mosaic.shape[1])))[:n, :n].copy()
    before = peak_rss_mb()
    with Timer() as t:
        lab = panoptem.segment_2d(big, tile_size=2048)
    emit(what="2d large tiled", size=[n, n], seconds=round(t.s, 1), objects=int(len(np.unique(lab)) - 1),
         rss_before_mb=round(before), image_mb=big.nbytes / 2**20, labels_mb=lab.nbytes / 2**20, machine=machine())


if __name__ == "__main__":
    main()
