"""Keep glibc's heap from growing with the number of slices processed, cheaply.

glibc raises its mmap threshold each time a large block is freed, after which
arrays of any size come from the main heap; the small long-lived arrays of the
linker then pin the heap's top and the process grows by about one slice per
slice. A fixed threshold of 64 MB sends volume-sized arrays to mmap (returned
to the system when freed) while slice-sized temporaries are reused from the
heap without faulting in fresh pages each time (the trim threshold is raised to match, or
glibc hands the heap's free top back after every temporary of a few MB and the next one
faults it in again); :func:`release_free`, called
after every batch, hands the heap's free pages back once the process has grown
by :data:`TRIM_AFTER_GROWTH` since it last did, so memory stays about flat over
the depth of a volume. No effect outside glibc.

Threads share at most two malloc arenas (:func:`limit_arenas`). Also: numpy's huge-page
advice turned off where the kernel would stall to compact memory for it
(:func:`avoid_hugepage_stalls`), and a check that refuses work larger than the machine's
memory before allocating it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_done = False
_libc = None


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return _libc


def fix_mmap_threshold(nbytes: int = 64 << 20) -> bool:
    """Set glibc's M_MMAP_THRESHOLD once (also disables its dynamic growth), and its
    M_TRIM_THRESHOLD to :data:`TRIM_AFTER_GROWTH`: free heap memory is then handed back by
    :func:`release_free` between batches, not after each temporary (a first touch of a page
    costs 1-7 us on a virtual machine; relabelling a 165 x 768 x 1024 stack in chunks faulted
    in 120 thousand pages with glibc's own 128 kB threshold, 2 with this one)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        _done = bool(_c().mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
        _c().mallopt(_M_TRIM_THRESHOLD, int(TRIM_AFTER_GROWTH))
    except (OSError, AttributeError):
        _done = False
    return _done


def limit_arenas(n: int = 2) -> bool:
    """Let glibc's malloc use at most ``n`` arenas (M_ARENA_MAX) from now on, unless the
    environment's ``MALLOC_ARENA_MAX`` decides; returns whether it set the cap. By default
    each thread that allocates gets an arena, up to 8 per core, and memory freed in one stays
    there: a blockwise Dask worker (its task thread, zarr's and the relabelling's threads) kept
    about 240 MB of free heap after 144 blocks that no trim handed back (548 MB resident
    against 395 with 2 arenas, 348 with 1), and above its memory limit's pause mark a worker
    stops taking tasks; a streamed 256-slice run peaked 22 MB lower with 2 (42 MB with the
    variable set at its start), as fast. No effect outside glibc."""
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        return bool(_c().mallopt(_M_ARENA_MAX, int(n)))
    except (OSError, AttributeError):
        return False


#: :func:`release_free` trims once the process's resident memory has grown by this much since
#: the last trim (or its lowest point since). Trimming after every batch made the next batch
#: fault every page of its temporaries in again: on a 128-slice slab, 131-231 thousand page
#: faults against 48 thousand without trimming, and decoding and the median 20-50 % slower.
TRIM_AFTER_GROWTH = 256 << 20
_low = [None]  # resident bytes after the last trim, or lower since


def resident_bytes() -> int | None:
    """This process's resident memory (Linux), else None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def release_free(force: bool = False) -> bool:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``) when the process
    has grown by :data:`TRIM_AFTER_GROWTH` since the last time (always with ``force``, or where
    resident memory cannot be read). Returns whether it trimmed."""
    if not sys.platform.startswith("linux"):
        return False
    rss = resident_bytes()
    if rss is not None and _low[0] is not None:
        _low[0] = min(_low[0], rss)
        if not force and rss - _low[0] < TRIM_AFTER_GROWTH:
            return False
    try:
        _c().malloc_trim(0)
    except (OSError, AttributeError):
        return False
    _low[0] = resident_bytes()
    return True


THP = "/sys/kernel/mm/transparent_hugepage"


def _selected(text: str) -> str:
    """The bracketed choice of a sysfs setting: ``"always [madvise] never"`` -> ``"madvise"``."""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else text.strip()


def hugepage_advice_stalls(enabled: str, defrag: str) -> bool:
    """Whether a first touch of memory advised for huge pages may stall while the kernel
    compacts memory (transparent huge pages on, and compacted directly for advised memory)."""
    return _selected(enabled) != "never" and _selected(defrag) in ("always", "madvise", "defer+madvise")


def avoid_hugepage_stalls() -> bool:
    """Turn numpy's huge-page advice for large arrays off where it makes first touches stall
    (:func:`hugepage_advice_stalls`), unless ``NUMPY_MADVISE_HUGEPAGE`` says otherwise. On a
    machine with THP ``madvise``/``madvise``, the linking stage of a 120-slice stack made one
    stage after another took 1.02-1.23 s with the advice and 0.48-0.53 s without, relabelling
    0.75-0.80 against 0.32-0.33 s (the provisional ids' pages touched for the first time). Returns
    whether it turned the advice off."""
    if not sys.platform.startswith("linux") or "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return False
    try:
        with open(f"{THP}/enabled") as f, open(f"{THP}/defrag") as g:
            stalls = hugepage_advice_stalls(f.read(), g.read())
    except OSError:
        return False
    if not stalls:
        return False
    import numpy as np
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if setter is None:
        return False
    setter(False)
    return True


def physical_memory() -> int | None:
    """Bytes of RAM on this machine, or None where the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(nbytes: int, what: str, hint: str) -> None:
    """Refuse, before allocating, work whose smallest memory need exceeds this machine's RAM.

    ``nbytes`` is a lower bound of what the work holds at once; ``hint`` says what to do instead."""
    from .errors import PanoptemError
    total = physical_memory()
    if total is not None and nbytes > total:
        raise PanoptemError(f"{what} needs at least {human_bytes(nbytes)} of memory, more than this machine "
                            f"has ({human_bytes(total)}); {hint}")


def array_bytes(*arrays) -> int:
    """Bytes the arrays (numpy or lazy: anything with a shape; None skipped) take in memory."""
    import numpy as np
    return sum(int(np.prod(np.shape(a))) * np.dtype(getattr(a, "dtype", np.int64)).itemsize
               for a in arrays if a is not None)


def human_bytes(nbytes: int) -> str:
    """``nbytes`` in GiB, or in MiB below 1 GiB."""
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
