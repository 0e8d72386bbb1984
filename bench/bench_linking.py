"""Speed of 3D linking: SliceLinker.add over every slice + finish + remap.

Input: a synthetic 100 x 512 x 512 stack of ~200 drifting tubes whose 2D ids
change every slice (class 1, divisor 10000). Prints one JSON line.
Usage: python bench/bench_linking.py [--shape Z H W] [--objects N] [--repeats R]
"""
from __future__ import annotations

import argparse

import numpy as np

from _common import Timer, emit


def synthetic_stack(shape, n_objects: int, seed: int = 0) -> np.ndarray:
    """Tubes (radius 4-12 px) that drift a little per slice, random 2D ids per slice."""
    rng = np.random.default_rng(seed)
    z_n, h, w = shape
    stack = np.zeros(shape, np.uint32)
    r = rng.uniform(4, 12, n_objects)
    cy, cx = rng.uniform(15, h - 15, n_objects), rng.uniform(15, w - 15, n_objects)
    vy, vx = rng.uniform(-0.5, 0.5, n_objects), rng.uniform(-0.5, 0.5, n_objects)
    z0 = rng.integers(0, z_n // 2, n_objects)
    z1 = np.minimum(z_n, z0 + rng.integers(10, z_n, n_objects))
    yy, xx = np.mgrid[-13:14, -13:14]
    for i in range(n_objects):
        for z in range(z0[i], z1[i]):
            y = int(np.clip(cy[i] + vy[i] * z, 14, h - 15))
            x = int(np.clip(cx[i] + vx[i] * z, 14, w - 15))
            win = stack[z, y - 13:y + 14, x - 13:x + 14]
            win[yy ** 2 + xx ** 2 <= r[i] ** 2] = i + 1
    for z in range(z_n):  # new 2D ids every slice
        perm = np.r_[0, 10000 + 1 + rng.permutation(n_objects)].astype(np.uint32)
        stack[z] = perm[stack[z]]
    return stack


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[100, 512, 512])
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.repeats < 1 or a.objects < 1 or a.shape[0] < 11 or min(a.shape[1:]) < 32:
        ap.error("--repeats and --objects must be 1 or more, and --shape Z Y X at least 11 32 32 (tubes 10+ slices "
                 "long, 12 px in radius)")
    from panoptem.inference.linking import link_stack
    stack = synthetic_stack(tuple(a.shape), a.objects)
    times = []
    for _ in range(a.repeats):
        with Timer() as t:
            labels, res = link_stack(stack, min_size=500, min_extent=5)
        times.append(t.s)
    s = min(times)
    emit(what="linking", shape=list(stack.shape), objects_2d_per_slice=round(float(
        np.mean([len(np.unique(p)) - 1 for p in stack[::10]])), 1), objects_3d=res.n_objects,
        seconds=round(s, 3), voxels_per_s=round(stack.size / s))


if __name__ == "__main__":
    main()
