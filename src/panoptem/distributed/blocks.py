"""A volume cut into blocks aligned to the output chunks, each read with a halo.

>>> grid = BlockGrid((100, 300, 300), block_shape=(50, 128, 128), halo=(0, 32, 32))
>>> len(grid), grid[4].core, grid[4].region
(18, (slice(0, 50, None), slice(128, 256, None), slice(128, 256, None)), (slice(0, 50, None), slice(96, 288, None), slice(96, 288, None)))
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

from ..errors import PanoptemError


@dataclass(frozen=True)
class Block:
    """One block: ``index`` in the grid, its ``position`` (block coordinates),
    the ``core`` it owns and the ``region`` read for it (core + halo, clipped)."""

    index: int
    position: tuple[int, ...]
    core: tuple[slice, ...]
    region: tuple[slice, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.core)

    def core_in_region(self) -> tuple[slice, ...]:
        """Where the core lies inside the region's array."""
        return tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(self.core, self.region))


def triple(v, name: str) -> tuple[int, int, int] | None:
    """``v`` as (Z, Y, X): one number for all three, three numbers, or a 'Z,Y,X' string; None stays None."""
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = [int(x) for x in v.split(",")]
        except ValueError:
            raise PanoptemError(f"{name} must be three integers 'Z,Y,X', not '{v}'.") from None
    if isinstance(v, int):
        v = (v, v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 3:
        raise PanoptemError(f"{name} must be three integers 'Z,Y,X', not {v}.")
    return v


class BlockGrid:
    """Blocks of ``block_shape`` over a ZYX ``shape``; the last block along an
    axis may be smaller. ``halo`` (Z, Y, X) is added on every side of the core
    where the volume goes on."""

    def __init__(self, shape, block_shape, halo=(0, 0, 0)):
        self.shape = triple(shape, "shape")
        self.block_shape = triple(block_shape, "block_shape")
        self.halo = triple(halo, "halo")
        if min(self.block_shape) < 1:
            raise PanoptemError(f"Block shape must be positive along every axis, not {self.block_shape}.")
        if min(self.halo) < 0:
            raise PanoptemError(f"Halo must be 0 or more voxels along every axis, not {self.halo}.")
        self.counts = tuple(-(-n // b) for n, b in zip(self.shape, self.block_shape))
        self._positions = list(itertools.product(*(range(c) for c in self.counts)))

    def __len__(self) -> int:
        return len(self._positions)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i: int) -> Block:
        pos = self._positions[i]
        core = tuple(slice(p * b, min((p + 1) * b, n)) for p, b, n in zip(pos, self.block_shape, self.shape))
        region = tuple(slice(max(0, c.start - h), min(n, c.stop + h)) for c, h, n in zip(core, self.halo, self.shape))
        return Block(i, pos, core, region)

    def index_of(self, position) -> int | None:
        """Index of the block at ``position`` (None outside the grid)."""
        if any(p < 0 or p >= c for p, c in zip(position, self.counts)):
            return None
        i = 0
        for p, c in zip(position, self.counts):
            i = i * c + p
        return i


#: the context pass (each slice's global context for blocks that cut it) costs about this share of
#: the network's time again (the encoder over the same regions)
CONTEXT_SHARE = 0.6


def read_extent(n: int, block: int, halo: int, align: int) -> float:
    """Voxels read along an axis of ``n``, summed over blocks of ``block`` with ``halo`` on each
    side (each region's lower edge on the ``align`` grid, as the network pass reads it), per
    voxel of the axis.

    >>> read_extent(1024, 1024, 128, 32), read_extent(128, 64, 16, 64)
    (1.0, 1.625)
    """
    total = 0
    for start in range(0, n, block):
        lo = max(0, start - halo)
        total += min(n, start + block + halo) - (lo - lo % align)
    return total / n


def ortho_block_shape(shape, default, halo, align: int, context: bool) -> tuple[int, int, int]:
    """The block shape of an ortho-plane run: ``default``, or a block as deep as the volume with
    at most as many voxels, whichever feeds the network fewer pixels over the three stacks. Each
    stack reads its planes' two axes with the halo (:func:`read_extent`) and, where blocks cut its
    planes, runs the context pass over them too (:data:`CONTEXT_SHARE`, with ``context``). A thin
    volume so gets its xz / yz planes whole; the in-plane sides are whole axes or ``align``
    multiples (an even split, or a power of two); ties go to the larger block.

    >>> ortho_block_shape((128, 768, 1024), (64, 1024, 1024), (16, 128, 128), 64, True)
    (128, 768, 512)
    >>> ortho_block_shape((1024, 1024, 1024), (64, 1024, 1024), (16, 128, 128), 64, True)
    (64, 1024, 1024)
    """
    def sides(n: int) -> set[int]:  # the axis whole, split evenly, or powers of two
        even = {-(-(-(-n // k)) // align) * align for k in range(1, 17)}
        pow2 = {align << j for j in range(max(1, n // align).bit_length())}
        return {min(v, n) for v in even | pow2}

    extent = functools.cache(lambda ax, side: read_extent(shape[ax], side, halo[ax], align))

    def cost(b) -> float:
        ext = [extent(ax, side) for ax, side in enumerate(b)]
        total = 0.0
        for view in range(3):
            a0, a1 = (ax for ax in range(3) if ax != view)
            cut = b[a0] < shape[a0] or b[a1] < shape[a1]
            total += ext[a0] * ext[a1] * (1 + CONTEXT_SHARE if context and cut else 1)
        return total

    default = tuple(-(-b // align) * align for b in default)  # as the run aligns it
    voxels = default[0] * default[1] * default[2]
    deep = [(shape[0], y, x) for y, x in itertools.product(sides(shape[1]), sides(shape[2]))
            if shape[0] * y * x <= voxels]
    return min([default, *deep], key=lambda b: (round(cost(b), 9), -(b[0] * b[1] * b[2])))
