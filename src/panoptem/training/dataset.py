"""Training datasets on disk, and a sampler over several of them.

A dataset folder holds ``images/<name>.tif`` and ``masks/<name>.tif`` with the
same names (PNG works too), and ``dataset.json``: the classes, the label divisor
the masks were painted with, and where every patch came from. Flipbook patches
also leave their planes in ``flipbooks/<name>.tif`` for the annotator; only
the middle plane is an image to train on. The layout is empanada's, so its
dataset folders (and a root holding several of them) load too.

>>> from panoptem.training.patches import pick_patches
>>> stack = np.random.default_rng(0).integers(0, 255, (2, 128, 128), dtype=np.uint8)
>>> labels = np.zeros(stack.shape, np.uint32); labels[:, 8:120, 8:120] = 1
>>> patches = pick_patches(stack, n=2, patch_size=64, labels=labels, is_2d_stack=True)
>>> names = store_dataset(patches, "mydata")
>>> images, masks, meta = load_dataset("mydata")
>>> len(images), masks[0].shape, meta["label_divisor"]
(2, (64, 64), None)
"""
from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .._atomic import write_text
from ..errors import PanoptemError
from ..inference.preprocess import MEAN, STD, dtype_range, intensity_range, padding_mask
from ..labels import class_map
from ..params import PLANE_AXIS, is_whole
from .augment import dark_background_points, intensity_augment, pale_objects, sample_patch
from .patches import Patch
from .targets import make_panoptic_targets

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
META = "dataset.json"
#: the patches a store_dataset call is writing (names, and those it writes a mask for), removed once
#: dataset.json lists them: one left behind marks a call that stopped half-way
PENDING = ".storing.json"
KINDS = ("instance", "semantic")


# ---------------------------------------------------------------- classes


def parse_classes(classes) -> list[tuple[int, str, str]]:
    """Normalise a class list to ``[(id, name, kind), ...]``.

    Accepts ``{id: name}``, ``{id: (name, kind)}``, ``[(id, name, kind)]``,
    ``["id,name,kind"]`` (kind defaults to instance) or model-card ``ClassInfo``s.
    """
    if isinstance(classes, dict):
        items = [(k, *((v,) if isinstance(v, str) else tuple(v))) for k, v in classes.items()]
    else:
        items = []
        for c in classes:
            if hasattr(c, "kind") and hasattr(c, "id"):
                items.append((c.id, c.name, c.kind))
            elif isinstance(c, str):
                items.append(tuple(t.strip() for t in c.split(",")))
            elif isinstance(c, dict):
                items.append((c["id"], c.get("name", f"class{c['id']}"), c.get("kind", "instance")))
            else:
                items.append(tuple(c))
    out = []
    for it in items:
        if not 1 <= len(it) <= 3:
            raise PanoptemError(f"Class {it!r} must be 'id,name,instance|semantic'.")
        try:
            cid = int(it[0])
        except ValueError:
            raise PanoptemError(f"Class id '{it[0]}' is not an integer; write classes as 'id,name,kind'.") from None
        name = str(it[1]) if len(it) > 1 else f"class{cid}"
        kind = str(it[2]).lower() if len(it) > 2 else "instance"
        if kind not in KINDS:
            raise PanoptemError(f"Class {cid} has kind '{kind}'; use 'instance' or 'semantic'.")
        if cid < 1:
            raise PanoptemError(f"Class ids start at 1 (0 is background), not {cid}.")
        out.append((cid, name, kind))
    ids = [c[0] for c in out]
    if not out or len(set(ids)) != len(ids):
        raise PanoptemError(f"Give at least one class and each id once (got ids {ids}).")
    return out


# ---------------------------------------------------------------- writing


def _read_meta(folder: Path) -> dict | None:
    f = folder / META
    if not f.exists():
        return None
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise PanoptemError(f"{f} is not valid JSON ({e}); fix or delete it.") from None
    if not isinstance(d, dict):
        raise PanoptemError(f"{f} is not a panoptem dataset description; fix or delete it.")
    _check_meta(f, d)
    return d


def _check_meta(f: Path, d: dict) -> None:
    """Refuse a dataset description whose fields are not of their kinds (a hand edit), naming the field."""
    def bad(field: str, want: str, value):
        raise PanoptemError(f"{f}: '{field}' must be {want}, not {json.dumps(value)[:80]}; fix it, or delete the "
                            "file (masks then hold instance ids, or give --label-divisor).")
    if d.get("label_divisor") is not None and not is_whole(d["label_divisor"], 1):
        bad("label_divisor", "a whole number of 1 or more (or null)", d["label_divisor"])
    if "classes" in d and not (isinstance(d["classes"], list) and all(isinstance(c, dict) for c in d["classes"])):
        bad("classes", "a list of {id, name, kind}", d["classes"])
    patches = d.get("patches", {})
    if not isinstance(patches, dict) or not all(isinstance(v, dict) for v in patches.values()):
        bad("patches", "an object with one entry (an object) per patch", patches)
    for name, p in patches.items():
        for field in ("middle", "index"):
            if p.get(field) is not None and not is_whole(p[field], 0):
                bad(f"patches/{name}/{field}", "a whole number of 0 or more (or null)", p[field])
        shape = p.get("source_shape")
        if shape is not None and not (isinstance(shape, list) and all(is_whole(n, 1) for n in shape)):
            bad(f"patches/{name}/source_shape", "a list of whole numbers", shape)


def _check_pair(name: str, img: np.ndarray, lab: np.ndarray, divisor: int | None, ids: set[int]) -> None:
    if img.shape != lab.shape:
        raise PanoptemError(f"Patch '{name}': image {img.shape} and mask {lab.shape} differ in shape; "
                            "crop both from the same place.")
    if lab.dtype.kind not in "iub" and not (lab.dtype.kind == "f" and np.all(np.mod(lab, 1) == 0)):
        raise PanoptemError(f"Patch '{name}': the mask holds non-integer values; masks are label images.")
    if lab.min() < 0:
        raise PanoptemError(f"Patch '{name}': the mask holds negative labels; use 0 for background.")
    cmap = class_map(lab.astype(np.int64), divisor)
    _check_class_zero(f"Patch '{name}'", lab, cmap, divisor)
    cls = np.unique(cmap)
    bad = sorted(set(cls[cls > 0].tolist()) - ids)
    if bad:
        hint = f" with label divisor {divisor}" if divisor else ""
        raise PanoptemError(f"Patch '{name}': its mask holds class(es) {bad}{hint}, not among the dataset's "
                            f"classes {sorted(ids)}; check the label divisor.")


def _check_class_zero(what: str, mask: np.ndarray, classes: np.ndarray, divisor: int | None) -> None:
    """Refuse objects a label divisor puts in class 0 (ids 1 .. divisor - 1): they would be
    learned as background."""
    if divisor and np.any((classes == 0) & (np.asarray(mask) > 0)):
        raise PanoptemError(f"{what}: its mask holds ids below the label divisor {divisor}, which makes them "
                            f"class 0 (background); paint objects as class * {divisor} + n (e.g. {divisor + 1}), "
                            "or give no divisor.")


def store_dataset(patches: Sequence[Patch], folder: str | Path, class_names=None,
                  label_divisor: int | None = None, overwrite: bool = False) -> list[str]:
    """Write patches as a training dataset folder.

    Parameters
    ----------
    patches : :class:`~panoptem.training.patches.Patch` objects. Those with
        labels give ``images/<name>.tif`` + ``masks/<name>.tif`` (an all-zero
        mask is a true negative: a patch with no object); those without give
        only the image (its mask is to be painted and saved as
        ``masks/<name>.tif``). Flipbooks give their middle plane (the planes
        go to ``flipbooks/<name>.tif`` for context); padding is left out.
    folder : dataset folder; created, or appended to.
    class_names : ``{id: name}`` or ``{id: (name, "instance"|"semantic")}``;
        default ``{1: "mitochondria"}``.
    label_divisor : divisor the masks are painted with (``class * divisor + n``),
        or None (every object is an instance of the one class).
    overwrite : a patch whose name exists replaces its files; otherwise it is
        stored under a new name (``<name>_2``, ...), so nothing is clobbered.
        Replacing keeps a mask painted for the same image (the same patch picked
        again) and removes one painted for another image, which would no longer fit.

    Returns
    -------
    The names written (file stems).

    Raises
    ------
    PanoptemError
        for an image/mask shape mismatch, a class not in
        ``class_names``, or a folder holding another label divisor or classes;
        nothing is written then.
    """
    classes = parse_classes(class_names if class_names is not None else {1: "mitochondria"})
    if label_divisor is not None and int(label_divisor) < 1:
        raise PanoptemError(f"label_divisor must be a positive integer or None, not {label_divisor}.")
    if len(classes) > 1 and not label_divisor:
        raise PanoptemError("Several classes need a label divisor (masks painted as class * divisor + n).")
    root = Path(folder).expanduser()
    cls_json = [dict(id=c, name=n, kind=k) for c, n, k in classes]
    _check_same_classes(root, _read_meta(root) or {}, label_divisor, cls_json)  # before the work
    ids = {c[0] for c in classes}
    pairs = []
    for p in patches:
        img, lab = p.annotated()
        if lab is not None:
            _check_pair(p.name, img, lab, label_divisor, ids)
        pairs.append((p, img, lab))

    from .._atomic import waiting_lock, work_folder
    work_folder(root, "the dataset")
    with waiting_lock(root):  # runs storing into one folder take turns
        meta = _read_meta(root) or {}
        _check_same_classes(root, meta, label_divisor, cls_json)  # as it is now
        return _store(root, pairs, meta, cls_json, label_divisor, overwrite)


def _check_same_classes(root: Path, meta: dict, label_divisor: int | None, cls_json: list) -> None:
    if meta and (meta.get("label_divisor") != label_divisor or meta.get("classes", cls_json) != cls_json):
        had = meta.get("label_divisor") or "none"
        raise PanoptemError(f"Dataset {root} holds masks painted with label divisor {had} and classes "
                            f"{_classes_text(meta.get('classes', cls_json))}; these patches have divisor "
                            f"{label_divisor or 'none'} and classes {_classes_text(cls_json)}: store them in "
                            "another folder, or with the same divisor and classes.")


def _store(root: Path, pairs: list, meta: dict, cls_json: list, label_divisor: int | None,
           overwrite: bool) -> list[str]:
    """:func:`store_dataset`'s writing, under the folder's lock."""
    from ..io import write_image, write_labels
    images, masks, books = root / "images", root / "masks", root / "flipbooks"
    entries = dict(meta.get("patches", {}))
    _undo_stopped(root, entries)
    images.mkdir(exist_ok=True)
    taken = {f.stem for d in (images, masks) if d.is_dir() for f in d.iterdir()}
    names = []
    for p, _, _ in pairs:
        name = p.name
        if not overwrite:
            k = 2
            while name in taken or name in names:
                name, k = f"{p.name}_{k}", k + 1
        names.append(name)
    # the names this run adds: not one listed, nor a pair already in the folder (the user's own)
    write_text(root / PENDING, json.dumps({"names": [n for n in names if n not in entries and n not in taken],
                                           "masks": [n for n, (_, _, lab) in zip(names, pairs) if lab is not None]}))
    written = []
    for name, (p, img, lab) in zip(names, pairs):
        if overwrite and name in taken:
            _drop_stale(root, name, img, lab is not None, p.is_flipbook)
        write_image(images / f"{name}.tif", img, overwrite=True)
        if p.is_flipbook:
            books.mkdir(exist_ok=True)
            h, w = p.valid
            write_image(books / f"{name}.tif", p.image[:, :h, :w], overwrite=True)
        if lab is not None:
            masks.mkdir(exist_ok=True)
            write_labels(masks / f"{name}.tif", label_mask(lab, f"The mask of patch '{name}'"), overwrite=True)
        entries[name] = p.provenance()
        written.append(name)
    masks.mkdir(exist_ok=True)
    write_text(root / META, json.dumps({"format": "panoptem-dataset", "version": 1, "classes": cls_json,
                                        "label_divisor": label_divisor, "patches": entries}, indent=1))
    (root / PENDING).unlink()
    return written


def _undo_stopped(root: Path, entries: dict) -> None:
    """Remove what a :func:`store_dataset` call that stopped half-way (a kill, a full disk) wrote
    of the patches it was adding, which ``dataset.json`` does not list (``entries``): their
    images and flipbooks, and the masks it wrote (a mask painted since is kept, with its image),
    so that running it again stores them under the same names, not beside them."""
    f = root / PENDING
    if not f.exists():
        return
    try:
        record = json.loads(f.read_text())
        names, with_masks = [str(n) for n in record["names"]], {str(n) for n in record["masks"]}
    except (OSError, ValueError, KeyError, TypeError):
        names, with_masks = [], set()
    for name in names:
        if name in entries:
            continue
        found = {d: [g for g in (root / d).glob(f"{glob.escape(name)}.*")
                     if g.stem == name and g.suffix.lower() in IMAGE_SUFFIXES] if (root / d).is_dir() else []
                 for d in ("images", "masks", "flipbooks")}
        if found["masks"] and name not in with_masks:
            continue  # painted by the user since: a pair of theirs now
        for g in found["images"] + found["masks"] + found["flipbooks"]:
            g.unlink()
    f.unlink()


def _drop_stale(root: Path, name: str, image: np.ndarray, has_mask: bool, is_flipbook: bool) -> None:
    """Before patch ``name`` is replaced: remove its files that would not fit the new one (another
    image's mask; files of another suffix, which would pair twice; a flipbook it no longer has)."""
    from ..io.readers import read_plane
    old = {d: [f for f in (root / d).glob(f"{name}.*") if f.stem == name and f.suffix.lower() in IMAGE_SUFFIXES]
           for d in ("images", "masks", "flipbooks")}
    same = False
    if len(old["images"]) == 1:
        try:
            prev = read_plane(str(old["images"][0]))
            same = prev.shape == image.shape and np.array_equal(prev, image)
        except PanoptemError:
            same = False
    stale = [f for f in old["images"] if f.suffix != ".tif"]
    if has_mask or not same:  # the new mask replaces it, or it was painted on another image
        stale += [f for f in old["masks"] if not (has_mask and f.suffix == ".tif")]
    if not is_flipbook:
        stale += old["flipbooks"]
    for f in stale:
        f.unlink()


# ---------------------------------------------------------------- reading


def _files(d: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(d.iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
            if f.stem in out:
                raise PanoptemError(f"{d} holds two files named '{f.stem}' ({out[f.stem].name}, {f.name}); "
                                    "keep one.")
            out[f.stem] = f
    return out


def load_dataset(folder: str | Path, context: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Read a dataset folder's image/mask pairs. With ``context`` k (a model that sees k
    neighbours on each side), each image is its flipbook's planes around the painted one,
    (2k + 1, H, W) (clamped at the flipbook's ends, which are the volume's where it was shifted).

    Returns
    -------
    images : 2D arrays in their own dtype (sorted by name), or (2k + 1, H, W) with ``context``.
    masks : 2D integer label arrays.
    meta : ``names``, ``folder``, ``classes`` and ``label_divisor`` (None when
        the folder has no ``dataset.json``: unknown), ``patches`` (provenance).

    Raises
    ------
    PanoptemError
        when images/ or masks/ is missing or empty, a name has no partner, or
        a pair differs in shape.
    """
    from ..io.readers import read_plane
    root = Path(folder).expanduser()
    im_dir, mk_dir = root / "images", root / "masks"
    if not im_dir.is_dir():
        raise PanoptemError(f"{root} has no images/ folder; a dataset folder holds images/ and masks/ with "
                            "files of the same names.")
    if (root / PENDING).exists():
        raise PanoptemError(f"{root} was being written when its `panoptem patches` (or Pick patches) run stopped: "
                            "run it again to finish the dataset (what the stopped run wrote is replaced), or "
                            f"delete {root / PENDING} to use the dataset as it is.")
    ims = _files(im_dir)
    mks = _files(mk_dir) if mk_dir.is_dir() else {}
    if not ims:
        raise PanoptemError(f"{im_dir} holds no .tif or .png images.")
    lonely = sorted(set(ims) - set(mks))
    extra = sorted(set(mks) - set(ims))
    if lonely:
        raise PanoptemError(f"Image(s) {lonely[:5]}{' ...' if len(lonely) > 5 else ''} in {root} have no mask "
                            "in masks/ with the same name; paint and save them, or remove the images.")
    if extra:
        raise PanoptemError(f"Mask(s) {extra[:5]}{' ...' if len(extra) > 5 else ''} in {root} have no image in "
                            "images/ with the same name; rename or remove them.")
    meta = _read_meta(root)
    images, masks = [], []
    for name in sorted(ims):
        img, lab = read_plane(str(ims[name])), read_plane(str(mks[name]))
        if img.shape != lab.shape:
            raise PanoptemError(f"Patch '{name}' in {root}: image {img.shape} and mask {lab.shape} differ in "
                                "shape.")
        lab = label_mask(lab, f"Mask '{name}' in {root}")
        images.append(_with_flipbook(root, name, img, (meta or {}).get("patches", {}).get(name), context)
                      if context else img)
        masks.append(lab)
    info = {"folder": str(root), "names": sorted(ims), "classes": None, "label_divisor": None, "patches": {},
            "has_meta": meta is not None}
    if meta:
        info.update({k: meta[k] for k in ("classes", "label_divisor", "patches") if k in meta})
    return images, masks, info


def label_mask(lab: np.ndarray, what: str) -> np.ndarray:
    """A mask as integer labels: whole-numbered floats and bool converted; negative or fractional
    values refused (``what`` names the mask in the error)."""
    if lab.dtype.kind == "f":
        if not np.all(np.mod(lab, 1) == 0) or lab.min() < 0:
            raise PanoptemError(f"{what} holds non-integer or negative values; labels are whole numbers, 0 for "
                                "background.")
        if lab.size and lab.max() > 2**53:
            raise PanoptemError(f"{what} holds ids beyond 2^53, which floats do not hold exactly; store the mask "
                                "as integers.")
        return lab.astype(np.uint32 if not lab.size or lab.max() < 2**32 else np.uint64)
    if lab.dtype.kind == "b":
        return lab.astype(np.uint8)
    if lab.dtype.kind == "i" and lab.size and lab.min() < 0:
        raise PanoptemError(f"{what} holds negative labels; use 0 for background.")
    if lab.dtype.kind not in "iu":
        raise PanoptemError(f"{what} has dtype {lab.dtype}; labels are integers.")
    return lab


def _with_flipbook(root: Path, name: str, image: np.ndarray, provenance: dict | None, k: int) -> np.ndarray:
    """Patch ``name``'s image with its k neighbours on each side, from its flipbook."""
    from ..io.readers import read_image
    book = root / "flipbooks" / f"{name}.tif"
    middle = (provenance or {}).get("middle")
    if not book.is_file() or middle is None:
        raise PanoptemError(f"Patch '{name}' in {root} has no flipbook (the planes around it), but the model sees "
                            f"{k} neighbour(s) on each side of a plane: pick patches from the volume with "
                            "`panoptem patches --flipbook` (napari: Pick Patches with Flipbook ticked).")
    planes = np.asarray(read_image(str(book)).data)
    planes = planes[None] if planes.ndim == 2 else planes
    if planes.shape[-2:] != image.shape or not 0 <= middle < len(planes) or \
            not np.array_equal(planes[middle], image):
        raise PanoptemError(f"Patch '{name}' in {root}: its image is not the middle plane of its flipbook; "
                            "store the patch again instead of editing its files.")
    at = np.arange(middle - k, middle + k + 1)
    index, shape, plane = (provenance.get(f) for f in ("index", "source_shape", "plane"))
    if index is not None and shape is not None and len(shape) == 3 and plane in PLANE_AXIS:
        in_volume = (at - middle + int(index) >= 0) & (at - middle + int(index) < int(shape[PLANE_AXIS[plane]]))
        if (in_volume & ((at < 0) | (at >= len(planes)))).any():  # planes the volume has, the flipbook not
            raise PanoptemError(f"Patch '{name}' in {root}: its flipbook holds {len(planes)} plane(s), too few for "
                                f"the model's {k} neighbour(s) on each side; pick the patches again with "
                                f"--flipbook-depth {2 * k + 1} or more.")
    return planes[np.clip(at, 0, len(planes) - 1)]  # clamped at the volume's ends, as inference clamps


def dataset_folders(paths: Iterable[str | Path]) -> list[Path]:
    """Dataset folders under ``paths``: a folder with images/ is one; a folder
    without it stands for its sub-folders that have one (empanada's layout). A folder reached
    twice (given twice, or also inside a root given) is taken once: its patches are not doubled,
    and one held out is never also trained on."""
    out = []
    for p in paths:
        p = Path(p).expanduser()
        if (p / "images").is_dir():
            out.append(p)
            continue
        subs = sorted(s for s in p.iterdir() if (s / "images").is_dir()) if p.is_dir() else []
        if not subs:
            raise PanoptemError(f"{p} is not a dataset folder: it holds no images/ folder (nor sub-folders with "
                                "one); create it with `panoptem patches` or store_dataset.")
        out += subs
    seen: set[Path] = set()
    return [f for f in out if not (f.resolve() in seen or seen.add(f.resolve()))]


# ---------------------------------------------------------------- sampling


def _range(image: np.ndarray, normalization) -> tuple[float, float]:
    """The (low, high) intensities inference maps to 0..1 for this image (card normalisation);
    for a plane with its neighbours, (C, H, W), the middle plane's."""
    if image.ndim == 3:
        image = image[len(image) // 2]
    if normalization is not None and normalization.mode == "dtype_max":
        return dtype_range(image)
    kw = {} if normalization is None else dict(low_pct=normalization.low_pct, high_pct=normalization.high_pct)
    return intensity_range(image, **kw)


def _unit(image: np.ndarray, normalization, rng: tuple[float, float] | None = None) -> np.ndarray:
    """Image scaled like inference scales it (card normalisation), clipped as there."""
    from ..inference.preprocess import to_unit
    lo, hi = rng if rng is not None else _range(image, normalization)
    return to_unit(image, lo, hi)


class TrainingData:
    """Image/mask pairs from one or more sources, sampled for training: the one dataset
    abstraction of training, fine-tuning and training from a volume.

    A source is a dataset folder (:class:`DatasetFolders`) or slices of an image volume
    with its labels (:class:`VolumeSlices`). Each image of a source holding ``count``
    images is drawn with weight ``(1 / count) ** gamma``: gamma 0 draws every image
    equally often, gamma 1 every source equally often. Images are scaled with the
    model's normalisation, clipped as inference clips them (the same rule for any
    dtype); masks become the model's channels: background + one per class (a single
    class gives one sigmoid channel).

    Parameters
    ----------
    sources : ``(name, images, masks, label_divisor, item_names)`` per source: 2D images, or
        (C, H, W) planes with their neighbours (the labels are the middle plane's, and every
        channel is cropped, turned and made paler alike), their label masks (``class * divisor +
        n``, or instance ids without a divisor).
    classes : the model's classes in channel order (see :func:`parse_classes`).
    gamma : re-weighting exponent.
    normalization : the model card's :class:`~panoptem.models.card.Normalization`
        (default: percentiles 0.5 / 99.5, mean 0.5, std 0.25).
    invert : the images have bright membranes: each is scaled with its range run backwards, as
        inference with ``invert`` scales it.
    """

    def __init__(self, sources, classes=((1, "mitochondria", "instance"),), gamma: float = 0.7,
                 normalization=None, invert: bool = False):
        self.classes = parse_classes(classes)
        self.normalization = normalization
        self.invert = bool(invert)
        ids = [c[0] for c in self.classes]
        self.thing_channels = [i + 1 for i, c in enumerate(self.classes) if c[2] == "instance"]
        self.images, self.masks, self.divisors, self.names = [], [], [], []
        self._ranges, self._codes, self._code_div = [], [], []
        self._dark: dict[int, np.ndarray] = {}  # hard-negative centres per image, found when first asked
        self._pad: dict[int, np.ndarray | None] = {}  # padding per image, found when first drawn
        counts, where = [], []
        for source, imgs, msks, div, item_names in sources:
            if len(ids) > 1 and not div:
                raise PanoptemError(f"The masks of {source} carry no label divisor, but the model has {len(ids)} "
                                    "classes: paint masks as class * divisor + n and give the divisor.")
            for name, im, m in zip(item_names, imgs, msks):
                code, cdiv = self._encode(f"Mask '{name}' in {source}", m, div, ids)
                self.images.append(im); self.masks.append(m); self.divisors.append(div)
                self.names.append(f"{Path(str(source)).name}/{name}")
                rng = _range(im, normalization)
                self._ranges.append(rng[::-1] if self.invert else rng)
                self._codes.append(code); self._code_div.append(cdiv)
            counts.append(len(imgs))
            where.append(str(source))
        self.counts = counts
        if not self.masks:
            raise PanoptemError("Training needs at least one image and its mask.")
        if not any(m.any() for m in self.masks):
            raise PanoptemError(f"Every mask in {', '.join(where)} is empty, so there is "
                                "nothing to learn; paint the objects of at least one patch.")
        w = np.concatenate([np.full(c, (1.0 / c) ** gamma) for c in counts if c])
        self.probabilities = w / w.sum()

    def __len__(self) -> int:
        return len(self.images)

    def _encode(self, what: str, mask, div, ids):
        """Mask -> ``channel * code_div + instance rank`` (small enough to survive the
        float32 resampling of the augmentation exactly); ``what`` names it in errors."""
        if mask.dtype == np.uint64 and mask.size and int(mask.max()) > np.iinfo(np.int64).max:
            if div:
                raise PanoptemError(f"{what} holds ids beyond 2^63, past any class * divisor + n; check the "
                                    "label divisor.")
            import fastremap
            mask = fastremap.renumber(mask, preserve_zero=True)[0]  # instance ids: only which pixels share one
        m = mask.astype(np.int64)
        cls = class_map(m, div)
        _check_class_zero(what, m, cls, div)
        if len(ids) == 1:
            cls = np.where(cls > 0, ids[0], 0) if not div else cls
        present = np.unique(cls)
        bad = sorted(set(present[present > 0].tolist()) - set(ids))
        if bad:
            raise PanoptemError(f"{what} holds class(es) {bad}, but the model's classes are "
                                f"{ids}; check the label divisor ({div}) and the classes.")
        lut = np.zeros(max(ids + [int(present.max())]) + 1, np.int64)
        lut[ids] = np.arange(1, len(ids) + 1)
        chan = lut[cls]
        thing = np.isin(chan, self.thing_channels)
        if div:
            thing &= (m % int(div)) != 0
        import fastremap
        rank, _ = fastremap.renumber(np.where(thing, m, 0), preserve_zero=True)
        rank = rank.astype(np.int64)
        code_div = 1 << max(1, int(rank.max()).bit_length())
        if (len(ids) + 1) * code_div > 1 << 24:
            raise PanoptemError(f"{what} holds too many objects to train on; cut it into "
                                "smaller patches.")
        code = chan * code_div + rank
        return code.astype(np.uint16 if code.max() < 1 << 16 else np.int32), code_div

    def _dark_points(self, i: int, image01: np.ndarray, code: np.ndarray) -> np.ndarray:
        """Hard-negative centres of image ``i`` (computed once)."""
        if i not in self._dark:
            self._dark[i] = dark_background_points(image01, code, seed=i)
        return self._dark[i]

    def _unit(self, i: int, mean: float) -> np.ndarray:
        """Image ``i`` scaled as inference scales it: the mean grey where it holds padding
        (:func:`~panoptem.inference.preprocess.padding_mask`), and values that are not numbers
        filled as :func:`~panoptem.inference.preprocess.normalize` fills them."""
        x = _unit(self.images[i], None, self._ranges[i])
        x[np.isnan(x)] = 0.5  # as normalize() fills them
        if i not in self._pad:  # once per image, not per patch drawn
            self._pad[i] = padding_mask(self.images[i])
        pad = self._pad[i]
        return x if pad is None else np.where(pad, np.float32(mean), x)

    def batch(self, rng: np.random.Generator, cfg) -> tuple:
        """``cfg.batch_size`` augmented patches of ``cfg.patch_size`` (N, C, P, P) and their
        targets: semantic (a 0/1 map for one class, channel indices for several), centre
        heatmap, offsets and offset weights, as tensors."""
        import torch
        idx = rng.choice(len(self.images), size=cfg.batch_size, p=self.probabilities)
        mean, std = (MEAN, STD) if self.normalization is None else (self.normalization.mean, self.normalization.std)
        imgs, sems, hms, offs, wts = [], [], [], [], []
        channels = list(range(1, len(self.classes) + 1))
        hard, pale = cfg.hard_negatives, cfg.pale
        for i in idx:
            im, code = _pad_to(self._unit(i, mean), self._codes[i], cfg.patch_size)
            centre = None
            if hard and rng.random() < hard:
                pts = self._dark_points(i, im[len(im) // 2] if im.ndim == 3 else im, code)
                centre = tuple(pts[rng.integers(len(pts))]) if len(pts) else None
            img, lab = sample_patch(rng, im, code, cfg.patch_size, cfg.scale_range, centre=centre)
            if pale and rng.random() < pale:
                obj = lab % self._code_div[i]
                if img.ndim == 2:
                    img = pale_objects(rng, img, obj)
                else:
                    seed = int(rng.integers(2 ** 31))  # one blend strength for every channel
                    img = np.stack([pale_objects(np.random.default_rng(seed), c, obj) for c in img])
            sem, hm, off, wt = make_panoptic_targets(lab, self._code_div[i], self.thing_channels, channels, cfg.sigma)
            if img.ndim == 2:
                x = intensity_augment(rng, img)
            else:  # one draw for every channel: side by side in one image (the blur crosses the seams)
                x = np.stack(np.split(intensity_augment(rng, np.concatenate(list(img), axis=1)), len(img), axis=1))
            if (mean, std) != (MEAN, STD):  # intensity_augment standardises with the default mean / std
                x = ((x * STD + MEAN - mean) / std).astype(np.float32)
            imgs.append(x)
            sems.append(sem.astype(np.float32) if len(self.classes) == 1 else sem)
            hms.append(hm); offs.append(off); wts.append(wt)
        t = lambda a: torch.from_numpy(np.stack(a))  # noqa: E731
        x = t(imgs)
        return x[:, None] if x.ndim == 3 else x, t(sems), t(hms), t(offs), t(wts)


class DatasetFolders(TrainingData):
    """:class:`TrainingData` from dataset folders (or roots holding several, see
    :func:`dataset_folders`). ``label_divisor``: divisor of the masks in folders without
    ``dataset.json`` (a folder's own ``dataset.json`` wins); ``context``: each patch with its
    flipbook's neighbouring planes (see :func:`load_dataset`); the rest as :class:`TrainingData`."""

    def __init__(self, folders, classes=((1, "mitochondria", "instance"),), label_divisor: int | None = None,
                 gamma: float = 0.7, normalization=None, context: int = 0, invert: bool = False):
        self.folders = dataset_folders([folders] if isinstance(folders, (str, Path)) else folders)
        self.label_divisor = label_divisor  # of the folders without dataset.json
        sources = []
        for f in self.folders:
            imgs, msks, meta = load_dataset(f, context)
            div = meta["label_divisor"] if meta["has_meta"] else label_divisor
            sources.append((f, imgs, msks, div, meta["names"]))
        super().__init__(sources, classes, gamma, normalization, invert)


class VolumeSlices(TrainingData):
    """:class:`TrainingData` from slices of a ZYX image volume and its labels (2D instance
    ids per slice are fine, or ``class * divisor + n`` with ``label_divisor``): every slice in
    ``slices`` (a slice, or slice numbers) is one training image, normalised on its own as a 2D
    image is. With ``context`` k, each comes with its k neighbours on each side (clamped at the volume's ends)
    as (2k + 1, H, W), for a model with that ``context_slices``.

    >>> vol = np.random.default_rng(0).integers(0, 255, (6, 64, 64), dtype=np.uint8)
    >>> lab = np.zeros(vol.shape, np.uint32); lab[:, 20:40, 20:40] = 1
    >>> len(VolumeSlices(vol, lab, slice(0, 4)))
    4
    """

    def __init__(self, image, labels, slices: slice = slice(None), classes=((1, "mitochondria", "instance"),),
                 label_divisor: int | None = None, gamma: float = 0.7, normalization=None, name: str = "volume",
                 context: int = 0, invert: bool = False):
        if tuple(image.shape) != tuple(labels.shape) or len(image.shape) != 3:
            raise PanoptemError(f"A training volume and its labels must be ZYX arrays of one shape, not "
                                f"{tuple(image.shape)} and {tuple(labels.shape)}.")
        zs = range(*slices.indices(image.shape[0])) if isinstance(slices, slice) else [int(z) for z in slices]
        if context:
            from ..inference.segment2d import take_plane
            imgs = [take_plane(image, z, "xy", neighbours=context) for z in zs]
        else:
            imgs = [np.asarray(image[z]) for z in zs]
        msks = [label_mask(np.asarray(labels[z]), f"Labels of slice {z}") for z in zs]
        super().__init__([(name, imgs, msks, label_divisor, [f"z{z}" for z in zs])], classes, gamma,
                         normalization, invert)


def _pad_to(image01: np.ndarray, code: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad an image (or its channels) smaller than the training patch (with its median; labels
    0) rather than let the crop zoom it up."""
    h, w = image01.shape[-2:]
    ph, pw = max(size - h, 0), max(size - w, 0)
    if not (ph or pw):
        return image01, code
    lead = [(0, 0)] * (image01.ndim - 2)
    return (np.pad(image01, lead + [(0, ph), (0, pw)], constant_values=float(np.median(image01))),
            np.pad(code, ((0, ph), (0, pw))))


def _classes_text(classes) -> str:
    """Classes as a dataset records them (dicts of id, name, kind), in words: ``1 mitochondria (instance)``."""
    try:
        return ", ".join(f"{c['id']} {c['name']} ({c['kind']})" for c in classes)
    except (TypeError, KeyError):  # a hand-edited record: as it stands
        return str(classes)
