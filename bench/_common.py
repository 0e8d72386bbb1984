"""Shared helpers of the benchmark scripts: JSON lines, peak memory, timers."""
from __future__ import annotations

import json
import platform
import resource
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LUCCHI = SHARED / "data" / "lucchi"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def machine() -> str:
    import os
    import torch
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpu, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads"


def emit(**rec) -> None:
    """Print one JSON result line."""
    rec.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    print(json.dumps(rec), flush=True)


class Timer:
    def __enter__(self):
        self.t = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.s = time.perf_counter() - self.t
