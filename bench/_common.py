"""Shared helpers of the benchmark scripts: data location, JSON lines, peak memory, timers."""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

#: the files of the Lucchi et al. (IEEE TMI 2012) EPFL hippocampus data the benchmarks read
LUCCHI_FILES = ("training_image.tif", "training_instances2d.tif", "training_mask.tif")


def add_lucchi_argument(ap: argparse.ArgumentParser, required: bool = True) -> None:
    """``--lucchi DIR``: the folder holding :data:`LUCCHI_FILES` (the training volume, 165 x 768
    x 1024 at 5 nm, its 2D instance labels and its mitochondria mask)."""
    ap.add_argument("--lucchi", type=Path, default=None, required=required, metavar="DIR",
                    help="folder with the Lucchi training volume: " + ", ".join(LUCCHI_FILES))


def comparison_arguments(doc: str, z: str, repeat: int | None = 3) -> argparse.ArgumentParser:
    """The arguments of a script meant to compare two checkouts: ``--lucchi DIR``, ``--z A:B``
    (slices of the training volume, default ``z``), ``--repeat N`` (unless ``repeat`` is None)
    and ``--label NAME``; the parser, to add more."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lucchi_argument(ap)
    ap.add_argument("--z", default=z, help=f"slices of the training volume (default: {z})")
    if repeat is not None:
        ap.add_argument("--repeat", type=int, default=repeat)
    ap.add_argument("--label", default="", help="a name for the code measured (e.g. a commit)")
    return ap


def parse_slab(a: argparse.Namespace) -> tuple[int, int]:
    """``--z A:B`` as (A, B)."""
    z0, z1 = (int(v) for v in a.z.split(":"))
    return z0, z1


def read_lucchi(folder: Path, block: str):
    """Slices ``block`` ("A:B") of the Lucchi training volume in ``folder`` (checked, see
    :func:`lucchi_dir`): (image, mitochondria mask as bool, 2D instance labels)."""
    import tifffile
    d = lucchi_dir(folder)
    zs = range(*(int(v) for v in block.split(":")))
    return (tifffile.imread(d / "training_image.tif", key=zs), tifffile.imread(d / "training_mask.tif", key=zs) > 0,
            tifffile.imread(d / "training_instances2d.tif", key=zs))


def lucchi_dir(folder: Path) -> Path:
    """``folder`` after checking that it holds the Lucchi files (exits with a message if not)."""
    missing = [f for f in LUCCHI_FILES if not (Path(folder) / f).is_file()]
    if missing:
        sys.exit(f"--lucchi {folder}: missing {', '.join(missing)}")
    return Path(folder)


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


def emit_to(rec: dict, out: str | Path | None = None) -> None:
    """Print one JSON result line and, with ``out``, append it to that file too."""
    line = json.dumps(rec)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def sync(device: str) -> None:
    """Wait for the GPU's queued work (on a CPU, nothing): before reading a host clock."""
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


class Timer:
    def __enter__(self):
        self.t = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.s = time.perf_counter() - self.t


def lucchi_mosaic(folder: Path, n: int):
    """An n x n uint8 image tiled from ten Lucchi slices (z 140-149, in two rows of five)."""
    import numpy as np
    import tifffile
    img = tifffile.imread(lucchi_dir(folder) / "training_image.tif", key=range(140, 150))
    mosaic = np.concatenate([np.concatenate(list(img[:5]), 1), np.concatenate(list(img[5:]), 1)], 0)
    return np.tile(mosaic, (-(-n // mosaic.shape[0]), -(-n // mosaic.shape[1])))[:n, :n].copy()
