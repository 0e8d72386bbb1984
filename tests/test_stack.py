"""Running median and 3D linking of 2D panoptic slices, on hand-built stacks."""
import sys

import numpy as np
import pytest
from scipy import ndimage

from panoptem.errors import PanoptemError
from panoptem.inference.linking import SliceLinker, link_stack
from panoptem.inference.median import RunningMedian
from panoptem.labels import (filter_objects, greedy_match, object_stats, overlap_table,
                             relabel_sequential_per_class)

DIV = 10000
YY, XX = np.mgrid[:48, :48]


def disk(cy, cx, r):
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r


def label_slices(masks, cls=1, seed=0):
    """2D panoptic slices from boolean masks: 4-connected pieces get ids
    ``cls * DIV + n`` with n random per slice (ids change every slice)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(masks), *masks[0].shape), np.uint32)
    for z, m in enumerate(masks):
        lab, k = ndimage.label(m)
        ids = rng.choice(np.arange(1, 900), size=k, replace=False) + cls * DIV
        out[z] = np.r_[0, ids][lab]
    return out


def n_objects(labels):
    return len(np.unique(labels)) - 1


# ---------------------------------------------------------------- running median

@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_running_median_equals_numpy_median_with_shrunken_edges(size):
    rng = np.random.default_rng(size)
    stack = rng.random((9, 2, 4, 5)).astype(np.float32)
    rm = RunningMedian(size)
    out, held = [], []
    for item in stack:
        out += rm.push(item)
        held.append(rm.held)
    out += rm.flush()
    r = size // 2
    assert [i for i, _ in out] == list(range(9))
    for i, f in out:
        expect = np.median(stack[max(0, i - r): i + r + 1], axis=0)
        assert f.dtype == np.float32
        np.testing.assert_allclose(f, expect, rtol=0, atol=1e-7)
    assert max(held) <= size


def test_running_median_memory_and_extras():
    rm = RunningMedian(5)
    stack = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    got, peak = [], 0
    for i, item in enumerate(stack):
        got += rm.push(item, extra=("hm", i))
        peak = max(peak, rm.held)
        if i >= 4:
            assert rm.held == 4  # raw slices i-3..i after emitting slice i-2
    got += rm.flush()
    assert peak == 4 and rm.held == 0
    assert [(i, e) for i, _, e in got] == [(i, ("hm", i)) for i in range(7)]
    # slice 0 uses raw slices 0..2, slice 1 uses 0..3 (even: mean of the two middle values)
    np.testing.assert_array_equal(got[0][1], stack[1])
    np.testing.assert_array_equal(got[1][1], (stack[1] + stack[2]) / 2)


def test_running_median_short_stack_and_bad_size():
    rm = RunningMedian(7)
    a, b = np.zeros(2, np.float32), np.ones(2, np.float32)
    assert rm.push(a) == [] and rm.push(b) == []
    out = rm.flush()
    assert [i for i, _ in out] == [0, 1]
    np.testing.assert_array_equal(out[0][1], [0.5, 0.5])
    for bad in (0, 2, 13, 4):
        with pytest.raises(PanoptemError):
            RunningMedian(bad)


# ---------------------------------------------------------------- linking

def test_tube_with_new_ids_every_slice_is_one_object():
    masks = [disk(20 + z * 0.5, 20, 5) for z in range(20)]
    stack = label_slices(masks)
    assert n_objects(stack) == 20
    labels, res = link_stack(stack, min_size=0, min_extent=0)
    assert labels.dtype == np.uint32
    np.testing.assert_array_equal(labels, np.array(masks) * (DIV + 1))
    assert res.n_objects == 1 and res.ids.tolist() == [DIV + 1] and res.classes.tolist() == [1]
    assert res.voxels.tolist() == [int(np.sum(masks))]
    ys = np.nonzero(np.array(masks))[1]
    assert res.bbox.tolist() == [[0, ys.min(), 15, 20, ys.max() + 1, 26]]


def test_touching_parallel_tubes_stay_two_objects():
    rng = np.random.default_rng(1)
    stack = np.zeros((20, 48, 48), np.uint32)
    left = np.zeros(stack.shape, bool)
    for z in range(20):
        b = 20 + (z % 3) - 1  # the shared border wiggles
        left[z, 10:30, 8:b] = True
        ids = rng.choice(np.arange(1, 900), 2, replace=False) + DIV
        stack[z, 10:30, 8:b] = ids[0]
        stack[z, 10:30, b:32] = ids[1]
    labels, res = link_stack(stack, min_size=0, min_extent=0)
    assert res.n_objects == 2
    assert len(np.unique(labels[left])) == 1 and len(np.unique(labels[(stack > 0) & ~left])) == 1
    assert labels[left][0] != labels[(stack > 0) & ~left][0]


def y_branch():
    masks = []
    for z in range(20):
        if z < 10:
            masks.append(disk(24, 24, 5))
        else:
            d = 2 + 1.5 * (z - 10)
            masks.append(disk(24, 24 - d, 4) | disk(24, 24 + d, 4))
    return masks


@pytest.mark.parametrize("reverse", [False, True])
def test_y_branch_is_one_object(reverse):
    masks = y_branch()[::-1] if reverse else y_branch()
    stack = label_slices(masks, seed=2)
    assert max(n_objects(s) for s in stack) == 2  # the branches are separate 2D objects
    labels, res = link_stack(stack, min_size=0, min_extent=0)
    assert res.n_objects == 1
    np.testing.assert_array_equal(labels > 0, np.array(masks))


def test_fragment_join_of_a_2d_oversplit():
    masks = [disk(24, 24, 6) for _ in range(12)]
    stack = label_slices(masks)
    stack[6][(stack[6] > 0) & (XX > 26)] = DIV + 950  # one slice split in two pieces
    assert n_objects(stack[6]) == 2
    labels, res = link_stack(stack, min_size=0, min_extent=0)
    assert res.n_objects == 1
    np.testing.assert_array_equal(labels, np.array(masks) * (DIV + 1))


def test_split_guard_keeps_a_bulging_neighbour_separate():
    # A ends at slice 9; its neighbour B then bulges into 40 % of A's footprint
    stack = np.zeros((20, 32, 32), np.uint32)
    stack[:10, 10:20, 4:14] = DIV + 1
    stack[:10, 10:20, 14:24] = DIV + 2
    stack[10:, 10:20, 10:24] = DIV + 3
    _, res = link_stack(stack, min_size=0, min_extent=0)
    assert res.n_objects == 2
    assert sorted(res.voxels.tolist()) == [1000, 1000 + 1400]
    # the plain reference rule (IoA >= 0.25 joins) would merge them: the guard matters
    _, res = link_stack(stack, min_size=0, min_extent=0, split_ioa=0.25)
    assert res.n_objects == 1


def test_x_repair_one_slice_2d_merge_of_touching_tubes():
    stack = np.zeros((20, 32, 32), np.uint32)
    stack[:, 8:20, 4:12] = DIV + 1
    stack[:, 8:20, 12:20] = DIV + 2
    stack[10, 8:20, 4:20] = DIV + 5  # 2D decoding merged the two in one slice
    labels, res = link_stack(stack, min_size=0, min_extent=0)
    assert res.n_objects == 2
    left, right = labels[:, 10, 6], labels[:, 10, 16]
    assert len(set(left.tolist())) == 1
    assert set(right[np.arange(20) != 10].tolist()) == {right[0]} and right[0] != left[0]


def test_x_repair_cuts_the_merged_slices_own_link_to_a_repaired_successor():
    # slice 1 merged A and B; A continues in a small piece, B in one that also leaves the merge by a
    # pixel, so the merged object, free forward, attached itself to B's piece: A and B became one
    stack = np.zeros((3, 5, 11), np.uint32)
    stack[0, :4, :5], stack[0, :4, 6:] = 1, 2
    stack[1, :4, :5] = stack[1, :4, 6:] = 1
    stack[2, :2, :3] = 1
    stack[2, :2, 6:] = stack[2, 4, 6] = 2
    labels, res = link_stack(stack, label_divisor=None, min_size=0, min_extent=0)
    assert res.n_objects == 2
    assert labels[0, 0, 0] == labels[1, 0, 0] == labels[2, 0, 0] != labels[0, 0, 6] == labels[2, 0, 6]


@pytest.mark.parametrize("bridge, expect", [(0, 2), (1, 1)])
def test_bridge_gaps(bridge, expect):
    masks = [disk(20, 20, 5) for _ in range(15)]
    masks[7] = np.zeros_like(masks[7])  # missed in one slice
    stack = label_slices(masks)
    labels, res = link_stack(stack, bridge_gaps=bridge, min_size=0, min_extent=0)
    assert res.n_objects == expect
    assert n_objects(labels) == expect
    if expect == 2:
        assert labels[6, 20, 20] == DIV + 1 and labels[8, 20, 20] == DIV + 2


def test_bridge_gaps_not_across_two_missing_slices():
    masks = [disk(20, 20, 5) for _ in range(15)]
    masks[6] = masks[7] = np.zeros_like(masks[7])
    _, res = link_stack(label_slices(masks), bridge_gaps=1, min_size=0, min_extent=0)
    assert res.n_objects == 2


def test_different_classes_never_link():
    masks = [disk(20, 20, 6) for _ in range(10)]
    stack = np.concatenate([label_slices(masks[:5], cls=1), label_slices(masks[5:], cls=2)])
    labels, res = link_stack(stack, min_size=0, min_extent=0)
    assert res.n_objects == 2
    assert sorted(np.unique(labels).tolist()) == [0, DIV + 1, 2 * DIV + 1]
    assert res.classes.tolist() == [1, 2]
    lk = SliceLinker()
    prov = [lk.add(s) for s in stack]
    assert lk.provisional_classes[prov[4][20, 20]] == 1 and lk.provisional_classes[prov[5][20, 20]] == 2


def test_ids_per_class_and_without_divisor():
    stack = np.zeros((6, 30, 30), np.uint32)
    stack[:, 2:8, 2:8] = 2 * DIV + 7      # class 2, first
    stack[:, 2:8, 20:26] = DIV + 3        # class 1
    stack[:, 20:26, 2:8] = 2 * DIV + 1    # class 2, second
    stack[:, 20:26, 20:26] = 3 * DIV      # semantic class 3 (stuff): kept as is
    labels, res = link_stack(stack, min_size=0, min_extent=0)
    assert labels[0, 4, 4] == 2 * DIV + 2 and labels[0, 22, 4] == 2 * DIV + 1  # order: first seen, by id
    assert labels[0, 4, 22] == DIV + 1 and labels[0, 22, 22] == 3 * DIV
    assert res.n_objects == 3 and res.ids.tolist() == [DIV + 1, 2 * DIV + 1, 2 * DIV + 2]
    plain = np.where(stack == 3 * DIV, 0, stack % DIV)
    labels, res = link_stack(plain, label_divisor=None, min_size=0, min_extent=0)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3] and res.classes.tolist() == [0, 0, 0]


def test_min_extent_removes_pancakes_and_thin_stacks_keep_crossing_objects():
    stack = np.zeros((10, 40, 40), np.uint32)
    stack[4, 5:30, 5:30] = DIV + 1          # one-slice pancake, 625 voxels
    stack[1:9, 32:38, 32:38] = DIV + 2      # 8 slices deep
    labels, res = link_stack(stack, min_size=0, min_extent=5)
    assert res.n_objects == 1 and labels[4, 10, 10] == 0 and labels[3, 33, 33] == DIV + 1
    # a stack of 3 slices: the requirement along the stack axis is its depth
    thin = np.zeros((3, 20, 20), np.uint32)
    thin[:, 2:10, 2:10] = DIV + 1
    thin[:2, 12:19, 12:19] = DIV + 2
    labels, res = link_stack(thin, min_size=0, min_extent=5)
    assert res.n_objects == 1 and labels[0, 5, 5] == DIV + 1 and labels[0, 15, 15] == 0


def test_min_size_removes_small_keeps_large():
    stack = np.zeros((8, 40, 40), np.uint32)
    stack[:, 2:10, 2:10] = DIV + 1    # 512 voxels
    stack[:, 20:28, 20:27] = DIV + 2  # 448 voxels
    labels, res = link_stack(stack, min_size=500, min_extent=5)
    assert res.n_objects == 1 and res.voxels.tolist() == [512]
    assert labels[0, 5, 5] == DIV + 1 and labels[0, 22, 22] == 0
    res2 = SliceLinker()
    for s in stack:
        res2.add(s)
    assert res2.finish(min_size=449).n_objects == 1 and res2.finish(min_size=448).n_objects == 2


def test_slices_standing_for_several_planes_count_them():
    # slices each the mean of 2 planes of a 5-plane stack (the last of 1): an 8 x 8 square in each
    def linked(n_with):
        lk = SliceLinker(label_divisor=None, stride=2, depth=5)
        sl = np.zeros((20, 20), np.uint32)
        sl[2:10, 2:10] = 1
        for i in range(3):
            lk.add(sl if i < n_with else np.zeros_like(sl))
        return lk
    res = linked(3).finish(min_size=0, min_extent=0)
    assert res.voxels.tolist() == [64 * 5] and res.bbox.tolist() == [[0, 2, 2, 5, 10, 10]]
    lk = linked(2)  # in the first two slices: planes 0..3
    assert lk.finish(min_size=0, min_extent=0).bbox.tolist() == [[0, 2, 2, 4, 10, 10]]
    # the filters are in the stack's planes: 256 voxels, 4 planes deep
    assert lk.finish(min_size=256, min_extent=4).n_objects == 1
    assert lk.finish(min_size=257, min_extent=4).n_objects == 0 and lk.finish(min_size=0, min_extent=5).n_objects == 0


def test_linker_streaming_provisional_ids_and_errors():
    lk = SliceLinker(label_divisor=None)
    p0 = lk.add(np.array([[1, 0, 2]], np.uint16))
    p1 = lk.add(np.array([[0, 0, 0]], np.uint16))
    p2 = lk.add(np.array([[5, 0, 0]], np.uint16))
    assert p0.tolist() == [[1, 0, 2]] and p1.tolist() == [[0, 0, 0]] and p2.tolist() == [[0 + 3, 0, 0]]
    assert p0.dtype == np.uint32 and lk.n_slices == 3
    res = lk.finish(min_size=0, min_extent=0)
    assert res.n_provisional == 3 and res.mapping.tolist() == [0, 1, 2, 3]
    with pytest.raises(PanoptemError):
        lk.add(np.zeros((2, 3), np.uint16))
    with pytest.raises(PanoptemError):
        SliceLinker().add(np.zeros((2, 2), np.float32))
    with pytest.raises(PanoptemError):
        link_stack(np.zeros((4, 4), np.uint32))
    empty = SliceLinker().finish()
    assert empty.n_objects == 0 and empty.mapping.tolist() == [0]


# ---------------------------------------------------------------- helpers

@pytest.mark.parametrize("n,ties", [(200, False), (200, True), (20, False), (20, True)])
def test_greedy_match_equals_sequential_greedy(n, ties):
    """Both paths (array rounds for many edges, a walk for few) pick the sequential greedy set."""
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, max(n // 6, 8), n), rng.integers(0, max(n // 6, 8), n)
    w = rng.integers(0, 4, n) / 4 if ties else rng.random(n)
    got = greedy_match(a, b, w).tolist()
    used_a, used_b, expect = set(), set(), set()
    for i in np.lexsort((b, a, -w)):
        if a[i] not in used_a and b[i] not in used_b:
            used_a.add(a[i]), used_b.add(b[i]), expect.add(int(i))
    assert got == sorted(expect) and len(expect) > 2


def test_overlap_table_both_paths():
    a = np.array([[1, 1, 2], [0, 3, 3]])
    b = np.array([[2, 1, 1], [1, 1, 0]])
    expect = {(1, 2): 1, (1, 1): 1, (2, 1): 1, (3, 1): 1}
    for mask in (None, np.ones(a.shape, bool)):
        ia, ib, c = overlap_table(a, b, 3, 2, mask)
        assert dict(zip(zip(ia.tolist(), ib.tolist()), c.tolist())) == expect


def test_object_stats_filter_and_relabel():
    vol = np.zeros((6, 10, 10), np.uint32)
    vol[0:6, 0:5, 0:5] = 10003
    vol[2, 6:9, 6:9] = 20001
    vol[1:3, 0:2, 8:10] = 20000  # stuff
    ids, vox, bbox = object_stats(vol)
    assert ids.tolist() == [10003, 20000, 20001] and vox.tolist() == [150, 8, 9]
    assert bbox.tolist() == [[0, 0, 0, 6, 5, 5], [1, 0, 8, 3, 2, 10], [2, 6, 6, 3, 9, 9]]
    kept = filter_objects(vol, min_size=10, min_extent=2, label_divisor=DIV)
    assert sorted(np.unique(kept).tolist()) == [0, 10003, 20000]
    rel = relabel_sequential_per_class(vol, DIV)
    assert sorted(np.unique(rel).tolist()) == [0, 10001, 20000, 20001] and rel.dtype == np.uint32
    assert sorted(np.unique(relabel_sequential_per_class(vol, None)).tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", range(4))
def test_linker_boxes_equal_find_objects(seed):
    """The linker's bounding boxes (from the object pixels it already holds) are scipy's."""
    from panoptem.labels import compact, pixel_boxes
    rng = np.random.default_rng(seed)
    lab = ndimage.label(rng.random((37, 53)) > 0.7)[0]
    lab[0, 0], lab[-1, -1] = lab.max() + 1, lab.max() + 2  # objects on the corners
    local, ids = compact(lab)
    nz = np.flatnonzero(local > 0)
    got = np.stack(pixel_boxes(nz, local.ravel()[nz], ids.size, local.shape), axis=1)
    want = [(r.start, r.stop, c.start, c.stop) for r, c in ndimage.find_objects(local)]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_median_of_a_few_slices_is_numpy_median_and_leaves_them_unchanged(k):
    from panoptem.inference.median import _median
    rng = np.random.default_rng(k)
    window = [rng.integers(0, 4, (3, 7)).astype(np.float32) / 3 for _ in range(k)]  # many ties
    before = [w.copy() for w in window]
    got = _median(window)
    np.testing.assert_array_equal(got, np.median(np.stack(before), axis=0).astype(np.float32))
    for w, b in zip(window, before):
        np.testing.assert_array_equal(w, b)


def test_heap_pages_are_handed_back_only_after_growth(monkeypatch):
    """release_free runs after every batch of a stack; it trims glibc's heap only once the
    process has grown by TRIM_AFTER_GROWTH since the last trim (trimming every batch made every
    batch fault its temporaries' pages in again)."""
    import sys

    from panoptem import _memory
    if not sys.platform.startswith("linux"):
        assert _memory.release_free() is False
        return
    monkeypatch.setattr(_memory, "_low", [None])
    monkeypatch.setattr(_memory, "TRIM_AFTER_GROWTH", 32 << 20)
    assert _memory.resident_bytes() > 0
    assert _memory.release_free()          # nothing known yet: trims
    assert not _memory.release_free()      # no growth since
    grown = np.ones(96 << 20, np.uint8)    # resident growth beyond the threshold
    assert _memory.release_free()
    assert not _memory.release_free()
    assert _memory.release_free(force=True)
    del grown


def test_numpy_huge_page_advice_is_turned_off_only_where_it_stalls(monkeypatch, tmp_path):
    import numpy as np

    from panoptem import _memory
    stalls = _memory.hugepage_advice_stalls
    assert stalls("always [madvise] never", "always defer defer+madvise [madvise] never")
    assert stalls("[always] madvise never", "always defer [defer+madvise] madvise never")
    assert not stalls("always madvise [never]", "[always] defer defer+madvise madvise never")
    assert not stalls("always [madvise] never", "always [defer] defer+madvise madvise never")
    assert not stalls("[always] madvise never", "always defer defer+madvise madvise [never]")
    setter = (getattr(np, "_core", None) or np.core).multiarray._set_madvise_hugepage
    before = setter(True)
    try:
        (tmp_path / "enabled").write_text("always [madvise] never\n")
        (tmp_path / "defrag").write_text("always defer defer+madvise [madvise] never\n")
        monkeypatch.setattr(_memory, "THP", str(tmp_path))
        monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")  # the user's word wins
        assert not _memory.avoid_hugepage_stalls() and setter(True) is True
        monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE")
        assert _memory.avoid_hugepage_stalls() == sys.platform.startswith("linux")
        if sys.platform.startswith("linux"):
            assert setter(True) is False  # it was turned off
        (tmp_path / "defrag").write_text("always [defer] defer+madvise madvise never\n")
        assert not _memory.avoid_hugepage_stalls() and setter(True) is True
    finally:
        setter(before)


@pytest.mark.parametrize("seed", range(6))
def test_statistics_gathered_elsewhere_link_as_slice_by_slice(monkeypatch, seed):
    """SliceLinker.from_statistics (blockwise runs) gives add()'s objects from per-object statistics
    and overlaps listed in any order, checked and scored a few pairs at a time."""
    from panoptem.inference import linking
    rng = np.random.default_rng(seed)
    stack = np.zeros((9, 40, 40), np.int64)
    for _ in range(25):  # blobs of two classes (one of them stuff), drifting through a few slices
        z0, y, x, r = rng.integers(0, 7), *rng.integers(4, 36, 2), rng.integers(2, 6)
        label = int(rng.choice([1, 2, 3])) * 1000 + int(rng.integers(1, 999)) * (rng.random() < 0.9)
        yy, xx = np.mgrid[:40, :40]
        for z in range(z0, min(9, z0 + int(rng.integers(2, 6)))):
            stack[z][(yy - y - z) ** 2 + (xx - x) ** 2 < r * r] = label
    kw = dict(label_divisor=1000, bridge_gaps=1)
    lk = SliceLinker(**kw)
    prov = np.stack([lk.add(s) for s in stack]).astype(np.int64)
    want = lk.finish(min_size=5, min_extent=1)
    n = int(prov.max())
    ids = np.arange(1, n + 1)
    z = np.array([np.flatnonzero((prov == i).any(axis=(1, 2)))[0] for i in ids])
    pan = np.zeros(n + 1, np.int64)
    pan[prov.ravel()] = stack.ravel()
    area = np.bincount(prov.ravel(), minlength=n + 1)[1:]
    boxes = ndimage.find_objects(prov)
    r0, r1 = (np.array([b[1].start for b in boxes]), np.array([b[1].stop for b in boxes]))
    c0, c1 = (np.array([b[2].start for b in boxes]), np.array([b[2].stop for b in boxes]))

    def overlaps(dz):
        a, b = prov[:-dz].ravel(), prov[dz:].ravel()
        m = (a > 0) & (b > 0)
        pairs, inter = np.unique(np.stack([a[m], b[m]], axis=1), axis=0, return_counts=True)
        order = rng.permutation(len(pairs))  # listed in any order
        return pairs[order, 0], pairs[order, 1], inter[order]

    monkeypatch.setattr(linking, "_STEP", 7)
    got = SliceLinker.from_statistics(stack.shape, z, pan[1:] // 1000, pan[1:] % 1000 != 0, area, (r0, r1),
                                      (c0, c1), overlaps(1), overlaps(2), **kw).finish(min_size=5, min_extent=1)
    assert want.n_objects > 5 and np.array_equal(got.mapping, want.mapping)
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.voxels, want.voxels)


@pytest.mark.parametrize("stride, depth", [(0, None), (2, 0), (2, 4), (2, 7)])
def test_slices_standing_for_planes_must_fit_the_stack(stride, depth):
    # 3 slices of 2 planes stand for a stack 5 or 6 planes deep, nothing else (voxels went negative)
    stack = np.ones((3, 4, 4), np.uint32)
    with pytest.raises(PanoptemError, match="stride|cannot stand"):
        link_stack(stack, label_divisor=None, min_size=0, min_extent=0, stride=stride, depth=depth)
    assert link_stack(stack, label_divisor=None, min_size=0, min_extent=0, stride=2, depth=5)[1].voxels.tolist() == [80]
