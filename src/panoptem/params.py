"""One typed parameter schema for the API, the command line and the widgets.

Names follow empanada-napari's labels in snake_case, with the same defaults.
"""
from __future__ import annotations

import numbers
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import PanoptemError

DOWNSAMPLING = (1, 2, 4, 8, 16, 32, 64)
MEDIAN_SIZES = (1, 3, 5, 7, 9, 11)
#: the planes of a ZYX volume, and the axis each one cuts (xy: z, xz: y, yz: x)
PLANES = ("xy", "xz", "yz")
PLANE_AXIS = {"xy": 0, "xz": 1, "yz": 2}
#: planes patches are cut in ("random": one of the three per patch)
PATCH_PLANES = (*PLANES, "random")
#: "Finetunable layers": none (decoder and heads), stageK (also the encoder from stage K on), all
LAYERS = ("none", "stage4", "stage3", "stage2", "stage1", "all")
#: smallest tile: two network-grid cells of the usual padding factor (32), so tiles can overlap
MIN_TILE = 64


#: 2D images larger than this (pixels a side, after downsampling) are tiled when tile_size is 0
AUTO_TILE_ABOVE = 4096
#: the automatic tile size (pixels after downsampling)
AUTO_TILE = 2048


#: the largest whole number any parameter takes (counts, sizes, seeds, divisors): 2^53, so sums and
#: products with ids, classes and coordinates stay exact in 64-bit integers and floats
MAX_WHOLE = 2**53


def is_whole(value, least: int = 0) -> bool:
    """Whether ``value`` is an integer (not a bool, not a float) of ``least`` or more: a check for
    settings and descriptions made by hand, outside the parameter models."""
    import numpy as np
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= least


class _Params(BaseModel):
    """Base of the parameter models: whole numbers are refused past :data:`MAX_WHOLE`."""

    @field_validator("*")
    @classmethod
    def _not_huge(cls, v):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_WHOLE:
            raise ValueError(f"larger than any sensible value (at most 2^53 = {MAX_WHOLE})")
        return v


class PlaneParams(_Params):
    """Parameters that 2D and 3D inference share: the network's input and the decoding of each plane."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, defer_build=True)

    downsampling: int = Field(1, description="Image Downsampling: shrink the image by this factor "
                              "(1, 2, 4, ... 64) before the network, after any resampling to the model's "
                              "pixel size; results come back at full size.")
    pixel_size: float | None = Field(None, gt=0.0, le=1e5, description="Pixel size, in nm: the input's "
                                     "in-plane pixel size, overriding the file's (empty: the file's, if it "
                                     "says; for a volume without one, z is taken as equal).")
    resample: bool = Field(True, description="Resample to model: when the input's pixel size is known and "
                           "differs from the model's by more than 5 % (or lies outside the range it segments "
                           "best at), resample to it (labels come back on the input grid); Image "
                           "Downsampling then shrinks further.")
    invert: bool = Field(False, description="Invert contrast: for images whose membranes and stained "
                         "structures are bright on a dark background (e.g. backscattered-electron images "
                         "not inverted for display); the network then sees them with the dark membranes of "
                         "the transmission-like contrast it was trained on. Labels come back as usual.")
    confidence_thr: float = Field(0.5, ge=0.0, le=1.0, description="Segmentation Confidence Thr: "
                                  "probability above which a pixel is organelle (single-class models).")
    center_confidence_thr: float = Field(0.1, ge=0.0, le=1.0, description="Center Confidence Thr: "
                                         "minimum centre-heatmap value for an object centre.")
    min_distance_object_centers: int = Field(3, ge=1, le=35, description="Centers Min Distance, in "
                                             "heatmap cells (1 cell = 4 network pixels: 4 x downsampling image pixels when "
                                             "nothing is resampled; with or without fine boundaries): centres "
                                             "closer than this merge.")
    fine_boundaries: bool = Field(False, description="Fine boundaries: group pixels at full network "
                                  "resolution instead of 1/4 (sharper borders between touching objects).")
    semantic_only: bool = Field(False, description="Semantic only: skip instance separation.")
    maximum_objects_per_class: int = Field(10000, ge=0, description="Max objects per class (the label "
                                           "divisor): label = class x divisor + n; 0 gives ids 1..N.")
    tile_size: int = Field(0, ge=0, description="Tile size: tile large 2D images into tiles of this many pixels "
                           f"(0 = automatic: whole images up to {AUTO_TILE_ABOVE} pixels a side, as given "
                           f"and on the network's grid; tiles of {AUTO_TILE} network pixels above, at most half "
                           f"the image; else at least {MIN_TILE}; the model may need more).")
    tta: bool = Field(False, description="Test-time augmentation: average the network's outputs over the "
                      "image and its three flips (about 4 x the network time; not in blockwise runs).")
    fill_holes_in_segmentation: bool = Field(False, description="Fill holes in segmentation: background "
                                              "enclosed by one object becomes part of it (2D: the image; "
                                              "3D: each xy plane); a hole that touches another object stays.")

    @field_validator("downsampling")
    @classmethod
    def _ds(cls, v: int) -> int:
        if v not in DOWNSAMPLING:
            raise ValueError(f"Image Downsampling must be one of {DOWNSAMPLING}")
        return v

    @field_validator("tile_size")
    @classmethod
    def _tile(cls, v: int) -> int:
        if 0 < v < MIN_TILE:
            raise ValueError(f"Tile size must be 0 (no tiling) or at least {MIN_TILE} pixels")
        return v

    @property
    def label_divisor(self) -> int | None:
        """Max objects per class as the label divisor (None: ids 1..N). With Semantic only and no
        divisor, 1: every label is its class's segment (label = class), which 3D linking and the
        consensus then keep as a segment rather than number as objects."""
        if self.maximum_objects_per_class:
            return self.maximum_objects_per_class
        return 1 if self.semantic_only else None


class Params2D(PlaneParams):
    """Parameters of 2D inference (empanada's "2D Inference (Parameter Testing)")."""

    min_piece_area: int = Field(40, ge=0, le=10**6, description="Min piece area: pieces of an object "
                                "(8-connected) smaller than this many pixels become background, after "
                                "decoding and before filling holes (0: off, as empanada; the default "
                                "removes border slivers, far smaller than any mitochondrion profile).")


class Params3D(PlaneParams):
    """Parameters of 3D inference (empanada's "3D Inference"), plus linking controls."""

    median_slices: int = Field(3, description="Median Filter Size: running median of the semantic "
                               "probabilities over this many neighbouring slices (1, 3, ... 11).")
    min_size: int = Field(500, ge=0, description="Min Size: 3D objects with fewer voxels than this are removed.")
    min_extent: int = Field(5, ge=0, description="Min Box Extent: objects whose bounding box is thinner "
                            "than this many voxels along any axis are removed.")
    inference_plane: Literal[PLANES] = Field("xy", description="Inference plane: the stack axis of one-plane 3D inference (xy, xz or yz).")
    orthoplane: bool = Field(False, description="Run ortho-plane: xy, xz and yz stacks, then a consensus.")
    pixel_vote_thr: int = Field(2, ge=1, le=3, description="Voxel Vote Thr Out of 3: stacks that must agree on a voxel of a matched object.")
    allow_one_view: bool = Field(False, description="Permit detections found in 1 stack: keep objects seen by one stack only.")
    return_panoptic: bool = Field(False, description="Return xy, xz, yz stacks: return the per-plane volumes as "
                                  "well (with probability fusion xz and yz: the xy pass is the fused result).")
    fusion: Literal["consensus", "probability"] = Field("consensus", description="Ortho-plane fusion: "
                                                        "'consensus' votes on 3 label volumes; 'probability' "
                                                        "averages the 3 network outputs, then decodes once.")
    iou_thr: float = Field(0.25, gt=0.0, le=1.0, description="Link IoU Thr: IoU for one-to-one matches between neighbouring slices.")
    ioa_thr: float = Field(0.25, gt=0.0, le=1.0, description="Link IoA Thr: overlap / own area that joins a fragment or branch.")
    bridge_gaps: int = Field(0, ge=0, le=1, description="Bridge gaps: link objects across this many missing slices (0 or 1).")
    label_erosion: int = Field(0, ge=0, le=50, description="Erode Labels, in voxels: every object shrinks by "
                               "this many voxels (face neighbours) where it borders background or another "
                               "object; applied after the size filters.")
    label_dilation: int = Field(0, ge=0, le=50, description="Dilate Labels, in voxels: every object grows by "
                                "this many voxels into background, never into another object; applied after "
                                "erosion.")
    chunk_size: list[int] = Field([0], description="Zarr chunk size: voxels per side of the chunks of a .zarr "
                                  "output, one number or three (z,y,x) (0: automatic, up to 32 x 256 x 256). "
                                  "Streamed runs hold one row of chunks (chunk depth x Y x X voxels) in memory.")

    @field_validator("median_slices")
    @classmethod
    def _median(cls, v: int) -> int:
        if v not in MEDIAN_SIZES:
            raise ValueError(f"Median Filter Size must be one of {MEDIAN_SIZES}")
        return v

    @field_validator("chunk_size", mode="before")
    @classmethod
    def _chunk_text(cls, v):
        """One number, "z,y,x" text (as empanada's box takes it) or a sequence."""
        if isinstance(v, str):
            try:
                return [int(t) for t in v.replace(";", ",").split(",")]
            except ValueError:
                raise ValueError("Chunk size must be one whole number or three separated by commas, "
                                 f"not '{v}'") from None
        return [v] if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) else v

    @field_validator("chunk_size")
    @classmethod
    def _chunk_sides(cls, v: list[int]) -> list[int]:
        if len(v) not in (1, 3) or min(v) < 0 or (len(v) == 3 and 0 in v and any(v)):
            raise ValueError(f"Chunk size must be one number (0: automatic) or three positive ones (z,y,x), not {v}")
        return [0] if not any(v) else v


def zarr_chunks(chunk_size, shape) -> tuple[int, ...] | None:
    """Chunk shape of a Zarr output of ``shape`` for ``chunk_size`` (one number for every side,
    or one per axis; 0: None, the writer's default), clipped to the shape."""
    sides = [chunk_size] if isinstance(chunk_size, numbers.Integral) else list(chunk_size)
    if not any(sides):
        return None
    if len(sides) == 1:
        sides = sides * len(shape)
    elif len(sides) != len(shape):
        raise PanoptemError(f"Chunk size {tuple(sides)} gives {len(sides)} sides for a {len(shape)}D output; "
                            "give one number, or one per axis.")
    return tuple(min(int(c), int(n)) for c, n in zip(sides, shape))


# ---- training, fine-tuning and patches: every number checked where it enters (CLI, API, widgets)

_TRAIN_CONFIG = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, defer_build=True)


class _TrainingParams(_Params):
    """Options shared by fine-tuning and training."""

    model_config = _TRAIN_CONFIG

    iterations: int = Field(100, ge=1, description="Optimiser steps.")
    patch_size: int = Field(256, ge=64, multiple_of=32, description="Training crop in pixels (a multiple of 32, "
                            "64 or more: the network's deepest layer needs 2 x 2 pixels to train).")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="Peak learning rate (0 < lr <= 1).")
    batch_size: int = Field(8, ge=1, description="Patches per step (at most the number of patches).")
    gamma: float = Field(0.7, ge=0.0, le=10.0, description="Folder re-weighting: each image of a folder "
                         "holding n images is drawn with weight (1/n)^gamma.")
    seed: int = Field(0, ge=0, description="Seed of the random crops and augmentations.")
    invert: bool = Field(False, description="Invert contrast: the images have bright membranes (see "
                         "inference's invert); they are inverted for training and scoring, so the model keeps "
                         "the dark-membrane contrast of its base. Segment with invert too.")


class FinetuneParams(_TrainingParams):
    """Options of fine-tuning (empanada's "Finetune a model")."""

    layers: Literal[LAYERS] = Field(
        "none", description="Finetunable layers: none (decoder and heads), stage4 ... stage1 (also the "
        "encoder from that stage on), or all.")
    scale_range: tuple[float, float] = Field((0.75, 1.33), description="Smallest and largest zoom of the "
                                             "scale augmentation.")
    val_fraction: float = Field(0.25, ge=0.0, le=0.5, description="Held-out fraction: without a validation "
                                "folder, this share of the patches (at least 1; only with 3 patches or more, 2 "
                                "with objects, one of them held out) is not trained on but scored before, during "
                                "and after; 0: none.")
    validate_every: int = Field(0, ge=0, description="Score the held-out patches every this many steps and "
                                "keep the weights with the best F1 (0: about 10 times per run).")
    replay_ratio: float = Field(0.25, ge=0.0, le=0.9, description="Replay ratio: with replay folders (the "
                                "model's own training data), this share of every batch comes from them.")

    @field_validator("scale_range")
    @classmethod
    def _scales(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_scales(*v)


class TrainParams(_TrainingParams):
    """Options of training a new model from dataset folders (empanada's "Train a model")."""

    iterations: int = Field(2000, ge=1, description="Optimiser steps.")
    lr: float = Field(2e-3, gt=0.0, le=1.0, description="Peak learning rate (0 < lr <= 1).")
    widths: list[int] | None = Field(None, description="Channel widths of the stem and the 4 stages, "
                                     "e.g. 24, 32, 64, 128, 192 (default: the architecture's).")
    label_divisor: int | None = Field(None, ge=1, description="Divisor the masks are painted with "
                                      "(class x divisor + n); needed for several classes.")
    voxel_size_nm: float | None = Field(None, gt=0.0, description="Pixel size of the training data in nm.")

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 5 or any(w < 1 or w > 4096 for w in v)):
            raise ValueError("widths must be 5 channel counts (stem and 4 stages), each 1..4096")
        return v


class VolumeTrainParams(_TrainingParams):
    """Options of training a single-class model from an image volume and its labels."""

    iterations: int = Field(4000, ge=1, description="Optimiser steps.")
    lr: float = Field(2e-3, gt=0.0, le=1.0, description="Peak learning rate (0 < lr <= 1).")
    min_scale: float = Field(0.33, gt=0.0, description="Smallest zoom of the scale augmentation.")
    max_scale: float = Field(1.25, gt=0.0, description="Largest zoom of the scale augmentation.")
    schedule_steps: int = Field(0, ge=0, description="Length of the one-cycle schedule (0: iterations).")
    anneal_from: int = Field(0, ge=0, description="From this step, anneal the learning rate to 0 (0: off).")
    init: str | None = Field(None, description="Start from this model's weights (a registered name or a card "
                             "/ weights file) and architecture, instead of from scratch.")
    hard_negatives: float = Field(0.0, ge=0.0, le=1.0, description="Share of patches centred on dark "
                                  "structures that are not labelled (hard negatives: look-alikes).")
    pale: float = Field(0.0, ge=0.0, le=1.0, description="Share of patches whose objects are made paler "
                        "and fainter (toward pale mitochondria).")
    validate_every: int = Field(500, ge=1, description="With --val-slices: segment the held-out slices in 3D "
                                "every this many steps and keep the best weights (best.pt).")
    context_slices: int | None = Field(None, ge=0, le=8, description="The network sees each slice with this "
                                       "many neighbours on each side as input channels (2.5D; default: 0, or "
                                       "the --init model's).")

    @model_validator(mode="after")
    def _scales(self) -> "VolumeTrainParams":
        _check_scales(self.min_scale, self.max_scale)
        return self


class PatchParams(_Params):
    """Options of picking patches to annotate."""

    model_config = _TRAIN_CONFIG

    n: int = Field(16, ge=0, description="Number of patches: patches on points first, random ones fill up "
                   "(0: only the points).", json_schema_extra={"cli_aliases": ["-n"]})
    patch_size: int = Field(256, ge=16, le=8192, description="Patch side in pixels.")
    plane: Literal[PATCH_PLANES] = Field("xy", description="Plane of the patches (3D only): "
                                                       "xy, xz, yz, or random (isotropic data).")
    flipbook_depth: int = Field(5, ge=1, le=101, description="Planes per flipbook.")
    label_divisor: int | None = Field(None, ge=1, description="Divisor the masks are painted with "
                                      "(class x divisor + n).")
    seed: int = Field(0, ge=0, description="Seed of the random picks.")


class MeasureParams(_Params):
    """Options of measuring objects (``panoptem measure``, ``panoptem report``, the Measure widget)."""

    model_config = _TRAIN_CONFIG

    label_divisor: int | None = Field(None, ge=1, description="Label divisor: class = label // divisor "
                                      "(none: every object is of class 1).")
    surface: bool = Field(True, description="Surface area and sphericity (3D) or perimeter and circularity "
                          "(2D): the slow part; off for sizes and positions only.")


def default_of(cls, name: str):
    """The default of field ``name`` of a parameter schema (for forms that lay out their own widgets)."""
    return cls.model_fields[name].default


def _check_scales(lo: float, hi: float) -> tuple[float, float]:
    if not (0.0 < lo <= hi <= 10.0):
        raise ValueError(f"the scale range must satisfy 0 < smallest <= largest <= 10, not ({lo}, {hi})")
    return (float(lo), float(hi))

def make_params(cls, **kwargs):
    """Build ``cls(**kwargs)``, turning validation errors into one clear PanoptemError."""
    from pydantic import ValidationError
    try:
        return cls(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        what = f"Parameter '{where}' = {err['input']!r}" if where else "Parameters"
        raise PanoptemError(f"{what}: {msg}; see --help for allowed values.") from None


def params_with(cls, params=None, **overrides):
    """A validated ``cls`` from a parameter object or mapping, with keyword overrides.

    A parameter object of another schema (e.g. :class:`Params3D` given to 2D
    inference) contributes the fields ``cls`` has.

    >>> params_with(Params3D, Params3D(min_size=100), median_slices=5).min_size
    100
    """
    if params is None:
        base = {}
    elif isinstance(params, BaseModel):
        base = {k: v for k, v in params.model_dump().items() if k in cls.model_fields}
    else:
        base = dict(params)
    return make_params(cls, **{**base, **overrides})

