import json

import numpy as np
import pytest

from panoptem.errors import PanoptemError
from panoptem import evaluate, evaluate_files

SCORES = ("foreground_iou", "precision_50", "recall_50", "f1_50", "precision_75", "recall_75",
          "f1_75", "pq", "sq", "rq", "mean_ap", "matched_iou_mean")


def two_objects():
    """gt: A (10x20) and B (5x5); pred: A shifted by 5 columns (IoU 150/250 = 0.6), B exact."""
    gt = np.zeros((20, 30), np.uint32)
    gt[0:10, 0:20] = 1
    gt[15:20, 0:5] = 2
    pred = np.zeros((20, 30), np.uint32)
    pred[0:10, 5:25] = 8
    pred[15:20, 0:5] = 3
    return pred, gt


def test_identical_inputs_score_one():
    _, gt = two_objects()
    r = evaluate(gt, gt)
    for k in SCORES:
        assert r[k] == 1.0, k
    assert r["n_pred"] == r["n_gt"] == 2


def test_big_endian_labels_score_as_native_ones(tmp_path):
    """ImageJ writes TIFFs big-endian; their labels are scored (and previewed) as any others
    (fastremap refused them with a traceback)."""
    import tifffile

    from panoptem.cli import main
    from panoptem.reporting import preview
    gt = np.zeros((3, 20, 20), np.uint16)
    gt[:, 2:9, 2:9], gt[:, 12:18, 10:19] = 300, 7
    pred = gt.copy()
    pred[:, 12:18, 10:13] = 0
    want = evaluate(pred, gt)
    assert evaluate(pred.astype(">u2"), gt.astype(">u2")) == want
    assert "2 objects" in preview(gt.astype(">u2")).title
    tifffile.imwrite(tmp_path / "gt.tif", gt, byteorder=">", photometric="minisblack")
    tifffile.imwrite(tmp_path / "pred.tif", pred, photometric="minisblack")
    assert main(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif")]) == 0


def test_shifted_object_is_tp_at_50_not_75():
    pred, gt = two_objects()
    r = evaluate(pred, gt)
    assert (r["tp_50"], r["fp_50"], r["fn_50"]) == (2, 0, 0)
    assert (r["tp_75"], r["fp_75"], r["fn_75"]) == (1, 1, 1)
    assert r["precision_50"] == r["recall_50"] == r["f1_50"] == 1.0
    assert r["precision_75"] == r["recall_75"] == r["f1_75"] == 0.5
    assert r["matched_iou_mean"] == pytest.approx(0.8)
    # PQ at IoU > 0.5: both match, (0.6 + 1.0) / 2
    assert r["sq"] == pytest.approx(0.8) and r["rq"] == 1.0 and r["pq"] == pytest.approx(0.8)
    # AP = TP/(TP+FP+FN): 1 at t = 0.50, 0.55, 0.60 (IoU >= t); 1/3 at the seven others
    assert r["mean_ap"] == pytest.approx((3 + 7 / 3) / 10)
    # foreground: intersection 150 + 25, union 225 + 225 - 175
    assert r["foreground_iou"] == pytest.approx(175 / 275)


def test_split_object():
    """One gt object (10x20) split into predictions of 10x14 (IoU 0.7) and 10x6 (IoU 0.3)."""
    gt = np.zeros((10, 20), np.uint16)
    gt[:] = 5
    pred = np.zeros((10, 20), np.uint16)
    pred[:, :14] = 1
    pred[:, 14:] = 2
    r = evaluate(pred, gt)
    assert (r["n_pred"], r["n_gt"]) == (2, 1)
    assert (r["tp_50"], r["fp_50"], r["fn_50"]) == (1, 1, 0)
    assert r["precision_50"] == 0.5 and r["recall_50"] == 1.0
    assert r["f1_50"] == pytest.approx(2 / 3)
    assert r["precision_75"] == r["recall_75"] == r["f1_75"] == 0.0
    assert r["pq"] == pytest.approx(0.7 * 2 / 3) and r["sq"] == pytest.approx(0.7)
    assert r["matched_iou_mean"] == pytest.approx(0.7)
    assert r["foreground_iou"] == 1.0


def test_halves_at_exactly_half_match_only_once():
    gt = np.ones((4, 8), np.uint8)
    pred = np.zeros((4, 8), np.uint8)
    pred[:, :4] = 1
    pred[:, 4:] = 2
    r = evaluate(pred, gt)
    assert (r["tp_50"], r["fp_50"], r["fn_50"]) == (1, 1, 0)
    assert r["pq"] == 0.0  # PQ needs IoU > 0.5


def test_hungarian_beats_greedy_below_half():
    """A = [0,20), B = [20,40); Y = [0,8) hits A at 0.4; X = [8,30) hits A at 0.4 and B at 0.3125.
    The best one-to-one assignment is Y-A and X-B (two matches), not X-A (one)."""
    gt = np.zeros((1, 40), np.uint32)
    gt[0, :20], gt[0, 20:] = 1, 2
    pred = np.zeros((1, 40), np.uint32)
    pred[0, :8], pred[0, 8:30] = 1, 2
    r = evaluate(pred, gt, iou_thresholds=(0.3,))
    assert r["tp_30"] == 2 and r["f1_30"] == 1.0
    assert r["matched_iou_mean"] == pytest.approx((0.4 + 0.3125) / 2)
    assert r["tp_30"] + r["fp_30"] == 2 and "f1_50" not in r


def test_pq_with_false_positive_and_negative():
    gt = np.zeros((10, 60), np.uint32)
    gt[:, 0:10], gt[:, 20:30], gt[:, 40:50] = 1, 2, 3  # the third is missed
    pred = np.zeros((10, 60), np.uint32)
    pred[:, 0:6] = 1   # IoU 0.6 with gt 1
    pred[:, 20:29] = 2  # IoU 0.9 with gt 2
    pred[:, 55:60] = 3  # false positive
    r = evaluate(pred, gt)
    assert (r["tp_50"], r["fp_50"], r["fn_50"]) == (2, 1, 1)
    assert r["sq"] == pytest.approx(0.75)
    assert r["rq"] == pytest.approx(2 / 3)
    assert r["pq"] == pytest.approx(1.5 / 3)


@pytest.mark.parametrize("pred_empty, gt_empty", [(True, True), (True, False), (False, True)])
def test_empty_inputs(pred_empty, gt_empty):
    _, gt = two_objects()
    empty = np.zeros_like(gt)
    r = evaluate(empty if pred_empty else gt, empty if gt_empty else gt)
    expected = 1.0 if (pred_empty and gt_empty) else 0.0
    for k in SCORES:
        assert r[k] == expected, k
    assert r["n_pred"] == (0 if pred_empty else 2) and r["n_gt"] == (0 if gt_empty else 2)
    assert r["fn_50"] == (2 if pred_empty and not gt_empty else 0)
    assert r["fp_50"] == (2 if gt_empty and not pred_empty else 0)


def test_3d_cube_shifted_in_z():
    gt = np.zeros((8, 6, 6), np.uint32)
    gt[1:5, 1:5, 1:5] = 1
    pred = np.zeros_like(gt)
    pred[2:6, 1:5, 1:5] = 4  # intersection 48, union 80: IoU 0.6
    r = evaluate(pred, gt)
    assert r["matched_iou_mean"] == pytest.approx(0.6)
    assert r["foreground_iou"] == pytest.approx(0.6)
    assert r["f1_50"] == 1.0 and r["f1_75"] == 0.0


def test_per_class_with_divisor():
    gt = np.zeros((10, 40), np.uint32)
    gt[:, 0:10] = 1001   # class 1
    gt[:, 20:30] = 2001  # class 2
    pred = np.zeros((10, 40), np.uint32)
    pred[:, 0:10] = 2001  # right shape, wrong class
    pred[:, 20:30] = 2007
    assert evaluate(pred, gt)["f1_50"] == 1.0  # without classes both match
    r = evaluate(pred, gt, label_divisor=1000)
    assert set(r["per_class"]) == {"1", "2"}
    c1, c2 = r["per_class"]["1"], r["per_class"]["2"]
    assert (c1["n_pred"], c1["n_gt"], c1["f1_50"], c1["foreground_iou"]) == (0, 1, 0.0, 0.0)
    assert (c2["n_pred"], c2["n_gt"], c2["tp_50"]) == (2, 1, 1)
    assert c2["precision_50"] == 0.5 and c2["recall_50"] == 1.0
    assert c2["foreground_iou"] == 0.5
    # overall pools the counts: TP 1, FP 1, FN 1
    assert (r["tp_50"], r["fp_50"], r["fn_50"]) == (1, 1, 1)
    assert r["f1_50"] == 0.5 and r["foreground_iou"] == 1.0
    assert json.loads(json.dumps(r)) == r


def test_single_class_divisor_equals_plain():
    pred, gt = two_objects()
    r = evaluate(pred + 1000 * (pred > 0), gt + 1000 * (gt > 0), label_divisor=1000)
    plain = evaluate(pred, gt)
    assert set(r["per_class"]) == {"1"}
    for k in SCORES:
        assert r[k] == pytest.approx(plain[k]) and r["per_class"]["1"][k] == pytest.approx(plain[k])


def test_dtype_mix_gives_same_result():
    pred, gt = two_objects()
    ref = evaluate(pred, gt)
    assert evaluate(pred.astype(np.uint16), gt.astype(np.uint32)) == ref
    assert evaluate(pred.astype(np.int64), gt.astype(np.uint8)) == ref
    big = pred.astype(np.uint64) * (1 << 40)  # labels far beyond 32 bits
    assert evaluate(big, gt) == ref


def test_result_is_json_serialisable():
    pred, gt = two_objects()
    r = evaluate(pred, gt)
    assert json.loads(json.dumps(r)) == r


def test_bad_inputs_raise():
    pred, gt = two_objects()
    with pytest.raises(PanoptemError, match="shape"):
        evaluate(pred[:-1], gt)
    with pytest.raises(PanoptemError, match="negative"):
        evaluate(pred.astype(np.int32) - 1, gt)
    with pytest.raises(PanoptemError, match="fractional"):
        evaluate(pred + 0.5, gt)
    with pytest.raises(PanoptemError, match="dimensions"):
        evaluate(pred.ravel(), gt.ravel())


def test_evaluate_files(tmp_path):
    import tifffile
    pred, gt = two_objects()
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    tifffile.imwrite(tmp_path / "gt.tif", gt.astype(np.uint16))
    r = evaluate_files(tmp_path / "pred.tif", tmp_path / "gt.tif", iou_thresholds=(0.5,))
    assert r["tp_50"] == 2 and r["matched_iou_mean"] == pytest.approx(0.8)


def test_one_iou_threshold_may_be_given_as_a_number():
    """evaluate(p, g, 0.5) raised a raw TypeError (a float is not iterable)."""
    from panoptem import evaluate
    lab = np.zeros((8, 8), np.uint32)
    lab[1:4, 1:4] = 1
    r = evaluate(lab, lab, 0.5)
    assert r["f1_50"] == 1.0 and "f1_75" not in r


def test_one_iou_threshold_out_of_range_is_one_error():
    from panoptem import evaluate
    lab = np.zeros((8, 8), np.uint32)
    lab[1:4, 1:4] = 1
    with pytest.raises(PanoptemError, match=r"IoU thresholds must lie in \(0, 1\], not \[1.5\]"):
        evaluate(lab, lab, 1.5)
