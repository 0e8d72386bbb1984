"""Per-slice evaluation, ignoring small ground truth and the error breakdown, on hand-built arrays."""
import json

import numpy as np
import pytest

from panoptem.errors import PanoptemError
from panoptem import error_breakdown, evaluate


def every_error():
    """One image holding each kind of error once (G = ground truth, P = prediction):

    G1 (10x20) split into P1 (10x14, IoU 0.7: matched) and P2 (10x6, unmatched piece);
    G2 and G3 (10x10 each) joined by P3 (10x22, IoU 100/220 with each: unmatched merge);
    G4 missed; P4 on background; G5 hit by P5 shifted 4 columns (IoU 60/140: neither matched
    nor a miss or false object); G6 (10x15) cut into three 10x5 pieces (none matched).
    """
    gt = np.zeros((12, 200), np.uint32)
    pred = np.zeros_like(gt)
    gt[:10, 0:20] = 1
    pred[:10, 0:14], pred[:10, 14:20] = 11, 12
    gt[:10, 30:40], gt[:10, 40:50] = 2, 3
    pred[:10, 30:52] = 13
    gt[:10, 60:70] = 4
    pred[:10, 80:90] = 14
    gt[:10, 100:110] = 5
    pred[:10, 104:114] = 15
    gt[:10, 130:145] = 6
    pred[:10, 130:135], pred[:10, 135:140], pred[:10, 140:145] = 16, 17, 18
    return pred, gt


def test_breakdown_attributes_every_unmatched_object_once():
    pred, gt = every_error()
    r = evaluate(pred, gt)
    assert (r["n_pred"], r["n_gt"], r["tp_50"], r["fp_50"], r["fn_50"]) == (8, 6, 1, 7, 5)
    e = r["errors"]
    assert (e["false_objects"], e["misses"], e["splits"], e["merges"]) == (1, 1, 2, 1)
    assert e["fp"] == {"false_object": 1, "wrong_class": 0, "merge": 1, "split_piece": 4, "other": 1}
    assert e["fn"] == {"miss": 1, "wrong_class": 0, "merged": 2, "split": 1, "other": 1}
    assert sum(e["fp"].values()) == r["fp_50"] and sum(e["fn"].values()) == r["fn_50"]
    json.dumps(r)  # stays JSON-serialisable


def test_error_breakdown_names_the_objects_largest_first():
    pred, gt = every_error()
    b = error_breakdown(pred, gt)
    assert b["counts"] == evaluate(pred, gt)["errors"]
    assert b["false_objects"] == [{"label": 14, "voxels": 100}]
    assert b["misses"] == [{"label": 4, "voxels": 100}]
    assert b["splits"] == [{"label": 1, "voxels": 200, "pieces": [11, 12]},
                           {"label": 6, "voxels": 150, "pieces": [16, 17, 18]}]
    assert b["merges"] == [{"label": 13, "voxels": 220, "parts": [2, 3]}]


def test_small_slivers_are_no_split_and_a_merge_needs_substance():
    """A 2-pixel sliver inside a big object is under 10 % of it: no split. A prediction mostly on
    background that touches two objects is a false object, not a merge."""
    gt = np.zeros((10, 60), np.uint32)
    gt[:, :20] = 1
    pred = np.zeros_like(gt)
    pred[:, :19] = 1
    pred[0, 19] = 2  # sliver inside gt 1
    gt[0, 40], gt[1, 40] = 2, 3  # two single-pixel objects, the whole of each inside p 3
    pred[:, 30:60] = 3
    e = evaluate(pred, gt)["errors"]
    assert e["splits"] == 0 and e["merges"] == 0
    assert e["fp"] == {"false_object": 1, "wrong_class": 0, "merge": 0, "split_piece": 0, "other": 1}


def stack_2d_results():
    """Three slices whose ids restart in every slice. Slice 0: one exact match. Slice 1: B matched,
    C (gt 2) missed. Slice 2: no ground truth, one false object."""
    gt = np.zeros((3, 10, 10), np.uint16)
    pred = np.zeros_like(gt)
    gt[0, 1:5, 1:5], pred[0, 1:5, 1:5] = 1, 1
    gt[1, 1:5, 1:5], pred[1, 1:5, 1:5] = 1, 1
    gt[1, 6:9, 6:9] = 2
    pred[2, 6:9, 6:9] = 1
    return pred, gt


def test_per_slice_mode_counts_objects_per_slice():
    pred, gt = stack_2d_results()
    r = evaluate(pred, gt, per_slice=True)
    assert (r["n_pred"], r["n_gt"], r["tp_50"], r["fp_50"], r["fn_50"]) == (3, 3, 2, 1, 1)
    assert r["f1_50"] == pytest.approx(2 / 3)
    assert r["foreground_iou"] == pytest.approx(32 / (32 + 9 + 9))
    assert (r["errors"]["false_objects"], r["errors"]["misses"]) == (1, 1)
    # Without the mode the restarted ids are two 3D objects per side.
    r3 = evaluate(pred, gt)
    assert (r3["n_pred"], r3["n_gt"]) == (1, 2)
    b = error_breakdown(pred, gt, per_slice=True)
    assert b["false_objects"] == [{"label": 1, "voxels": 9, "slice": 2}]
    assert b["misses"] == [{"label": 2, "voxels": 9, "slice": 1}]


def test_per_slice_of_2d_images_is_the_plain_score():
    pred, gt = every_error()
    assert evaluate(pred, gt, per_slice=True) == evaluate(pred, gt)


def test_ignore_smaller():
    """gt A (100 px) is found; s (4 px) is found exactly by p 2; t (3 px) is missed; u (2 px) lies
    inside p 3 (20 px); p 4 (21 px) touches v (4 px) by one pixel, mostly on background."""
    gt = np.zeros((20, 40), np.uint32)
    pred = np.zeros_like(gt)
    gt[0:10, 0:10] = pred[0:10, 0:10] = 1         # A
    gt[12:14, 0:2] = pred[12:14, 0:2] = 2         # s, found by p 2
    gt[16, 0:3] = 3                               # t
    pred[12:16, 20:25] = 3                        # p 3 ...
    gt[13, 21:23] = 4                             # ... around u
    gt[18:20, 30:32] = 5                          # v
    pred[14:18, 27:32] = 4                        # p 4, rows 14-17 ...
    pred[18, 30] = 4                              # ... and one pixel on v: 21 px
    r = evaluate(pred, gt)
    assert (r["n_pred"], r["n_gt"], r["tp_50"]) == (4, 5, 2)
    r = evaluate(pred, gt, ignore_smaller=5)
    assert (r["n_ignored_gt"], r["n_ignored_pred"]) == (4, 2)
    assert (r["n_pred"], r["n_gt"], r["tp_50"], r["fp_50"], r["fn_50"]) == (2, 1, 1, 1, 0)
    assert r["errors"]["false_objects"] == 1 and r["errors"]["misses"] == 0
    # ignored objects are background for the foreground IoU: A against A plus p 4
    assert r["foreground_iou"] == pytest.approx(100 / 121)
    assert evaluate(pred, gt, ignore_smaller=4)["n_ignored_gt"] == 2  # s and v (4 px) count again


def test_ignore_smaller_per_slice_uses_slice_sizes():
    pred, gt = stack_2d_results()
    r = evaluate(pred, gt, per_slice=True, ignore_smaller=10)  # gt 2 in slice 1 has 9 px
    assert (r["n_gt"], r["n_ignored_gt"], r["fn_50"]) == (2, 1, 0)
    assert r["n_ignored_pred"] == 0 and r["fp_50"] == 1  # the false object touches nothing ignored


def test_breakdown_stays_within_classes():
    gt = np.zeros((10, 20), np.uint32)
    gt[:, :20] = 1001
    pred = np.zeros_like(gt)
    pred[:, :10], pred[:, 10:] = 1001, 2001  # the second piece is of another class
    assert evaluate(pred, gt)["errors"]["splits"] == 1
    e = evaluate(pred, gt, label_divisor=1000)["errors"]
    # the piece of another class lies on an object, not on background
    assert e["splits"] == 0 and e["fp"]["false_object"] == 0 and e["fp"]["wrong_class"] == 1


def test_bad_ignore_smaller_is_a_user_error():
    pred, gt = every_error()
    with pytest.raises(PanoptemError, match="ignore_smaller"):
        evaluate(pred, gt, ignore_smaller=-1)


def test_an_object_found_in_place_with_the_wrong_class_is_a_wrong_class_not_a_false_object_and_a_miss():
    """With a label divisor, a prediction lying exactly on a ground-truth object of another class
    was called a false object ("mostly on background") and the ground truth a miss, although each
    lies wholly inside the other."""
    from panoptem._evaluate import error_breakdown
    gt = np.zeros((20, 40), np.uint32)
    gt[2:10, 2:10] = 1001
    gt[2:10, 20:30] = 1002                     # found right
    pred = np.zeros_like(gt)
    pred[2:10, 2:10] = 2001                    # the very same pixels, class 2
    pred[2:10, 20:30] = 1005
    pred[12:18, 30:38] = 1009                  # on background: a false object still
    e = evaluate(pred, gt, label_divisor=1000)["errors"]
    assert (e["false_objects"], e["misses"], e["wrong_class"]) == (1, 0, 1)
    assert e["fp"]["wrong_class"] == 1 and e["fn"]["wrong_class"] == 1 and e["fp"]["false_object"] == 1
    b = error_breakdown(pred, gt, label_divisor=1000)
    assert b["wrong_class"] == [{"label": 2001, "voxels": 64, "ground_truth": [1001]}]
    assert [f["label"] for f in b["false_objects"]] == [1009]
    # without classes the same pair is a match
    assert evaluate(pred, gt)["errors"]["wrong_class"] == 0
