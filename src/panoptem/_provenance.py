"""What made a result: a record written with every segmentation panoptem writes (the model and
its weights' hash, every parameter, the inputs, the pixel sizes used, the release and the time),
and read back with it (:attr:`panoptem.io.ImageData.provenance`).

It lies where other tools show it: an OME-TIFF's comment annotation (namespace
:data:`NAMESPACE`; Fiji / Bio-Formats list it with the metadata), the ``"panoptem"`` entry of the
JSON description of a 64-bit TIFF, and the ``"panoptem"`` attribute of an OME-Zarr group.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

#: the namespace of the OME comment annotation that holds the record in a TIFF
NAMESPACE = "panoptem:provenance:1"
#: the attribute (Zarr) or description entry (JSON-described TIFF) that holds the record
KEY = "panoptem"


def run_record(run: str, card, params: dict, inputs=(), pixel_size: dict | None = None,
               **more) -> dict:
    """The record of a run: ``run`` (e.g. "segment3d"), the model ``card``, its ``params`` (every
    field), the files read (``inputs``), the pixel sizes used (see
    :meth:`~.inference.resample.PixelPlan.record`) and anything ``more`` (e.g. the plane and
    slice of a 2D run)."""
    from . import __version__
    rec = {"software": "panoptem", "version": __version__, "run": run,
           "made": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "model": card.name, "weights_sha256": card.weights.sha256 or None, "params": dict(params),
           "inputs": [str(Path(i).expanduser().absolute()) for i in inputs if i], "pixel_size": pixel_size}
    rec.update(more)
    return json.loads(json.dumps(rec, default=_plain))  # plain JSON types only, as it is stored


def _plain(value):
    """A numpy number or array as the Python value it holds; anything else as its text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def ome_annotation(record: dict) -> dict:
    """The record as the comment annotation :class:`tifffile.OmeXml` writes."""
    return {"Namespace": NAMESPACE, "Description": "how panoptem made these labels", "Value": json.dumps(record)}


_COMMENT = re.compile(r'<CommentAnnotation [^>]*Namespace="' + re.escape(NAMESPACE) + r'"[^>]*>.*?<Value>(.*?)</Value>',
                      re.S)


def from_description(text: str | None) -> dict | None:
    """The record in a TIFF's image description (OME-XML or JSON), None where there is none."""
    if not text:
        return None
    if text.lstrip().startswith("{"):
        try:
            rec = json.loads(text).get(KEY)
        except (ValueError, AttributeError):
            return None
        return rec if isinstance(rec, dict) else None
    m = _COMMENT.search(text)
    if m is None:
        return None
    from xml.sax.saxutils import unescape
    try:
        rec = json.loads(unescape(m.group(1), {"&quot;": '"', "&apos;": "'"}))
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def read_provenance(path, key: str | None = None) -> dict | None:
    """The record of a labels file panoptem wrote (TIFF or Zarr; ``key``: the array read inside a
    Zarr group), None where it holds none."""
    p = Path(path)
    try:
        if p.suffix.lower() in (".tif", ".tiff", ".btf") and p.is_file():
            import tifffile
            with tifffile.TiffFile(p) as tif:
                return from_description(tif.pages[0].description if len(tif.pages) else None)
        if p.is_dir():  # the group written, or the group of the level read
            import zarr
            target = p / key if key else p
            for folder in (target, target.parent):
                try:
                    rec = zarr.open(str(folder), mode="r").attrs.get(KEY)
                except Exception:  # noqa: BLE001 - not a Zarr node
                    continue
                if isinstance(rec, dict):
                    return rec
    except Exception:  # noqa: BLE001 - a record that cannot be read is no record
        return None
    return None
