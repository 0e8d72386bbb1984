"""The overlapped pipeline (read-ahead, decode/link behind the network), the network's
runtime and precision choices, automatic batch and tile sizes, and ``panoptem bench``."""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from panoptem.errors import PanoptemError
from panoptem.inference import segment3d as s3
from panoptem.inference._pipeline import BEHIND_NETWORK_NICE, Prefetch, Worker
from panoptem.inference.runtime import auto_batch_size, network_threads, resolve_precision, resolve_runtime
from panoptem.inference.segment3d import Cancelled, segment_3d

from _models import dark_blob_model
from test_segment3d import P, phantom


def _spy_decode(monkeypatch):
    """Record the thread every 2D decoding runs in."""
    threads = []
    real = s3.decode_planes

    def spy(*a, **k):
        threads.append(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(s3, "decode_planes", spy)
    return threads


@pytest.mark.parametrize("kw", [dict(inference_plane="xy"), dict(inference_plane="yz", median_slices=5),
                                dict(orthoplane=True, return_panoptic=True),
                                dict(orthoplane=True, fusion="probability")])
def test_overlapped_pipeline_gives_the_labels_of_the_sequential_one(kw, monkeypatch):
    vol, _ = phantom()
    threads = _spy_decode(monkeypatch)
    seq = segment_3d(vol, dark_blob_model(), overlap=False, batch_size=4, **P, **kw)
    assert set(threads) == {threading.current_thread().name}
    threads.clear()
    ovl = segment_3d(vol, dark_blob_model(), overlap=True, batch_size=4, **P, **kw)
    assert set(threads) == {"panoptem-decode"}  # decoding really ran beside the network
    assert seq.objects["mitochondria"] > 0
    for k in seq.labels:
        np.testing.assert_array_equal(ovl.labels[k], seq.labels[k])
    for k in seq.stacks:
        np.testing.assert_array_equal(ovl.stacks[k], seq.stacks[k])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have their own niceness on Linux only")
@pytest.mark.parametrize("slow_network", [True, False])  # else the decoding is the slow part
def test_work_behind_a_cpu_network_yields_to_it_when_the_network_costs_more(monkeypatch, slow_network):
    """Reading ahead and decoding drop to a lower priority once weighed against a network that
    costs more than they do; beside a cheaper network they keep normal priority (the run
    waits for them). Stacks complete (relabel) in a thread that follows the same weighing."""
    import time

    def niceness():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    from panoptem.inference import _pipeline
    from panoptem.inference.engine import Predictor
    weighings = []  # one per stack; the costs below are made only while the newest one is undecided,
    # and large enough that a loaded machine's hiccups cannot turn the decision

    class Recorded(_pipeline.BehindNetwork):
        def __init__(self, *a):
            super().__init__(*a)
            weighings.append(self)
    monkeypatch.setattr(s3, "BehindNetwork", Recorded)

    def undecided():
        return weighings and weighings[-1].yielded is None
    seen = {"decode": [], "relabel": [], "prepare": []}
    for owner, name, stage in ((s3, "decode_planes", "decode"), (s3, "lookup", "relabel"),
                               (Predictor, "prepare", "prepare")):
        def spy(*a, _real=getattr(owner, name), _stage=stage, **k):
            seen[_stage].append((threading.current_thread() is threading.main_thread(), niceness()))
            if _stage == "decode" and not slow_network and undecided():
                t = time.thread_time() + 0.2  # CPU seconds, as the weighing counts them
                while time.thread_time() < t:
                    pass
            return _real(*a, **k)
        monkeypatch.setattr(owner, name, spy)
    if slow_network:
        def slow(*a, _real=Predictor.predict, **k):
            if undecided():
                time.sleep(0.2)
            return _real(*a, **k)
        monkeypatch.setattr(Predictor, "predict", slow)
    mine = niceness()
    vol, _ = phantom()
    segment_3d(vol, dark_blob_model(), overlap=True, batch_size=4, orthoplane=True, **P)
    low = max(mine, BEHIND_NETWORK_NICE)
    for stage in ("decode", "prepare"):  # the network's input is made ahead, in the reading thread
        assert seen[stage] and not any(main for main, _ in seen[stage])
        assert seen[stage][0][1] == mine  # weighed first, at normal priority
        assert (seen[stage][-1][1] >= low) is slow_network, (stage, seen[stage])
    # the stacks complete (relabel) in a thread while the next network runs, the last one too,
    # yielding as the threads behind the network were weighed
    assert len(seen["relabel"]) == 3
    assert all(not main and (nice >= low) is slow_network for main, nice in seen["relabel"])
    assert len(weighings) == 3 and all(w.yielded is slow_network for w in weighings)
    assert niceness() == mine  # the caller's thread, where the network runs, keeps its priority


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have their own niceness on Linux only")
def test_behind_network_weighs_once_after_a_few_batches():
    from panoptem.inference._pipeline import YIELD_AFTER, YIELD_BELOW, BehindNetwork, _Busy
    stop = threading.Event()
    ids = []

    def idle():
        ids.append(threading.get_native_id())
        stop.wait()
    t = threading.Thread(target=idle)
    t.start()
    try:
        while not ids:
            pass
        busy = _Busy()
        busy.tid, busy.cpu_s, busy.done = ids[0], 10 * 0.1 * YIELD_BELOW * 0.9, 10  # per item 0.9 x the share
        before = os.getpriority(os.PRIO_PROCESS, ids[0])
        b = BehindNetwork(busy)
        for _ in range(YIELD_AFTER - 1):
            b.batch(0.1)
        assert b.yielded is None and os.getpriority(os.PRIO_PROCESS, ids[0]) == before
        b.batch(0.1)
        assert b.yielded is True and os.getpriority(os.PRIO_PROCESS, ids[0]) >= BEHIND_NETWORK_NICE
        heavy = _Busy()
        heavy.tid, heavy.cpu_s, heavy.done = ids[0], 10 * 0.1 * YIELD_BELOW * 1.1, 10
        b = BehindNetwork(heavy)
        for _ in range(YIELD_AFTER + 3):
            b.batch(0.1)
        assert b.yielded is False  # decided once, no yield
    finally:
        stop.set()
        t.join()


def test_overlapped_pipeline_on_real_tissue_and_streamed_output(tmp_path):
    import panoptem
    vol = panoptem.load_sample()[:12]
    seq = segment_3d(vol, "MitoLite_v1", device="cpu", overlap=False)
    ovl = segment_3d(vol, "MitoLite_v1", device="cpu", overlap=True)
    assert seq.objects["mitochondria"] >= 3
    np.testing.assert_array_equal(ovl.labels["mitochondria"], seq.labels["mitochondria"])
    streamed = segment_3d(vol, "MitoLite_v1", device="cpu", output=tmp_path / "m.zarr")
    np.testing.assert_array_equal(np.asarray(streamed.labels["mitochondria"][:]), seq.labels["mitochondria"])
    assert streamed.objects == seq.objects  # counted while written


def test_cancel_while_overlapped_keeps_the_finished_batches(tmp_path):
    vol, _ = phantom()

    def stop(plane, done, total):
        return done < 8

    with pytest.raises(Cancelled, match="stopped after 8 of 48"):
        segment_3d(vol, dark_blob_model(), cache_dir=tmp_path, callback=stop, batch_size=4, **P)
    import zarr
    assert zarr.open_group(str(tmp_path / "xy.zarr"))["done"][:].sum() == 8
    assert not [t for t in threading.enumerate() if t.name.startswith("panoptem-")]  # threads ended


def test_an_error_behind_the_network_reaches_the_caller(monkeypatch):
    vol, _ = phantom()

    def broken(*a, **k):
        raise ValueError("decode failed")

    monkeypatch.setattr(s3, "decode_planes", broken)
    with pytest.raises(ValueError, match="decode failed"):
        segment_3d(vol, dark_blob_model(), batch_size=4, **P)
    assert not [t for t in threading.enumerate() if t.name.startswith("panoptem-")]


def test_stage_clock_loses_no_addition_between_threads(monkeypatch):
    """Stages timed in several threads at once add to the same totals; none is lost.
    Each timed block lasts exactly one (fake) second, so the total is the block count."""
    import sys
    from panoptem.inference import _pipeline
    local = threading.local()

    def fake_clock():  # 0 on entering a block, 1 on leaving it, per thread
        local.n = getattr(local, "n", 0) + 1
        return float((local.n + 1) % 2)

    monkeypatch.setattr(_pipeline.time, "perf_counter", fake_clock)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, as a loaded machine does
    totals: dict = {}
    clock = _pipeline.StageClock(totals, cpu=False)

    def work():
        for _ in range(3000):
            with clock("decode"):
                pass

    threads = [threading.Thread(target=work) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert totals["decode_s"] == 6 * 3000


def test_prepared_inputs_give_the_outputs_of_plain_planes(tiny_card, home):
    """Predictor.prepare (made ahead, in the reading thread) then predict gives what predict
    gives on the planes, batch by batch, with a short last batch; tiled planes are not prepared."""
    from panoptem.inference.engine import Prepared, Predictor
    from panoptem.models.load import load_model
    rng = np.random.default_rng(1)
    pred = Predictor(load_model(str(tiny_card)), batch_size=3)
    for shape in ((7, 40, 56), (5, 16, 96)):
        planes = rng.integers(0, 255, shape).astype(np.uint8)
        prep = pred.prepare(planes, (10.0, 240.0))
        assert isinstance(prep, Prepared) and len(prep.batches) == -(-shape[0] // 3) and len(prep) == shape[0]
        a, b = pred.predict(prep), pred.predict(planes, (10.0, 240.0))
        for f in ("semantic_probability", "heatmap", "offsets"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    pred.tile_size = 32
    assert pred.prepare(planes, (10.0, 240.0)) is None


def test_inputs_are_padded_to_the_cards_input_multiple(tiny_card, home):
    """With ``input_multiple`` 16 (MitoLite_v1's), planes are padded to the next multiple of 16,
    not of the padding factor 32 (a 165-slice volume's xz planes: 176 rows, not 192); the outputs
    keep the planes' size and the tile grid keeps the padding factor. A bad value is refused."""
    from panoptem.inference.engine import Predictor
    from panoptem.models.card import ModelCard, Weights
    from panoptem.models.load import load_model
    planes = np.random.default_rng(2).integers(0, 255, (2, 37, 70)).astype(np.uint8)
    lm = load_model(str(tiny_card), "cpu")
    assert lm.card.padding_factor == 32 and lm.card.pad_multiple == 32
    shapes = {}
    for multiple in (None, 16):
        lm.card.input_multiple = multiple
        pred = Predictor(lm, device="cpu", runtime="torch")
        shapes[multiple] = pred.prepare(planes, (0.0, 255.0)).inputs()[0].shape[-2:]
        out = pred.predict(planes, (0.0, 255.0))
        assert out.semantic_probability.shape[-2:] == (37, 70) and out.heatmap.shape[-2:] == (10, 18)
        assert pred._align() == 32
    assert shapes == {None: (64, 96), 16: (48, 80)}
    for bad in (12, 2, 64):
        with pytest.raises(ValueError, match="input_multiple"):
            ModelCard(name="m", weights=Weights(file="m.pt"), input_multiple=bad)


@pytest.mark.parametrize("lazy", [False, True])
def test_plane_reader_gives_each_batch_of_planes_along_its_axis(lazy, tmp_path, monkeypatch):
    """Batches of xy, xz and yz planes are those of the volume moved to plane-first order;
    yz planes come contiguous, from one read per YZ_READ planes."""
    import zarr
    monkeypatch.setattr(s3, "YZ_READ", 8)
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 65535, (5, 7, 19), dtype=np.uint16)
    src, reads = vol, []
    if lazy:
        stored = zarr.open_array(tmp_path / "v.zarr", mode="w", shape=vol.shape, chunks=(2, 3, 4), dtype=vol.dtype)
        stored[:] = vol

        class Counted:
            shape, dtype, ndim = vol.shape, vol.dtype, 3

            def __getitem__(self, key):
                reads.append(key)
                return stored[key]
        src = Counted()
    for axis in range(3):
        reads.clear()
        n, b = vol.shape[axis], 3
        at = s3.PlaneReader(src, axis, n)
        want = np.moveaxis(vol, axis, 0)
        for i0 in range(0, n, b):
            got = at(i0, min(i0 + b, n))
            np.testing.assert_array_equal(got, want[i0:i0 + b])
            if axis == 2:
                assert got.flags.c_contiguous
        if lazy and axis == 2:
            assert len(reads) == 3  # 19 planes, 8 at a time (the batches of 3 cross the chunks' ends)


def test_worker_and_prefetch_keep_order_and_pass_errors():
    done = []
    w = Worker(done.append, depth=1)
    for i in range(20):
        w.put(i)
    w.finish()
    assert done == list(range(20))
    assert list(Prefetch(lambda x: x * x, range(6), depth=2)) == [0, 1, 4, 9, 16, 25]

    def bad(x):
        if x == 3:
            raise KeyError("read failed")
        return x

    with pytest.raises(KeyError, match="read failed"):
        list(Prefetch(bad, range(6)))
    w = Worker(bad)
    with pytest.raises(KeyError):
        for i in range(50):
            w.put(i)
        w.finish()


# ---------------------------------------------------------------- runtime


def test_onnx_runtime_matches_torch(tiny_card, home, monkeypatch):
    from panoptem.inference import runtime
    from panoptem.inference.engine import Predictor
    from panoptem.models.load import load_model
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(runtime, "_sessions", {})  # sessions made by earlier tests live in another home
    lm = load_model(str(tiny_card), "cpu")
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 255, (3, 70, 90), dtype=np.uint8)
    a = Predictor(lm, device="cpu", runtime="torch").predict(planes, (0, 255))
    b = Predictor(lm, device="cpu", runtime="onnx", threads=1).predict(planes, (0, 255))
    assert Predictor(lm, device="cpu", runtime="auto").runtime == "onnx"
    for f in ("semantic_probability", "heatmap", "offsets"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, atol=1e-4)
    assert list((home / "cache" / "onnx").glob("*.onnx"))  # exported once, kept
    # downsampled input and flip test-time augmentation: the numpy path of ONNX Runtime
    # prepares and averages as the PyTorch one does
    odd = rng.integers(0, 255, (2, 75, 93), dtype=np.uint8)
    for kw in (dict(downsampling=2), dict(tta=True), dict(downsampling=3, tta=True)):
        a = Predictor(lm, device="cpu", runtime="torch", **kw).predict(odd, (0, 255))
        b = Predictor(lm, device="cpu", runtime="onnx", threads=1, **kw).predict(odd, (0, 255))
        for f in ("semantic_probability", "heatmap", "offsets"):
            np.testing.assert_allclose(getattr(a, f), getattr(b, f), atol=1e-4, err_msg=f"{kw} {f}")
    # tiles of larger planes (blockwise runs with exact context): the encode graph gives the
    # deepest features, and the context graph the outputs given each plane's context
    pt = Predictor(lm, device="cpu", runtime="torch", batch_size=2)
    po = Predictor(lm, device="cpu", runtime="onnx", threads=1, batch_size=2)
    (fa, ta), (fb, tb) = pt.encode(planes, (0, 255)), po.encode(planes, (0, 255))
    assert fa.shape == fb.shape and fa.shape[0] == 3
    assert (ta == 1).all() and (tb == 1).all() and ta.shape == (3, 1, *fa.shape[2:])  # no padding: cells alike
    np.testing.assert_allclose(fa, fb, atol=1e-4)
    ctx = rng.normal(size=(3, fa.shape[1])).astype(np.float32)
    a, b = pt.predict_with_context(planes, (0, 255), ctx), po.predict_with_context(planes, (0, 255), ctx)
    own = po.predict_with_context(planes, (0, 255), fb.mean(axis=(2, 3)))
    plain = po.predict(planes, (0, 255))
    for f in ("semantic_probability", "heatmap", "offsets"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), atol=1e-4, err_msg=f)
        np.testing.assert_allclose(getattr(own, f), getattr(plain, f), atol=1e-4, err_msg=f)
    assert np.abs(a.semantic_probability - plain.semantic_probability).max() > 1e-3  # the context matters
    assert len(list((home / "cache" / "onnx").glob("*.onnx"))) == 3  # plain, context and encode graphs


def test_planes_in_batches_keep_their_own_intensity_ranges(tiny_card):
    """encode and predict_with_context cut a stack into batches: each plane is normalised with its
    own (low, high) row, as when it is given alone (later batches took the first batch's rows)."""
    from panoptem.inference.engine import Predictor
    from panoptem.models.load import load_model
    lm = load_model(str(tiny_card), "cpu")
    planes = np.random.default_rng(4).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    rng = np.array([[0, 255], [10, 200], [30, 120], [60, 250]], np.float32)
    pr = Predictor(lm, device="cpu", runtime="torch", batch_size=2)
    feats, _ = pr.encode(planes, rng)
    ctx = np.random.default_rng(5).normal(size=(4, feats.shape[1])).astype(np.float32)
    out = pr.predict_with_context(planes, rng, ctx)
    for i in range(4):
        np.testing.assert_allclose(feats[i], pr.encode(planes[i:i + 1], rng[i])[0][0], atol=1e-5)
        alone = pr.predict_with_context(planes[i:i + 1], rng[i], ctx[i:i + 1])
        np.testing.assert_allclose(out.offsets[i], alone.offsets[0], atol=1e-5)


def test_padding_is_left_out_of_the_global_context(tiny_card, home, monkeypatch):
    """A plane that holds padding (a black border) takes as its global context the mean of its
    deepest features over the cells by their part that is not padding, in PyTorch and in ONNX
    Runtime's tissue graph alike: the outputs are the context graph's given that mean, not the
    plain mean over every cell's; planes without padding keep the plain graph."""
    import torch

    from panoptem.inference import runtime
    from panoptem.inference.engine import Predictor
    from panoptem.models.load import load_model
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(runtime, "_sessions", {})
    lm = load_model(str(tiny_card), "cpu")
    with torch.no_grad():  # a random network's context barely matters: make it matter
        c = lm.module.context[0].weight
        c[:, c.shape[1] // 2:] *= 40
    rng = np.random.default_rng(0)
    held = rng.integers(0, 255, (3, 70, 90), dtype=np.uint8)
    held[0, :40, :40] = 0  # corners of black: the network sees the whole plane, its context leaves them out
    held[2, 30:, 50:] = 0
    pt = Predictor(lm, device="cpu", runtime="torch", batch_size=2)
    po = Predictor(lm, device="cpu", runtime="onnx", threads=1, batch_size=2)
    a, b = pt.predict(held, (0, 255)), po.predict(held, (0, 255))
    fh, th = po.encode(held, (0, 255))
    assert th[0, 0, 0, 0] == 0 and th[0, 0, 0, 1] == 0.75 and (th[1] == 1).all() and th[2].min() == 0 and 0 < th[2, 0, 1, 1] < 1
    tissue_mean = (fh * th).sum(axis=(2, 3)) / th.sum(axis=(2, 3))
    own = po.predict_with_context(held, (0, 255), tissue_mean)
    every_cell = po.predict_with_context(held, (0, 255), fh.mean(axis=(2, 3)))
    for f in ("semantic_probability", "heatmap", "offsets"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), atol=1e-4, err_msg=f)
        np.testing.assert_allclose(getattr(own, f), getattr(b, f), atol=2e-5, err_msg=f)
        np.testing.assert_allclose(getattr(every_cell, f)[1], getattr(b, f)[1], atol=2e-5, err_msg=f)  # no padding
    for i in (0, 2):  # the plain mean's outputs lie far further off
        off_own, off_every = (np.abs(o.offsets[i] - b.offsets[i]).max() for o in (own, every_cell))
        assert off_every > max(20 * off_own, 5e-5), (i, off_own, off_every)
    names = sorted(p.name for p in (home / "cache" / "onnx").glob("*.onnx"))
    assert len(names) == 3 and sum(".tissue" in n for n in names) == 1, names  # tissue, context, encode
    plain = po.predict(held[1:2], (0, 255))  # no padding: the plain graph, the same outputs
    np.testing.assert_allclose(plain.offsets[0], b.offsets[1], atol=1e-4)
    assert len(list((home / "cache" / "onnx").glob("*.onnx"))) == 4


def test_onnx_export_goes_to_a_scratch_folder_when_the_cache_cannot_be_written(tiny_card, home, monkeypatch):
    """A shared, read-only PANOPTEM_HOME (here its cache folder cannot be made: a file holds its
    name) still runs the ONNX runtime, from an export of this process's own."""
    from panoptem.inference import runtime
    from panoptem.inference.engine import Predictor
    from panoptem.models.load import load_model
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(runtime, "_sessions", {})
    monkeypatch.setattr(runtime, "_scratch", [], raising=False)
    lm = load_model(str(tiny_card), "cpu")
    import shutil
    shutil.rmtree(home / "cache" / "onnx", ignore_errors=True)
    (home / "cache").mkdir(parents=True, exist_ok=True)
    (home / "cache" / "onnx").write_text("not a folder")
    planes = np.random.default_rng(0).integers(0, 255, (2, 64, 64), dtype=np.uint8)
    a = Predictor(lm, device="cpu", runtime="torch").predict(planes, (0, 255))
    b = Predictor(lm, device="cpu", runtime="onnx", threads=1).predict(planes, (0, 255))
    np.testing.assert_allclose(a.semantic_probability, b.semantic_probability, atol=1e-4)
    assert len(runtime._scratch) == 1 and list(runtime._scratch[0].glob("*.onnx"))
    assert (home / "cache" / "onnx").read_text() == "not a folder"


def test_tiled_onnx_prediction_hands_back_the_arena_and_keeps_its_outputs(tiny_card, home, monkeypatch):
    """After the tiles of a large plane, ONNX Runtime's arena is shrunk by one small call per
    graph the tiles ran (the encoder for the plane's context, then the context graph); the
    sessions give the same outputs after it."""
    from panoptem.inference import runtime
    from panoptem.inference.engine import Predictor
    from panoptem.models.load import load_model
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(runtime, "_sessions", {})
    lm = load_model(str(tiny_card), "cpu")
    planes = np.random.default_rng(1).integers(0, 255, (1, 150, 170), dtype=np.uint8)
    pr = Predictor(lm, device="cpu", runtime="onnx", threads=1, tile_size=64)
    released, orig = [], runtime.OnnxNet.release_memory
    monkeypatch.setattr(runtime.OnnxNet, "release_memory", lambda self: (released.append(self.graph), orig(self)))
    a = pr.predict(planes, (0, 255))
    assert sorted(released) == ["context", "encode"]  # each graph the tiles ran, once, after the last tile
    b = pr.predict(planes, (0, 255))
    assert sorted(released) == ["context", "context", "encode", "encode"]
    for f in ("semantic_probability", "heatmap", "offsets"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_downsampling_averages_whole_windows_and_cuts_the_last():
    """Image Downsampling by f: output pixel i is the mean of input pixels f*i .. f*i + f - 1
    (PyTorch's area interpolation where the sides are multiples of f); the last window of a side
    that is not is the mean of the pixels left, so a part of a plane starting on a multiple of f
    gives the whole plane's values, and integer planes averaged first give the same means."""
    import torch
    import torch.nn.functional as F

    from panoptem.inference.preprocess import downsample, integer_block_means
    rng = np.random.default_rng(1)
    for shape, f in (((2, 1, 64, 96), 2), ((1, 1, 65, 97), 2), ((1, 1, 100, 77), 3), ((1, 1, 7, 9), 4),
                     ((3, 30, 1), 4)):
        x = rng.random(shape, dtype=np.float32)
        got = downsample(x, f)
        h, w = shape[-2:]
        assert got.shape == shape[:-2] + (-(-h // f), -(-w // f))
        want = np.zeros(got.shape, np.float64)
        for i in range(got.shape[-2]):
            for j in range(got.shape[-1]):
                want[..., i, j] = x[..., f * i:f * i + f, f * j:f * j + f].mean(axis=(-2, -1))
        np.testing.assert_allclose(got, want, rtol=2e-6)
        if h % f == 0 and w % f == 0:
            torch_area = F.interpolate(torch.from_numpy(x), size=got.shape[-2:], mode="area").numpy()
            np.testing.assert_allclose(got, torch_area, atol=1e-6)
        part = downsample(x[..., f:, f:], f)  # starts on the grid: the whole plane's values
        np.testing.assert_array_equal(part, got[..., 1:, 1:])
        ints = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_allclose(integer_block_means(ints, f), downsample(ints.astype(np.float32), f), rtol=1e-6)


def test_integer_planes_are_averaged_before_normalising_only_where_nothing_clips():
    """Integer planes shrunk by Image Downsampling or resampling are averaged in integers and
    then normalised (a quarter of the pixels to convert): the same network input as
    normalising first, to float32 rounding, for uint8 / uint16 / int16, per-plane ranges and
    neighbour channels, and sides that are not multiples of the factor (their last window cut);
    planes that the normalisation would clip and float planes take the other order, whose input
    is then exactly the old one."""
    from panoptem.inference import predict
    from panoptem.inference.preprocess import downsample, integer_block_means, means_first, normalize
    rng = np.random.default_rng(3)
    cases = ((np.uint8, (3, 64, 96), (45.0, 224.0), 2), (np.uint16, (2, 3, 32, 48), (300.0, 4000.0), 2),
             (np.int16, (2, 60, 30), (-200.0, 900.0), 3), (np.uint8, (3, 32, 32), [[10, 200], [0, 255], [60, 90]], 4),
             (np.int8, (2, 48, 32), (-100.0, 90.0), 4), (np.int8, (2, 32, 32), (-10.0, 10.0), 2))
    for dt, shape, rg, f in cases:
        info = np.iinfo(dt)
        planes = rng.integers(max(info.min, -1000), min(info.max, 5000) + 1, shape).astype(dt)
        r = np.asarray(rg, np.float32)
        lo, hi = (r[0], r[1]) if r.ndim == 1 else (r[:, 0, None, None], r[:, 1, None, None])
        means = integer_block_means(planes, f)
        assert means.dtype == np.float32
        np.testing.assert_allclose(means, planes.reshape(*shape[:-2], shape[-2] // f, f, shape[-1] // f, f)
                                   .mean(axis=(-3, -1)), rtol=1e-7, atol=0)
        fits = bool(np.all(planes >= lo - 0.5 * (hi - lo)) and np.all(planes <= hi + 0.5 * (hi - lo)))
        assert means_first(planes, lo, hi, f) == fits
        got, h, w, _ = predict.network_input(planes, r, f, 16, (0.5, 0.25))
        want = downsample(normalize(planes, lo, hi)[:, None] if planes.ndim == 3 else normalize(planes, lo, hi), f)
        assert (h, w) == want.shape[-2:]
        crop = got[..., :h, :w]
        if fits:
            np.testing.assert_allclose(crop, want, rtol=0, atol=1e-5)
        else:
            np.testing.assert_array_equal(crop, want)
    odd = rng.integers(0, 256, (2, 33, 31)).astype(np.uint8)
    assert means_first(odd, 0, 255, 2) and not means_first(odd.astype(np.float32), 0, 255, 2)
    assert not means_first(odd, 0, 255, 1)
    got, h, w, _ = predict.network_input(odd, (0.0, 255.0), 2, 16, (0.5, 0.25))
    assert (h, w) == (17, 16)
    np.testing.assert_allclose(got[..., :h, :w], downsample(normalize(odd, 0.0, 255.0)[:, None], 2), rtol=0, atol=1e-5)
    assert got[0, 0, 16, 15] == pytest.approx((odd[0, 32, 30] / 255.0 - 0.5) / 0.25, abs=1e-5)  # the corner's own pixel


def test_bilinear_resizing_matches_pytorch():
    """The decoding's bilinear resizing (numpy) against PyTorch's: whole factors (the fast path),
    other ratios, shrinking, one-pixel axes and leading axes; float32 rounding apart (PyTorch
    computes the source coordinates in float32, about 1e-5 off at a thousand pixels)."""
    import torch
    import torch.nn.functional as F

    from panoptem.inference.preprocess import linear_resize
    rng = np.random.default_rng(2)
    cases = (((2, 3, 24, 32), (48, 64)), ((1, 83, 64), (165, 128)), ((1, 1, 50, 70), (101, 139)),
             ((1, 1, 100, 100), (60, 70)), ((1, 1, 64, 64), (192, 256)), ((1, 1, 1, 5), (3, 10)),
             ((1, 1, 7, 1), (21, 4)), ((1, 1, 9, 9), (9, 9)), ((1, 1, 300, 400), (900, 800)))
    for shape, size in cases:
        x = rng.random(shape, dtype=np.float32)
        got = linear_resize(x, size)
        t = torch.from_numpy(x.reshape(-1, 1, *shape[-2:]))
        want = F.interpolate(t, size=size, mode="bilinear", align_corners=False).numpy().reshape(got.shape)
        assert got.shape == (*shape[:-2], *size) and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, want, atol=3e-5, err_msg=str((shape, size)))


def test_a_cached_network_runs_without_pytorch(tmp_path):
    """Once its ONNX export is cached, the bundled model runs in a fresh process without
    importing PyTorch (the start of every run is seconds shorter), with the same labels."""
    import os
    import subprocess
    import sys
    pytest.importorskip("onnxruntime")
    script = ("import sys, numpy as np, panoptem\n"
              "px = float(sys.argv[2]) or None\n"
              "res = panoptem.segment_3d(panoptem.load_sample()[:4], device='cpu', voxel_size=px and (px,) * 3)\n"
              "np.save(sys.argv[1], res.labels['mitochondria'])\n"
              "print('torch' in sys.modules)\n")
    env = {**os.environ, "PANOPTEM_HOME": str(tmp_path / "home")}
    # the last run knows its pixel size: planes shrunk x2 for the network, labels brought back
    runs = [subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{i}.npy"), px], env=env, check=True,
                           capture_output=True, text=True).stdout.split()[-1] for i, px in enumerate(("0", "0", "5"))]
    assert runs == ["True", "False", "False"]  # the first exports the network with PyTorch; the others need none
    first, second, resampled = (np.load(tmp_path / f"{i}.npy") for i in range(3))
    assert first.max() > 0
    np.testing.assert_array_equal(first, second)
    assert resampled.shape == first.shape and resampled.max() > 0
    assert ((resampled > 0) == (first > 0)).mean() > 0.9  # the same mitochondria, seen at 10 nm


def test_inference_runs_the_network_with_batch_norms_folded():
    """Each convolution + batch norm pair is one convolution for inference: the same outputs
    to float32 rounding; a network in training mode (fine-tuning) is run as it is."""
    import torch

    from conftest import TINY_ARCH
    from panoptem.models.architecture import build_model
    from panoptem.models.card import ModelCard
    from panoptem.models.load import LoadedModel
    torch.manual_seed(1)
    net = build_model(TINY_ARCH)
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # statistics a run has learnt
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    lm = LoadedModel(ModelCard.model_validate({"name": "tiny", "architecture": TINY_ARCH, "label_divisor": None,
                                               "weights": {"file": "tiny.pt"}}), net.eval())
    folded = lm.inference_module
    assert folded is not net and lm.inference_module is folded  # folded once
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the loaded network is untouched
    import copy
    ignored = copy.deepcopy(net)  # the same network with its batch norms left out
    for seq in (m for m in ignored.modules() if isinstance(m, torch.nn.Sequential)):
        for i, m in enumerate(seq):
            if isinstance(m, torch.nn.BatchNorm2d):
                seq[i] = torch.nn.Identity()
    x = torch.rand(2, 1, 64, 96)
    with torch.inference_mode():
        a, b, c = net(x), folded(x), ignored(x)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4)
        assert (b[k] - c[k]).abs().max() > 1e-2  # the folded statistics change the outputs
    net.train()
    assert lm.inference_module is net


def test_runtime_and_precision_choices():
    m = dark_blob_model()
    assert resolve_runtime("auto", m.module, "cpu", "fp32") == "torch"  # not one of panoptem's networks
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("auto", "cuda:0") == "fp16"
    for bad in (lambda: resolve_runtime("onnx", m.module, "cpu", "fp32"),
                lambda: resolve_runtime("tensorrt", m.module, "cpu", "fp32"),
                lambda: resolve_precision("fp16", "cpu"), lambda: resolve_precision("int4", "cpu"),
                lambda: resolve_precision("int8", "cuda:0"),  # int8 is ONNX Runtime's, on a CPU
                lambda: resolve_runtime("torch", m.module, "cpu", "int8"),
                lambda: resolve_runtime("auto", m.module, "cpu", "int8"),  # not one of panoptem's networks
                lambda: network_threads(0)):
        with pytest.raises(PanoptemError):
            bad()
    from panoptem.inference.runtime import cpu_count
    assert network_threads(3) == 3 and network_threads(None) == cpu_count()
    from panoptem.inference.runtime import GPU_HOST_THREADS, host_threads
    # PyTorch's threads: every core for a CPU network, few beside a GPU (only copies run there),
    # ONNX Runtime's own pool untouched
    assert host_threads("torch", "cpu", None) == cpu_count() and host_threads("torch", "cpu", 3) == 3
    assert host_threads("torch", "cuda:0", None) == GPU_HOST_THREADS == 1 and host_threads("torch", "cuda", 4) == 4
    assert host_threads("onnx", "cpu", None) is None
    vol, _ = phantom()
    bf = segment_3d(vol, m, precision="bf16", batch_size=4, **P)  # bfloat16 autocast on the CPU runs
    assert bf.objects["mitochondria"] == 4


def test_limit_threads_caps_this_process_and_a_torch_imported_later():
    """A blockwise worker's share of the cores: panoptem's pools, ONNX Runtime's and PyTorch's,
    even when PyTorch is first imported after the cap."""
    code = ("from panoptem.inference.runtime import cpu_count, limit_threads\n"
            "import sys; assert 'torch' not in sys.modules\n"
            "limit_threads(1)\n"
            "import torch\n"
            "print(cpu_count(), torch.get_num_threads())\n"
            "limit_threads(2); print(cpu_count(), torch.get_num_threads())\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert lines[0] == "1 1"
    two = min(2, len(os.sched_getaffinity(0)))
    assert lines[1] == f"{two} 2"


def test_automatic_batch_size():
    assert auto_batch_size((768, 1024), "cpu", 30) == 1
    assert auto_batch_size((512, 512), "cpu", 300) == 4
    assert auto_batch_size((2048, 2048), "cpu", 30) == 1
    thin = auto_batch_size((30, 1024), "cpu", 768)       # ortho-planes of a thin volume
    assert thin == 34 and auto_batch_size((30, 1024), "cpu", 40) == 4  # progress about 10 times a stack
    assert auto_batch_size((30, 1024), "cpu", 3) == 3
    assert auto_batch_size((30, 1024), "cpu", 34, steps=1) == 34  # a part of a stack: not cut again


def test_a_stack_part_runs_in_the_calls_the_stack_chose():
    """run_stack cuts a stack into parts of ``batch_for`` planes; the predictor must not cut each
    part by the tenth-of-the-stack rule again (thin planes ran 7 per call instead of 76)."""
    from panoptem.inference.engine import Predictor
    pr = Predictor(batch_size=0, runtime="torch", device="cpu")
    b = pr.batch_for((30, 1024), 768)
    prep = pr.prepare(np.random.default_rng(0).integers(1, 255, (b, 30, 1024), dtype=np.uint8), (0, 255))
    assert b == 34 and [x.shape[0] for x in prep.inputs()] == [34]


def test_large_images_are_tiled_automatically_unless_a_tile_size_is_given(monkeypatch):
    from panoptem.inference import segment2d as s2
    calls = []
    real = s2._segment_large

    def spy(pred, chunk, *a, **k):
        calls.append(pred.tile_size)
        return real(pred, chunk, *a, **k)

    monkeypatch.setattr(s2, "_segment_large", spy)
    img = np.full((4160, 96), 200, np.uint8)
    img[1000:1040, 20:60] = 40
    kw = dict(maximum_objects_per_class=0)
    lab = s2.segment_2d(img, dark_blob_model(), **kw)
    assert calls == [2048] and lab.max() == 1
    # downsampled, the network's grid is small, but the labels are decoded on the image's: still tiled,
    # at most half the image (it was decoded whole, several times the labels' memory)
    assert s2.segment_2d(img, dark_blob_model(), downsampling=2, **kw).max() == 1 and calls == [2048, 2080]
    s2.segment_2d(img, dark_blob_model(), tile_size=1024, **kw)
    assert calls == [2048, 2080, 1024]


def test_automatic_tiles_fit_the_model_at_any_reduction_and_count_network_pixels(monkeypatch):
    """A long image at Image Downsampling 64 (its automatic tile was smaller than the model's
    smallest: a raw ValueError), and one resampled by a fraction (its tile counted in input pixels
    while the resampled plane was cut: the whole network plane in one pass)."""
    from panoptem.inference import segment2d as s2
    from panoptem.inference.engine import Predictor
    cut = []
    real = Predictor._predict_tiled
    monkeypatch.setattr(Predictor, "_predict_tiled", lambda self, planes, *a, **k: (
        cut.append((self.tile_size, planes.shape[-2:])), real(self, planes, *a, **k))[1])
    img = np.full((64, 5000), 200, np.uint8)
    img[20:40, 1000:3000] = 40
    assert s2.segment_2d(img, dark_blob_model(), downsampling=64).shape == img.shape
    assert cut[-1][0] >= Predictor(dark_blob_model(), downsampling=64).min_tile
    from panoptem.models.card import ModelCard, Weights
    from panoptem.models.load import LoadedModel
    from _models import DarkBlobNet
    model = LoadedModel(ModelCard(name="darkblob10", weights=Weights(file="none"), padding_factor=32,
                                  label_divisor=None, voxel_size_nm=10.0), DarkBlobNet().eval(), "cpu")
    s2.segment_2d(np.full((64, 12000), 200, np.uint8), model, voxel_size=(4.0, 4.0))
    tile, plane = cut[-1]
    assert plane[-1] == 4800 and tile == 2048           # network pixels, on the resampled plane


def test_labels_land_where_the_network_saw_them_past_64_times_smaller():
    """Image Downsampling 32 on pixels told 2.1 nm for a 10 nm model (a network grid 96 x
    smaller: its scale was cut to 1/64, the labels stretched over the padding; from 128 x, a raw
    ZeroDivisionError): the labels stay out of the black half, but for the network pixel (160 x 160
    image pixels at 32) on its edge that holds tissue too."""
    from panoptem.inference.segment2d import segment_2d
    from panoptem.models.card import ModelCard, Weights
    from panoptem.models.load import LoadedModel
    from _models import DarkBlobNet
    model = LoadedModel(ModelCard(name="darkblob10", weights=Weights(file="none"), padding_factor=32,
                                  label_divisor=None, voxel_size_nm=10.0), DarkBlobNet().eval(), "cpu")
    img = np.full((1536, 1536), 200, np.uint8)
    img[:768] = 0                                        # black padding above
    img[900:1400, 200:1300] = 40
    for ds in (32, 64):
        lab = segment_2d(img, model, downsampling=ds, voxel_size=(2.1, 2.1), tile_size=0)
        assert lab.shape == img.shape and not lab[:768 - 5 * ds].any(), ds


def test_a_tiled_image_resampled_by_a_fraction_gets_the_labels_of_an_untiled_one():
    """4 nm pixels for a model of 6 nm (2/3): tiles decoded on the input's grid give the
    whole-image decoding's labels, outlines included, not 3 x 3 steps of the network's grid."""
    from panoptem.inference.segment2d import segment_2d
    from panoptem.models.card import ModelCard, Weights
    from panoptem.models.load import LoadedModel
    from _models import DarkBlobNet
    model = LoadedModel(ModelCard(name="darkblob6", weights=Weights(file="none"), padding_factor=32,
                                  label_divisor=None, voxel_size_nm=6.0), DarkBlobNet().eval(), "cpu")
    yy, xx = np.mgrid[:700, :650]
    img = np.full((700, 650), 200, np.uint8)
    for y, x, r in [(100, 120, 40), (350, 330, 55), (600, 500, 30), (200, 560, 25), (520, 90, 45)]:
        img[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = 40
    kw = dict(voxel_size=(4.0, 4.0), maximum_objects_per_class=0, min_piece_area=0)
    whole = segment_2d(img, model, **kw)
    tiled = segment_2d(img, model, tile_size=256, **kw)
    assert whole.max() == 5
    np.testing.assert_array_equal(whole > 0, tiled > 0)
    pairs = np.unique(np.stack([whole.ravel(), tiled.ravel()]), axis=1)
    assert len(pairs[0]) == len(np.unique(whole)) == len(np.unique(tiled)) == 6


def test_bench_network_alone_gives_a_model_its_neighbours(tmp_path, home, capsys, monkeypatch):
    """The network-only pass hands a model that sees neighbouring planes each plane with them, as
    the run does (not lone planes that fill every channel)."""
    from conftest import make_tiny_card
    from panoptem.cli import main
    from panoptem.inference.engine import Predictor
    card = make_tiny_card(tmp_path, context_slices=1, name="tiny3")
    shapes, orig = [], Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, planes, *a, **k: (shapes.append(np.shape(planes)),
                                                                            orig(self, planes, *a, **k))[1])
    assert main(["bench", "--shape", "6,64,96", "--model", str(card), "--min-size", "0", "--runtime", "torch"]) == 0
    capsys.readouterr()
    # after the warm-up call: planes with neighbours (N, 3, H, W), or the run's own prepared batches
    assert any(len(sh) == 4 and sh[1] == 3 for sh in shapes[1:]) and not any(len(sh) == 3 for sh in shapes[1:])


def test_bench_network_alone_sees_the_planes_at_the_model_pixel_size(tmp_path, home, capsys, monkeypatch):
    """With the input's pixel size known, the network-only pass is given the planes resampled as
    the run gives them (not the input's own pixels, which would cost four times the network)."""
    from conftest import make_tiny_card
    from panoptem.cli import main
    from panoptem.inference.engine import Predictor
    from panoptem.io import write_image
    card = make_tiny_card(tmp_path, name="tiny5", voxel_size_nm=5.0)
    vol = np.random.default_rng(0).integers(0, 255, (4, 64, 96), dtype=np.uint8)
    src = write_image(tmp_path / "v.tif", vol, voxel_size=(2.5, 2.5, 2.5))
    factors, orig = [], Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, planes, *a, **k: (factors.append(self.factor),
                                                                            orig(self, planes, *a, **k))[1])
    assert main(["bench", str(src), "--model", str(card), "--min-size", "0", "--runtime", "torch"]) == 0
    tot = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert tot["pixel_size"]["factors"]["xy"] == [2.0, 2.0]
    assert len(factors) > 1 and all(f == (2.0, 2.0) for f in factors[1:]), factors  # after the warm-up call


def test_bench_network_alone_runs_the_flips_of_test_time_augmentation(tiny_card, home, capsys, monkeypatch):
    """With --tta the network-only pass runs the network as the run does (four passes a plane), so
    the ratio compares like with like."""
    from panoptem.cli import main
    from panoptem.inference.engine import Predictor
    seen, orig = [], Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, planes, *a, **k: (seen.append(self.tta),
                                                                            orig(self, planes, *a, **k))[1])
    assert main(["bench", "--shape", "4,64,64", "--model", str(tiny_card), "--min-size", "0", "--tta",
                 "--runtime", "torch"]) == 0
    capsys.readouterr()
    assert seen and all(seen), seen


def test_bench_command_reports_stages_and_the_ratio(tiny_card, home, capsys):
    from panoptem.cli import main
    assert main(["bench", "--shape", "6,64,96", "--model", str(tiny_card), "--min-size", "0"]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    stages = [r["stage"] for r in lines]
    assert stages[-3:] == ["network_only", "end_to_end", "total"]
    assert {"read", "normalise", "network", "decode", "link", "link_solve"} <= set(stages)
    tot = lines[-1]
    e, n = tot["end_to_end_s"], tot["network_only_s"]  # rounded to 0.1 ms: a 2 ms network is 2.5 % off
    assert (e - 5e-5) / (n + 5e-5) - 5e-4 <= tot["ratio"] <= (e + 5e-5) / (n - 5e-5) + 5e-4
    assert tot["same_labels_as_staged"] is True and tot["shape"] == [6, 64, 96]
    assert all(len(r["load"]) == 3 for r in lines)
    assert abs(sum(r["share"] for r in lines if "share" in r) - 1) < 0.01
    assert main(["bench", "--shape", "6,64", "--model", str(tiny_card)]) == 2
    assert main(["bench", "--shape", "6,64,64", "--runtime", "tensorrt", "--model", str(tiny_card)]) == 2


# ---------------------------------------------------------------- test-time augmentation


def test_flip_averaging_is_exactly_flip_equivariant(tiny_card, home):
    """With TTA, a flipped image gives the flipped outputs (offsets with the flipped axis
    negated), whatever the network; without it a random network does not."""
    from panoptem.inference.engine import Predictor
    from panoptem.models.load import load_model
    lm = load_model(str(tiny_card), "cpu")
    planes = np.random.default_rng(1).integers(0, 255, (2, 64, 96), dtype=np.uint8)
    for dims, axis in (((-1,), 1), ((-2,), 0)):
        flipped = np.flip(planes, dims).copy()
        outs = {}
        for tta in (False, True):
            pr = Predictor(lm, device="cpu", runtime="torch", tta=tta)
            a, b = pr.predict(planes, (0, 255)), pr.predict(flipped, (0, 255))
            back_off = np.flip(b.offsets, dims).copy()
            back_off[:, axis] *= -1
            outs[tta] = (np.abs(np.flip(b.semantic_probability, dims) - a.semantic_probability).max(),
                         np.abs(np.flip(b.heatmap, dims) - a.heatmap).max(), np.abs(back_off - a.offsets).max())
        assert max(outs[True]) < 1e-4, outs[True]
        assert max(outs[False]) > 1e-3  # the check can tell an equivariant result from another


def test_tta_through_segment_3d_and_blockwise_refuses_it(tiny_card, home, tmp_path):
    from panoptem.distributed import segment_blockwise
    m = dark_blob_model()
    vol, _ = phantom()
    plain = segment_3d(vol, m, **P)
    tta = segment_3d(vol, m, tta=True, **P)
    assert tta.objects == plain.objects  # a symmetric network: the same objects
    with pytest.raises(PanoptemError, match="tta"):
        segment_blockwise(vol, m, tmp_path / "o.zarr", tta=True, block_shape=(8, 64, 64), halo=(2, 16, 16))


def test_sigmoid_in_place_is_the_logistic_function():
    from panoptem.inference.predict import sigmoid_
    x = np.concatenate([np.linspace(-30, 30, 20001), [-1e4, -88.0, 0.0, 88.0, 1e4]]).astype(np.float32)
    ref = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    got = sigmoid_(x.copy())
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-7)
    assert got[-1] == 1.0 and got[-5] == 0.0


@pytest.mark.parametrize("dtype", [np.uint32, np.int64, np.float64])
def test_a_narrow_range_far_from_zero_normalises_exactly(dtype):
    from panoptem.inference.preprocess import intensity_range, normalize
    # float32 holds 2**30 + 25 as 2**30: the range and the scaling came out in steps of 128
    img = (2**30 + np.arange(0, 201, 25)).astype(dtype)[None]
    lo, hi = intensity_range(img, low_pct=0, high_pct=100)
    assert (lo, hi) == (2**30, 2**30 + 200)
    np.testing.assert_allclose(normalize(img, lo, hi, mean=0.5, std=0.25)[0], np.arange(-2, 2.01, 0.5), atol=1e-6)
