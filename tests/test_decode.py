"""Decoding against hand-built heatmaps and offsets with known answers."""
import numpy as np
import pytest

from panoptem.errors import PanoptemError
from panoptem.labels import compact
from panoptem.inference.decode import (decode_panoptic, find_centers, group_pixels, merge_panoptic,
                                       semantic_classes)

S = 4  # output stride


def _blob_heatmap(shape, centers, sigma=1.5):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    hm = np.zeros(shape, np.float32)
    for (r, c, a) in centers:
        hm = np.maximum(hm, a * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma**2)))
    return hm


def _offsets_to(assign, centers_px, shape):
    """Offsets on the stride grid pointing to the centre (input px) given per cell."""
    h, w = shape
    gy = np.arange(h)[:, None] * S + (S - 1) / 2
    gx = np.arange(w)[None, :] * S + (S - 1) / 2
    off = np.zeros((2, h, w), np.float32)
    for k, (cy, cx) in enumerate(centers_px):
        m = assign == k
        off[0][m] = (cy - gy + 0 * gx)[m]
        off[1][m] = (cx - gx + 0 * gy)[m]
    return off


def test_find_centers_threshold_and_order():
    hm = _blob_heatmap((16, 16), [(4, 4, 0.9), (11, 11, 0.3), (4, 12, 0.05)])
    c = find_centers(hm, threshold=0.1, min_distance=3)
    assert c.tolist() == [[4, 4], [11, 11]]
    assert find_centers(hm, threshold=0.5, min_distance=3).tolist() == [[4, 4]]
    assert find_centers(hm, threshold=0.95).shape == (0, 2)


def test_centers_min_distance_suppresses_close_peaks():
    hm = np.zeros((20, 20), np.float32)
    hm[5, 5], hm[5, 7], hm[15, 15] = 0.9, 0.8, 0.7  # 2 cells apart, and a far one
    assert len(find_centers(hm, 0.1, min_distance=1)) == 3
    assert len(find_centers(hm, 0.1, min_distance=3)) == 3   # 3x3 window: 2 cells apart survive
    got = find_centers(hm, 0.1, min_distance=5)               # 5x5 window: the weaker one goes
    assert got.tolist() == [[5, 5], [15, 15]]


def test_plateau_gives_one_center():
    hm = np.zeros((10, 10), np.float32)
    hm[4:6, 4:6] = 0.5
    assert len(find_centers(hm, 0.1, 3)) == 1
    assert len(find_centers(hm, 0.1, 1)) == 1  # an equal-valued plateau is one centre with any window


def test_a_window_of_one_merges_only_equal_neighbours():
    """Centers Min Distance 1: touching cells above the threshold are each a centre unless equal
    (a slope is not a plateau), as the parameter says: only centres closer than it merge."""
    hm = np.zeros((8, 8), np.float32)
    hm[3, 2:6] = [0.3, 0.5, 0.7, 0.9]
    assert find_centers(hm, 0.1, 1).tolist() == [[3, 5], [3, 4], [3, 3], [3, 2]]
    hm[3, 2:6] = 0.5
    assert find_centers(hm, 0.1, 1).tolist() == [[3, 2]]


def test_many_centres_group_as_few_do_ties_included():
    """Over BRUTE_FORCE_CENTERS centres a k-d tree proposes the nearest; ties (equidistant
    centres, common on the pixel grid) still go to the first centre, as with few centres."""
    from panoptem.inference.decode import BRUTE_FORCE_CENTERS, _closest, _closest_by_tree
    rng = np.random.default_rng(3)
    for trial in range(4):
        c = rng.integers(0, 40, (BRUTE_FORCE_CENTERS + 30, 2)).astype(np.float64)  # on the grid: many ties
        if trial % 2:
            c = np.repeat(c[:40], 2, axis=0)  # duplicate centres: ties of every target
        ty, tx = np.meshgrid(np.arange(-2, 42, 0.5), np.arange(-2, 42, 0.5), indexing="ij")
        np.testing.assert_array_equal(_closest_by_tree(ty, tx, c), _closest(ty, tx, c))


def test_group_pixels_nearest_center():
    # two centres; offsets of the left half point to A, right half to B, even
    # though the right half's nearest centre by position would be A near the border
    h, w = 8, 16
    A, B = (15.5, 15.5), (15.5, 47.5)
    assign = np.zeros((h, w), int)
    assign[:, 6:] = 1  # the split line is where the offsets say (col 6), not the midpoint (col 8)
    off = _offsets_to(assign, [A, B], (h, w))
    ids = group_pixels(np.array([A, B]), off, stride=S)
    assert (ids == assign + 1).all()
    assert (group_pixels(np.zeros((0, 2)), off) == 0).all()


def test_touching_objects_split_where_offsets_say():
    h, w = 8, 16
    A, B = (15.5, 19.5), (15.5, 43.5)  # centres in input px -> cells (3.5?, ...)
    assign = np.zeros((h, w), int)
    assign[:, 7:] = 1
    off = _offsets_to(assign, [A, B], (h, w))
    hm = np.zeros((h, w), np.float32)
    hm[3, 4] = hm[3, 10] = 0.9  # cell centres 13.5,17.5 and 13.5,41.5 -- near A and B
    prob = np.ones((1, h * S, w * S), np.float32)  # everything is foreground; one touching blob
    lab = decode_panoptic(prob, hm, off, label_divisor=1000, center_confidence_thr=0.1)
    assert set(np.unique(lab)) == {1001, 1002}
    # the border lies between input columns 27 and 28 (cell 7 starts at px 28)
    assert len(np.unique(lab[:, :28])) == 1 and len(np.unique(lab[:, 28:])) == 1
    assert lab[0, 0] != lab[0, -1]


def test_segmentation_threshold():
    prob = np.full((1, 8, 8), 0.4, np.float32)
    prob[0, :4] = 0.7
    assert (semantic_classes(prob, [1], 0.5) == np.r_[[1] * 4, [0] * 4][:, None]).all()
    assert (semantic_classes(prob, [1], 0.3) == 1).all()


def test_divisor_arithmetic_and_no_divisor():
    sem = np.zeros((4, 8), int)
    sem[:, :3] = 1
    sem[:, 5:] = 1
    inst = np.zeros((4, 8), int)
    inst[:, :4] = 1
    inst[:, 4:] = 2
    lab = merge_panoptic(sem, inst, thing_ids=[1], label_divisor=10000)
    assert lab.dtype == np.uint32
    assert set(np.unique(lab)) == {0, 10001, 10002}
    lab0 = merge_panoptic(sem, inst, thing_ids=[1], label_divisor=None)
    assert set(np.unique(lab0)) == {0, 1, 2}


def test_disconnected_pieces_become_separate_objects():
    sem = np.zeros((5, 9), int)
    sem[:, :3] = 1
    sem[:, 6:] = 1
    inst = np.ones((5, 9), int)  # one centre claims both pieces
    lab = merge_panoptic(sem, inst, thing_ids=[1], label_divisor=100)
    assert set(np.unique(lab)) == {0, 101, 102}


def test_max_objects_per_class_overflow_is_an_error():
    sem = np.zeros((3, 9), int)
    sem[:, ::2] = 1  # 5 separate columns
    with pytest.raises(PanoptemError, match="Max objects per class"):
        merge_panoptic(sem, np.ones((3, 9), int), thing_ids=[1], label_divisor=4)


def test_multiclass_majority_and_stuff():
    # classes: 1 = thing (mito), 2 = thing (nucleus), 3 = stuff (cytoplasm)
    sem = np.full((10, 10), 3)
    sem[:5, :5] = 1
    sem[0, 0] = 2              # a minority pixel of class 2 inside instance 1
    sem[6:, 6:] = 2
    inst = np.zeros((10, 10), int)
    inst[:5, :5] = 1
    inst[6:, 6:] = 2
    lab = merge_panoptic(sem, inst, thing_ids=[1, 2], stuff_ids=[3], label_divisor=1000, stuff_area=10)
    assert lab[2, 2] == 1001 and lab[0, 0] == 1001      # majority class wins
    assert lab[8, 8] == 2001
    assert lab[9, 0] == 3000                             # stuff: class * divisor
    lab_small = merge_panoptic(sem, inst, [1, 2], [3], 1000, stuff_area=1000)
    assert lab_small[9, 0] == 0                          # stuff below stuff_area dropped


def test_multiclass_softmax_argmax():
    p = np.zeros((3, 2, 2), np.float32)
    p[0] = 0.6
    p[1, 0, 0] = 0.9
    p[2, 1, 1] = 0.7
    assert semantic_classes(p, [1, 2]).tolist() == [[1, 0], [0, 2]]


def test_fine_vs_coarse_boundaries():
    # two objects split by a diagonal line; offsets exact on the coarse grid
    h, w = 16, 16
    H, W = h * S, w * S
    A, B = (10.0, 54.0), (54.0, 10.0)
    gy = np.arange(h)[:, None] * S + 1.5 + 0 * np.arange(w)[None, :]
    gx = np.arange(w)[None, :] * S + 1.5 + 0 * np.arange(h)[:, None]
    side_a = gx > gy  # above the diagonal -> A
    off = np.where(side_a, np.stack([A[0] - gy, A[1] - gx]), np.stack([B[0] - gy, B[1] - gx])).astype(np.float32)
    hm = np.zeros((h, w), np.float32)
    hm[2, 13] = hm[13, 2] = 0.9
    prob = np.ones((1, H, W), np.float32)
    coarse = decode_panoptic(prob, hm, off, label_divisor=0)
    fine = decode_panoptic(prob, hm, off, label_divisor=0, fine_boundaries=True)
    blocks = lambda a: a.reshape(h, S, w, S).transpose(0, 2, 1, 3).reshape(h, w, -1)
    mixed = lambda a: (blocks(a).min(-1) != blocks(a).max(-1)).sum()
    assert mixed(coarse) == 0          # coarse: ids constant on 4x4 blocks (staircase border)
    assert mixed(fine) >= h - 2        # fine: the border cuts through the diagonal blocks
    assert set(np.unique(coarse)) == set(np.unique(fine)) == {1, 2}
    assert coarse[0, -1] == fine[0, -1] and coarse[-1, 0] == fine[-1, 0]
    assert (coarse != fine).mean() < 0.05  # they differ only along the border


def test_semantic_only_and_downsampled_output_size():
    h, w = 4, 4
    prob = np.ones((1, 16, 16), np.float32)
    hm = np.zeros((h, w), np.float32)
    hm[1, 1] = 1
    off = np.zeros((2, h, w), np.float32)
    lab = decode_panoptic(prob, hm, off, semantic_only=True, label_divisor=1000)
    assert set(np.unique(lab)) == {1000}
    big = decode_panoptic(prob, hm, off, label_divisor=1000, out_shape=(32, 32))
    assert big.shape == (32, 32) and set(np.unique(big)) == {1001}


def test_group_pixels_direct_and_tree_agree(monkeypatch):
    # few centres are compared with every pixel directly, many go through a k-d tree: same answer
    import panoptem.inference.decode as dec
    rng = np.random.default_rng(3)
    off = rng.normal(0, 20, (2, 24, 40)).astype(np.float32)
    for k in (1, 5, 64):
        centers = rng.uniform(0, 150, (k, 2)).astype(np.float32)
        direct = group_pixels(centers, off, stride=S, origin=(2, 3))
        monkeypatch.setattr(dec, "BRUTE_FORCE_CENTERS", 0)
        tree = group_pixels(centers, off, stride=S, origin=(2, 3))
        monkeypatch.undo()
        assert direct.dtype == np.int32 and direct.min() >= 1 and direct.max() <= k
        assert (direct == tree).all()


def _random_planes(rng, n, h, w, stride=4):
    """Smooth random probabilities, heatmaps with many peaks (some flat), offsets on a coarse grid."""
    from scipy import ndimage
    prob = ndimage.uniform_filter(rng.random((n, 1, h, w)).astype(np.float32), size=(1, 1, 5, 5))
    prob = np.round((prob - prob.min()) / (prob.max() - prob.min()) * 255) / np.float32(255)
    hs, ws = -(-h // stride), -(-w // stride)
    hm = rng.random((n, 1, hs, ws)).astype(np.float16).astype(np.float32)
    hm[:, :, : hs // 3, : ws // 3] = 0.5  # a plateau
    if n > 1:
        hm[n // 2] = 0  # a plane without centres
    off = (rng.normal(0, 6, (n, 2, hs, ws))).astype(np.float16).astype(np.float32)
    return prob, hm, off


@pytest.mark.parametrize("kw", [dict(label_divisor=1000), dict(label_divisor=None, min_distance_object_centers=5),
                                dict(label_divisor=1000, min_distance_object_centers=1),
                                dict(label_divisor=1000, out_shape=(40, 90)), dict(label_divisor=1000,
                                                                               fine_boundaries=True),
                                dict(label_divisor=1000, out_shape=(80, 180)), dict(label_divisor=None,
                                                                              out_shape=(79, 177)),
                                dict(label_divisor=1000, out_shape=(25, 60))])
def test_planes_decoded_together_equal_planes_decoded_alone(kw, monkeypatch):
    """decode_planes gives each plane's decode_panoptic labels, thin planes batched or not, with
    few centres per plane (direct distances) and many (a k-d tree)."""
    import panoptem.inference.decode as dec
    from panoptem.inference.decode import decode_planes
    rng = np.random.default_rng(7)
    # groups of all planes, of two or three (a budget of 8 000 pixels), of one (a large plane alone)
    for n, h, w, brute, budget in ((9, 30, 90, 64, 1 << 18), (3, 40, 90, 4, 1 << 18), (9, 30, 90, 64, 8000),
                                   (3, 40, 90, 4, 100), (1, 40, 90, 64, 1 << 18)):
        monkeypatch.setattr(dec, "BRUTE_FORCE_CENTERS", brute)
        monkeypatch.setattr(dec, "SMALL_PLANE", budget)
        prob, hm, off = _random_planes(rng, n, h, w)
        args = (prob, hm, off) if n > 5 else (list(prob), list(hm), list(off))  # arrays or lists of planes
        together = decode_planes(*args, **kw)
        alone = [decode_panoptic(prob[i], hm[i], off[i], **kw) for i in range(n)]
        assert len(together) == n and sum(int(a.max() > 0) for a in alone) >= n - 1 and alone[0].max() > 0
        for a, b in zip(alone, together):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        # what the linker takes: each plane compacted, without another pass over its labels
        for a, got in zip(alone, decode_planes(*args, compacted=True, **kw)):
            assert len(got) == 2
            for x, y in zip(compact(a), got):
                np.testing.assert_array_equal(x, y)


def test_planes_decoded_together_refuse_too_many_objects_as_alone():
    from panoptem.inference.decode import decode_planes
    prob, hm, off = _random_planes(np.random.default_rng(3), 4, 30, 90)
    with pytest.raises(PanoptemError, match="Max objects per class"):
        decode_planes(prob, hm, off, label_divisor=3)


def test_planes_decoded_together_compare_probabilities_as_alone_in_any_float_dtype():
    from panoptem.inference.decode import decode_planes
    hm = np.zeros((1, 1, 1), np.float32)
    hm[0, 0, 0] = 1.0
    off = np.zeros((2, 1, 1), np.float32)
    for p, thr in ((np.float16(0.1), 0.1), (np.float64(0.49999999999), 0.5)):  # float32 rounds them to thr
        prob = np.full((1, 1, 4, 4), p)
        alone = decode_panoptic(prob[0], hm, off, confidence_thr=thr)
        assert alone.any() == (np.float32(p) >= np.float32(thr))
        np.testing.assert_array_equal(decode_planes(prob, hm[None], off[None], confidence_thr=thr)[0], alone)


def test_grouping_leaves_a_target_that_is_not_a_number_alone_with_many_centres():
    off = np.zeros((2, 1, 2), np.float32)
    off[0, 0, 0] = np.nan
    for k in (3, 200):  # one pass per centre, and the k-d tree
        centres = np.stack([np.arange(k) * 10.0 + 1.5, np.full(k, 5.5)], 1)
        assert group_pixels(centres, off, stride=4).tolist() == [[0, 1]]
