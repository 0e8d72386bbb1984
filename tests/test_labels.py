"""The label toolkit, and tile-wise decoding built from the one-pass decoder's parts."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptem.errors import PanoptemError
from panoptem.inference.decode import decode_panoptic
from panoptem.inference.large2d import decode_large
from panoptem.labels import as_labels, class_map, filter_objects, map_ids, number_per_class, overlap_table


def test_filter_objects_boundary_and_removed_ids():
    lab = np.zeros((6, 8), np.uint16)
    lab[0:2, 0:2] = 3          # touches the border
    lab[2:4, 3:5] = 5          # inside, 4 px
    lab[4, 6] = 9              # inside, 1 px
    out, removed = filter_objects(lab, min_size=2, min_extent=0, boundary=True, return_removed=True)
    assert removed.tolist() == [3, 9] and np.unique(out).tolist() == [0, 5] and out.dtype == np.uint16
    assert filter_objects(lab, min_size=0, min_extent=0).tolist() == lab.tolist()
    # stuff (class * divisor) stays with a divisor, even when it touches the border
    lab[5, 0:3] = 1000
    assert 1000 in filter_objects(lab, 2, 0, label_divisor=1000, boundary=True)


def test_number_per_class_refuses_too_many_objects():
    cls = np.array([1, 1, 1, 2])
    assert number_per_class(cls, np.ones(4, bool), 4).tolist() == [5, 6, 7, 9]
    with pytest.raises(PanoptemError, match="3 objects of class 1 do not fit under Max objects per class = 3"):
        number_per_class(cls, np.ones(4, bool), 3)


def test_class_map_and_as_labels():
    assert class_map(np.array([[0, 2001, 3005]]), 1000).tolist() == [[0, 2, 3]]
    assert class_map(np.array([[0, 2001, 3005]]), None).tolist() == [[0, 1, 1]]
    assert as_labels(np.array([[1.0, 0.0]])).dtype.kind == "u"
    for bad, match in ((np.array([[0.5]]), "fractional"), (np.array([[-1]]), "negative"), (np.zeros(3), "dimensions"),
                       (np.array([[np.inf]]), "infinity"), (np.array([[-1.0]]), "negative"),
                       (np.array([[2.0 ** 64]]), "2\\*\\*64 or more")):
        with pytest.raises(PanoptemError, match=match):
            as_labels(bad)
    big = as_labels(np.array([[0.0, 1e19]]))              # a whole float past 2**63: not "negative"
    assert big.dtype == np.uint64 and int(big[0, 1]) == int(1e19)


def _three_class_outputs(seed=0):
    """Hand-made outputs of a 3-channel model (background, class 1 thing, class 2 stuff) on a
    160 x 224 input: blobs of class 1 with their centres, a band of class 2."""
    rng = np.random.default_rng(seed)
    H, W, s = 160, 224, 4
    yy, xx = np.mgrid[:H, :W]
    prob = np.zeros((3, H, W), np.float32)
    prob[0] = 1.0
    centres = [(int(rng.integers(12, H - 12)), int(rng.integers(12, W - 12))) for _ in range(14)]
    hm = np.zeros((H // s, W // s), np.float32)
    for y, x in centres:
        m = (yy - y) ** 2 + (xx - x) ** 2 < 100
        prob[:, m] = np.array([0.0, 1.0, 0.0])[:, None]
        hm[y // s, x // s] = max(hm[y // s, x // s], 0.5 + rng.random() / 2)
    band = (yy > 120) & (yy < 140) & (prob[1] == 0)
    prob[:, band] = np.array([0.1, 0.0, 0.9])[:, None]
    gy, gx = np.mgrid[:H // s, :W // s] * s + (s - 1) / 2
    ctr = np.array(centres, np.float32)
    d = (gy[..., None] - ctr[:, 0]) ** 2 + (gx[..., None] - ctr[:, 1]) ** 2
    near = ctr[d.argmin(-1)]
    off = np.stack([near[..., 0] - gy, near[..., 1] - gx]).astype(np.float32)
    return prob, hm[None], off


@pytest.mark.parametrize("fine,div", [(False, 1000), (True, 1000), (False, None)])
def test_decode_large_equals_decode_panoptic_with_things_and_stuff(fine, div):
    prob, hm, off = _three_class_outputs()
    if div is None:  # ids 1..N: no stuff class (its label would be its class id, like an object's)
        prob = np.stack([prob[0] + prob[2], prob[1]])
    classes = [1, 2] if div else [1]
    kw = dict(class_ids=classes, thing_ids=[1], label_divisor=div, fine_boundaries=fine)
    one = decode_panoptic(prob, hm, off, **kw)
    tiled = decode_large(np.round(prob * 255).astype(np.uint8), hm, off, prob.shape[-2:], tile=48, **kw)
    ref = decode_panoptic(np.round(prob * 255).astype(np.float32) / 255, hm, off, **kw)
    assert (one == ref).all()  # the uint8 rounding changes nothing here
    if div:  # (without a divisor the stuff label is the class id, which an object may have too)
        assert (tiled == 2000).sum() == (one == 2000).sum() > 0
        things = np.unique(one[one % div > 0])
        assert len(things) > 5
    # the same objects (ids may differ: tiles number pieces in another order), of the same classes
    pairs = np.unique(np.stack([one.ravel(), tiled.ravel()]), axis=1)
    assert len(pairs[0]) == len(np.unique(one)) == len(np.unique(tiled))
    assert ((pairs[0] == 0) == (pairs[1] == 0)).all()
    if div:
        assert (one // div == tiled // div).all()
        assert sorted(np.unique(tiled[tiled % div > 0])) == list(range(1001, 1001 + len(things)))


@pytest.mark.parametrize("scale,fine,tile", [((Fraction(3, 2), Fraction(3, 2)), False, 48),
                                             ((Fraction(3, 2), Fraction(4, 3)), True, 37),
                                             ((Fraction(2, 3), Fraction(5, 7)), False, 29),
                                             ((Fraction(2), Fraction(2)), False, 64)])
def test_decode_large_of_a_resampled_plane_equals_decode_panoptic(scale, fine, tile):
    """A plane resampled for the network (output pixels per network pixel a fraction, or
    enlarged / shrunk) is decoded tile by tile on the input's grid as a whole-plane decoding
    does: the same pixels in the same objects of the same classes, not labels on the network's
    grid brought back by nearest neighbour."""
    prob, hm, off = _three_class_outputs(seed=3)
    prob8 = np.round(prob * 255).astype(np.uint8)
    shape = tuple(int(n * s) for n, s in zip(prob.shape[-2:], scale))
    kw = dict(class_ids=[1, 2], thing_ids=[1], label_divisor=1000, fine_boundaries=fine)
    one = decode_panoptic(prob8.astype(np.float32) / 255, hm, off, out_shape=shape, scale=scale, **kw)
    tiled = decode_large(prob8, hm, off, shape, tile=tile, scale=scale, **kw)
    assert tiled.shape == one.shape == shape
    assert ((one > 0) == (tiled > 0)).all() and (one // 1000 == tiled // 1000).all()
    pairs = np.unique(np.stack([one.ravel(), tiled.ravel()]), axis=1)
    assert len(pairs[0]) == len(np.unique(one)) == len(np.unique(tiled)) > 8


@settings(derandomize=True, database=None, deadline=None, max_examples=60)
@given(num=st.integers(1, 9), den=st.integers(1, 9), h=st.integers(3, 40), w=st.integers(3, 40),
       box=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)))
def test_a_crop_of_a_resized_plane_is_computed_from_a_crop(num, den, h, w, box):
    """Any rows and columns of a plane resampled by a fraction (either way), computed from a
    crop in phase with the whole plane, equal the whole plane's resampling there, edges included."""
    from panoptem.inference.large2d import _crop_resized
    from panoptem.inference.resample import resize_at
    s = Fraction(num, den)
    a = np.random.default_rng(num * 100 + den).random((2, h, w)).astype(np.float32)
    H, W = max(1, int(h * s)), max(1, int(w * s))
    r0, c0 = int(box[0] * (H - 1)), int(box[1] * (W - 1))
    r1, c1 = r0 + 1 + int(box[2] * (H - 1 - r0)), c0 + 1 + int(box[3] * (W - 1 - c0))
    whole = resize_at(a, (1 / s, 1 / s), (H, W))
    np.testing.assert_array_equal(_crop_resized(a, r0, r1, c0, c1, (s, s)), whole[:, r0:r1, c0:c1])


def test_object_stats_same_for_small_and_large_ids():
    # small ids are counted directly, large ones after compacting: the same objects either way
    from panoptem.labels import map_ids, object_stats
    rng = np.random.default_rng(0)
    small = rng.integers(0, 6, (5, 9, 11)).astype(np.uint32)
    large = map_ids(small, np.arange(1, 6), (np.arange(1, 6) + (1 << 25)), np.uint32)
    ids_s, vox_s, box_s = object_stats(small)
    ids_l, vox_l, box_l = object_stats(large)
    assert ids_s.tolist() == [1, 2, 3, 4, 5] and (ids_l == ids_s + (1 << 25)).all()
    assert (vox_s == vox_l).all() and (box_s == box_l).all()
    assert vox_s.tolist() == [int((small == i).sum()) for i in range(1, 6)]
    with pytest.raises(PanoptemError):
        object_stats(np.array([[0, -1]]))


@pytest.mark.parametrize("shape", [(4, 64, 64), (8, 512, 640)])   # counted with bincount / with fastremap
def test_compact_numbers_ids_in_order_at_any_size(shape):
    from panoptem.labels import SMALL_ARRAY, compact
    rng = np.random.default_rng(0)
    lab = rng.choice(np.array([0, 0, 0, 7, 10003, 10001, 65], np.uint32), size=shape)
    assert (lab.size > SMALL_ARRAY) == (shape[1] > 64)
    local, ids, counts = compact(lab, return_counts=True)
    u, inv, c = np.unique(lab, return_inverse=True, return_counts=True)
    assert ids.tolist() == [7, 65, 10001, 10003] and counts.tolist() == c[1:].tolist()
    assert local.dtype == np.int32 and np.array_equal(local, inv.reshape(shape))


@pytest.mark.parametrize("shape", [(7, 5, 6), (3, 40), (1, 9, 9)])
def test_lookup_in_threads_equals_the_plain_gather(monkeypatch, shape):
    import panoptem.labels as labels_mod
    from panoptem.inference import runtime
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 50, shape).astype(np.uint32)
    lut = rng.integers(0, 2**40, 50).astype(np.uint64)
    monkeypatch.setattr(labels_mod, "THREADED_LOOKUP", 1)  # every array this size takes the chunked path
    monkeypatch.setattr(runtime, "cpu_count", lambda: 3)
    out = labels_mod.lookup(lut, lab)
    assert out.dtype == np.uint64 and out.shape == lab.shape
    np.testing.assert_array_equal(out, lut[lab])


@pytest.mark.parametrize("threads", [1, 3])
def test_lookup_in_place_in_pieces_that_split_planes(monkeypatch, threads):
    """The labels as their own output (an xy stack relabelled over its provisional ids), in
    pieces smaller than a plane and not aligned with its rows."""
    import panoptem.labels as labels_mod
    from panoptem.inference import runtime
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 50, (6, 13, 17)).astype(np.uint32)
    lut = rng.integers(0, 2**31, 50).astype(np.uint32)
    want = lut[stack]
    monkeypatch.setattr(labels_mod, "THREADED_LOOKUP", 1)
    monkeypatch.setattr(labels_mod, "LOOKUP_PIECE", 29)
    monkeypatch.setattr(runtime, "cpu_count", lambda: threads)
    assert labels_mod.lookup(lut, stack, out=stack) is stack
    np.testing.assert_array_equal(stack, want)


@pytest.mark.parametrize("threads", [1, 3])
def test_lookup_into_a_transposed_view_fills_the_volume_in_its_own_order(monkeypatch, threads):
    import panoptem.labels as labels_mod
    from panoptem.inference import runtime
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 50, (70, 9, 11)).astype(np.uint32)  # a yz stack: (X, Z, Y)
    lut = rng.integers(0, 2**31, 50).astype(np.uint32)
    monkeypatch.setattr(labels_mod, "THREADED_LOOKUP", 1)
    monkeypatch.setattr(labels_mod, "TRANSPOSED_CHUNK", 4)  # many thin chunks
    monkeypatch.setattr(runtime, "cpu_count", lambda: threads)
    zyx = np.zeros((9, 11, 70), np.uint32)
    labels_mod.lookup(lut, stack, out=np.moveaxis(zyx, 2, 0))
    np.testing.assert_array_equal(zyx, np.moveaxis(lut[stack], 0, 2))
    with pytest.raises(PanoptemError, match="shape"):
        labels_mod.lookup(lut, stack, out=zyx)


def test_label_helpers_take_any_integer_dtype():
    # a divisor wider than the labels' dtype, uint64 ids past 2**63, uint64 against int32 ids
    np.testing.assert_array_equal(filter_objects(np.array([[1, 1, 0, 2]], np.uint8), 2, 0, label_divisor=1000),
                                  [[1, 1, 0, 0]])
    big = np.uint64(2**63 + 5)
    assert map_ids(np.array([0, big], np.uint64), np.array([big]), np.array([7]), np.uint8).tolist() == [0, 7]
    assert map_ids(np.array([0, 3], np.uint64), np.array([2**64 - 1], np.uint64), np.array([9]),
                   np.uint8).tolist() == [0, 0]
    got = overlap_table(np.array([1, 1, 2, 0], np.int32), np.array([1, 2, 2, 2], np.uint64), 2, 2)
    assert [x.tolist() for x in got] == [[1, 1, 2], [1, 2, 2], [1, 1, 1]] and got[0].dtype == np.int64


def test_relabel_sequential_per_class_keeps_the_class_of_uint64_ids_past_2_63():
    """uint64 ids at or past 2**63 were cast to int64 (negative) before their class was taken:
    [2**63 + 1005, 2**63 + 1009] with divisor 1000 came out as 809, 810 (uint32)."""
    from panoptem.labels import relabel_sequential_per_class
    base = 2**63 // 1000 * 1000 + 1000  # a class boundary past 2**63
    lab = np.array([0, base + 5, base + 9, base, 2 * 1000 + 7], np.uint64)
    out = relabel_sequential_per_class(lab, 1000)
    assert out.dtype == np.uint64 and out.tolist() == [0, base + 1, base + 2, base, 2001]


@pytest.mark.parametrize("shape", [(0, 3), (2, 0, 4)])
def test_object_statistics_of_an_array_with_no_voxels_are_empty(shape):
    """cc3d took no empty array: object_stats, filter_objects and filter_labels raised its TypeError."""
    from panoptem.labels import filter_objects, object_stats
    from panoptem.proofread import filter_labels
    ids, voxels, bbox = object_stats(np.zeros(shape, np.uint32))
    assert ids.size == 0 and voxels.size == 0 and bbox.shape == (0, 2 * len(shape))
    assert filter_objects(np.zeros(shape, np.uint32), 2, 0).shape == shape
    assert filter_labels(np.zeros(shape, np.uint16), 2).shape == shape


@pytest.mark.parametrize("dtype, div", [(np.uint8, 1000), (np.int8, 1000), (np.uint16, 100000), (np.uint32, 2**33)])
def test_relabel_sequential_per_class_with_a_divisor_past_the_labels_dtype(dtype, div):
    """Class 0 ids under a divisor larger than the dtype holds: 1..N, not an OverflowError."""
    from panoptem.labels import relabel_sequential_per_class
    assert relabel_sequential_per_class(np.array([0, 5, 9, 7], dtype), div).tolist() == [0, 1, 3, 2]
