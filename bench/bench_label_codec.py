"""What the codec of written label volumes costs: Blosc zstd (byte shuffle) at several levels on
label chunks, one thread, as a writer compresses them: seconds to encode, to decode, and the
compression ratio, median of ``--repeat``. Two kinds of labels: the first 64 x 512 x 512 of a
label volume panoptem wrote (``--labels``, e.g. a run on Lucchi: sparse), and a dense synthetic
one (3000 balls of radius 9 around random seeds, about 40 % foreground). Prints one JSON line
(``--out``: appended there too).

Usage:
    python bench/bench_label_codec.py [--labels mito.zarr] [--levels 1,3,5] [--repeat 5] [--out FILE]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from _common import emit_to

from panoptem._bench import load, machine


def dense_labels(shape=(64, 512, 512), n=3000, radius=9, seed=0) -> np.ndarray:
    """Balls of ``radius`` around ``n`` random seeds, each its own id (nearest seed wins)."""
    from scipy import ndimage as ndi
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.uint32)
    seeds.flat[rng.choice(seeds.size, n, replace=False)] = np.arange(1, n + 1, dtype=np.uint32)
    dist, idx = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    lab = seeds[tuple(idx)]
    lab[dist > radius] = 0
    return lab


def measure(a: np.ndarray, level: int, repeat: int) -> dict:
    import numcodecs
    codec = numcodecs.Blosc(cname="zstd", clevel=level, shuffle=numcodecs.Blosc.SHUFFLE)
    enc, dec = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        b = codec.encode(a)
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        codec.decode(b)
        dec.append(time.perf_counter() - t)
    return {"level": level, "encode_s": round(statistics.median(enc), 4), "decode_s": round(statistics.median(dec), 4),
            "ratio": round(a.nbytes / len(b), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", help="a label volume (Zarr/OME-Zarr, TIFF...): its first 64 x 512 x 512")
    ap.add_argument("--levels", default="1,3,5")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", help="append the result line to this file")
    a = ap.parse_args()
    import numcodecs
    numcodecs.blosc.set_nthreads(1)
    kinds = {"dense synthetic": dense_labels()}
    if a.labels:
        from panoptem.io import read_image
        kinds[Path(a.labels).name] = np.ascontiguousarray(np.asarray(read_image(a.labels).data[:64, :512, :512]))
    levels = [int(v) for v in a.levels.split(",")]
    out = {}
    for name, lab in kinds.items():
        out[name] = {"shape": list(lab.shape), "dtype": str(lab.dtype), "foreground": round(float((lab > 0).mean()), 3),
                     "levels": [measure(lab, lv, a.repeat) for lv in levels]}
    emit_to(dict(what="Blosc zstd + shuffle on label chunks, one thread", labels=out, load=load(), machine=machine()),
            a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
