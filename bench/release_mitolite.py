"""Publish trained weights as the built-in MitoLite_v1 model, with the
validation figures measured on the held-out Lucchi block in its card.

A release tool of this repository: it writes the weights and the card into
``src/panoptem/models/zoo`` of the source tree (or ``--out-dir``).

Usage: python bench/release_mitolite.py runs/mito_v1 --lucchi DIR [--name MitoLite_v1] [--out-dir DIR]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from accuracy_lucchi import validate_2d
from _common import add_lucchi_argument, lucchi_dir, machine

ZOO = Path(__file__).resolve().parents[1] / "src" / "panoptem" / "models" / "zoo"

DESCRIPTION = """Mitochondria in FIB-SEM / serial-section EM (panoptem's own small model, 2.0 M parameters).
Panoptic-DeepLab-style: residual encoder (stride 32), FPN decoder at stride 4, semantic + centre heatmap + offsets.
Trained from scratch on a CPU on the EPFL hippocampus volume (Lucchi et al. 2012), slices 0-124,
5 nm pixels, with scale augmentation for about 4-15 nm pixels. Validated on slices 135-164 (never trained on).
Normalisation: 0.5-99.5 percentiles of the image (2D) or volume (3D), so any dtype works."""


def publish(weights: str | Path, name: str, description: str, voxel_size_nm: float | None,
            validation: dict | None = None, training: dict | None = None, out_dir: str | Path = ZOO,
            label_divisor: int | None = None, class_name: str = "mitochondria") -> Path:
    """Write ``out_dir/<name>.pt`` (state dict) and ``out_dir/<name>.yaml``, atomically;
    returns the card path. The card records every architecture setting."""
    import torch

    from panoptem._atomic import atomic_path, write_text
    from panoptem.models.architecture import architecture_config
    from panoptem.models.card import ClassInfo, ModelCard, Weights
    from panoptem.models.home import sha256_of
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = torch.load(weights, map_location="cpu", weights_only=True)
    arch = architecture_config(blob["architecture"])
    wfile = out / f"{name}.pt"
    with atomic_path(wfile, suffix=".pt") as tmp:
        torch.save({"architecture": arch, "state_dict": blob["state_dict"]}, tmp)
    card = ModelCard(name=name, description=description, classes=[ClassInfo(id=1, name=class_name)],
                     label_divisor=label_divisor, voxel_size_nm=voxel_size_nm, architecture=arch,
                     weights=Weights(file=wfile.name, sha256=sha256_of(wfile), format="state_dict"),
                     validation=validation or {}, training=training or {})
    return write_text(out / f"{name}.yaml", card.to_yaml())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--name", default="MitoLite_v1")
    ap.add_argument("--out-dir", default=str(ZOO), help="where the weights and the card go (default: the zoo "
                    "of this source tree)")
    add_lucchi_argument(ap)
    a = ap.parse_args()
    import panoptem
    run = Path(a.run_dir)
    cfg = json.loads((run / "train_config.json").read_text())
    training = dict(data="Lucchi training volume, slices 0-124 (2D instance labels)", iterations=cfg["iterations"],
                    schedule=f"one-cycle (max lr {cfg['lr']}, {cfg['schedule_steps'] or cfg['iterations']} steps)"
                             + (f", cosine anneal to 0 from step {cfg['anneal_from']}" if cfg["anneal_from"] else ""),
                    batch_size=cfg["batch_size"], patch_size=cfg["patch_size"], scale_range=cfg["scale_range"],
                    machine=machine(), command="panoptem train-volume training_image.tif training_instances2d.tif -o "
                    "runs/mito_v1 --train-slices 0:125 --val-slices 135:165 --iterations "
                    f"{cfg['iterations']} --schedule-steps {cfg['schedule_steps']} --anneal-from {cfg['anneal_from']}")
    card = publish(run / "weights.pt", a.name, DESCRIPTION, voxel_size_nm=5.0, training=training, out_dir=a.out_dir)
    model = panoptem.load_model(str(card), device="cpu")
    v = validate_2d(model, lucchi_dir(a.lucchi))
    validation = {"foreground_iou_2d": v["foreground_iou"], "f1_50_2d": v["f1_50"],
                  "precision_50_2d": v["precision_50"], "recall_50_2d": v["recall_50"],
                  "how": "bench/accuracy_lucchi.py --only 2d: default parameters, every slice of Lucchi "
                         "z135-164 on its own; IoU pooled over the block, F1 from TP/FP/FN pooled over slices "
                         "against the 2D ground-truth objects"}
    card = publish(run / "weights.pt", a.name, DESCRIPTION, voxel_size_nm=5.0, training=training,
                   validation=validation, out_dir=a.out_dir)
    print(json.dumps({"card": str(card), **validation}))


if __name__ == "__main__":
    main()
