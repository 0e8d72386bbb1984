"""Safe outputs: never over an input or an existing file unless asked; atomic
writes (a temporary file beside the target, renamed over it only when
complete, so a crash never leaves a half-written output); and one writer per
output at a time, which removes what killed writers left."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import PanoptemError


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


#: the longest output name: the files kept beside an output while it is written
#: (``.NAME.<id>.part``, ``.NAME.panoptem-slices``...) must fit the file systems' 255 bytes
MAX_NAME_BYTES = 200


def check_output(path: str | Path, overwrite: bool = False, inputs: Iterable = (), outputs: Iterable = ()) -> Path:
    """Absolute output path after two checks: it is not (and does not hold, and
    is not inside) any of ``inputs`` or the run's other ``outputs``, and it does not exist
    unless ``overwrite``. Creates the parent folder."""
    p = Path(path).expanduser().absolute()
    target = p.resolve()
    for role, paths in (("input", inputs), ("output", outputs)):
        for inp in paths or ():
            if inp is None or str(inp) == "":
                continue
            q = Path(inp).expanduser().resolve()
            if _overlap(target, q) or (p.exists() and q.exists() and os.path.samefile(p, q)):
                raise PanoptemError(f"Refusing to write '{p}': it is (or holds, or is inside) the {role} '{inp}'; "
                                    "choose another output path.")
    if len(p.name.encode()) > MAX_NAME_BYTES:
        raise PanoptemError(f"The output name '{p.name[:40]}...' is {len(p.name.encode())} bytes long; panoptem "
                            "keeps files named after it beside it while writing, which must fit the file "
                            f"system's 255: shorten it to {MAX_NAME_BYTES} bytes or fewer.")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise PanoptemError(f"'{p}' already exists; choose another output path or pass overwrite=True "
                            "(--overwrite) to replace it.")
    if p.exists() or p.is_symlink():
        _check_replaceable(p)
    work_folder(p.parent, f"'{p.name}'")
    return p


def _check_replaceable(p: Path) -> None:
    """One error, before any work, where ``p`` lies in a folder with the sticky bit (a shared
    folder such as /tmp or a facility's scratch) and belongs to another user: only its owner, the
    folder's owner or root may replace it there, and the run would fail at its very end."""
    import stat
    try:
        folder, own = p.parent.stat(), p.lstat()
    except OSError:
        return
    me = os.geteuid()
    if folder.st_mode & stat.S_ISVTX and me not in (0, own.st_uid, folder.st_uid):
        raise PanoptemError(f"'{p}' belongs to another user in the shared folder '{p.parent}' (sticky bit): "
                            "only they can replace it; choose another output path.")


def check_outside_inputs(folder: str | Path, inputs: Iterable, what: str) -> None:
    """One error when ``folder`` (where a command writes ``what``) is an input or lies inside one
    (a Zarr store, a folder of images): inputs are never written to."""
    f = Path(folder).expanduser().resolve()
    for inp in inputs or ():
        if inp is None or str(inp) == "":
            continue
        q = Path(inp).expanduser().resolve()
        if f == q or q in f.parents:
            raise PanoptemError(f"'{folder}' is or lies inside the input '{inp}'; write {what} to a folder "
                                "outside it (inputs are never written to).")


def existing_folder(path: str | Path, what: str) -> Path:
    """``path`` where it is a folder; else one error saying it does not exist or is a file."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise PanoptemError(f"'{p}' is a file, not a folder; choose a folder for {what}." if p.exists() else
                            f"The folder '{p}' does not exist; create it, or choose another for {what}.")
    return p


def work_folder(path: str | Path, what: str, create: bool = True) -> Path:
    """``path`` as a folder to work in (created where missing, unless ``create`` is False); one
    clear error where it, or a folder it would be made in, is a file."""
    p = Path(path).expanduser()
    there = next((q for q in (p, *p.parents) if q.exists()), None)  # the nearest that exists
    if there is not None and not there.is_dir():
        raise PanoptemError(f"'{p}' is (or lies in) a file, not a folder; give a folder for {what} "
                            "(it is created where missing).")
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


@contextmanager
def atomic_path(target: str | Path, suffix: str = "", replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it becomes
    ``target`` (permissions as the umask gives, :func:`shared_mode`), on any exception it is
    deleted. ``replace=False``: a file that
    appeared at ``target`` meanwhile (another run's) is kept, and this one is refused.

    >>> with atomic_path("out.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> Path("out.txt").read_text()
    'done'
    """
    target = Path(target)
    # .NAME.<id>.part (then ``suffix``): a leftover the next run writing target finds
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{suffix}", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, shared_mode())  # mkstemp makes 0600; outputs are shared as the umask says
        if replace:
            move_into_place(tmp, target)  # a folder in the way (replaced with --overwrite) too
        else:
            _place_new(Path(tmp), target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _place_new(tmp: Path, target: Path) -> None:
    """Give the finished file ``tmp`` the name ``target`` unless something has it: a hard link
    fails where a name exists, so a run that checked before its work cannot replace what another
    run wrote meanwhile (where the file system has no hard links, the check is made again)."""
    try:
        os.link(tmp, target)
        return
    except FileExistsError:
        pass
    except OSError:  # no hard links here
        if not (target.exists() or target.is_symlink()):
            os.replace(tmp, target)
            return
    raise PanoptemError(f"'{target}' appeared while this run was writing it (another run's?); it is kept: "
                        "choose another output path.")


_umask_lock = threading.Lock()


def shared_mode(folder: bool = False) -> int:
    """The permissions a new file (``folder``: folder) gets under this process's umask, for what
    panoptem makes with a mode of its own (temporary files are made private): group members of a
    shared folder (umask 002) can then read, replace and resume what another made."""
    mask = None
    try:  # read where it can be, without changing it (other threads may be creating files)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                mask = int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    if mask is None:
        with _umask_lock:
            mask = os.umask(0o022)
            os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def write_text(path: str | Path, text: str, suffix: str = "", replace: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (creating its folder); returns the path
    (``replace``: see :func:`atomic_path`)."""
    return write_bytes(path, text.encode("utf-8"), suffix, replace)


def write_bytes(path: str | Path, data: bytes, suffix: str = "", replace: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (creating its folder); returns the path
    (``replace``: see :func:`atomic_path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=suffix, replace=replace) as tmp:
        tmp.write_bytes(data)
    return path


def move_into_place(tmp: str | Path, target: str | Path, aside: str | Path | None = None) -> None:
    """Rename a finished file or folder ``tmp`` to ``target``, replacing what is there.

    A folder in the way is first renamed aside (to ``aside``, or
    ``.NAME.<id>.old`` beside the target, which :func:`leftovers` finds) and
    deleted once the new one is in place, so ``target`` is always complete.
    """
    tmp, target = Path(tmp), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
    elif target.is_dir() and not target.is_symlink():
        old = Path(aside) if aside is not None else target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if tmp.is_dir():
            target.unlink()
        os.replace(tmp, target)


# ---- one writer per output, and what dead writers left --------------------------------

_held: dict[tuple, list] = {}  # (thread, lock path) -> [fd, depth]: re-entrant within a thread; another
# thread of the process (a napari dock's worker) is refused as another process is


def leftovers(target: str | Path) -> list[Path]:
    """Temporary files and folders a run writing ``target`` leaves when it is
    killed: ``.NAME.<id>.part`` (output being written; :func:`atomic_path`'s with a suffix
    after it), ``.NAME.<id>.old`` (a replaced output or a work folder being removed) and
    ``.NAME.work`` (a 3D run's work folder). Nothing else beside the output: a user's own
    ``.NAME.backup`` stays."""
    t = Path(target)
    d, n = t.parent, t.name
    if not d.is_dir():
        return []
    # the <id> of 8 characters that writers give them: not the files of another output whose name
    # begins with this one's (mito.tif.v2.tif beside mito.tif)
    mine = re.compile(rf"\.{re.escape(n)}\.(?:[A-Za-z0-9_]{{8}}\.(?:part(?:\.[A-Za-z0-9]{{1,8}})?|old)|work)")
    return sorted(p for p in d.iterdir() if mine.fullmatch(p.name))


#: the folders beside an output in which each engine keeps what an interrupted run resumes from:
#: a whole-volume 3D run's network outputs, a blockwise run's work, a 2D stack's slices
RESUME_STATE = {"3d": ".panoptem-cache", "blockwise": ".blockwise", "2d": ".panoptem-slices"}
#: a file in such a folder that a finished run kept on purpose (--keep-cache): it stays
KEPT = "kept"


def drop_resume_state(target: str | Path, keep: str) -> None:
    """After a run of engine ``keep`` (a key of :data:`RESUME_STATE`) wrote ``target``, remove what
    killed runs of the other engines left beside it to resume from: that output is made now.
    A folder a finished run kept on purpose (holding :data:`KEPT`) stays."""
    t = Path(target).expanduser().absolute()
    for engine, suffix in RESUME_STATE.items():
        folder = t.parent / f".{t.name}{suffix}"
        if engine != keep and not (folder / KEPT).exists():
            discard(folder, t) if folder.is_dir() and not folder.is_symlink() else _remove(folder)


def _remove(p: Path) -> None:
    """Remove a leftover (found again by its name if this is cut short)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def discard(folder: str | Path, target: str | Path | None = None) -> None:
    """Remove a work or resume folder, renamed first (to ``.NAME.<id>.old`` of the output
    ``target`` it lies beside, which :func:`leftovers` finds; else of its own name): a run killed
    while removing it leaves nothing under its name that a later run would resume from."""
    p = Path(folder)
    if not p.is_dir() or p.is_symlink():
        return
    t = Path(target) if target is not None else None
    name = t.name if t is not None and t.parent.absolute() == p.parent.absolute() else p.name.lstrip(".")
    old = p.parent / f".{name}.{uuid.uuid4().hex[:8]}.old"
    try:
        os.replace(p, old)
    except OSError:  # not renamable (permissions): removed in place
        old = p
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def waiting_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created), or on the folder ``path`` itself
    (no file left in it), waiting for another process holding it: for a short read-modify-write
    of a shared file or folder. No-op without ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    if Path(path).is_dir():
        fd = os.open(path, os.O_RDONLY)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # read-only opens lock as well, and a file made writable for all as the umask allows: a lock
        # another user of a shared home made does not keep this one out
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def exclusive_output(target: str | Path) -> Iterator[None]:
    """Hold ``target``'s lock (``.NAME.lock`` beside it) while writing it, and
    remove what killed runs left behind for it (see :func:`leftovers`).

    A second process writing the same target gets a :class:`PanoptemError`
    instead of mixing its files with the first's; the lock is re-entrant within a thread
    (another thread of the process is refused, as another process is).
    Without ``fcntl`` (Windows) nothing is locked or removed.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    t = Path(target).expanduser().absolute()
    # one lock for every path to the target (a linked parent, a link to a folder); a link to a file
    # is replaced by the output, not written through, so it is its own target
    real = t.resolve() if t.is_dir() else t.parent.resolve() / t.name
    lock = real.parent / f".{real.name}.lock"
    key = (threading.get_ident(), str(lock))
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    t.parent.mkdir(parents=True, exist_ok=True)
    while True:
        # read-only opens lock too: a lock a killed run of another user left does not keep this one out
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o666)
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
        for p in leftovers(t) + (leftovers(real) if real != t else []):
            _remove(p)
        yield
    finally:
        del _held[key]
        try:
            os.unlink(lock)
        except PermissionError:  # another user's, left by a killed run in a sticky folder: it stays, harmless
            pass
        finally:
            os.close(fd)


#: the lock file :func:`held_folder` keeps in a folder while it is in use
FOLDER_LOCK = ".in-use.lock"


@contextmanager
def held_folder(folder: str | Path) -> Iterator[None]:
    """Lock the folder ``folder`` while in use (its :data:`FOLDER_LOCK`, locked before it takes that
    name, so it is never seen unlocked while held), so that :func:`remove_abandoned` tells it
    from one a killed process left. No-op without ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd, tmp = tempfile.mkstemp(prefix=f"{FOLDER_LOCK}.", dir=folder)
    os.fchmod(fd, shared_mode())  # others sharing the home can tell a held folder from an abandoned one
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a file system without locks: the folder is not published as held
            pass
        else:
            os.replace(tmp, Path(folder) / FOLDER_LOCK)
        yield
    finally:
        Path(tmp).unlink(missing_ok=True)
        os.close(fd)


def remove_abandoned(parent: str | Path) -> None:
    """Remove the folders in ``parent`` left by processes that died holding them (see
    :func:`held_folder`): those whose lock no live process holds. Folders without the lock (being
    made, or not :func:`held_folder`'s) stay. No-op without ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    for d in Path(parent).iterdir():
        if d.is_symlink() or not d.is_dir():
            continue
        try:
            fd = os.open(d / FOLDER_LOCK, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: in use
            os.close(fd)
            continue
        try:
            shutil.rmtree(d, ignore_errors=True)
        finally:
            os.close(fd)
