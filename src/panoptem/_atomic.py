"""Atomic writes: a temporary file beside the target, renamed over it only
when complete, so a crash never leaves a half-written output; and one
writer per output at a time, which removes what killed writers left."""
from __future__ import annotations

import glob
import os
import shutil
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


# ---- one writer per output, and what dead writers left --------------------------------

_held: dict[str, list] = {}  # lock path -> [fd, depth]: re-entrant within this process


def leftovers(target: str | Path) -> list[Path]:
    """Temporary files and folders a run writing ``target`` leaves when it is
    killed: ``.NAME.<id>.part`` (output being written), ``.NAME.<id>.old``
    (a replaced output being removed) and ``.NAME.work`` (a 3D run's work folder)."""
    t = Path(target)
    d, n = t.parent, t.name
    if not d.is_dir():
        return []
    n = glob.escape(n)
    return sorted([*d.glob(f".{n}.*.part"), *d.glob(f".{n}.*.old"), *d.glob(f".{n}.work")])


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


@contextmanager
def exclusive_output(target: str | Path) -> Iterator[None]:
    """Hold ``target``'s lock (``.NAME.lock`` beside it) while writing it, and
    remove what killed runs left behind for it (see :func:`leftovers`).

    A second process writing the same target gets a :class:`PanoptemError`
    instead of mixing its files with the first's; within one process the lock
    is re-entrant. Without ``fcntl`` (Windows) nothing is locked or removed.
    """
    from .errors import PanoptemError
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    t = Path(target).expanduser().absolute()
    lock = t.parent / f".{t.name}.lock"
    key = str(lock)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    t.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise PanoptemError(f"Another panoptem run is writing {t}; wait for it to finish or choose another "
                                "output path.") from None
        try:  # the lock file may have been removed by a run that just finished: lock the current one
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _held[key] = [fd, 1]
    try:
        for p in leftovers(t):
            _remove(p)
        yield
    finally:
        del _held[key]
        try:
            os.unlink(lock)
        finally:
            os.close(fd)
