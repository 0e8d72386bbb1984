"""Fill holes in blockwise runs: the passes of :mod:`panoptem.distributed._holes` give what
fill_holes gives on the whole volume, with holes inside a block, across faces and corners,
larger than a block, on the volume's edge and between two objects."""
from types import SimpleNamespace

import numpy as np
import pytest

from panoptem.distributed import _holes, _write
from panoptem.distributed.blocks import BlockGrid
from panoptem.inference.postprocess import fill_holes


def rings(shape=(3, 128, 128)) -> np.ndarray:
    """Labels with holes: a ring around a block corner, a ring inside one block, a ring whose
    hole is wider than a block, a ring cut by the volume's edge, background between two half
    rings, and a ring with another object inside its hole."""
    _, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    lab = np.zeros(shape, np.uint32)

    def disc(cy, cx, ro, ri, v, half=None):
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        m = (r2 < ro * ro) & (r2 >= ri * ri)
        if half is not None:
            m &= (xx < cx) if half else (xx >= cx)
        lab[m] = v

    disc(32, 32, 9, 4, 1)      # around the corner of four 32-blocks
    disc(16, 80, 7, 3, 2)      # inside one block
    disc(84, 60, 34, 22, 3)    # a hole wider than a block
    disc(124, 20, 10, 5, 4)    # cut by the volume's edge: its hole stays open
    disc(12, 112, 9, 5, 5, half=True)
    disc(12, 112, 9, 5, 6, half=False)  # two objects around one space: not a hole
    disc(112, 112, 12, 6, 7)
    disc(112, 112, 2, 0, 8)    # an object inside ring 7's hole: the hole touches two labels
    lab[1, 31:34, 31:34] = 9   # in one plane only, an object inside ring 1's hole
    return lab


def run_blockwise_holes(labels, block, tmp_path, monkeypatch, reads: list | None = None) -> np.ndarray:
    """The holes passes over blocks of ``labels`` (standing for the final labels), then each
    block filled; ``reads`` collects the blocks whose labels the first pass read."""
    grid = BlockGrid(labels.shape, block)
    job = _write.WriteJob(stack=SimpleNamespace(work=str(tmp_path), volume_shape=labels.shape), outputs=[],
                          divisor=None, single_class=True, grid=grid, holes=True)
    reads = [] if reads is None else reads
    monkeypatch.setattr(_write, "block_labels", lambda job, b: reads.append(b.index) or labels[b.core].copy())
    for b in grid:
        _holes.holes_block(job, b)
    _holes.resolve(job, grid, [_holes.holes_face(job, f) for f in _holes.hole_faces(grid)])
    out = np.zeros_like(labels)
    for b in grid:
        out[b.core] = _holes.fill_block(job, b)
    return out


@pytest.mark.parametrize("block", [(3, 32, 32), (1, 24, 40), (2, 128, 17), (3, 128, 128), (3, 7, 128)])
def test_blockwise_fill_holes_equals_fill_holes(tmp_path, monkeypatch, block):
    lab = rings()
    want = fill_holes(lab)
    assert np.unique(want[want != lab]).tolist() == [1, 2, 3]  # the holes of rings 1, 2 and 3
    assert (want[:, 84, 60] == 3).all() and (want[[0, 2], 32, 32] == 1).all() and want[1, 30, 30] == 0
    assert want[0, 126, 20] == want[0, 12, 112] == want[0, 112, 116] == 0
    np.testing.assert_array_equal(run_blockwise_holes(lab, block, tmp_path, monkeypatch), want)


def test_blockwise_filling_takes_the_labels_the_first_pass_kept(tmp_path, monkeypatch):
    """Each block's labels are computed once (the first pass keeps them, with its own holes
    filled, as uint32 where its ids fit); a hole filled from across a face with an id beyond
    uint32 keeps it; a block whose kept labels are gone is computed again."""
    big = 3 << 33
    lab = rings().astype(np.uint64) << np.uint64(33)  # ring 3's hole covers whole blocks of background
    grid = BlockGrid(lab.shape, (3, 16, 16))
    reads = []
    out = run_blockwise_holes(lab, (3, 16, 16), tmp_path, monkeypatch, reads)
    np.testing.assert_array_equal(out, fill_holes(lab))
    assert sorted(reads) == list(range(len(grid)))
    inside = grid.index_of((0, 5, 3))  # y 80-95, x 48-63: all background, inside ring 3's hole
    assert not lab[grid[inside].core].any() and (out[grid[inside].core] == big).all()
    (tmp_path / "holes" / f"filled_{inside}.npz").unlink()
    reads.clear()
    job = _write.WriteJob(stack=SimpleNamespace(work=str(tmp_path), volume_shape=lab.shape), outputs=[],
                          divisor=None, single_class=True, grid=grid, holes=True)
    np.testing.assert_array_equal(_holes.fill_block(job, grid[inside]), out[grid[inside].core])
    assert reads == [inside]


def test_blockwise_fill_holes_of_random_labels(tmp_path, monkeypatch):
    """Random labels: a mosaic of three objects with background scattered through it (many small
    holes, some across faces, and spaces between two objects), random blocks."""
    rng = np.random.default_rng(7)
    for t in range(6):
        tiles = rng.integers(1, 4, (2, 5, 6)).astype(np.uint32)
        mosaic = tiles.repeat(8, axis=1).repeat(9, axis=2)[:, :37, :50]
        lab = np.where(rng.random(mosaic.shape) < 0.7, mosaic, 0).astype(np.uint32)
        want = fill_holes(lab)
        assert (want != lab).sum() > 50
        block = (int(rng.integers(1, 3)), int(rng.integers(3, 20)), int(rng.integers(3, 20)))
        d = tmp_path / str(t)
        d.mkdir()
        np.testing.assert_array_equal(run_blockwise_holes(lab, block, d, monkeypatch), want)


def test_blockwise_holes_resume_after_a_crash(tmp_path, monkeypatch):
    """Blocks whose first pass finished before a crash are not redone (their record is read
    back), a half-written record is replaced, and the result is the same."""
    lab = rings()
    grid = BlockGrid(lab.shape, (3, 32, 32))
    job = _write.WriteJob(stack=SimpleNamespace(work=str(tmp_path), volume_shape=lab.shape), outputs=[],
                          divisor=None, single_class=True, grid=grid, holes=True)
    monkeypatch.setattr(_write, "block_labels", lambda job, b: lab[b.core].copy())
    for b in list(grid)[:5]:
        _holes.holes_block(job, b)
    (tmp_path / "holes" / "5.tmp.npz").write_bytes(b"cut short")
    reads = []
    np.testing.assert_array_equal(run_blockwise_holes(lab, (3, 32, 32), tmp_path, monkeypatch, reads), fill_holes(lab))
    assert reads == list(range(5, len(grid)))
