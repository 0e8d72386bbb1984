"""panoptem: panoptic segmentation of organelles in electron-microscopy images and volumes."""
from .errors import PanoptemError

__version__ = "0.1.0"

__all__ = ["PanoptemError", "segment_2d", "segment_3d", "load_model", "load_sample", "read_image",
           "write_labels", "evaluate", "measure", "preview", "report", "__version__"]


def __getattr__(name):  # lazy: importing panoptem must not pull torch
    if name == "segment_2d":
        from .inference.segment2d import segment_2d
        return segment_2d
    if name == "segment_3d":
        from .inference.segment3d import segment_3d
        return segment_3d
    if name == "load_model":
        from .models.load import load_model
        return load_model
    if name == "load_sample":
        from .sample import load_sample
        return load_sample
    if name in ("read_image", "write_labels"):
        from . import io
        return getattr(io, name)
    if name == "evaluate":
        from .evaluate import evaluate
        return evaluate
    if name == "measure":
        from .measure import measure
        return measure
    if name in ("preview", "report"):
        from . import reporting
        return getattr(reporting, name)
    raise AttributeError(name)
