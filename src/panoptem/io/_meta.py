"""Voxel-size metadata: units, OME-XML, ImageJ, TIFF resolution tags, HDF5/Zarr attributes.

Every function returns sizes in nm, or None when the file does not say.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

# nm per unit; keys are lower case (UDUNITS names as used by OME-NGFF, OME-XML symbols, ImageJ words)
_NM_PER_UNIT = {
    "pm": 1e-3, "picometer": 1e-3,
    "å": 0.1, "a": 0.1, "angstrom": 0.1, "ångström": 0.1,
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "nanometers": 1.0,
    "µm": 1e3, "μm": 1e3, "um": 1e3, "micron": 1e3, "microns": 1e3, "micrometer": 1e3,
    "micrometre": 1e3, "micrometers": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9,
    "in": 2.54e7, "inch": 2.54e7,
}

# A pixel larger than 0.1 mm is a display resolution (72 dpi...), not an EM voxel size; so is, in
# pixels per inch or per centimetre, one of a micrometre or more: image editors write 72 to 1200
# dpi, in either unit, while a microscope's pixel of 5 nm is 5 million dots per inch.
_MAX_PLAUSIBLE_NM = 1e5
_MAX_PLAUSIBLE_EDITOR_NM = 1e3


def to_nm(value, unit: str | None) -> float | None:
    """``value`` in ``unit`` converted to nm; None for an unknown unit or a non-positive value."""
    if unit is None or value is None:
        return None
    u = str(unit).strip()
    for escaped, char in (("\\u00B5", "µ"), ("\\u00C5", "Å")):  # as ImageJ may write them
        u = u.replace(escaped, char).replace(escaped.lower(), char)
    factor = _NM_PER_UNIT.get(u.lower())
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if factor is None or not math.isfinite(v) or v <= 0:
        return None
    return v * factor


def complete(sizes: Sequence[float | None] | None) -> tuple[float, ...] | None:
    """``tuple(sizes)`` when every entry is known, else None."""
    if sizes is None or any(s is None for s in sizes):
        return None
    return tuple(float(s) for s in sizes)


def ome_xml_sizes(xml: str) -> dict[str, float]:
    """``{'X': nm, 'Y': nm, 'Z': nm}`` (known entries only) of the first image of an OME-XML string."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return {}
    out = {}
    for ax in "XYZ":
        nm = to_nm(pixels.get(f"PhysicalSize{ax}"), pixels.get(f"PhysicalSize{ax}Unit", "µm"))
        if nm is not None:
            out[ax] = nm
    return out


def _rational(value) -> float | None:
    try:
        num, den = value
        return num / den if num > 0 and den > 0 else None
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def tiff_tag_sizes(page, imagej: Mapping | None) -> dict[str, float]:
    """Sizes from the X/YResolution tags (pixels per unit) of a TIFF page, with the unit from
    ResolutionUnit, or from ImageJ's ``unit`` when ResolutionUnit is NONE; ImageJ's
    ``spacing`` gives Z."""
    tags = page.tags
    ij = dict(imagej or {})
    res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    unit = {2: "inch", 3: "cm", 4: "mm", 5: "µm"}.get(res_unit, ij.get("unit"))
    out = {}
    for ax, tag in (("X", "XResolution"), ("Y", "YResolution")):
        per_unit = _rational(tags[tag].value) if tag in tags else None
        axis_unit = ij.get(f"{ax.lower()}unit", unit)
        nm = to_nm(1.0 / per_unit, axis_unit) if per_unit else None
        cap = _MAX_PLAUSIBLE_EDITOR_NM if str(axis_unit).lower() in ("in", "inch", "cm") else _MAX_PLAUSIBLE_NM
        if nm is not None and nm <= cap:
            out[ax] = nm
    if "spacing" in ij:
        nm = to_nm(ij["spacing"], ij.get("zunit", ij.get("unit")))
        if nm is not None:
            out["Z"] = nm
    return out


def _axis_units(attrs: Mapping, name: str, ndim: int) -> list[str] | None:
    """The unit of each axis of attribute ``name``: its own ``<name>_unit``, else ``unit`` /
    ``units``, one string for every axis or a list of one per axis (as funlib writes them); nm
    where none is given; None for a list of another length."""
    unit = attrs.get(f"{name}_unit", attrs.get("unit", attrs.get("units", "nm")))
    if isinstance(unit, bytes):  # HDF5 fixed-length strings (C and Java writers)
        unit = unit.decode("utf-8", "replace")
    if isinstance(unit, str):
        return [unit] * ndim
    if not isinstance(unit, (list, tuple)) and not hasattr(unit, "tolist"):
        return ["nm"] * ndim
    units = [u.decode("utf-8", "replace") if isinstance(u, bytes) else u for u in list(unit)]
    if len(units) == 1:
        units = units * ndim
    return units if len(units) == ndim and all(isinstance(u, str) for u in units) else None


def _attrs_voxel(attrs: Mapping, ndim: int) -> tuple[tuple[float, ...], list[str]] | None:
    """The voxel size (nm) HDF5/Zarr attributes give, and the units they give it in."""
    candidates = []
    if "element_size_um" in attrs:
        candidates.append((attrs["element_size_um"], ["µm"] * ndim))
    for name in ("voxel_size", "resolution", "voxel_size_nm"):
        if name in attrs:
            candidates.append((attrs[name], _axis_units(attrs, name, ndim)))
    for values, units in candidates:
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            continue
        if len(values) == ndim and units is not None:
            sizes = complete([to_nm(v, u) for v, u in zip(values, units)])
            if sizes is not None:
                return sizes, units
    return None


def attrs_sizes(attrs: Mapping, ndim: int) -> tuple[float, ...] | None:
    """Voxel size from HDF5/Zarr attributes: ``element_size_um`` (µm), or ``voxel_size`` /
    ``resolution`` (nm unless a ``unit``/``units`` attribute says otherwise: one unit, or one
    per axis), one per axis."""
    found = _attrs_voxel(attrs, ndim)
    return None if found is None else found[0]


def ngff_multiscales(attrs: Mapping) -> list | None:
    """The ``multiscales`` list of an OME-Zarr group (NGFF 0.4 at the top level, 0.5 under ``ome``)."""
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), Mapping):
        ms = attrs["ome"].get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def _scale(transforms) -> list[float] | None:
    for t in transforms or ():
        if isinstance(t, Mapping) and t.get("type") == "scale" and "scale" in t:
            return [float(s) for s in t["scale"]]
    return None


def _translation(transforms) -> list[float] | None:
    """The translation of an NGFF transformation list; None where it has none, or a malformed one
    (a position that cannot be read is left out rather than refusing the data)."""
    for t in transforms if isinstance(transforms, list) else ():
        if isinstance(t, Mapping) and t.get("type") == "translation" and "translation" in t:
            try:
                return [float(v) for v in t["translation"]]
            except (TypeError, ValueError):
                return None
    return None


def _to_nm_signed(value: float, unit) -> float | None:
    """A coordinate (any sign) in ``unit`` converted to nm; None for an unknown unit."""
    if value == 0:
        return 0.0 if to_nm(1.0, unit) is not None else None
    nm = to_nm(abs(value), unit)
    return None if nm is None else math.copysign(nm, value)


def ngff_origin(multiscale: Mapping, dataset: Mapping) -> list[float | None] | None:
    """Per-axis position in nm of the first voxel of one dataset of an NGFF multiscale (its
    translation, after the multiscale's own scale and translation; None for axes that are not
    space or have no unit); None when neither transformation list holds a translation."""
    inner = _translation(dataset.get("coordinateTransformations"))
    outer_t = _translation(multiscale.get("coordinateTransformations"))
    if inner is None and outer_t is None:
        return None
    ndim = len(_scale(dataset.get("coordinateTransformations")) or inner or outer_t)
    inner = inner if inner is not None and len(inner) == ndim else [0.0] * ndim
    outer_s = _scale(multiscale.get("coordinateTransformations"))
    outer_s = outer_s if outer_s is not None and len(outer_s) == ndim else [1.0] * ndim
    outer_t = outer_t if outer_t is not None and len(outer_t) == ndim else [0.0] * ndim
    axes = multiscale.get("axes") or []
    out = []
    for i in range(ndim):
        ax = axes[i] if i < len(axes) else None
        v = inner[i] * outer_s[i] + outer_t[i]
        ok = isinstance(ax, Mapping) and ax.get("type", "space") == "space" and math.isfinite(v)
        out.append(_to_nm_signed(v, ax.get("unit")) if ok else None)
    return out


def attrs_origin(attrs: Mapping, ndim: int) -> tuple[float, ...] | None:
    """Position in nm of the first voxel from an ``offset`` attribute (one per axis, in the
    units of the voxel size the attributes give, see :func:`attrs_sizes`), as funlib/daisy and
    CREMI write it beside ``resolution``; None when absent or without a voxel size."""
    found = _attrs_voxel(attrs, ndim) if "offset" in attrs else None
    if found is None:
        return None
    try:
        values = [float(v) for v in attrs["offset"]]
    except (TypeError, ValueError):
        return None
    if len(values) != ndim or not all(math.isfinite(v) for v in values):
        return None
    return complete([_to_nm_signed(v, u) for v, u in zip(values, found[1])])


def ngff_sizes(multiscale: Mapping, dataset: Mapping) -> list[float | None] | None:
    """Per-axis size in nm of one dataset of an NGFF multiscale (None for axes that are not
    space or have no unit); None when the metadata has no scale."""
    scale = _scale(dataset.get("coordinateTransformations"))
    if scale is None:
        return None
    outer = _scale(multiscale.get("coordinateTransformations"))
    if outer is not None and len(outer) == len(scale):
        scale = [a * b for a, b in zip(scale, outer)]
    axes = multiscale.get("axes") or []
    out = []
    for i, s in enumerate(scale):
        ax = axes[i] if i < len(axes) else None
        if isinstance(ax, Mapping) and ax.get("type", "space") == "space":
            out.append(to_nm(s, ax.get("unit")))
        else:
            out.append(None)
    return out
