"""Run the network on a batch of 2D planes: normalise, downsample, pad,
forward, crop. Outputs stay at the network's input resolution.

The input is prepared in numpy. A PyTorch network takes it as a tensor; an ONNX
Runtime session (:class:`~.runtime.OnnxNet`) takes and gives numpy arrays, so that path
runs without PyTorch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models.card import OUTPUT_STRIDE as STRIDE
from .preprocess import (downsample, integer_block_means, means_first, normalize, pad_to_multiple, padding_mask,
                         uniform_planes)


@dataclass
class ModelOutput:
    """Network outputs for N planes of (downsampled) size ``H x W``.

    ``semantic_probability``: (N, C, H, W) float32, sigmoid (C = 1) or
    softmax over background + classes (C > 1).
    ``heatmap``: (N, 1, ceil(H/4), ceil(W/4)) centre confidence.
    ``offsets``: (N, 2, ceil(H/4), ceil(W/4)) dy, dx in pixels of the H x W grid.
    """

    semantic_probability: np.ndarray
    heatmap: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return self.semantic_probability.shape[0]

    def __getitem__(self, i) -> "ModelOutput":
        s = slice(i, i + 1) if isinstance(i, int) else i
        return ModelOutput(self.semantic_probability[s], self.heatmap[s], self.offsets[s])


#: the side of a cell of a network's deepest features (and of its global context's weights), in
#: network-input pixels
CELL = 32


def _forward(model, x, context=None, tissue=None) -> dict:
    extra = {k: v for k, v in (("context", context), ("tissue", tissue)) if v is not None}
    out = model(x, **extra)
    if isinstance(out, (tuple, list)):
        out = dict(zip(("sem_logits", "ctr_hmp", "offsets"), out))
    return out


def supports_context(model) -> bool:
    """Whether ``model`` can take the global context of a larger image (see
    :meth:`~panoptem.models.architecture.PanopticNet.encode`)."""
    return callable(getattr(model, "encode", None))


#: test-time augmentation's passes: the input, and its flips along columns, rows and both
FLIPS = ((), (-1,), (-2,), (-2, -1))


def tissue_weights(pad: np.ndarray | None, shape: tuple, padding_factor: int,
                   whole: bool = True, flip: tuple[int, ...] = ()) -> np.ndarray | None:
    """The weight of each deepest network cell (:data:`CELL` pixels on a side) in its plane's
    global context: its share of pixels that are not padding, (N, 1, h, w) float32, for a
    network input of ``shape`` (N, C, H, W) made with ``padding_factor``; None where no pixel is
    padding (every cell then weighs the same). ``pad``: the mask :func:`network_input` gives.
    ``whole``: the planes are whole, and one that is padding throughout weighs its cells the same
    (its outputs are cleared); parts of planes (tiles, blocks) keep their zeros: the other parts
    decide (see :func:`context_of_sums`). ``flip``: the weights of the input flipped along these
    axes (its cells start from the flipped corner: a side that is not a multiple of
    :data:`CELL` does not flip cells onto cells)."""
    if pad is None or not pad.any():
        return None
    tissue = pad_to_multiple(~pad, padding_factor)[0].view(np.uint8)  # the margin mirrors padding too
    tissue = np.flip(tissue, flip) if flip else tissue
    H, W = shape[-2:]
    rows, cols = np.arange(0, H, CELL), np.arange(0, W, CELL)
    counts = np.add.reduceat(np.add.reduceat(tissue, rows, axis=1, dtype=np.int32), cols, axis=2)
    sizes = np.outer(np.diff(rows, append=H), np.diff(cols, append=W))
    t = (counts / sizes).astype(np.float32)
    if whole:
        t[t.sum(axis=(1, 2)) == 0] = 1.0
    return t[:, None]


def cell_sums(feats: np.ndarray, tissue: np.ndarray) -> dict[str, np.ndarray]:
    """What each plane's part (a tile, a block's core) adds to the plane's global context: its
    deepest features ``feats`` (N, C, h, w) weighed by ``tissue`` (N, 1, h, w; see
    :func:`tissue_weights`) summed, those weights summed, and the plain sums and cell count."""
    f, t = feats.astype(np.float64), tissue.astype(np.float64)
    return {"sum": (f * t).sum(axis=(2, 3)), "count": t.sum(axis=(1, 2, 3)), "plain": f.sum(axis=(2, 3)),
            "cells": np.full(len(f), f.shape[2] * f.shape[3], np.float64)}


def context_of_sums(sums: dict[str, np.ndarray]) -> np.ndarray:
    """Each plane's global context (N, C) float32 from :func:`cell_sums` added over its parts: the
    mean over the cells by their part that is not padding, or where all is padding, over every cell."""
    tissue = sums["count"] > 1e-9
    total = np.where(tissue[:, None], sums["sum"], sums["plain"])
    count = np.where(tissue, sums["count"], sums["cells"])
    return (total / np.maximum(count, 1e-9)[:, None]).astype(np.float32)


def plane_padding(planes: np.ndarray, blank="auto") -> np.ndarray | None:
    """Where ``planes`` hold padding, at their own pixels: :func:`~.preprocess.padding_mask`, and
    every pixel of a plane of one value (``blank``: a bool per plane, None, or "auto":
    :func:`~.preprocess.uniform_planes` of ``planes``), and where a ``blank`` given per pixel
    (see :func:`per_pixel`) says so; None where nothing is padding."""
    pad = padding_mask(planes)
    if per_pixel(blank):  # found where the planes were cut from: added to what they show themselves
        given, blank = np.asarray(blank, bool), "auto"
        given = given[:, None] if given.ndim < planes.ndim else given
        if given.any():
            pad = np.broadcast_to(given, planes.shape).copy() if pad is None else pad | given
    blank = uniform_planes(planes) if isinstance(blank, str) else blank
    if blank is not None:  # a blank section, a grey fill: nothing to find there either
        pad = np.zeros(planes.shape, bool) if pad is None else pad
        pad[blank] = True
    return pad


def per_pixel(blank) -> bool:
    """Whether a ``blank`` argument says where the planes hold padding pixel by pixel, (N, H, W):
    found where they were cut from (a volume's xy sections for its xz / yz planes, the pixels
    around a tile), which a plane cannot always tell by itself (a band of padding narrower than
    :data:`~.preprocess.PAD_WINDOW` at its edge, or across a plane thinner than that). Else it
    says which planes are padding throughout: a bool per plane, or None, or "auto"."""
    return blank is not None and not isinstance(blank, str) and np.ndim(blank) >= 3


#: a box that holds nothing: every pixel of the planes is padding
NOTHING = (0, 0, 0, 0)


def tissue_box(pad: np.ndarray | None, shape: tuple[int, int], step: int) -> tuple[int, int, int, int] | None:
    """The rows and columns of a plane (``pad``: where it holds padding, (H, W), or (C, H, W) with
    its neighbours) that the network is given where padding frames it, (y0, y1, x0, x1): from the
    first that holds something not padding, down to a multiple of ``step``, to the last; None where
    that is the whole plane, :data:`NOTHING` where all is padding. A framed image is then segmented
    as the image without its frame is."""
    if pad is None:
        return None
    some = ~pad.reshape(-1, *shape).all(axis=0)
    rows, cols = np.flatnonzero(some.any(axis=1)), np.flatnonzero(some.any(axis=0))
    if rows.size == 0:
        return NOTHING
    box = (int(rows[0]) // step * step, int(rows[-1]) + 1, int(cols[0]) // step * step, int(cols[-1]) + 1)
    return None if box == (0, shape[0], 0, shape[1]) else box


def framed_inputs(planes: np.ndarray, intensity, downsampling: int, padding_factor: int, mean_std,
                  blank="auto", step: int = STRIDE) -> list[tuple]:
    """The network inputs of ``planes``, each plane cut to its :func:`tissue_box` (starting on a
    multiple of ``step`` network pixels: the output grid's, or the deepest cells' so that the
    cells are the whole plane's), planes of one box together: ``(planes, x, h, w, pad, box)`` per
    box, ``planes`` their indices, ``x`` None where all is padding (see :func:`placed`). Each
    plane is so cut whatever the planes beside it."""
    pad = plane_padding(planes, blank)
    rng = np.asarray(intensity, np.float32)
    boxes: dict = {}
    for i in range(len(planes)):
        boxes.setdefault(None if pad is None else tissue_box(pad[i], planes.shape[-2:], step * downsampling),
                         []).append(i)
    out = []
    for box, idx in boxes.items():
        idx = np.asarray(idx)
        if box == NOTHING:
            out.append((idx, None, 0, 0, None, box))
            continue
        some, p = (planes, pad) if len(boxes) == 1 else (planes[idx], None if pad is None else pad[idx])
        if box is not None:
            y0, y1, x0, x1 = box
            some, p = some[..., y0:y1, x0:x1], p[..., y0:y1, x0:x1]
        r = rng[idx] if rng.ndim == 2 else rng
        out.append((idx, *network_input(some, r, downsampling, padding_factor, mean_std, pad=p), box))
    return out


def placed(out: "ModelOutput | None", box, size: tuple[int, int], downsampling: int, n: int,
           channels: int) -> "ModelOutput":
    """The outputs of ``n`` planes whose network size is ``size`` from those of their
    :func:`tissue_box` (``out``; None where all is padding): nothing found outside the box."""
    if box is None:
        return out
    hn, wn = size
    hs, ws = -(-hn // STRIDE), -(-wn // STRIDE)
    whole = ModelOutput(np.zeros((n, channels, hn, wn), np.float32), np.zeros((n, 1, hs, ws), np.float32),
                        np.zeros((n, 2, hs, ws), np.float32))
    if channels > 1:  # softmax over background + classes
        whole.semantic_probability[:, 0] = 1.0
    if out is None:
        return whole
    ny, nx = box[0] // downsampling, box[2] // downsampling
    for a, part, cell in ((whole.semantic_probability, out.semantic_probability, 1),
                          (whole.heatmap, out.heatmap, STRIDE), (whole.offsets, out.offsets, STRIDE)):
        h, w = part.shape[-2:]
        a[..., ny // cell:ny // cell + h, nx // cell:nx // cell + w] = part
    return whole


def network_input(planes, intensity, downsampling, padding_factor, mean_std, blank="auto", pad="auto") -> tuple:
    """The network input of ``planes``, (N, C, H', W') float32 (normalised, downsampled,
    padded), the size (h, w) of its outputs before padding, and where the planes hold padding
    (:func:`~.preprocess.padding_mask`, (N, h, w) on the network's grid; None where none): the
    mean grey there, and :func:`predict_batch` finds nothing there; a plane of a single value is
    padding throughout: ``blank`` says which (a bool per plane, or None), by default
    :func:`~.preprocess.uniform_planes` of ``planes`` (tiles of larger planes take their planes'
    flags: a tile's uniformity says nothing of its plane's). ``planes``: (N, H, W), one
    channel each, or (N, C, H, W), a plane and its neighbours (see ``context_slices``). ``pad``:
    where the planes hold padding, made beforehand (:func:`plane_padding`), or "auto"."""
    planes = np.asarray(planes)
    rng = np.asarray(intensity, np.float32)
    if rng.ndim == 2:  # one (low, high) per plane
        rng = rng.T.reshape(2, len(rng), *[1] * (planes.ndim - 1))
    h, w = (-(-int(s) // downsampling) for s in planes.shape[-2:])
    pad = plane_padding(planes, blank) if isinstance(pad, str) else pad
    if pad is not None and downsampling > 1:  # a network pixel is padding where all its pixels are
        pad = integer_block_means(pad.view(np.uint8), downsampling) == 1
    if downsampling == 1:  # pad the raw planes: the same values as padding the float input, far fewer bytes
        planes, _ = pad_to_multiple(planes, padding_factor)
    if means_first(planes, rng[0], rng[1], downsampling):  # a quarter of the pixels to normalise (x2)
        x = normalize(integer_block_means(planes, downsampling), rng[0], rng[1], *mean_std)
    else:
        x = downsample(normalize(planes, rng[0], rng[1], *mean_std), downsampling)
    x = x[:, None] if x.ndim == 3 else x
    x, _ = pad_to_multiple(x, padding_factor)
    if pad is not None:  # the mean grey, in the margin that mirrors the planes too
        pad = pad[:, None] if pad.ndim == 3 else pad
        x[pad_to_multiple(pad, padding_factor)[0]] = 0.0
        pad = pad[:, pad.shape[1] // 2]  # the middle plane's (a plane and its neighbours)
    return x, h, w, pad


def clear_padding(out: "ModelOutput", pad: np.ndarray | None) -> "ModelOutput":
    """Outputs with nothing found where the planes hold padding: background probability 1, no
    centre in a heatmap cell that is padding throughout."""
    if pad is None:
        return out
    prob = out.semantic_probability
    if prob.shape[1] == 1:
        prob[:, 0][pad] = 0.0
    else:  # softmax over background + classes
        prob[:, 1:][np.broadcast_to(pad[:, None], prob[:, 1:].shape)] = 0.0
        prob[:, 0][pad] = 255 if prob.dtype == np.uint8 else 1.0  # kept as bytes (x 255), or as probabilities
    hh, ww = out.heatmap.shape[-2:]
    # a cell past the plane's edge counts its part in the plane alone (the rest is the network's margin)
    cells = np.pad(pad, [(0, 0), (0, hh * STRIDE - pad.shape[1]), (0, ww * STRIDE - pad.shape[2])],
                   constant_values=True)
    cells = cells.reshape(len(pad), hh, STRIDE, ww, STRIDE).all(axis=(2, 4))
    out.heatmap[:, 0][cells] = 0.0
    return out


def _on_device(x: np.ndarray, device: str):
    """A prepared input as a channels-last tensor on ``device``."""
    import torch
    x = torch.from_numpy(x)
    if device.startswith("cuda"):  # page-locked host memory: an asynchronous copy to the GPU
        return x.contiguous(memory_format=torch.channels_last).pin_memory().to(device, non_blocking=True)
    return x.to(device).contiguous(memory_format=torch.channels_last)


def encode_batch(model, planes: np.ndarray, intensity, device: str = "cpu", downsampling: int = 1,
                 padding_factor: int = 32, mean_std: tuple[float, float] = (0.5, 0.25),
                 blank="auto") -> tuple[np.ndarray, np.ndarray]:
    """The deepest features (N, C, h, w) of ``planes``, prepared as :func:`predict_batch`
    prepares them, and each cell's weight in the global context (N, 1, h, w; see
    :func:`tissue_weights`, planes taken as parts of larger ones): for the global context of a
    tiled image (:func:`cell_sums`). ``model``: a PyTorch
    module or the encode graph's :class:`~.runtime.OnnxNet`."""
    groups = framed_inputs(planes, intensity, downsampling, padding_factor, mean_std, blank, step=CELL)
    grid = [_cells(-(-n // downsampling), padding_factor) for n in planes.shape[-2:]]
    whole_f = whole_t = None
    for idx, x, _, _, pad, box in groups:
        if x is None:  # all padding: weighs nothing
            continue
        feats = _features(model, x, device)
        t = tissue_weights(pad, x.shape, padding_factor, whole=False)
        t = np.ones((len(feats), 1, *feats.shape[2:]), np.float32) if t is None else t
        if box is None and len(groups) == 1:
            return feats, t
        if whole_f is None:
            whole_f = np.zeros((len(planes), feats.shape[1], *grid), np.float32)
            whole_t = np.zeros((len(planes), 1, *grid), np.float32)
        # the box's cells among the whole plane's (the box starts on a cell; cells of the network's
        # margin past the plane's grid are left out): the others weigh nothing
        cy, cx = (0, 0) if box is None else (box[0] // downsampling // CELL, box[2] // downsampling // CELL)
        h, w = min(feats.shape[-2], grid[0] - cy), min(feats.shape[-1], grid[1] - cx)
        whole_f[idx, :, cy:cy + h, cx:cx + w] = feats[..., :h, :w]
        whole_t[idx, :, cy:cy + h, cx:cx + w] = t[..., :h, :w]
    if whole_f is None:  # every plane is padding: the whole planes' features, weighing nothing
        feats = _features(model, network_input(planes, intensity, downsampling, padding_factor, mean_std, blank)[0],
                          device)
        return feats, np.zeros((len(feats), 1, *feats.shape[2:]), np.float32)
    return whole_f, whole_t


def _features(model, x: np.ndarray, device: str) -> np.ndarray:
    """The deepest features of a prepared input (a PyTorch module, or the encode graph's session)."""
    from .runtime import OnnxNet
    if isinstance(model, OnnxNet):
        return model.features(x)
    import torch
    with torch.inference_mode():
        return model.encode(_on_device(x, device)).float().cpu().numpy()


def _cells(n: int, padding_factor: int) -> int:
    """The deepest cells along a side of ``n`` network pixels, padded to ``padding_factor``."""
    return -(-(-(-n // padding_factor) * padding_factor) // CELL)


def predict_batch(model, planes: np.ndarray, intensity: tuple[float, float], device: str = "cpu",
                  downsampling: int = 1, padding_factor: int = 32,
                  mean_std: tuple[float, float] = (0.5, 0.25), context: np.ndarray | None = None,
                  precision: str = "auto", timings: dict | None = None, tta: bool = False,
                  prepared: tuple[np.ndarray, int, int] | None = None, blank="auto",
                  tissue: str | None = "auto") -> ModelOutput:
    """Network outputs for ``planes`` (N, H, W) of any numeric dtype.

    ``intensity`` is the (low, high) range mapped to [0, 1], or one per plane (N, 2) (see
    :func:`~panoptem.inference.preprocess.intensity_range`). ``context`` (N, C): the
    global context of each plane's whole image, when the planes are tiles of it
    (models that :func:`supports_context` only). ``precision``: auto (float16 autocast on
    CUDA, float32 elsewhere), fp32, bf16 or fp16 (int8: an ONNX graph; see :mod:`.runtime`). ``timings``:
    wall and CPU seconds of ``normalise`` and ``forward`` are added to it. ``tta``: the
    outputs are averaged over the input and its flips (see :func:`_flip_average`). ``prepared``:
    the network input of ``planes`` made beforehand, ``(x, h, w, pad)`` as
    :meth:`~.engine.Predictor.prepare` gives it (``planes`` and ``intensity`` are then unused).
    Nothing is found where the planes hold padding (:func:`network_input`; ``blank``: see there),
    and a plane's own global context leaves the padding out (:func:`tissue_weights`), where
    ``tissue`` is "auto" and ``model`` takes the cells' weights (panoptem's own PyTorch networks, the
    ONNX tissue graph); None: every cell weighs the same.
    """
    from ._pipeline import StageClock
    from .runtime import OnnxNet
    clock = StageClock(timings if timings is not None else {})
    if prepared is None:
        with clock("normalise"):
            prepared = network_input(planes, intensity, downsampling, padding_factor, mean_std, blank)
    x, h, w, pad = prepared
    takes = model.graph == "tissue" if isinstance(model, OnnxNet) else supports_context(model)
    weights = None  # the cells' weights of each pass (the flips' too)
    if tissue is not None and takes and context is None and pad is not None and pad.any():
        weights = {f: tissue_weights(pad, x.shape, padding_factor, flip=f) for f in (FLIPS if tta else FLIPS[:1])}
    tissue = weights
    with clock("forward"):
        if isinstance(model, OnnxNet):
            return clear_padding(_run_onnx(model, x, h, w, tta, context, tissue), pad)
        return clear_padding(_run(model, _on_device(x, device), h, w, context, device, precision, tta, tissue),
                             pad)


def _flip_average(model, x, ctx, tissue=None) -> dict:
    """Outputs averaged over ``x`` and its flips along rows, columns and both, each flipped
    back; offsets change sign along a flipped axis. Cell ``i`` of the stride-4 grid is
    centred at pixel ``4i + 1.5``, and padded inputs are multiples of 4, so a flip maps
    cells onto cells exactly. ``x``: a torch tensor, or a numpy array for an ONNX session;
    ``tissue``: each pass's weights of the global context (keyed by :data:`FLIPS`), or None."""
    if isinstance(x, np.ndarray):
        def flip(a, dims):
            return np.ascontiguousarray(np.flip(a, dims))
    else:
        def flip(a, dims):
            return a.flip(dims)
    out = {k: v.float() if hasattr(v, "float") else v for k, v in _forward(model, x, ctx, _of(tissue, ())).items()}
    for dims in FLIPS[1:]:
        o = _forward(model, flip(x, dims), ctx, _of(tissue, dims))
        for k in out:
            v = flip(o[k].float() if hasattr(o[k], "float") else o[k], dims)
            if k == "offsets":
                sign = [-1.0 if -2 in dims else 1.0, -1.0 if -1 in dims else 1.0]
                if isinstance(v, np.ndarray):
                    v = v * np.array(sign, np.float32).reshape(1, 2, 1, 1)
                else:  # on the tensor's device (a GPU's too)
                    import torch
                    v = v * torch.tensor(sign, device=v.device).view(1, 2, 1, 1)
            out[k] = out[k] + v
    return {k: v / 4 for k, v in out.items()}


def _of(tissue: dict | None, dims: tuple):
    return None if tissue is None else tissue[dims]


def _run(model, x, h: int, w: int, context, device: str, precision: str,
         tta: bool = False, tissue: dict | None = None) -> ModelOutput:
    """Forward pass of a prepared input tensor, outputs cropped to (h, w) and moved to the CPU."""
    import torch
    import torch.nn.functional as F

    from .runtime import autocast, resolve_precision
    ctx = None if context is None else torch.from_numpy(np.asarray(context, np.float32))[:, :, None, None].to(device)
    tis = None if tissue is None else {f: torch.from_numpy(t.copy()).to(device) for f, t in tissue.items()}
    with torch.inference_mode(), autocast(device, resolve_precision(precision, device)):
        out = _flip_average(model, x, ctx, tis) if tta else _forward(model, x, ctx, _of(tis, ()))
    logits = out["sem_logits"].float()
    if logits.shape[-2:] != x.shape[-2:]:
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    logits = logits[..., :h, :w]
    prob = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
    hh, ww = -(-h // STRIDE), -(-w // STRIDE)
    hm = out["ctr_hmp"].float()[..., :hh, :ww]
    off = out["offsets"].float()[..., :hh, :ww]
    return ModelOutput(prob.cpu().numpy(), hm.cpu().numpy(), off.cpu().numpy())


def _run_onnx(net, x: np.ndarray, h: int, w: int, tta: bool = False, context=None,
              tissue: dict | None = None) -> ModelOutput:
    """:func:`_run` for an ONNX Runtime session (its semantic logits come at the input's size)."""
    from scipy.special import softmax
    ctx = None if context is None else np.asarray(context, np.float32)
    out = _flip_average(net, x, ctx, tissue) if tta else _forward(net, x, ctx, _of(tissue, ()))
    logits = np.ascontiguousarray(out["sem_logits"][..., :h, :w], np.float32)
    prob = sigmoid_(logits) if logits.shape[1] == 1 else softmax(logits, axis=1).astype(np.float32)
    hh, ww = -(-h // STRIDE), -(-w // STRIDE)
    hm = np.ascontiguousarray(out["ctr_hmp"][..., :hh, :ww], np.float32)
    off = np.ascontiguousarray(out["offsets"][..., :hh, :ww], np.float32)
    return ModelOutput(prob, hm, off)


def sigmoid_(a: np.ndarray) -> np.ndarray:
    """The logistic function of a float32 array, in place, as ``(tanh(a / 2) + 1) / 2``: exact
    to float32 rounding and about 3 x faster than :func:`scipy.special.expit` (numpy's tanh is
    vectorised)."""
    np.multiply(a, 0.5, out=a)
    np.tanh(a, out=a)
    np.multiply(a, 0.5, out=a)
    np.add(a, 0.5, out=a)
    return a
