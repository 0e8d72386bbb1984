"""The network side of inference: a loaded model plus the parameters that
shape its input (downsampling, tiling), producing :class:`ModelOutput`s."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import PanoptemError
from ..models.card import OUTPUT_STRIDE as STRIDE
from ..models.home import DEFAULT_MODEL
from ..models.load import LoadedModel, load_model
from ..params import AUTO_TILE
from .cache import probability_bytes
from .predict import (CELL, ModelOutput, cell_sums, context_of_sums, encode_batch, framed_inputs, per_pixel, placed,
                      predict_batch)
from .preprocess import dtype_range, intensity_range, padding_in, uniform_planes


@dataclass
class Prepared:
    """Network inputs made ahead of the network (:meth:`Predictor.prepare`) for ``planes``
    planes: one tuple per batch, as :meth:`Predictor._inputs` makes them. Its length is the
    number of planes, as for the planes themselves."""

    batches: list
    planes: int

    def __len__(self) -> int:
        return self.planes

    def inputs(self) -> list[np.ndarray]:
        """The network input of every call, (N, C, H, W) float32 (planes of padding alone need none)."""
        return [g[1] for groups, _, _ in self.batches for g in groups if g[1] is not None]


def card_intensity(card, image) -> tuple[float, float]:
    """The (low, high) intensities a model with ``card`` maps to 0..1 for ``image`` (a plane, or a
    volume: one range for all its planes, sampled): its dtype's range, or its percentiles."""
    n = card.normalization
    if n.mode == "dtype_max":
        return dtype_range(image)
    return intensity_range(image, low_pct=n.low_pct, high_pct=n.high_pct)


class Predictor:
    """Runs one model on 2D planes, whole or in overlapping tiles.

    Tiles are laid on a grid aligned to the network's padding factor; each
    tile's outputs are cropped to its core (half the overlap removed on inner
    sides) and pasted, so every output pixel comes from a tile in which it is
    at least ``overlap/2`` pixels from the edge: no seams, no object merging.

    ``batch_size``: planes per network call; 0 chooses it from the plane size (and on
    CUDA from free memory, see :func:`.runtime.auto_batch_size`). ``runtime``,
    ``precision`` and ``threads`` (intra-op threads; None: every core) say how the
    network runs (see :mod:`.runtime`), tiles given their whole plane's global context
    included. ``invert``: every network input is made with the intensity range run backwards
    (bright membranes seen dark; see :class:`~panoptem.params.PlaneParams`), whatever range the
    caller gives.
    """

    def __init__(self, model: str | LoadedModel = DEFAULT_MODEL, device: str = "auto",
                 downsampling: int = 1, tile_size: int = 0, batch_size: int = 4, factor=None,
                 runtime: str = "torch", precision: str = "auto", threads: int | None = None, tta: bool = False,
                 invert: bool = False):
        from .._memory import avoid_hugepage_stalls, fix_mmap_threshold, limit_arenas
        from .runtime import resolve_precision, resolve_runtime
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 0:
            raise PanoptemError(f"Batch size must be a whole number of slices, 1 or more (0: automatic), "
                                f"not {batch_size!r}.")
        fix_mmap_threshold()  # slice after slice, keep the heap from fragmenting (see _memory.py)
        limit_arenas()  # before the reading, decoding and writing threads take arenas of their own
        avoid_hugepage_stalls()
        self.model = load_model(model, device) if not isinstance(model, LoadedModel) else model
        self.card = self.model.card
        self.tile_size = tile_size
        self.auto_batch = int(batch_size) == 0
        self.batch_size = int(batch_size) or 4
        self._set_factor(factor, downsampling)
        self.precision = resolve_precision(precision, self.model.device)
        self.runtime = resolve_runtime(runtime, self.model, self.model.device, self.precision)
        self.threads = threads
        self.tta = bool(tta)
        #: whether the network sees the planes' contrast inverted (bright membranes made dark)
        self.invert = bool(invert)
        #: how many of a stack's planes apart the neighbours of a model with context_slices lie (see
        #: segment3d.with_neighbours): 1 unless a run's pixel plan says the planes are farther or closer
        self.neighbour_step = 1.0
        #: how many of a stack's planes make one network plane (their mean; see
        #: resample.PixelPlan.stack_step): 1 unless a run's pixel plan reduces the stack's axis
        self.stack_step = 1
        self._graphs: dict = {}  # ONNX Runtime sessions by graph, made on first use
        self._check_tile(f"at Image Downsampling {downsampling}")

    @property
    def min_tile(self) -> int:
        """The smallest tile (pixels of the planes cut) that leaves room for two tiles' overlap."""
        return 2 * self._align()

    def _check_tile(self, where: str) -> None:
        """Refuse a tile too small for two tiles' overlap at this reduction."""
        least = self.min_tile
        if self.tile_size and self.tile_size < least:
            raise PanoptemError(f"Tile size {self.tile_size} is too small for model '{self.card.name}' {where}: "
                                f"use 0 (no tiling) or at least {least} pixels.")

    def _set_factor(self, factor, downsampling: int = 1) -> None:
        """Input pixels per network pixel: one whole factor on both axes runs as plain
        downsampling; any other ``(rows, columns)`` factor resamples each plane first
        (see :mod:`.resample`)."""
        self.resample = None
        self.downsampling = int(downsampling)
        if factor is not None:
            fy, fx = (float(f) for f in factor)
            if fy == fx and fy.is_integer() and fy >= 1:
                self.downsampling = int(fy)
            else:
                self.downsampling, self.resample = 1, (fy, fx)

    def with_factor(self, factor, neighbour_step: float = 1.0, stack_step: int = 1) -> "Predictor":
        """This predictor (same loaded model) at another factor (see :meth:`_set_factor`), its
        neighbours ``neighbour_step`` planes apart (see :attr:`neighbour_step`), each network
        plane of a stack the mean of ``stack_step`` planes (see :attr:`stack_step`)."""
        import copy
        other = copy.copy(self)
        other._set_factor(factor)
        if other.downsampling != self.downsampling:
            other._check_tile(f"where the pixel size and Image Downsampling reduce the image {other.downsampling} "
                              "times")
        other.neighbour_step = float(neighbour_step)
        other.stack_step = int(stack_step)
        return other

    @property
    def factor(self) -> tuple[float, float]:
        """Input pixels per network pixel (rows, columns)."""
        return self.resample or (float(self.downsampling), float(self.downsampling))

    def out_scale(self):
        """Output pixels (the input's grid) per network pixel, exact (rows, columns: ``Fraction``):
        how decoding brings the network's outputs back (:func:`~.resample.resize_at`), so that
        they land where the network saw them whatever the plane's size; None where the network
        sees the input's own pixels."""
        from fractions import Fraction
        if self.resample is None:
            return None if self.downsampling == 1 else (Fraction(self.downsampling),) * 2
        from .resample import as_fraction
        return tuple(as_fraction(f) for f in self.resample)

    def network_shape(self, shape) -> tuple[int, int]:
        """(rows, columns) of the network's outputs for planes of ``shape`` (H, W)."""
        from .resample import network_shape
        return network_shape(shape, self.factor)

    def to_network_grid(self, planes: np.ndarray) -> np.ndarray:
        """Planes resampled to the network grid when the factor is not a whole one
        (float32); unchanged otherwise (downsampling happens in the network call)."""
        if self.resample is None:
            return planes
        from .resample import resample_planes
        return resample_planes(planes, self.factor)

    def _align(self) -> int:
        """Tile origins lie on this grid (pixels): the network's padding factor at the downsampling."""
        return max(self.card.padding_factor, STRIDE) * self.downsampling

    def intensity(self, image) -> tuple[float, float]:
        """The intensity range used to normalise ``image`` (plane or volume), see :func:`card_intensity`."""
        return card_intensity(self.card, image)

    def _mapped(self, intensity) -> np.ndarray:
        """The (low, high) intensities the network's input maps to 0 and 1: ``intensity`` (one
        range, or one per plane), reversed where the contrast is inverted."""
        rng = np.asarray(intensity, np.float32)
        return rng[..., ::-1] if self.invert else rng

    @property
    def network(self):
        """What runs the forward pass: the PyTorch module or an ONNX Runtime session."""
        return self._graph("plain")

    def _graph(self, graph: str):
        """The PyTorch module, or the ONNX Runtime session of ``graph`` (see :data:`.runtime.GRAPHS`)."""
        if self.runtime != "onnx":
            return self.model.inference_module
        if graph not in self._graphs:
            from .runtime import cpu_count, onnx_net
            self._graphs[graph] = onnx_net(self.model, self.threads or cpu_count(), graph, self.precision)
        return self._graphs[graph]

    def batch_for(self, plane_shape, n: int, steps: int = 10) -> int:
        """Planes per network call for a stack of ``n`` planes of ``plane_shape`` (input pixels),
        cut into about ``steps`` parts or more (see :func:`.runtime.auto_batch_size`)."""
        if not self.auto_batch:
            return self.batch_size
        from .runtime import auto_batch_size
        f = self.downsampling
        return auto_batch_size((-(-plane_shape[0] // f), -(-plane_shape[1] // f)), self.model.device, n, steps)

    def planes_in(self, planes) -> np.ndarray:
        """``planes`` as the network takes them: (N, H, W) for a model of one input channel;
        (N, C, H, W) for a model that sees each plane with its neighbours (card
        ``context_slices``), where planes given alone, (H, W) or (N, H, W), fill every channel
        with themselves (a lone 2D image has no neighbours)."""
        planes = np.asarray(planes)
        if planes.ndim == 2:
            planes = planes[None]
        c = self.card.input_channels
        if c > 1 and planes.ndim == 3:
            return np.broadcast_to(planes[:, None], (len(planes), c, *planes.shape[1:]))
        if planes.ndim != (3 if c == 1 else 4) or (c > 1 and planes.shape[1] != c):
            raise PanoptemError(f"Model '{self.card.name}' takes planes as (N, H, W)"
                                f"{f' or (N, {c}, H, W) with their neighbours' if c > 1 else ''}, "
                                f"not an array of shape {planes.shape}.")
        return planes

    def _predict(self, planes: np.ndarray | None, intensity, context=None, timings: dict | None = None,
                 prepared: tuple | None = None, blank="auto") -> ModelOutput:
        """One network call: with each plane's global ``context`` given, or else its own, over the
        cells that are not padding (the tissue graph where a plane holds padding)."""
        from ._pipeline import StageClock
        if prepared is None:
            with StageClock(timings if timings is not None else {})("normalise"):
                prepared = self._inputs(planes, intensity, blank)
        groups, n, size = prepared
        parts = []
        for idx, x, h, w, pad, box in groups:
            out = None
            if x is not None:  # else all is padding: nothing to find
                padded = context is None and self.weighs_tissue and pad is not None and bool(pad.any())
                graph = "context" if context is not None else "tissue" if padded else "plain"
                out = predict_batch(self._graph(graph), None, None, device=self.model.device,
                                    downsampling=self.downsampling, padding_factor=self.card.pad_multiple,
                                    context=None if context is None else np.asarray(context)[idx],
                                    precision=self.precision, timings=timings, tta=self.tta, prepared=(x, h, w, pad))
            parts.append((idx, placed(out, box, size, self.downsampling, len(idx), self.card.probability_channels)))
        if len(parts) == 1:
            return parts[0][1]
        whole = ModelOutput(*(np.zeros((n, *getattr(parts[0][1], f).shape[1:]), np.float32)
                              for f in ("semantic_probability", "heatmap", "offsets")))
        for idx, out in parts:
            for f in ("semantic_probability", "heatmap", "offsets"):
                getattr(whole, f)[idx] = getattr(out, f)
        return whole

    def _inputs(self, planes: np.ndarray, intensity, blank="auto") -> tuple:
        """What one network call takes for ``planes`` (on the network grid): the network inputs of
        each plane's part within its :func:`.predict.tissue_box` (see :func:`.predict.framed_inputs`),
        and the number and network size of the planes: ``(groups, n, size)``."""
        n = self.card.normalization
        f = self.downsampling
        size = (-(-planes.shape[-2] // f), -(-planes.shape[-1] // f))
        return (framed_inputs(planes, self._mapped(intensity), f, self.card.pad_multiple, (n.mean, n.std), blank),
                len(planes), size)

    @property
    def weighs_tissue(self) -> bool:
        """Whether the network's global context can leave padding out (and be given, for tiles):
        panoptem's own networks; a scripted empanada network averages over the whole input."""
        return self.model.own_network  # known without building the PyTorch network

    def encode(self, planes: np.ndarray, intensity, blank="auto") -> tuple[np.ndarray, np.ndarray]:
        """Deepest features (N, C, h, w) of (N, H, W) planes (see :meth:`planes_in`), in batches
        (``blank``: see :meth:`predict`), and each cell's weight in its plane's global context
        (N, 1, h, w; see :func:`.predict.tissue_weights`)."""
        n = self.card.normalization
        planes, blank = self._on_grid(self.planes_in(planes), blank)
        parts = [encode_batch(self._graph("encode"), planes[i:i + self.batch_size],
                              self._mapped(_rows(intensity, i, i + self.batch_size)),
                              device=self.model.device, downsampling=self.downsampling,
                              padding_factor=self.card.pad_multiple, mean_std=(n.mean, n.std),
                              blank=_part(blank, i, i + self.batch_size))
                 for i in range(0, len(planes), self.batch_size)]
        return np.concatenate([f for f, _ in parts]), np.concatenate([t for _, t in parts])

    def predict_with_context(self, planes: np.ndarray, intensity, context: np.ndarray,
                             blank="auto") -> ModelOutput:
        """:meth:`predict` of planes that are tiles of larger images whose global
        context (N, C) is known."""
        planes, blank = self._on_grid(self.planes_in(planes), blank)
        outs = [self._predict(planes[i:i + self.batch_size], _rows(intensity, i, i + self.batch_size),
                              context[i:i + self.batch_size],
                              blank=_part(blank, i, i + self.batch_size))
                for i in range(0, len(planes), self.batch_size)]
        return ModelOutput(*(np.concatenate([getattr(o, f) for o in outs])
                             for f in ("semantic_probability", "heatmap", "offsets")))

    def prepare(self, planes: np.ndarray, intensity, timings: dict | None = None, blank="auto") -> Prepared | None:
        """The network inputs of (N, H, W) planes, made ahead of :meth:`predict` (e.g. in a
        reading thread while the network computes the previous planes); None for planes that
        :meth:`predict` tiles. ``timings`` receives the seconds of ``normalise``; ``blank``: see
        :meth:`predict`."""
        from ._pipeline import StageClock
        planes, blank = self._on_grid(self.planes_in(planes), blank)
        if self._tiled(planes):
            return None
        with StageClock(timings if timings is not None else {})("normalise"):
            batches, i = [], 0
            for batch, rng in self._batches(planes, intensity):
                batches.append(self._inputs(batch, rng, _part(blank, i, i + len(batch))))
                i += len(batch)
            return Prepared(batches, len(planes))

    def predict(self, planes: np.ndarray | Prepared, intensity: tuple[float, float] | None = None,
                timings: dict | None = None, blank="auto") -> ModelOutput:
        """Outputs for (N, H, W) planes, or for what :meth:`prepare` made of them (``intensity``
        is then unused), at network-input resolution; ``timings`` receives the seconds of
        ``normalise`` and ``forward`` (see :func:`.predict.predict_batch`). ``blank``: which
        planes are padding throughout (a bool per plane, (N,) or (N, C) with neighbours, or
        None), by default those of one value; a caller that holds crops of larger planes gives
        the whole planes' (a crop's uniformity says nothing of its plane's). Or where the planes
        hold padding, per pixel (N, H, W), as found where they were cut from (see
        :func:`.predict.per_pixel`): added to what the planes show, those of one value among it."""
        if isinstance(planes, Prepared):
            outs = [self._predict(None, None, timings=timings, prepared=p) for p in planes.batches]
        else:
            outs = self._predict_planes(planes, intensity, timings, blank)
            if isinstance(outs, ModelOutput):
                return outs
        if len(outs) == 1:
            return outs[0]
        return ModelOutput(*(np.concatenate([getattr(o, f) for o in outs])
                             for f in ("semantic_probability", "heatmap", "offsets")))

    def _predict_planes(self, planes, intensity, timings, blank="auto") -> list[ModelOutput] | ModelOutput:
        """:meth:`predict` of planes: the outputs of each batch, or the stitched tiles' outputs."""
        planes = self.planes_in(planes)
        if intensity is None:
            intensity = self.intensity(planes)
        planes, blank = self._on_grid(planes, blank)
        if self._tiled(planes):
            return self._predict_tiled(planes, intensity, blank=blank)
        outs, i = [], 0
        for batch, rng in self._batches(planes, intensity):
            outs.append(self._predict(batch, rng, timings=timings, blank=_part(blank, i, i + len(batch))))
            i += len(batch)
        return outs

    def _on_grid(self, planes: np.ndarray, blank):
        """``planes`` on the network grid (:meth:`to_network_grid`) and their ``blank`` flags (see
        :meth:`predict`), found before resampling where not given: a plane of one value resampled
        by a fraction is not of one value to the last bit of float32. Padding given per pixel is
        resampled with them (a network pixel is padding where all it covers is), the planes of one
        value added."""
        if self.resample is not None and per_pixel(blank):
            given = np.array(blank, bool)
            one = uniform_planes(planes)
            if one is not None:
                given[one if given.ndim == planes.ndim else one.reshape(len(one), -1).all(axis=1)] = True
            blank = self.to_network_grid(given.astype(np.float32)) >= 1.0
        elif isinstance(blank, str) and self.resample is not None:
            blank = uniform_planes(planes)
        return self.to_network_grid(planes), blank

    def _tiled(self, planes: np.ndarray) -> bool:
        """Whether planes (on the network grid) are predicted in tiles."""
        return bool(self.tile_size) and max(planes.shape[-2:]) > self.tile_size

    def _tiles_context(self, planes: np.ndarray, intensity, blank, tiles) -> np.ndarray:
        """Each plane's global context (N, C) from its tiles' deepest features, as one pass over
        the whole plane gives it: a cell counts in the tile whose core (on the network grid) holds
        its first pixel, by its part that is not padding (see :func:`.predict.cell_sums`)."""
        n, f = self.card.normalization, self.downsampling
        sums = {}
        for (y0, y1, x0, x1), (ny0, ny1, nx0, nx1) in tiles:
            feats, tissue = encode_batch(self._graph("encode"), planes[..., y0:y1, x0:x1], self._mapped(intensity),
                                         device=self.model.device, downsampling=f,
                                         padding_factor=self.card.pad_multiple, mean_std=(n.mean, n.std),
                                         blank=_tile_blank(planes, blank, (y0, y1, x0, x1)))
            ty, tx = y0 // f, x0 // f
            rows = slice(-(-(ny0 - ty) // CELL), -(-(ny1 - ty) // CELL))
            cols = slice(-(-(nx0 - tx) // CELL), -(-(nx1 - tx) // CELL))
            for name, a in cell_sums(feats[:, :, rows, cols], tissue[:, :, rows, cols]).items():
                sums[name] = sums.get(name, 0) + a
        return context_of_sums(sums)

    def _batches(self, planes: np.ndarray, intensity):
        """(planes, intensity) of each network call over planes on the network grid; ``intensity``
        one (low, high) for all, or one per plane (N, 2)."""
        # the planes of one call of predict or prepare: callers cut a stack into parts already
        b = self.batch_for(planes.shape[-2:], len(planes), steps=1)
        for i in range(0, len(planes), b):
            yield planes[i:i + b], _rows(intensity, i, i + b)

    def _predict_tiled(self, planes: np.ndarray, intensity, compact: bool = False, blank="auto") -> ModelOutput:
        """Stitched outputs of overlapping tiles; ``compact`` keeps the semantic
        probability as uint8 (x 255) to hold large images in 1 byte per pixel; ``blank``: see
        :meth:`predict`."""
        f = self.downsampling
        align = self._align()  # tile origins on the network grid
        h, w = planes.shape[-2:]
        tile = max(align, (self.tile_size // align) * align)
        # 128 pixels (on the network's grid) of the network's reach on each side: tiles of 256 with 10 %
        # of overlap found objects twice on both sides of a seam; small tiles overlap by half
        overlap = max(align, int(math.ceil(min(128 * f, 0.5 * tile) / align)) * align)
        step = tile - overlap
        hn, wn = -(-h // f), -(-w // f)
        hs, ws = -(-hn // STRIDE), -(-wn // STRIDE)
        n = len(planes)
        if isinstance(blank, str):  # of the whole planes, as an untiled run sees them, for every tile
            blank = uniform_planes(planes)
        prob = None
        hm = np.zeros((n, 1, hs, ws), np.float32)
        off = np.zeros((n, 2, hs, ws), np.float32)

        def starts(size):
            s = list(range(0, max(size - tile, 0) + 1, step))
            if s[-1] + tile < size:
                s.append(s[-1] + step)
            return s

        tiles = []
        for y0 in starts(h):
            for x0 in starts(w):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                # core of this tile in original pixels, then on the network's grid
                cy0 = 0 if y0 == 0 else y0 + overlap // 2
                cx0 = 0 if x0 == 0 else x0 + overlap // 2
                cy1 = h if y1 == h else y1 - overlap // 2
                cx1 = w if x1 == w else x1 - overlap // 2
                tiles.append(((y0, y1, x0, x1), (cy0 // f, -(-cy1 // f), cx0 // f, -(-cx1 // f))))
        # small tiles are given their whole plane's context (an encoder pass over the tiles first: 1.3-1.6 x
        # the time); a tile of AUTO_TILE network pixels is its plane's context within 3e-5 of the
        # foreground (bench/tile_context.py)
        context = None
        if self.weighs_tissue and tile // f < AUTO_TILE:
            context = self._tiles_context(planes, intensity, blank, tiles)
        for (y0, y1, x0, x1), (ny0, ny1, nx0, nx1) in tiles:
            o = self._predict(planes[..., y0:y1, x0:x1], intensity, context=context,
                              blank=_tile_blank(planes, blank, (y0, y1, x0, x1)))
            if prob is None:
                prob = np.zeros((n, o.semantic_probability.shape[1], hn, wn), np.uint8 if compact else np.float32)
            core = o.semantic_probability[:, :, ny0 - y0 // f:ny1 - y0 // f, nx0 - x0 // f:nx1 - x0 // f]
            prob[:, :, ny0:ny1, nx0:nx1] = probability_bytes(core) if compact else core
            gy0, gy1, gx0, gx1 = ny0 // STRIDE, -(-ny1 // STRIDE), nx0 // STRIDE, -(-nx1 // STRIDE)
            oy, ox = (y0 // f) // STRIDE, (x0 // f) // STRIDE
            hm[:, :, gy0:gy1, gx0:gx1] = o.heatmap[:, :, gy0 - oy:gy1 - oy, gx0 - ox:gx1 - ox]
            off[:, :, gy0:gy1, gx0:gx1] = o.offsets[:, :, gy0 - oy:gy1 - oy, gx0 - ox:gx1 - ox]
        if self.runtime == "onnx":  # before the labels of the whole image are made
            for net in self._graphs.values():
                net.release_memory()
        return ModelOutput(prob, hm, off)


def _rows(intensity, i0: int, i1: int):
    """Planes ``i0:i1``'s part of an ``intensity`` argument: one (low, high) for all, or one per plane."""
    rng = np.asarray(intensity, np.float32)
    return rng[i0:i1] if rng.ndim == 2 else rng


def _tile_blank(planes: np.ndarray, blank, box: tuple[int, int, int, int]):
    """The ``blank`` argument of a tile (``box``: y0, y1, x0, x1) of ``planes`` given the whole
    planes' (flags per plane, or padding per pixel): its padding per pixel as the whole planes
    show it (a band of padding the tile cuts is padding), with the planes of one value."""
    y0, y1, x0, x1 = box
    if per_pixel(blank):
        return np.asarray(blank)[..., y0:y1, x0:x1]
    first = planes if planes.ndim == 3 else planes[:, planes.shape[1] // 2]  # the middle plane's, with neighbours
    pad = padding_in(first, (slice(None), slice(y0, y1), slice(x0, x1)))
    if pad is None:
        return blank
    if blank is not None:
        one = np.asarray(blank)
        pad[one if one.ndim == 1 else one[:, one.shape[1] // 2]] = True
    return pad


def _part(blank, i0: int, i1: int):
    """Planes ``i0:i1``'s part of a ``blank`` argument (see :meth:`Predictor.predict`)."""
    return blank if blank is None or isinstance(blank, str) else np.asarray(blank)[i0:i1]
