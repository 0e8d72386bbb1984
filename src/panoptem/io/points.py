"""Points files: centres for patches, as napari exports them or as plain CSV."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import PanoptemError


def read_points(path: str | Path, ndim: int) -> np.ndarray:
    """Points from a CSV file: napari's export (``index,axis-0,axis-1,...``),
    columns named ``z,y,x`` / ``y,x``, or bare numbers; the last ``ndim`` coordinates are kept."""
    p = Path(path)
    if not p.is_file():
        raise PanoptemError(f"Points file {p} does not exist; check the path.")
    with open(p, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        return np.zeros((0, ndim))
    header = None
    try:
        [float(c) for c in rows[0]]
    except ValueError:
        header, rows = [c.strip().lower() for c in rows[0]], rows[1:]
    try:
        a = np.array([[float(c) for c in r] for r in rows], np.float64).reshape(len(rows), -1)
    except ValueError:
        raise PanoptemError(f"Points file {p} holds non-numeric values below its header; write one point "
                            "per line (z,y,x or y,x).") from None
    cols = list(range(a.shape[1]))
    if header:
        axes = [i for i, h in enumerate(header) if h.startswith("axis-")]
        named = [header.index(k) for k in "zyx"[-ndim:] if k in header]
        cols = axes or (named if len(named) == ndim else [i for i, h in enumerate(header) if h != "index"])
    if len(cols) < ndim:
        raise PanoptemError(f"Points file {p} has {len(cols)} coordinate column(s); {ndim} are needed.")
    return a[:, cols[-ndim:]]
