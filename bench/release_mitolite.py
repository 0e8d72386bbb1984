"""Publish trained weights as the built-in MitoLite_v1 model, with the
validation figures measured on the held-out Lucchi block in its card.

A release tool of this repository: it writes the weights and the card into
``src/panoptem/models/zoo`` of the source tree (or ``--out-dir``).

Usage: python bench/release_mitolite.py runs/mito_v1 --lucchi DIR [--name MitoLite_v1] [--description TEXT]
       [--out-dir DIR]
The run's best.pt (best held-out 3D score) is published when it exists, else its last weights.
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
            label_divisor: int | None = None, class_name: str = "mitochondria", architecture: dict | None = None,
            context_slices: int = 0, pixel_range_nm: tuple[float, float] | None = None) -> Path:
    """Write ``out_dir/<name>.pt`` (state dict) and ``out_dir/<name>.yaml``, atomically;
    returns the card path. The card records every architecture setting (those saved with the
    weights, else ``architecture``); ``context_slices``: the neighbours on each side the network
    sees (its input channels are 2k + 1); ``pixel_range_nm``: the pixel sizes it segments best
    at, as measured with ``bench/pixel_range.py``."""
    import torch

    from panoptem._atomic import atomic_path, write_text
    from panoptem.models.architecture import architecture_config
    from panoptem.models.card import ClassInfo, ModelCard, Weights
    from panoptem.models.home import sha256_of
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = torch.load(weights, map_location="cpu", weights_only=True)
    arch = dict(blob.get("architecture", architecture or {}))
    if context_slices:  # a network trained with neighbours (the card checks that the weights agree)
        arch["in_channels"] = 2 * context_slices + 1
    arch = architecture_config(arch)
    wfile = out / f"{name}.pt"
    with atomic_path(wfile, suffix=".pt") as tmp:
        torch.save({"architecture": arch, "state_dict": blob["state_dict"]}, tmp)
    card = ModelCard(name=name, description=description, classes=[ClassInfo(id=1, name=class_name)],
                     label_divisor=label_divisor, voxel_size_nm=voxel_size_nm, pixel_range_nm=pixel_range_nm,
                     architecture=arch,
                     input_multiple=16, context_slices=context_slices,
                     weights=Weights(file=wfile.name, sha256=sha256_of(wfile), format="state_dict"),
                     validation=validation or {}, training=training or {})
    return write_text(out / f"{name}.yaml", card.to_yaml())


def validate_3d(model, lucchi, z0: int = 135, z1: int = 165, **params) -> dict:
    """3D figures of a model on the held-out block: xy stack, default parameters (``params``
    beside them), against the 3D connected components of the block's mask (objects under the
    500-voxel min size ignored)."""
    import tifffile

    import panoptem
    from panoptem.training.from_volume import score_3d
    zs = range(z0, z1)
    img = tifffile.imread(lucchi / "training_image.tif", key=zs)
    mask = tifffile.imread(lucchi / "training_mask.tif", key=zs)
    res = panoptem.segment_3d(img, model, **params)
    return score_3d(next(iter(res.labels.values())), mask, 500)


def command(cfg: dict, run_name: str) -> str:
    """The train-volume command that reproduces a run from its ``train_config.json``."""
    cmd = (f"panoptem train-volume training_image.tif training_instances2d.tif -o runs/{run_name} "
           f"--train-slices 0:125 --val-slices 135:165 --iterations {cfg['iterations']}")
    defaults = dict(schedule_steps=0, anneal_from=0, lr=2e-3, seed=0, hard_negatives=0.0, pale=0.0,
                    validate_every=500, init=None)
    for key, default in defaults.items():
        if cfg.get(key, default) != default:
            cmd += f" --{key.replace('_', '-')} {cfg[key]}"
    return cmd


def context_command(cfg: dict, k: int, run_name: str) -> str:
    """The train_context_slices.py command that reproduces a 2.5D run from its ``train_config.json``."""
    cmd = (f"python bench/train_context_slices.py --lucchi LUCCHI --run-dir runs/{run_name} --context {k}"
           + ("" if cfg.get("init") else " --scratch") + " --val-slices 135:165")
    for key in ("iterations", "schedule_steps", "anneal_from", "lr", "hard_negatives", "pale", "validate_every",
                "seed"):
        cmd += f" --{key.replace('_', '-')} {cfg.get(key, 0)}"
    return cmd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--name", default="MitoLite_v1")
    ap.add_argument("--description", default=None, help="the card's description (default: MitoLite_v1's)")
    ap.add_argument("--out-dir", default=str(ZOO), help="where the weights and the card go (default: the zoo "
                    "of this source tree)")
    ap.add_argument("--context-slices", type=int, default=0, help="a run of bench/train_context_slices.py: the "
                    "neighbours on each side its network sees")
    ap.add_argument("--pixel-range", default=None, metavar="LO,HI", help="the pixel sizes (nm) it segments best "
                    "at, measured with bench/pixel_range.py (MitoLite_v1: 6,10): written to the card, and the "
                    "validation repeated with the block's 5 nm pixel size known")
    add_lucchi_argument(ap)
    a = ap.parse_args()
    import torch

    import panoptem
    k = a.context_slices
    run = Path(a.run_dir)
    cfg = json.loads((run / "train_config.json").read_text())
    weights = run / "best.pt" if (run / "best.pt").exists() else run / "weights.pt"
    training = dict(data="Lucchi training volume, slices 0-124 (2D instance labels)", iterations=cfg["iterations"],
                    schedule=f"one-cycle (max lr {cfg['lr']}, {cfg['schedule_steps'] or cfg['iterations']} steps)"
                             + (f", cosine anneal to 0 from step {cfg['anneal_from']}" if cfg["anneal_from"] else ""),
                    batch_size=cfg["batch_size"], patch_size=cfg["patch_size"], scale_range=cfg["scale_range"],
                    machine=machine(), command=context_command(cfg, k, run.name) if k else command(cfg, run.name))
    log = run / "log.jsonl"
    if log.exists():  # the training's own clock, from its last logged step
        last = json.loads(log.read_text().strip().splitlines()[-1])
        training["wall_time"] = f"about {round(last['elapsed_s'] / 60)} min"
    if cfg.get("init"):
        training["init"] = cfg["init"]
    if cfg.get("hard_negatives") or cfg.get("pale"):
        training["hard_negatives"], training["pale"] = cfg.get("hard_negatives", 0.0), cfg.get("pale", 0.0)
    if weights.name == "best.pt":  # the step is in the weights (2.5D runs) or beside them
        step = torch.load(weights, map_location="cpu", weights_only=True).get("step")
        training["kept_step"] = step if step is not None else json.loads((run / "best.json").read_text())["step"]
    description = a.description or DESCRIPTION
    if a.pixel_range and not a.description:
        lo_hi = a.pixel_range.replace(",", "-")
        description += (f"\nSegments best at {lo_hi} nm pixels (pixel_range_nm, measured with bench/pixel_range.py): "
                        "an input whose pixel size is known is brought there, a 5 nm volume to 10 nm.")
    rng = tuple(float(v) for v in a.pixel_range.split(",")) if a.pixel_range else None
    kw = dict(architecture=cfg["architecture"], context_slices=k, out_dir=a.out_dir, pixel_range_nm=rng)
    card = publish(weights, a.name, description, voxel_size_nm=5.0, training=training, **kw)
    model = panoptem.load_model(str(card), device="cpu")
    lucchi = lucchi_dir(a.lucchi)
    v = validate_2d(model, lucchi, neighbours=k)
    v3 = validate_3d(model, lucchi)
    alone = validate_2d(model, lucchi) if k else {}
    validation = {"foreground_iou_2d": v["foreground_iou"], "f1_50_2d": v["f1_50"],
                  "precision_50_2d": v["precision_50"], "recall_50_2d": v["recall_50"],
                  "foreground_iou_3d": v3["foreground_iou"], "f1_50_3d": v3["f1_50"],
                  "precision_50_3d": v3["precision_50"], "recall_50_3d": v3["recall_50"],
                  **{f"{key}_2d_alone": alone[key] for key in ("foreground_iou", "f1_50") if key in alone},
                  "how": "bench/accuracy_lucchi.py and bench/release_mitolite.py, default parameters, Lucchi "
                         "z135-164 (never trained on). 2D: every slice on its own; IoU pooled over the block, "
                         "F1 from TP/FP/FN pooled over slices against the 2D ground-truth objects"
                         + (f" (each slice with its {k} neighbour(s) each side; *_2d_alone: each slice as a lone "
                            "image)" if k else "") + ". 3D: the block "
                         "as an xy stack, against the 3D connected components of its mask, objects under "
                         "500 voxels (the min-size filter) ignored"}
    if rng:  # the same figures when the run knows the block's pixel size: it brings it into the range
        w2, w3 = validate_2d(model, lucchi, neighbours=k, pixel_size=5.0), validate_3d(model, lucchi, pixel_size=5.0)
        validation["at_working_pixel"] = {
            "input_pixel_nm": 5.0, "foreground_iou_2d": w2["foreground_iou"], "f1_50_2d": w2["f1_50"],
            "precision_50_2d": w2["precision_50"], "recall_50_2d": w2["recall_50"],
            "foreground_iou_3d": w3["foreground_iou"], "f1_50_3d": w3["f1_50"], "precision_50_3d": w3["precision_50"],
            "recall_50_3d": w3["recall_50"],
            "how": "the figures above when the run knows the pixel size (5 nm, from the file or --pixel-size 5), "
                   "labels on the 5 nm grid; the same block and scoring"}
    card = publish(weights, a.name, description, voxel_size_nm=5.0, training=training, validation=validation,
                   **kw)
    print(json.dumps({"card": str(card), **validation}))


if __name__ == "__main__":
    main()
