"""panoptem: panoptic segmentation of organelles in electron-microscopy images and volumes.

The public functions and classes are importable from here; the modules behind
them load on first use, so ``import panoptem`` does not pull in PyTorch.
"""
from .errors import PanoptemError

__version__ = "0.1.0"

#: public name -> (module, attribute); loaded on first access
_LAZY = {
    "segment_2d": (".inference.segment2d", "segment_2d"),
    "segment_3d": (".inference.segment3d", "segment_3d"),
    "take_plane": (".inference.segment2d", "take_plane"),
    "Result2D": (".inference.segment2d", "Result2D"),
    "Result3D": (".inference.segment3d", "Result3D"),
    "Params2D": (".params", "Params2D"),
    "Params3D": (".params", "Params3D"),
    "load_model": (".models.load", "load_model"),
    "load_sample": (".sample", "load_sample"),
    "read_image": (".io", "read_image"),
    "write_labels": (".io", "write_labels"),
    "evaluate": ("._evaluate", "evaluate"),
    "evaluate_files": ("._evaluate", "evaluate_files"),
    "error_breakdown": ("._evaluate", "error_breakdown"),
    "measure": ("._measure", "measure"),
    "summarize": ("._measure", "summarize"),
    "to_rows": ("._measure", "to_rows"),
    "export_meshes": (".meshes", "export_meshes"),
    "write_table": ("._table", "write_table"),
    "preview": (".reporting", "preview"),
    "report": (".reporting", "report"),
}

__all__ = ["PanoptemError", "__version__", *_LAZY]


def __getattr__(name: str):
    # Private module names (``_evaluate``, ``_measure``): importing a submodule binds it on the
    # package under its own name, which must never shadow a public function of the same name.
    if name not in _LAZY:
        raise AttributeError(f"module 'panoptem' has no attribute '{name}'")
    import importlib
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
