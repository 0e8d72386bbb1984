"""Blockwise inference and measurement on Dask (one worker per device, a local
cluster or a running scheduler), for volumes larger than one machine's memory.

elf-style arguments: ``block_shape``, ``halo``, ``n_workers``, ``mask``.
"""
from .blocks import Block, BlockGrid
from .measure import measure_blockwise
from .segment import BlockwiseResult, segment_blockwise

__all__ = ["Block", "BlockGrid", "BlockwiseResult", "segment_blockwise", "measure_blockwise"]
