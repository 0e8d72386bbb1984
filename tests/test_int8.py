"""int8 networks on a CPU (ONNX Runtime): what they give beside float32, and where they are refused."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def test_int8_keeps_the_bundled_models_objects_on_the_sample(tmp_path, monkeypatch):
    """The shipped model in int8 on the bundled sample, told its 5 nm pixels: the same objects as
    float32 and nearly the same voxels; its quantized graph is made once and kept."""
    import panoptem
    from panoptem import evaluate
    from panoptem.inference import runtime
    home = tmp_path / "home"
    monkeypatch.setenv("PANOPTEM_HOME", str(home))  # the bundled model, an empty cache
    monkeypatch.setattr(runtime, "_sessions", {})
    vol = panoptem.load_sample()
    ref = panoptem.segment_3d(vol, "MitoLite_v1", voxel_size=(5, 5, 5), precision="fp32")
    q = panoptem.segment_3d(vol, "MitoLite_v1", voxel_size=(5, 5, 5), precision="int8")
    a, b = ref.labels["mitochondria"], q.labels["mitochondria"]
    assert ref.objects["mitochondria"] >= 5
    r = evaluate(b, a)
    assert r["f1_50"] == 1.0, r  # every float32 object found once, nothing else
    assert 0.98 <= r["foreground_iou"] < 1.0, r  # close, and really another network
    made = sorted(p.name for p in (home / "cache" / "onnx").glob("*.onnx"))
    assert len(made) == 2 and any(".int8" in n for n in made), made  # the float32 export and its int8 copy
    stamp = {p: p.stat().st_mtime_ns for p in (home / "cache" / "onnx").glob("*.onnx")}
    monkeypatch.setattr(runtime, "_sessions", {})
    again = panoptem.segment_3d(vol, "MitoLite_v1", voxel_size=(5, 5, 5), precision="int8")
    assert np.array_equal(again.labels["mitochondria"], b)  # the same graph, the same labels
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # read from the cache, not made again


def test_int8_graphs_of_tiles_with_context(tiny_card, home, monkeypatch):
    """Tiles of larger planes in int8: the context and encode graphs are quantized too, and
    their outputs stay near float32's."""
    from panoptem.inference import runtime
    from panoptem.inference.engine import Predictor
    from panoptem.models.load import load_model
    monkeypatch.setattr(runtime, "_sessions", {})
    lm = load_model(str(tiny_card), "cpu")
    rng = np.random.default_rng(3)
    planes = rng.integers(0, 255, (3, 64, 96), dtype=np.uint8)
    f32 = Predictor(lm, device="cpu", runtime="onnx", precision="fp32", threads=1, batch_size=3)
    i8 = Predictor(lm, device="cpu", runtime="auto", precision="int8", threads=1, batch_size=3)
    assert i8.runtime == "onnx"
    fa, fb = f32.encode(planes, (0, 255))[0], i8.encode(planes, (0, 255))[0]
    ctx = fa.mean(axis=(2, 3))
    a, b = f32.predict_with_context(planes, (0, 255), ctx), i8.predict_with_context(planes, (0, 255), ctx)
    p, q = f32.predict(planes, (0, 255)), i8.predict(planes, (0, 255))
    for x, y in ((fa, fb), (a.semantic_probability, b.semantic_probability),
                 (p.semantic_probability, q.semantic_probability), (p.offsets, q.offsets)):
        assert x.shape == y.shape
        scale = float(np.abs(x).max()) or 1.0
        err = float(np.abs(x - y).max()) / scale
        assert 0 < err < 0.2, err  # quantized, not the float32 graph, yet close
    names = sorted(p.name for p in (home / "cache" / "onnx").glob("*.onnx"))
    assert sum(".int8" in n for n in names) == 3 and len(names) == 6, names  # plain, context, encode: both


def test_int8_is_refused_where_it_cannot_run(tiny_card, home):
    from panoptem.errors import PanoptemError
    from panoptem.inference.engine import Predictor
    from panoptem.models.load import load_model
    lm = load_model(str(tiny_card), "cpu")
    with pytest.raises(PanoptemError, match="ONNX Runtime only"):
        Predictor(lm, device="cpu", runtime="torch", precision="int8")
    from panoptem.inference.runtime import resolve_precision
    with pytest.raises(PanoptemError, match="CPU only"):
        resolve_precision("int8", "cuda:0")


def test_reduce_range_follows_the_cpu(monkeypatch):
    """7-bit weights on x86 without VNNI (saturation), all 8 bits with VNNI or on ARM."""
    import builtins
    import io

    from panoptem.inference import quantize
    real_open = builtins.open
    monkeypatch.setattr(quantize, "reduce_range", quantize.reduce_range.__wrapped__)  # uncached

    def cpuinfo(flags):
        return lambda path, *a, **k: io.StringIO(f"processor: 0\nflags\t\t: {flags}\n") \
            if str(path) == "/proc/cpuinfo" else real_open(path, *a, **k)
    monkeypatch.setattr(quantize.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(builtins, "open", cpuinfo("fpu sse2 avx2 avx512f"))
    assert quantize.reduce_range() is True
    monkeypatch.setattr(builtins, "open", cpuinfo("fpu sse2 avx2 avx512f avx512_vnni"))
    assert quantize.reduce_range() is False
    monkeypatch.setattr(quantize.platform, "machine", lambda: "arm64")
    assert quantize.reduce_range() is False


def test_a_cache_of_float32_outputs_is_not_resumed_in_int8(tiny_card, home, tmp_path):
    """The network cache of a run names int8 apart: resuming a float32 run's cache in int8 (or
    the other way) is refused, not mixed."""
    from panoptem.errors import PanoptemError
    from panoptem.inference.segment3d import segment_3d
    vol = np.random.default_rng(0).integers(0, 255, (6, 64, 64), dtype=np.uint8)
    cache = tmp_path / "run.cache"
    a = segment_3d(vol, str(tiny_card), cache_dir=cache, precision="fp32", runtime="onnx")
    b = segment_3d(vol, str(tiny_card), cache_dir=cache, precision="fp32", runtime="onnx")  # resumed: the same
    assert all(np.array_equal(a.labels[k], b.labels[k]) for k in a.labels)
    with pytest.raises(PanoptemError, match="different run"):
        segment_3d(vol, str(tiny_card), cache_dir=cache, precision="int8")


def test_blockwise_int8_keeps_the_objects_of_an_int8_run_in_memory(tmp_path, monkeypatch):
    """Blockwise workers run int8 too: with each slice's exact context they run the quantized
    context graph, so their voxels differ slightly from an in-memory int8 run's, not their objects."""
    import panoptem
    from panoptem import evaluate
    from panoptem.distributed import segment_blockwise
    from panoptem.inference import runtime
    monkeypatch.setenv("PANOPTEM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(runtime, "_sessions", {})
    vol = panoptem.load_sample()
    mem = panoptem.segment_3d(vol, "MitoLite_v1", voxel_size=(5, 5, 5), precision="int8").labels["mitochondria"]
    r = segment_blockwise(vol, "MitoLite_v1", tmp_path / "m.zarr", block_shape=(16, 192, 192), halo=(8, 64, 64),
                          n_workers=1, processes=False, voxel_size=(5, 5, 5), precision="int8")
    got = np.asarray(r.labels["mitochondria"][:])
    q = evaluate(got, mem)
    assert q["f1_50"] == 1.0 and q["foreground_iou"] >= 0.97, q
    names = [p.name for p in (tmp_path / "home" / "cache" / "onnx").glob("*.onnx")]
    assert sum(".int8" in n for n in names) == 3, names  # plain (in memory), context and encode (blockwise)


def test_a_process_keeps_a_bounded_number_of_onnx_sessions(tmp_path, monkeypatch):
    """A Dask worker serving many runs (models registered anew) kept every network's session."""
    import onnxruntime as ort

    from panoptem.inference import runtime
    (tmp_path / "g.onnx").write_bytes(b"")
    monkeypatch.setattr(runtime, "_onnx_path", lambda *a: tmp_path / "g.onnx")
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: object())
    monkeypatch.setattr(runtime, "_sessions", {})
    for i in range(runtime.MAX_SESSIONS + 5):
        runtime._session(None, f"net{i}", 1, "full", "fp32")
    assert len(runtime._sessions) == runtime.MAX_SESSIONS and ("net12", 1, "full", "fp32") in runtime._sessions
