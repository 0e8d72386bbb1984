"""Labels decoded on the input's grid (what panoptem does) against labels decoded on the network's
coarser grid and brought to the input's by nearest neighbour (what it does not do), for a volume
whose pixels are finer than the model's range: Lucchi told 5 nm, network at 10 nm.

Decoding, linking and the 3D filters on the network's grid handle a quarter of the pixels, but the
objects' outlines become 2 x 2 steps instead of following the bilinearly enlarged probability.
The network-grid run is made exactly as a run would make it: the volume's 2 x 2 block means (what
panoptem's resampling gives the network for a factor of 2) segmented at 10 nm, Min Size scaled by
the pixel area, then every label repeated 2 x 2.

Accuracy: on the held-out slices (default 135-164), scored against the 3D connected components of
the mitochondria mask. Speed (``--speed``): ``panoptem bench`` (end to end against the network
alone, as in the README) on the whole volume told 5 nm, and on its block means told 10 nm, which
is the best a network-grid decoding could do (no resampling, no enlarging of the labels).
One JSON line per result. Usage:
    python bench/label_grid.py --lucchi DIR [--z 135:165] [--speed] [--repeat 3]
"""
from __future__ import annotations

import time

import numpy as np

from _common import comparison_arguments, emit, lucchi_dir, machine, parse_slab


def block_means(vol: np.ndarray) -> np.ndarray:
    """Each slice's 2 x 2 block means (rows and columns cut to even lengths), rounded to uint8."""
    z, h, w = vol.shape
    v = vol[:, :h // 2 * 2, :w // 2 * 2].astype(np.float32)
    return np.rint(v.reshape(z, h // 2, 2, w // 2, 2).mean(axis=(2, 4))).astype(np.uint8)


def main() -> int:
    ap = comparison_arguments(__doc__, "135:165")
    ap.add_argument("--speed", action="store_true", help="also run panoptem bench on the whole volume, both ways")
    ap.add_argument("--median", type=int, default=3, help="Median Slices of the runs (default 3)")
    a = ap.parse_args()
    import cc3d
    import tifffile

    import panoptem
    from panoptem import evaluate
    from panoptem._bench import bench
    from panoptem.params import Params3D

    lucchi = lucchi_dir(a.lucchi)
    z0, z1 = parse_slab(a)
    img = tifffile.imread(lucchi / "training_image.tif", key=range(z0, z1))
    mask = tifffile.imread(lucchi / "training_mask.tif", key=range(z0, z1)) > 0
    truth = cc3d.connected_components(mask.astype(np.uint8), connectivity=6)
    model = panoptem.load_model()
    min_size = Params3D().min_size
    runs = {}
    for how, vol, voxel, extra in (("input grid (5 nm)", img, (5.0, 5.0, 5.0), {}),
                                   ("network grid (10 nm), enlarged 2 x 2", block_means(img), (5.0, 10.0, 10.0),
                                    {"min_size": max(1, round(min_size / 4))})):
        t = time.perf_counter()
        res = panoptem.segment_3d(vol, model, voxel_size=voxel, median_slices=a.median, **extra)
        s = time.perf_counter() - t
        lab = next(iter(res.labels.values()))
        if lab.shape != img.shape:
            big = np.zeros(img.shape, lab.dtype)
            up = lab.repeat(2, axis=1).repeat(2, axis=2)
            big[:, :up.shape[1], :up.shape[2]] = up
            lab = big
        runs[how] = lab
        r = evaluate(lab, truth)
        emit(what="label grid accuracy", grid=how, slices=f"{z0}-{z1 - 1}", median_slices=a.median,
             foreground_iou=round(r["foreground_iou"], 4), f1_50=round(r["f1_50"], 4), f1_75=round(r["f1_75"], 4),
             pq=round(r["pq"], 4), n_pred=r["n_pred"], n_gt=r["n_gt"], seconds=round(s, 2), machine=machine())
    a_lab, b_lab = runs.values()
    r = evaluate(b_lab, a_lab)
    emit(what="label grid: network grid against input grid", foreground_iou=round(r["foreground_iou"], 4),
         f1_50=round(r["f1_50"], 4), objects=[r["n_pred"], r["n_gt"]])
    if a.speed:
        whole = tifffile.imread(lucchi / "training_image.tif")
        for how, vol, voxel in (("input grid (5 nm)", whole, (5.0, 5.0, 5.0)),
                                ("network grid (10 nm block means, told 10 nm)", block_means(whole), (10.0,) * 3)):
            total = bench(vol, repeat=a.repeat, voxel_size=voxel, input_name="training_image.tif")[-1]
            emit(what="label grid speed", grid=how, shape=list(vol.shape), end_to_end_s=total["end_to_end_s"],
                 network_only_s=total["network_only_s"], ratio=total["ratio"], objects=total["objects"],
                 load=total["load"], machine=machine())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
