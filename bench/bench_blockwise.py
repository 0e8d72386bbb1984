"""Blockwise 3D on Dask: a generated volume several times larger than the memory
each worker is allowed, with 1 and 2 worker processes.

Per run, one JSON line: voxels/s, seconds of every pass, peak RSS of each
worker process (workers are fresh processes per run) and of this client
process, and the speed-up of the passes after the network (centres, decoding,
stitching and linking, writing) over one worker. The volume is dark ellipsoids
and rods on a noisy background, written to Zarr in 64^3 chunks.

    python bench/bench_blockwise.py [--shape 256,2048,2048] [--memory-limit 1.2GB] [--model MitoLite_v1|oracle]

``--model oracle`` uses a hand-set network of a few pooling layers (dark is
mitochondrion), so the run measures the engine rather than the network.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, machine  # noqa: E402


def make_volume(path: Path, shape, seed: int = 0):
    import zarr
    rng = np.random.default_rng(seed)
    arr = zarr.create_array(str(path), shape=shape, chunks=(64, 64, 64), dtype="uint8", fill_value=0, zarr_format=2)
    tile = (64, 256, 256)
    zz, yy, xx = np.mgrid[: tile[0], : tile[1], : tile[2]]
    for z0 in range(0, shape[0], tile[0]):
        for y0 in range(0, shape[1], tile[1]):
            for x0 in range(0, shape[2], tile[2]):
                t = rng.normal(170, 12, tile).astype(np.float32)
                for _ in range(12):
                    c = rng.uniform(0, tile)
                    r = rng.uniform([6, 10, 10], [20, 40, 40])
                    t[((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1] = 60
                sl = tuple(slice(o, min(o + s, n)) for o, s, n in zip((z0, y0, x0), tile, shape))
                arr[sl] = np.clip(t, 0, 255).astype(np.uint8)[tuple(slice(0, s.stop - s.start) for s in sl)]
    return arr


def oracle_card(folder: Path) -> str:
    import torch
    import yaml

    from panoptem.models.load import sha256_of
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _models import DarkBlobNet
    torch.jit.save(torch.jit.script(DarkBlobNet()), str(folder / "oracle.pt"))
    card = {"name": "oracle", "label_divisor": None, "padding_factor": 32,
            "weights": {"file": "oracle.pt", "sha256": sha256_of(folder / "oracle.pt"), "format": "torchscript"}}
    (folder / "oracle.yaml").write_text(yaml.safe_dump(card))
    return str(folder / "oracle.yaml")


def _maxrss_mb() -> float:
    """Peak resident memory of this process (VmHWM: its own, not inherited), MiB."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="256,2048,2048")
    ap.add_argument("--block-shape", default="64,512,512")
    ap.add_argument("--halo", default="16,64,64")
    ap.add_argument("--memory-limit", default="1.2GB", help="per worker (Dask pauses, then restarts a worker above it)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--model", default="MitoLite_v1", help="a model name or card, or 'oracle'")
    ap.add_argument("--keep", default=None, help="folder to keep the volume in (default: a temporary one)")
    a = ap.parse_args()
    from distributed import Client

    from panoptem.distributed import segment_blockwise
    from panoptem.distributed._cluster import local_cluster
    shape = tuple(int(v) for v in a.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        src = folder / "volume.zarr"
        if not src.exists():
            t = time.perf_counter()
            make_volume(src, shape)
            emit(what="blockwise bench: volume written", shape=list(shape), gb=round(np.prod(shape) / 1e9, 3),
                 seconds=round(time.perf_counter() - t, 1))
        model = oracle_card(folder) if a.model == "oracle" else a.model
        base = None
        for n in (int(v) for v in a.workers.split(",")):
            with local_cluster(n, memory_limit=a.memory_limit, dashboard_address=None) as lc, Client(lc) as client:
                client.run(lambda k=max(1, (os.cpu_count() or 1) // n): __import__("torch").set_num_threads(k))
                t = time.perf_counter()
                res = segment_blockwise(str(src), model, folder / f"labels_{n}.zarr", block_shape=a.block_shape,
                                        halo=a.halo, client=client, overwrite=True, device="cpu")
                wall = time.perf_counter() - t
                rss = client.run(_maxrss_mb)
                load = os.getloadavg()
            tm = res.timings
            after_net = tm["decode_pass_s"] + tm["stitch_link_s"] + tm["write_s"]
            rec = dict(what="blockwise", model=a.model, workers=n, shape=list(shape), block=a.block_shape,
                       halo=a.halo, worker_memory_limit=a.memory_limit, blocks=res.blocks,
                       objects=sum(res.objects.values()), seconds=round(wall, 1),
                       voxels_per_s=round(np.prod(shape) / wall), passes_s={k: round(v, 1) for k, v in tm.items()},
                       after_network_s=round(after_net, 1),
                       worker_peak_rss_mb=sorted(round(v, 1) for v in rss.values()),
                       client_peak_rss_mb=round(_maxrss_mb(), 1), load_avg_1m=round(load[0], 2), machine=machine())
            if base is None:
                base = (wall, after_net, tm["network_pass_s"])
            else:
                rec["speedup_total"] = round(base[0] / wall, 2)
                rec["speedup_after_network"] = round(base[1] / after_net, 2)
                rec["speedup_network"] = round(base[2] / tm["network_pass_s"], 2)
            emit(**rec)


if __name__ == "__main__":
    main()
