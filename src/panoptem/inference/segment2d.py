"""2D inference: one image, one chosen plane of a volume, or every slice of a stack."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PanoptemError
from ..labels import as_array
from ..models.home import DEFAULT_MODEL
from ..models.load import LoadedModel
from ..params import AUTO_TILE, AUTO_TILE_ABOVE, PLANE_AXIS, Params2D, params_with
from .decode import decode_panoptic, decode_settings
from .engine import Predictor
from .postprocess import remove_small_pieces


@dataclass
class Result2D:
    """Labels of one image or a stack of independent slices, plus, when asked,
    the semantic probabilities (network resolution) and centres (heatmap cells)."""

    labels: np.ndarray
    semantic_probability: np.ndarray | None = None
    centers: list[np.ndarray] | None = None
    #: the pixel sizes used and how the image was resampled (:meth:`~.resample.PixelPlan.record`)
    pixel_size: dict | None = None


def take_plane(volume, index: int, plane: str = "xy", neighbours: int = 0, step: float = 1.0,
               stride: int = 1) -> np.ndarray:
    """Slice ``index`` of a ZYX volume along ``plane`` (xy: z, xz: y, yz: x). With ``neighbours``
    k: (2k + 1, H, W), the slice in the middle of its k neighbours on each side along the
    plane's axis (clamped at the volume's ends), as :func:`segment_2d` takes it
    ``with_neighbours`` for a model with ``context_slices`` k; ``step`` slices apart (a fraction
    interpolates between slices: see :func:`~.segment3d.with_neighbours` and
    :func:`neighbour_step`). ``stride`` s > 1: the mean of the s slices of ``index``'s group,
    as a 3D stack at that step gives it to the network (see :func:`stack_step`), float32.

    >>> v = np.arange(3)[:, None, None] * np.ones((3, 2, 2), int)
    >>> take_plane(v, 0, "xy", neighbours=1)[:, 0, 0].tolist()
    [0, 0, 1]
    >>> take_plane(v, 1, "xy", stride=2)[0, 0], take_plane(v, 2, "xy", stride=2)[0, 0]
    (np.float32(0.5), np.float32(2.0))
    """
    if plane not in PLANE_AXIS:
        raise PanoptemError(f"Plane must be one of xy, xz, yz, not '{plane}'.")
    volume = volume if hasattr(volume, "shape") else np.asarray(volume)  # nested lists too
    if len(volume.shape) != 3:
        raise PanoptemError(f"take_plane takes a plane of a ZYX volume, not of an array of shape "
                            f"{tuple(volume.shape)}.")
    if int(neighbours) != neighbours or neighbours < 0 or int(stride) != stride or stride < 1:
        raise PanoptemError(f"neighbours must be a whole number >= 0 and stride >= 1, not {neighbours} and {stride}.")
    if int(index) != index:
        raise PanoptemError(f"The slice index must be a whole number, not {index}.")
    index, neighbours = int(index), int(neighbours)
    ax = PLANE_AXIS[plane]
    if not 0 <= index < volume.shape[ax]:
        raise PanoptemError(f"Slice {index} is outside the volume ({volume.shape[ax]} slices along {plane}); "
                            f"choose 0..{volume.shape[ax] - 1}.")
    if neighbours or stride > 1:
        from .segment3d import neighbour_reach, planes_along, stack_means, with_neighbours
        n, s = volume.shape[ax], int(stride)
        count, g, step = -(-n // s), index // s, step / s  # in the stack's (averaged) planes
        r = neighbour_reach(neighbours, step)
        lo, hi = max(0, g - r), min(count, g + r + 1)
        block = stack_means(planes_along(volume, ax, lo * s, min(hi * s, n)), s)
        if not neighbours:
            return block[g - lo]
        return with_neighbours(block, lo, g, g + 1, neighbours, count, step)[0]
    sl = [slice(None)] * 3
    sl[ax] = index
    return np.asarray(volume[tuple(sl)])


def _segment_large(pred: Predictor, chunk: np.ndarray, rng: np.ndarray, settings: dict,
                   min_piece_area: int = 0, outputs: list | None = None, rows: np.ndarray | None = None,
                   blank="auto") -> list[np.ndarray]:
    """Planes larger than a tile: compact stitched outputs, then tile-wise decoding on the
    input's grid (a plane resampled for the network is decoded as :func:`decode_panoptic`
    decodes it, its outputs brought back tile by tile). Pieces under ``min_piece_area`` pixels
    are removed while decoding (no whole-image temporaries) where the model has no
    semantic-only classes, else after. ``outputs``: receives each plane's ``(probability,
    centres)``, the probabilities (float32, 0..1) as the labels were decoded from them.
    ``rows``, ``blank``: a lone plane's blank sections and padding (see :func:`segment_2d`)."""
    from .decode import find_centers, things_and_stuff
    from .large2d import decode_large
    things, stuff = things_and_stuff(settings["class_ids"], settings["thing_ids"], settings.get("semantic_only", False))
    scale = pred.out_scale()
    out = []
    for j in range(len(chunk)):
        plane, flags = pred._on_grid(pred.planes_in(chunk[j:j + 1]), blank)
        o = pred._predict_tiled(plane, rng[j], compact=True, blank=flags)
        if rows is not None:  # as the 3D stack clears them
            from .segment3d import clear_rows
            o = clear_rows(o, rows, (scale or (1, 1))[0])
        while_decoding = 0 if stuff else min_piece_area
        lab = decode_large(o.semantic_probability[0], o.heatmap[0], o.offsets[0], chunk.shape[-2:],
                           scale=scale, background_rows=rows,
                           min_piece_area=while_decoding, **settings)
        if min_piece_area and not while_decoding:
            lab = remove_small_pieces(lab, min_piece_area, in_place=True)
        out.append(lab)
        if outputs is not None:
            hm = o.heatmap[0].reshape(o.heatmap.shape[-2:])
            centres = find_centers(hm, settings["center_confidence_thr"], settings["min_distance_object_centers"]) \
                if things else np.zeros((0, 2), np.int64)
            outputs.append((o.semantic_probability[0].astype(np.float32) * (1 / 255.0), centres))  # as decoded
    return out


def _slice_range(pred, plane: np.ndarray) -> tuple[float, float]:
    """The intensity range of one slice of a batch; any for a slice of no finite value, which is
    blank (nothing is found on it) and must not stop the others."""
    if plane.dtype.kind == "f" and not np.isfinite(plane).any():
        return (0.0, 1.0)
    return pred.intensity(plane)


def make_unique(stack, label_divisor: int | None) -> np.ndarray:
    """Shift the ids of each slice so no id repeats across the stack.

    ``stack``: an array or a sequence of 2D slices (read one at a time: a lazy stack is never
    held twice). With a divisor the class stays ``label // divisor``; raises if a class runs out
    of ids (raise Max objects per class). uint32, or uint64 where the ids need it.
    """
    top = 0
    for new in _unique_slices(stack, label_divisor):  # the largest id first: the output's dtype
        top = max(top, int(new.max(initial=0)))
    n = _depth(stack)
    shape = (n, *np.shape(stack[0])) if n else (0, 0, 0)
    out = np.zeros(shape, np.uint32 if top < 2**32 else np.uint64)
    for z, new in enumerate(_unique_slices(stack, label_divisor)):
        out[z] = new
    return out


def _depth(stack) -> int:
    """Slices of an array, a lazy array (a Zarr array has no len()) or a list."""
    return int(stack.shape[0]) if hasattr(stack, "shape") else len(stack)


def _unique_slices(stack, label_divisor: int | None):
    """The slices of ``stack`` with their ids shifted past those of the slices before (uint64)."""
    used: dict[int, int] = {}
    for z in range(_depth(stack)):
        sl = np.asarray(stack[z]).astype(np.uint64)
        fg = sl > 0
        new = np.zeros_like(sl)
        if not fg.any():
            yield new
            continue
        if label_divisor:
            cls = sl // label_divisor
            n = sl % label_divisor
            for c in np.unique(cls[fg]):
                m = fg & (cls == c) & (n > 0)
                base = used.get(int(c), 0)
                new[m] = c * label_divisor + base + n[m]
                top = base + int(n[m].max()) if m.any() else base
                if top >= label_divisor:
                    raise PanoptemError("Too many objects across the stack for Max objects per class = "
                                        f"{label_divisor}; raise it.")
                used[int(c)] = top
                stuff = fg & (cls == c) & (n == 0)
                new[stuff] = sl[stuff]
        else:
            base = used.get(0, 0)
            new[fg] = sl[fg] + base
            used[0] = int(new.max())
        yield new


def stack_step(card, params, voxel_size, plane: str) -> int:
    """How many slices along ``plane``'s axis of a volume with ``voxel_size`` (None: unknown)
    a 3D stack averages into one network plane (see :meth:`~.resample.PixelPlan.stack_step`)."""
    return pixel_plan(card, params, voxel_size, 3).stack_step(plane)


def neighbour_step(card, params, voxel_size, plane: str) -> float:
    """How many slices apart, along ``plane``'s axis of a volume with ``voxel_size`` (None:
    unknown), the neighbours of ``card``'s model lie (1 for a model without ``context_slices``,
    or where nothing is known); see :meth:`~.resample.PixelPlan.neighbour_step`."""
    if not card.context_slices:
        return 1.0
    return pixel_plan(card, params, voxel_size, 3).neighbour_step(plane)


def check_classes(card, params) -> None:
    """Refuse Max objects per class 0 (ids 1..N, which name no class) for a model of several
    classes, whose objects would then be told apart by nothing (Semantic only is fine: its
    labels are the classes)."""
    if card.num_classes > 1 and params.label_divisor is None:
        names = ", ".join(c.name for c in card.classes)
        raise PanoptemError(f"Max objects per class 0 gives ids 1..N, which cannot tell which class of model "
                            f"'{card.name}' ({names}) an object is: set it above 0 (the default is 10000), or "
                            "use Semantic only.")


def pixel_plan(card, params, voxel_size, ndim: int, given_by: str = "file", volume_pixel_nm: float | None = None):
    """The :class:`~.resample.PixelPlan` of a run: the model's pixel size (or range), the input's
    (``voxel_size``, overridden in-plane by ``params.pixel_size``; ``given_by``: where it came
    from), resampling on or off and Image Downsampling from ``params``; ``volume_pixel_nm``: see
    :func:`segment_2d`."""
    from .resample import plan_pixels
    vs = None if voxel_size is None else _voxel_tuple(voxel_size, ndim)
    return plan_pixels(card.voxel_size_nm, vs, params.pixel_size, params.resample, params.downsampling, ndim,
                       neighbour_nm=card.neighbour_spacing_nm if card.context_slices else None,
                       working=card.pixel_range_nm, given_by=given_by, finest_nm=volume_pixel_nm)


def _voxel_tuple(voxel_size, ndim: int) -> tuple[float, ...]:
    """The last ``ndim`` of the sizes in ``voxel_size`` (a stack's (Z, Y, X) for its planes);
    one error where it gives fewer, or sizes that are not positive numbers."""
    from ..io.writers import positive_sizes
    vs = positive_sizes(voxel_size)
    if vs is None or len(vs) < ndim:
        axes = "(Z, Y, X)" if ndim == 3 else "(Y, X)"
        alone = f"; for the pixel size in the plane alone, give pixel_size={voxel_size!r} instead" \
            if np.ndim(voxel_size) == 0 else ""
        raise PanoptemError(f"voxel_size takes {ndim} positive sizes in nm, one per axis {axes}, not "
                            f"{voxel_size!r}{alone}.")
    return vs[-ndim:]


def plane_pixels(voxel_size, axis: int, params):
    """The voxel size of the plane of a ZYX volume that cuts ``axis`` (its two other axes), the
    parameters of its 2D run and the volume's finer in-plane (y, x) size (its 2D run's
    ``volume_pixel_nm``, so that the network sees the plane at the 3D run's pixel size): a
    Pixel size overrides the volume's y and x, as a 3D run applies it, before the plane's axes
    are taken, so an xz / yz plane keeps its z spacing (the 2D run is then given that voxel
    size and no Pixel size). A volume of unknown voxel size keeps the Pixel size on both axes
    of any plane."""
    if voxel_size is None:
        return None, params, None
    vs = tuple(float(v) for v in voxel_size)
    if params.pixel_size is not None:  # the volume's y and x, as a 3D run applies it
        vs = (vs[0], float(params.pixel_size), float(params.pixel_size))
        if axis != 0:
            params = params.model_copy(update={"pixel_size": None})
    return tuple(v for i, v in enumerate(vs) if i != axis), params, min(vs[-2:])


def _check_memory(shape, itemsize: int, batch_size: int, copies: int = 1) -> None:
    """Refuse an image too large for this machine before reading it: ``copies`` of the labels
    of every plane (uint32: a stack's slices and the stack put together are two) plus one batch
    of input and 1-byte probabilities stay in memory."""
    from .._memory import check_fits
    plane = int(shape[-2]) * int(shape[-1])
    need = (len(range(shape[0])) * plane * 4 * int(copies)
            + min(max(int(batch_size), 1), shape[0]) * plane * (itemsize + 1))
    size = " x ".join(str(int(n)) for n in shape[-2:])
    check_fits(need, f"Segmenting {'an image' if shape[0] == 1 else f'{shape[0]} images'} of {size} pixels",
               "crop it into smaller images.")


def auto_tile_size(shape, network_shape=None, input_shape=None, least: int = 0) -> int:
    """The tile size used when Tile size is 0, in pixels of ``shape``, the planes cut into tiles
    (the input's, or the input resampled to the model's pixel size): none (0) when neither the
    input (``input_shape``, default ``shape``: its labels are decoded there) nor the network's
    grid (``network_shape``, default ``shape``) exceeds :data:`~panoptem.params.AUTO_TILE_ABOVE`
    pixels a side; else :data:`~panoptem.params.AUTO_TILE` network pixels, at most half the
    longer side but at least ``least`` (the model's smallest tile), so that a large image is
    segmented, and its labels decoded, in bounded memory.

    >>> auto_tile_size((4096, 4096)), auto_tile_size((12000, 12000)), auto_tile_size((12000, 12000), (3000, 3000))
    (0, 2048, 6000)
    >>> auto_tile_size((4800, 64), (4800, 64), (12000, 160)), auto_tile_size((64, 5000), (1, 79), least=4096)
    (2048, 4096)
    """
    side = max(int(n) for n in shape[-2:])
    net = max(int(n) for n in (network_shape or shape)[-2:])
    if max(side, net, *(int(n) for n in (input_shape or shape)[-2:])) <= AUTO_TILE_ABOVE:
        return 0
    tile = max(min(int(round(AUTO_TILE * side / net)), -(-side // 2)), int(least))
    return tile if tile < side else 0


def _one_plane_stack(image):
    """A 2D image as a stack of one plane: lazily where its indexing takes a new axis (numpy,
    dask, panoptem's lazy arrays), else read (zarr arrays and HDF5 datasets take none)."""
    try:
        planes = image[None]
        if tuple(getattr(planes, "shape", ())) == (1, *image.shape):
            return planes
    except (IndexError, TypeError, ValueError):
        pass
    return np.asarray(image[...])[None]


def segment_2d(image, model: str | LoadedModel = DEFAULT_MODEL, *, params: Params2D | dict | None = None,
               batch: bool = False, unique_ids: bool = False, device: str = "auto", batch_size: int = 4,
               runtime: str = "auto", precision: str = "auto", threads: int | None = None,
               return_outputs: bool = False, progress: bool = False, preview=None, voxel_size=None,
               overwrite: bool = False, with_neighbours: bool = False, intensity=None, resume_dir=None,
               volume_pixel_nm: float | None = None, edge_on: tuple | None = None,
               **overrides) -> np.ndarray | Result2D:
    """Panoptic segmentation of a 2D image, or of every slice of a stack.

    With a known pixel size (``voxel_size``, or the ``pixel_size`` parameter) that differs
    from the model's (card ``voxel_size_nm``, or outside its ``pixel_range_nm``) by more than
    5 %, every image is resampled to the model's pixel size (then Image Downsampling applies)
    and the labels come back at the input's size; ``resample=False`` turns that off (see
    :mod:`panoptem.inference.resample`).

    Parameters
    ----------
    image : (H, W) array, or (Z, H, W) with ``batch=True`` (each slice on its own).
    model : registered model name, card path or a loaded model.
    params : a :class:`~panoptem.params.Params2D` (or a dict of its fields);
        keyword arguments override its fields.
    batch : treat a 3D input as independent 2D slices; ids restart at
        ``divisor + 1`` in every slice (as empanada) unless ``unique_ids``.
    runtime, precision, threads : how the network runs (see :func:`~panoptem.inference.segment3d.segment_3d`).
    return_outputs : return a :class:`Result2D` with probabilities (on the network grid), centres
        and the pixel sizes used.
    preview : PNG file: a picture of the labels over the image with the model, the parameters
        and the object count (:func:`panoptem.reporting.preview`; needs matplotlib).
    voxel_size : nm per pixel (per voxel for a stack): the input's pixel size, for resampling
        to the model's and for the preview's scale bar.
    overwrite : replace an existing ``preview`` file.
    with_neighbours : ``image`` is one plane of a volume with its neighbours, (2k + 1, H, W) as
        :func:`take_plane` gives them, for a model that sees k neighbours on each side (card
        ``context_slices``); the labels are the middle plane's. Without it, such a model sees
        each image alone (every channel the image itself).
    intensity : (low, high) to scale every image with instead of its own range: for a plane of a
        volume, the volume's (:func:`~.engine.card_intensity` of it), as a 3D run scales every
        plane, so that a parameter test sees what the 3D run will (planes :func:`take_plane`
        averages into float32 keep the volume's dtype range too).
    resume_dir : a folder where each slice's labels are kept as they are made, with the hash of
        its input (:class:`~.slice_store.SliceStore`): a later call with the same folder, model
        and parameters takes the slices done from there, so an interrupted run resumes. The
        labels are then returned as the folder's array, read lazily (uint64; not held in memory
        but with ``unique_ids``); not with ``return_outputs``.
    volume_pixel_nm : for a plane of a volume, the volume's finer in-plane (y, x) pixel size
        (see :func:`plane_pixels`): a model that segments best over a range of pixel sizes then
        sees an xz / yz plane at the pixel size the volume's 3D run gives it, not one chosen
        for the plane's own finer axis.
    edge_on : for one xz / yz plane of a volume, what it sees edge-on in the volume's xy sections,
        ``(rows, padding)`` as :func:`~.segment3d.plane_edge_on` gives them: nothing is found on
        the rows of sections of one value, and the padding a thin volume's sections hold is
        padding, as in the volume's 3D stack of that plane.
    **overrides : any field of :class:`~panoptem.params.Params2D`
        (``downsampling``, ``confidence_thr``, ``center_confidence_thr``,
        ``min_distance_object_centers``, ``fine_boundaries``, ``semantic_only``,
        ``maximum_objects_per_class``, ``tile_size``, ``fill_holes_in_segmentation``, ``pixel_size``,
        ``resample``, ``min_piece_area``). Tile size 0 tiles images larger than 4096 pixels a side (as given
        or on the network grid) automatically (:func:`auto_tile_size`); any other value is used as given.

    Returns
    -------
    labels : uint32 array the shape of ``image``; ``class * divisor + n``.

    Examples
    --------
    >>> import panoptem
    >>> img = panoptem.load_sample()[0]
    >>> labels = panoptem.segment_2d(img, confidence_thr=0.5)
    >>> labels.shape, labels.dtype
    ((384, 384), dtype('uint32'))
    >>> same = panoptem.segment_2d(img, params=panoptem.Params2D(confidence_thr=0.9), confidence_thr=0.5)
    >>> bool((same == labels).all())
    True
    """
    p = params_with(Params2D, params, **overrides)
    if intensity is not None:
        try:
            lo, hi = (float(v) for v in intensity)
        except (TypeError, ValueError):
            lo = hi = float("nan")
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise PanoptemError(f"intensity must be (low, high): two numbers, low first, not {intensity!r}.")
        intensity = (lo, hi)
    image = as_array(image) if not hasattr(image, "ndim") else image
    stack = None
    if with_neighbours:  # one plane with its neighbours: the labels are the middle plane's
        if batch or image.ndim != 3 or image.shape[0] % 2 == 0:
            raise PanoptemError("with_neighbours takes one plane with its k neighbours on each side, "
                                "(2k + 1, H, W) as take_plane(volume, index, plane, neighbours=k) gives it, "
                                "without batch.")
        stack, image = np.asarray(image), np.asarray(image)[image.shape[0] // 2]
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] > 4:
        raise PanoptemError("This looks like an RGB image; convert it to greyscale first.")
    if image.ndim == 3 and image.shape[-1] == 1 and image.shape[0] > 1:
        raise PanoptemError(f"Shape {tuple(image.shape)} looks like a 2D image with a channel axis of 1 last; "
                            "drop that axis (image[..., 0]) and segment the 2D image.")
    if image.ndim == 3 and not batch:
        raise PanoptemError("A 3D input needs batch=True (every slice on its own), or pick one plane "
                            "with take_plane(volume, index, plane), or use segment_3d.")
    if image.ndim not in (2, 3):
        raise PanoptemError(f"Expected a 2D image or a 3D stack, got shape {tuple(image.shape)}.")
    if 0 in tuple(image.shape):
        raise PanoptemError(f"The {'stack' if image.ndim == 3 else 'image'} of shape {tuple(image.shape)} holds "
                            "no pixel; give at least one image of at least one pixel.")
    if preview is not None:
        from ..reporting._preview import prepare_preview
        preview = prepare_preview(preview, overwrite)  # before the work: fail fast
    if image.ndim == 2:  # before a lazy image (Zarr, HDF5) is read whole below
        _check_memory((1, *image.shape), np.dtype(image.dtype).itemsize, 1)
    edge_on = _checked_edge_on(edge_on, image.shape if image.ndim == 2 else None)
    planes = image if image.ndim == 3 else _one_plane_stack(image)
    from .runtime import host_threads, network_threads, torch_threads
    nt = network_threads(threads)
    pred = Predictor(model, device=device, downsampling=p.downsampling, tile_size=p.tile_size,
                     batch_size=batch_size, runtime=runtime, precision=precision, threads=nt, tta=p.tta,
                     invert=p.invert)
    if stack is not None:
        if len(stack) != pred.card.input_channels:
            raise PanoptemError(f"Model '{pred.card.name}' sees {pred.card.context_slices} neighbour(s) on each "
                                f"side ({pred.card.input_channels} planes), but {len(stack)} planes were given.")
        planes = stack[None]
    check_classes(pred.card, p)
    plan = pixel_plan(pred.card, p, voxel_size, 2, "voxel_size", volume_pixel_nm)
    plan.check(("xy",))
    if image.ndim == 2:  # as run (pixel_size included): the preview's scale bar
        voxel_size = plan.voxel_size or voxel_size
    pred = pred.with_factor(plan.factor("xy"))
    # automatic tiling looks at the network grid and the input's (the labels are decoded there); the
    # tile is counted in pixels of the plane cut
    shape = planes.shape[-2:]
    net = pred.network_shape(shape)
    cut = net if pred.resample is not None else shape  # a resampled plane is cut into tiles after resampling
    tile = p.tile_size or auto_tile_size(cut, net, shape, least=pred.min_tile)
    pred.tile_size = tile
    if not batch_size:  # automatic, as in 3D
        batch_size = pred.batch_for(planes.shape[-2:], planes.shape[0])
    store = None
    if resume_dir is not None:
        if return_outputs:
            raise PanoptemError("resume_dir keeps labels only; leave out return_outputs.")
        from .preprocess import PADDING_RULE
        from .slice_store import SliceStore
        key = {"card": pred.card.model_dump(mode="json"), "weights": _weights_id(pred.card),
               "params": p.model_dump(), "runtime": pred.runtime, "precision": pred.precision,
               "voxel_size": voxel_size, "intensity": intensity, "with_neighbours": stack is not None,
               "padding": PADDING_RULE}
        store = SliceStore(Path(resume_dir).expanduser(), key, (len(planes), *planes.shape[-2:]))
    # a store holds the labels on disk (all of them come back to number them across the stack)
    held = planes.shape if store is None or unique_ids else (min(batch_size, len(planes)), *planes.shape[1:])
    # a stack held whole: its slices (or the store's, read back) and the stack made of them
    if image.ndim == 3:  # a 2D image was checked before it was read
        whole = store is None or unique_ids
        _check_memory(held, np.dtype(image.dtype).itemsize, batch_size, 2 if whole else 1)
    with torch_threads(host_threads(pred.runtime, pred.model.device, threads)):
        labels, centers, probs = _run_2d(pred, planes, p, tile, batch_size, return_outputs, progress, intensity,
                                         store, edge_on)
    if store is not None:
        labels = store.labels
        out = labels if image.ndim == 3 else labels[0]
    else:
        out = labels[0] if image.ndim == 2 else None  # a stack is put together below, once
    if image.ndim == 3 and unique_ids:
        out = make_unique(out if store is not None else labels, p.label_divisor)
    elif image.ndim == 3 and store is None:
        out = np.stack(labels, dtype=max((l.dtype for l in labels), key=lambda d: d.itemsize))
    if preview is not None:
        from ..reporting import preview as draw
        n = sum(_objects(labels[z]) for z in range(len(labels) if store is None else labels.shape[0]))  # every slice
        draw(out, preview, image=image, voxel_size=voxel_size, model=pred.card.name, params=p.model_dump(),
             n_objects=n, overwrite=overwrite)
    if return_outputs:
        sp = np.stack(probs) if image.ndim == 3 else probs[0]
        return Result2D(out, sp, centers if image.ndim == 3 else centers[0], plan.record())
    return out


def _checked_edge_on(edge_on, shape) -> tuple:
    """``edge_on`` of :func:`segment_2d` as (rows, padding), each None or a bool array that fits
    the lone plane of ``shape`` (None: a stack, which takes none)."""
    if edge_on is None:
        return None, None
    if shape is None:
        raise PanoptemError("edge_on describes one xz / yz plane of a volume; give that plane alone, without batch.")
    rows, pad = edge_on
    rows = None if rows is None else np.asarray(rows, bool)
    pad = None if pad is None else np.asarray(pad, bool)
    if (rows is not None and rows.shape != (shape[0],)) or (pad is not None and pad.shape != tuple(shape)):
        raise PanoptemError(f"edge_on must be (rows, padding) of the plane of shape {tuple(shape)}: a bool per "
                            "row and one per pixel (or None), as plane_edge_on gives them.")
    return rows, pad


def _weights_id(card) -> str:
    """What tells a model's weights apart: their sha256, else the file's path, size and time."""
    if card.weights.sha256:
        return card.weights.sha256
    import os
    try:
        st = os.stat(card.weights_path())
        return f"{card.weights_path()}:{st.st_size}:{st.st_mtime_ns}"
    except (OSError, TypeError, ValueError):
        return str(card.weights.file)


def _objects(labels: np.ndarray) -> int:
    """Distinct non-zero ids of one slice."""
    ids = np.unique(np.asarray(labels))
    return int(ids.size - (ids.size > 0 and ids[0] == 0))


def _run_2d(pred: Predictor, planes, p: Params2D, tile: int, batch_size: int, return_outputs: bool,
            progress: bool, intensity=None, store=None, edge_on=(None, None)) -> tuple[list, list, list]:
    """Labels, centres and (with ``return_outputs``) probabilities of every plane; with a
    :class:`~.slice_store.SliceStore`, the labels go there (slices it holds from the same input
    are skipped) and none are returned. ``edge_on``: (rows, padding) of a lone plane (see
    :func:`segment_2d`)."""
    rows, pad = edge_on
    blank = "auto" if pad is None else pad[None]
    settings = decode_settings(p, pred.card)
    labels, probs, centers = [], [], []
    it = range(0, planes.shape[0], batch_size)
    if progress and planes.shape[0] > 1:
        from tqdm import tqdm
        it = tqdm(it, total=-(-planes.shape[0] // batch_size), unit="batch", desc="2D inference")
    for i0 in it:
        chunk = np.asarray(planes[i0:i0 + batch_size])
        if store is not None:
            from .cache import plane_hashes
            digests = plane_hashes(chunk)
            todo = [j for j in range(len(chunk)) if not store.valid(i0 + j, digests[j])]
            if not todo:
                continue
            chunk, digests = chunk[todo], digests[todo]
        # each slice is its own image, with its own intensity range, unless one is given
        rng = np.array([intensity if intensity is not None else _slice_range(pred, sl) for sl in chunk], np.float64)
        if tile and max(chunk.shape[-2:]) > tile:
            # bounded memory, decoded per tile (the same labels whether or not the outputs are kept)
            kept: list | None = [] if return_outputs else None
            made = _segment_large(pred, chunk, rng, settings, p.min_piece_area, kept, rows, blank)
            centers.extend([c for _, c in kept] if kept is not None else [None] * len(chunk))
            probs.extend(pr for pr, _ in kept or ())
        else:
            o = pred.predict(chunk, rng, blank=blank)
            if rows is not None:  # as the 3D stack clears them
                from .segment3d import clear_rows
                o = clear_rows(o, rows, (pred.out_scale() or (1, 1))[0])
            made = []
            for j in range(len(chunk)):
                lab, ctr = decode_panoptic(o.semantic_probability[j], o.heatmap[j], o.offsets[j],
                                           out_shape=chunk.shape[-2:], return_centers=True, scale=pred.out_scale(),
                                           background_rows=rows, **settings)
                if p.min_piece_area:
                    lab = remove_small_pieces(lab, p.min_piece_area, in_place=True)
                made.append(lab)
                centers.append(ctr)
                if return_outputs:
                    probs.append(o.semantic_probability[j])
        if p.min_piece_area and not p.semantic_only:  # objects removed whole leave no gap in the ids
            from ..labels import relabel_sequential_per_class
            made = [relabel_sequential_per_class(lab, settings["label_divisor"]).astype(lab.dtype, copy=False)
                    for lab in made]
        if p.fill_holes_in_segmentation:
            from .postprocess import fill_holes
            made = [fill_holes(lab) for lab in made]
        if store is not None:
            store.put([i0 + j for j in todo], made, digests)
        else:
            labels.extend(made)
    return labels, centers, probs
