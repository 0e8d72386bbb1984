"""What `--blockwise` costs beside the in-memory run on the same real volume and network.

A slab of the Lucchi training volume is written to Zarr (chunks 64 x 256 x 256), then, in
turn, `segment_3d` runs on it in memory (this process, warmed up) and `segment_blockwise`
with its defaults (a fresh local cluster each time: blocks 64 x 1024 x 1024, halo
16 x 128 x 128, workers and threads from the cores), or with ``--block-shape``: blocks
smaller than a slice cut it into tiles, and each tile is then given its slice's context. One JSON line per run with the seconds
(of every pass for blockwise), then one with the medians, their ratio and the agreement of
the two runs' foreground. Run it with PYTHONPATH set to each of two checkouts to compare them.

    python bench/bench_blockwise_vs_stack.py --lucchi DIR [--z 0:128] [--repeat 2] [--block-shape Z,Y,X] [--label NAME]
        [--orthoplane] [--pixel-size NM]

``--orthoplane`` runs ortho-plane consensus in both; ``--pixel-size NM`` tells both the volume's pixel
size (a 5 nm volume then reaches the network at 10 nm).
"""
from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import comparison_arguments, emit, lucchi_dir, machine, parse_slab

from panoptem._bench import load


def main() -> int:
    ap = comparison_arguments(__doc__, "0:128", repeat=2)
    ap.add_argument("--block-shape", default=None, help="Z,Y,X voxels per block (default: blockwise's own)")
    ap.add_argument("--orthoplane", action="store_true", help="ortho-plane consensus in both runs")
    ap.add_argument("--pixel-size", type=float, default=None, help="the volume's pixel size in nm, told to both")
    a = ap.parse_args()
    extra = {"block_shape": tuple(int(v) for v in a.block_shape.split(","))} if a.block_shape else {}
    both = {"orthoplane": True} if a.orthoplane else {}
    if a.pixel_size:
        both["voxel_size"] = (a.pixel_size,) * 3
    import tifffile
    import zarr

    import panoptem
    from panoptem.distributed import segment_blockwise
    z0, z1 = parse_slab(a)
    vol = np.asarray(tifffile.imread(lucchi_dir(a.lucchi) / "training_image.tif")[z0:z1])
    what = f"Lucchi training volume z{z0}-{z1 - 1}, {'x'.join(map(str, vol.shape))}, Zarr"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "volume.zarr"
        zarr.create_array(str(src), shape=vol.shape, chunks=(64, 256, 256), dtype=vol.dtype, zarr_format=2)[:] = vol
        model = panoptem.load_model("MitoLite_v1")
        panoptem.segment_3d(vol[:4], model)  # warm up
        mem, blk, fg = [], [], []
        for _ in range(a.repeat):
            t = time.perf_counter()
            whole = panoptem.segment_3d(vol, model, **both).labels["mitochondria"]
            mem.append(time.perf_counter() - t)
            emit(what="segment_3d in memory", code=a.label, input=what, seconds=round(mem[-1], 2), load=load())
            out = Path(tmp) / "labels.zarr"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            res = segment_blockwise(str(src), "MitoLite_v1", out, **extra, **both)
            blk.append(time.perf_counter() - t)
            got = np.asarray(res.labels["mitochondria"][:])
            fg.append(float(((got > 0) == (whole > 0)).mean()))
            emit(what="segment_blockwise, " + (f"blocks {a.block_shape}" if extra else "defaults"), code=a.label, input=what, seconds=round(blk[-1], 2),
                 passes_s={k: round(v, 2) for k, v in res.timings.items()}, objects=res.objects, load=load())
        emit(what="blockwise against in memory", code=a.label, input=what, block_shape=a.block_shape or "default",
             orthoplane=a.orthoplane, pixel_size_nm=a.pixel_size,
             in_memory_s=round(statistics.median(mem), 2), blockwise_s=round(statistics.median(blk), 2),
             ratio=round(statistics.median(blk) / statistics.median(mem), 2),
             foreground_agreement=round(min(fg), 6), machine=machine(), load=load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
