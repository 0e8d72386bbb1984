"""Keep glibc's heap from growing with the number of slices processed.

glibc raises its mmap threshold each time a large block is freed, after which
slice-sized arrays (MBs) come from the main heap; the small long-lived arrays
of the linker then pin the heap's top and the process grows by about one
slice per slice. A fixed threshold sends large arrays back to mmap, so memory
stays flat over the depth of a volume. No effect outside glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3
_done = False


def fix_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Set glibc's M_MMAP_THRESHOLD once (also disables its dynamic growth)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError):
        _done = False
    return _done
