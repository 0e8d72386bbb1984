"""Proofreading operations on hand-made label arrays with exact expected outputs."""
import doctest

import numpy as np
import pytest

from panoptem import proofread
from panoptem.errors import PanoptemError
from panoptem.proofread import (count_labels, count_table, delete_labels, filter_labels, find_next_available_label,
                                label_bbox, labels_at_points, labels_on_line, merge_labels, morph_label,
                                split_label, split_labels)


def two_rooms(dtype=np.uint32):
    """Two 7x6 rooms of label 1 joined by a 2-pixel corridor on row 4; label 5 aside."""
    a = np.zeros((9, 16), dtype)
    a[1:8, 1:7] = 1
    a[1:8, 9:15] = 1
    a[4, 7:9] = 1
    a[0, 15] = 5
    return a


def test_doctests():
    assert doctest.testmod(proofread).failed == 0


# ---------------------------------------------------------------- selection

def test_labels_at_points_2d_ignores_background_and_outside():
    a = np.array([[0, 3, 3], [7, 0, 9]], np.uint16)
    pts = [[0, 1], [0, 2.2], [1, 0], [1, 1], [5, 5], [-1, 0]]
    assert labels_at_points(a, pts).tolist() == [3, 7]
    assert labels_at_points(a, np.zeros((0, 2))).tolist() == []


def test_labels_at_points_3d_and_plane_mode():
    a = np.zeros((3, 4, 4), np.uint32)
    a[0, 1, 1] = 4
    a[2, 1, 1] = 6
    a[2, 3, 3] = 8
    pts = [[0, 1, 1], [2, 1, 1]]
    assert labels_at_points(a, pts).tolist() == [4, 6]
    assert labels_at_points(a, pts, plane=(0, 2)).tolist() == [6]        # off-plane point ignored
    assert labels_at_points(a, [[2, 3, 3]], plane=(2, 3)).tolist() == [8]  # yz plane x=3


def test_labels_on_line_2d_polyline():
    a = np.zeros((10, 10), np.uint32)
    a[1, 1:3] = 1
    a[5, 5] = 2
    a[8, 1] = 3        # not crossed
    a[1:3, 8] = 4
    line = [[1, 0], [1, 9], [9, 9]]  # along row 1, then down column 9
    assert labels_on_line(a, line).tolist() == [1, 4]
    diag = [[0, 0], [9, 9]]          # passes (1, 1) and (5, 5)
    assert labels_on_line(a, diag).tolist() == [1, 2]
    assert labels_on_line(a, [[8, 1]]).tolist() == [3]


def test_labels_on_line_3d_and_projected_onto_plane():
    a = np.zeros((4, 6, 6), np.uint32)
    a[0, 0, 0] = 1
    a[3, 5, 5] = 2
    a[1, 2, 2] = 3   # on the 3D diagonal? line_nd from (0,0,0) to (3,5,5) passes (1,2,2)
    assert labels_on_line(a, [[0, 0, 0], [3, 5, 5]]).tolist() == [1, 2, 3]
    # in plane z=0 the same polyline is drawn from (0,0) to (5,5) on that plane only
    a[0, 3, 3] = 7
    assert labels_on_line(a, [[0, 0, 0], [0, 5, 5]], plane=(0, 0)).tolist() == [1, 7]


def test_label_bbox():
    a = np.zeros((5, 6, 7), np.uint32)
    a[1:3, 2, 4:7] = 9
    assert label_bbox(a, 9) == (slice(1, 3), slice(2, 3), slice(4, 7))
    with pytest.raises(PanoptemError, match="Label 4 is not"):
        label_bbox(a, 4)


# ---------------------------------------------------------------- merge / delete

def test_merge_2d_to_smallest_and_to_target_with_undo():
    a = np.array([[3, 3, 0, 5], [0, 9, 9, 5], [2, 0, 0, 0]], np.uint16)
    ref = a.copy()
    e = merge_labels(a, [9, 5, 3, 0])
    assert a.tolist() == [[3, 3, 0, 3], [0, 3, 3, 3], [2, 0, 0, 0]]
    e.undo(a)
    assert np.array_equal(a, ref) and a.dtype == np.uint16
    merge_labels(a, [3, 5], target=5)
    assert a.tolist() == [[5, 5, 0, 5], [0, 9, 9, 5], [2, 0, 0, 0]]


def test_merge_3d_plane_only_touches_that_plane():
    a = np.zeros((3, 2, 3), np.uint32)
    a[:, 0, 0] = 1
    a[:, 1, 2] = 2
    ref = a.copy()
    e = merge_labels(a, [1, 2], plane=(0, 1))
    exp = ref.copy()
    exp[1, 1, 2] = 1
    assert np.array_equal(a, exp)
    assert e.slices[0] == slice(1, 2) and e.before.shape[0] == 1
    idx, vals = e.changes(a)
    assert [i.tolist() for i in idx] == [[1], [1], [2]] and vals.tolist() == [1]
    e.undo(a)
    assert np.array_equal(a, ref)
    merge_labels(a, [1, 2])                       # Apply in 3D
    assert np.array_equal(a, np.where(ref > 0, 1, 0))


def test_merge_nothing_selected_is_an_empty_edit():
    a = np.ones((2, 2), np.uint8)
    e = merge_labels(a, [0])
    assert e.empty and a.tolist() == [[1, 1], [1, 1]]
    e.undo(a)
    assert a.tolist() == [[1, 1], [1, 1]]


def test_delete_2d_and_3d_with_undo():
    a = np.array([[1, 2], [2, 3]], np.uint32)
    e = delete_labels(a, [2])
    assert a.tolist() == [[1, 0], [0, 3]]
    e.undo(a)
    assert a.tolist() == [[1, 2], [2, 3]]
    v = np.stack([a, a, a])
    ref = v.copy()
    e = delete_labels(v, [1, 3], plane=(0, 2))
    assert v[2].tolist() == [[0, 2], [2, 0]] and np.array_equal(v[:2], ref[:2])
    e.undo(v)
    assert np.array_equal(v, ref)
    delete_labels(v, [1, 3])
    assert np.array_equal(v, np.where(ref == 2, 2, 0))


# ---------------------------------------------------------------- split

EXPECTED_SPLIT = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
    [0, 6, 6, 6, 6, 6, 6, 0, 0, 7, 7, 7, 7, 7, 7, 0],
    [0, 6, 6, 6, 6, 6, 6, 0, 0, 7, 7, 7, 7, 7, 7, 0],
    [0, 6, 6, 6, 6, 6, 6, 0, 0, 7, 7, 7, 7, 7, 7, 0],
    [0, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 0],
    [0, 6, 6, 6, 6, 6, 6, 0, 0, 7, 7, 7, 7, 7, 7, 0],
    [0, 6, 6, 6, 6, 6, 6, 0, 0, 7, 7, 7, 7, 7, 7, 0],
    [0, 6, 6, 6, 6, 6, 6, 0, 0, 7, 7, 7, 7, 7, 7, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])


def test_split_2d_with_point_markers_gets_new_ids_after_the_max():
    a = two_rooms()
    ref = a.copy()
    e = split_label(a, 1, markers=[[4, 3], [4, 12], [0, 0]])   # third point is background: ignored
    assert np.array_equal(a, EXPECTED_SPLIT)
    e.undo(a)
    assert np.array_equal(a, ref)


def two_houses():
    """two_rooms side by side: label 1 on the left, the same shape as label 2 on the right, 5 aside."""
    a = np.zeros((9, 34), np.uint32)
    a[:, :16] = two_rooms()
    b = two_rooms()
    a[:, 17:33] = np.where(b == 1, 2, 0)
    return a


def test_split_several_labels_at_once_as_each_alone():
    """Two marked labels split in one edit: each exactly as split alone, the pieces' ids
    following on from one label to the next (after the max, or from the start given)."""
    a = two_houses()
    ref = a.copy()
    e = split_labels(a, [1, 2], markers=[[4, 3], [4, 12], [4, 20], [4, 29]])
    assert np.array_equal(a[:, :16], EXPECTED_SPLIT)              # 1 -> 6, 7 (5 is the max)
    right = np.where(EXPECTED_SPLIT[:, :15] == 6, 8, np.where(EXPECTED_SPLIT[:, :15] == 7, 9, 0))
    assert np.array_equal(a[:, 17:32], right)                     # 2 -> 8, 9
    e.undo(a)
    assert np.array_equal(a, ref)
    split_labels(a, [2, 1], min_distance=3, new_ids_start=100)  # the order given: 2 first
    assert np.unique(a).tolist() == [0, 5, 100, 101, 102, 103]
    assert set(np.unique(a[:, 17:]).tolist()) == {0, 100, 101}


def test_split_several_is_all_or_nothing():
    a = two_houses()
    ref = a.copy()
    with pytest.raises(PanoptemError, match="Nothing split: Found 1 seed.* label 2"):
        split_labels(a, [1, 2], markers=[[4, 3], [4, 12], [4, 20]])   # one point in label 2
    assert np.array_equal(a, ref)
    with pytest.raises(PanoptemError, match="Label 9 is not in this layer"):
        split_labels(a, [1, 9], min_distance=3)
    assert np.array_equal(a, ref)


def test_split_2d_from_distance_maxima():
    a = two_rooms()
    split_label(a, 1, min_distance=3)
    assert np.unique(a).tolist() == [0, 5, 6, 7]
    # each room became one piece, the corridor is cut in its middle
    assert len(np.unique(a[1:8, 1:7])) == 1 and len(np.unique(a[1:8, 9:15])) == 1
    assert a[4, 7] == a[4, 3] and a[4, 8] == a[4, 12] and a[4, 3] != a[4, 12]


def test_split_refuses_colliding_ids_and_leaves_labels_untouched():
    a = two_rooms()
    ref = a.copy()
    with pytest.raises(PanoptemError, match="collide"):
        split_label(a, 1, markers=[[4, 3], [4, 12]], new_ids_start=4)   # 4, 5: 5 exists
    assert np.array_equal(a, ref)
    split_label(a, 1, markers=[[4, 3], [4, 12]], new_ids_start=20)
    assert np.unique(a).tolist() == [0, 5, 20, 21]


def test_split_needs_two_seeds():
    a = two_rooms()
    with pytest.raises(PanoptemError, match="need 2"):
        split_label(a, 1, markers=[[4, 3]])
    with pytest.raises(PanoptemError, match="Minimum Distance"):
        split_label(a, 1, min_distance=50)
    with pytest.raises(PanoptemError, match="not in this"):
        split_label(a, 3, markers=[[4, 3], [4, 12]])


def test_split_with_label_divisor_stays_in_class():
    a = two_rooms() * 0
    a[two_rooms() == 1] = 1001
    a[0, 0] = 2001
    split_label(a, 1001, markers=[[4, 3], [4, 12]], label_divisor=1000)
    assert np.unique(a).tolist() == [0, 1002, 1003, 2001]


def test_split_near_the_top_of_its_class_takes_free_ids_of_the_class():
    """A split whose pieces would run past the class's last id (with divisor 10: 19 used, the
    next ids 20, 21 are class 2's) takes the class's free ids instead, or says it cannot."""
    a = two_rooms() * 0
    a[two_rooms() == 1] = 11
    a[0, 0], a[0, 1], a[0, 2] = 19, 13, 21
    ref = a.copy()
    split_label(a, 11, markers=[[4, 3], [4, 12]], label_divisor=10)
    assert np.unique(a).tolist() == [0, 12, 13, 14, 19, 21]  # 12 and 14: the class's gaps
    a = ref.copy()
    a[0, 3:9] = [12, 14, 15, 16, 17, 18]  # no free id left (11 is the object being split)
    before = a.copy()
    with pytest.raises(PanoptemError, match=r"Class 1 has no free id below 20 for 2 new object\(s\) \(0 left\); raise the label divisor"):
        split_label(a, 11, markers=[[4, 3], [4, 12]], label_divisor=10)
    assert np.array_equal(a, before)
    with pytest.raises(PanoptemError, match="leave class 1"):
        split_label(a, 11, markers=[[4, 3], [4, 12]], label_divisor=10, new_ids_start=22)


def test_split_3d_plane_and_volume():
    room = two_rooms()
    room[room == 5] = 0
    v = np.stack([room, room, room])
    ref = v.copy()
    e = split_label(v, 1, markers=[[1, 4, 3], [1, 4, 12], [0, 4, 3]], plane=(0, 1))  # z=0 point ignored
    exp = ref.copy()
    exp[1] = np.select([EXPECTED_SPLIT == 6, EXPECTED_SPLIT == 7], [2, 3], 0)   # ids 2 and 3
    assert np.array_equal(v, exp)
    e.undo(v)
    assert np.array_equal(v, ref)
    split_label(v, 1, markers=[[1, 4, 3], [1, 4, 12]])               # whole volume
    assert np.array_equal(v, np.stack([exp[1]] * 3))


# ---------------------------------------------------------------- morphology

def test_dilate_2d_never_overwrites_a_neighbour():
    a = np.zeros((5, 5), np.uint32)
    a[2, 2] = 1
    a[1:4, 3] = 2
    ref = a.copy()
    e = morph_label(a, [1], "dilate", radius=1)
    exp = ref.copy()
    exp[1, 2] = exp[3, 2] = exp[2, 1] = 1
    assert np.array_equal(a, exp)
    e.undo(a)
    assert np.array_equal(a, ref)


def test_dilate_3d_ball_and_plane():
    v = np.zeros((5, 5, 5), np.uint16)
    v[2, 2, 2] = 1
    v[1, 2, 2] = 9
    ref = v.copy()
    morph_label(v, [1], "dilate", radius=1)
    exp = ref.copy()
    for d in [(3, 2, 2), (2, 1, 2), (2, 3, 2), (2, 2, 1), (2, 2, 3)]:
        exp[d] = 1
    assert np.array_equal(v, exp)
    v = ref.copy()
    morph_label(v, [1], "dilate", radius=1, plane=(1, 2))      # xz plane y=2: grows in z and x only
    exp = ref.copy()
    for d in [(3, 2, 2), (2, 2, 1), (2, 2, 3)]:
        exp[d] = 1
    assert np.array_equal(v, exp)


def test_two_labels_growing_into_the_same_voxel_smaller_id_wins():
    a = np.array([[1, 0, 2]], np.uint8)
    morph_label(a, [1, 2], "dilate", radius=1)
    assert a.tolist() == [[1, 1, 2]]


def test_erode_2d_and_the_array_edge_does_not_erode():
    a = np.zeros((7, 7), np.uint32)
    a[1:6, 1:6] = 3
    morph_label(a, [3], "erode", radius=1)
    exp = np.zeros((7, 7), np.uint32)
    exp[2:5, 2:5] = 3
    assert np.array_equal(a, exp)
    b = np.zeros((4, 5), np.uint32)
    b[0:3, 0:4] = 1
    morph_label(b, [1], "erode")
    assert b.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]


def test_open_removes_corners_and_spur_end():
    a = np.zeros((7, 9), np.uint8)
    a[1:6, 1:6] = 1
    a[3, 6:8] = 1
    a[0, 8] = 4
    morph_label(a, [1], "open", radius=1)
    assert a.tolist() == [[0, 0, 0, 0, 0, 0, 0, 0, 4],
                          [0, 0, 1, 1, 1, 0, 0, 0, 0],
                          [0, 1, 1, 1, 1, 1, 0, 0, 0],
                          [0, 1, 1, 1, 1, 1, 1, 0, 0],
                          [0, 1, 1, 1, 1, 1, 0, 0, 0],
                          [0, 0, 1, 1, 1, 0, 0, 0, 0],
                          [0, 0, 0, 0, 0, 0, 0, 0, 0]]


def test_close_bridges_a_gap_but_keeps_the_neighbour_in_it():
    a = np.zeros((7, 9), np.uint8)
    a[1:6, 1:4] = 1
    a[1:6, 5:8] = 1
    a[2, 4] = 2
    morph_label(a, [1], "close", radius=1)
    exp = np.zeros((7, 9), np.uint8)
    exp[1:6, 1:8] = 1
    exp[1, 4] = exp[5, 4] = 0     # the gap's ends stay open
    exp[2, 4] = 2
    assert np.array_equal(a, exp)


def test_fill_holes_background_only_and_never_a_neighbour_in_the_hole():
    a = np.zeros((7, 14), np.uint32)
    a[1:6, 1:6] = 1
    a[2:5, 2:5] = 0
    a[3, 3] = 2               # a neighbour sits in label 1's hole
    a[1:6, 7:12] = 3
    a[2:5, 8:11] = 0          # a plain 3x3 hole
    ref = a.copy()
    e = morph_label(a, [1, 3], "fill_holes")
    exp = ref.copy()
    exp[2:5, 8:11] = 3
    assert np.array_equal(a, exp)
    e.undo(a)
    assert np.array_equal(a, ref)
    morph_label(a, [3], "fill_holes", hole_size=8)   # the 9-pixel hole is too big
    assert np.array_equal(a, ref)
    morph_label(a, [3], "fill_holes", hole_size=9)   # at most hole_size: filled
    assert np.array_equal(a, exp)


def test_fill_holes_3d_hollow_cube_and_open_hole_not_filled():
    v = np.zeros((5, 5, 5), np.uint32)
    v[:4, :4, :4] = 1       # touches the array corner
    v[1:3, 1:3, 1:3] = 0    # closed cavity
    ref = v.copy()
    morph_label(v, [1], "fill_holes")
    assert np.array_equal(v, np.where(np.pad(np.ones((4, 4, 4)), ((0, 1),) * 3) > 0, 1, 0))
    # in plane z=1 the cavity is a 2D hole too; in plane x=0 there is none
    w = ref.copy()
    morph_label(w, [1], "fill_holes", plane=(2, 0))
    assert np.array_equal(w, ref)
    morph_label(w, [1], "fill_holes", plane=(0, 1))
    exp = ref.copy()
    exp[1, 1:3, 1:3] = 1
    assert np.array_equal(w, exp)
    # a notch open to the outside is not a hole
    n = np.ones((3, 3), np.uint8)
    n[0, 1] = 0
    morph_label(n, [1], "fill_holes")
    assert n[0, 1] == 0


def test_morph_all_labels_when_ids_is_none():
    a = np.array([[1, 0, 0, 0, 2]], np.uint8)
    e = morph_label(a, None, "dilate")
    assert a.tolist() == [[1, 1, 0, 2, 2]]
    e.undo(a)
    v = np.stack([a, a])
    morph_label(v, None, "dilate", plane=(0, 1))
    assert v[1].tolist() == [[1, 1, 0, 2, 2]] and v[0].tolist() == [[1, 0, 0, 0, 2]]


def test_morph_bad_arguments():
    a = np.ones((3, 3), np.uint8)
    with pytest.raises(PanoptemError, match="Operation must be"):
        morph_label(a, [1], "grow")
    with pytest.raises(PanoptemError, match="Radius"):
        morph_label(a, [1], "dilate", radius=0)
    assert morph_label(a, [7], "dilate").empty


# ---------------------------------------------------------------- filter / count / next

def test_filter_small_is_strictly_smaller_and_returns_a_copy():
    a = np.array([[1, 1, 0, 2, 2, 2], [3, 0, 0, 0, 0, 0]], np.uint32)
    out, removed = filter_labels(a, min_size=2, return_removed=True)
    assert out.tolist() == [[1, 1, 0, 2, 2, 2], [0, 0, 0, 0, 0, 0]] and removed.tolist() == [3]
    assert a[1, 0] == 3                                        # input untouched
    assert filter_labels(a, min_size=3).tolist() == [[0, 0, 0, 2, 2, 2], [0] * 6]


def test_filter_boundary_2d_and_3d_plane():
    a = np.zeros((5, 5), np.uint8)
    a[0, 2] = 1
    a[2, 2] = 2
    a[4, 4] = 3
    assert filter_labels(a, boundary=True).tolist() == np.where(a == 2, 2, 0).tolist()
    v = np.zeros((3, 5, 5), np.uint8)
    v[1] = a
    v[2, 2, 2] = 7    # inner voxel of the volume... but z=2 is the volume's last face
    out = filter_labels(v, boundary=True)
    assert np.unique(out).tolist() == [0, 2]
    out = filter_labels(v, boundary=True, plane=(0, 2))       # in plane z=2, (2,2) is interior
    assert np.array_equal(out, v)
    out = filter_labels(v, min_size=2, plane=(0, 1))
    assert np.array_equal(out[1], np.zeros((5, 5))) and out[2, 2, 2] == 7


def batch_stack():
    """Two 2D images whose ids restart (as 2D batch inference writes them): in slice 0 label 1
    is 4 pixels and touches the border, label 2 is 1 pixel; in slice 1 label 1 is 1 pixel inside."""
    v = np.zeros((2, 5, 5), np.uint16)
    v[0, 0, 1:3] = v[0, 1, 1:3] = 1
    v[0, 3, 3] = 2
    v[1, 2, 2] = 1
    return v


def test_filter_and_count_each_slice_on_its_own():
    """A stack of unrelated 2D images: sizes and borders per slice (in 3D label 1 would be 5
    voxels and touch the volume's faces, and each id would count once)."""
    v = batch_stack()
    out, removed = filter_labels(v, min_size=2, per_slice=True, return_removed=True)
    assert np.array_equal(out[0], np.where(v[0] == 1, 1, 0)) and not out[1].any()
    assert removed.tolist() == [1, 2]                          # 2 in slice 0, 1 in slice 1
    assert np.array_equal(filter_labels(v, min_size=2), np.where(v == 1, 1, 0))   # 3D: 1 has 5 voxels
    out = filter_labels(v, boundary=True, per_slice=True)
    assert out[0, 3, 3] == 2 and out[0, 0, 1] == 0 and out[1, 2, 2] == 1  # 3D: every face is z=0 or z=1
    t = count_table(v, per_slice=True)
    assert {k: v.tolist() for k, v in t.items()} == {"slice": [0, 0, 1], "class_id": [1, 1, 1], "label": [1, 2, 1],
                                                    "voxels": [4, 1, 1]}
    assert count_table(v)["label"].tolist() == [1, 2]
    with pytest.raises(PanoptemError, match="3D stack of 2D images and no plane"):
        count_table(v, per_slice=True, plane=(0, 1))
    with pytest.raises(PanoptemError, match="got 2D labels"):
        filter_labels(v[0], per_slice=True)


def test_negative_ids_are_refused_by_every_operation():
    """Signed labels holding negative ids: one error everywhere (a merge wrote its negative
    default target, the next available label was negative, counts put them in class 0)."""
    lab = np.array([[0, -3, -3, 0, -5, -5]], np.int8)
    ops = [lambda a: find_next_available_label(a), lambda a: merge_labels(a, [-3, -5]), lambda a: count_labels(a),
           lambda a: count_table(a), lambda a: morph_label(a, None, "dilate"), lambda a: labels_at_points(a, [[0, 1]]),
           lambda a: delete_labels(a, [-3]), lambda a: filter_labels(a, min_size=1), lambda a: split_label(a, 1)]
    for op in ops:
        a = lab.copy()
        with pytest.raises(PanoptemError, match="negative labels"):
            op(a)
        assert np.array_equal(a, lab)
    assert count_table(np.abs(lab))["label"].tolist() == [3, 5]   # the same ids, positive: fine


def test_count_labels():
    a = np.array([[1001, 1002, 0], [2001, 1001, 3000]], np.uint32)
    c = count_labels(a, label_divisor=1000)
    assert sorted(c) == [1, 2, 3]
    assert c[1]["count"] == 2 and c[1]["ids"].tolist() == [1001, 1002]
    assert c[2]["ids"].tolist() == [2001] and c[3]["ids"].tolist() == [3000]
    c = count_labels(np.array([[4, 4, 9], [0, 0, 1]]))
    assert list(c) == [1] and c[1]["count"] == 3 and c[1]["ids"].tolist() == [1, 4, 9]
    v = np.zeros((2, 2, 2), np.uint8)
    v[0, 0, 0] = 1
    v[1, 1, 1] = 2
    assert count_labels(v, plane=(0, 1))[1]["ids"].tolist() == [2]
    assert count_labels(np.zeros((2, 2), np.uint8)) == {}


def test_find_next_available_label():
    a = np.array([[1001, 1005, 2001, 0]], np.uint32)
    assert find_next_available_label(a, 1, 1000) == 1006
    assert find_next_available_label(a, 2, 1000) == 2002
    assert find_next_available_label(a, 3, 1000) == 3001
    assert find_next_available_label(a) == 2002
    full = np.array([[11, 13, 19]], np.uint8)     # divisor 10: class 1 has ids 11..19
    assert find_next_available_label(full, 1, 10) == 12
    with pytest.raises(PanoptemError, match="no free id"):
        find_next_available_label(np.arange(11, 20, dtype=np.uint8), 1, 10)
    with pytest.raises(PanoptemError, match="dtype"):
        find_next_available_label(np.array([255], np.uint8))
    v = np.zeros((2, 1, 2), np.uint32)
    v[0, 0, 0] = 8
    assert find_next_available_label(v, plane=(0, 1)) == 1


def test_bad_inputs_say_what_to_do():
    with pytest.raises(PanoptemError, match="integer dtype"):
        merge_labels(np.zeros((2, 2), np.float32), [1])
    with pytest.raises(PanoptemError, match="numpy"):
        merge_labels([[1, 2]], [1])
    with pytest.raises(PanoptemError, match="3D label volume"):
        delete_labels(np.zeros((2, 2), np.uint8), [1], plane=(0, 0))
    with pytest.raises(PanoptemError, match="outside"):
        delete_labels(np.zeros((2, 2, 2), np.uint8), [1], plane=(0, 5))


def test_split_numbers_pieces_in_the_order_the_points_were_given():
    lab = np.ones((1, 10), np.uint32)
    proofread.split_label(lab, 1, markers=[[0, 8], [0, 1], [0, 8]], new_ids_start=20)
    assert lab[0, 9] == 20 and lab[0, 0] == 21       # the first point's piece gets the first id


def test_uint64_ids_past_2_63_are_edited_exactly():
    """Ids past 2^63 were turned negative: merges and deletes did nothing, the count table gave
    negative labels, a split was refused."""
    a, b = 2**63 + 5, 2**64 - 4
    lab = np.zeros((2, 12, 12), np.uint64)
    lab[0, :5, :5], lab[0, 6:, 6:], lab[1, 2:10, 1:11] = a, b, 7
    m = lab.copy()
    merge_labels(m, np.array([a, b], np.uint64))
    assert set(np.unique(m).tolist()) == {0, 7, a}
    m = lab.copy()
    merge_labels(m, [a, b], target=b)                     # Python ints past 2^63
    assert set(np.unique(m).tolist()) == {0, 7, b}
    m = lab.copy()
    delete_labels(m, [b, 2**70])                           # an id no uint64 holds marks nothing
    assert set(np.unique(m).tolist()) == {0, 7, a}
    m = lab.copy()
    proofread.morph_label(m, op="dilate", radius=1)
    assert (m == a).sum() > (lab == a).sum() and (m == b).sum() > (lab == b).sum()
    t = proofread.count_table(lab, label_divisor=2**32)
    assert t["label"].tolist() == [7, a, b] and t["class_id"].tolist() == [0, a // 2**32, b // 2**32]
    m = lab.copy()
    proofread.split_label(m, 7, markers=[[1, 5, 1], [1, 5, 10]])
    assert set(np.unique(m).tolist()) == {0, a, b, b + 1, b + 2}
    assert find_next_available_label(m, 0, 2**32) == 1   # class 0 (ids 1..2^32-1): 7 is gone
    with pytest.raises(PanoptemError, match="does not fit dtype uint64"):
        proofread.split_label(m, b, markers=[[0, 6, 6], [0, 11, 11]])  # into 2^64 - 1 and 2^64: no room


def test_read_only_labels_are_refused_before_any_edit():
    lab = np.zeros((8, 8), np.uint16)
    lab[:4, :4], lab[4:, 4:] = 3, 9
    lab.flags.writeable = False
    for edit in (lambda: merge_labels(lab, [3, 9]), lambda: delete_labels(lab, [3]),
                 lambda: proofread.morph_label(lab, [3], "dilate", 1),
                 lambda: proofread.split_label(lab, 3, markers=[[0, 0], [3, 3]])):
        with pytest.raises(PanoptemError, match="read-only"):
            edit()
    assert (lab == 3).sum() == 16 and (lab == 9).sum() == 16


def test_a_merge_target_the_dtype_cannot_hold_is_refused():
    lab = np.array([[3, 0, 5]], np.uint8)
    with pytest.raises(PanoptemError, match="does not fit"):     # an OverflowError from numpy before
        merge_labels(lab, [3, 5], target=300)
    assert lab.tolist() == [[3, 0, 5]]
    with pytest.raises(PanoptemError, match="largest id is taken"):
        find_next_available_label(np.array([[2**64 - 1]], np.uint64))


def test_ids_that_are_not_objects_are_refused():
    """0 is background, not an object to split; a fractional or missing id is a mistake, not id 1."""
    from panoptem.errors import PanoptemError
    from panoptem.proofread import label_bbox, merge_labels, split_label
    lab = np.zeros((20, 20), np.uint32)
    lab[2:8, 2:18] = 1
    lab[12:18, 2:18] = 2
    before = lab.copy()
    for call, match in ((lambda: split_label(lab, 0), "0 is background"),
                        (lambda: merge_labels(lab, [1.5, 2]), "whole number"),
                        (lambda: merge_labels(lab, [None, 2]), "whole number"),
                        (lambda: merge_labels(lab, [1, 2], target=0), "0 is background"),
                        (lambda: label_bbox(lab, 0), "0 is background")):
        with pytest.raises(PanoptemError, match=match):
            call()
        np.testing.assert_array_equal(lab, before)
    merge_labels(lab, [np.uint64(1), 2.0])                      # whole numbers of any type are ids
    assert set(np.unique(lab)) == {0, 1}


def test_split_gives_every_voxel_of_the_label_a_new_id_even_where_no_seed_reaches():
    """A pixel joined to the label only at a corner kept the old id beside the new pieces (the
    watershed floods face neighbours only): it now goes to the nearest piece."""
    lab = np.zeros((7, 12), np.uint32)
    lab[1:6, 1:5] = 1
    lab[1:6, 6:10] = 1
    lab[3, 5] = 1
    lab[0, 0] = 1                         # touches the left blob at a corner only
    lab[6, 11] = 7                        # another label: untouched
    before = lab.copy()
    split_label(lab, 1, markers=[[3, 2], [3, 8]])
    assert lab[0, 0] == lab[3, 2] and sorted(np.unique(lab[before == 1]).tolist()) == [8, 9]
    assert lab[6, 11] == 7 and (lab == 0).sum() == (before == 0).sum()
