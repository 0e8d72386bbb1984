"""Where one network call's time goes on a GPU, for the plane shapes of a stack: one JSON line
per plane shape and way of running the network.

For xy planes and the thin xz / yz planes of a generated volume, at the batch sizes that
``batch_size=0`` chooses for them, it times the network's forward pass (CUDA events, median of
timed calls after warm-up) and how long the host takes to launch it, in several ways:

- ``fp16`` / ``fp32``: autocast to float16 or none; channels-last input and the folded network's
  weights channels-last too (panoptem's default);
- ``fp16_nchw``: a plain (N, C, H, W) input instead of channels-last;
- ``fp16_nchw_weights``: the folded weights left in plain order (cuDNN converts them on every
  call; panoptem's GPU default until 2026-12-04, the ``fp16`` of the runs before);
- ``fp16_unfolded``: the network as trained, batch norms not folded into the convolutions;
- ``fp16_graph``: the forward pass captured once as a CUDA graph and replayed (CUDA only);
- ``fp16_up_nchw``: the decoder's bilinear upsampling done on plain (N, C, H, W) tensors (its
  channels-last kernel took 70 % of a thin-plane forward's GPU time before the weights were
  channels-last; ``fp16_cl_weights_up_nchw`` in earlier runs);
- ``fp16_autotune``: cuDNN's autotuner on (``torch.backends.cudnn.benchmark``), which times
  the algorithms of each new shape and keeps the fastest;
- ``predict``: panoptem's whole network call (input to the GPU, forward, outputs back), wall time.

Then ``steps``: the same call taken apart, each step synchronised and timed on the host (medians):
input to the GPU, forward, the semantic logits brought to the input's size (as they come, and
as a plain (N, C, H, W) tensor), sigmoid, and each output back to the host.

With ``--profile`` the kernels of one thin-plane call are listed by GPU time (PyTorch's profiler).
``--device cpu`` runs the same on the CPU (host clocks; no CUDA graph), to try the script
without a GPU.

Usage: python bench/bench_gpu_forward.py [--device cuda] [--shape 32,768,1024] [--out FILE]
       [--profile FILE] [--repeat 7]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np

from _common import emit_to, sync


def _events_ms(fn, device: str, repeat: int = 7, warm: int = 3) -> tuple[float, float]:
    """(device ms, host ms to return from the call) medians of ``fn()``; on a CPU both are the
    host's clock."""
    import torch
    for _ in range(warm):
        fn()
    sync(device)
    gpu, host = [], []
    for _ in range(repeat):
        if not device.startswith("cuda"):
            t = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t) * 1e3)
            gpu.append(host[-1])
            continue
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t = time.perf_counter()
        fn()
        host.append((time.perf_counter() - t) * 1e3)
        b.record()
        torch.cuda.synchronize()
        gpu.append(a.elapsed_time(b))
    return statistics.median(gpu), statistics.median(host)


def _graphed(module, x, dtype):
    """A function that replays a CUDA graph of ``module(x)`` (under autocast to ``dtype``)."""
    import torch
    static = x.clone(memory_format=torch.preserve_format)
    ctx = (lambda: torch.autocast("cuda", dtype=dtype, cache_enabled=False)) if dtype else torch.no_grad
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), ctx():
        module(static)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), ctx():
        module(static)

    def replay():
        static.copy_(x)
        g.replay()
    return replay


class _UpsampleNCHW:
    """Calls a PanopticNet with its bilinear upsampling run on plain (N, C, H, W) tensors."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        from panoptem.models import architecture

        class Shim:
            def __getattr__(self, name):
                return getattr(F, name)

            @staticmethod
            def interpolate(t, **kw):
                return F.interpolate(t.contiguous(), **kw).contiguous(memory_format=torch.channels_last)

        real = architecture.F
        architecture.F = Shim()
        try:
            return self.net(x)
        finally:
            architecture.F = real


def _steps(net, xin: np.ndarray, device: str, repeat: int = 5) -> dict:
    """Host milliseconds (median) of each step of one network call, synchronised after each."""
    import torch
    import torch.nn.functional as F

    from panoptem.inference.predict import _on_device
    times: dict[str, list[float]] = {}

    def step(name, fn):
        sync(device)
        t = time.perf_counter()
        r = fn()
        sync(device)
        times.setdefault(name, []).append((time.perf_counter() - t) * 1e3)
        return r

    size = xin.shape[-2:]
    for i in range(repeat + 2):
        xt = step("to_gpu", lambda: _on_device(xin, device))
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.float16):
            out = step("forward", lambda: net(xt))
        with torch.inference_mode():
            lg = step("logits_float", lambda: out["sem_logits"].float())
            up = step("upsample", lambda: F.interpolate(lg, size=size, mode="bilinear", align_corners=False))
            step("upsample_nchw", lambda: F.interpolate(lg.contiguous(), size=size, mode="bilinear",
                                                        align_corners=False))
            prob = step("sigmoid", lambda: torch.sigmoid(up))
            step("prob_to_host", lambda: prob.cpu().numpy())
            step("prob_to_host_nchw", lambda: prob.contiguous().cpu().numpy())
            step("heatmap_to_host", lambda: out["ctr_hmp"].float().cpu().numpy())
            step("offsets_to_host", lambda: out["offsets"].float().cpu().numpy())
        if i == 1:
            times = {}  # the first two rounds warm up
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="32,768,1024", help="Z,Y,X of the generated volume")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--profile", default=None, help="write the thin-plane kernel table here")
    ap.add_argument("--repeat", type=int, default=7, help="timed calls per variant (after as many warm-up "
                    "calls, at most 3)")
    a = ap.parse_args()
    import torch

    import panoptem
    from panoptem._bench import machine, synthetic_volume
    from panoptem.inference.engine import Predictor
    from panoptem.inference.predict import network_input
    from panoptem.inference.runtime import auto_batch_size

    vol = synthetic_volume(tuple(int(v) for v in a.shape.split(",")))
    dev, cuda = a.device, a.device.startswith("cuda")
    lm = panoptem.load_model(device=dev)
    pr = Predictor(lm, device=dev, runtime="torch")  # auto: fp16 on CUDA
    auto = Predictor(lm, device=dev, runtime="torch", batch_size=0)
    rng = pr.intensity(vol)
    n = pr.card.normalization
    z, y, x = vol.shape
    shapes = {"xy": (vol, (y, x), z), "xz": (vol.transpose(1, 0, 2), (z, x), y),
              "yz": (vol.transpose(2, 0, 1), (z, y), x)}
    folded, trained = lm.inference_module, lm.module
    base = {"what": "bench/bench_gpu_forward.py", "date": time.strftime("%Y-%m-%d"), "input": f"generated {a.shape}",
            "machine": machine()}

    def emit(rec):
        emit_to({**base, **rec}, a.out)

    prepared = {}
    for name, (planes, plane_shape, count) in shapes.items():
        b = auto_batch_size(plane_shape, dev, count)
        batch = np.ascontiguousarray(planes[:b])
        xin, h, w, _ = network_input(batch, rng, 1, pr.card.padding_factor, (n.mean, n.std))
        prepared[name] = (batch, xin, b)
    plain_weights = copy.deepcopy(folded).to(memory_format=torch.contiguous_format)
    variants = ["fp16", "fp32", "fp16_nchw", "fp16_nchw_weights", "fp16_unfolded", "fp16_up_nchw", "predict"]
    if cuda:
        variants[5:5] = ["fp16_graph"]
        variants.append("fp16_autotune")
    for variant in variants:
        torch.backends.cudnn.benchmark = variant == "fp16_autotune"
        for name, (batch, xin, b) in prepared.items():
            try:
                xt = torch.from_numpy(xin).to(dev)
                if variant != "fp16_nchw":
                    xt = xt.contiguous(memory_format=torch.channels_last)
                net = {"fp16_unfolded": trained, "fp16_nchw_weights": plain_weights,
                       "fp16_up_nchw": _UpsampleNCHW(folded)}.get(variant, folded)
                dtype = None if variant == "fp32" else torch.float16
                if variant == "predict":
                    def fn():
                        auto.predict(batch, rng)
                elif variant == "fp16_graph":
                    with torch.inference_mode():
                        fn = _graphed(net, xt, dtype)
                else:
                    def fn(net=net, xt=xt, dtype=dtype):
                        with torch.inference_mode(), torch.autocast(dev.split(":")[0], dtype=dtype or torch.float16,
                                                                    enabled=dtype is not None):
                            net(xt)
                with torch.inference_mode():
                    gpu_ms, host_ms = _events_ms(fn, dev, a.repeat, min(3, a.repeat))
                emit({"plane": name, "variant": variant, "batch": b, "input": list(xin.shape),
                      "gpu_ms": round(gpu_ms, 2), "host_ms": round(host_ms, 2),
                      "planes_per_s": round(b / (gpu_ms / 1e3), 1)})
            except Exception as e:  # noqa: BLE001 - every variant reports
                emit({"plane": name, "variant": variant, "error": f"{type(e).__name__}: {e}"})
    torch.backends.cudnn.benchmark = False
    for name, (batch, xin, b) in prepared.items():
        emit({"plane": name, "variant": "steps", "batch": b, "ms": _steps(folded, xin, dev, min(5, a.repeat))})
    if a.profile:
        from torch.profiler import ProfilerActivity, profile
        batch = prepared["xz"][0]
        for _ in range(2):
            auto.predict(batch, rng)
        sync(dev)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            auto.predict(batch, rng)
            sync(dev)
        with open(a.profile, "w") as f:
            for key in ("cpu_time_total", "cuda_time_total") if cuda else ("cpu_time_total",):
                f.write(f"one xz network call, by {key}\n")
                f.write(prof.key_averages().table(sort_by=key, row_limit=25) + "\n\n")


if __name__ == "__main__":
    main()
