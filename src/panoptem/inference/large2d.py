"""Decoding of 2D images too large to decode at once, tile by tile.

The network runs on overlapping tiles (:class:`~.engine.Predictor`) whose
outputs are stitched compactly: semantic probability as uint8 at network
resolution, centre heatmap and offsets on the stride-4 grid. Centres are found
once on the whole heatmap. Then every decode tile groups its pixels against
the global centre list, and connected pieces are found per tile and joined
across tile borders with a union-find, so objects that span tiles keep one id.
The steps are :mod:`.decode`'s functions (the same rules as one-pass decoding);
only the tiling and the joining across tile borders live here.
Memory: the input, about 1 byte per pixel of probabilities, 0.75 bytes of
heatmap/offsets and the 4-byte labels; decoding temporaries are per tile.
"""
from __future__ import annotations

import cc3d
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import PanoptemError
from ..labels import number_per_class
from ..models.card import OUTPUT_STRIDE
from .decode import (centers_in_pixels, class_votes, find_centers, group_pixels, paint_stuff,
                     semantic_classes, stuff_areas, stuff_label, things_and_stuff)
from .preprocess import linear_resize

DECODE_TILE = 2048


def _tile_starts(size: int, tile: int) -> list[int]:
    return list(range(0, size, tile))


def _crop_upsampled(a: np.ndarray, r0: int, r1: int, c0: int, c1: int, factor: int) -> np.ndarray:
    """Rows r0:r1, cols c0:c1 (output pixels) of ``a`` (C, h, w) bilinearly upsampled by
    ``factor`` (pixel centres aligned), computed from a crop with a one-cell margin."""
    if factor == 1:
        return a[:, r0:r1, c0:c1].astype(np.float32)
    h, w = a.shape[-2:]
    g0, g1 = max(r0 // factor - 1, 0), min(-(-r1 // factor) + 1, h)
    k0, k1 = max(c0 // factor - 1, 0), min(-(-c1 // factor) + 1, w)
    up = linear_resize(a[:, g0:g1, k0:k1].astype(np.float32), ((g1 - g0) * factor, (k1 - k0) * factor))
    return up[:, r0 - g0 * factor:r1 - g0 * factor, c0 - k0 * factor:c1 - k0 * factor]


def _crop_resized(a: np.ndarray, r0: int, r1: int, c0: int, c1: int, scale) -> np.ndarray:
    """Rows r0:r1, cols c0:c1 of :func:`~.resample.resize_at` of ``a`` (C, h, w) to ``scale``
    output pixels per pixel of ``a`` (rows, columns: ``Fraction``), the same values, computed
    from a crop: one that starts a whole period of the resampling (``numerator`` output,
    ``denominator`` input pixels) before the rows and columns asked for, so that its taps
    have the phases and the edges of the whole plane's, and ends two pixels after them."""
    from .resample import resize_at
    h, w = a.shape[-2:]
    box = []
    for lo, hi, s, m in ((r0, r1, scale[0], h), (c0, c1, scale[1], w)):
        k = max(lo // s.numerator - 1, 0)  # periods before the crop
        g0, o0 = k * s.denominator, k * s.numerator  # input and output start, in phase
        g1 = min(m, int((hi / s).__ceil__()) + 2)
        box.append((g0, g1, o0, hi - o0, lo - o0))
    (g0, g1, _, nr, dr), (k0, k1, _, nc, dc) = box
    up = resize_at(a[:, g0:g1, k0:k1], (1 / scale[0], 1 / scale[1]), (nr, nc))
    return up[:, dr:, dc:]


class _UnionFind:
    """Edges between global piece ids, solved once."""

    def __init__(self):
        self.a, self.b = [], []

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        m = (a > 0) & (b > 0)
        if m.any():
            pairs = np.unique(np.stack([a[m], b[m]], 1), axis=0)
            self.a.append(pairs[:, 0])
            self.b.append(pairs[:, 1])

    def roots(self, n: int) -> np.ndarray:
        a = np.concatenate(self.a) if self.a else np.zeros(0, np.int64)
        b = np.concatenate(self.b) if self.b else np.zeros(0, np.int64)
        g = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(n + 1, n + 1))
        return connected_components(g, directed=False)[1]


def _join_border(uf: _UnionFind, a_pcs, a_lab, b_pcs, b_lab) -> None:
    """Join pieces facing each other across a tile border (8-connected: the
    pixel opposite and its two neighbours along the border) with equal centre ids."""
    n = len(a_pcs)
    for d in (-1, 0, 1):
        ia = slice(max(0, -d), n - max(0, d))
        ib = slice(max(0, d), n - max(0, -d))
        same = a_lab[ia] == b_lab[ib]
        uf.add(a_pcs[ia][same], b_pcs[ib][same])


def decode_large(prob: np.ndarray, heatmap: np.ndarray, offsets: np.ndarray, out_shape: tuple[int, int], *,
                 class_ids, thing_ids, confidence_thr: float = 0.5, center_confidence_thr: float = 0.1,
                 min_distance_object_centers: int = 3, fine_boundaries: bool = False,
                 semantic_only: bool = False, label_divisor: int | None = 10000, stride: int = OUTPUT_STRIDE,
                 stuff_area: int = 64, tile: int | None = None,
                 min_piece_area: int = 0, scale=None, background_rows: np.ndarray | None = None) -> np.ndarray:
    """Panoptic labels of one large plane, decoded tile by tile (same rules as
    :func:`~.decode.decode_panoptic`). ``prob`` (C, h, w) uint8 (x 255) or float
    at network resolution; ``heatmap`` (1, gh, gw); ``offsets`` (2, gh, gw). ``scale``: output
    pixels per network pixel (rows, columns: ``Fraction``) of a plane downsampled or resampled for
    the network, as :func:`~.decode.decode_panoptic` takes it (None: the input's own pixels).
    ``min_piece_area``: objects (each one 8-connected piece) of fewer pixels become
    background, as :func:`~.postprocess.remove_small_pieces` would make them, from the pieces'
    areas counted per tile (for models without semantic, 'stuff', classes; see :mod:`.segment2d`).
    ``background_rows``: rows where nothing is found (a bool per row: an xz / yz plane's blank
    sections), cut before the pieces are made, as :func:`~.decode.decode_panoptic` cuts them."""
    from fractions import Fraction
    H, W = out_shape
    sy, sx = (Fraction(v) for v in scale) if scale is not None else (Fraction(1), Fraction(1))
    tile = tile or DECODE_TILE
    tile = max(stride, (tile // stride) * stride) if scale is None else tile  # cells follow the pixels' own index
    unit_prob = 1 / 255.0 if prob.dtype == np.uint8 else 1.0
    things, stuff = things_and_stuff(class_ids, thing_ids, semantic_only)
    div = int(label_divisor or 0)
    n_cls = int(max([0, *class_ids])) + 1
    hm = np.asarray(heatmap, np.float32).reshape(heatmap.shape[-2:])
    centers = find_centers(hm, center_confidence_thr, min_distance_object_centers) if things else np.zeros((0, 2))
    centers_px = centers_in_pixels(centers, stride)  # network-input pixels
    K = len(centers_px)
    ids_dtype = np.uint32
    labels = np.zeros((H, W), ids_dtype)
    votes = np.zeros((K + 1, n_cls), np.int64)
    ys, xs = _tile_starts(H, tile), _tile_starts(W, tile)
    tiles = [(y0, min(y0 + tile, H), x0, min(x0 + tile, W)) for y0 in ys for x0 in xs]

    def semantic(y0, y1, x0, x1):
        p = (prob[:, y0:y1, x0:x1].astype(np.float32) if scale is None else
             _crop_resized(prob, y0, y1, x0, x1, (sy, sx))) * unit_prob
        sem = semantic_classes(p, class_ids, confidence_thr)
        if background_rows is not None:
            sem[np.asarray(background_rows, bool)[y0:y1]] = 0
        return sem

    def cells(lo, hi, per_cell):  # output pixels lo..hi-1 -> cells of per_cell pixels (as _upsample_nearest)
        at = np.arange(lo, hi, dtype=np.int64) * per_cell.denominator // per_cell.numerator
        return at, int(at[0]), int(at[-1]) + 1

    def centre_ids(y0, y1, x0, x1):
        if K == 0:
            return np.zeros((y1 - y0, x1 - x0), np.uint32)
        if fine_boundaries:  # group at network resolution
            (ay, n0, n1), (ax, m0, m1) = cells(y0, y1, sy), cells(x0, x1, sx)
            grid = group_pixels(centers_px, _crop_upsampled(offsets, n0, n1, m0, m1, stride), 1, (n0, m0))
        else:
            (ay, n0, n1), (ax, m0, m1) = cells(y0, y1, stride * sy), cells(x0, x1, stride * sx)
            grid = group_pixels(centers_px, offsets[:, n0:n1, m0:m1].astype(np.float32), stride, (n0, m0))
        return grid[np.ix_(np.minimum(ay, grid.shape[0] + n0 - 1) - n0, np.minimum(ax, grid.shape[1] + m0 - 1) - m0)]

    # pass 1: centre id of every thing pixel, and class votes per centre
    for y0, y1, x0, x1 in tiles:
        sem = semantic(y0, y1, x0, x1)
        is_thing = np.isin(sem, things) if things else np.zeros(sem.shape, bool)
        inst = np.where(is_thing, centre_ids(y0, y1, x0, x1), 0).astype(ids_dtype)
        labels[y0:y1, x0:x1] = inst
        if things:
            votes += class_votes(inst[is_thing], sem[is_thing], K, n_cls)
    major = votes.argmax(1)

    # pass 2: connected pieces per tile, joined across tile borders
    uf = _UnionFind()
    offsets_of, n_total, piece_centre, piece_area = {}, 0, [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
    prev_row_bottom: dict[int, np.ndarray] = {}
    for y0 in ys:
        left = None
        row_bottom = {}
        for x0 in xs:
            y1, x1 = min(y0 + tile, H), min(x0 + tile, W)
            lab = labels[y0:y1, x0:x1]
            pcs = cc3d.connected_components(lab, connectivity=8).astype(np.int64)
            n = int(pcs.max())
            g = np.where(pcs > 0, pcs + n_total, 0)
            pc = np.zeros(n + 1, np.int64)
            pc[pcs.ravel()] = lab.ravel()
            piece_centre.append(pc[1:])
            piece_area.append(np.bincount(pcs.ravel(), minlength=n + 1)[1:])
            offsets_of[(y0, x0)] = n_total
            n_total += n
            if left is not None:  # vertical border with the tile on the left
                _join_border(uf, left[0][:, -1], left[1][:, -1], g[:, 0], lab[:, 0])
            if x0 in prev_row_bottom:  # horizontal border with the tile above
                _join_border(uf, *prev_row_bottom[x0], g[0], lab[0])
                # diagonal neighbours across the tile corners
                for xn, (ai, bi) in ((x0 - tile, (-1, 0)), (x0 + tile, (0, -1))):
                    if xn in prev_row_bottom:
                        tg, tl = prev_row_bottom[xn]
                        if tl[ai] == lab[0, bi]:
                            uf.add(np.array([tg[ai]]), np.array([g[0, bi]]))
            row_bottom[x0] = (g[-1].copy(), lab[-1].copy())
            left = (g, lab)
        prev_row_bottom = row_bottom
    root = uf.roots(n_total)
    cls_of_piece = major[np.concatenate(piece_centre)]
    cls_of_piece[0] = 0
    # final ids per class, in order of each object's first piece
    _, first = np.unique(root[1:], return_index=True)
    obj_root = root[1:][first]
    obj_cls = cls_of_piece[1:][first]
    final_of_root = np.zeros(root.max() + 1, np.int64)
    final_of_root[obj_root] = number_per_class(obj_cls, np.isin(obj_cls, things), div)
    lut = final_of_root[root]
    lut[0] = 0
    if min_piece_area > 1:  # an object is one connected piece: its area is its pieces' in every tile
        area = np.bincount(root, weights=np.concatenate(piece_area), minlength=root.max() + 1)
        lut[area[root] < min_piece_area] = 0
    if int(lut.max(initial=0)) >= 2**32 or max([0, *(stuff_label(s, div) for s in stuff)]) >= 2**32:
        raise PanoptemError("Labels exceed 32 bits; lower Max objects per class.")

    # pass 3: write final ids (pieces recomputed per tile: deterministic)
    for y0, y1, x0, x1 in tiles:
        lab = labels[y0:y1, x0:x1]
        pcs = cc3d.connected_components(lab, connectivity=8).astype(np.int64)
        g = np.where(pcs > 0, pcs + offsets_of[(y0, x0)], 0)
        labels[y0:y1, x0:x1] = lut[g].astype(ids_dtype)

    if stuff:  # stuff classes fill where no instance is, if large enough overall
        area = dict.fromkeys(stuff, 0)
        for y0, y1, x0, x1 in tiles:
            for s_, a in stuff_areas(labels[y0:y1, x0:x1], semantic(y0, y1, x0, x1), stuff).items():
                area[s_] += a
        fill = [s_ for s_ in stuff if area[s_] >= stuff_area]
        if fill:
            for y0, y1, x0, x1 in tiles:
                paint_stuff(labels[y0:y1, x0:x1], semantic(y0, y1, x0, x1), fill, div)
    return labels
