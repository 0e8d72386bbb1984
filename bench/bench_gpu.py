"""The CUDA path end to end, checked against the CPU and timed: one JSON line per check.

Run on a machine with an NVIDIA GPU (``--device cuda``); with ``--device cpu`` the same
script runs every check on the CPU against itself (a dry run of the script). Checks, in order:

- ``machine``: GPU, driver-side CUDA version, torch, free memory;
- ``batch``: the planes per call that ``batch_size=0`` chooses from free GPU memory
  (1024 x 768 xy planes; thin ortho-planes);
- ``network``: one batch of planes through the network on the GPU in fp32, fp16 and bf16 against
  the CPU's fp32 outputs (largest absolute difference of probability, centre heatmap and
  offsets), and planes per second of each precision (median of timed calls after warm-up,
  synchronised);
- ``xy`` / ``orthoplane``: ``segment_3d`` of a volume on the GPU in each precision against
  the CPU's fp32 labels (objects, foreground IoU, F1 at IoU 0.5), wall seconds;
- ``tta``: ``segment_2d`` with flip test-time augmentation on the GPU against the CPU;
- ``large_2d``: ``segment_2d`` of a large image (automatic tiling), peak GPU memory;
- ``finetune``: a short fine-tuning run on the GPU (loss falls, held-out scores, s/step);
- ``blockwise``: the Dask block runner with one worker on the GPU (``devices``) against the
  in-memory run;
- ``bench``: ``panoptem bench`` for the xy stack and ortho-plane (end-to-end / network-only).

The volume is made of mirrored copies of the bundled EM crop (``panoptem bench --shape``).
Tolerance: a precision may be a default only if its labels match the CPU's float32 objects (F1 at
IoU 0.5 of 1.0) at foreground IoU >= 0.99. fp32 and the automatic precision (fp16 on CUDA) must meet
it, or the check fails; bf16 is reported only.

Usage: python bench/bench_gpu.py [--device cuda] [--shape 32,768,1024] [--out FILE] [--only NAME,...]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from _common import sync
from panoptem._bench import _gpu

PRECISIONS = ("fp32", "fp16", "bf16")
#: the foreground IoU against the CPU's labels that fp32 and the automatic precision must reach
MIN_IOU = 0.99
CHECKS = ("machine", "batch", "network", "xy", "orthoplane", "tta", "large_2d", "finetune", "blockwise", "bench")


def _agreement(labels: np.ndarray, ref: np.ndarray) -> dict:
    from panoptem import evaluate
    e = evaluate(labels, ref)
    return {"objects": int(e["n_pred"]), "objects_ref": int(e["n_gt"]), "foreground_iou": round(e["foreground_iou"], 5),
            "f1_50": round(e["f1_50"], 4), "identical": bool(np.array_equal(labels, ref))}


def _precisions(device: str) -> tuple[str, ...]:
    return PRECISIONS if device.startswith("cuda") else ("fp32", "bf16")


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.reset_peak_memory_stats()


def check_machine(ctx) -> dict:
    import torch
    from panoptem._bench import machine
    d = {"machine": machine(), "torch_cuda": torch.version.cuda, "cpu_count": os.cpu_count()}
    if ctx.device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()
        p = torch.cuda.get_device_properties(0)
        d.update(gpu=p.name, capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
                 free_gb=round(free / 2**30, 1), total_gb=round(total / 2**30, 1))
    return d


def check_batch(ctx) -> dict:
    from panoptem.inference.runtime import auto_batch_size
    z, y, x = ctx.volume.shape
    return {"xy_plane": [y, x], "xy_batch_for_1000": auto_batch_size((y, x), ctx.device, 1000),
            "xy_batch_for_stack": auto_batch_size((y, x), ctx.device, z),
            "thin_plane": [z, x], "thin_batch_for_1000": auto_batch_size((z, x), ctx.device, 1000)}


def check_network(ctx) -> dict:
    from panoptem.inference.engine import Predictor
    planes = ctx.volume[:8]
    cpu = Predictor(ctx.cpu_model, device="cpu", runtime="torch", precision="fp32")
    rng = cpu.intensity(ctx.volume)
    ref = cpu.predict(planes, rng)
    out = {"planes": list(planes.shape)}
    for prec in _precisions(ctx.device):
        pr = Predictor(ctx.model, device=ctx.device, runtime="torch", precision=prec)
        o = pr.predict(planes, rng)
        diff = {k: float(np.abs(getattr(o, k) - getattr(ref, k)).max())
                for k in ("semantic_probability", "heatmap", "offsets")}
        for _ in range(2):  # warm-up: kernels chosen, allocator filled
            pr.predict(planes, rng)
        sync(ctx.device)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            pr.predict(planes, rng)
            sync(ctx.device)
            times.append(time.perf_counter() - t)
        s = statistics.median(times)
        out[prec] = {"max_abs_diff": {k: round(v, 5) for k, v in diff.items()},
                     "seconds_per_call": round(s, 4), "planes_per_s": round(len(planes) / s, 1)}
    return out


def _segment_check(ctx, orthoplane: bool) -> dict:
    import panoptem
    kw = dict(orthoplane=orthoplane, median_slices=3)
    t = time.perf_counter()
    ref = panoptem.segment_3d(ctx.volume, ctx.cpu_model, device="cpu", runtime="torch", precision="fp32", **kw)
    out = {"shape": list(ctx.volume.shape), "cpu_fp32_s": round(time.perf_counter() - t, 2),
           "cpu_objects": ref.objects}
    ref_labels = np.asarray(ref.labels["mitochondria"])
    for prec in _precisions(ctx.device):
        panoptem.segment_3d(ctx.volume[:4], ctx.model, device=ctx.device, precision=prec, **kw)  # warm-up
        _reset_peak(ctx.device)
        t = time.perf_counter()
        r = panoptem.segment_3d(ctx.volume, ctx.model, device=ctx.device, precision=prec, **kw)
        s = time.perf_counter() - t
        out[prec] = {"seconds": round(s, 2), **_agreement(np.asarray(r.labels["mitochondria"]), ref_labels),
                     **_gpu(ctx.device)}
    _check_tolerance({p: out[p] for p in out if p in ("fp32", "fp16")})
    return out


def _check_tolerance(results: dict) -> None:
    """Raise if any of ``results`` (precision -> agreement with the CPU) is outside the tolerance."""
    bad = [p for p, r in results.items() if r["f1_50"] < 1.0 or r["foreground_iou"] < MIN_IOU]
    if bad:
        raise AssertionError(f"outside the tolerance (F1@0.5 1.0, foreground IoU >= {MIN_IOU}): {bad} {results}")


def check_xy(ctx) -> dict:
    return _segment_check(ctx, orthoplane=False)


def check_orthoplane(ctx) -> dict:
    return _segment_check(ctx, orthoplane=True)


def check_tta(ctx) -> dict:
    import panoptem
    img = ctx.volume[len(ctx.volume) // 2]
    ref = panoptem.segment_2d(img, ctx.cpu_model, device="cpu", runtime="torch", precision="fp32", tta=True)
    gpu32 = panoptem.segment_2d(img, ctx.model, device=ctx.device, precision="fp32", tta=True)
    gpu = panoptem.segment_2d(img, ctx.model, device=ctx.device, tta=True)
    plain = panoptem.segment_2d(img, ctx.model, device=ctx.device)
    out = {"image": list(img.shape), "fp32_vs_cpu": _agreement(gpu32, ref), "auto_vs_cpu": _agreement(gpu, ref),
           "tta_changes_labels": not np.array_equal(gpu, plain)}
    _check_tolerance({"fp32": out["fp32_vs_cpu"], "auto": out["auto_vs_cpu"]})
    return out


def check_large_2d(ctx) -> dict:
    import panoptem
    from panoptem._bench import peak_rss_mb, synthetic_volume
    n = ctx.large
    img = synthetic_volume((1, n, n))[0]
    _reset_peak(ctx.device)
    rss0 = peak_rss_mb()
    t = time.perf_counter()
    lab = panoptem.segment_2d(img, ctx.model, device=ctx.device)
    s = time.perf_counter() - t
    return {"image": [n, n], "seconds": round(s, 2), "objects": int(len(np.unique(lab)) - 1),
            **_gpu(ctx.device), "peak_rss_mb_before": rss0, "peak_rss_mb_after": peak_rss_mb()}


def check_finetune(ctx) -> dict:
    import panoptem
    from panoptem.training.dataset import store_dataset
    from panoptem.training.finetune import finetune
    from panoptem.training.patches import Patch
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PANOPTEM_HOME"] = str(Path(tmp) / "home")
        patches = []
        _, h, w = ctx.volume.shape
        for i, z in enumerate(range(0, len(ctx.volume), max(1, len(ctx.volume) // 6))):
            y0, x0 = (h - 256) * (i % 2), (w - 256) * (i % 3) // 2
            img = np.ascontiguousarray(ctx.volume[z, y0:y0 + 256, x0:x0 + 256])
            lab = panoptem.segment_2d(img, ctx.cpu_model, device="cpu").astype(np.uint32)  # the model's own labels
            patches.append(Patch(img, lab, img.shape, "xy", z, 0, 0, 256, img.shape, source="bench"))
        store_dataset(patches, Path(tmp) / "ds")
        t = time.perf_counter()
        r = finetune("MitoLite_v1", Path(tmp) / "ds", name="gpu_check", iterations=ctx.iterations, patch_size=256,
                     device=ctx.device, log=lambda s: None)
        s = time.perf_counter() - t
    losses = r["losses"]
    k = max(1, len(losses) // 5)
    return {"patches": len(patches), "iterations": len(losses), "seconds": round(s, 2),
            "first_losses_mean": round(float(np.mean(losses[:k])), 4),
            "last_losses_mean": round(float(np.mean(losses[-k:])), 4),
            "before": {k2: r["before"][k2] for k2 in ("foreground_iou", "f1_50")} if r["before"] else None,
            "after": {k2: r["after"][k2] for k2 in ("foreground_iou", "f1_50")} if r["after"] else None,
            "kept_step": r["kept_step"], "evaluated_on": r["evaluated_on"]}


def check_blockwise(ctx) -> dict:
    import panoptem
    from panoptem.distributed.segment import segment_blockwise
    vol = ctx.volume
    ref = panoptem.segment_3d(vol, ctx.model, device=ctx.device)
    devices = "all" if ctx.device.startswith("cuda") else None  # one worker per GPU
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        r = segment_blockwise(vol, ctx.model.card.name, Path(tmp) / "out.zarr", device=ctx.device, devices=devices,
                              n_workers=1, block_shape=(vol.shape[0], 512, 512))
        s = time.perf_counter() - t
        labels = np.asarray(next(iter(r.labels.values()))[:])
    return {"devices": devices, "seconds": round(s, 2), **_agreement(labels, np.asarray(ref.labels["mitochondria"]))}


def check_bench(ctx) -> dict:
    from panoptem._bench import bench
    out = {}
    for mode in ("xy", "orthoplane"):
        recs = bench(ctx.volume, device=ctx.device, orthoplane=mode == "orthoplane", repeat=ctx.repeat,
                     input_name=f"generated {','.join(map(str, ctx.volume.shape))}")
        for r in recs:
            ctx.emit({"check": "bench_line", **r})
        tot = recs[-1]
        out[mode] = {k: tot[k] for k in ("end_to_end_s", "network_only_s", "ratio", "staged_s", "objects",
                                         "same_labels_as_staged", "precision", "runtime") if k in tot}
        out[mode]["stages"] = {r["stage"]: r["seconds"] for r in recs if "seconds" in r}
    return out


class Context:
    def __init__(self, a):
        import panoptem
        from panoptem._bench import synthetic_volume
        self.device = a.device
        self.volume = synthetic_volume(tuple(int(v) for v in a.shape.split(",")))
        self.large = a.large
        self.iterations = a.iterations
        self.repeat = a.repeat
        self.model = panoptem.load_model(device=a.device)
        self.cpu_model = panoptem.load_model(device="cpu")
        self.out = Path(a.out) if a.out else None

    def emit(self, rec: dict) -> None:
        """Print ``rec`` (long lines cut: ``--out`` keeps them whole) and append it to ``--out``."""
        line = json.dumps(rec)
        print(line if len(line) <= 900 or self.out is None else line[:900] + " ...", flush=True)
        if self.out is not None:
            with open(self.out, "a") as f:
                f.write(line + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="32,768,1024", help="Z,Y,X of the generated volume")
    ap.add_argument("--large", type=int, default=8192, help="side of the large 2D image")
    ap.add_argument("--iterations", type=int, default=60, help="fine-tuning steps")
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end and network-only runs of each bench")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--only", default=",".join(CHECKS), help="checks to run, comma-separated")
    a = ap.parse_args()
    ctx = Context(a)
    failed = []
    for name in a.only.split(","):
        t = time.perf_counter()
        try:
            rec = {"check": name, "ok": True, **globals()[f"check_{name}"](ctx)}
        except Exception as e:  # every check runs and reports, whatever an earlier one did
            failed.append(name)
            rec = {"check": name, "ok": False, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()[-3000:]}
        rec["check_s"] = round(time.perf_counter() - t, 1)
        ctx.emit(rec)
    print("failed:", ",".join(failed) or "none", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
