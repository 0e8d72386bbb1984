"""Instance and semantic metrics of a label image against ground truth (2D or 3D).

Objects are matched one-to-one by IoU with the Hungarian algorithm on the sparse table of
overlapping pairs. The overlap table is built in one pass over the voxels where both images are
foreground (one 64-bit pair code per voxel, then a count of the codes), so large volumes with
thousands of objects take seconds.

Definitions (``TP``, ``FP``, ``FN`` at IoU threshold ``t``):

- Matching at ``t``: a maximum-total-IoU one-to-one assignment among the pairs with
  ``IoU >= t``; every assigned pair is a true positive. For ``t > 0.5`` a pair is never in
  competition (two disjoint objects cannot both overlap a third by more than half), so the
  assignment is unique; at and below 0.5 the Hungarian algorithm resolves the ties.
- ``precision = TP / n_pred``, ``recall = TP / n_gt``,
  ``f1 = TP / (TP + FP/2 + FN/2)`` with ``FP = n_pred - TP`` and ``FN = n_gt - TP``.
- ``pq``, ``sq``, ``rq``: panoptic quality (Kirillov et al. 2019) with matches at ``IoU > 0.5``:
  ``sq`` = mean IoU of the matches, ``rq`` = F1 of the matches, ``pq = sq * rq``.
- ``mean_ap``: the "average precision" of the 2018 Data Science Bowl and StarDist, i.e.
  ``AP(t) = TP / (TP + FP + FN)`` at ``t = 0.50, 0.55, ..., 0.95``, averaged over the ten
  thresholds. The predictions have no scores, so this is *not* COCO's area under a ranked
  precision-recall curve. ``ap_50``, ``ap_75`` (and one per requested threshold) are reported too.
- ``matched_iou_mean``: mean IoU of the pairs of the maximum-total-IoU assignment among all
  overlapping pairs (any IoU > 0).
- ``foreground_iou``: IoU of ``prediction > 0`` and ``ground_truth > 0`` (classes ignored; in
  ``per_class`` it is the IoU of the voxels of that class).

Empty inputs: when both images hold no object every score is 1; when only one does, the
instance scores are 0 (no division by zero anywhere).

With a label divisor, the class of a label is ``label // label_divisor``; objects are matched only
within their class. The top-level numbers pool the counts of all classes (micro average: the
TP, FP and FN of all classes are added before the ratios are taken; PQ's IoU sums likewise), and
``per_class`` holds the same numbers for every class found in either image (keys are the class
ids as strings, so the result survives a JSON round trip unchanged; labels below the divisor
form class "0").
"""
from __future__ import annotations

import numpy as np
import fastremap
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .errors import PanoptemError

__all__ = ["evaluate", "evaluate_files"]

AP_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def evaluate(prediction: np.ndarray, ground_truth: np.ndarray,
             iou_thresholds=(0.5, 0.75), label_divisor: int | None = None) -> dict:
    """Compare a predicted label image with the ground truth.

    Parameters
    ----------
    prediction, ground_truth : integer label images of the same shape (2D or 3D, any integer
        dtype, 0 = background). Whole-numbered float arrays are accepted too.
    iou_thresholds : thresholds at which precision, recall, F1 and AP are reported, as keys
        ``precision_50``, ``recall_50``, ``f1_50``, ``ap_50``, ``tp_50``, ``fp_50``, ``fn_50``
        (the suffix is the threshold in percent).
    label_divisor : when set, ``label // label_divisor`` is the class of a label; objects are
        matched only within a class, and ``per_class`` is added to the result.

    Returns
    -------
    dict
        JSON-serialisable: ``foreground_iou``, the per-threshold scores, ``pq``, ``sq``, ``rq``,
        ``mean_ap``, ``n_pred``, ``n_gt``, ``matched_iou_mean`` (see the module docstring for the
        exact definitions), plus ``per_class`` when ``label_divisor`` is set.

    Examples
    --------
    >>> gt = np.zeros((4, 10), np.uint16); gt[:, :5] = 1
    >>> pred = np.zeros((4, 10), np.uint32); pred[:, 1:6] = 7
    >>> r = evaluate(pred, gt)
    >>> round(r["matched_iou_mean"], 4), r["f1_50"], r["f1_75"]
    (0.6667, 1.0, 0.0)
    """
    pred = _as_labels(prediction, "prediction")
    gt = _as_labels(ground_truth, "ground truth")
    if pred.shape != gt.shape:
        raise PanoptemError(f"The prediction has shape {pred.shape} but the ground truth has shape "
                            f"{gt.shape}; evaluate label images of the same region and size.")
    if label_divisor is not None and int(label_divisor) < 1:
        raise PanoptemError(f"label_divisor must be a positive integer or None, not {label_divisor}.")
    thresholds = tuple(float(t) for t in iou_thresholds)
    if any(not 0.0 < t <= 1.0 for t in thresholds):
        raise PanoptemError(f"IoU thresholds must lie in (0, 1], not {list(iou_thresholds)}.")

    t = _pair_table(pred, gt)
    if label_divisor is None:
        return _scores(t, thresholds)

    d = int(label_divisor)
    p_cls, g_cls = t["p_labels"] // d, t["g_labels"] // d
    # A pair across classes never matches; its voxels are not a class's true foreground either.
    same = p_cls[t["pi"]] == g_cls[t["gi"]]
    classes = np.union1d(p_cls, g_cls)
    per_class = {}
    for c in classes:  # loop over classes (a handful), not over objects
        pk, gk = p_cls == c, g_cls == c
        keep = same & pk[t["pi"]]
        sub = _subset(t, pk, gk, keep)
        per_class[str(int(c))] = _scores(sub, thresholds)
    overall = _scores(_subset(t, np.ones_like(p_cls, bool), np.ones_like(g_cls, bool), same),
                      thresholds, fg_inter=int(t["inter"].sum()))
    overall["per_class"] = per_class
    return overall


def evaluate_files(pred_path, gt_path, **kw) -> dict:
    """:func:`evaluate` on two label files read with :func:`panoptem.io.read_image`.

    ``kw`` is passed to :func:`evaluate` (``iou_thresholds``, ``label_divisor``).
    """
    from .io import read_image

    pred = np.asarray(read_image(pred_path).data)
    gt = np.asarray(read_image(gt_path).data)
    return evaluate(pred, gt, **kw)


# --------------------------------------------------------------------------- helpers


def _as_labels(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim not in (2, 3):
        raise PanoptemError(f"The {what} has {a.ndim} dimensions; "
                            "give a 2D (YX) or 3D (ZYX) label image.")
    if a.dtype == bool:
        return a.view(np.uint8)
    if a.dtype.kind == "f":
        if a.size and (not np.isfinite(a).all() or (a != np.round(a)).any()):
            raise PanoptemError(f"The {what} holds fractional values; give an integer label image.")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iu":
        raise PanoptemError(f"The {what} has dtype {a.dtype}; give an integer label image.")
    if a.dtype.kind == "i":
        if a.size and a.min() < 0:
            raise PanoptemError(f"The {what} holds negative labels; "
                                "labels must be 0 (background) or positive.")
        a = a.view(a.dtype.str.replace("i", "u"))  # same bits, no copy
    return a


def _positions(values: np.ndarray, labels: np.ndarray, scale: int, dtype) -> np.ndarray:
    """``scale`` times the index of each value in the sorted array ``labels`` (all present)."""
    # A lookup table is fastest when the largest label is small (bounded to keep memory low).
    if len(labels) and int(labels[-1]) < min(max(1 << 16, 2 * len(values)), 1 << 25):
        lut = np.zeros(int(labels[-1]) + 1, dtype)
        lut[labels] = np.arange(len(labels), dtype=dtype) * dtype(scale)
        return lut[values]
    return np.searchsorted(labels, values).astype(dtype) * dtype(scale)


def _objects(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, counts = fastremap.unique(a, return_counts=True)
    if len(labels) and labels[0] == 0:
        labels, counts = labels[1:], counts[1:]
    return labels, counts.astype(np.int64)


def _pair_table(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Objects of both images and the sparse table of their overlaps (intersection voxels)."""
    p_labels, p_sizes = _objects(pred)
    g_labels, g_sizes = _objects(gt)
    both = (pred != 0) & (gt != 0)
    pv, gv = pred[both], gt[both]
    del both
    # One code per overlapping voxel, pred index * n_gt + gt index, in the narrowest dtype.
    ng = max(len(g_labels), 1)
    dtype = np.uint32 if len(p_labels) * ng < 1 << 32 else np.uint64
    code = _positions(pv, p_labels, ng, dtype)
    code += _positions(gv, g_labels, 1, dtype)
    del pv, gv
    codes, inter = fastremap.unique(code, return_counts=True) if code.size else (code, np.zeros(0, np.int64))
    codes = codes.astype(np.int64)
    return dict(p_labels=p_labels, g_labels=g_labels, p_sizes=p_sizes, g_sizes=g_sizes,
                pi=(codes // ng).astype(np.int64), gi=(codes % ng).astype(np.int64),
                inter=np.asarray(inter, np.int64))


def _subset(t: dict, pk: np.ndarray, gk: np.ndarray, keep: np.ndarray) -> dict:
    """The table restricted to the kept objects and pairs, with objects re-indexed."""
    p_new = np.cumsum(pk) - 1
    g_new = np.cumsum(gk) - 1
    return dict(p_labels=t["p_labels"][pk], g_labels=t["g_labels"][gk],
                p_sizes=t["p_sizes"][pk], g_sizes=t["g_sizes"][gk],
                pi=p_new[t["pi"][keep]], gi=g_new[t["gi"][keep]], inter=t["inter"][keep])


def _match(pi: np.ndarray, gi: np.ndarray, iou: np.ndarray, n_pred: int, n_gt: int) -> np.ndarray:
    """Boolean mask of the pairs in a maximum-total-IoU one-to-one assignment.

    Pairs that compete with no other pair are taken directly; the Hungarian algorithm runs on
    each connected group of competing pairs (usually few and small).
    """
    chosen = np.zeros(len(pi), bool)
    if not len(pi):
        return chosen
    p_deg = np.bincount(pi, minlength=n_pred)
    g_deg = np.bincount(gi, minlength=n_gt)
    alone = (p_deg[pi] == 1) & (g_deg[gi] == 1)
    chosen[alone] = True
    rest = np.flatnonzero(~alone)
    if not len(rest):
        return chosen
    # Connected groups of the competing pairs: graph nodes are pred ids then gt ids.
    rows, cols = pi[rest], n_pred + gi[rest]
    graph = coo_matrix((np.ones(len(rest)), (rows, cols)), shape=(n_pred + n_gt,) * 2)
    _, comp = connected_components(graph, directed=False)
    group = comp[rows]
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0])
    for idx in np.split(rest[order], starts[1:]):  # loop over competing groups only
        up, ri = np.unique(pi[idx], return_inverse=True)
        ug, ci = np.unique(gi[idx], return_inverse=True)
        m = np.zeros((len(up), len(ug)))
        m[ri, ci] = iou[idx]
        pair = np.full(m.shape, -1, np.int64)
        pair[ri, ci] = idx
        k = pair[linear_sum_assignment(m, maximize=True)]
        chosen[k[k >= 0]] = True  # cells without a pair (IoU 0) are not matches
    return chosen


def _ratio(num: float, den: float, both_empty: bool) -> float:
    if den > 0:
        return float(num) / float(den)
    return 1.0 if both_empty else 0.0


def _key(t: float) -> str:
    return f"{t * 100:.6g}"


def _scores(t: dict, thresholds: tuple[float, ...], fg_inter: int | None = None) -> dict:
    n_pred, n_gt = len(t["p_labels"]), len(t["g_labels"])
    both_empty = n_pred == 0 and n_gt == 0
    inter = t["inter"]
    union = t["p_sizes"][t["pi"]] + t["g_sizes"][t["gi"]] - inter
    iou = inter / np.maximum(union, 1)

    fg_i = int(inter.sum()) if fg_inter is None else fg_inter
    fg_u = int(t["p_sizes"].sum()) + int(t["g_sizes"].sum()) - fg_i
    out: dict = {"foreground_iou": _ratio(fg_i, fg_u, fg_u == 0), "n_pred": n_pred, "n_gt": n_gt}

    def counts(th: float, strict: bool = False) -> tuple[int, np.ndarray]:
        sel = np.flatnonzero(iou > th if strict else iou >= th)
        ok = _match(t["pi"][sel], t["gi"][sel], iou[sel], n_pred, n_gt)
        return int(ok.sum()), iou[sel][ok]

    for th in thresholds:
        tp = counts(th)[0]
        fp, fn = n_pred - tp, n_gt - tp
        k = _key(th)
        out[f"precision_{k}"] = _ratio(tp, n_pred, both_empty)
        out[f"recall_{k}"] = _ratio(tp, n_gt, both_empty)
        out[f"f1_{k}"] = _ratio(tp, tp + fp / 2 + fn / 2, both_empty)
        out[f"ap_{k}"] = _ratio(tp, tp + fp + fn, both_empty)
        out[f"tp_{k}"], out[f"fp_{k}"], out[f"fn_{k}"] = tp, fp, fn

    aps = []
    for th in AP_THRESHOLDS:
        tp = counts(float(th))[0]
        aps.append(_ratio(tp, n_pred + n_gt - tp, both_empty))
    out["mean_ap"] = float(np.mean(aps))

    tp, ious = counts(0.5, strict=True)
    rq = _ratio(tp, (n_pred + n_gt) / 2, both_empty)
    sq = float(ious.mean()) if tp else (1.0 if both_empty else 0.0)
    out.update(pq=sq * rq, sq=sq, rq=rq)

    _, all_ious = counts(0.0, strict=True)
    out["matched_iou_mean"] = float(all_ious.mean()) if len(all_ious) else (1.0 if both_empty else 0.0)
    return out
