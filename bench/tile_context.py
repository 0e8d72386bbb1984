"""Tiles of a large 2D image against one untiled pass: network time and how far the tiled
probabilities are from the untiled ones, with each tile given its whole plane's global context
(a first encoder pass over the tiles' cores) or taking its own (over its tissue).
Usage: python bench/tile_context.py --lucchi DIR [N] [--tiles 256 512 1024 2048]
One JSON line per tile size and context; the untiled pass first.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _common import add_lucchi_argument, emit, lucchi_mosaic, machine


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=4400, help="side of the image in pixels")
    ap.add_argument("--tiles", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--model", default="MitoLite_v1")
    add_lucchi_argument(ap)
    a = ap.parse_args()
    from panoptem.inference import engine
    big = lucchi_mosaic(a.lucchi, a.n)

    def run(tile: int):
        p = engine.Predictor(a.model, device="cpu", runtime="auto", tile_size=tile)
        rng = p.intensity(big)
        p.predict(big[:256, :256], rng)  # warm-up: graphs made, sessions opened
        t0, c0 = time.perf_counter(), time.process_time()
        prob = p.predict(big, rng).semantic_probability[0, -1]
        return prob, time.perf_counter() - t0, time.process_time() - c0

    whole, s, c = run(0)
    emit(what="tile context", size=[a.n, a.n], tile=0, seconds=round(s, 2), cpu_seconds=round(c, 2), machine=machine())
    fg = whole > 0.5
    limit = engine.AUTO_TILE
    for tile in a.tiles:
        for context, below in (("plane", 10**9), ("own", 0)):
            engine.AUTO_TILE = below  # tiles under this many network pixels get their plane's context
            prob, s, c = run(tile)
            emit(what="tile context", size=[a.n, a.n], tile=tile, context=context,
                 default=context == ("plane" if tile < limit else "own"), seconds=round(s, 2),
                 cpu_seconds=round(c, 2), foreground_agreement=round(float(((prob > 0.5) == fg).mean()), 6),
                 mean_abs_difference=float(np.abs(prob - whole).mean()))
    engine.AUTO_TILE = limit


if __name__ == "__main__":
    main()
