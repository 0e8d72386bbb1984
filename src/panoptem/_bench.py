"""``panoptem bench``: where the time of a 3D run goes, and how close it comes to the network alone.

Three measurements on the same volume, model and parameters:

1. a *staged* run, one stage after another (``overlap=False``), timed per stage in wall
   and CPU seconds: ``read``, ``normalise``, ``network`` (forward pass, sigmoid, crop),
   ``quantise`` (outputs to cache precision), ``median``, ``decode``, ``link`` (overlaps
   with the previous slice), ``link_solve`` (the link graph and the size filters),
   ``relabel``, and for ortho-plane ``consensus``; then ``postprocess``, ``split`` and
   ``write`` where they run, and ``other`` (the intensity range, setting up, Python in between);
2. the *network alone* over the same planes (normalise + forward, every core);
3. the *end-to-end* run as users get it (overlapped pipeline, default settings).

Each result is one dict (a JSON line for the command line); every one carries the
machine's load average, since on a busy machine wall and CPU seconds both mislead.
"""
from __future__ import annotations

import os
import resource
import statistics
import sys
import time

import numpy as np

from .models.home import DEFAULT_MODEL

STAGES = ("read", "normalise", "forward", "quantise", "median", "decode", "link", "link_solve", "relabel",
          "consensus", "postprocess", "split", "write")
#: the names stages get in the output (the forward pass is the network)
SHOWN = {"forward": "network"}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def load() -> list[float]:
    """The machine's load average over 1, 5 and 15 minutes."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    """What the figures were measured on."""
    import platform
    import torch
    from .inference.runtime import cpu_count, onnx_available
    d = {"cpu": platform.processor() or platform.machine(), "cores": cpu_count(), "torch": torch.__version__,
         "onnxruntime": onnx_available()}
    if torch.cuda.is_available():
        d["gpu"] = torch.cuda.get_device_name(0)
    return d


def synthetic_volume(shape: tuple[int, int, int]) -> np.ndarray:
    """A volume of ``shape`` made of mirrored copies of the bundled EM crop (real tissue)."""
    from .sample import load_sample
    s = load_sample()
    reps = [-(-n // m) for n, m in zip(shape, s.shape)]
    tiles = s
    for ax, r in enumerate(reps):
        parts = [tiles if i % 2 == 0 else np.flip(tiles, ax) for i in range(r)]
        tiles = np.concatenate(parts, axis=ax)
    return np.ascontiguousarray(tiles[: shape[0], : shape[1], : shape[2]])


def _gpu(device: str) -> dict:
    import torch
    if not device.startswith("cuda"):
        return {}
    return {"gpu_peak_mb": round(torch.cuda.max_memory_allocated(torch.device(device)) / 2**20, 1)}


def bench(volume, model: str = DEFAULT_MODEL, *, plane: str = "xy", orthoplane: bool = False, repeat: int = 1,
          device: str = "auto", runtime: str = "auto", precision: str = "auto", threads: int | None = None,
          batch_size: int = 0, input_name: str = "", voxel_size=None, **params) -> list[dict]:
    """Benchmark a 3D run of ``volume`` (see the module's description); returns the result
    dicts: one per stage of the staged run, then ``network_only``, ``end_to_end`` and ``total``.
    ``voxel_size`` (nm, ZYX; None: unknown) and ``params`` as for the run: the network alone is
    given the planes the run gives it (resampled to the model's pixel size, with neighbours)."""
    import torch
    from .inference.engine import Predictor
    from .inference.runtime import cpu_count, host_threads, network_threads, torch_threads
    from .inference.segment2d import pixel_plan
    from .inference.segment3d import PlaneReader, segment_3d
    from .models.load import load_model
    from .params import PLANE_AXIS, PLANES, Params3D
    vol = np.asarray(volume)
    voxels = vol.size * (3 if orthoplane else 1)
    planes = PLANES if orthoplane else (plane,)
    common = {"input": input_name, "shape": list(vol.shape), "mode": "orthoplane" if orthoplane else plane}
    t = time.perf_counter()
    lm = load_model(model, device)
    model_load_s = time.perf_counter() - t
    kw = dict(device=lm.device, runtime=runtime, precision=precision, batch_size=batch_size,
              orthoplane=orthoplane, inference_plane=plane, voxel_size=voxel_size, **params)
    plan = pixel_plan(lm.card, Params3D(orthoplane=orthoplane, inference_plane=plane, **params), voxel_size, 3)
    if lm.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    # warm-up: the ONNX export (first time only), sessions, allocator, thread pools
    t = time.perf_counter()
    tta = bool(params.get("tta", False))  # the network alone runs as the run runs it: its flips too
    pr = Predictor(lm, device=lm.device, runtime=runtime, precision=precision, threads=threads, tta=tta)
    pr.threads = network_threads(threads)
    pr.predict(vol[:2])
    warmup_s = time.perf_counter() - t
    out: list[dict] = []

    # 1. staged
    t0, c0 = time.perf_counter(), time.process_time()
    staged = segment_3d(vol, lm, overlap=False, threads=threads or cpu_count(), **kw)
    staged_s, staged_cpu = time.perf_counter() - t0, time.process_time() - c0
    tm = staged.timings
    predictor = Predictor(lm, device=lm.device, runtime=runtime, precision=precision,
                          threads=threads or cpu_count(), batch_size=batch_size, tta=tta)
    timed = {st: (tm[f"{st}_s"], tm.get(f"{st}_cpu_s", 0.0)) for st in STAGES if f"{st}_s" in tm}
    # the rest: intensity range, setting up the stacks, Python between the stages
    timed["other"] = (max(staged_s - sum(v[0] for v in timed.values()), 0.0),
                      max(staged_cpu - sum(v[1] for v in timed.values()), 0.0))
    for st, (s, cpu) in timed.items():
        out.append({"stage": SHOWN.get(st, st), **common, "seconds": round(s, 3), "cpu_seconds": round(cpu, 3),
                    "voxels_per_s": round(voxels / s) if s > 0 else None,
                    "share": round(s / staged_s, 4), "peak_rss_mb": round(peak_rss_mb(), 1),
                    "load": load(), **_gpu(lm.device)})

    # 2. network alone and 3. end to end, interleaved
    nets, e2e, e2e_cpu, net_cpu, loads = [], [], [], [], []
    res = None
    for _ in range(max(1, int(repeat))):
        loads.append(load())
        t, c = time.perf_counter(), time.process_time()
        rng = predictor.intensity(vol)
        with torch_threads(host_threads(predictor.runtime, lm.device, threads)):  # as the run sets them
            for pl in planes:  # read as the run reads them (neighbours, the means of a reduced stack)
                net = predictor.with_factor(plan.factor(pl), plan.neighbour_step(pl), plan.stack_step(pl))
                ax = PLANE_AXIS[pl]
                planes_at = PlaneReader(vol, ax, vol.shape[ax], lm.card.context_slices, net.neighbour_step,
                                        net.stack_step)
                n = planes_at.count
                b = net.batch_for([s for i, s in enumerate(vol.shape) if i != ax], n)
                for i in range(0, n, b):
                    net.predict(planes_at(i, min(i + b, n)), rng)
        nets.append(time.perf_counter() - t)
        net_cpu.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        res = segment_3d(vol, lm, threads=threads, **kw)
        e2e.append(time.perf_counter() - t)
        e2e_cpu.append(time.process_time() - c)
    net_s, e2e_s = statistics.median(nets), statistics.median(e2e)
    same = all(np.array_equal(np.asarray(res.labels[k]), np.asarray(staged.labels[k])) for k in res.labels)
    out.append({"stage": "network_only", **common, "seconds": round(net_s, 3),
                "cpu_seconds": round(statistics.median(net_cpu), 3), "voxels_per_s": round(voxels / net_s),
                "runs_s": [round(v, 3) for v in nets], "threads": threads or cpu_count(),
                "peak_rss_mb": round(peak_rss_mb(), 1), "load": load(), **_gpu(lm.device)})
    out.append({"stage": "end_to_end", **common, "seconds": round(e2e_s, 3),
                "cpu_seconds": round(statistics.median(e2e_cpu), 3), "voxels_per_s": round(voxels / e2e_s),
                "runs_s": [round(v, 3) for v in e2e], "threads": network_threads(threads),
                "peak_rss_mb": round(peak_rss_mb(), 1), "load": load(), **_gpu(lm.device)})
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out.append({"stage": "total", **common, "end_to_end_s": round(e2e_s, 4), "network_only_s": round(net_s, 4),
                "ratio": round(e2e_s / net_s, 3), "staged_s": round(staged_s, 3),
                "staged_cpu_s": round(staged_cpu, 3), "model_load_s": round(model_load_s, 3),
                "warmup_s": round(warmup_s, 3), "objects": res.objects, "same_labels_as_staged": bool(same),
                "pixel_size": plan.record(planes),
                "model": lm.card.name, "device": lm.device, "runtime": predictor.runtime,
                "precision": predictor.precision, "repeat": len(e2e), "minor_page_faults": ru.ru_minflt,
                "peak_rss_mb": round(peak_rss_mb(), 1), "load": load(), "load_before_runs": loads,
                "machine": machine(), **_gpu(lm.device)})
    return out
