"""int8 networks for a CPU: a network's ONNX graph quantized by ONNX Runtime.

Weights are int8 per output channel and activations uint8, with ranges calibrated once per
network on :data:`CALIBRATION_PATH`, twelve 256 x 256 FIB-SEM planes (5 nm pixels) from slices
4-128 of the Lucchi training volume (none from the validation block that the bundled sample
and the held-out scores come from), each plane as a run gives it to the network: at the
model's pixel size and at the planes' own 5 nm, normalised as a run normalises (the ranges of
both scales, so that a run with or without resampling stays inside them). The quantized graph
is written beside the float32 export in panoptem's cache folder, once.

On x86 CPUs without AVX-512 VNNI, ONNX Runtime's uint8 x int8 products can saturate, so
weights there use 7 bits (``reduce_range``), as ONNX Runtime advises; a CPU with VNNI, or
an ARM CPU, uses all 8.
"""
from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import PanoptemError


@lru_cache(maxsize=1)
def reduce_range() -> bool:
    """Whether weights are quantized to 7 bits on this CPU (x86 without AVX-512 VNNI)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512_vnni" not in line.split()
    except OSError:
        pass
    return True  # unknown: the safe choice


#: the calibration planes (see the module's description), 5 nm pixels
CALIBRATION_PATH = Path(__file__).parents[1] / "data" / "int8_calibration.tif"
CALIBRATION_PIXEL_NM = 5.0


def calibration_inputs(model) -> list[np.ndarray]:
    """Network inputs (N, C, H, W) float32 to calibrate on: the calibration planes at the
    model's pixel size (when it states one) and at their own, prepared as a run prepares them."""
    import tifffile

    from ..params import Params2D
    from .engine import Predictor
    from .segment2d import pixel_plan
    planes = tifffile.imread(CALIBRATION_PATH)
    pr = Predictor(model, device="cpu", runtime="torch", precision="fp32")  # only to prepare inputs
    rng = pr.intensity(planes)
    factors = {(1.0, 1.0), tuple(pixel_plan(pr.card, Params2D(), (CALIBRATION_PIXEL_NM,) * 2, 2).factor("xy"))}
    out = []
    for f in sorted(factors):
        prep = pr.with_factor(f).prepare(planes, rng)
        out += prep.inputs()
    return out


def quantize_graph(src: Path, dst: Path, inputs: list[dict[str, np.ndarray]]) -> None:
    """Write the int8 graph of the float32 ONNX graph ``src`` to ``dst`` (atomically),
    activation ranges from running ``inputs`` (feeds of the graph, one dict per call)."""
    import tempfile

    try:
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise PanoptemError("Precision int8 needs onnxruntime and onnx: pip install 'panoptem[onnx]'; "
                            "or use --precision fp32.") from e
    from .._atomic import atomic_path

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self._it = iter(inputs)

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp, atomic_path(dst, suffix=".onnx") as out:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Feeds(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=reduce_range())
