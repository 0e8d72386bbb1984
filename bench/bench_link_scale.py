"""The client's share of a blockwise run at scale: joining the 2D pieces of every block and
linking them into 3D objects (``panoptem.distributed._stitch.solve``), alone, on the piece tables
of a volume far larger than this machine could segment.

The tables are generated: tubes through every block's depth (``--per-plane`` pieces in each
plane of each block), some cut by the face to the next block along x (two pieces, one 2D object),
and the two slices each block decodes before its core, matched to the pieces of the block that
owns them, as the workers' passes leave them. Each size is built in one process and solved in a
fresh one, whose peak RSS above its start is the client's memory for the linking.

    python bench/bench_link_scale.py [--pieces 1e5,1e6,1e7] [--per-plane 256] [--out FILE]

One JSON line per size: pieces, 2D objects, objects, seconds, peak RSS above the start and
bytes per piece.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit_to, machine  # noqa: E402

DEPTH, SIDE = 64, 1024  # blocks of the default shape
HALO = 2  # slices decoded before the core (linking two apart)


def _grid_for(pieces: int, per_plane: int):
    """A grid (blocks along Z, Y, X) holding about ``pieces`` pieces."""
    blocks = max(1, round(pieces / (per_plane * DEPTH)))
    gz = max(1, round(blocks ** (1 / 3) * 2))  # twice as deep as wide: a FIB-SEM stack
    gyx = max(1, round((blocks / gz) ** 0.5))
    return gz, gyx, gyx


def build(work: Path, pieces: int, per_plane: int, split: float, seed: int = 0) -> dict:
    """Write the tables of every block and the face and halo pairs the workers would return."""
    from panoptem.distributed._pass1 import block_file, save_npz
    from panoptem.distributed._stitch import gid
    from panoptem.distributed.blocks import BlockGrid
    rng = np.random.default_rng(seed)
    gz, gy, gx = _grid_for(pieces, per_plane)
    shape = (gz * DEPTH, gy * SIDE, gx * SIDE)
    grid = BlockGrid(shape, (DEPTH, SIDE, SIDE))
    side = int(np.ceil(np.sqrt(per_plane)))
    cell = SIDE // side
    n_split = int(per_plane * split)
    faces, halos = [], []
    for b in grid:
        c0, c1 = b.core[0].start, b.core[0].stop
        d0 = max(0, c0 - HALO)
        planes = np.repeat(np.arange(d0, c1), per_plane)
        j = np.tile(np.arange(per_plane), c1 - d0)
        y0, x0 = b.core[1].start, b.core[2].start
        r0 = y0 + (j // side) * cell + rng.integers(0, cell // 4, j.size)
        c0_ = x0 + (j % side) * cell + rng.integers(0, cell // 4, j.size)
        if b.position[2] % 2 == 1:  # the pieces cut by the face below along x: drawn at that face
            c0_ = np.where(j < n_split, x0, c0_)
        hgt = rng.integers(cell // 4, cell // 2, j.size)
        area = hgt * hgt * 3 // 4
        # one centre per tube and slice; a tube cut by a face has the same centre on both sides
        owner_x = b.position[2] - (b.position[2] % 2 if n_split else 0)
        centre = (b.position[1] * gx + np.where(j < n_split, owner_x, b.position[2])) * per_plane + j
        key = planes * (gy * gx * per_plane) + centre
        local_of = lambda d, jj: (d - d0) * per_plane + jj + 1  # noqa: E731
        inner = planes >= c0
        pa, pb, pk = [], [], []
        for dz in (1, 2):
            m = planes - dz >= d0
            m &= inner
            pa.append(local_of(planes[m] - dz, j[m]))
            pb.append(local_of(planes[m], j[m]))
            pk.append(np.full(m.sum(), dz))
        pa, pb, pk = (np.concatenate(v).astype(np.int64) for v in (pa, pb, pk))
        pc = (area[pb - 1] * 0.9).astype(np.int64)
        table = dict(plane=planes.astype(np.int64), key=key.astype(np.int64), area=area.astype(np.int64),
                     r0=r0, r1=r0 + hgt, c0=c0_, c1=c0_ + hgt, first=r0 * shape[2] + c0_,
                     halo=~inner, cls_counts=area.astype(np.int64)[:, None], pa=pa, pb=pb, pc=pc, pkind=pk,
                     halo_planes=np.arange(d0, c0, dtype=np.int64), stuff_plane=np.zeros(0, np.int64),
                     stuff_cls=np.zeros(0, np.int64), stuff_count=np.zeros(0, np.int64))
        save_npz(block_file(work, b.index), **table)
        if c0 > 0:  # the halo slices' pieces: the owner's same tubes
            below = grid.index_of((b.position[0] - 1, b.position[1], b.position[2]))
            od0 = max(0, c0 - DEPTH - HALO)
            hm = ~inner
            owner_local = (planes[hm] - od0) * per_plane + j[hm] + 1
            halos.append(np.stack([gid(b.index, local_of(planes[hm], j[hm])), gid(below, owner_local)], axis=1))
        if b.position[2] % 2 == 1 and n_split:  # joined across the face to the block below along x
            left = grid.index_of((b.position[0], b.position[1], b.position[2] - 1))
            m = inner & (j < n_split)
            ld0 = d0
            faces.append(np.stack([gid(left, (planes[m] - ld0) * per_plane + j[m] + 1),
                                   gid(b.index, local_of(planes[m], j[m]))], axis=1))
    np.save(work / "faces.npy", np.concatenate(faces) if faces else np.zeros((0, 2), np.int64))
    np.save(work / "halos.npy", np.concatenate(halos) if halos else np.zeros((0, 2), np.int64))
    return {"shape": shape, "blocks": len(grid)}


def solve_only(work: Path, shape) -> dict:
    """Solve in this (fresh) process: seconds, and peak RSS above the start."""
    from panoptem.distributed._stitch import solve
    from panoptem.distributed.blocks import BlockGrid
    grid = BlockGrid(tuple(shape), (DEPTH, SIDE, SIDE))
    job = SimpleNamespace(work=str(work), params={}, shape=tuple(shape), volume_shape=tuple(shape),
                          axis=0, stride=1)
    base = _status_mb("VmRSS")
    t = time.perf_counter()
    pairs = [np.load(work / "faces.npy")]
    halos = [np.load(work / "halos.npy")]
    info = solve(job, grid, pairs, halos, [1], min_size=100, min_extent=3)
    return {"solve_s": round(time.perf_counter() - t, 2), "start_rss_mb": round(base, 1),
            "peak_rss_above_start_mb": round(_status_mb("VmHWM") - base, 1), **info}


def _status_mb(field: str) -> float:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), in MiB: unlike
    getrusage's peak, not carried over from the process that started this one."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit("this benchmark reads /proc/self/status (Linux)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", default="1e5,1e6,1e7", help="sizes, comma separated (pieces of the xy stack)")
    ap.add_argument("--per-plane", type=int, default=256, help="pieces in each plane of each 1024² block")
    ap.add_argument("--split", type=float, default=0.1, help="share of tubes cut by a face along x")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file too")
    ap.add_argument("--run", default="", help="a name for the run, recorded on every line")
    ap.add_argument("--label", default="", help="a name for the code measured (e.g. a commit)")
    ap.add_argument("--solve", nargs=2, metavar=("WORK", "SHAPE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.solve:
        print(json.dumps(solve_only(Path(a.solve[0]), [int(v) for v in a.solve[1].split(",")])))
        return
    for n in (int(float(v)) for v in a.pieces.split(",")):
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            t = time.perf_counter()
            built = build(work, n, a.per_plane, a.split)
            build_s = time.perf_counter() - t
            r = subprocess.run([sys.executable, __file__, "--solve", str(work), ",".join(map(str, built["shape"]))],
                               capture_output=True, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            tables_mb = sum(f.stat().st_size for f in (work / "blocks").glob("*.npz")) / 2**20
        rec = {"run": a.run, "label": a.label, "date": time.strftime("%Y-%m-%d"),
               "what": "blockwise linking on the client",
               "how": f"python bench/bench_link_scale.py --pieces {n} --per-plane {a.per_plane} --split {a.split}",
               "shape": built["shape"], "blocks": built["blocks"], "tables_mb": round(tables_mb, 1),
               "build_s": round(build_s, 1), **res,
               "bytes_per_piece": round(res["peak_rss_above_start_mb"] * 2**20 / max(1, res["pieces"])),
               "load": round(os.getloadavg()[0], 2), "machine": machine()}
        emit_to(rec, a.out)


if __name__ == "__main__":
    main()
