"""The intensity range a run samples before its first network call, on a file opened as a
run opens it (lazily: a compressed TIFF is decoded strip by strip): CPU and wall seconds of
reading the sampled boxes and of the whole range, median of ``--repeat`` (the first read,
which opens the file, is left out). Prints one JSON line (``--out``: appended there too).

Usage:
    python bench/bench_intensity.py VOLUME.tif [--repeat 5] [--label NAME] [--out FILE]
"""
from __future__ import annotations

import argparse
import statistics
import time

from _common import emit_to, peak_rss_mb

from panoptem._bench import load, machine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("volume")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--label", default="", help="a name for the code measured (e.g. a commit)")
    ap.add_argument("--out", help="append the result line to this file")
    a = ap.parse_args()
    from panoptem.io import read_image
    from panoptem.inference.preprocess import _sample_boxes, intensity_range, read_boxes
    image = read_image(a.volume).data
    boxes = _sample_boxes(image.shape, 2_000_000)
    intensity_range(image)  # opens the file (and imports its reader)
    reads, reads_cpu, whole = [], [], []
    for _ in range(a.repeat):
        t, c = time.perf_counter(), time.process_time()
        read_boxes(image, boxes)
        reads.append(time.perf_counter() - t)
        reads_cpu.append(time.process_time() - c)
        t = time.perf_counter()
        rng = intensity_range(image)
        whole.append(time.perf_counter() - t)
    emit_to(dict(what="intensity range of a lazily opened volume", code=a.label, shape=list(image.shape),
                 lazy=type(image).__name__, chunks=list(getattr(image, "chunks", None) or []),
                 read_boxes_s=round(statistics.median(reads), 3), read_boxes_cpu_s=round(statistics.median(reads_cpu), 3),
                 intensity_range_s=round(statistics.median(whole), 3), range=list(rng),
                 runs_s=[round(v, 3) for v in whole], load=load(), machine=machine(),
                 peak_rss_mb=round(peak_rss_mb(), 1)), a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
