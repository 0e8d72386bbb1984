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

Per-slice mode (``per_slice=True``, for stacks of independent 2D results such as
``segment2d --batch``, whose ids restart in every slice): every z slice is compared on its own and
an object is a (slice, label) pair; the counts of all slices are pooled as above.

Ignoring small ground truth (``ignore_smaller=N``): ground-truth objects with fewer than ``N``
voxels (pixels per slice in per-slice mode) are removed from both the targets and the misses. A
predicted object is removed too when its overlap with ignored ground-truth objects is larger than
its overlap with counted ones *and* that overlap is at least half of the prediction or at least
half of the ignored objects it touches (it found, or lies in, something ignored). Such an object
cannot reach IoU 0.5 with a counted object, so no match at IoU >= 0.5 is lost. Removed objects
count as background everywhere, ``foreground_iou`` included.

Error breakdown (``errors`` in the result, and :func:`error_breakdown`), with the one-to-one
matching at IoU >= 0.5 (``tp_50``) and these relations between a predicted object ``p`` and a
ground-truth object ``g`` (``|p & g|`` = overlapping voxels):

- ``p`` is a *piece* of ``g`` when ``|p & g| >= 0.5 |p|`` (most of ``p`` lies in ``g``) and
  ``|p & g| >= 0.1 |g|`` (a substantial part of ``g``); ``g`` is a *part* of ``p`` likewise with
  the roles swapped.
- **split**: a ground-truth object with two or more pieces that together cover at least half of it
  (counted whether or not one of the pieces is matched).
- **merge**: a predicted object with two or more parts that together fill at least half of it.
- **false object**: an unmatched prediction with less than half of its voxels inside ground-truth
  objects (mostly on background).
- **miss**: an unmatched ground-truth object with less than half of its voxels inside predictions.
- **wrong class** (with a label divisor): an unmatched object that overlaps an object of another
  class at IoU 0.5 or more: found in the right place, given the wrong class.

Objects of any class count as "inside" for false objects and misses; matches, splits and merges
are within a class. Every unmatched prediction (``fp_50``) falls in exactly one of
``errors["fp"]``: ``false_object``, else ``wrong_class``, else ``merge`` (it is a merge), else
``split_piece`` (a piece of a split object), else ``other`` (it overlaps ground truth, but with
IoU < 0.5). Every unmatched ground-truth object (``fn_50``) in exactly one of ``errors["fn"]``:
``miss``, else ``wrong_class``, else ``merged`` (a part of a merge), else ``split``, else ``other``.
"""
from __future__ import annotations

import numpy as np
import fastremap
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .errors import PanoptemError
from .labels import as_labels

__all__ = ["evaluate", "evaluate_files", "error_breakdown"]

AP_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


# Fractions of the error breakdown (see the module docstring).
PIECE_OF_SELF = 0.5    # a piece lies at least this much inside the object it is a piece of
PIECE_OF_OTHER = 0.1   # and covers at least this much of it
COVERED = 0.5          # pieces of a split cover (parts of a merge fill) at least this much


def evaluate(prediction: np.ndarray, ground_truth: np.ndarray,
             iou_thresholds=(0.5, 0.75), label_divisor: int | None = None, *,
             per_slice: bool = False, ignore_smaller: int = 0) -> dict:
    """Compare a predicted label image with the ground truth.

    Parameters
    ----------
    prediction, ground_truth : integer label images of the same shape (2D or 3D, any integer
        dtype, 0 = background). Whole-numbered float arrays are accepted too.
    iou_thresholds : thresholds (or one number) at which precision, recall, F1 and AP are reported, as keys
        ``precision_50``, ``recall_50``, ``f1_50``, ``ap_50``, ``tp_50``, ``fp_50``, ``fn_50``
        (the suffix is the threshold in percent).
    label_divisor : when set, ``label // label_divisor`` is the class of a label; objects are
        matched only within a class, and ``per_class`` is added to the result.
    per_slice : compare every z slice of 3D inputs on its own (ids may restart in every slice)
        and pool the counts; for stacks of 2D results. Ignored for 2D inputs.
    ignore_smaller : ground-truth objects with fewer voxels are neither targets nor misses;
        predictions that found them are dropped too (rule in the module docstring).

    Returns
    -------
    dict
        JSON-serialisable: ``foreground_iou``, the per-threshold scores, ``pq``, ``sq``, ``rq``,
        ``mean_ap``, ``n_pred``, ``n_gt``, ``matched_iou_mean``, ``n_ignored_pred``,
        ``n_ignored_gt``, ``errors`` (counts of false objects, misses, splits, merges, wrong classes and the
        attribution of ``fp_50`` and ``fn_50``; see the module docstring for the exact
        definitions), plus ``per_class`` when ``label_divisor`` is set.

    Examples
    --------
    >>> gt = np.zeros((4, 10), np.uint16); gt[:, :5] = 1
    >>> pred = np.zeros((4, 10), np.uint32); pred[:, 1:6] = 7
    >>> r = evaluate(pred, gt)
    >>> round(r["matched_iou_mean"], 4), r["f1_50"], r["f1_75"]
    (0.6667, 1.0, 0.0)
    """
    thresholds = tuple(float(t) for t in np.ravel(iou_thresholds))  # one number: one threshold
    if any(not 0.0 < t <= 1.0 for t in thresholds):
        raise PanoptemError(f"IoU thresholds must lie in (0, 1], not {list(thresholds)}.")
    t, same, ignored = _prepare(prediction, ground_truth, label_divisor, per_slice, ignore_smaller)
    if label_divisor is None:
        out = _scores(t, thresholds)
    else:
        d = int(label_divisor)
        p_cls, g_cls = _classes(t["p_labels"], d), _classes(t["g_labels"], d)
        classes = np.union1d(p_cls, g_cls)
        per_class = {}
        for c in classes:  # loop over classes (a handful), not over objects
            pk, gk = p_cls == c, g_cls == c
            keep = same & pk[t["pi"]]
            sub = _subset(t, pk, gk, keep)
            per_class[str(int(c))] = _scores(sub, thresholds)
        # A pair across classes never matches; its voxels are still foreground on both sides.
        out = _scores(_subset(t, np.ones_like(p_cls, bool), np.ones_like(g_cls, bool), same),
                      thresholds, fg_inter=int(t["inter"].sum()))
        out["per_class"] = per_class
    out["n_ignored_pred"], out["n_ignored_gt"] = ignored
    out["errors"] = _breakdown(t, same)["counts"]
    return out


def error_breakdown(prediction: np.ndarray, ground_truth: np.ndarray, label_divisor: int | None = None,
                    *, per_slice: bool = False, ignore_smaller: int = 0) -> dict:
    """The objects behind each kind of error: false objects, misses, splits and merges.

    Same arguments and definitions as :func:`evaluate` (module docstring); matching at IoU 0.5.

    Returns
    -------
    dict
        ``counts`` (as ``evaluate(...)["errors"]``) and one list per kind, largest object first:
        ``false_objects`` and ``misses`` hold ``{"label", "voxels"}``; ``splits`` holds the
        ground-truth ``label``, its ``voxels`` and its ``pieces`` (predicted labels); ``merges``
        holds the predicted ``label``, its ``voxels`` and its ``parts`` (ground-truth labels);
        ``wrong_class`` holds the predicted ``label``, its ``voxels`` and the ``ground_truth``
        object of another class it lies on.
        In per-slice mode every entry also has its ``slice``.

    Examples
    --------
    >>> gt = np.zeros((4, 12), np.uint8); gt[:, :8] = 1
    >>> pred = np.zeros((4, 12), np.uint8); pred[:, :4] = 1; pred[:, 4:8] = 2
    >>> b = error_breakdown(pred, gt)
    >>> b["counts"]["splits"], b["splits"][0]["pieces"]
    (1, [1, 2])
    """
    t, same, _ = _prepare(prediction, ground_truth, label_divisor, per_slice, ignore_smaller)
    b = _breakdown(t, same)
    sl = "p_z" in t

    def entry(side: str, i: int, **extra) -> dict:
        e = {"label": int(t[f"{side}_labels"][i]), "voxels": int(t[f"{side}_sizes"][i])}
        if sl:
            e["slice"] = int(t[f"{side}_z"][i])
        e.update(extra)
        return e

    def largest(idx, side):
        idx = np.asarray(idx, np.int64)
        return idx[np.argsort(-t[f"{side}_sizes"][idx], kind="stable")]

    pieces, parts = b["pieces"], b["parts"]
    return {
        "counts": b["counts"],
        "false_objects": [entry("p", i) for i in largest(b["false_p"], "p")],
        "misses": [entry("g", i) for i in largest(b["miss_g"], "g")],
        "splits": [entry("g", i, pieces=[int(t["p_labels"][j]) for j in pieces[i]])
                   for i in largest(b["split_g"], "g")],
        "merges": [entry("p", i, parts=[int(t["g_labels"][j]) for j in parts[i]])
                   for i in largest(b["merge_p"], "p")],
        "wrong_class": [entry("p", i, ground_truth=[int(t["g_labels"][b["wrong_of"][i]])])
                        for i in largest(b["wrong_p"], "p")],
    }


def evaluate_files(pred_path, gt_path, **kw) -> dict:
    """:func:`evaluate` on two label files read with :func:`panoptem.io.read_image`.

    ``kw`` is passed to :func:`evaluate` (``iou_thresholds``, ``label_divisor``, ``per_slice``,
    ``ignore_smaller``).
    """
    from .io import read_image

    pred = np.asarray(read_image(pred_path).data)
    gt = np.asarray(read_image(gt_path).data)
    return evaluate(pred, gt, **kw)


# --------------------------------------------------------------------------- helpers


def _classes(labels: np.ndarray, divisor: int) -> np.ndarray:
    """``labels // divisor`` for labels of any unsigned dtype (a divisor above the dtype's range too)."""
    return labels.astype(np.uint64) // np.uint64(divisor)


def _prepare(prediction, ground_truth, label_divisor, per_slice: bool, ignore_smaller) -> tuple:
    """Checked inputs -> (pair table without ignored objects, same-class mask of its pairs,
    (ignored predictions, ignored ground-truth objects))."""
    pred = as_labels(prediction, "prediction")
    gt = as_labels(ground_truth, "ground truth")
    if pred.shape != gt.shape:
        raise PanoptemError(f"The prediction has shape {pred.shape} but the ground truth has shape "
                            f"{gt.shape}; evaluate label images of the same region and size.")
    if label_divisor is not None and int(label_divisor) < 1:
        raise PanoptemError(f"label_divisor must be a positive integer or None, not {label_divisor}.")
    if ignore_smaller is None or int(ignore_smaller) < 0:
        raise PanoptemError(f"ignore_smaller must be 0 or a positive number of voxels, not {ignore_smaller}.")
    if per_slice and pred.ndim == 3:
        t = _concat([_pair_table(pred[z], gt[z]) for z in range(pred.shape[0])])
    else:
        t = _pair_table(pred, gt)
    t, ignored = _drop_ignored(t, int(ignore_smaller))
    if label_divisor is None:
        same = np.ones(len(t["pi"]), bool)
    else:
        d = int(label_divisor)
        same = _classes(t["p_labels"][t["pi"]], d) == _classes(t["g_labels"][t["gi"]], d)
    return t, same, ignored


def _concat(tables: list[dict]) -> dict:
    """One table from the tables of independent slices; objects become (slice, label) pairs."""
    out = {k: [] for k in ("p_labels", "g_labels", "p_sizes", "g_sizes", "pi", "gi", "inter", "p_z", "g_z")}
    np_, ng = 0, 0
    for z, t in enumerate(tables):
        for k in ("p_labels", "g_labels", "p_sizes", "g_sizes", "inter"):
            out[k].append(t[k])
        out["pi"].append(t["pi"] + np_)
        out["gi"].append(t["gi"] + ng)
        out["p_z"].append(np.full(len(t["p_labels"]), z, np.int64))
        out["g_z"].append(np.full(len(t["g_labels"]), z, np.int64))
        np_, ng = np_ + len(t["p_labels"]), ng + len(t["g_labels"])
    if not tables:
        return _pair_table(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8)) | {
            "p_z": np.zeros(0, np.int64), "g_z": np.zeros(0, np.int64)}
    return {k: np.concatenate(v) for k, v in out.items()}


def _drop_ignored(t: dict, n: int) -> tuple[dict, tuple[int, int]]:
    """Remove ground-truth objects under ``n`` voxels and the predictions that found them."""
    if n <= 0:
        return t, (0, 0)
    g_keep = t["g_sizes"] >= n
    n_p = len(t["p_labels"])
    ign_pair = ~g_keep[t["gi"]]
    on_ignored = np.bincount(t["pi"], t["inter"] * ign_pair, minlength=n_p)
    on_counted = np.bincount(t["pi"], t["inter"] * ~ign_pair, minlength=n_p)
    touched = np.bincount(t["pi"], t["g_sizes"][t["gi"]] * ign_pair, minlength=n_p)
    p_drop = (on_ignored > on_counted) & (2 * on_ignored >= np.minimum(t["p_sizes"], touched))
    p_keep = ~p_drop
    keep = p_keep[t["pi"]] & g_keep[t["gi"]]
    return _subset(t, p_keep, g_keep, keep), (int(p_drop.sum()), int((~g_keep).sum()))


def _breakdown(t: dict, same: np.ndarray) -> dict:
    """Error breakdown of a pair table whose pairs ``same`` are of one class (definitions in the
    module docstring)."""
    n_p, n_g = len(t["p_labels"]), len(t["g_labels"])
    ps, gs = t["p_sizes"].astype(np.float64), t["g_sizes"].astype(np.float64)
    # any class covers: an object lying on one of another class is not on background
    false_p = np.bincount(t["pi"], t["inter"], minlength=n_p) < 0.5 * ps
    miss_g = np.bincount(t["gi"], t["inter"], minlength=n_g) < 0.5 * gs
    iou_all = t["inter"] / np.maximum(ps[t["pi"]] + gs[t["gi"]] - t["inter"], 1)
    across = ~same & (iou_all >= 0.5)
    wrong_p, wrong_g = np.zeros(n_p, bool), np.zeros(n_g, bool)
    wrong_p[t["pi"][across]] = True
    wrong_g[t["gi"][across]] = True
    wrong_of = dict(zip(t["pi"][across].tolist(), t["gi"][across].tolist()))
    pi, gi, inter = t["pi"][same], t["gi"][same], t["inter"][same].astype(np.float64)
    iou = iou_all[same]
    sel = np.flatnonzero(iou >= 0.5)
    ok = sel[_match(pi[sel], gi[sel], iou[sel], n_p, n_g)]
    p_un, g_un = np.ones(n_p, bool), np.ones(n_g, bool)
    p_un[pi[ok]] = False
    g_un[gi[ok]] = False

    piece = (inter >= PIECE_OF_SELF * ps[pi]) & (inter >= PIECE_OF_OTHER * gs[gi])
    n_pieces = np.bincount(gi[piece], minlength=n_g)
    split_g = (n_pieces >= 2) & (np.bincount(gi[piece], inter[piece], minlength=n_g) >= COVERED * gs)
    part = (inter >= PIECE_OF_SELF * gs[gi]) & (inter >= PIECE_OF_OTHER * ps[pi])
    n_parts = np.bincount(pi[part], minlength=n_p)
    merge_p = (n_parts >= 2) & (np.bincount(pi[part], inter[part], minlength=n_p) >= COVERED * ps)
    piece_of_split = np.zeros(n_p, bool)
    piece_of_split[pi[piece & split_g[gi]]] = True
    part_of_merge = np.zeros(n_g, bool)
    part_of_merge[gi[part & merge_p[pi]]] = True

    fp, rest = {}, p_un.copy()
    for k, m in (("false_object", false_p), ("wrong_class", wrong_p), ("merge", merge_p),
                 ("split_piece", piece_of_split)):
        fp[k], rest = rest & m, rest & ~m
    fp["other"] = rest
    fn, rest = {}, g_un.copy()
    for k, m in (("miss", miss_g), ("wrong_class", wrong_g), ("merged", part_of_merge), ("split", split_g)):
        fn[k], rest = rest & m, rest & ~m
    fn["other"] = rest

    counts = {"false_objects": int(fp["false_object"].sum()), "misses": int(fn["miss"].sum()),
              "splits": int(split_g.sum()), "merges": int(merge_p.sum()),
              "wrong_class": int(fp["wrong_class"].sum()),
              "fp": {k: int(v.sum()) for k, v in fp.items()}, "fn": {k: int(v.sum()) for k, v in fn.items()}}
    sel = np.flatnonzero(piece & split_g[gi])
    pieces = _groups(gi[sel], pi[sel], ps[pi[sel]])
    sel = np.flatnonzero(part & merge_p[pi])
    parts = _groups(pi[sel], gi[sel], gs[gi[sel]])
    return {"counts": counts, "false_p": np.flatnonzero(fp["false_object"]), "miss_g": np.flatnonzero(fn["miss"]),
            "split_g": np.flatnonzero(split_g), "merge_p": np.flatnonzero(merge_p), "pieces": pieces,
            "parts": parts, "wrong_p": np.flatnonzero(fp["wrong_class"]), "wrong_of": wrong_of}


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


def _groups(keys: np.ndarray, members: np.ndarray, size: np.ndarray) -> dict[int, list[int]]:
    """key -> its members, largest first (one sort, no loop over the pairs)."""
    order = np.lexsort((-size, keys))
    keys, members = keys[order], members[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    return {int(keys[a]): members[a:b].tolist() for a, b in zip(starts, np.r_[starts[1:], len(keys)])}


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
    out = dict(p_labels=t["p_labels"][pk], g_labels=t["g_labels"][gk],
               p_sizes=t["p_sizes"][pk], g_sizes=t["g_sizes"][gk],
               pi=p_new[t["pi"][keep]], gi=g_new[t["gi"][keep]], inter=t["inter"][keep])
    if "p_z" in t:  # per-slice tables: the slice of every object
        out.update(p_z=t["p_z"][pk], g_z=t["g_z"][gk])
    return out


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
