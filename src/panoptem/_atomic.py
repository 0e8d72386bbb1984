"""Atomic writes: a temporary file beside the target, renamed over it only
when complete, so a crash never leaves a half-written output."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it becomes
    ``target`` (mode 0644), on any exception it is deleted.

    >>> with atomic_path("out.txt") as tmp:   # doctest: +SKIP
    ...     tmp.write_text("done")
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
