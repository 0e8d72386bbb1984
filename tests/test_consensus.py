"""Ortho-plane label consensus on hand-built volumes with known answers."""
import numpy as np
import pytest

from panoptem.errors import PanoptemError
from panoptem.inference.consensus import orthoplane_consensus
from panoptem.labels import relabel_sequential_per_class

DIV = 10000


def box(shape, z, y, x, value, vol=None):
    vol = np.zeros(shape, np.uint32) if vol is None else vol
    vol[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = value
    return vol


def test_identical_copies_give_the_same_objects():
    shape = (20, 24, 24)
    v = box(shape, (2, 12), (2, 12), (2, 12), DIV + 40)
    box(shape, (5, 15), (12, 20), (2, 10), DIV + 7, v)     # touches the first one
    box(shape, (0, 20), (14, 22), (14, 22), 2 * DIV + 3, v)
    box(shape, (10, 11), (0, 3), (20, 24), DIV + 9, v)     # too small: filtered
    expect = relabel_sequential_per_class(np.where(v == DIV + 9, 0, v), DIV)
    for thr in (1, 2, 3):
        out = orthoplane_consensus([v, v.copy(), v.copy()], label_divisor=DIV, pixel_vote_thr=thr,
                                   min_size=50, min_extent=2)
        assert out.dtype == np.uint32
        np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("thr, stop", [(1, 22), (2, 21), (3, 20)])
def test_vote_threshold_union_majority_intersection(thr, stop):
    shape = (12, 12, 30)
    vols = [box(shape, (2, 10), (2, 10), (10, s), DIV + i + 1) for i, s in enumerate((20, 21, 22))]
    out = orthoplane_consensus(vols, label_divisor=DIV, pixel_vote_thr=thr, min_size=0, min_extent=0)
    np.testing.assert_array_equal(out, box(shape, (2, 10), (2, 10), (10, stop), DIV + 1))


def test_object_in_one_stack_only_needs_allow_one_view():
    shape = (12, 12, 12)
    a = box(shape, (1, 5), (1, 5), (1, 5), DIV + 1)
    lone = box(shape, (6, 11), (6, 11), (6, 11), DIV + 2)
    vols = [a | lone, a.copy(), a.copy()]
    out = orthoplane_consensus(vols, label_divisor=DIV, min_size=0, min_extent=0)
    np.testing.assert_array_equal(out, a)
    out = orthoplane_consensus(vols, label_divisor=DIV, min_size=0, min_extent=0, allow_one_view=True)
    np.testing.assert_array_equal(out, a + np.where(lone > 0, DIV + 2, 0).astype(np.uint32))


def test_densely_packed_cubes_stay_separate():
    n, s = 4, 8
    shape = (n * s,) * 3
    idx = np.indices(shape) // s
    truth = (idx[0] * n * n + idx[1] * n + idx[2] + 1).astype(np.uint32)
    rng = np.random.default_rng(0)
    vols = []
    for axis in range(3):  # each stack puts the borders one voxel off along its own axis
        shifted = np.roll(truth, 1, axis=axis)
        perm = np.r_[0, rng.permutation(n ** 3) + 1].astype(np.uint32)
        vols.append(DIV + perm[shifted])
    out = orthoplane_consensus(vols, label_divisor=DIV, pixel_vote_thr=2, min_size=0, min_extent=0)
    ids = np.unique(out[out > 0])
    assert len(ids) == n ** 3 and ids.max() == DIV + n ** 3
    r = [np.roll(truth, 1, axis=a) for a in range(3)]
    disagree = (r[0] != r[1]) & (r[0] != r[2]) & (r[1] != r[2])  # cube edges: one vote each
    np.testing.assert_array_equal(out == 0, disagree)
    # every cube keeps its interior (the voxels all three stacks agree on)
    agree = (np.roll(truth, 1, 0) == truth) & (np.roll(truth, 1, 1) == truth) & (np.roll(truth, 1, 2) == truth)
    pairs = np.unique(np.stack([truth[agree], out[agree]]), axis=1)
    assert pairs.shape[1] == n ** 3  # one output id per cube, one cube per id


def test_under_segmentation_in_one_stack_does_not_merge_neighbours():
    shape = (10, 10, 24)
    a = box(shape, (1, 9), (1, 9), (1, 12), DIV + 1)
    both = box(shape, (1, 9), (1, 9), (12, 23), DIV + 2, a.copy())
    merged = np.where(both > 0, DIV + 5, 0).astype(np.uint32)  # one stack sees one object
    for vols in ([both, merged, both.copy()], [merged, both, both.copy()]):
        for thr in (1, 2):
            out = orthoplane_consensus(vols, label_divisor=DIV, pixel_vote_thr=thr, min_size=0, min_extent=0)
            np.testing.assert_array_equal(out, both)


def test_classes_stuff_and_no_divisor():
    shape = (8, 8, 16)
    v = box(shape, (1, 7), (1, 7), (1, 7), DIV + 1)
    w = box(shape, (1, 7), (1, 7), (1, 7), 2 * DIV + 1)       # same place, other class
    stuff = box(shape, (0, 8), (0, 8), (10, 16), 3 * DIV)
    vols = [v | stuff, w | stuff, v | stuff]
    out = orthoplane_consensus(vols, label_divisor=DIV, min_size=0, min_extent=0)
    np.testing.assert_array_equal(out, v | stuff)             # class 2 seen once: dropped
    plain = [np.where(x == DIV + 1, 1, 0).astype(np.uint16) for x in (v, v, w)]
    out = orthoplane_consensus(plain, label_divisor=None, min_size=0, min_extent=0)
    np.testing.assert_array_equal(out, (v > 0).astype(np.uint32))


def test_filters_and_errors():
    shape = (10, 10, 10)
    v = box(shape, (0, 10), (0, 10), (0, 1), DIV + 1)          # one voxel thick along x
    box(shape, (2, 8), (2, 8), (3, 9), DIV + 2, v)
    out = orthoplane_consensus([v, v, v], label_divisor=DIV, min_size=0, min_extent=5)
    assert np.unique(out).tolist() == [0, DIV + 1] and out[5, 5, 5] == DIV + 1 and out[5, 5, 0] == 0
    out = orthoplane_consensus([v, v, v], label_divisor=DIV, min_size=217, min_extent=0)
    assert np.unique(out).tolist() == [0]
    with pytest.raises(PanoptemError):
        orthoplane_consensus([v, v[:5], v], label_divisor=DIV)
    with pytest.raises(PanoptemError):
        orthoplane_consensus([v, v, v], label_divisor=DIV, pixel_vote_thr=4)


def _reference_consensus_filter(out, min_size, min_extent):
    """The size and extent filter on a consensus made without any (ids renumbered after)."""
    from panoptem.labels import filter_objects
    return relabel_sequential_per_class(filter_objects(out, min_size, min_extent, DIV), DIV)


def test_chunks_and_threads_do_not_change_the_result():
    # the overlaps, votes, sizes and boxes are made chunk by chunk (in threads): objects cross
    # chunk borders, and the filters must see each one whole
    from scipy import ndimage
    rng = np.random.default_rng(3)
    shape = (23, 40, 36)
    blobs = ndimage.gaussian_filter(rng.random(shape), 2.5) > 0.52
    base, n = ndimage.label(blobs)
    vols = []
    for k in range(3):  # each stack: the objects, some eroded or shifted one voxel
        v = np.where(base > 0, DIV + base, 0).astype(np.uint32)
        v = np.roll(v, k - 1, axis=k)
        vols.append(v)
    whole = orthoplane_consensus(vols, label_divisor=DIV, min_size=0, min_extent=0, chunk=64)
    assert len(np.unique(whole)) > 5
    expect = _reference_consensus_filter(whole, 40, 4)
    assert 0 < len(np.unique(expect)) < len(np.unique(whole))
    for chunk in (1, 4, 64):
        out = orthoplane_consensus(vols, label_divisor=DIV, min_size=40, min_extent=4, chunk=chunk)
        np.testing.assert_array_equal(out, expect)


def test_semantic_segments_past_2_to_the_32_keep_their_id():
    v = np.zeros((3, 4, 4), np.uint64)
    v[0] = 5 * 10**9          # class 5's semantic segment under a divisor of 10**9
    v[2, 1, 1] = 10**9 + 1    # one object of class 1
    out = orthoplane_consensus([v, v, v], label_divisor=10**9, min_size=0, min_extent=0)
    assert out.dtype == np.uint64 and (out[0] == 5 * 10**9).all() and out[2, 1, 1] == 10**9 + 1


def test_a_mean_iou_of_exactly_match_iou_joins_the_group():
    # C's IoUs with A (0.7) and B (0.1) average exactly 0.4; summed in floats they came to 0.39999...
    a, b, c = (np.zeros((1, 1, 10), np.uint32) for _ in range(3))
    a[..., :] = 1
    b[..., 6:] = 1
    c[..., :7] = 1
    out = orthoplane_consensus([a, b, c], label_divisor=None, match_iou=0.4, pixel_vote_thr=2, min_size=0,
                               min_extent=0)
    assert out.ravel().tolist() == [1] * 10


@pytest.mark.parametrize("kw", [dict(pixel_vote_thr=None), dict(pixel_vote_thr=float("nan")),
                                dict(pixel_vote_thr=float("inf")), dict(chunk=0), dict(chunk=-1)])
def test_bad_vote_threshold_or_chunk_is_one_clear_error(kw):
    v = np.ones((2, 3, 3), np.uint32)
    with pytest.raises(PanoptemError, match="Voxel Vote Thr|chunk"):
        orthoplane_consensus([v, v, v], label_divisor=None, **kw)


def test_a_volume_without_planes_gives_an_empty_consensus():
    v = np.zeros((0, 3, 3), np.uint32)
    assert orthoplane_consensus([v, v, v]).shape == (0, 3, 3)
