"""Fine-tune the shipped model on a handful of patches of "another tissue" and report before / after.

The other tissue is simulated from the Lucchi volume, and labelled as such:

- ``invert``: the same EM with inverted contrast (bright membranes on dark), as some detectors /
  preparations give; the network never saw this polarity.
- ``invert_told``: the same inverted EM, fine-tuned and scored with ``invert`` (the contrast told:
  the network sees it as it knows it).
- ``15nm``: the same EM at 15 nm/pixel (area-averaged x3 in y and x; labels take the centre pixel
  of each 3x3 block): objects a third the size the model was trained on.
- ``control``: unchanged data (fine-tuning should not hurt where the model already works).

For each variant: ``--n`` patches (paired with the 2D ground truth, empty ones skipped) are picked
at random from training slices 0-124 only, stored as a dataset folder, the model is fine-tuned with
:func:`panoptem.training.finetune.finetune`, and scored before and after on the held-out slices
135-164 (every slice, 2D, transformed the same way; pooled foreground IoU and F1 at IoU 0.5).
Nothing is written outside a temporary folder (a temporary PANOPTEM_HOME). One JSON line per variant.

Usage::

    python bench/finetune_demo.py --lucchi DIR [--model MitoLite_v1] [--variants invert,15nm] [--n 16]
                                  [--iterations 100] [--layers all] [--threads 2]

About 3-4 minutes on 2 CPU cores for the two default variants (less with a GPU: --device auto).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import add_lucchi_argument, emit, lucchi_dir, machine

TRAIN_Z = range(0, 125)
VAL_Z = range(135, 165)


def transform(variant: str, img: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Z, Y, X) uint8 image and 2D labels -> the variant's version of both."""
    if variant in ("invert", "invert_told"):
        return 255 - img, lab
    if variant == "15nm":
        z, h, w = img.shape
        h3, w3 = h // 3, w // 3
        small = img[:, :h3 * 3, :w3 * 3].reshape(z, h3, 3, w3, 3).mean(axis=(2, 4))
        return np.round(small).astype(np.uint8), np.ascontiguousarray(lab[:, 1:h3 * 3:3, 1:w3 * 3:3])
    if variant == "control":
        return img, lab
    raise SystemExit(f"unknown variant {variant}; choose invert, invert_told, 15nm or control")


def write_folder(folder: Path, images, masks) -> None:
    """A dataset folder of whole slices (validation: empty slices allowed, unlike store_dataset)."""
    from panoptem.io import write_image, write_labels
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i, (im, m) in enumerate(zip(images, masks)):
        write_image(folder / "images" / f"z{i:03d}.tif", im)
        write_labels(folder / "masks" / f"z{i:03d}.tif", m.astype(np.uint32))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="MitoLite_v1")
    ap.add_argument("--variants", default="invert,15nm")
    ap.add_argument("--n", type=int, default=16, help="annotated patches to fine-tune on")
    ap.add_argument("--patch-size", type=int, default=0, help="default: 256 (128 for 15nm, same field of "
                    "view in objects)")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--layers", default="all")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    add_lucchi_argument(ap)
    a = ap.parse_args()
    lucchi = lucchi_dir(a.lucchi)

    import tifffile
    import torch
    torch.set_num_threads(a.threads)
    img = tifffile.imread(lucchi / "training_image.tif")
    lab = tifffile.imread(lucchi / "training_instances2d.tif")
    with tempfile.TemporaryDirectory(prefix="panoptem-ftdemo-") as tmp:
        os.environ["PANOPTEM_HOME"] = str(Path(tmp) / "home")  # registered demo models vanish afterwards
        from panoptem.models.home import get_card
        from panoptem.training.dataset import store_dataset
        from panoptem.training.finetune import finetune
        from panoptem.training.patches import pick_patches
        model_card = get_card(a.model)
        for variant in a.variants.split(","):
            t0 = time.perf_counter()
            vimg, vlab = transform(variant, img, lab)
            size = a.patch_size or (128 if variant == "15nm" else 256)
            tr = np.asarray(list(TRAIN_Z))
            picked = pick_patches(vimg[tr], n=4 * a.n, patch_size=size, is_2d_stack=True, labels=vlab[tr],
                                  seed=a.seed, source=f"lucchi_{variant}")
            picked = [p for p in picked if p.labels.any()][:a.n]
            for p in picked:  # report slice numbers of the volume, not of the training block
                p.index = int(tr[p.index])
            root = Path(tmp) / variant
            store_dataset(picked, root / "train")
            val = np.asarray(list(VAL_Z))
            write_folder(root / "val", vimg[val], vlab[val])
            t1 = time.perf_counter()
            r = finetune(a.model, root / "train", val_dir=root / "val", name=f"demo_{variant}",
                         iterations=a.iterations, patch_size=size, layers=a.layers, lr=a.lr, device=a.device,
                         seed=a.seed, log=lambda s: None, invert=variant == "invert_told")
            losses = r["losses"]
            emit(what="finetune demo", variant=variant, base_model=model_card.name,
                 data=f"lucchi {variant}: {len(picked)} random {size}px patches from z0-124 (ground truth as "
                      f"annotation); scored on held-out z135-164, 2D per slice",
                 n_patches=len(picked), patch_size=size, iterations=a.iterations, layers=a.layers, lr=a.lr,
                 before=r["before"], after=r["after"],
                 loss_first5=round(float(np.mean(losses[:5])), 4), loss_last5=round(float(np.mean(losses[-5:])), 4),
                 finetune_s=round(time.perf_counter() - t1, 1), total_s=round(time.perf_counter() - t0, 1),
                 machine=machine())


if __name__ == "__main__":
    main()
