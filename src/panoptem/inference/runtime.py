"""How the network runs: the runtime (PyTorch or ONNX Runtime), the precision, the
number of threads, and the batch size.

``runtime="auto"`` takes ONNX Runtime on a CPU for panoptem's own networks when
``onnxruntime`` is installed (the network alone in 10.5 CPU seconds against PyTorch's 19.2
on a 30 x 768 x 1024 block on a 2-core CPU, outputs equal to float32 rounding: see
docs/speed.md),
else PyTorch. Each ONNX graph of a network (:data:`GRAPHS`: the plain one, and for tiles of
larger planes the context and encode graphs) is exported once, on first use, and kept in
panoptem's cache folder, named by the weights file's sha256: later runs on a CPU then need no
PyTorch at all (neither imported nor the network built), which saves seconds at the start of
every process.
``precision="auto"`` is float32 on a CPU and float16 autocast on a CUDA GPU;
``bf16`` autocasts to bfloat16 (worth it only on CPUs with bfloat16 instructions); ``int8``
runs a quantized copy of the ONNX graph on a CPU (see :mod:`.quantize`).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from ..errors import PanoptemError

RUNTIMES = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
OPSET = 17
#: pixels per network call on a CPU (thin ortho-planes are batched up to this). More buys no
#: speed there and costs memory: 4 M pixels per call against 1 M took the same time (a
#: 128 x 512 x 512 stack 6.07-6.42 against 6.15-6.40 s; ortho-plane on the Lucchi block 12.97-13.25
#: against 13.19-13.36 s) at 1 160 against 740 MB and 1 330 against 1 055 MB of peak memory
CPU_BATCH_PIXELS = 1024 * 1024
#: upper bound of planes per network call
MAX_BATCH = 256
#: bytes of GPU memory per input pixel assumed when the batch size is chosen from free memory
GPU_BYTES_PER_PIXEL = 1024


#: PyTorch's intra-op threads while a GPU runs the network (unless ``threads`` is given): the
#: host only copies there, and idle OpenMP workers spinning on every core took the cores that
#: decoding and linking need (docs/speed.md, On a GPU)
GPU_HOST_THREADS = 1


#: this process's share of the cores when it is one of several (a blockwise worker)
_thread_budget: list[int | None] = [None]


def cpu_count() -> int:
    """Cores this process may use: its CPU affinity, capped by :func:`limit_threads`."""
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        n = max(1, os.cpu_count() or 1)
    return min(n, _thread_budget[0] or n)


def limit_threads(n: int) -> None:
    """Cap every thread pool of this process at ``n``: the network's (ONNX Runtime and PyTorch,
    whether PyTorch is imported already or later) and panoptem's own. For a process that shares
    the machine with others, as each local blockwise worker does: without it each would start
    one thread per core."""
    n = max(1, int(n))
    _thread_budget[0] = n
    import sys
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:  # read by PyTorch when it is imported
        os.environ["OMP_NUM_THREADS"] = str(n)


#: the most intra-op threads asked for (more than any machine's cores; the runtimes take an int32)
MAX_THREADS = 4096


def network_threads(threads: int | None) -> int:
    """Intra-op threads of the network: ``threads`` when given, else every core. Decoding
    runs beside the network in a thread of its own and takes about a tenth of the CPU
    time; the network at one thread fewer lost more than it gave (``panoptem bench``)."""
    if threads is not None:
        if isinstance(threads, bool) or int(threads) != threads or not 1 <= threads <= MAX_THREADS:
            raise PanoptemError(f"Threads must be a whole number from 1 to {MAX_THREADS}, not {threads!r}.")
        return int(threads)
    return cpu_count()


def host_threads(runtime: str, device: str, threads: int | None) -> int | None:
    """PyTorch's intra-op threads for a run (see :func:`torch_threads`): ``threads`` (None:
    every core) when PyTorch runs the network on the CPU; on a GPU ``threads``, else
    :data:`GPU_HOST_THREADS`; None (unchanged) when ONNX Runtime runs it."""
    if runtime != "torch":
        return None
    if device == "cpu":
        return network_threads(threads)
    return network_threads(threads) if threads is not None else GPU_HOST_THREADS


@contextmanager
def torch_threads(n: int | None):
    """PyTorch's intra-op threads set to ``n`` (None: unchanged) inside the block, restored after."""
    if n is None:
        yield
        return
    import torch
    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    v = str(value).strip().lower()
    if v not in choices:
        raise PanoptemError(f"{what} must be one of {', '.join(choices)}, not '{value}'.")
    return v


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> fp16 on CUDA, fp32 elsewhere; fp16 needs a CUDA device, int8 a CPU."""
    p = check_choice("Precision", precision, PRECISIONS)
    if p == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if p == "fp16" and not device.startswith("cuda"):
        raise PanoptemError("Precision fp16 needs a CUDA GPU; use fp32 or bf16 on this device.")
    if p == "int8" and device != "cpu":
        raise PanoptemError(f"Precision int8 runs on a CPU only (ONNX Runtime); on {device} use auto, fp32 or "
                            "bf16, or run with --device cpu.")
    return p


def resolve_runtime(runtime: str, model, device: str, precision: str) -> str:
    """``auto`` -> onnx for panoptem's own networks on a CPU in float32 or int8 when onnxruntime
    is installed, else torch. ``onnx`` is refused where it cannot run, and int8 anywhere but
    ONNX Runtime. ``model``: a :class:`~panoptem.models.load.LoadedModel` or a PyTorch module."""
    from ..models.load import LoadedModel
    r = check_choice("Runtime", runtime, RUNTIMES)
    if isinstance(model, LoadedModel):
        ours = model.own_network
    else:
        from ..models.architecture import PanopticNet
        ours = isinstance(model, PanopticNet)
    if precision == "int8":
        if r == "torch":
            raise PanoptemError("Precision int8 runs with ONNX Runtime only; use --runtime auto or onnx, or "
                                "--precision fp32 with --runtime torch.")
        if not onnx_available():
            raise PanoptemError("Precision int8 needs onnxruntime: pip install 'panoptem[onnx]'; or use "
                                "--precision fp32.")
        if not ours:
            raise PanoptemError("Precision int8 runs panoptem's own networks only; use --precision fp32 for "
                                "this model.")
        return "onnx"
    if r == "auto":
        return "onnx" if device == "cpu" and precision == "fp32" and ours and onnx_available() else "torch"
    if r == "onnx":
        if not onnx_available():
            raise PanoptemError("Runtime onnx needs onnxruntime: pip install 'panoptem[onnx]'; or use --runtime torch.")
        if device != "cpu" or precision != "fp32":
            raise PanoptemError("Runtime onnx runs on the CPU in fp32 or int8 only; use --runtime torch for other "
                                "devices or precisions.")
        if not ours:
            raise PanoptemError("Runtime onnx runs panoptem's own networks only; use --runtime torch for this model.")
    return r


def autocast(device: str, precision: str):
    """The autocast context of a forward pass in ``precision`` on ``device``."""
    if precision not in ("fp16", "bf16"):
        return nullcontext()
    import torch
    dev = "cuda" if device.startswith("cuda") else "cpu"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return torch.autocast(device_type=dev, dtype=dtype)


def auto_batch_size(plane_shape: tuple[int, int], device: str, n: int, steps: int = 10) -> int:
    """Planes per network call for ``n`` planes: on a CPU, enough planes to hold
    :data:`CPU_BATCH_PIXELS` (one plane of 1024², many thin ortho-planes: per-call costs
    dominate small planes); on CUDA, as many as half of the free GPU memory holds at
    :data:`GPU_BYTES_PER_PIXEL`. For a stack (``steps`` 10): at least 4, and at most a tenth
    of the stack beyond that, so progress is reported (and a cancel honoured) about ten times
    per stack; ``steps=1`` for planes a caller has already cut into such parts."""
    px = max(1, int(plane_shape[0]) * int(plane_shape[1]))
    if device.startswith("cuda"):
        import torch
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        b = int(free * 0.5 // (GPU_BYTES_PER_PIXEL * px))
    else:
        b = CPU_BATCH_PIXELS // px
    b = min(b, max(4, n // max(1, int(steps))), MAX_BATCH)
    return int(max(1, min(b, max(n, 1))))


# ---------------------------------------------------------------- ONNX Runtime

_sessions: dict[tuple[str, int, str, str], object] = {}
_lock = threading.Lock()
#: version of what the cached ONNX graph computes (raise it when that changes)
GRAPH_VERSION = 2


def _network_key(model) -> str:
    """The name of a network's ONNX export: a digest of panoptem's version, the graph's
    version, the card's architecture and the weights file's sha256, for a model loaded
    from a file (known without building the network); else of the module's architecture
    and weights."""
    from .. import __version__
    from ..models.load import LoadedModel
    head = f"{__version__}|{GRAPH_VERSION}|{OPSET}"
    if isinstance(model, LoadedModel) and model.weights_sha256:
        arch = json.dumps(model.card.architecture, sort_keys=True)
        text = f"{head}|{arch}|{model.card.weights.format}|{model.weights_sha256}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]
    module = model.module if isinstance(model, LoadedModel) else model
    h = hashlib.sha256(f"{head}|{getattr(module, 'config', '')}".encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


#: the graphs a network is exported as: ``plain`` (image -> outputs), ``context`` (image and
#: each plane's global context -> outputs, for tiles of larger planes), ``tissue`` (image and
#: each deepest cell's weight in the plane's own context -> outputs, for planes that hold
#: padding) and ``encode`` (image -> the deepest features, whose mean over a plane is its global
#: context)
GRAPHS = ("plain", "context", "tissue", "encode")


def _onnx_path(key: str, graph: str = "plain", precision: str = "fp32") -> Path:
    """The cached graph's file: in panoptem's cache folder, unless that folder cannot be written
    (a shared read-only PANOPTEM_HOME) and lacks the file: then in a folder of this process's own."""
    from ..models.home import cache_dir
    name = key if graph == "plain" else f"{key}.{graph}"
    if precision == "int8":
        from .quantize import reduce_range
        name += ".int8r" if reduce_range() else ".int8"
    path = cache_dir("onnx") / f"{name}.onnx"
    return path if path.exists() or _writable(path.parent) else _scratch_cache() / path.name


def _writable(folder: Path) -> bool:
    """Whether ``folder`` can be written, or made where it is missing (nothing is made here)."""
    there = next((q for q in (folder, *folder.parents) if q.exists()), None)
    return there is not None and there.is_dir() and os.access(there, os.W_OK | os.X_OK)


_scratch: list[Path] = []


def _scratch_cache() -> Path:
    """A temporary folder for this process's ONNX exports, removed when it exits."""
    if not _scratch:
        import atexit
        import shutil
        import tempfile
        _scratch.append(Path(tempfile.mkdtemp(prefix="panoptem-onnx-")))
        atexit.register(shutil.rmtree, _scratch[0], True)
    return _scratch[0]


def onnx_cached(model) -> bool:
    """Whether the ONNX export of ``model`` (a loaded model with its weights' sha256) is cached."""
    return bool(getattr(model, "weights_sha256", None)) and _onnx_path(_network_key(model)).exists()


def _export(module, path: Path, graph: str = "plain") -> None:
    """Export ``module`` to ONNX at ``path``, atomically, as one of :data:`GRAPHS`: the plain,
    context and tissue graphs take (N, C_in, H, W) (and the context, (N, C), or the cells'
    weights, (N, 1, h, w)) and give the semantic logits at (H, W), the centre heatmap and the
    offsets; the encode graph gives the features."""
    import copy

    import torch
    import torch.nn.functional as F

    from .._atomic import atomic_path
    from ..models.card import OUTPUTS

    class Graph(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, extra=None):
            if graph == "encode":
                return self.net.encode(x)
            if graph == "context":
                out = self.net(x, context=extra[:, :, None, None])
            else:
                out = self.net(x) if extra is None else self.net(x, tissue=extra)
            logits = out["sem_logits"]
            if logits.shape[-2:] != x.shape[-2:]:
                logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return logits, out["ctr_hmp"], out["offsets"]

    net = Graph(copy.deepcopy(module).cpu().float().to(memory_format=torch.contiguous_format)).eval()
    x = torch.zeros(1, getattr(module, "config", {}).get("in_channels", 1), 64, 64)
    args, inputs = (x,), ["image"]
    axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    if graph == "encode":
        outputs = ["features"]
        axes["features"] = {0: "batch", 2: "features_h", 3: "features_w"}
    else:
        outputs = list(OUTPUTS)
        axes.update({k: {0: "batch", 2: f"{k}_h", 3: f"{k}_w"} for k in OUTPUTS})
    if graph == "context":
        with torch.no_grad():
            args, inputs = (x, net.net.encode(x).mean(dim=(2, 3))), ["image", "context"]
        axes["context"] = {0: "batch"}
    if graph == "tissue":
        args, inputs = (x, _tissue_ones(x.shape)), ["image", "tissue"]
        axes["tissue"] = {0: "batch", 2: "cells_h", 3: "cells_w"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, str(tmp), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)


def _tissue_ones(shape):
    """Every deepest cell of an input of ``shape`` weighing the same (the tissue graph's example
    and calibration input)."""
    import torch

    from .predict import CELL
    return torch.ones(shape[0], 1, -(-shape[2] // CELL), -(-shape[3] // CELL))


class OnnxNet:
    """Runs an ONNX Runtime session on a prepared numpy batch: ``net(x)`` (``net(x, context)``
    for the context graph, ``net(x, tissue=weights)`` for the tissue graph) -> dict of numpy
    arrays (semantic logits at the input's size, heatmap, offsets); ``net.features(x)`` for the
    encode graph."""

    def __init__(self, session, graph: str = "plain"):
        self.session = session
        self.graph = graph

    def __call__(self, x: np.ndarray, context=None, tissue=None) -> dict:
        from ..models.card import OUTPUTS
        feed = {"image": np.ascontiguousarray(x, np.float32)}
        for name, value in (("context", context), ("tissue", tissue)):
            if (value is not None) != (self.graph == name):
                raise PanoptemError(f"This ONNX graph ({self.graph}) takes {'a' if self.graph == name else 'no'} "
                                    f"{'global context' if name == 'context' else 'weights of its cells'}.")
        if context is not None:
            feed["context"] = np.ascontiguousarray(context, np.float32).reshape(len(x), -1)
        if tissue is not None:
            feed["tissue"] = np.ascontiguousarray(tissue, np.float32)
        return dict(zip(OUTPUTS, self.session.run(list(OUTPUTS), feed)))

    def release_memory(self) -> None:
        """Hand back the memory ONNX Runtime keeps for this graph's largest activations (its
        arena grows to the largest call and stays so): one call on a small input that shrinks
        the arena after it. About 0.2 GB after the 2048-pixel tiles of a large image."""
        import onnxruntime as ort
        inputs = self.session.get_inputs()
        channels = inputs[0].shape[1]
        x = np.zeros((1, channels if isinstance(channels, int) else 1, 64, 64), np.float32)
        feed = {"image": x}
        if self.graph == "context":
            feed["context"] = np.zeros((1, inputs[1].shape[1]), np.float32)
        elif self.graph == "tissue":
            feed["tissue"] = _tissue_ones(x.shape).numpy()
        ro = ort.RunOptions()
        ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.session.run(None, feed, ro)

    def features(self, x: np.ndarray) -> np.ndarray:
        """The deepest features (N, C, h, w) of a prepared batch (the encode graph)."""
        return self.session.run(["features"], {"image": np.ascontiguousarray(x, np.float32)})[0]


def _quantize(model, key: str, graph: str, threads: int) -> None:
    """Write the int8 graph of ``graph`` (see :mod:`.quantize`), calibrated with the float32
    graphs (whose encode graph gives the context graph its planes' global context)."""
    from .quantize import calibration_inputs, quantize_graph
    xs = calibration_inputs(model)
    if graph == "context":
        enc = _session(model, key, threads, "encode", "fp32")
        feeds = [{"image": x, "context": enc.run(["features"], {"image": x})[0].mean(axis=(2, 3))} for x in xs]
    elif graph == "tissue":
        feeds = [{"image": x, "tissue": _tissue_ones(x.shape).numpy()} for x in xs]
    else:
        feeds = [{"image": x} for x in xs]
    src = _onnx_path(key, graph)
    if not src.exists():  # the float32 export comes first
        _make(model, key, graph, "fp32", threads)
    quantize_graph(src, _onnx_path(key, graph, "int8"), feeds)


def _make(model, key: str, graph: str, precision: str, threads: int) -> None:
    """Write the cached file of ``graph`` in ``precision``: the ONNX export (fp32), or its
    quantized copy (int8)."""
    if precision == "int8":
        _quantize(model, key, graph, threads)
        return
    from ..models.load import LoadedModel
    _export(model.module if isinstance(model, LoadedModel) else model, _onnx_path(key, graph), graph)


def onnx_net(model, threads: int, graph: str = "plain", precision: str = "fp32") -> OnnxNet:
    """An :class:`OnnxNet` of ``model`` (a loaded model or a PyTorch module) as ``graph`` (one
    of :data:`GRAPHS`) with ``threads`` intra-op threads, in ``precision`` fp32 or int8; the
    export (and its int8 copy) is cached on disk (panoptem's cache folder) and the session in
    this process."""
    with _lock:
        return OnnxNet(_session(model, _network_key(model), threads, graph, precision), graph)


def _session(model, key: str, threads: int, graph: str, precision: str):
    """The ONNX Runtime session of a graph in a precision, exported (and quantized) on first
    use (under ``_lock``)."""
    import onnxruntime as ort
    sess = _sessions.get((key, threads, graph, precision))
    if sess is not None:
        return sess
    path = _onnx_path(key, graph, precision)
    if not path.exists():
        _make(model, key, graph, precision, threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # idle threads sleep instead of spinning: the decoding thread beside needs the core
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - a damaged cache file: make it again
        path.unlink(missing_ok=True)
        _make(model, key, graph, precision, threads)
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    _sessions[(key, threads, graph, precision)] = sess
    while len(_sessions) > MAX_SESSIONS:  # a process serving many runs (a Dask worker) lets old networks go
        _sessions.pop(next(iter(_sessions)))
    return sess


#: ONNX Runtime sessions a process keeps (graphs x precisions of a few networks)
MAX_SESSIONS = 8
