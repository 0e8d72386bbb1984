"""The PyTorch network with its batch norms folded into the convolutions (what inference runs)
against the network as trained, on xy planes of the Lucchi volume, in rounds that take turns:
seconds and CPU seconds of the network alone (4 planes per call), the largest output difference,
and whether ``segment_3d`` gives the same labels with either. ``--onnx`` adds ONNX Runtime's
session of the same network to the rounds (CPU). Prints one JSON line.

Usage: python bench/bench_folded.py --lucchi DIR [--z 135:165] [--repeat 3] [--device cpu] [--onnx]
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from _common import comparison_arguments, emit, lucchi_dir, machine, parse_slab

from panoptem._bench import load


def main() -> None:
    ap = comparison_arguments(__doc__, "135:165", 3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--onnx", action="store_true", help="also ONNX Runtime (CPU)")
    a = ap.parse_args()
    import tifffile

    import panoptem
    from panoptem.inference.engine import Predictor
    from panoptem.inference.predict import predict_batch
    from panoptem.models.load import LoadedModel
    z0, z1 = parse_slab(a)
    vol = tifffile.imread(lucchi_dir(a.lucchi) / "training_image.tif")[z0:z1]
    lm = panoptem.load_model(device=a.device)
    rng = Predictor(lm, device=a.device, runtime="torch").intensity(vol)
    nets = {"as trained": lm.module, "folded": lm.inference_module}
    if a.onnx:
        nets["onnx"] = Predictor(lm, device="cpu", runtime="onnx").network

    def network(module):
        return [predict_batch(module, vol[i:i + 4], rng, device=a.device, precision="fp32")
                for i in range(0, len(vol), 4)]

    outs = {k: network(m) for k, m in nets.items()}  # warm-up, and the outputs compared
    times: dict[str, list] = {k: [] for k in nets}
    for _ in range(a.repeat):
        for k, m in nets.items():
            t, c = time.perf_counter(), time.process_time()
            network(m)
            times[k].append((round(time.perf_counter() - t, 3), round(time.process_time() - c, 3)))
    diff = {k: {f: max(float(np.abs(getattr(x, f) - getattr(y, f)).max()) for x, y in zip(outs["as trained"], o))
                for f in ("semantic_probability", "heatmap", "offsets")} for k, o in outs.items() if k != "as trained"}

    class AsTrained(LoadedModel):
        inference_module = property(lambda self: self.module)

    plain = AsTrained(lm.card, lm.module, lm.device)
    labels = [panoptem.segment_3d(vol, m, device=a.device, runtime="torch").labels["mitochondria"]
              for m in (lm, plain)]
    emit(what="network with batch norms folded vs as trained (PyTorch)", code=a.label, device=a.device,
         input=f"Lucchi training volume z{z0}-{z1 - 1}", shape=list(vol.shape),
         seconds_cpu_seconds={k: v for k, v in times.items()},
         median_s={k: statistics.median(s for s, _ in v) for k, v in times.items()},
         max_abs_diff=diff, same_labels=bool(np.array_equal(*labels)), machine=machine(), load=load())


if __name__ == "__main__":
    main()
