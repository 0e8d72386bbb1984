"""Output paths of pictures and reports: never over an input, never over a file unless asked."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .._atomic import atomic_path
from ..errors import PanoptemError


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_target(path, suffixes: tuple[str, ...], overwrite: bool, inputs: Iterable = ()) -> Path:
    """Absolute output path after the suffix, input-protection and overwrite checks."""
    p = Path(path).expanduser().absolute()
    if p.suffix.lower() not in suffixes:
        raise PanoptemError(f"Cannot write '{p.name}': give a file name ending in {' or '.join(suffixes)}.")
    target = p.resolve()
    for inp in inputs or ():
        if inp is None or str(inp) == "":
            continue
        q = Path(inp).expanduser().resolve()
        if _overlap(target, q) or (p.exists() and q.exists() and os.path.samefile(p, q)):
            raise PanoptemError(f"Refusing to write '{p}': it is (or is inside) the input '{inp}'; "
                                "choose another output path.")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise PanoptemError(f"'{p}' already exists; choose another output path or pass overwrite=True "
                            "(--overwrite) to replace it.")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` atomically (temporary file, then rename)."""
    with atomic_path(path, suffix=".tmp") as tmp:
        tmp.write_bytes(data)
    return path
