"""Turn trained weights into a model in the zoo: weights file + YAML card."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..models.card import ClassInfo, ModelCard, Weights
from ..models.load import ZOO, sha256_of


def publish(weights: str | Path, name: str, description: str, voxel_size_nm: float | None,
            validation: dict | None = None, training: dict | None = None, out_dir: str | Path = ZOO,
            label_divisor: int | None = None, class_name: str = "mitochondria") -> Path:
    """Write ``out_dir/<name>.pt`` (state dict) and ``out_dir/<name>.yaml``; returns the card path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = torch.load(weights, map_location="cpu", weights_only=True)
    arch = blob["architecture"]
    wfile = out / f"{name}.pt"
    torch.save({"architecture": arch, "state_dict": blob["state_dict"]}, wfile)
    card = ModelCard(name=name, description=description, classes=[ClassInfo(id=1, name=class_name)],
                     label_divisor=label_divisor, voxel_size_nm=voxel_size_nm, architecture=arch,
                     weights=Weights(file=wfile.name, sha256=sha256_of(wfile), format="state_dict"),
                     validation=validation or {}, training=training or {})
    path = out / f"{name}.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(card.to_yaml())
    shutil.move(tmp, path)
    return path
