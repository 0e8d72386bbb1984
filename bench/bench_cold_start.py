"""Cold start: `panoptem segment3d IN -o OUT` in a fresh process against the same command
run again inside one warm process, and `segment_3d` in memory; with ``--image2d``, also
`panoptem segment2d IMAGE -o OUT` in a fresh process (the start of a run matters most there).
``--fresh-only`` times the fresh processes alone: run it with PYTHONPATH set to each of two
checkouts, in turn, to compare their start. ``--stages`` times, in one warm process and one
stage after another, `segment_3d` in memory and `segment_3d` streaming to an output file with the
resumable cache (what the command runs): the difference per stage is what the command's own
output and cache cost.

Prints one JSON line per measurement. Usage:
    python bench/bench_cold_start.py VOLUME.tif [--image2d IMAGE.tif] [--repeat 3] [--fresh-only] [--orthoplane]
        [--stages] [--pixel-size NM] [--label NAME]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, machine

from panoptem._bench import load


def fresh(volume: str, out: Path, command: str = "segment3d", extra: tuple = ()) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "panoptem", command, volume, "-o", str(out), *extra], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("volume")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--image2d", help="a 2D image: also time segment2d on it in a fresh process")
    ap.add_argument("--fresh-only", action="store_true", help="time the fresh processes only")
    ap.add_argument("--label", default="", help="a name for the code measured (e.g. a commit)")
    ap.add_argument("--orthoplane", action="store_true", help="segment3d with --orthoplane (fresh processes only)")
    ap.add_argument("--stages", action="store_true", help="only: in memory against streamed to a file with the "
                    "cache, stage by stage, in one warm process")
    ap.add_argument("--pixel-size", type=float, default=None,
                    help="the volume's pixel size in nm, given to every run (resampled to the model's range)")
    a = ap.parse_args()
    px = ("--pixel-size", str(a.pixel_size)) if a.pixel_size else ()
    from panoptem.io import read_image
    # what the command takes from the file (--pixel-size over its in-plane size), so that every run
    # does the same work
    voxel = read_image(a.volume).voxel_size
    if a.pixel_size:
        voxel = (voxel[0], a.pixel_size, a.pixel_size) if voxel else (a.pixel_size,) * 3
    if a.stages:
        return stages(a, voxel)
    from typer.testing import CliRunner
    import tifffile
    import panoptem
    from panoptem.cli import app
    with tempfile.TemporaryDirectory() as tmp:
        extra = ("--orthoplane",) * a.orthoplane + px
        cold = [fresh(a.volume, Path(tmp) / f"fresh{i}.tif", extra=extra) for i in range(a.repeat)]
        emit(what="fresh process CLI" + (", ortho-plane" if a.orthoplane else ""), code=a.label, pixel_size_nm=a.pixel_size,
             seconds=round(statistics.median(cold), 2), runs_s=[round(v, 2) for v in cold], load=load(),
             machine=machine())
        if a.image2d:
            cold = [fresh(a.image2d, Path(tmp) / f"fresh2d{i}.tif", "segment2d") for i in range(a.repeat)]
            emit(what="fresh process CLI, segment2d", code=a.label, seconds=round(statistics.median(cold), 2),
                 runs_s=[round(v, 2) for v in cold], load=load())
        if a.fresh_only or a.orthoplane:
            return 0
        runner, warm = CliRunner(), []
        for i in range(a.repeat + 1):  # the first call warms the process up
            t = time.perf_counter()
            r = runner.invoke(app, ["segment3d", a.volume, "-o", str(Path(tmp) / f"warm{i}.tif"), *px])
            warm.append(time.perf_counter() - t)
            if r.exit_code != 0:
                raise SystemExit(r.output)
        emit(what="same command in a warm process", seconds=round(statistics.median(warm[1:]), 2),
             runs_s=[round(v, 2) for v in warm[1:]], first_call_s=round(warm[0], 2), load=load())
        vol = tifffile.imread(a.volume)
        model = panoptem.load_model()
        mem = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            panoptem.segment_3d(vol, model, voxel_size=voxel)
            mem.append(time.perf_counter() - t)
        emit(what="segment_3d in memory (warm)", seconds=round(statistics.median(mem), 2),
             runs_s=[round(v, 2) for v in mem], load=load())
        loads = [model_load(a.volume) for _ in range(a.repeat)]
        loaded = statistics.median(loads)
        emit(what="model load and first call, fresh process (after its imports)", seconds=round(loaded, 2),
             runs_s=[round(v, 2) for v in loads], load=load())
        emit(what="fresh CLI / (in memory + model load)", code=a.label, pixel_size_nm=a.pixel_size,
             ratio=round(statistics.median(cold) / (statistics.median(mem) + loaded), 3), machine=machine())
        # the same command (reading and writing files) in both; the warm process keeps its network
        # session, so the model load is added: what a new process costs beyond the command's own work
        emit(what="fresh CLI / (same command in a warm process + model load)", code=a.label,
             pixel_size_nm=a.pixel_size, ratio=round(statistics.median(cold) / (statistics.median(warm[1:]) + loaded), 3),
             machine=machine())
    return 0


_LOAD = """
import sys, time, tifffile, panoptem
from panoptem.inference.engine import Predictor
vol = tifffile.imread(sys.argv[1])
t = time.perf_counter()
pr = Predictor(panoptem.load_model(), runtime="auto")
pr.predict(vol[:1])
first = time.perf_counter() - t
t = time.perf_counter()
pr.predict(vol[1:2])
print(first - (time.perf_counter() - t))
"""


def model_load(volume: str) -> float:
    """Seconds a fresh process takes, after its imports, to load the default model and make its
    first call on one plane of ``volume`` (sessions, allocator, thread pools), less what a
    second call costs (the plane's own work, which a run does anyway)."""
    r = subprocess.run([sys.executable, "-c", _LOAD, volume], check=True, capture_output=True, text=True)
    return float(r.stdout.split()[-1])


def stages(a, voxel=None) -> int:
    """In memory, then streamed to a TIFF with the resumable cache (as the command runs it), each
    one stage after another in this warm process; one line per run with the seconds per stage."""
    import tifffile
    import panoptem
    vol = tifffile.imread(a.volume)
    model = panoptem.load_model()
    panoptem.segment_3d(vol[:4], model, voxel_size=voxel)  # warm up
    keep = ("read", "normalise", "forward", "quantise", "median", "decode", "link", "relabel")
    for _ in range(a.repeat):
        for how in ("in memory", "streamed to a TIFF, with the cache"):
            with tempfile.TemporaryDirectory() as tmp:
                kw = {} if how == "in memory" else {"output": Path(tmp) / "labels.tif"}
                t, c = time.perf_counter(), time.process_time()
                res = panoptem.segment_3d(vol, model, overlap=False, voxel_size=voxel, **kw)
                wall, cpu = time.perf_counter() - t, time.process_time() - c
            emit(what=f"segment_3d one stage after another, {how}", code=a.label, seconds=round(wall, 2),
                 cpu_seconds=round(cpu, 2), stages_s={k: round(res.timings.get(f"{k}_s", 0.0), 2) for k in keep},
                 load=load(), machine=machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
