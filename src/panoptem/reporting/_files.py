"""Output paths of pictures and reports: never over an input, never over a file unless asked."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .._atomic import check_output, write_bytes
from ..errors import PanoptemError

__all__ = ["check_target", "write_bytes"]


def check_target(path, suffixes: tuple[str, ...], overwrite: bool, inputs: Iterable = (),
                 outputs: Iterable = ()) -> Path:
    """Absolute output path after the suffix, input- and output-protection and overwrite checks."""
    p = Path(path).expanduser()
    if p.suffix.lower() not in suffixes:
        raise PanoptemError(f"Cannot write '{p.name}': give a file name ending in {' or '.join(suffixes)}.")
    out = check_output(p, overwrite, inputs, outputs)
    there = next((q for q in out.parents if q.exists()), None)  # the folder it is made in, or the nearest
    if there is not None and there.is_dir() and not os.access(there, os.W_OK | os.X_OK):
        raise PanoptemError(f"No permission to write '{out.name}' into '{there}'; choose a folder you can write to.")
    return out
