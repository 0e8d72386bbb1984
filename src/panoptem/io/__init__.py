"""Readers and writers with voxel size in nm.

Read: TIFF/BigTIFF, PNG/JPEG, folders of 2D slices, MRC, Zarr/OME-Zarr, HDF5 (lazily where
possible). Write: labels and grey images to OME-TIFF or OME-Zarr, atomically, never over an input.
"""
from ._lazy import ImageStack, LazyArray, StoreArray
from .points import read_points
from .readers import ImageData, read_image, to_grey
from .writers import LabelWriter, label_dtype, open_label_writer, write_image, write_labels

__all__ = ["ImageData", "read_image", "to_grey", "LazyArray", "StoreArray", "ImageStack",
           "write_labels", "write_image", "open_label_writer", "LabelWriter", "label_dtype", "read_points"]
