"""The 3D engine end to end on synthetic volumes with known objects."""
import numpy as np
import pytest
import torch

from panoptem.errors import PanoptemError
from panoptem import evaluate
from panoptem.inference.segment3d import Cancelled, segment_3d, write_result
from panoptem.params import Params3D

from _models import dark_blob_model

BALLS = [(14, 24, 24), (14, 70, 30), (30, 40, 72), (34, 76, 76)]


def phantom(shape=(48, 100, 100), balls=BALLS, r=11):
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    vol = np.full(shape, 200, np.uint8)
    truth = np.zeros(shape, np.uint32)
    for i, (z, y, x) in enumerate(balls, 1):
        m = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < r * r
        vol[m] = 40
        truth[m] = i
    return vol, truth


P = dict(min_size=200, min_extent=3)


@pytest.mark.parametrize("plane", ["xy", "xz", "yz"])
def test_every_plane_finds_the_same_objects(plane):
    vol, truth = phantom()
    res = segment_3d(vol, dark_blob_model(), inference_plane=plane, batch_size=8, **P)
    lab = res.labels["mitochondria"]
    assert lab.shape == vol.shape and lab.dtype == np.uint32
    r = evaluate(lab, truth)
    assert r["n_pred"] == len(BALLS) and r["f1_50"] == 1.0
    assert r["foreground_iou"] > 0.8
    assert set(np.unique(lab)) == set(range(len(BALLS) + 1))  # ids 1..N


def test_tube_through_all_slices_is_one_object():
    vol = np.full((40, 64, 64), 200, np.uint8)
    yy, xx = np.mgrid[:64, :64]
    for z in range(40):  # a slanted tube
        vol[z][(yy - 20 - z // 2) ** 2 + (xx - 30) ** 2 < 100] = 30
    res = segment_3d(vol, dark_blob_model(), **P)
    lab = res.labels["mitochondria"]
    assert res.objects["mitochondria"] == 1
    assert (lab > 0).any(axis=(1, 2)).all()


def test_min_size_and_extent_filters():
    vol, truth = phantom(balls=[(20, 30, 30), (20, 70, 70)])
    # flatten the second ball into a 2-slice pancake
    vol[:, 50:, 50:] = 200
    vol[20:22, 60:80, 60:80] = 40
    res = segment_3d(vol, dark_blob_model(), min_size=200, min_extent=3, maximum_objects_per_class=0)
    assert res.objects["mitochondria"] == 1
    res = segment_3d(vol, dark_blob_model(), min_size=200, min_extent=1, maximum_objects_per_class=0)
    assert res.objects["mitochondria"] == 2
    res = segment_3d(vol, dark_blob_model(), min_size=10**6, min_extent=1)
    assert res.objects["mitochondria"] == 0


@pytest.mark.parametrize("fusion", ["consensus", "probability"])
def test_orthoplane_finds_the_objects(fusion):
    vol, truth = phantom()
    res = segment_3d(vol, dark_blob_model(), orthoplane=True, fusion=fusion, return_panoptic=True,
                     batch_size=16, **P)
    r = evaluate(res.labels["mitochondria"], truth)
    assert r["n_pred"] == len(BALLS) and r["f1_50"] == 1.0
    assert set(res.stacks) == ({"xy", "xz", "yz"} if fusion == "consensus" else {"xz", "yz"})


def test_cache_resumes_and_redecodes(tmp_path):
    vol, truth = phantom()
    calls = []

    def stop_early(plane, done, total):
        calls.append(done)
        return done < 16  # cancel after the 4th batch

    with pytest.raises(Cancelled):
        segment_3d(vol, dark_blob_model(), cache_dir=tmp_path, callback=stop_early, **P)
    assert calls == [4, 8, 12, 16]
    import zarr
    done = zarr.open_group(str(tmp_path / "xy.zarr"))["done"][:]
    assert done.sum() == 16
    full = segment_3d(vol, dark_blob_model(), cache_dir=tmp_path, **P)
    assert full.timings["network_s"] > 0  # the rest was computed
    fresh = segment_3d(vol, dark_blob_model(), **P)  # no cache at all
    np.testing.assert_array_equal(full.labels["mitochondria"], fresh.labels["mitochondria"])
    # re-decoding with other thresholds: no network, and the labels of a fresh run with them
    kw = dict(P, confidence_thr=0.9, center_confidence_thr=0.3, min_size=400)
    again = segment_3d(vol, dark_blob_model(), cache_dir=tmp_path, **kw)
    assert again.timings["network_s"] == 0  # everything from the cache
    changed = segment_3d(vol, dark_blob_model(), **kw).labels["mitochondria"]
    np.testing.assert_array_equal(again.labels["mitochondria"], changed)
    assert not np.array_equal(changed, fresh.labels["mitochondria"])  # the thresholds did change something
    # one edited voxel: only the batch holding that slice is computed again
    edited = vol.copy()
    edited[30, 5, 5] = 201
    calls = []
    net = dark_blob_model()
    orig = net.module.forward
    net.module.forward = lambda x: (calls.append(x.shape[0]), orig(x))[1]
    segment_3d(edited, net, cache_dir=tmp_path, **P)
    assert calls == [4]  # slices 28-31
    with pytest.raises(PanoptemError, match=r"different run \(input differs\)"):
        segment_3d(vol[:, :, :90].copy(), dark_blob_model(), cache_dir=tmp_path, **P)
    with pytest.raises(PanoptemError, match=r"different run \(tta differs\)"):
        segment_3d(vol, dark_blob_model(), cache_dir=tmp_path, tta=True, **P)


def test_write_result_single_class_and_stacks(tmp_path, monkeypatch):
    vol, _ = phantom()
    res = segment_3d(vol, dark_blob_model(), return_panoptic=True, **P)
    monkeypatch.chdir(tmp_path)
    out = write_result(res, "mito.tif", voxel_size=(5.0, 5.0, 5.0))
    assert sorted(p["output"] for p in out) == ["mito.tif", "mito_xy.tif"]  # named as given
    from panoptem.io import read_image
    back = read_image(tmp_path / "mito.tif")
    assert back.voxel_size == (5.0, 5.0, 5.0)
    assert (np.asarray(back.data) == res.labels["mitochondria"]).all()


def test_2d_input_is_refused():
    with pytest.raises(PanoptemError, match="ZYX"):
        segment_3d(np.zeros((64, 64), np.uint8), dark_blob_model())


@pytest.mark.parametrize("extra", [{}, {"orthoplane": True}, {"inference_plane": "xz", "median_slices": 1}])
def test_semantic_only_without_a_label_divisor_gives_the_class_segment(extra):
    """Semantic only and Max objects per class 0: the class's segment, as with a divisor, not
    its connected pieces numbered as objects (the label is the class id, 1)."""
    vol, _ = phantom()
    kw = dict(semantic_only=True, **P, **extra)
    plain = segment_3d(vol, dark_blob_model(), **kw)
    bare = segment_3d(vol, dark_blob_model(), maximum_objects_per_class=0, return_panoptic=True, **kw)
    assert np.unique(bare.labels["mitochondria"]).tolist() == [0, 1] and bare.objects == {"mitochondria": 1}
    np.testing.assert_array_equal(bare.labels["mitochondria"], plain.labels["mitochondria"])
    assert np.unique(bare.panoptic).tolist() == [0, 1]  # panoptic: the class id itself


@pytest.mark.parametrize("plane,ext,extra", [("xy", ".tif", {}), ("yz", ".zarr", {}),
                                             ("xy", ".zarr", {"maximum_objects_per_class": 0}),
                                             ("xy", ".tif", {"label_erosion": 2}),
                                             ("xy", ".tif", {"semantic_only": True}),
                                             ("xy", ".tif", {"semantic_only": True, "maximum_objects_per_class": 0})])
def test_streamed_output_equals_in_memory(tmp_path, monkeypatch, plane, ext, extra):
    import panoptem.inference.segment3d as s3
    monkeypatch.setattr(s3, "REMAP_BLOCK", 3)  # labels written in many blocks (three buffers in turn, halos)
    vol, truth = phantom()
    assert len(vol) > 2 * s3.REMAP_BLOCK
    mem = segment_3d(vol, dark_blob_model(), inference_plane=plane, **P, **extra)
    out = tmp_path / f"labels{ext}"
    st = segment_3d(vol, dark_blob_model(), inference_plane=plane, output=out, voxel_size=(5.0, 5.0, 5.0),
                    **P, **extra)
    assert st.streamed and out.exists()
    assert (np.asarray(st.labels["mitochondria"][:]) == mem.labels["mitochondria"]).all()
    assert st.objects == mem.objects
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no work files left behind
    with pytest.raises(PanoptemError, match="exists"):
        segment_3d(vol, dark_blob_model(), output=out, **P)


def test_cache_marks_slices_done_after_their_data_at_most_every_few_seconds(tmp_path, monkeypatch):
    """Completion marks are stored at the latest MARK_EVERY_S after the data (or at flush): a run
    killed before that computes those slices again, never trusts slices without data."""
    from panoptem.inference import cache as cache_mod
    from panoptem.inference.cache import OutputCache
    from panoptem.inference.predict import ModelOutput
    rng = np.random.default_rng(1)
    out = ModelOutput(rng.random((2, 1, 8, 8), np.float32), rng.random((2, 1, 2, 2), np.float32),
                      rng.random((2, 2, 2, 2), np.float32))
    hashes = np.arange(32, dtype=np.uint8).reshape(2, 16)

    def reopened():
        return OutputCache(tmp_path, "xy", 4, (1, 8, 8), (2, 2), {"k": 1}, chunk=2)

    monkeypatch.setattr(cache_mod, "MARK_EVERY_S", float("inf"))
    monkeypatch.setattr(cache_mod, "CHUNK_BYTES", 1)  # a chunk per batch of 2
    c = reopened()
    c.put(0, out, hashes)
    assert c.valid(0, hashes)  # this run knows: its data is stored
    assert not reopened().valid(0, hashes)  # a run after a kill does not: those slices are computed again
    c.flush()
    r = reopened()
    assert r.valid(0, hashes) and not r.done(2)
    np.testing.assert_allclose(r.get(0, 2).heatmap, out.heatmap, atol=1e-3)
    monkeypatch.setattr(cache_mod, "MARK_EVERY_S", 0.0)
    c.put(2, out, hashes)
    assert reopened().valid(2, hashes)
    # a chunk of several batches is stored when it is whole, or at flush
    monkeypatch.setattr(cache_mod, "CHUNK_BYTES", 10 ** 6)
    monkeypatch.setattr(cache_mod, "MARK_EVERY_S", float("inf"))
    big = OutputCache(tmp_path / "big", "xy", 6, (1, 8, 8), (2, 2), {"k": 1}, chunk=2)
    big.put(0, out, hashes)
    assert not big.valid(0, hashes)  # held until the chunk (the whole stack of 6) is ready
    big.flush()
    assert big.valid(0, hashes) and OutputCache(tmp_path / "big", "xy", 6, (1, 8, 8), (2, 2), {"k": 1}).valid(0, hashes)


def test_a_cache_killed_while_being_made_is_made_afresh(tmp_path):
    """Its arrays are made before its 'done' marks; a run killed between left some of them (a
    ContainsArrayError, told as an unreadable input, before)."""
    import zarr

    from panoptem.inference.cache import OutputCache
    g = zarr.open_group(str(tmp_path / "xy.zarr"), mode="a")
    g.create_array("probability", shape=(4, 1, 8, 8), dtype="uint8", fill_value=0)
    c = OutputCache(tmp_path, "xy", 4, (1, 8, 8), (2, 2), {"k": 1}, chunk=2)
    assert not c.done(0) and sorted(zarr.open_group(str(tmp_path / "xy.zarr")).keys()) == \
        ["done", "hash", "heatmap", "offsets", "probability"]


def test_cache_of_another_shape_is_refused_or_made_afresh(tmp_path):
    """A cache whose probability has another shape (an earlier release stored a multi-class
    network's without its last channel) is not read: refused, or made afresh where panoptem
    manages it; outputs with other channels than the cache's are refused."""
    from panoptem.inference.cache import OutputCache
    from panoptem.inference.predict import ModelOutput
    OutputCache(tmp_path, "xy", 4, (2, 8, 8), (2, 2), {"k": 1})
    with pytest.raises(PanoptemError, match="another shape"):
        OutputCache(tmp_path, "xy", 4, (3, 8, 8), (2, 2), {"k": 1})
    fresh = OutputCache(tmp_path, "xy", 4, (3, 8, 8), (2, 2), {"k": 1}, reset_stale=True)
    assert fresh.group["probability"].shape == (4, 3, 8, 8)
    two = ModelOutput(np.zeros((4, 2, 8, 8), np.float32), np.zeros((4, 1, 2, 2), np.float32),
                      np.zeros((4, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="2 channels for an array of 3"):
        fresh.put(0, two, np.zeros((4, 16), np.uint8))


@pytest.mark.parametrize("kind", ["instance", "semantic"])
def test_two_classes_come_back_from_the_network_cache(tmp_path, kind):
    """Every class's outputs are cached: a second run, whose network would fail, decodes the
    first run's labels from the cache alone."""
    from _models import two_class_card, two_class_model
    from panoptem.models.load import LoadedModel

    class Refuses(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the network ran")
    vol, _ = two_class_phantom()
    first = segment_3d(vol, two_class_model(kind), cache_dir=tmp_path / "c", batch_size=16, **P)
    again = segment_3d(vol, LoadedModel(two_class_card(kind), Refuses(), "cpu"), cache_dir=tmp_path / "c",
                       batch_size=16, **P)
    assert set(again.labels) == {"mitochondria", "nucleus"}
    for name, lab in first.labels.items():
        np.testing.assert_array_equal(np.asarray(again.labels[name]), np.asarray(lab))
        assert again.objects[name] == first.objects[name] > 0


def test_cache_chunk_holds_whole_batches():
    from panoptem.inference.cache import CHUNK_BYTES, chunk_planes
    assert chunk_planes(1, 165, 768 * 1024) == -(-CHUNK_BYTES // (768 * 1024))  # several planes a chunk
    assert chunk_planes(4, 165, 768 * 1024) % 4 == 0
    assert chunk_planes(4, 165, 3 * CHUNK_BYTES) == 4 and chunk_planes(4, 3, 10) == 3


def test_cache_chunks_per_batch_and_resumes_with_another_batch_size(tmp_path, monkeypatch):
    """The cache stores chunks of whole batches in one folder (here, with large planes in effect,
    one batch each); a run resumed with another batch size writes across those chunks and keeps
    what was done."""
    from panoptem.inference import cache as cache_mod
    monkeypatch.setattr(cache_mod, "CHUNK_BYTES", 1)
    vol, _ = phantom()
    with pytest.raises(Cancelled):
        segment_3d(vol, dark_blob_model(), cache_dir=tmp_path, batch_size=4,
                   callback=lambda plane, done, total: done < 8, **P)
    prob = tmp_path / "xy.zarr" / "probability"
    chunks = [f for f in prob.iterdir() if f.name != "zarr.json"]  # all-zero chunks are not stored
    assert all(f.is_file() for f in chunks) and "1.0.0.0" in {f.name for f in chunks} <= {"0.0.0.0", "1.0.0.0"}
    calls = []
    net = dark_blob_model()
    orig = net.module.forward
    net.module.forward = lambda x: (calls.append(x.shape[0]), orig(x))[1]
    resumed = segment_3d(vol, net, cache_dir=tmp_path, batch_size=3, **P)
    # slices 0-5 (two whole batches of 3) came from the cache; a batch of blank slices needs no network
    blank = (vol == 200).all(axis=(1, 2))
    assert sum(calls) == sum(3 for k in range(6, len(vol), 3) if not blank[k:k + 3].all()) > 0
    fresh = segment_3d(vol, dark_blob_model(), **P)
    np.testing.assert_array_equal(resumed.labels["mitochondria"], fresh.labels["mitochondria"])
    again = segment_3d(vol, dark_blob_model(), cache_dir=tmp_path, batch_size=5, **P)
    assert again.timings["network_s"] == 0
    np.testing.assert_array_equal(again.labels["mitochondria"], fresh.labels["mitochondria"])


def test_spill_stack_reads_blocks_as_written_and_widens(tmp_path):
    """The streamed run's provisional ids on disk: slices in any order (and again), read back
    as Z blocks of xy slices or as row blocks of xz / yz slices, across and inside the
    compressed strips; unwritten slices read 0; wider ids widen what is read."""
    from panoptem.inference import spill
    from panoptem.inference.spill import SpillStack
    rows = 2 * spill.STRIP + 5  # two whole strips and a short one
    ref = np.random.default_rng(0).integers(1, 2**32 - 1, (6, rows, 7), dtype=np.uint64).astype(np.uint32)
    ref[:, 10:40] = 0  # background, as label slices mostly are
    s = SpillStack(tmp_path / "p.raw", ref.shape, np.uint32)
    s[1] = ref[0]
    for i in (4, 0, 2, 1, 3):
        s[i] = ref[i]
    ref[5] = 0
    np.testing.assert_array_equal(s[0:6], ref)
    np.testing.assert_array_equal(s[2:9], ref[2:])
    for r0, r1 in ((1, 3), (0, spill.STRIP), (spill.STRIP - 3, 2 * spill.STRIP + 2), (rows - 4, rows + 9)):
        np.testing.assert_array_equal(s[:, r0:r1], ref[:, r0:r1])
    np.testing.assert_array_equal(s[3], ref[3])
    buf = np.full((4, rows, 7), 9, np.uint32)  # one buffer, block after block
    for a, b in ((1, 4), (4, 6), (0, 4)):
        got = s.read(a, b, out=buf)
        assert np.shares_memory(got, buf)
        np.testing.assert_array_equal(got, ref[a:b])
    assert not np.shares_memory(s.read(0, 2, out=buf.astype(np.uint64)), buf)  # not its dtype: a new array
    wide = ref[5].astype(np.uint64) + 2**40
    s[5] = wide
    assert s.dtype == np.uint64 and s[0:6].dtype == np.uint64
    np.testing.assert_array_equal(s[5], wide)
    np.testing.assert_array_equal(s[:, 0:rows][:5], ref[:5])
    np.testing.assert_array_equal(s[:, 30:70][:5], ref[:5, 30:70])
    assert (tmp_path / "p.raw").stat().st_size < ref.nbytes  # stored compressed
    with pytest.raises(TypeError, match="reads"):
        s[::2]


@pytest.mark.parametrize("fusion", [None, "probability"])
def test_downsampled_3d_keeps_objects_in_place(fusion):
    vol, truth = phantom(shape=(48, 128, 128), balls=[(14, 30, 30), (30, 90, 40), (24, 60, 96)], r=14)
    kw = dict(orthoplane=True, fusion=fusion) if fusion else {}
    res = segment_3d(vol, dark_blob_model(), downsampling=2, batch_size=8, **kw, **P)
    r = evaluate(res.labels["mitochondria"], truth)
    assert r["n_pred"] == 3 and r["f1_75"] == 1.0 and r["foreground_iou"] > 0.75


def two_class_phantom(shape=(48, 100, 100)):
    """BALLS alternately dark (class 1) and grey (class 2); truth per class, ids 1..2."""
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    vol = np.full(shape, 200, np.uint8)
    truth = {1: np.zeros(shape, np.uint32), 2: np.zeros(shape, np.uint32)}
    for i, (z, y, x) in enumerate(BALLS):
        m = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < 121
        cls = 1 + i % 2
        vol[m] = 40 if cls == 1 else 120
        truth[cls][m] = i // 2 + 1
    return vol, truth


@pytest.mark.parametrize("kind,orthoplane", [("instance", False), ("instance", True), ("semantic", False)])
def test_two_classes_end_to_end(kind, orthoplane):
    from _models import two_class_model
    vol, truth = two_class_phantom()
    res = segment_3d(vol, two_class_model(kind), orthoplane=orthoplane, batch_size=16, **P)
    assert set(res.labels) == {"mitochondria", "nucleus"}
    mito = res.labels["mitochondria"]
    assert res.objects["mitochondria"] == 2 and set(np.unique(mito)) == {0, 1, 2}
    assert evaluate(mito, truth[1])["f1_50"] == 1.0
    assert (np.asarray(mito) > 0).sum() > 0 and not ((mito > 0) & (truth[2] > 0)).any()  # classes kept apart
    nuc = res.labels["nucleus"]
    if kind == "instance":
        assert res.objects["nucleus"] == 2 and evaluate(nuc, truth[2])["f1_50"] == 1.0
        assert set(np.unique(res.panoptic)) == {0, 10001, 10002, 20001, 20002}
    else:  # a semantic class: one 0/1 mask, painted as class * divisor in the panoptic volume
        assert res.objects["nucleus"] == 1 and nuc.dtype == np.uint8 and set(np.unique(nuc)) == {0, 1}
        assert evaluate(nuc, truth[2] > 0)["foreground_iou"] > 0.85
        assert set(np.unique(res.panoptic)) == {0, 10001, 10002, 20000}


def slanted_tube(n=16, step=6, r=10, width=140):
    """A tube that moves ``step`` pixels along x per slice: neighbouring slices overlap with
    IoU about 0.45 and IoA (overlap / own area) about 0.65."""
    vol = np.full((n, 48, width), 200, np.uint8)
    yy, xx = np.mgrid[:48, :width]
    for z in range(n):
        vol[z][(yy - 24) ** 2 + (xx - 15 - step * z) ** 2 < r * r] = 40
    return vol


@pytest.mark.parametrize("iou_thr,ioa_thr,expect", [
    (0.25, 0.25, 1),    # defaults: one tube
    (0.3, 0.95, 1),     # linked by one-to-one IoU matches alone
    (0.6, 0.95, 16),    # IoU too low and IoA too strict: every slice its own object
    (0.95, 0.5, 1),     # no IoU match, but joined by IoA
    (0.95, 0.8, 16),    # neither
])
def test_link_thresholds_through_segment_3d(iou_thr, ioa_thr, expect):
    res = segment_3d(slanted_tube(), dark_blob_model(), iou_thr=iou_thr, ioa_thr=ioa_thr, median_slices=1,
                     min_size=100, min_extent=1, maximum_objects_per_class=0)
    assert res.objects["mitochondria"] == expect


@pytest.mark.parametrize("bridge_gaps,expect", [(0, 2), (1, 1)])
def test_bridge_gaps_through_segment_3d(bridge_gaps, expect):
    vol = slanted_tube(n=30, step=0, width=64)
    vol[15] = 200  # the tube is missing in one slice
    res = segment_3d(vol, dark_blob_model(), bridge_gaps=bridge_gaps, median_slices=1, **P)
    assert res.objects["mitochondria"] == expect
    lab = res.labels["mitochondria"]
    assert not lab[15].any() and lab[14].max() == lab[0].max() and (lab[16].max() == lab[14].max()) == (expect == 1)


def test_one_class_labels_in_one_pass_match_the_panoptic_path():
    """A single-class run renumbers its linked ids in the one relabelling pass; the labels and
    the panoptic volume (made on first use) equal those of the general path."""
    from panoptem.inference.segment3d import split_classes
    vol, truth = phantom()
    fast = segment_3d(vol, dark_blob_model(), **P)
    full = segment_3d(vol, dark_blob_model(), return_panoptic=True, **P)  # the general path
    assert callable(fast._panoptic)  # not made yet
    assert fast.objects == full.objects == {"mitochondria": len(BALLS)}
    np.testing.assert_array_equal(fast.labels["mitochondria"], full.labels["mitochondria"])
    assert fast.labels["mitochondria"].dtype == full.labels["mitochondria"].dtype
    np.testing.assert_array_equal(fast.panoptic, full.panoptic)
    div = Params3D(**P).label_divisor
    assert fast.panoptic.min() == 0 and fast.panoptic.max() > div  # class * divisor + n
    labels, counts = split_classes(fast.panoptic, dark_blob_model().card, div)
    np.testing.assert_array_equal(labels["mitochondria"], fast.labels["mitochondria"])


def test_orthoplane_consensus_of_local_ids_matches_the_panoptic_path():
    """A single-class ortho-plane run hands its stacks to the consensus as local ids with
    the linking's ids and voxel counts; the labels equal those of the panoptic path."""
    from panoptem.inference.consensus import orthoplane_consensus
    from panoptem.labels import compact
    vol, truth = phantom()
    fast = segment_3d(vol, dark_blob_model(), orthoplane=True, batch_size=8, **P)
    full = segment_3d(vol, dark_blob_model(), orthoplane=True, batch_size=8, return_panoptic=True, **P)
    assert fast.objects == full.objects == {"mitochondria": len(BALLS)}
    np.testing.assert_array_equal(fast.labels["mitochondria"], full.labels["mitochondria"])
    np.testing.assert_array_equal(fast.panoptic, full.panoptic)  # made on demand for the fast path
    assert fast.panoptic.dtype == full.panoptic.dtype
    stacks = [full.stacks[p] for p in ("xy", "xz", "yz")]
    kw = dict(label_divisor=Params3D(**P).label_divisor, min_size=200, min_extent=3)
    np.testing.assert_array_equal(orthoplane_consensus(None, compacted=[compact(s, return_counts=True)
                                                                        for s in stacks], **kw),
                                  orthoplane_consensus(stacks, **kw))


def test_cache_precision_is_bytes_and_half_floats():
    """Outputs are decoded at the cache's precision: probabilities rounded to 1/255 (halves to
    even), heatmap and offsets through float16, all read back as float32."""
    from panoptem.inference.cache import at_cache_precision
    from panoptem.inference.predict import ModelOutput
    rng = np.random.default_rng(5)
    prob = rng.random((2, 1, 9, 11), dtype=np.float32)
    prob.flat[:4] = [0.0, 1.0, np.float32(0.5 / 255), np.float32(2.5 / 255)]
    hm, off = rng.random((2, 1, 3, 3), dtype=np.float32), rng.normal(0, 9, (2, 2, 3, 3)).astype(np.float32)
    got = at_cache_precision(ModelOutput(prob, hm, off))
    want = np.round(prob * 255).astype(np.uint8).astype(np.float32) / np.float32(255)
    assert got.semantic_probability.dtype == np.float32
    np.testing.assert_array_equal(got.semantic_probability, want)
    np.testing.assert_array_equal(got.heatmap, hm.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(got.offsets, off.astype(np.float16).astype(np.float32))


def test_probability_bytes_round_and_never_wrap():
    """The cache's bytes are round(p x 255); a value just past 1 (or below 0) clips instead of
    wrapping around uint8, and the stored bytes read back as at_cache_precision's values."""
    from panoptem.inference.cache import _dequantize, _quantize, at_cache_precision, probability_bytes
    from panoptem.inference.predict import ModelOutput
    p = np.array([0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 1.01, -0.01], np.float32)
    np.testing.assert_array_equal(probability_bytes(p), [0, 0, 2, 128, 255, 255, 0])
    rng = np.random.default_rng(2)
    out = ModelOutput(rng.random((2, 1, 5, 6), dtype=np.float32), rng.random((2, 1, 2, 2), dtype=np.float32),
                      rng.random((2, 2, 2, 2), dtype=np.float32))
    back, stored = _quantize(out)
    read, direct = _dequantize(*stored), at_cache_precision(out)
    for f in ("semantic_probability", "heatmap", "offsets"):
        np.testing.assert_array_equal(getattr(back, f), getattr(direct, f))
        np.testing.assert_array_equal(getattr(read, f), getattr(direct, f))


@pytest.mark.parametrize("halo", [0, 1])
def test_relabelling_blocks_are_bounded_in_bytes_and_read_ahead(tmp_path, monkeypatch, halo):
    """Spilled ids are relabelled in blocks of at most REMAP_BYTES (less twice the halo); with
    the blocks read ahead in a thread and their buffers reused, every slice lands where it belongs."""
    import panoptem.inference.segment3d as s3
    from panoptem.inference.spill import SpillStack
    from panoptem.params import Params3D
    rng = np.random.default_rng(0)
    ids = np.zeros((23, 16, 20), np.uint32)
    ids[:, 4:12, 5:15] = rng.integers(1, 6, (23, 8, 10))
    spill = SpillStack(tmp_path / "ids.raw", ids.shape, np.uint32)
    for i, plane in enumerate(ids):
        spill[i] = plane
    mapping = np.array([0, 7, 7, 9, 11, 12])
    monkeypatch.setattr(s3, "REMAP_BYTES", 7 * 16 * 20 * 4)  # 7 planes of ids

    class Writer(dict):
        def __setitem__(self, key, value):
            super().__setitem__((key.start, key.stop), np.array(value))

    w = Writer()
    params = Params3D(label_dilation=halo) if halo else None
    s3._remap_to_writer(spill, mapping, 0, w, ids.shape, params, objects=4)
    step = 7 - 2 * halo
    assert [b - a for a, b in sorted(w)] == [min(step, 23 - z) for z in range(0, 23, step)]
    got = np.concatenate([w[k] for k in sorted(w)])
    want = mapping[ids]
    if halo:
        from panoptem.inference.postprocess import postprocess_labels
        want = postprocess_labels(want, 0, halo, False)
    assert (got == want).all()


@pytest.mark.parametrize("extra", [{}, {"orthoplane": True, "allow_one_view": True}])
def test_an_object_erosion_removes_leaves_its_number_unused_in_memory_and_streamed(tmp_path, extra):
    """Erode labels can remove a thin object; the others keep their numbers, in memory as in a
    streamed (or blockwise) run, which write each block as it comes."""
    vol, _ = phantom()
    vol[4, 2:16, 40:90] = 40  # a one-slice plate before the balls (numbered first): eroded away in 3D
    kw = dict(min_size=0, min_extent=0, median_slices=1, label_erosion=1, **extra)
    before = segment_3d(vol, dark_blob_model(), **{**kw, "label_erosion": 0}).labels["mitochondria"]
    plate = int(before[4, 8, 65])
    mem = segment_3d(vol, dark_blob_model(), **kw)
    lab = mem.labels["mitochondria"]
    assert plate > 0 and plate not in lab and plate < lab.max()  # its number is not given to another
    assert mem.objects["mitochondria"] == len(np.unique(lab)) - 1 == len(np.unique(before)) - 2
    if not extra:
        st = segment_3d(vol, dark_blob_model(), output=tmp_path / "l.tif", **kw)
        np.testing.assert_array_equal(np.asarray(st.labels["mitochondria"][:]), lab)
        assert st.objects == mem.objects


@pytest.mark.parametrize("kw", [dict(inference_plane="xz"), dict(inference_plane="yz"),
                                dict(orthoplane=True), dict(orthoplane=True, fusion="probability"),
                                dict(inference_plane="yz", output="out.zarr"),
                                # a network row covers the blank section and the next: still nothing on it
                                dict(inference_plane="xz", downsampling=2),
                                dict(orthoplane=True, fusion="probability", downsampling=2)])
@pytest.mark.parametrize("fill", [0, 200])
def test_xz_yz_and_orthoplane_find_nothing_on_a_blank_section(tmp_path, kw, fill):
    """A blank (or grey-filled) section seen edge-on by the xz and yz stacks was one dark row of
    each plane: objects were painted across it (an xy stack finds nothing on a plane of one
    value). Objects away from it are found as before."""
    vol, truth = phantom()
    blank = vol.copy()
    blank[14] = fill                                   # through balls 1 and 2
    if "output" in kw:
        kw = {**kw, "output": tmp_path / kw["output"]}
    lab = np.asarray(segment_3d(blank, dark_blob_model(), batch_size=16, **P, **kw).labels["mitochondria"][:])
    assert not lab[14].any()
    ref = segment_3d(vol, dark_blob_model(), batch_size=16, **P, **{k: v for k, v in kw.items() if k != "output"})
    far = np.zeros(vol.shape, bool)
    far[24:] = True                                    # balls 3 and 4 (z 30, 34; radius 11)
    ref_far = ref.labels["mitochondria"] * far
    assert evaluate(lab * far, ref_far)["f1_50"] == 1.0 and evaluate(lab * far, ref_far)["foreground_iou"] > 0.99


def test_blank_sections_and_their_rows_on_a_coarser_network_grid():
    from panoptem.inference.predict import ModelOutput
    from panoptem.inference.segment3d import clear_rows, sections_edge_on
    vol = np.random.default_rng(0).integers(1, 255, (6, 40, 40)).astype(np.uint8)
    assert sections_edge_on(vol) == (None, False)
    vol[2], vol[3], vol[5] = 0, 7, 9
    blank, padded = sections_edge_on(vol, chunk=4)
    assert blank.tolist() == [False, False, True, True, False, True] and padded  # section 2 is all zero
    out = ModelOutput(np.ones((2, 1, 3, 8), np.float32), np.ones((2, 1, 1, 2), np.float32),
                      np.zeros((2, 2, 1, 2), np.float32))
    cleared = clear_rows(out, blank, 2)   # network row r covers sections 2r, 2r + 1
    assert cleared.semantic_probability[0, 0, :, 0].tolist() == [1.0, 0.0, 1.0]


def test_stack_padding_takes_a_band_the_thin_planes_cannot_tell_from_the_sections():
    from panoptem.inference.preprocess import padding_mask
    from panoptem.inference.segment3d import sections_edge_on, stack_padding
    vol = np.random.default_rng(1).integers(1, 255, (5, 90, 70)).astype(np.uint8)
    vol[:, :, :36] = 0            # a frame 36 columns wide, in a volume 5 sections deep
    vol[:, 50:60, 40:45] = 0      # a dark spot: not padding
    assert sections_edge_on(vol) == (None, True)
    xz = np.moveaxis(vol, 1, 0)   # (Y, Z, X) planes of 5 rows: too thin for the window themselves
    assert padding_mask(xz) is None
    pad = stack_padding(vol, 1, 10, 60)
    assert pad.shape == (50, 5, 70) and pad[..., :36].all() and not pad[..., 36:].any()
    yz = stack_padding(vol, 2, 30, 50)          # yz planes 30..49: 30..35 in the frame, all padding
    assert yz.shape == (20, 5, 90) and yz[:6].all() and not yz[6:].any()
    means = stack_padding(vol, 2, 17, 25, stride=2)  # planes 34..49 in pairs: (34, 35) padding, (36, 37) not
    assert means.shape == (8, 5, 90) and means[0].all() and not means[1:].any()
    assert stack_padding(vol, 2, 38, 60) is None   # the dark spot is no padding


@pytest.mark.parametrize("factor", [1, 2, 3, 4, "1/4", "3/2"])
def test_clear_rows_clears_a_network_row_only_where_all_its_sections_are_blank(factor):
    """Row j of the network covers sections [j f, (j + 1) f): with a depth that is not a multiple
    of f, rows were taken as depth / rows sections each, leaving blank sections with objects and
    clearing rows over content."""
    from fractions import Fraction
    from math import ceil, floor

    from panoptem.inference.predict import ModelOutput
    from panoptem.inference.segment3d import clear_rows
    f = Fraction(factor)
    for z in range(1, 10):
        h = ceil(z / f)
        for bits in range(1 << z):
            rows = np.array([(bits >> i) & 1 for i in range(z)], bool)
            out = ModelOutput(np.ones((1, 1, h, 4), np.float32), np.ones((1, 1, -(-h // 4), 1), np.float32),
                              np.zeros((1, 2, -(-h // 4), 1), np.float32))
            got = clear_rows(out, rows, f).semantic_probability[0, 0, :, 0] == 0
            want = [rows[floor(j * f):max(min(ceil((j + 1) * f), z), floor(j * f) + 1)].all() for j in range(h)]
            assert got.tolist() == want, (z, bits)


@pytest.mark.parametrize("depth", [9, 11])
def test_a_downsampled_xz_run_finds_nothing_on_a_last_blank_section_of_an_odd_depth(depth):
    vol, _ = phantom(shape=(depth, 64, 64), balls=[(depth - 3, 30, 30)], r=8)
    vol[-1] = 120
    lab = segment_3d(vol, dark_blob_model(), inference_plane="xz", downsampling=2, min_size=0,
                     min_extent=1).labels["mitochondria"]
    assert lab[:-1].any() and not lab[-1].any()


def test_a_cache_missing_some_arrays_is_made_afresh_or_refused(tmp_path):
    """A cache whose hashes were removed (a folder half deleted) raised a raw KeyError."""
    import shutil
    vol, _ = phantom(shape=(8, 64, 64), balls=[(4, 30, 30)], r=8)
    ref = segment_3d(vol, dark_blob_model(), output=tmp_path / "o.tif", keep_cache=True, min_size=0, min_extent=1)
    cache = tmp_path / ".o.tif.panoptem-cache"
    shutil.rmtree(cache / "xy.zarr" / "hash")
    again = segment_3d(vol, dark_blob_model(), output=tmp_path / "o.tif", overwrite=True, min_size=0, min_extent=1)
    assert (again.labels["mitochondria"][:] == ref.labels["mitochondria"][:]).all()
    segment_3d(vol, dark_blob_model(), cache_dir=tmp_path / "mine", keep_cache=True, min_size=0, min_extent=1)
    shutil.rmtree(tmp_path / "mine" / "xy.zarr" / "hash")
    with pytest.raises(PanoptemError, match="some of its arrays are missing"):
        segment_3d(vol, dark_blob_model(), cache_dir=tmp_path / "mine", min_size=0, min_extent=1)


@pytest.mark.parametrize("plane, voxel_size, b, iou", [("xz", None, 48, 0.99), ("yz", (5.0, 5.0, 5.0), 48, 0.99),
                                                   ("xz", (12.0, 12.0, 12.0), 60, 0.9)])
def test_xz_and_yz_stacks_of_a_thin_framed_volume_take_the_frame_from_the_sections(plane, voxel_size, b, iou):
    """The xz / yz planes of a volume of fewer sections than the padding window cannot tell a
    frame themselves: they take it from the xy sections, and find what the unframed volume gives
    (foreground IoU 0.74 / 0.85 and objects all over the frame before, on 20 Lucchi sections).
    Told 5 nm, network pixels of 2 x 2 and planes of two sections' means; told 12 nm, the planes
    and their padding are resampled by 5 / 6 (a fraction: the xy stack itself gives 0.96 there)."""
    import panoptem
    img = panoptem.load_sample()[:20]
    framed = np.zeros((len(img), img.shape[1] + 2 * b, img.shape[2] + 2 * b), np.uint8)
    framed[:, b:-b, b:-b] = img
    kw = dict(device="cpu", inference_plane=plane, voxel_size=voxel_size)
    ref = panoptem.segment_3d(img, **kw).labels["mitochondria"] > 0
    got = panoptem.segment_3d(framed, **kw).labels["mitochondria"]
    inside = got[:, b:-b, b:-b] > 0
    assert ref.sum() > 10_000
    assert np.count_nonzero(got) == np.count_nonzero(inside)  # nothing in the frame
    assert (ref & inside).sum() / (ref | inside).sum() > iou
