"""Readers for large volumes: the OME-Zarr level nearest a pixel size, N5."""
import gzip
import json
import struct

import numpy as np
import pytest

from panoptem.errors import PanoptemError
from panoptem.io import read_image, write_labels


def test_ome_zarr_level_nearest_the_models_pixel_size(tmp_path):
    vol = (np.arange(32 * 256 * 256) % 251).astype(np.uint16).reshape(32, 256, 256)
    vol[vol > 200] = 0
    path = write_labels(tmp_path / "img.zarr", vol, voxel_size=(5.0, 5.0, 5.0))  # levels 5, 10, 20 nm in-plane
    img = read_image(path)
    assert img.voxel_size == (5.0, 5.0, 5.0) and not img.notes
    for target, level, size in ((4.0, "0", 5.0), (9.0, "1", 10.0), (16.0, "2", 20.0), (100.0, "2", 20.0)):
        img = read_image(path, pixel_size_nm=target)
        assert img.key == level and img.voxel_size[-1] == size
        assert bool(img.notes) == (level != "0")
        f = 2 ** int(level)
        np.testing.assert_array_equal(np.asarray(img.data[:]), vol[::f, ::f, ::f])
    assert read_image(path, key="1", pixel_size_nm=20.0).key == "1"  # a named level wins


def _write_n5(root, name, arr, block, compression="raw", resolution=None, **extra):
    root.mkdir(exist_ok=True)
    (root / "attributes.json").write_text(json.dumps({"n5": "2.5.1"}))
    d = root / name
    d.mkdir(parents=True)
    attrs = {"dimensions": list(reversed(arr.shape)), "blockSize": list(reversed(block)),
             "dataType": arr.dtype.name, "compression": {"type": compression}}
    if resolution:
        attrs.update(resolution=list(reversed(resolution)), units=["nm"] * arr.ndim)
    attrs.update(extra)
    (d / "attributes.json").write_text(json.dumps(attrs))
    import itertools
    for idx in itertools.product(*(range(-(-n // b)) for n, b in zip(arr.shape, block))):
        sl = tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(idx, block, arr.shape))
        data = np.ascontiguousarray(arr[sl]).astype(arr.dtype.newbyteorder(">")).tobytes()
        size = list(reversed(arr[sl].shape))
        body = gzip.compress(data) if compression == "gzip" else data
        f = d.joinpath(*[str(i) for i in reversed(idx)])
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(struct.pack(">HH", 0, arr.ndim) + struct.pack(f">{arr.ndim}I", *size) + body)


def test_n5_offset_and_scale_levels_give_where_the_volume_lies_and_its_pixel_size(tmp_path):
    """funlib/daisy's ``offset`` beside ``resolution`` (x, y, z in N5) is the origin, as on Zarr
    and HDF5; an N5 Viewer scale level's pixel is ``pixelResolution`` x ``downsamplingFactors``."""
    arr = np.zeros((4, 32, 40), np.uint8)
    _write_n5(tmp_path / "a.n5", "raw", arr, (4, 32, 40), resolution=(30.0, 5.0, 7.0), offset=[70, 50, 300])
    img = read_image(tmp_path / "a.n5")
    assert img.voxel_size == (30.0, 5.0, 7.0) and img.origin == (300.0, 50.0, 70.0)
    viewer = {"pixelResolution": {"unit": "um", "dimensions": [0.005, 0.005, 0.03]}}
    _write_n5(tmp_path / "b.n5", "s0", arr, (4, 32, 40), downsamplingFactors=[1, 1, 1], **viewer)
    _write_n5(tmp_path / "b.n5", "s1", arr[:, :16, :20], (4, 16, 20), downsamplingFactors=[2, 2, 1], **viewer)
    assert read_image(tmp_path / "b.n5", key="s0").voxel_size == (30.0, 5.0, 5.0)
    assert read_image(tmp_path / "b.n5", key="s1").voxel_size == (30.0, 10.0, 10.0)
    assert read_image(tmp_path / "b.n5", key="s1").origin is None


@pytest.mark.parametrize("compression", ["raw", "gzip"])
def test_n5_dataset_reads_lazily(tmp_path, compression):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 60000, (20, 45, 70)).astype(np.uint16)
    _write_n5(tmp_path / "v.n5", "em/raw", arr, (8, 16, 32), compression, resolution=(30.0, 4.0, 4.0))
    img = read_image(tmp_path / "v.n5")
    assert img.key == "em/raw" and img.data.shape == arr.shape and img.voxel_size == (30.0, 4.0, 4.0)
    np.testing.assert_array_equal(np.asarray(img.data[:]), arr)
    np.testing.assert_array_equal(np.asarray(img.data[3:17, 10:40:3, 65]), arr[3:17, 10:40:3, 65])
    (tmp_path / "v.n5" / "em" / "raw" / "0" / "0" / "0").unlink()  # a missing block reads as 0
    got = np.asarray(read_image(tmp_path / "v.n5").data[:8, :16, :32])
    assert not got.any()
    with pytest.raises(PanoptemError, match="no N5 dataset"):
        read_image(tmp_path / "v.n5", key="nope")
    from panoptem.napari._reader import get_reader                     # napari's reader claims it by content
    (tmp_path / "v.n5").rename(tmp_path / "volume")
    (data, meta, kind), = get_reader(str(tmp_path / "volume"))(str(tmp_path / "volume"))
    assert kind == "image" and data.shape == arr.shape and meta["scale"] == (30.0, 4.0, 4.0)
    _write_n5(tmp_path / "volume", "em/labels", (arr > 30000).astype(np.uint16), (8, 16, 32), compression)
    layers = get_reader(str(tmp_path / "volume"))(str(tmp_path / "volume"))   # a layer for each dataset
    assert [(m["name"], k) for _, m, k in layers] == [("volume/em/labels", "labels"), ("volume/em/raw", "image")]
