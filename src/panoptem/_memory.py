"""Keep glibc's heap from growing with the number of slices processed, cheaply.

glibc raises its mmap threshold each time a large block is freed, after which
arrays of any size come from the main heap; the small long-lived arrays of the
linker then pin the heap's top and the process grows by about one slice per
slice. A fixed threshold of 64 MB sends volume-sized arrays to mmap (returned
to the system when freed) while slice-sized temporaries are reused from the
heap without faulting in fresh pages each time; :func:`release_free`, called
after every batch, hands the heap's free pages back, so memory stays about flat
over the depth of a volume. No effect outside glibc.

Also: a check that refuses work larger than the machine's memory before allocating it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_MMAP_THRESHOLD = -3
_done = False
_libc = None


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return _libc


def fix_mmap_threshold(nbytes: int = 64 << 20) -> bool:
    """Set glibc's M_MMAP_THRESHOLD once (also disables its dynamic growth)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        _done = bool(_c().mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError):
        _done = False
    return _done


def release_free() -> None:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``)."""
    if sys.platform.startswith("linux"):
        try:
            _c().malloc_trim(0)
        except (OSError, AttributeError):
            pass


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


def human_bytes(nbytes: int) -> str:
    """``nbytes`` in GiB, or in MiB below 1 GiB."""
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
