"""Readers and writers with voxel size in nm."""
from .readers import ImageData, read_image
from .writers import write_labels

__all__ = ["ImageData", "read_image", "write_labels"]
