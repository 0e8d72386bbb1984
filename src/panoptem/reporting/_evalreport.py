"""An evaluation report: scores, the error breakdown and pictures of representative errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PanoptemError
from . import _draw, _html
from ._files import check_target, write_bytes
from ._mpl import figure, png_bytes, require_matplotlib

_KINDS = (  # key in error_breakdown, heading, side of the main object, key of the related objects
    ("false_objects", "False objects", "prediction", None),
    ("misses", "Misses", "ground truth", None),
    ("splits", "Splits", "ground truth", "pieces"),
    ("merges", "Merges", "prediction", "parts"),
    ("wrong_class", "Wrong class", "prediction", "ground_truth"),
)
_DEFINITIONS = {
    "false_objects": "predicted objects matched to nothing (IoU 0.5) with less than half of their voxels "
                     "inside ground-truth objects.",
    "misses": "ground-truth objects matched to nothing with less than half of their voxels inside predictions.",
    "splits": "ground-truth objects with two or more pieces (predictions lying at least half inside it and "
              "covering at least 10 % of it) that together cover at least half of it.",
    "merges": "predicted objects with two or more parts (ground-truth objects lying at least half inside it "
              "and filling at least 10 % of it) that together fill at least half of it.",
    "wrong_class": "predicted objects matched to nothing that overlap a ground-truth object of another class "
                   "at IoU 0.5 or more (classes from the label divisor).",
}


def evaluation_report(prediction, ground_truth, path, *, image=None, label_divisor: int | None = None,
                      per_slice: bool = False, ignore_smaller: int = 0, iou_thresholds=(0.5, 0.75),
                      n_examples: int = 3, scores: dict | None = None, names=("prediction", "ground truth"),
                      overwrite: bool = False, inputs=()) -> Path:
    """Write an HTML report of an evaluation: the scores, the breakdown of errors, and pictures of
    the largest false objects, misses, splits and merges.

    Each picture shows the slice where the object is largest (3D: the z slice with most of its
    voxels; per-slice mode: its slice), cropped around it: the image (when given), the ground
    truth and the prediction, the objects of the error outlined and the others faint.

    Parameters
    ----------
    prediction, ground_truth, label_divisor, per_slice, ignore_smaller, iou_thresholds :
        as :func:`panoptem.evaluate` (definitions in the docstring of ``panoptem._evaluate``).
    path : output ``.html`` file.
    image : grey image of the same shape, drawn under the labels.
    n_examples : pictures per kind of error (the largest objects of that kind).
    scores : the result of :func:`panoptem.evaluate` when already computed.
    names : how the two label images are called in the report (e.g. their file names).
    overwrite : replace an existing ``path``.
    inputs : paths never to write over.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> gt = np.zeros((4, 32, 32), np.uint32); gt[:, 4:12, 4:12] = 1; gt[:, 16:28, 16:28] = 2
    >>> pred = gt.copy(); pred[:, 16:28, 22:28] = 3                     # object 2 split in two
    >>> evaluation_report(pred, gt, "eval.html").name
    'eval.html'
    """
    require_matplotlib()
    from .._evaluate import error_breakdown, evaluate

    path = check_target(path, (".html", ".htm"), overwrite, inputs)
    pred, gt = np.asarray(prediction), np.asarray(ground_truth)
    img = None if image is None else np.asarray(image)
    if img is not None and img.shape != gt.shape:
        raise PanoptemError(f"The image has shape {img.shape} but the labels have shape {gt.shape}; "
                            "give the image the labels were made from.")
    kw = dict(label_divisor=label_divisor, per_slice=per_slice, ignore_smaller=ignore_smaller)
    if scores is None:
        scores = evaluate(pred, gt, iou_thresholds=iou_thresholds, **kw)
    b = error_breakdown(pred, gt, **kw)
    lo, hi = (0.0, 1.0) if img is None else _draw.grey_range([img.reshape(-1)[::max(1, img.size // 1_000_000)]])

    body = [_settings(names, pred.shape, per_slice, ignore_smaller, label_divisor, scores),
            "<h2>Scores</h2>", _scores_table(scores),
            "<h2>Errors</h2>", _errors_table(scores["errors"])]
    for key, heading, side, related in _KINDS:
        items = b[key]
        body.append(f"<h2>{heading}: {len(items)}</h2><p class=\"note\">{_html.esc(_DEFINITIONS[key])}</p>")
        for e in items[:int(n_examples)]:
            png, caption = _example(pred, gt, img, lo, hi, e, side, related, per_slice, names)
            body.append(_html.img(png, f"{heading} example", caption))
        if len(items) > n_examples:
            body.append(f"<p class=\"note\">{len(items) - int(n_examples)} more not shown.</p>")
    title = f"panoptem evaluation: {names[0]} against {names[1]}"
    return write_bytes(path, _html.page(title, "\n".join(body)).encode("utf-8"), replace=overwrite)


def _settings(names, shape, per_slice, ignore_smaller, label_divisor, scores) -> str:
    rows = [("prediction", names[0]), ("ground truth", names[1]), ("shape", " x ".join(map(str, shape))),
            ("mode", "per slice (every z slice on its own, counts pooled)" if per_slice and len(shape) == 3
             else f"{len(shape)}D objects"),
            ("ignored", f"ground-truth objects under {ignore_smaller} voxels: {scores.get('n_ignored_gt', 0)}, "
                        f"predictions on them: {scores.get('n_ignored_pred', 0)}" if ignore_smaller else "nothing"),
            ("classes", f"label // {label_divisor}" if label_divisor else "all objects one class")]
    return _html.table(["", "value"], rows)


def _scores_table(s: dict) -> str:
    keys = ["n_pred", "n_gt", "foreground_iou"]
    keys += [k for k in s if k.split("_")[0] in ("precision", "recall", "f1", "ap", "tp", "fp", "fn")]
    keys += ["pq", "sq", "rq", "mean_ap", "matched_iou_mean"]
    return _html.table(["score", "value"], [(k, s[k]) for k in keys if k in s])


def _errors_table(e: dict) -> str:
    rows = [("false objects", e["false_objects"]), ("misses", e["misses"]), ("splits", e["splits"]),
            ("merges", e["merges"]), ("wrong class", e["wrong_class"])]
    rows += [(f"unmatched predictions: {k.replace('_', ' ')}", v) for k, v in e["fp"].items()]
    rows += [(f"unmatched ground truth: {k.replace('_', ' ')}", v) for k, v in e["fn"].items()]
    return _html.table(["error", "objects"], rows)


def _example(pred, gt, img, lo, hi, e, side, related, per_slice, names) -> tuple[bytes, str]:
    main, other = (pred, gt) if side == "prediction" else (gt, pred)
    label = e["label"]
    z = None
    if main.ndim == 3:
        if per_slice:
            z = e["slice"]
        else:
            # the z slice holding most of the object
            per_z = np.count_nonzero(main == label, axis=(1, 2))
            z = int(np.argmax(per_z))  # the first of the largest
    m2 = (main[z] if z is not None else main) == label
    ys, xs = np.nonzero(m2)
    h, w = m2.shape
    pad_y = max(8, int(0.3 * (ys.max() - ys.min() + 1)))
    pad_x = max(8, int(0.3 * (xs.max() - xs.min() + 1)))
    y0, y1 = max(0, ys.min() - pad_y), min(h, ys.max() + 1 + pad_y)
    x0, x1 = max(0, xs.min() - pad_x), min(w, xs.max() + 1 + pad_x)

    def crop(a):
        return np.asarray(a[z] if z is not None else a)[y0:y1, x0:x1]

    grey = None if img is None else (crop(img).astype(np.float64) - lo) / (hi - lo)
    involved_main = {label}
    involved_other = set(e.get(related, [])) if related else set()
    panels = []
    if grey is not None:
        panels.append(("image", np.round(np.repeat(np.clip(grey, 0, 1)[..., None], 3, -1) * 255).astype(np.uint8)))
    gt_hl, pred_hl = (involved_other, involved_main) if side == "prediction" else (involved_main, involved_other)
    panels.append(("ground truth", _draw.overlay(crop(gt), grey, highlight=gt_hl)))
    panels.append(("prediction", _draw.overlay(crop(pred), grey, highlight=pred_hl)))
    aspect = (y1 - y0) / (x1 - x0)
    fig = figure(2.6 * len(panels), float(np.clip(2.4 * aspect, 0.8, 4.0)) + 0.45)
    for i, (name, rgb) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    where = "" if z is None else f", slice z = {z}"
    rel = ""
    if related:
        rel = f"; {related}: {', '.join(str(x) for x in e[related])}"
    caption = (f"{side} label {label} ({e['voxels']} voxels{where}){rel}; crop y {y0}-{y1 - 1}, "
               f"x {x0}-{x1 - 1}")
    return png_bytes(fig, dpi=100), caption
