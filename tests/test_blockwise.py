"""Blockwise 3D inference on Dask: the objects of a whole-volume run, resumable,
the same with 1 or 2 workers or an external scheduler."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
import yaml

from panoptem.distributed import segment_blockwise
from panoptem.distributed.blocks import BlockGrid
from panoptem.errors import PanoptemError
from panoptem.inference.segment3d import segment_3d
from panoptem.io import read_image
from panoptem.models.load import sha256_of

from _models import DarkBlobNet, dark_blob_model, neighbour_model

P = dict(min_size=100, min_extent=3)


def scene(shape=(40, 120, 120)):
    """Touching balls, a ball on a block corner, a small ball, a slanted tube
    through many blocks and a long rod lying in the xy planes."""
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    vol = np.full(shape, 200, np.uint8)
    for c, r in [((10, 30, 30), 10), ((10, 30, 49), 10), ((20, 64, 64), 12), ((30, 95, 20), 9)]:
        vol[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r * r] = 40
    for z in range(shape[0]):
        vol[z][(yy[0] - 10 - 2.2 * z) ** 2 + (xx[0] - 100 + 1.5 * z) ** 2 < 16] = 35
    vol[28:33, 104:109, 10:110] = 45  # a rod along x across every block
    return vol


@pytest.fixture(scope="module")
def vol():
    return scene()


@pytest.fixture(scope="module")
def client():
    """One in-process cluster for the module (its start-up costs more than a small run)."""
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as c:
        yield c


def _blockwise(vol, tmp_path, name="out.zarr", model=None, client=None, **kw):
    kw = {**P, **kw}
    if client is None:
        kw.setdefault("n_workers", 1)
        kw.setdefault("processes", False)
    r = segment_blockwise(vol, model or dark_blob_model(), tmp_path / name, client=client, **kw)
    return r, np.asarray(r.labels["mitochondria"][:])


CASES = [({}, (16, 64, 64), (32, 32, 32)), ({}, (8, 32, 48), (32, 32, 32)), ({}, (40, 40, 120), (0, 32, 0)),
         ({"inference_plane": "xz"}, (16, 64, 64), (32, 32, 32)), ({"inference_plane": "yz"}, (8, 32, 48), (32, 32, 32)),
         ({"inference_plane": "yz"}, (40, 40, 120), (0, 32, 0)),
         ({"median_slices": 5, "bridge_gaps": 1}, (8, 64, 64), (32, 32, 32)),
         ({"fine_boundaries": True, "maximum_objects_per_class": 0}, (16, 32, 64), (32, 32, 32)),
         ({"orthoplane": True, "fusion": "probability"}, (16, 64, 64), (32, 32, 32)),
         ({"orthoplane": True}, (16, 64, 64), (32, 32, 32)),  # consensus
         ({"orthoplane": True, "allow_one_view": True, "pixel_vote_thr": 3}, (8, 32, 48), (32, 32, 32)),
         ({"label_erosion": 1, "label_dilation": 3}, (8, 32, 48), (32, 32, 32)),
         ({"orthoplane": True, "label_dilation": 2}, (16, 64, 64), (32, 32, 32))]


@pytest.mark.parametrize("params,block,halo", CASES)
def test_blockwise_equals_whole_volume(vol, tmp_path, client, params, block, halo):
    whole = segment_3d(vol, dark_blob_model(), **P, **params).labels["mitochondria"]
    res, got = _blockwise(vol, tmp_path, client=client, block_shape=block, halo=halo, **params)
    assert res.blocks > 1
    assert got.dtype == whole.dtype and got.shape == whole.shape
    np.testing.assert_array_equal(got, whole)  # same objects, same ids
    assert res.objects["mitochondria"] == len(np.unique(whole)) - 1 >= 3


def test_ortho_plane_default_blocks_of_a_thin_volume_are_as_deep_as_it(vol, tmp_path, client, monkeypatch):
    # with a default of 32 x 64 x 64 voxels and a halo of 32 in-plane, the 40 x 120 x 120 scene is thin:
    # blocks 40 deep (its xz / yz planes whole) feed the network fewer pixels than the default's
    from panoptem.distributed import blocks, segment
    halo = (16, 32, 32)
    assert blocks.ortho_block_shape(vol.shape, (32, 64, 64), halo, 32, False) == (40, 32, 64)
    assert blocks.ortho_block_shape((1024,) * 3, (32, 64, 64), halo, 32, False) == (32, 64, 64)  # deep: the default
    monkeypatch.setattr(segment, "DEFAULT_BLOCK", (32, 64, 64))
    chosen = []
    monkeypatch.setattr(segment, "ortho_block_shape", lambda *a: chosen.append(blocks.ortho_block_shape(*a)) or chosen[-1])
    whole = segment_3d(vol, dark_blob_model(), orthoplane=True, **P).labels["mitochondria"]
    res, got = _blockwise(vol, tmp_path, client=client, orthoplane=True, halo=halo)
    assert chosen == [(40, 32, 64)] and res.blocks == 8
    np.testing.assert_array_equal(got, whole)


@settings(derandomize=True, database=None, deadline=None, max_examples=40)
@given(depth=st.integers(1, 6), first_chunk=st.integers(0, 3), batches=st.lists(st.integers(1, 7), min_size=1,
                                                                             max_size=10))
def test_block_outputs_reach_disk_in_whole_chunks(depth, first_chunk, batches):
    """A block's batches of outputs are gathered into whole chunks of ``depth`` slices (each
    written once, the block's last one as far as it goes) and land where they belong."""
    from panoptem.io.zarr_write import ChunkRows
    start, n = first_chunk * depth, sum(batches)
    target = [np.zeros((start + n + 5, 2, 6, 6), np.uint8), np.zeros((start + n + 5, 1, 3, 3), np.float16)]
    writes, told = [], []

    class Recorded:  # an array that notes the slices each write covers
        def __init__(self, arr):
            self.arr, self.shape = arr, arr.shape

        def __setitem__(self, key, value):
            writes.append((key[0].start, key[0].stop))
            self.arr[key] = value
    rng = np.random.default_rng(len(batches))
    truth = [rng.integers(1, 255, (n, 2, 4, 5)).astype(np.uint8), rng.random((n, 1, 2, 2)).astype(np.float16)]
    where = [(slice(1, 5), slice(0, 5)), (slice(1, 3), slice(1, 3))]
    rows = ChunkRows([Recorded(t) for t in target], depth, start + n, where, written=lambda i, j: told.append((i, j)))
    at = 0
    for b in batches:
        rows.add(start + at, tuple(t[at:at + b] for t in truth))
        at += b
    spans = writes[0::2]  # the same spans for both arrays, in order, each chunk in one of them
    assert writes[1::2] == spans == told and spans[0][0] == start and spans[-1][1] == start + n
    assert all(a < b and b == c for (a, b), (c, _) in zip(spans, spans[1:] + [(start + n, 0)]))
    assert all(b % depth == 0 for _, b in spans[:-1])
    for t, x, (r, c) in zip(target, truth, where):
        np.testing.assert_array_equal(t[start:start + n, :, r, c], x)
        assert not t[:start].any() and not t[start + n:].any()
    wide = ChunkRows([Recorded(t) for t in target], depth, start + 1, where)
    with pytest.raises(ValueError, match="3 channels for an array of 2"):  # zarr would store a part
        wide.add(start, (np.zeros((1, 3, 4, 5), np.uint8), truth[1][:1]))


def test_rows_that_skip_write_what_was_gathered_first():
    """A batch that does not follow the one before (a resumed run skips stored slices) first
    writes the rows gathered so far, then gathers anew; flush writes the rest."""
    from panoptem.io.zarr_write import ChunkRows
    a, spans = np.zeros((12, 1, 2), np.uint8), []
    rows = ChunkRows([a], depth=4, stop=12, written=lambda i, j: spans.append((i, j)))
    rows.add(0, (np.full((3, 1, 2), 1, np.uint8),))
    rows.add(6, (np.full((1, 1, 2), 2, np.uint8),))
    assert spans == [(0, 3)]
    rows.add(7, (np.full((2, 1, 2), 3, np.uint8),))
    assert spans == [(0, 3), (6, 8)]
    rows.add(9, (np.full((1, 1, 2), 4, np.uint8),))  # row 8 waits with it for the chunk's end
    assert spans == [(0, 3), (6, 8)]
    rows.flush()
    assert spans == [(0, 3), (6, 8), (8, 10)] and a[:, 0, 0].tolist() == [1, 1, 1, 0, 0, 0, 2, 3, 3, 4, 0, 0]


def test_thin_planes_are_stored_many_to_a_chunk(vol, tmp_path, client):
    """The stored outputs of each stack hold as many slices to a chunk as fit in CHUNK_BYTES and
    divide the block's depth (a chunk never spans two blocks): here whole blocks."""
    import zarr

    from panoptem.distributed import _pass1
    _blockwise(vol, tmp_path, client=client, orthoplane=True, block_shape=(40, 48, 60), halo=(16, 32, 32),
               keep_work=True)
    work = tmp_path / ".out.zarr.blockwise"
    depth = {v: zarr.open_array(str(work / f"net_{v}.zarr" / "probability"), mode="r").chunks[0]
             for v in ("xy", "xz", "yz")}
    blocks = {"xy": 40, "xz": 64, "yz": 64}  # in-plane block sides rounded up to the network's grid of 32
    assert all(blocks[v] % depth[v] == 0 for v in depth) and depth["xz"] > 1 and depth["yz"] > 1, depth
    per_slice = {v: np.prod(zarr.open_array(str(work / f"net_{v}.zarr" / "probability"), mode="r").chunks[1:])
                 for v in depth}
    assert all(depth[v] * per_slice[v] <= _pass1.CHUNK_BYTES for v in depth)
    assert all(depth[v] == blocks[v] or (depth[v] + 1) * per_slice[v] > _pass1.CHUNK_BYTES
               or blocks[v] % (depth[v] + 1) for v in depth)  # not one slice deeper either


def test_a_block_spanning_the_stack_stores_many_slices_to_a_chunk(tmp_path, client):
    """A block as deep as a volume of prime depth (37) is not cut into 1-slice chunks: no other
    block shares its chunks; the last one ends with the volume."""
    import zarr

    from panoptem.distributed import _pass1
    v = scene((37, 200, 200))
    whole = segment_3d(v, dark_blob_model(), **P).labels["mitochondria"]
    res, got = _blockwise(v, tmp_path, client=client, block_shape=(37, 192, 192), halo=(0, 32, 32), keep_work=True)
    arr = zarr.open_array(str(tmp_path / ".out.zarr.blockwise" / "net_xy.zarr" / "probability"), mode="r")
    most = _pass1.CHUNK_BYTES // int(np.prod(arr.chunks[1:]))
    assert 1 < most < 37 and arr.chunks[0] == most, (arr.chunks, most)  # the old rule: 1 (37 is prime)
    np.testing.assert_array_equal(got, whole)


def test_consensus_writes_the_votes_of_its_sizing_pass(vol, tmp_path, client, monkeypatch):
    """The consensus votes each block once: the writing pass numbers the votes the sizing pass
    kept (a block whose votes are missing is voted again), and the labels are the whole
    volume's either way."""
    from panoptem.distributed import _consensus
    whole = segment_3d(vol, dark_blob_model(), **P, orthoplane=True).labels["mitochondria"]
    votes, kept = [], []
    orig_vote, orig_keep = _consensus._vote, _consensus._keep_votes

    def counted_vote(job, block, *args, **kw):
        votes.append(block.index)
        return orig_vote(job, block, *args, **kw)
    monkeypatch.setattr(_consensus, "_vote", counted_vote)
    res, got = _blockwise(vol, tmp_path, client=client, block_shape=(32, 128, 128), halo=(32, 32, 32), orthoplane=True)
    np.testing.assert_array_equal(got, whole)
    assert sorted(votes) == list(range(res.blocks)) and res.blocks > 1  # once per block: sizing only

    def keep_some(job, block, *votes):  # the votes of block 0 go missing
        kept.append(block.index)
        if block.index:
            orig_keep(job, block, *votes)
    monkeypatch.setattr(_consensus, "_keep_votes", keep_some)
    votes.clear()
    res, got = _blockwise(vol, tmp_path, name="again.zarr", client=client, block_shape=(32, 128, 128),
                          halo=(32, 32, 32), orthoplane=True)
    np.testing.assert_array_equal(got, whole)
    assert sorted(votes) == sorted([*range(res.blocks), 0]) and sorted(kept) == list(range(res.blocks))


def test_consensus_makes_each_stacks_labels_once_per_block(vol, tmp_path, client, monkeypatch):
    """The overlaps pass keeps the voxels the stacks label, with their objects, for the
    vote: the stacks' labels of a block are made once (again only where that record is
    missing), and the labels are the whole volume's either way."""
    from panoptem.distributed import _consensus
    whole = segment_3d(vol, dark_blob_model(), **P, orthoplane=True).labels["mitochondria"]
    made = []
    orig_nodes, orig_load = _consensus.ConsensusJob.node_labels, _consensus.load_voxels

    def counted(self, block, *args, **kw):
        made.append(block.index)
        return orig_nodes(self, block, *args, **kw)
    monkeypatch.setattr(_consensus.ConsensusJob, "node_labels", counted)
    res, got = _blockwise(vol, tmp_path, client=client, block_shape=(32, 128, 128), halo=(32, 32, 32), orthoplane=True)
    np.testing.assert_array_equal(got, whole)
    assert sorted(made) == list(range(res.blocks)) and res.blocks > 1

    def lose_block_0(path):  # the kept objects of block 0 go missing
        return None if path.parent.name == "nodes" and path.stem == "0" else orig_load(path)
    monkeypatch.setattr(_consensus, "load_voxels", lose_block_0)
    made.clear()
    res, got = _blockwise(vol, tmp_path, name="again.zarr", client=client, block_shape=(32, 128, 128),
                          halo=(32, 32, 32), orthoplane=True)
    np.testing.assert_array_equal(got, whole)
    assert sorted(made) == sorted([*range(res.blocks), 0])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), rows=st.sampled_from([None, 1, 3]), seed=st.integers(0, 2**31 - 1))
def test_kept_voxels_come_back_as_kept(tmp_path_factory, n, rows, seed):
    """Voxels kept between passes (ascending flat indices, stored as steps; their values)
    come back exactly, none included."""
    from panoptem.distributed._pass1 import load_voxels, save_voxels
    rng = np.random.default_rng(seed)
    at = np.sort(rng.choice(1 << 40, n, replace=False)).astype(np.int64)
    values = rng.integers(0, 2**31 - 1, n if rows is None else (rows, n)).astype(np.int32)
    path = tmp_path_factory.mktemp("kept") / "v.npz"
    assert load_voxels(path) is None
    save_voxels(path, at, values)
    got_at, got_values = load_voxels(path)
    np.testing.assert_array_equal(got_at, at)
    np.testing.assert_array_equal(got_values, values)
    assert got_values.dtype == np.int32 and got_values.shape == values.shape


@pytest.mark.parametrize("params,block,halo", [({}, (8, 64, 64), (32, 32, 32)),
                                               ({"inference_plane": "yz"}, (16, 40, 48), (32, 32, 32)),
                                               ({"orthoplane": True, "fusion": "probability"}, (16, 64, 64),
                                                (32, 32, 32)),
                                               ({"orthoplane": True}, (8, 64, 64), (32, 32, 32))])
def test_blockwise_of_a_model_that_sees_neighbours_equals_whole_volume(vol, tmp_path, client, params, block, halo):
    """Blocks read the neighbouring slices of their first and last slice (card context_slices)."""
    whole = segment_3d(vol, neighbour_model(), **P, **params).labels["mitochondria"]
    res, got = _blockwise(vol, tmp_path, model=neighbour_model(), client=client, block_shape=block, halo=halo,
                          **params)
    assert res.blocks > 1
    np.testing.assert_array_equal(got, whole)
    assert res.objects["mitochondria"] >= 3
    assert not np.array_equal(whole, segment_3d(vol, dark_blob_model(), **P, **params).labels["mitochondria"])


@pytest.mark.parametrize("params,neighbours", [({"inference_plane": "xz"}, True), ({"inference_plane": "yz"}, False),
                                              ({"orthoplane": True, "fusion": "probability"}, True),
                                              ({"orthoplane": True}, False)])
def test_blockwise_thin_framed_volume_as_the_whole_volume(tmp_path, client, params, neighbours):
    """A volume thinner than the padding window in a black frame: its xz / yz planes (with their
    neighbours too) take the frame from the sections in blocks as in a whole-volume run, and a dark
    blob finder finds nothing in it (the frame is darker than any blob)."""
    vol = np.zeros((16, 160, 160), np.uint8)
    vol[:, 40:, 40:] = scene((16, 120, 120))
    m = neighbour_model() if neighbours else dark_blob_model()
    whole = segment_3d(vol, m, **P, **params).labels["mitochondria"]
    res, got = _blockwise(vol, tmp_path, model=m, client=client, block_shape=(16, 64, 64), halo=(32, 32, 32),
                          **params)
    assert res.blocks > 1 and whole.any() and not whole[:, :40].any() and not whole[..., :40].any()
    np.testing.assert_array_equal(got, whole)


def test_blockwise_regions_cut_thin_from_a_framed_volume_take_the_frame_from_the_sections(tmp_path, client):
    """Blocks 16 sections deep without a z halo cut a 40-section volume's xz planes thinner than
    the padding window: they take the frame from the sections, as the whole volume's planes see it
    themselves (objects filled the frame before)."""
    vol = np.zeros((40, 160, 160), np.uint8)
    vol[:, 40:, 40:] = scene((40, 120, 120))
    whole = segment_3d(vol, dark_blob_model(), **P, inference_plane="xz").labels["mitochondria"]
    res, got = _blockwise(vol, tmp_path, client=client, block_shape=(16, 64, 64), halo=(0, 32, 32),
                          inference_plane="xz")
    assert res.blocks > 1 and whole.any() and not whole[:, :40].any() and not whole[..., :40].any()
    assert not got[:, :40].any() and not got[..., :40].any()
    fa, fb = whole > 0, got > 0  # the blocks' z faces without a halo: some voxels differ (IoU 0.985)
    assert (fa & fb).sum() / (fa | fb).sum() > 0.98


@pytest.mark.parametrize("params,neighbours,block", [({"orthoplane": True}, False, (16, 64, 64)),
                                                    ({"orthoplane": True, "fusion": "probability"}, True, (16, 64, 64)),
                                                    ({"inference_plane": "xz"}, False, (16, 64, 64)),
                                                    ({"inference_plane": "yz"}, True, (8, 64, 48))])
def test_blockwise_xz_yz_stacks_average_planes_as_the_whole_volume(vol, tmp_path, client, params, neighbours, block):
    """At 2.5 nm and a 5 nm model, xz / yz network planes are each the mean of two (the
    stack's own axis brought to the model's pixels); blockwise runs reduce the volume so too,
    link on it with voxels counted on the volume's grid, and give the whole volume's labels."""
    if neighbours:
        m = neighbour_model(voxel_size_nm=5.0)
    else:
        m = dark_blob_model()
        m.card = m.card.model_copy(update={"voxel_size_nm": 5.0})
    vs = (2.5, 2.5, 2.5)
    whole = segment_3d(vol, m, voxel_size=vs, **P, **params)
    assert 2 in whole.pixel_size["stack_step"].values()
    res, got = _blockwise(vol, tmp_path, model=m, client=client, block_shape=block, halo=(16, 16, 16),
                          voxel_size=vs, **params)
    assert res.blocks > 1 and res.pixel_size["stack_step"] == whole.pixel_size["stack_step"]
    np.testing.assert_array_equal(got, whole.labels["mitochondria"])
    assert res.objects["mitochondria"] >= 3


@pytest.mark.parametrize("z_nm, xy_nm", [(12.5, 5.0), (2.5, 5.0), (20.0, 10.0)])
def test_blockwise_gives_neighbours_at_the_models_spacing_as_the_whole_volume(vol, tmp_path, client, z_nm, xy_nm):
    """Slices farther apart than the model's neighbours (interpolated between them) or closer
    (every second slice, so blocks read two more at each face), and slices enlarged x2 in-plane
    with neighbours a quarter of a slice away: blocks equal the whole volume."""
    m = neighbour_model(voxel_size_nm=5.0)
    vs = (z_nm, xy_nm, xy_nm)
    whole = segment_3d(vol, m, voxel_size=vs, **P).labels["mitochondria"]
    res, got = _blockwise(vol, tmp_path, model=m, client=client, block_shape=(8, 64, 64), halo=(32, 32, 32),
                          voxel_size=vs)
    assert res.blocks > 1
    np.testing.assert_array_equal(got, whole)
    assert not np.array_equal(whole, segment_3d(vol, m, **P).labels["mitochondria"])


@pytest.mark.parametrize("params", [{}, {"orthoplane": True}, {"maximum_objects_per_class": 0},
                                    {"orthoplane": True, "maximum_objects_per_class": 0}])
def test_semantic_only_writes_the_segment_as_in_memory(vol, tmp_path, client, params):
    """Semantic only: the class comes out as one segment (1), as a whole-volume run gives it
    (with ortho-plane consensus too, where the segment is voted as a semantic class; and
    without a label divisor, where the segment is the class id)."""
    whole = segment_3d(vol, dark_blob_model(), semantic_only=True, **P, **params).labels["mitochondria"]
    res, got = _blockwise(vol, tmp_path, client=client, block_shape=(16, 64, 64), halo=(32, 32, 32),
                          semantic_only=True, **params)
    assert np.unique(whole).tolist() == [0, 1] and res.objects["mitochondria"] == 1
    objects = segment_3d(vol, dark_blob_model(), **P, **params).labels["mitochondria"]
    assert (whole > 0).sum() > 0.8 * (objects > 0).sum()  # the segment covers what the objects cover
    np.testing.assert_array_equal(got, whole)


@pytest.mark.parametrize("params", [{}, {"label_dilation": 2}, {"orthoplane": True},
                                    {"orthoplane": True, "fusion": "probability"}])
def test_blockwise_fills_holes_as_the_whole_volume(vol, tmp_path, client, params):
    """Fill holes: a ring (one segment with Semantic only) whose hole crosses four blocks is
    filled as in a whole-volume run."""
    v = vol.copy()
    _, yy, xx = np.mgrid[: v.shape[0], : v.shape[1], : v.shape[2]]
    r2 = (yy - 64) ** 2 + (xx - 64) ** 2
    v[4:16][((r2 < 30 ** 2) & (r2 >= 14 ** 2))[4:16]] = 40
    kw = dict(semantic_only=True, fill_holes_in_segmentation=True, **params)
    whole = segment_3d(v, dark_blob_model(), **P, **kw).labels["mitochondria"]
    plain = segment_3d(v, dark_blob_model(), **P, **{**kw, "fill_holes_in_segmentation": False})
    filled = (whole != plain.labels["mitochondria"]).sum(axis=(1, 2))
    assert whole[6, 64, 64] == 1 and filled[4:8].min() > 100 and not filled[20:].any()  # the ring's hole
    res, got = _blockwise(v, tmp_path, client=client, block_shape=(16, 64, 64), halo=(32, 32, 32), **kw)
    assert res.blocks > 1
    np.testing.assert_array_equal(got, whole)


def test_an_object_erosion_removes_leaves_its_number_unused_as_in_memory(vol, tmp_path, client):
    """Erode labels removes a one-slice plate (numbered first); the blockwise labels keep the
    other objects' numbers, as the whole-volume run does."""
    v = vol.copy()
    v[0, 0:12, 10:80] = 40
    kw = dict(min_size=0, min_extent=0, median_slices=1, label_erosion=1)
    before = segment_3d(v, dark_blob_model(), **{**kw, "label_erosion": 0}).labels["mitochondria"]
    whole = segment_3d(v, dark_blob_model(), **kw).labels["mitochondria"]
    assert before[0, 5, 40] == 1 and 1 not in whole  # the plate, gone
    res, got = _blockwise(v, tmp_path, client=client, block_shape=(8, 64, 64), halo=(32, 32, 32), **kw)
    np.testing.assert_array_equal(got, whole)
    assert res.objects["mitochondria"] == len(np.unique(whole)) - 1


def test_blockwise_bridges_a_missing_slice_as_the_whole_volume(vol, tmp_path, client):
    """Gap bridging joins an object across a slice where it is missing; blockwise runs see the
    overlaps two slices apart (they lost them before, so bridged nothing)."""
    v = vol.copy()
    v[13, 20:40, 20:60] = 200  # the touching balls vanish from one slice
    kw = dict(median_slices=1, bridge_gaps=1)
    whole = segment_3d(v, dark_blob_model(), **P, **kw).labels["mitochondria"]
    apart = segment_3d(v, dark_blob_model(), **P, **{**kw, "bridge_gaps": 0}).labels["mitochondria"]
    assert len(np.unique(whole)) < len(np.unique(apart))  # bridged: fewer objects
    res, got = _blockwise(v, tmp_path, client=client, block_shape=(8, 64, 64), halo=(32, 32, 32), **kw)
    np.testing.assert_array_equal(got, whole)


def test_blockwise_repairs_crossings_as_the_whole_volume(tmp_path, client):
    """The X repair of linking uses the overlaps two slices apart also without gap bridging: many
    small pieces (Centers Min Distance 1) link as in the whole-volume run."""
    v = np.ascontiguousarray(scene((24, 96, 96))[:20])
    kw = dict(median_slices=1, maximum_objects_per_class=0, min_size=0, min_extent=0, confidence_thr=0.3,
              min_distance_object_centers=1)
    whole = segment_3d(v, dark_blob_model(), **kw).labels["mitochondria"]
    res, got = _blockwise(v, tmp_path, client=client, block_shape=(8, 32, 48), halo=(32, 32, 32), **kw)
    assert len(np.unique(whole)) > 30
    np.testing.assert_array_equal(got, whole)


@pytest.mark.parametrize("orthoplane", [False, True])
def test_image_downsampling_of_odd_sides_equals_whole_volume(tmp_path, client, orthoplane):
    """Image Downsampling 2 of a volume whose sides are odd: the last block's last network
    pixels are the means of the pixels left, as in the whole-volume run."""
    v = np.ascontiguousarray(scene((40, 120, 120))[:, :, :]) if orthoplane else scene((24, 96, 96))
    v = np.ascontiguousarray(v[:-1, 1:, 3:])  # 23 x 95 x 93 (39 x 119 x 117)
    v[:, -14:, -14:] = 40  # an object in the far corner, cut by both edges
    kw = dict(P, downsampling=2, median_slices=1, orthoplane=orthoplane)
    whole = segment_3d(v, dark_blob_model(), **kw).labels["mitochondria"]
    assert whole[v.shape[0] // 2, -1, -1] > 0
    _, got = _blockwise(v, tmp_path, client=client, block_shape=(32, 64, 64) if orthoplane else (8, 32, 48),
                        halo=(32, 32, 32), **{k: a for k, a in kw.items() if k not in P})
    np.testing.assert_array_equal(got, whole)


BLOCKWISE_COMBOS = st.fixed_dictionaries(dict(
    inference_plane=st.sampled_from(["xy", "xz", "yz"]), orthoplane=st.booleans(),
    fusion=st.sampled_from(["consensus", "probability"]), semantic_only=st.booleans(),
    fine_boundaries=st.booleans(), median_slices=st.sampled_from([1, 3, 5]),
    maximum_objects_per_class=st.sampled_from([0, 10000]), label_erosion=st.sampled_from([0, 1]),
    label_dilation=st.sampled_from([0, 2]), fill_holes_in_segmentation=st.booleans(),
    bridge_gaps=st.sampled_from([0, 1]), allow_one_view=st.booleans(), downsampling=st.sampled_from([1, 2]),
    min_size=st.sampled_from([0, 100]), min_extent=st.sampled_from([0, 3]),
    min_distance_object_centers=st.sampled_from([1, 3, 9]),
    block_shape=st.sampled_from([(8, 32, 48), (16, 64, 64), (24, 40, 96)])))


@settings(derandomize=True, database=None, deadline=None, print_blob=False, max_examples=12,
          suppress_health_check=[HealthCheck.too_slow])
@given(p=BLOCKWISE_COMBOS)
def test_blockwise_parameter_combinations_equal_whole_volume(client, p):
    """Random combinations of the run's parameters: blockwise gives the whole-volume labels."""
    import tempfile
    vol = scene((24, 96, 96))
    block = p.pop("block_shape")
    whole = segment_3d(vol, dark_blob_model(), **p).labels["mitochondria"]
    with tempfile.TemporaryDirectory() as d:
        res = segment_blockwise(vol, dark_blob_model(), Path(d) / "out.zarr", client=client, block_shape=block,
                                halo=(32, 32, 32), **p)
        np.testing.assert_array_equal(np.asarray(res.labels["mitochondria"][:]), whole)
        assert res.objects["mitochondria"] == len(np.unique(whole)) - 1


@pytest.mark.parametrize("kind,orthoplane", [("instance", False), ("instance", True), ("semantic", True)])
def test_two_classes_equal_whole_volume_with_their_counts(tmp_path, client, kind, orthoplane):
    """A two-class model, one plane or ortho-plane consensus: each class's labels and object
    count as the whole-volume run's (a consensus's counts come from its numbering, or, where a
    semantic class is voted over the objects, from the written labels)."""
    from _models import two_class_model
    from test_segment3d import two_class_phantom
    vol, _ = two_class_phantom()
    whole = segment_3d(vol, two_class_model(kind), orthoplane=orthoplane, **P)
    res = segment_blockwise(vol, two_class_model(kind), tmp_path / "o.zarr", client=client, orthoplane=orthoplane,
                            block_shape=(24, 64, 64), halo=(32, 32, 32), **P)
    assert set(res.labels) == set(whole.labels) == {"mitochondria", "nucleus"} and res.blocks > 1
    for name, lab in whole.labels.items():
        np.testing.assert_array_equal(np.asarray(res.labels[name][:]), lab)
        assert res.objects[name] == whole.objects[name] > 0
    if orthoplane:  # as in a whole-volume run, before any work
        with pytest.raises(PanoptemError, match="single-class models only"):
            segment_blockwise(vol, two_class_model(kind), tmp_path / "f.zarr", client=client, orthoplane=True,
                              fusion="probability")
        assert not (tmp_path / "f.zarr").exists() and not (tmp_path / ".f.zarr.blockwise").exists()


def test_a_mask_finds_objects_in_the_blocks_it_touches(tmp_path, client):
    """A rod through three blocks whose middle one lies outside the mask: the blocks are segmented
    as if the rest were empty, so the rod's two parts are two objects (the whole-volume labels
    times the mask hold one), on the same voxels (README, Resume)."""
    v = np.full((16, 64, 192), 200, np.uint8)
    v[4:12, 24:40, 8:184] = 40
    mask = np.ones(v.shape, bool)
    mask[:, :, 64:128] = False
    kw = dict(min_size=0, min_extent=0, median_slices=1)
    whole = segment_3d(v, dark_blob_model(), **kw).labels["mitochondria"] * mask
    res, got = _blockwise(v, tmp_path, client=client, block_shape=(16, 64, 64), halo=(8, 32, 32), mask=mask, **kw)
    assert np.array_equal(got > 0, whole > 0) and len(np.unique(whole)) == 2
    assert np.unique(got).tolist() == [0, 1, 2] and res.objects["mitochondria"] == 2
    assert len(np.unique(got[:, :, :64])) == 2 and len(np.unique(got[:, :, 128:])) == 2


def test_several_classes_without_a_divisor_are_refused_before_any_work(tmp_path, client):
    """Max objects per class 0 (ids 1..N) names no class: a two-class run would write every class
    empty (it did, and counted objects it had not written); refused in one line, in 2D, 3D and
    blockwise, before any output; Semantic only (labels are the classes) still runs."""
    from _models import two_class_model
    from panoptem import segment_2d
    from test_segment3d import two_class_phantom
    vol, _ = two_class_phantom()
    for run in (lambda: segment_3d(vol, two_class_model(), maximum_objects_per_class=0),
                lambda: segment_2d(vol[20], two_class_model(), maximum_objects_per_class=0),
                lambda: segment_blockwise(vol, two_class_model(), tmp_path / "o.zarr", client=client,
                                          maximum_objects_per_class=0)):
        with pytest.raises(PanoptemError, match="Max objects per class 0 .*mitochondria, nucleus.*set it above 0"):
            run()
    assert list(tmp_path.iterdir()) == []
    res = segment_3d(vol, two_class_model(), maximum_objects_per_class=0, semantic_only=True)
    assert all(lab.any() for lab in res.labels.values())


def test_touching_pair_across_a_face_stays_two_objects(tmp_path, client):
    zz, yy, xx = np.mgrid[:32, :64, :96]
    v = np.full((32, 64, 96), 200, np.uint8)
    for c in ((16, 32, 37), (16, 32, 59)):  # one dark region, two centres, the face at x = 48 between them
        v[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < 144] = 40
    whole = segment_3d(v, dark_blob_model(), **P).labels["mitochondria"]
    _, got = _blockwise(v, tmp_path, client=client, block_shape=(16, 32, 48), halo=(32, 32, 32))
    np.testing.assert_array_equal(got, whole)
    assert (v[16, 32, 30:66] < 100).all()  # touching in every slice through the middle
    a, b = got[16, 32, 37], got[16, 32, 59]
    assert a > 0 and b > 0 and a != b and len(np.unique(got)) == 3


def test_written_outputs_are_named_as_given(tmp_path, client, monkeypatch):
    """The run's record names its output as the user gave it (as a whole-volume run does)."""
    v = np.full((16, 64, 64), 200, np.uint8)
    v[4:12, 16:48, 16:48] = 40
    monkeypatch.chdir(tmp_path)
    r = segment_blockwise(v, dark_blob_model(), "rel.zarr", block_shape=(16, 64, 64), client=client, min_size=10)
    assert [w["output"] for w in r.written] == ["rel.zarr"] and (tmp_path / "rel.zarr").is_dir()


def test_ome_zarr_output_has_pyramid_and_voxel_size(tmp_path, client):
    big = np.full((32, 160, 160), 200, np.uint8)
    big[8:20, 40:120, 40:120] = 40
    r = segment_blockwise(big, dark_blob_model(), tmp_path / "m.zarr", block_shape=(16, 64, 64), halo=(8, 32, 32),
                          voxel_size=(10.0, 5.0, 5.0), client=client, min_size=10, min_extent=1)
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    nodes = list(Reader(parse_url(str(tmp_path / "m.zarr")))())
    assert nodes and len(nodes[0].data) == 2  # level 0 and one level halved in-plane
    assert [tuple(d.shape) for d in nodes[0].data] == [(32, 160, 160), (32, 80, 80)]
    ms = nodes[0].metadata
    assert ms["coordinateTransformations"][0][0]["scale"] == [10.0, 5.0, 5.0]
    assert ms["coordinateTransformations"][1][0]["scale"] == [10.0, 10.0, 10.0]
    import zarr
    assert "image-label" in zarr.open_group(str(tmp_path / "m.zarr")).attrs
    from panoptem.io.zarr_write import LABEL_CLEVEL
    codec = zarr.open_group(str(tmp_path / "m.zarr"))["0"].compressors[0]
    assert (codec.cname, codec.clevel) == ("zstd", LABEL_CLEVEL)
    assert read_image(tmp_path / "m.zarr").voxel_size == (10.0, 5.0, 5.0)
    lvl1 = np.asarray(nodes[0].data[1])
    np.testing.assert_array_equal(lvl1, np.asarray(r.labels["mitochondria"][:])[:, ::2, ::2])


def test_a_block_as_deep_as_the_volume_leaves_chunks_and_pyramid_free_in_depth(tmp_path, client):
    """A block spanning an axis (an ortho-plane run's thin volume, 33 deep here) does not
    force the output's chunks to divide its odd depth (1-deep chunks) nor drop the pyramid;
    chunks that straddle the blocks the volume is split into are still refused, before any work."""
    import zarr
    big = np.full((33, 160, 160), 200, np.uint8)
    big[8:20, 40:120, 40:120] = 40
    r = segment_blockwise(big, dark_blob_model(), tmp_path / "m.zarr", block_shape=(33, 64, 64), halo=(0, 32, 32),
                          voxel_size=(5.0, 5.0, 5.0), client=client, min_size=10, min_extent=1)
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    assert g["0"].chunks == (33, 64, 64)
    labels = np.asarray(r.labels["mitochondria"][:])
    assert labels.max() > 0 and "1" in g
    np.testing.assert_array_equal(np.asarray(g["1"][:]), labels[::2, ::2, ::2])
    with pytest.raises(PanoptemError, match=r"must divide the block shape \(33, 64, 64\)"):
        segment_blockwise(big, dark_blob_model(), tmp_path / "n.zarr", block_shape=(33, 64, 64), halo=(0, 32, 32),
                          chunks=(11, 48, 48), client=client)
    assert not (tmp_path / ".n.zarr.blockwise").exists()
    segment_blockwise(big, dark_blob_model(), tmp_path / "n.zarr", block_shape=(33, 64, 64), halo=(0, 32, 32),
                      chunks=(16, 32, 32), client=client, min_size=10, min_extent=1)
    assert zarr.open_group(str(tmp_path / "n.zarr"), mode="r")["0"].chunks == (16, 32, 32)
    segment_blockwise(big, dark_blob_model(), tmp_path / "c.zarr", block_shape=(33, 64, 64), halo=(0, 32, 32),
                      chunk_size="11,32,64", client=client, min_size=10, min_extent=1)  # the 3D dock's box
    gc = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert gc["0"].chunks == (11, 32, 64)  # 11 along the axis one block spans: any chunk fits it
    np.testing.assert_array_equal(gc["0"][:], labels)
    np.testing.assert_array_equal(gc["1"][:], labels[::2, ::2, ::2])


class _Stop(Exception):
    pass


def test_write_pass_resumes_and_counts_objects_from_the_blocks(on_disk, tmp_path, vol, client, monkeypatch):
    """A masked run (objects counted from the ids each block wrote, not by reading the output
    back) interrupted while writing resumes with the same labels and count, blocks marked by an
    earlier release (no ids kept) included; the same call again with its work kept writes
    the labels again (its blocks' marks belonged to the output it moved into place)."""
    from panoptem.distributed import _write
    mask = np.zeros((40, 30, 30), bool)  # 4x smaller in-plane: two thirds of the volume
    mask[:, :20] = True
    kw = dict(block_shape=(16, 64, 64), halo=(32, 32, 32), mask=mask, client=client, **P)
    ref = segment_3d(vol, dark_blob_model(), **P).labels["mitochondria"] * np.repeat(np.repeat(mask, 4, 1), 4, 2)
    n_ref = len(np.unique(ref)) - 1
    assert 2 <= n_ref < len(np.unique(segment_3d(vol, dark_blob_model(), **P).labels["mitochondria"])) - 1
    real, calls = _write.write_block, []

    def stops(job, block):
        calls.append(block.index)
        if len(calls) == 5:
            raise _Stop
        return real(job, block)
    monkeypatch.setattr(_write, "write_block", stops)
    src, out = str(on_disk / "vol.tif"), tmp_path / "m.zarr"
    with pytest.raises(_Stop):
        segment_blockwise(src, dark_blob_model(), out, **kw)
    monkeypatch.setattr(_write, "write_block", real)
    marks = list((tmp_path / ".m.zarr.blockwise").rglob("written/*"))
    # four written, and those the worker took before the cancelling reached it (each runs to its
    # end: one, or more on a loaded machine), but not all of them
    assert len(marks) >= 4 and all(m.stat().st_size > 0 for m in marks)
    marks[0].write_bytes(b"")  # as an earlier release left them
    res = segment_blockwise(src, dark_blob_model(), out, **kw)
    np.testing.assert_array_equal(np.asarray(res.labels["mitochondria"][:]), ref)
    assert res.objects["mitochondria"] == n_ref and res.blocks - res.skipped_blocks > len(marks)
    for _ in range(2):
        res = segment_blockwise(src, dark_blob_model(), out, overwrite=True, keep_work=True, **kw)
        np.testing.assert_array_equal(np.asarray(res.labels["mitochondria"][:]), ref)
        assert res.objects["mitochondria"] == n_ref


def test_the_linking_reads_numbers_per_piece_not_pixels(on_disk, tmp_path, client):
    """The client reads every block's table of pieces at once: the tables hold a few numbers per
    piece, and the labels of the slices each block decoded before its core (pixels, as many as
    its in-plane size) lie apart, compressed, read by that block's own halo task. Tables of an
    earlier release, which held those labels, still resume."""
    import tracemalloc

    from panoptem.distributed import _pass1, _stitch
    kw = dict(block_shape=(8, 120, 120), halo=(16, 32, 32), client=client, overwrite=True, keep_work=True)
    src = str(on_disk / "vol.tif")  # a run from a file resumes
    res, first = _blockwise(src, tmp_path, **kw)
    blocks = tmp_path / ".out.zarr.blockwise" / "stack_xy" / "blocks"
    tables = sorted((f for f in blocks.glob("*.npz") if f.stem.isdigit()), key=lambda f: int(f.stem))
    assert len(tables) == 5
    halo_pixels = 2 * 120 * 120  # two slices before the core, in every block but the first
    for i, f in enumerate(tables):
        with np.load(f) as t:
            assert sum(t[k].nbytes for k in t.files) < halo_pixels, (f.name, {k: t[k].shape for k in t.files})
            assert t["halo_planes"].size == (2 if i else 0)
        maps = _pass1.load_labels(_pass1.halo_file(blocks.parent, i))
        assert (maps is None) if i == 0 else (maps.shape == (2, 120, 120) and maps.any())
        if i:
            assert _pass1.halo_file(blocks.parent, i).stat().st_size < maps.nbytes / 4
    job = SimpleNamespace(work=str(blocks.parent))
    _stitch.piece_tables(job, BlockGrid((40, 120, 120), (8, 120, 120)))  # imports and caches: not the tables
    tracemalloc.start(32)
    got = _stitch.piece_tables(job, BlockGrid((40, 120, 120), (8, 120, 120)))
    _, peak = tracemalloc.get_traced_memory()
    # kept by the call itself: not what the module's in-process Dask cluster allocates meanwhile
    mine = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*panoptem*", all_frames=True)])
    kept = sum(t.size for t in mine.traces)
    tracemalloc.stop()
    # below the halo labels as uint32 of one block (kept) and of every block (at the peak)
    assert len(got) == 5 and kept < halo_pixels * 4 and peak < 4 * halo_pixels * 4, (kept, peak)
    for i, f in enumerate(tables[1:], 1):  # as an earlier release kept them
        maps = _pass1.load_labels(_pass1.halo_file(blocks.parent, i))
        with np.load(f) as t:
            old = {k: t[k] for k in t.files}
        _pass1.save_npz(f, **old, halo_maps=maps.astype(np.uint32))
        _pass1.halo_file(blocks.parent, i).unlink()
    res, again = _blockwise(src, tmp_path, **kw)
    np.testing.assert_array_equal(again, first)
    assert not list(blocks.glob("*.halo.npz"))  # resumed from the old tables


def test_empty_blocks_are_skipped_and_mask_limits_the_run(vol, tmp_path, client):
    v = vol.copy()
    v = np.concatenate([v, np.full((40, 120, 120), 200, np.uint8)], axis=2)  # a blank half
    whole = segment_3d(v, dark_blob_model(), **P).labels["mitochondria"]
    res, got = _blockwise(v, tmp_path, client=client, block_shape=(40, 120, 120), halo=(0, 0, 0))
    assert res.skipped_blocks == 1 and res.blocks == 2
    np.testing.assert_array_equal(got, whole)
    mask = np.zeros((40, 30, 60), bool)  # 4x smaller in-plane: the left half only
    mask[:, :, :30] = True
    res, got = _blockwise(v, tmp_path, "masked.zarr", client=client, block_shape=(40, 120, 120), halo=(0, 0, 0),
                          mask=mask)
    assert res.skipped_blocks == 1
    assert not got[:, :, 120:].any() and (got[:, :, :120] > 0).sum() == (whole[:, :, :120] > 0).sum()
    import h5py
    with h5py.File(tmp_path / "mask.h5", "w") as f:   # one plane: read as 2D, it applies to every slice
        f["m"] = mask[:1]
    for i, flat in enumerate((mask[0], str(tmp_path / "mask.h5"))):
        _, again = _blockwise(v, tmp_path, f"flat{i}.zarr", client=client, block_shape=(40, 120, 120),
                              halo=(0, 0, 0), mask=flat)
        np.testing.assert_array_equal(again, got)


def test_zero_padding_is_background_as_in_memory(tmp_path, client):
    """A zero-padded part (an aligned stack's border) is background in both engines: blocks all
    padding are skipped, blocks that hold some see it as padding, as the whole planes do (the
    in-memory run found it as an object, so the two disagreed)."""
    v = np.zeros((4, 64, 256), np.uint8)
    v[:, :, :100] = 200
    v[:, 20:40, 20:40] = v[:, 30:50, 80:120] = 30     # the second blob reaches into the padding
    kw = dict(min_size=10, min_extent=1)
    whole = segment_3d(v, dark_blob_model(), **{**P, **kw}).labels["mitochondria"]
    assert not whole[:, :, 124:].any() and whole[:, 25, 25].all() and whole[:, 40, 110].all()
    for halo in ((0, 32, 32), (0, 64, 64)):  # padding is seen where the halo reaches 32 pixels past it
        _, got = _blockwise(v, tmp_path, f"p{halo[1]}.zarr", client=client, block_shape=(4, 64, 64), halo=halo,
                            **kw)
        np.testing.assert_array_equal(got > 0, whole > 0)


def test_a_mask_skips_blocks_of_an_xz_stack_that_averages_its_planes(vol, tmp_path, client):
    # at 2.5 nm and a 5 nm model the xz stack's blocks are along y of the volume halved: the mask
    # (on the volume's grid) must still tell which of them to skip
    m = dark_blob_model()
    m.card = m.card.model_copy(update={"voxel_size_nm": 5.0})
    v = np.concatenate([vol, vol[:, ::-1]], axis=1)  # objects in both halves along y
    kw = dict(inference_plane="xz", voxel_size=(2.5, 2.5, 2.5))
    whole = segment_3d(v, m, **P, **kw).labels["mitochondria"]
    mask = np.zeros(v.shape, bool)
    mask[:, :120] = True
    res, got = _blockwise(v, tmp_path, model=m, client=client, block_shape=(40, 120, 120), halo=(0, 0, 0),
                          mask=mask, **kw)
    assert res.pixel_size["stack_step"] == {"xz": 2} and res.blocks == 2 and res.skipped_blocks == 1
    assert not got[:, 120:].any() and whole[:, :120].any() and whole[:, 120:].any()
    np.testing.assert_array_equal(got[:, :120] > 0, whole[:, :120] > 0)


def test_cache_re_decodes_without_the_network(vol, tmp_path, client, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)  # a relative cache folder: where the caller sees it, whatever the workers' folder
    first, _ = _blockwise(vol, tmp_path, "a.zarr", client=client, block_shape=(16, 64, 64), halo=(32, 32, 32),
                          cache_dir="cache")
    assert first.timings["network_s"] > 0 and (cache / "xy.zarr").is_dir()
    kw = dict(confidence_thr=0.8, center_confidence_thr=0.3, min_size=300)
    from panoptem.distributed import _pass1
    read = []
    monkeypatch.setattr(_pass1, "uniform_of", lambda *a: read.append(1) or ((), (), ()))
    again, got = _blockwise(vol, tmp_path, "b.zarr", client=client, block_shape=(16, 64, 64), halo=(32, 32, 32),
                            cache_dir=cache, **kw)
    assert again.timings["network_s"] == 0 and not read  # nor a pass over the volume for its planes of one value
    whole = segment_3d(vol, dark_blob_model(), **{**P, **kw}).labels["mitochondria"]
    np.testing.assert_array_equal(got, whole)
    with pytest.raises(PanoptemError, match=r"different run \(block shape differs\)"):
        _blockwise(vol, tmp_path, "c.zarr", client=client, block_shape=(8, 64, 64), halo=(32, 32, 32),
                   cache_dir=cache)


def test_first_pixel_of_each_piece_in_raster_order():
    """The decode pass finds each 2D piece's first pixel from its bounding box: the same pixel
    as the first occurrence in the flattened image, for random pieces and small row batches."""
    import cc3d
    from panoptem.distributed._pass1 import _first_columns
    rng = np.random.default_rng(0)
    for _ in range(30):
        img = rng.random((int(rng.integers(5, 120)), int(rng.integers(5, 200)))) > 0.6
        pieces = cc3d.connected_components(img.astype(np.uint8), connectivity=8)
        if not pieces.max():
            continue
        u, first = np.unique(pieces.ravel(), return_index=True)
        first = first[u > 0]
        bb = np.asarray(cc3d.statistics(pieces, no_slice_conversion=True)["bounding_boxes"][1:], np.int64)
        np.testing.assert_array_equal(bb[:, 0], first // pieces.shape[1])
        np.testing.assert_array_equal(_first_columns(pieces, bb[:, 0], cells=500), first % pieces.shape[1])


def test_refusals(vol, tmp_path):
    with pytest.raises(PanoptemError, match=".zarr"):
        segment_blockwise(vol, dark_blob_model(), tmp_path / "x.tif")
    with pytest.raises(PanoptemError, match="stacks"):
        segment_blockwise(vol, dark_blob_model(), tmp_path / "x.zarr", return_panoptic=True)
    with pytest.raises(PanoptemError, match="Z,Y,X"):
        segment_blockwise(vol, dark_blob_model(), tmp_path / "x.zarr", block_shape="8,8")
    (tmp_path / "y.zarr").mkdir()
    with pytest.raises(PanoptemError, match="exists"):
        segment_blockwise(vol, dark_blob_model(), tmp_path / "y.zarr")
    for mask in (np.ones(vol.shape[1:2], bool), np.ones((vol.shape[0] * 2, *vol.shape[1:]), bool),
                 np.ones((vol.shape[0], vol.shape[1] - 3, vol.shape[2]), bool)):  # 1D, larger, a factor not whole
        with pytest.raises(PanoptemError, match="mask's shape"):
            segment_blockwise(vol, dark_blob_model(), tmp_path / "m.zarr", mask=mask)
    assert not (tmp_path / "m.zarr").exists() and not (tmp_path / ".m.zarr.blockwise").exists()


def test_a_run_record_cut_short_starts_the_work_afresh(tmp_path):
    """run.json emptied or cut short (a full disk) is no reason to stop: the work starts afresh."""
    import json

    from panoptem.distributed.segment import _prepare_work
    work = tmp_path / ".o.zarr.blockwise"
    (work / "net_xy.zarr").mkdir(parents=True)
    for text in ("", '{"net": {"model": "x"'):
        (work / "run.json").write_text(text)
        _prepare_work(work, {"net": {"model": "y"}, "params": {}}, array_source=False)
        assert json.loads((work / "run.json").read_text()) == {"net": {"model": "y"}, "params": {}}
        assert sorted(p.name for p in work.iterdir()) == ["run.json"]
        (work / "net_xy.zarr").mkdir()


def test_a_cache_record_cut_short_is_refused_in_one_line(tmp_path):
    """An earlier release wrote the cache's STACK.json in place: cut short, it gave a JSONDecodeError."""
    from panoptem.distributed.segment import _check_cache
    for damaged in (b'{"model": "x", "wei', b"\xff\xfe\x00", b"[1, 2]"):  # cut short, not text, not a record
        (tmp_path / "xy.json").write_bytes(damaged)
        with pytest.raises(PanoptemError, match="xy.json is damaged"):
            _check_cache(tmp_path, tmp_path / "xy.zarr", {"model": "x"})
    _check_cache(tmp_path / "fresh", tmp_path / "fresh" / "xy.zarr", {"model": "x"})
    assert (tmp_path / "fresh" / "xy.json").read_text() == '{"model": "x"}'


def test_whole_volume_and_blockwise_caches_are_not_taken_for_each_other(vol, tmp_path, client):
    """A whole-volume run given a blockwise run's cache deleted its arrays (and crashed); a
    blockwise run wrote into a whole-volume cache, whose run then gave other labels. Each is
    refused, and the other's cache stays as it was; a blockwise cache killed while its arrays
    were being made is made afresh."""
    import zarr
    kw = dict(client=client, block_shape=(16, 64, 64), halo=(8, 32, 32))
    _blockwise(vol, tmp_path, "b.zarr", cache_dir=tmp_path / "bw", keep_work=False, **kw)
    before = sorted(zarr.open_group(str(tmp_path / "bw" / "xy.zarr")).keys())
    with pytest.raises(PanoptemError, match="holds a blockwise run's"):
        segment_3d(vol, dark_blob_model(), cache_dir=tmp_path / "bw", **P)
    assert sorted(zarr.open_group(str(tmp_path / "bw" / "xy.zarr")).keys()) == before
    whole = segment_3d(vol, dark_blob_model(), cache_dir=tmp_path / "w", keep_cache=True, **P)
    with pytest.raises(PanoptemError, match="holds a whole-volume run's"):
        _blockwise(vol, tmp_path, "c.zarr", cache_dir=tmp_path / "w", **kw)
    again = segment_3d(vol, dark_blob_model(), cache_dir=tmp_path / "w", **P)
    np.testing.assert_array_equal(again.labels["mitochondria"], whole.labels["mitochondria"])
    g = zarr.open_group(str(tmp_path / "bw" / "xy.zarr"), mode="a")   # killed after its first array
    for name in ("heatmap", "offsets"):
        del g[name]
    _, got = _blockwise(vol, tmp_path, "d.zarr", cache_dir=tmp_path / "bw", **kw)
    np.testing.assert_array_equal(got, whole.labels["mitochondria"])


def test_a_cache_is_not_reused_for_another_mask_key_or_a_rewritten_input(vol, tmp_path, client):
    """The network outputs kept for one input are not another's: a mask of other voxels, another
    dataset of the same file, a store rewritten in place with the same shape and range."""
    import h5py
    import zarr
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"], f["b"] = vol, vol[:, ::-1]
    zarr.open_group(str(tmp_path / "v.zarr"), mode="w").create_array("raw", data=vol, chunks=(8, 64, 64))
    kw = dict(client=client, block_shape=(16, 64, 64), halo=(8, 32, 32), cache_dir=tmp_path / "cache")
    half = np.zeros(vol.shape, bool)
    half[:, :, :60] = True
    cases = [(dict(mask=half), dict(mask=~half), "mask differs"),
             (dict(key="a"), dict(key="b"), "key differ")]
    for i, (first, second, why) in enumerate(cases):
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)
        source = vol if "mask" in first else str(tmp_path / "two.h5")
        _blockwise(source, tmp_path, f"a{i}.zarr", **first, **kw)
        with pytest.raises(PanoptemError, match=why):
            _blockwise(source, tmp_path, f"b{i}.zarr", **second, **kw)
    shutil.rmtree(tmp_path / "cache")
    _blockwise(str(tmp_path / "v.zarr"), tmp_path, "c.zarr", key="raw", **kw)
    zarr.open_group(str(tmp_path / "v.zarr"), mode="r+")["raw"][:] = vol[:, ::-1]   # rewritten in place
    with pytest.raises(PanoptemError, match=r"\(content differs\)"):
        _blockwise(str(tmp_path / "v.zarr"), tmp_path, "d.zarr", key="raw", **kw)


def test_workers_run_the_network_as_asked(vol, tmp_path, client, monkeypatch):
    """runtime / precision / threads reach the workers' predictors (``auto``: ONNX Runtime on a
    CPU for panoptem's own network, tiles given their slice's context included), and both
    runtimes give the same objects."""
    pytest.importorskip("onnxruntime")
    from panoptem.inference.engine import Predictor
    from panoptem.models.load import load_model
    model = load_model("MitoLite_v1", "cpu")  # panoptem's own network: it finds the scene's dark balls
    made = []
    init = Predictor.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        made.append((self.runtime, self.precision, self.threads))
    monkeypatch.setattr(Predictor, "__init__", spy)
    from panoptem.inference import runtime
    graphs, onnx_net = set(), runtime.onnx_net

    def graph_spy(model, threads, graph="plain", precision="fp32"):
        graphs.add((graph, precision))
        return onnx_net(model, threads, graph, precision)
    monkeypatch.setattr(runtime, "onnx_net", graph_spy)
    bw = dict(block_shape=(16, 64, 64), halo=(8, 32, 32))  # blocks cut slices: each is given its context
    auto, a = _blockwise(vol, tmp_path, "auto.zarr", model=model, client=client, threads=1, **bw)
    assert auto.timings["context_pass_s"] > 0
    assert made and set(made) == {("onnx", "fp32", 1)} and graphs == {("encode", "fp32"), ("context", "fp32")}
    made.clear()
    _, t = _blockwise(vol, tmp_path, "torch.zarr", model=model, client=client, runtime="torch", **bw)
    assert made and set(made) == {("torch", "fp32", None)}
    assert auto.objects["mitochondria"] >= 3 and ((a > 0) == (t > 0)).mean() > 0.999
    with pytest.raises(PanoptemError, match="Runtime"):
        _blockwise(vol, tmp_path, "bad.zarr", model=model, client=client, runtime="tensorrt", **bw)


# ---------------------------------------------------------------- processes, schedulers, kills


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory, vol):
    """The scene as a TIFF and the oracle as a TorchScript card: what separate processes can open."""
    d = tmp_path_factory.mktemp("bw")
    tifffile.imwrite(d / "vol.tif", vol, metadata={"axes": "ZYX"})
    torch.jit.save(torch.jit.script(DarkBlobNet()), str(d / "oracle.pt"))
    card = {"name": "oracle", "label_divisor": None, "padding_factor": 32,
            "weights": {"file": "oracle.pt", "sha256": sha256_of(d / "oracle.pt"), "format": "torchscript"}}
    (d / "oracle.yaml").write_text(yaml.safe_dump(card))
    return d


def _cores():
    from panoptem.inference.runtime import cpu_count
    return cpu_count()


def test_workers_of_a_running_cluster_take_their_share_of_the_cores():
    """Workers started elsewhere are capped at their host's cores over its task slots (two
    single-thread workers on this host: half each), so concurrent blocks do not each run the
    network on every core."""
    from distributed import LocalCluster

    from panoptem.distributed._cluster import client_for, slots_per_host
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        with client_for(scheduler=lc.scheduler_address) as cl:
            assert sum(slots_per_host(cl).values()) == 2
            got = sorted(cl.run(_cores).values())
    assert got == [max(1, len(os.sched_getaffinity(0)) // 2)] * 2


def test_a_scheduler_without_workers_is_waited_on_saying_so():
    """A scheduler whose workers a batch system is still starting: the run said "0 worker(s)",
    set their threads up for none and waited unseen; it now says it waits, and goes on (the
    workers set up) once one joins."""
    import threading

    from distributed import LocalCluster

    from panoptem.distributed._cluster import client_for
    said, got = [], {}
    with LocalCluster(n_workers=0, threads_per_worker=1, processes=False, dashboard_address=None) as lc:
        def run():
            with client_for(scheduler=lc.scheduler_address, log=said.append) as cl:
                got["cores"] = list(cl.run(_cores).values())
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(3)
        assert t.is_alive() and "cores" not in got
        assert any("no worker yet" in s for s in said)
        lc.scale(1)
        t.join(60)
    assert not t.is_alive() and len(got["cores"]) == 1
    assert any("1 worker(s)" in s for s in said)


def test_a_scheduler_that_never_answers_or_is_lost_is_one_error(monkeypatch, tmp_path):
    """A port that accepts and never speaks Dask (a dashboard's given for the scheduler's) is
    refused within the deadline, not waited on forever; a pass ended by the lost scheduler is
    told apart from a task's own error."""
    import socket
    import threading
    from concurrent.futures import CancelledError

    from panoptem.distributed import _cluster
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held = []
    threading.Thread(target=lambda: [held.append(srv.accept()) for _ in range(4)], daemon=True).start()
    monkeypatch.setattr(_cluster, "CONNECT_S", 2.0)
    import dask
    from distributed.client import _get_global_client
    default, scheduler = _get_global_client(), dask.config.get("scheduler", None)
    address = f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    with pytest.raises(PanoptemError, match="no answer in 2 s"):
        with _cluster.client_for(scheduler=address):
            pass
    # a run that reached no cluster did nothing: nothing is left beside its output
    out = tmp_path / "o.zarr"
    with pytest.raises(PanoptemError, match="no answer"):
        segment_blockwise(np.full((4, 64, 64), 100, np.uint8), dark_blob_model(), out, scheduler=address)
    assert not any(p.name.startswith(".o.zarr.blockwise") for p in tmp_path.iterdir())
    # the client left waiting is not the process's default: later dask computations run as before
    assert _get_global_client() is default and dask.config.get("scheduler", None) == scheduler
    for conn, _ in held:  # the peer hangs up: the clients left waiting give up
        conn.close()
    srv.close()
    waiting = [t for t in threading.enumerate() if t.name == "scheduler-connect"]
    for t in waiting:
        t.join(60)
    assert not any(t.is_alive() for t in waiting)

    class Client:
        def __init__(self, status):
            self.status = status
    lost = CancelledError("network_block-1 cancelled for reason: scheduler-connection-lost.")
    assert _cluster._scheduler_lost(Client("running"), lost)
    assert _cluster._scheduler_lost(Client("closed"), OSError("connection reset"))
    assert not _cluster._scheduler_lost(Client("running"), OSError("a task could not read its block"))
    assert not _cluster._scheduler_lost(Client("closed"), ValueError("a task's own error"))


def _arena_env():
    return os.environ.get("MALLOC_ARENA_MAX")


def test_panoptems_workers_start_with_few_malloc_arenas(monkeypatch):
    """Worker processes of panoptem's own cluster start with two malloc arenas (freed memory
    spread over many stays resident, above a memory limit's pause mark), unless the
    environment asks for another number; the worker plugin (also on a running cluster) caps them at setup."""
    from distributed import Client

    from panoptem.distributed._cluster import WORKER_ARENAS, _WorkerSetup, local_cluster
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    with local_cluster(1, dashboard_address=None) as lc, Client(lc) as cl:
        assert list(cl.run(_arena_env).values()) == [str(WORKER_ARENAS)]
        calls = []
        monkeypatch.setattr("panoptem._memory.limit_arenas", lambda n=2: calls.append(n) or True)
        _WorkerSetup(None, 0).setup(type("W", (), {"name": "0", "address": "tcp://127.0.0.1:1"})())
        assert calls == [WORKER_ARENAS]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    with local_cluster(1, dashboard_address=None) as lc, Client(lc) as cl:
        assert list(cl.run(_arena_env).values()) == ["4"]


def _thread_budget():
    from panoptem.inference.runtime import _thread_budget
    return _thread_budget[0]


def test_a_callers_client_gets_its_workers_set_up(client):
    """A client the caller hands in has its worker processes set up as panoptem's own:
    each capped at its share of the host's cores; a worker thread in the caller's own
    process leaves the caller's thread budget alone."""
    from distributed import Client, LocalCluster

    from panoptem.distributed._cluster import callers_client
    from panoptem.inference import runtime
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            Client(lc) as cl:
        with callers_client(cl) as got:
            assert got is cl
        assert list(cl.run(_thread_budget).values()) == [max(1, runtime.cpu_count() // 2)] * 2
        assert cl.status == "running"  # left open for its owner
    before = runtime._thread_budget[0]
    runtime._thread_budget[0] = -7  # a mark the plugin would overwrite
    try:
        with callers_client(client):
            pass
        assert runtime._thread_budget[0] == -7
        assert "panoptem-setup" in client.run(lambda dask_worker: list(dask_worker.plugins)).popitem()[1]
    finally:
        runtime._thread_budget[0] = before


def test_panoptems_own_worker_processes_leave_failed_tasks_to_the_caller(caplog):
    """On panoptem's own cluster a worker process does not dump a failed task on the terminal:
    the caller raises it again (one line on the command line). Other worker errors still show,
    and a worker in the caller's process (or of a user's cluster) logs as it did."""
    import logging

    from panoptem.distributed import _cluster
    log = logging.getLogger("distributed.worker")
    worker = SimpleNamespace(name="0", address="tcp://127.0.0.1:1")
    for caller, quiet, dumped in ((-1, True, False), (os.getpid(), True, True), (-1, False, True)):
        before = list(log.filters)
        plugin = _cluster._WorkerSetup(None, 0, quiet_failures=quiet)
        plugin.caller_pid = caller  # -1: the worker runs in another process than the caller
        try:
            plugin.setup(worker)
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="distributed.worker"):
                log.error("Compute Failed\nKey:       %s\n", "network_block-0")
                log.error("Worker stream died")
            assert ("Compute Failed" in caplog.text) == dumped, (caller, quiet)
            assert "Worker stream died" in caplog.text
        finally:
            log.filters[:] = before


def test_a_worker_that_keeps_dying_stops_the_run_with_what_to_do(tmp_path):
    """Dask gives up on a task whose workers died (out of memory, most often) after its allowed
    failures: the run stops with one message naming the pass and the way on, not Dask's error.
    (In a fresh process, as a command-line run: one client there.)"""
    (tmp_path / "dying.py").write_text(textwrap.dedent("""
        import os
        def dies(job, item):
            if item == 2:
                os._exit(3)  # as the system's out-of-memory killer leaves a worker
            return item
    """))
    (tmp_path / "run.py").write_text(textwrap.dedent("""
        import dask
        from dying import dies
        from panoptem.distributed import _cluster
        from panoptem.errors import PanoptemError
        if __name__ == "__main__":
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}), _cluster.client_for(1) as client:
                try:
                    _cluster.run_tasks(client, dies, None, [0, 1, 2, 3], "xy network", False)
                except PanoptemError as e:
                    print("refused:", e)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(tmp_path / "run.py")], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    lines = [line for line in run.stdout.splitlines() if line.startswith("refused:")]
    assert run.returncode == 0 and len(lines) == 1, run.stdout[-2000:] + run.stderr[-3000:]
    msg = lines[0]
    assert "xy network pass" in msg and "1 time(s) on one of its 4 task(s)" in msg, msg
    assert all(w in msg for w in ("memory", "--workers", "--block-shape", "run the same command again")), msg


def test_arena_cap_leaves_the_environments_choice(monkeypatch):
    """The cap is set where the environment has none, and left to it where it has one."""
    import sys

    from panoptem._memory import limit_arenas
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_arenas(2) is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_arenas(2) is sys.platform.startswith("linux")


@pytest.mark.slow
def test_worker_processes_and_external_scheduler_agree(on_disk, tmp_path, vol, capsys):
    """The command line with two local worker processes, and a scheduler started
    elsewhere (one worker process), give the labels of a whole-volume run (one
    in-process worker: the tests above); so does blockwise measurement."""
    from distributed import LocalCluster

    from panoptem.cli import main
    from panoptem import measure
    card = str(on_disk / "oracle.yaml")
    code = main(["segment3d", str(on_disk / "vol.tif"), "-o", str(tmp_path / "two.zarr"), "--model", card,
                 "--blockwise", "--block-shape", "16,64,64", "--halo", "32,32,32", "--workers", "2",
                 "--min-size", "100", "--min-extent", "3", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    kw = dict(block_shape=(16, 64, 64), halo=(32, 32, 32), processes=True, **P)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        ext = segment_blockwise(str(on_disk / "vol.tif"), card, tmp_path / "ext.zarr", scheduler=lc.scheduler_address,
                                **kw)
        # a process of its own, whose only client is the scheduler's (not the default client): its passes
        # waited on the default client and failed with "No clients found"
        cmd = [sys.executable, "-m", "panoptem", "measure", str(tmp_path / "ext.zarr"), "-o", str(tmp_path / "e.csv"),
               "--blockwise", "--block-shape", "16,64,64", "--scheduler", lc.scheduler_address]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0 and (tmp_path / "e.csv").is_file(), done.stderr[-2000:]
    ref = segment_3d(vol, dark_blob_model(), **P).labels["mitochondria"]
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "two.zarr").data[:]), ref)
    np.testing.assert_array_equal(np.asarray(ext.labels["mitochondria"][:]), ref)
    code = main(["measure", str(tmp_path / "two.zarr"), "-o", str(tmp_path / "t.csv"), "--blockwise",
                 "--block-shape", "16,32,64", "--workers", "2", "--voxel-size", "30,5,5"])
    assert code == 0, capsys.readouterr().err
    import csv
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    want = measure(ref, voxel_size=(30, 5, 5))
    assert [int(r["label"]) for r in rows] == want["label"].tolist()
    for col in ("volume_nm3", "centroid_x_nm", "surface_area_nm2", "major_axis_length_nm"):
        np.testing.assert_allclose([float(r[col]) for r in rows], want[col], rtol=1e-6)


def test_blockwise_measure_equals_measure(client):
    from panoptem.distributed.measure import measure_blockwise
    from panoptem import measure
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:40, :90, :100]
    lab = np.zeros((40, 90, 100), np.uint32)
    for i in range(1, 15):  # ellipsoids, many across block faces and the volume's border
        c, r = rng.uniform([0, 0, 0], [40, 90, 100]), rng.uniform(2, 12, 3)
        lab[((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1] = i * 7
    lab[0, 0, 0], lab[39, 89, 99], lab[20, 45, 50] = 200, 201, 202  # single voxels: not smoothed
    img = rng.integers(0, 255, lab.shape).astype(np.float32)
    img[rng.random(lab.shape) < 0.01] = np.nan  # padding here and there: left out of the means alike
    ref = measure(lab, voxel_size=(30, 5, 5), image=img, label_divisor=100)
    assert np.isfinite(ref["mean_intensity"]).all()
    for bs in [(16, 32, 40), (40, 45, 100)]:
        got = measure_blockwise(lab, voxel_size=(30, 5, 5), image=img, label_divisor=100, block_shape=bs,
                                client=client)
        assert list(got) == list(ref)
        for k in ref:
            np.testing.assert_allclose(np.asarray(got[k], float), np.asarray(ref[k], float), rtol=1e-7, atol=1e-6,
                                       err_msg=k)


def test_blockwise_measure_of_ids_past_2_63_and_of_negative_ids_as_in_memory(client):
    """uint64 ids past 2^63 keep their order and classes (they were turned negative); negative
    ids are refused as the in-memory measure refuses them (blockwise wrote rows for them)."""
    from panoptem import measure
    from panoptem.distributed.measure import measure_blockwise
    lab = np.zeros((6, 20, 20), np.uint64)
    lab[0, 0, 0] = 7
    lab[1:4, 2:9, 3:8] = 2**63 + 5
    lab[2:6, 10:18, 12:20] = 2**64 - 1
    ref = measure(lab, label_divisor=1000)
    got = measure_blockwise(lab, label_divisor=1000, block_shape=(3, 10, 10), client=client)
    assert got["label"].tolist() == ref["label"].tolist() == [7, 2**63 + 5, 2**64 - 1]
    assert got["class_id"].tolist() == ref["class_id"].tolist() and got["voxels"].tolist() == ref["voxels"].tolist()
    neg = lab.astype(np.int64)
    neg[neg < 0] = -5
    with pytest.raises(PanoptemError, match="negative labels"):
        measure(neg)
    with pytest.raises(PanoptemError, match="negative labels"):
        measure_blockwise(neg, block_shape=(3, 10, 10), client=client)


@settings(derandomize=True, database=None, deadline=None, print_blob=False, max_examples=15,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), shape=st.tuples(st.integers(1, 30), st.integers(1, 60), st.integers(1, 60)),
       k=st.integers(0, 20), block=st.tuples(st.integers(1, 30), st.integers(8, 48), st.integers(8, 48)),
       vs=st.sampled_from([(30, 5, 5), (7.5, 3.2, 4.1)]))
def test_blockwise_measure_equals_measure_on_random_labels(client, seed, shape, k, block, vs):
    """Random ellipsoids (ids painted over each other: objects in pieces, slivers, single voxels)
    measured block by block: the in-memory table."""
    from panoptem import measure
    from panoptem.distributed.measure import measure_blockwise
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    lab = np.zeros(shape, np.uint16)
    for _ in range(k):
        c, r = rng.uniform([0, 0, 0], shape), rng.uniform(0.5, 12, 3)
        lab[((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1] = rng.integers(1, 500)
    ref = measure(lab, voxel_size=vs)
    got = measure_blockwise(lab, voxel_size=vs, block_shape=block, client=client)
    assert list(got) == list(ref)
    for col in ref:
        np.testing.assert_allclose(np.asarray(got[col], float), np.asarray(ref[col], float), rtol=1e-6, atol=1e-4,
                                   err_msg=col)


def test_blockwise_measure_takes_an_objects_mesh_level_from_all_its_blocks(client):
    """An object whose blocks see different parts of it (a ball in one, a one-voxel sheet of the
    same label in the other, on serial-section voxels): each block meshes its part at the level
    of the whole object, as the in-memory measure does, and the unsmoothed mask where the whole
    is flattened by the smoothing."""
    from panoptem.distributed.measure import measure_blockwise
    from panoptem import measure
    g = np.mgrid[:24, :40, :64]
    lab = np.zeros((24, 40, 64), np.uint16)
    lab[((g - np.array([12, 20, 14])[:, None, None, None]) ** 2).sum(0) <= 64] = 5  # a ball, x < 32
    lab[12, 5:35, 36:60] = 5  # a sheet, x >= 32
    lab[2, 3, 40] = 7  # a single voxel: meshed unsmoothed
    for vs in ((5, 5, 5), (30, 5, 5)):
        ref = measure(lab, voxel_size=vs)
        got = measure_blockwise(lab, voxel_size=vs, block_shape=(24, 40, 32), client=client)
        np.testing.assert_allclose(got["surface_area_nm2"], ref["surface_area_nm2"], rtol=1e-6)
        ball = measure(np.where(lab[:, :, :32] == 5, 5, 0).astype(np.uint16), voxel_size=vs)
        assert ball["surface_area_nm2"][0] < 0.95 * ref["surface_area_nm2"][0]  # the sheet's part is there
    one = measure((lab == 7).astype(np.uint8), voxel_size=(5, 5, 5))
    assert one["surface_area_nm2"][0] == pytest.approx(6 * 25 * 0.2887, rel=0.01)  # the binary mesh's octahedron


def _slow_or_failing(folder, item):
    import time
    if item == 1:
        raise ValueError("this block fails")
    time.sleep(1.0)
    (Path(folder) / f"{item}.done").write_text("written after the failure")
    return item


def test_a_failed_pass_returns_only_when_its_running_tasks_have_ended(tmp_path):
    """A task that fails while another runs: the pass raises only once the running one has ended
    (cancelled, it would still write into the work folder, racing with the run that resumes it),
    and the tasks not started never run."""
    from distributed import Client, LocalCluster
    from panoptem.distributed._cluster import run_tasks
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as lc, \
            Client(lc) as c:
        with pytest.raises(ValueError, match="this block fails"):
            run_tasks(c, _slow_or_failing, str(tmp_path), [0, 1, 2, 3, 4, 5], "test", False)
        at_raise = sorted(p.name for p in tmp_path.iterdir())
        assert "0.done" in at_raise  # it had started: it ended before the error came back
        import time
        time.sleep(2.5)
        assert sorted(p.name for p in tmp_path.iterdir()) == at_raise  # nothing still running wrote later
        assert len(at_raise) < 5  # those not started were cancelled


def test_a_pass_whose_workers_are_all_paused_by_their_memory_limit_is_one_error(tmp_path, monkeypatch):
    """Workers that sit above their memory limit's pause mark start no task: the pass is stopped
    with one error naming the limit (it waited forever), and no task ran."""
    from distributed import Client, LocalCluster
    from panoptem.distributed import _cluster
    monkeypatch.setattr(_cluster, "POLL_S", 0.2)
    monkeypatch.setattr(_cluster, "PAUSED_S", 1.0)
    # an in-process worker: the test process alone is far above 80 % of 40 MB
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, memory_limit="40MB",
                      dashboard_address=None) as lc, Client(lc) as c:
        with pytest.raises(PanoptemError, match=r"paused by its memory limit .* pause mark of 3\d MiB"):
            _cluster.run_tasks(c, _slow_or_failing, str(tmp_path), [0, 2, 3, 4], "test", False)
    assert len(list(tmp_path.iterdir())) < 4  # the worker may pause only once a task has begun


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from panoptem.distributed import segment as seg
    stage, n, count = sys.argv[1], int(sys.argv[2]), Path(sys.argv[6])
    def killer(orig):
        def f(*a, **k):
            with open(count, "a") as fh:  # a file: the task function is copied for every block
                fh.write("x")
            if count.stat().st_size == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(*a, **k)
        return f
    if stage == "network":
        seg.network_block = killer(seg.network_block)
    elif stage == "decode":
        seg.decode_block = killer(seg.decode_block)
    elif stage == "write":
        from panoptem.distributed import _write
        seg.write_block = _write.write_block = killer(_write.write_block)
    seg.segment_blockwise(sys.argv[3], sys.argv[4], sys.argv[5], block_shape=(16, 64, 64), halo=(32, 32, 32),
                          n_workers=1, processes=False, min_size=100, min_extent=3)
""")


def test_segment_3d_runs_blockwise_on_a_callers_client(vol, tmp_path, client):
    whole = segment_3d(vol, dark_blob_model(), **P).labels["mitochondria"]
    res = segment_3d(vol, dark_blob_model(), blockwise=True, client=client, output=tmp_path / "m.zarr",
                     block_shape=(16, 64, 64), halo=(32, 32, 32), **P)
    np.testing.assert_array_equal(np.asarray(res.labels["mitochondria"][:]), whole)
    assert client.status == "running"
    with pytest.raises(PanoptemError, match="blockwise=True"):
        segment_3d(vol, dark_blob_model(), client=client, **P)


def test_a_local_clusters_devices_are_checked_before_any_work(vol, tmp_path, monkeypatch):
    """GPUs asked of local workers on a machine without them: one line, before the work folder."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PanoptemError, match="--devices cuda:0,cuda:1: .*no CUDA GPU is visible.*Leave --devices out"):
        segment_blockwise(vol, dark_blob_model(), tmp_path / "m.zarr", devices="cuda:0,cuda:1", processes=False, **P)
    assert list(tmp_path.iterdir()) == []


def _sees_all_but_work_folders(paths, model):
    return [p for p in paths if p.endswith(".blockwise")]


def test_workers_that_cannot_find_the_runs_files_stop_it_before_any_work(on_disk, tmp_path, client, monkeypatch):
    """Workers on other hosts read the input, the work folder and the model at the caller's
    paths: one that cannot find them stops the run at once, saying which and what to do."""
    from panoptem.distributed import _cluster
    _cluster.check_workers_see(client, [on_disk / "vol.tif", tmp_path], str(on_disk / "oracle.yaml"))
    with pytest.raises(PanoptemError, match=r"1 of 1 Dask worker\(s\) cannot find .*nope\.tif.*shared filesystem"):
        _cluster.check_workers_see(client, [on_disk / "vol.tif", tmp_path / "nope.tif"])
    with pytest.raises(PanoptemError, match=r"model 'NoSuchModel' \(Unknown model"):
        _cluster.check_workers_see(client, [], "NoSuchModel")
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "oracle.yaml").write_text((on_disk / "oracle.yaml").read_text())  # its weights left behind
    with pytest.raises(PanoptemError, match=r"the weights .*oracle\.pt of model"):
        _cluster.check_workers_see(client, [], str(tmp_path / "card" / "oracle.yaml"))
    monkeypatch.chdir(on_disk)  # a relative input path goes to the workers as the caller sees it: absolute
    from panoptem.distributed._source import VolumeSource
    assert VolumeSource(path="vol.tif").path == str(on_disk / "vol.tif")
    assert VolumeSource(path="~/v.tif").path == os.path.expanduser("~/v.tif")
    monkeypatch.setattr(_cluster, "_unseen", _sees_all_but_work_folders)
    asked, check = [], _cluster.check_workers_see
    monkeypatch.setattr(_cluster, "check_workers_see", lambda cl, paths, model=None: (
        asked.append(([str(p) for p in paths], model)), check(cl, paths, model)))
    ran = []
    monkeypatch.setattr("panoptem.distributed.segment.network_block", lambda *a: ran.append(1))
    with pytest.raises(PanoptemError, match=r"\.m\.zarr\.blockwise.*same path"):
        segment_blockwise("vol.tif", "oracle.yaml", tmp_path / "m.zarr", client=client, block_shape=(40, 64, 64), **P)
    assert not ran and not (tmp_path / "m.zarr").exists()
    assert asked[0][0][0] == str(on_disk / "vol.tif") and asked[0][1] == str(on_disk / "oracle.yaml")


def test_a_script_without_a_main_guard_is_told_to_add_one(on_disk, tmp_path):
    """Dask starts worker processes by importing the calling script again: a script without
    ``if __name__ == "__main__":`` would start a run per worker (each refused by the output's
    lock, in words about another run). Each worker's run is refused with what to do instead,
    and so is the caller's; nothing is written."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from panoptem.distributed import segment_blockwise
        segment_blockwise({str(on_disk / "vol.tif")!r}, {str(on_disk / "oracle.yaml")!r}, {str(tmp_path / "m.zarr")!r},
                          n_workers=1, block_shape=(40, 64, 64), min_size=100, min_extent=3)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("panoptem.errors.PanoptemError: Dask could not start its worker processes"), last
    assert 'if __name__ == "__main__":' in last
    assert "while a worker process imported its script" in run.stderr
    assert "Another panoptem run" not in run.stderr
    assert not (tmp_path / "m.zarr").exists()


@pytest.mark.slow
def test_kill_at_a_random_block_and_resume(on_disk, tmp_path, vol):
    rng = np.random.default_rng(7)
    ref = segment_3d(vol, dark_blob_model(), **P).labels["mitochondria"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    for stage in ("network", "decode", "write"):
        n = int(rng.integers(2, 12))  # of 12 blocks
        out = tmp_path / f"{stage}.zarr"
        args = [sys.executable, "-c", KILLER, stage, str(n), str(on_disk / "vol.tif"), str(on_disk / "oracle.yaml"),
                str(out), str(tmp_path / f"{stage}.count")]
        killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -9, killed.stderr[-2000:]
        assert not out.exists() and (tmp_path / f".{out.name}.blockwise").exists()
        again = subprocess.run([*args[:3], "none", "0", *args[5:]], env=env, capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        np.testing.assert_array_equal(np.asarray(read_image(out).data[:]), ref)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".{stage}")) == []  # work removed


@pytest.mark.slow
def test_shipped_model_on_real_data_agrees_with_a_whole_volume_run(lucchi, client):
    """Lucchi, 64 x 384 x 384, blocks 32 x 128 x 128 (each slice cut in 9 tiles), halo
    128 in-plane, exact global context: the whole-volume run's objects."""
    vol = np.ascontiguousarray(np.asarray(read_image(lucchi / "training_image.tif").data[:64, :384, :384]))
    whole = segment_3d(vol, "MitoLite_v1", device="cpu").labels["mitochondria"]
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        res = segment_blockwise(vol, "MitoLite_v1", Path(tmp) / "m.zarr", block_shape=(32, 128, 128),
                                halo=(16, 128, 128), client=client, device="cpu")
        got = np.asarray(res.labels["mitochondria"][:])
    assert res.timings["context_pass_s"] > 0
    fa, fb = whole > 0, got > 0
    assert (fa == fb).mean() >= 0.999
    from panoptem.labels import compact, overlap_table
    la, ia, ca = compact(whole, return_counts=True)
    lb, ib, cb = compact(got, return_counts=True)
    x, y, inter = overlap_table(la, lb, ia.size, ib.size)
    matched = np.unique(x[inter / (ca[x - 1] + cb[y - 1] - inter) >= 0.9]).size
    assert ia.size >= 4 and matched / ia.size >= 0.95


def test_blocks_of_a_framed_volume_take_the_tissues_context(client, tmp_path):
    """Blocks that cut slices are given each slice's global context from the blocks' sums (pass 0),
    there too over the cells by their part that is not padding: a volume framed by black pixels
    gives the whole-volume run's objects."""
    import panoptem
    vol = np.zeros((12, 512, 448), np.uint8)
    vol[:, 128:, 64:] = panoptem.load_sample()[:12]  # black on two sides
    whole = segment_3d(vol, "MitoLite_v1", device="cpu").labels["mitochondria"]
    res = segment_blockwise(vol, "MitoLite_v1", tmp_path / "m.zarr", block_shape=(12, 256, 224),
                            halo=(0, 96, 96), client=client, device="cpu")
    got = np.asarray(res.labels["mitochondria"][:])
    assert res.timings["context_pass_s"] > 0
    fa, fb = whole > 0, got > 0
    assert fa.sum() > 50_000 and (fa & fb).sum() / (fa | fb).sum() > 0.99


@pytest.mark.parametrize("plane", ["xz", "yz"])
def test_blocks_of_a_thin_framed_volume_take_the_frame_from_the_sections(client, tmp_path, plane):
    """xz / yz planes of a volume thinner than the padding window take the frame from its xy
    sections, judged around each block's region as the whole volume shows it: nothing is found in
    the frame (many objects there before) and the in-memory run's labels come out."""
    import panoptem
    vol = np.zeros((12, 384 + 128, 384 + 64), np.uint8)
    vol[:, 64:-64, 64:] = panoptem.load_sample()[:12]   # 64 black pixels on three sides
    whole = segment_3d(vol, "MitoLite_v1", device="cpu", inference_plane=plane).labels["mitochondria"]
    res = segment_blockwise(vol, "MitoLite_v1", tmp_path / "m.zarr", block_shape=(12, 256, 224),
                            halo=(0, 96, 96), client=client, device="cpu", inference_plane=plane)
    got = np.asarray(res.labels["mitochondria"][:])
    assert res.blocks > 1 and not got[:, :64].any() and not got[:, -64:].any() and not got[..., :64].any()
    fa, fb = whole > 0, got > 0
    assert fa.sum() > 50_000 and (fa & fb).sum() / (fa | fb).sum() > 0.99


@pytest.mark.parametrize("params", [dict(inference_plane="xz"), dict(orthoplane=True),
                                    dict(orthoplane=True, fusion="probability"),
                                    dict(inference_plane="yz", downsampling=4),
                                    dict(inference_plane="xz", downsampling=2),
                                    dict(orthoplane=True, fusion="probability", downsampling=2)])
def test_blockwise_xz_and_orthoplane_find_nothing_on_a_blank_section(vol, tmp_path, params):
    """As a whole-volume run: a blank section seen edge-on by the xz and yz stacks holds no object."""
    vol = vol.copy()
    vol[11] = 0                                        # through the touching balls (odd: shares a row at 2)
    vol[38:] = 90                                      # the last two (of 40: half a network row at 4)
    whole = segment_3d(vol, dark_blob_model(), **P, **params).labels["mitochondria"]
    res, got = _blockwise(vol, tmp_path, block_shape=(16, 64, 64), halo=(32, 32, 32), **params)
    assert res.blocks > 1 and got.any() and not got[11].any() and not got[38:].any()
    np.testing.assert_array_equal(got, whole)


@pytest.mark.parametrize("params", [{}, dict(inference_plane="xz")])
def test_blockwise_finds_nothing_on_missing_data_as_a_whole_volume_run(vol, tmp_path, params):
    """A float stack's all-NaN section (missing data: the mean grey to the network) is blank to
    both engines; a block's crop of it as to the whole-volume run."""
    from _models import grey_blob_model
    f = np.where(vol > 100, 220.0, 40.0).astype(np.float32)  # nothing mid-grey but what the NaN becomes
    f[11] = np.nan
    f[20, 30:100, 30:100] = np.nan  # a region of missing data in a section
    kw = dict(params, min_size=0, min_extent=1, median_slices=1)  # a section's object would be kept
    whole = segment_3d(f, grey_blob_model(), **kw).labels["mitochondria"]
    res, got = _blockwise(f, tmp_path, model=grey_blob_model(), block_shape=(16, 64, 64), halo=(32, 32, 32), **kw)
    assert res.blocks > 1 and not whole.any()
    np.testing.assert_array_equal(got, whole)


def test_workers_that_outlive_a_run_read_an_input_replaced_at_its_path(on_disk, tmp_path, vol, client):
    """A cluster the user keeps (client=, --scheduler) ran the next run on the old content of an
    input replaced at the same path (its workers kept the volume they had opened)."""
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, vol, metadata={"axes": "ZYX"})
    card = str(on_disk / "oracle.yaml")
    kw = dict(block_shape=(16, 64, 64), halo=(32, 32, 32), client=client, **P)
    segment_blockwise(str(src), card, tmp_path / "a.zarr", **kw)
    flipped = np.ascontiguousarray(vol[:, ::-1])
    src.unlink()
    tifffile.imwrite(src, flipped, metadata={"axes": "ZYX"})
    got = np.asarray(segment_blockwise(str(src), card, tmp_path / "b.zarr", **kw).labels["mitochondria"][:])
    np.testing.assert_array_equal(got, segment_3d(flipped, dark_blob_model(), **P).labels["mitochondria"])


def test_workers_load_a_model_registered_anew_under_its_name(home, tiny_card, monkeypatch):
    from panoptem.distributed import _source
    from panoptem.models import registry
    from panoptem.models import load as load_mod
    loads = []
    monkeypatch.setattr(load_mod, "load_model", lambda spec, device: loads.append(spec) or object())
    registry.register("m", tiny_card)
    first = _source.worker_model("m", "cpu")
    assert _source.worker_model("m", "cpu") is first and len(loads) == 1       # once per process
    registry.register("m", tiny_card, overwrite=True)                          # new weights file, same name
    assert _source.worker_model("m", "cpu") is not first and len(loads) == 2


def test_a_run_without_devices_clears_the_device_an_earlier_run_set_on_a_worker():
    """Workers of a cluster kept between runs stayed on the device of a --devices run: every later
    run went there (on a CPU machine: 'CUDA was requested')."""
    import types

    from panoptem.distributed import _source
    from panoptem.distributed._cluster import _WorkerSetup
    worker = types.SimpleNamespace(name="0", address="tcp://127.0.0.1:1")
    try:
        _WorkerSetup(["cuda:0"], 0).setup(worker)
        assert _source.worker_device("cpu") == "cuda:0"
        _WorkerSetup(None, 0).setup(worker)
        assert _source.worker_device("cpu") == "cpu"
    finally:
        _source.set_worker_device(None)


def test_a_scheduler_lost_while_workers_are_set_up_is_one_error():
    import types

    from panoptem.distributed._cluster import _scheduler_answers
    lost = types.SimpleNamespace(status="closed")
    with pytest.raises(PanoptemError, match="scheduler was lost while setting up its workers .OSError."):
        with _scheduler_answers(lost, "setting up its workers"):
            raise OSError("Timed out trying to connect")
    with pytest.raises(ValueError, match="not a scheduler's"):
        with _scheduler_answers(types.SimpleNamespace(status="running"), "setting up its workers"):
            raise ValueError("not a scheduler's")


@pytest.mark.parametrize("address, words", [
    ("inproc://192.0.2.9/1/1", "inside a Python process, which only that process reaches"),
    ("tls://127.0.0.1:8786", "no TLS settings for Dask's client"),
])
def test_a_scheduler_address_no_client_here_can_use_is_refused_at_once(address, words):
    """These printed Dask's error, then hung 40 s on exit in the half-made client."""
    from panoptem.distributed._cluster import check_scheduler
    with pytest.raises(PanoptemError, match=words):
        check_scheduler(address)


def test_tls_needs_both_settings_dasks_client_uses_and_devices_need_processes():
    import dask

    from panoptem.distributed._cluster import check_scheduler, client_for
    with dask.config.set({"distributed.comm.tls.ca-file": "ca.pem"}):   # the CA alone: Dask's client cannot
        with pytest.raises(PanoptemError, match="no TLS settings"):
            check_scheduler("tls://127.0.0.1:8786")
    with dask.config.set({"distributed.comm.tls.ca-file": "ca.pem", "distributed.comm.tls.client.cert": "c.pem"}):
        check_scheduler("tls://127.0.0.1:8786")
    # in-process workers share one module's device: every one ended on the last device set
    with pytest.raises(PanoptemError, match="One worker per device needs worker processes"):
        with client_for(devices=["cuda:0", "cuda:1"], processes=False):
            pass


@pytest.mark.parametrize("gap", [8, 6])
def test_a_blank_section_sharing_a_network_row_cuts_objects_as_blockwise_does(tmp_path, gap):
    """Image Downsampling 2, a blank section through the arms of a U (gap 8) or of two bars over
    one (gap 6), in every xz plane: the whole-volume run cut its decoded labels afterwards, so the
    arms above the section kept one id (and parts came out in another order) where blockwise,
    which cuts the semantic map first, made two."""
    vol = np.full((32, 64, 64), 200, np.uint8)
    ys = slice(16, 48)
    vol[2:14, ys, 16:16 + gap] = 40
    vol[2:14, ys, 16 + 2 * gap:16 + 3 * gap] = 40
    vol[14:26, ys, 16:16 + 3 * gap] = 40
    vol[9] = 200                                       # a blank section through the arms
    kw = dict(min_size=10, min_extent=1, inference_plane="xz", downsampling=2)
    whole = segment_3d(vol, dark_blob_model(), **kw).labels["mitochondria"]
    res, got = _blockwise(vol, tmp_path, block_shape=(32, 32, 32), halo=(16, 16, 16), **kw)
    assert not got[9].any() and len(np.unique(got)) - 1 >= 3
    np.testing.assert_array_equal(got, whole)


@pytest.mark.parametrize("plane,shape", [("xz", (13, 96, 96)), ("yz", (13, 96, 96)), ("xy", (13, 94, 94))])
def test_a_blocks_crop_of_a_plane_of_one_value_is_not_a_blank_plane(tmp_path, client, plane, shape):
    """A block whose part of a plane holds one value (while the whole plane does not) gives the
    network that part as a whole-volume run does: it took the part for a blank plane (mean grey,
    which this network calls foreground), and a heatmap cell past the plane's edge kept a centre
    there that took the plane's real pixels (the network finds no centre of its own at 0.3)."""
    from _models import two_class_model
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    vol = np.full(shape, 200, np.uint8)
    vol[(zz - 6) ** 2 + (yy - 24) ** 2 + (xx - 16) ** 2 < 64] = 40
    vol[(zz - 6) ** 2 + (yy - 6) ** 2 + (xx - 80) ** 2 < 36] = 40
    vol[(zz - 6) ** 2 + (yy - 80) ** 2 + (xx - 6) ** 2 < 36] = 40
    params = dict(inference_plane=plane, fine_boundaries=True, center_confidence_thr=0.3, min_size=0, min_extent=0,
                  median_slices=1)
    whole = segment_3d(vol, two_class_model(), threads=1, **params).labels
    res = segment_blockwise(vol, two_class_model(), tmp_path / "o.zarr", client=client, threads=1,
                            block_shape=(16, 32, 32), halo=(32, 32, 32), **params)
    assert res.blocks > 1 and whole["mitochondria"].any()
    for name, lab in whole.items():
        np.testing.assert_array_equal(np.asarray(res.labels[name][:]), lab)


def test_a_plane_of_one_value_resampled_by_a_fraction_is_blank_as_in_the_whole_volume_run(tmp_path, client):
    """Planes brought from 5 to 7.5 nm (3/2): a section of one value is blank, found before the
    resampling (after it, float32 rounding left it not quite uniform in a whole-volume run)."""
    vol = np.full((8, 192, 192), 200, np.uint8)
    zz, yy, xx = np.mgrid[:8, :192, :192]
    vol[(zz - 4) ** 2 + (yy - 30) ** 2 + (xx - 30) ** 2 < 36] = 40
    vol[5] = 41
    m = dark_blob_model()
    m.card = m.card.model_copy(update={"voxel_size_nm": 7.5})
    params = dict(min_size=0, min_extent=0, median_slices=1, voxel_size=(7.5, 5.0, 5.0))
    whole = segment_3d(vol, m, threads=1, **params).labels["mitochondria"]
    res = segment_blockwise(vol, m, tmp_path / "o.zarr", client=client, threads=1, block_shape=(8, 96, 96),
                            halo=(0, 32, 32), **params)
    assert res.blocks > 1 and whole.any() and not whole[5].any()
    np.testing.assert_array_equal(np.asarray(res.labels["mitochondria"][:]), whole)


def test_a_cache_shared_by_runs_on_two_volumes_serves_each_its_own(tmp_path, client):
    """In-memory volumes of one shape: the second was given the first's network outputs (its key
    held no digest of an array's voxels), and the planes of one value the first run found (kept at
    the cache's root) blanked the second's tissue."""
    a = scene((24, 96, 96))
    a[8:16] = 0                                         # sections of one value in the first volume only
    b = np.flip(scene((24, 96, 96)), axis=2).copy()
    cache = tmp_path / "cache"
    _blockwise(a, tmp_path, "a.zarr", client=client, block_shape=(16, 64, 64), halo=(32, 32, 32), cache_dir=cache,
               inference_plane="xz")
    res, got = _blockwise(b, tmp_path, "b.zarr", client=client, block_shape=(16, 64, 64), halo=(32, 32, 32),
                          cache_dir=cache)
    whole = segment_3d(b, dark_blob_model(), **P).labels["mitochondria"]
    assert res.blocks > 1 and whole[8:16].any()
    np.testing.assert_array_equal(got, whole)


def test_blockwise_invert_sees_the_volume_inverted_and_keeps_its_cache_apart(tmp_path, client, vol):
    """``invert`` in blocks: an inverted volume gives the plain volume's labels, and network
    outputs cached without it are refused with the reason."""
    kw = dict(client=client, block_shape=(16, 64, 64), halo=(32, 32, 32))
    _, plain = _blockwise(vol, tmp_path, "plain.zarr", cache_dir=tmp_path / "cache", **kw)
    _, inv = _blockwise(255 - vol, tmp_path, "inv.zarr", invert=True, **kw)
    assert plain.any()
    np.testing.assert_array_equal(inv, plain)
    with pytest.raises(PanoptemError, match=r"invert contrast differs"):
        _blockwise(vol, tmp_path, "again.zarr", cache_dir=tmp_path / "cache", invert=True, **kw)
