"""Peak memory of a streamed one-plane 3D run versus volume depth.

Runs each depth in a fresh process (peak RSS is per process), on a volume of
fixed slice size made by repeating real EM slices, writing labels to Zarr
with segment_3d(..., output=...). If the engine streams, peak memory stays
about flat as depth grows. Usage: python bench/bench_stream_memory.py [--depths 16,64,256] [--size 512]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time, numpy as np, zarr
sys.path.insert(0, {bench!r})
from _common import peak_rss_mb
import panoptem
depth, size, model, tmp = {depth}, {size}, {model!r}, {tmp!r}
s = panoptem.load_sample()
base = np.tile(s, (1, -(-size // s.shape[1]), -(-size // s.shape[2])))[:, :size, :size]
src = zarr.open_array(tmp + "/in.zarr", mode="w", shape=(depth, size, size), chunks=(1, size, size), dtype="uint8")
for z in range(depth):
    src[z] = base[z % len(base)]
m = panoptem.load_model(model)
rss0 = peak_rss_mb()
t = time.time()
res = panoptem.segment_3d(src, m, output=tmp + "/out.zarr")
print(json.dumps(dict(what="3d streamed xy", depth=depth, slice=[size, size], seconds=round(time.time() - t, 2),
                      objects=res.objects, peak_rss_mb=round(peak_rss_mb(), 1), rss_before_run_mb=round(rss0, 1))))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", default="16,64,256")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--model", default="MitoLite_v1")
    a = ap.parse_args()
    import os
    bench = os.path.dirname(os.path.abspath(__file__))
    failed = 0
    for d in map(int, a.depths.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            code = CHILD.format(bench=bench, depth=d, size=a.size, model=a.model, tmp=tmp)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            line = [l for l in out.stdout.splitlines() if l.startswith("{")]
            print(line[-1] if line else json.dumps({"depth": d, "error": out.stderr[-500:]}), flush=True)
            failed += not line
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
