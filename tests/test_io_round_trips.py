"""Property-based round trips of the writers and readers (hypothesis, fixed seed).

Random shapes (2D and 3D, one-plane volumes included), dtypes, values, voxel sizes (tiny to
large, anisotropic) and chunkings go through ``write_labels`` / ``write_image`` / the streaming
writer (slabs in random order for Zarr), TIFF and Zarr, and come back from ``read_image``,
lazily and at once: the same values, dtype rule, shape (a one-plane volume as a 2D image) and
voxel size; a lazy read indexed at random equals the eager one. MRC and HDF5 files written by
mrcfile and h5py read as written.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panoptem.io import open_label_writer, read_image, write_image, write_labels

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# rows and columns from 2: a reader drops single-entry axes (a one-plane volume reads as a 2D image)
shapes = st.one_of(st.tuples(st.integers(2, 40), st.integers(2, 40)),
                   st.tuples(st.integers(1, 6), st.integers(2, 33), st.integers(2, 33)))
nm = st.floats(0.01, 5000, allow_nan=False, allow_infinity=False)
suffixes = st.sampled_from([".tif", ".tiff", ".zarr"])


def _voxel(draw, ndim):
    return draw(st.one_of(st.none(), st.tuples(*[nm] * ndim)))


def _as_read(a, vs):
    """What a reader gives back for ``a`` written with ``vs``: single-entry axes dropped."""
    keep = [i for i, n in enumerate(a.shape) if n != 1]
    return a.reshape([a.shape[i] for i in keep]), (None if vs is None else tuple(vs[i] for i in keep))


def _close(got, want):
    if want is None:
        assert got is None
    else:
        assert got is not None and len(got) == len(want)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def _lazy_matches(data, want, draw):
    """Random indexing of a lazy read against the array it should hold."""
    for _ in range(3):
        key = tuple(draw(st.one_of(st.integers(0, n - 1), st.builds(slice, st.integers(0, n), st.integers(0, n))))
                    for n in want.shape)
        np.testing.assert_array_equal(np.asarray(data[key]), want[key])


def _reads_back(path, want, want_vs, draw):
    """``read_image(path)``, lazily and at once, holds ``want`` (its dtype too) with voxel size
    ``want_vs``; the lazy array also under random indexing."""
    for lazy in (True, False):
        r = read_image(path, lazy=lazy)
        assert r.data.dtype == want.dtype and tuple(r.data.shape) == want.shape
        np.testing.assert_array_equal(np.asarray(r.data[...]), want)
        _close(r.voxel_size, want_vs)
        if lazy:
            _lazy_matches(r.data, want, draw)


@FUZZ
@given(st.data())
def test_labels_come_back_as_written(data):
    shape = data.draw(shapes)
    dtype = data.draw(st.sampled_from([np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int16, np.int64,
                                       np.float32]))
    top = {np.bool_: 1, np.uint8: 255, np.uint16: 65535, np.int16: 32767, np.float32: 2**24}.get(dtype, 2**40)
    if dtype == np.uint32:
        top = 2**32 - 1
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    labels = rng.integers(0, top + 1, shape, dtype=np.int64)
    labels[rng.random(shape) < data.draw(st.floats(0, 1))] = 0
    labels = labels.astype(dtype)
    vs = _voxel(data.draw, len(shape))
    with tempfile.TemporaryDirectory() as d:
        out = write_labels(Path(d) / f"lab{data.draw(suffixes)}", labels, voxel_size=vs)
        want_dt = np.uint64 if labels.size and int(labels.max()) > 2**32 - 1 else np.uint32
        want, want_vs = _as_read(labels.astype(want_dt), vs)
        _reads_back(out, want, want_vs, data.draw)


@FUZZ
@given(st.data())
def test_images_keep_their_dtype_values_and_voxel_size(data):
    shape = data.draw(shapes)
    dtype = data.draw(st.sampled_from([np.uint8, np.uint16, np.int8, np.int16, np.int32, np.float32,
                                       np.float64]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if np.dtype(dtype).kind == "f":
        image = (rng.standard_normal(shape) * data.draw(st.sampled_from([1e-3, 1.0, 1e6]))).astype(dtype)
    else:
        info = np.iinfo(dtype)
        image = rng.integers(info.min, int(info.max) + 1, shape, dtype=np.int64).astype(dtype)
    vs = _voxel(data.draw, len(shape))
    with tempfile.TemporaryDirectory() as d:
        out = write_image(Path(d) / f"img{data.draw(suffixes)}", image, voxel_size=vs)
        want, want_vs = _as_read(image, vs)
        _reads_back(out, want, want_vs, data.draw)


@FUZZ
@given(st.data())
def test_streamed_slabs_in_any_order_give_the_volume(data):
    """The streaming writer, slabs of random thickness: in order for TIFF, shuffled for Zarr,
    with random chunk shapes."""
    shape = data.draw(st.tuples(st.integers(2, 12), st.integers(2, 40), st.integers(2, 40)))
    suffix = data.draw(suffixes)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    labels = rng.integers(0, 2**32 - 1, shape, dtype=np.uint64).astype(np.uint32)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, shape[0] - 1), max_size=4))))
    slabs = list(zip([0, *cuts], [*cuts, shape[0]]))
    chunks = None
    if suffix == ".zarr":
        slabs = data.draw(st.permutations(slabs))
        chunks = data.draw(st.one_of(st.none(), st.tuples(*[st.integers(1, n) for n in shape])))
    vs = _voxel(data.draw, 3)
    with tempfile.TemporaryDirectory() as d:
        with open_label_writer(Path(d) / f"lab{suffix}", shape, voxel_size=vs, chunks=chunks) as w:
            for z0, z1 in slabs:
                w[z0:z1] = labels[z0:z1]
        r = read_image(w.path)
        np.testing.assert_array_equal(np.asarray(r.data[...]), labels)
        _close(r.voxel_size, vs)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_round_trip_checks_can_fail(tmp_path, suffix):
    """The comparisons above see a changed value and a changed voxel size."""
    labels = np.arange(12, dtype=np.uint32).reshape(3, 4)
    r = read_image(write_labels(tmp_path / f"a{suffix}", labels, voxel_size=(4.0, 5.0)))
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(np.asarray(r.data[...]), labels + (labels == 7))
    with pytest.raises(AssertionError):
        _close(r.voxel_size, (4.0, 5.1))


@FUZZ
@given(st.data())
def test_mrc_and_hdf5_files_of_other_tools_read_as_written(data):
    """MRC (mrcfile: any mode it writes, voxel size in Å) and HDF5 (h5py: ``element_size_um``,
    or ``resolution`` with a unit), lazily and at once."""
    import h5py
    import mrcfile
    shape = data.draw(shapes)
    kind = data.draw(st.sampled_from(["mrc", "h5-um", "h5-resolution"]))
    dtypes = [np.int8, np.int16, np.uint16, np.float32] if kind == "mrc" else [np.uint8, np.uint16, np.float32,
                                                                              np.int32]
    dtype = data.draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if np.dtype(dtype).kind == "f":
        image = rng.standard_normal(shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        image = rng.integers(info.min, int(info.max) + 1, shape, dtype=np.int64).astype(dtype)
    vs = data.draw(st.tuples(*[nm] * len(shape)))
    with tempfile.TemporaryDirectory() as d:
        if kind == "mrc":
            path = Path(d) / "vol.mrc"
            with mrcfile.new(path, data=image) as mrc:
                zyx = (vs if len(vs) == 3 else (1.0, *vs))
                mrc.voxel_size = tuple(10 * v for v in zyx[::-1])  # x, y, z in Å
        else:
            path = Path(d) / "vol.h5"
            with h5py.File(path, "w") as f:
                ds = f.create_dataset("raw", data=image)
                if kind == "h5-um":
                    ds.attrs["element_size_um"] = [v / 1000 for v in vs]
                else:
                    ds.attrs["resolution"] = [v * 10 for v in vs]  # nm -> Å
                    ds.attrs["unit"] = "Å"
        want, want_vs = _as_read(image, vs)
        _reads_back(path, want, want_vs, data.draw)
