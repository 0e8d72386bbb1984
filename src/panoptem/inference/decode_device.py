"""The two array-heavy steps of :func:`.decode.decode_planes` run with PyTorch on the GPU that
ran the network: the centre heatmaps' local maxima, and every cell's nearest centre. Beside a
GPU, the CPU decodes behind the network in one thread and is what a run waits for; these
steps were about half of that thread's decoding time.

The arithmetic is the CPU's, step for step (float32 targets, float64 distances, the first
centre on a tie), so the ids are the same; the CPU keeps what is cheap or has no PyTorch
equivalent (one centre per plateau, crowded planes' k-d tree, connected pieces). The work
runs on a CUDA stream of its own, beside the network's."""
from __future__ import annotations

import threading

import numpy as np

_streams: dict[str, object] = {}
_lock = threading.Lock()


def _stream(device: str):
    """This process's side stream on ``device`` (made once)."""
    import torch
    with _lock:
        if device not in _streams:
            _streams[device] = torch.cuda.Stream(device=torch.device(device))
        return _streams[device]


def _on(device: str):
    """The context that runs what follows on ``device``'s side stream (on a CPU, nothing)."""
    import contextlib

    import torch
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    return torch.cuda.stream(_stream(device))


def peak_cells(heatmaps: np.ndarray, threshold: float, min_distance: int, device: str) -> np.ndarray:
    """:func:`.decode.peak_cells` of each of N float32 heatmaps (N, h, w), computed on ``device``."""
    import torch
    import torch.nn.functional as F
    k = max(1, int(min_distance))
    with torch.inference_mode(), _on(device):
        hm = torch.from_numpy(np.ascontiguousarray(heatmaps, np.float32)).to(device)
        peaks = hm > threshold
        if k > 1:  # scipy's window for size k: k // 2 cells before a cell, k - 1 - k // 2 after
            lo, hi = k // 2, k - 1 - k // 2
            padded = F.pad(hm[:, None], (lo, hi, lo, hi), value=-float("inf"))
            peaks &= hm >= F.max_pool2d(padded, k, stride=1)[:, 0]
        return peaks.cpu().numpy()


def nearest_centers(centers: np.ndarray, plane: np.ndarray, counts: np.ndarray, offsets: np.ndarray,
                    stride: int, device: str) -> np.ndarray:
    """For planes whose centres are ``counts`` (N,) of ``centers`` (K, 2, input pixels, sorted by
    ``plane``), 1 + the index within its plane of every cell's nearest centre, (N, h, w) int32
    (0 in a plane without centres), computed on ``device``: :func:`.decode._closest` of the
    cells' targets (cell centre + ``offsets`` (N, 2, h, w))."""
    import torch
    n, _, h, w = offsets.shape
    if not len(centers):
        return np.zeros((n, h, w), np.int32)
    start = np.concatenate([[0], np.cumsum(counts)])
    ranks = int(counts.max())
    # the j-th centre of each plane in column j; +inf where a plane has fewer (never closer)
    table = np.full((ranks, n, 2), np.inf)
    j = np.arange(len(centers)) - start[plane]
    table[j, plane] = np.asarray(centers, np.float32).astype(np.float64)
    c0 = (stride - 1) / 2.0
    with torch.inference_mode(), _on(device):
        off = torch.from_numpy(np.ascontiguousarray(offsets, np.float32)).to(device)
        yy = (torch.arange(h, dtype=torch.float32, device=device) * stride + c0)[:, None]
        xx = (torch.arange(w, dtype=torch.float32, device=device) * stride + c0)[None, :]
        ty = (yy + off[:, 0]).double()
        tx = (xx + off[:, 1]).double()
        cen = torch.from_numpy(table).to(device)[..., None, None]  # (ranks, N, 2, 1, 1)
        best = torch.full(ty.shape, float("inf"), dtype=torch.float64, device=device)
        ids = torch.zeros(ty.shape, dtype=torch.int32, device=device)
        for r in range(ranks):
            d = ty - cen[r, :, 0]
            d = d * d
            e = tx - cen[r, :, 1]
            d = d + e * e
            closer = d < best
            best = torch.where(closer, d, best)
            ids.masked_fill_(closer, r + 1)
        return ids.cpu().numpy()
