"""Readers and writers: round trips with voxel size, lazy indexing, streaming, atomicity, errors."""
import os
import pickle

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import zarr

from panoptem.errors import PanoptemError
from panoptem.io import (ImageStack, StoreArray, open_label_writer, read_image, write_image,
                         write_labels)
from panoptem.io.readers import image_keys
from panoptem.io.writers import write_labels_together

RNG = np.random.default_rng(0)


def _files(folder):
    return sorted(os.listdir(folder))


# ---- TIFF -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape,vs", [((20, 30), (4.0, 5.0)), ((3, 20, 30), (30.0, 4.0, 5.0))])
def test_tiff_image_round_trip_keeps_dtype_and_voxel(tmp_path, dtype, shape, vs):
    img = RNG.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    out = write_image(tmp_path / "img.tif", img, voxel_size=vs)
    r = read_image(out)
    assert r.data.dtype == dtype and r.data.shape == shape
    np.testing.assert_array_equal(np.asarray(r.data), img)
    assert r.voxel_size == vs and r.axes == "ZYX"[-len(shape):]
    with tifffile.TiffFile(out) as tif:  # compressed OME-TIFF
        assert tif.is_ome and tif.pages[0].compression == 8


@pytest.mark.parametrize("dtype", [">u2", ">f4", ">i4"])
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_big_endian_images_are_written_by_value(tmp_path, dtype, suffix):
    """Big-endian data (what ImageJ's TIFFs read as) keeps its values; its bytes were stored as
    they were in a little-endian TIFF, so 300 read back as 11265."""
    img = np.array([[[1, 2, 300], [4000, 5, 6]]] * 2).astype(dtype)
    r = read_image(write_image(tmp_path / f"img{suffix}", img))
    assert r.data.dtype.isnative and r.data.dtype.kind == np.dtype(dtype).kind
    np.testing.assert_array_equal(np.asarray(r.data), img)


def test_bilevel_tiff_stack_is_read_not_called_corrupt(tmp_path):
    """1-bit pixels pack eight to a byte; a stack's later pages must not be
    checked as if they held a byte per pixel."""
    mask = RNG.random((3, 40, 64)) > 0.5
    tifffile.imwrite(tmp_path / "bits.tif", mask)
    with tifffile.TiffFile(tmp_path / "bits.tif") as tif:
        assert tif.pages[0].bitspersample == 1
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "bits.tif").data), mask)


@pytest.mark.parametrize("shape", [(25, 31), (4, 25, 31)])
def test_tiff_labels_uint32_above_65535_exact(tmp_path, shape):
    lab = RNG.integers(0, 2**32 - 1, shape, dtype=np.uint32)
    lab.flat[:3] = [0, 65536, 2**32 - 1]
    vs = (8.0, 2.5, 2.5)[-len(shape):]
    r = read_image(write_labels(tmp_path / "lab.tiff", lab, voxel_size=vs))
    assert r.data.dtype == np.uint32 and r.voxel_size == vs
    np.testing.assert_array_equal(np.asarray(r.data), lab)


def test_labels_dtype_rules(tmp_path):
    small = np.array([[0, 1], [2, 255]], np.uint8)
    r = read_image(write_labels(tmp_path / "a.tif", small), lazy=False)
    assert r.data.dtype == np.uint32 and r.data.tolist() == [[0, 1], [2, 255]]
    big = np.array([[0, 2**32], [5, 2**40 + 3]], np.int64)  # needs uint64
    r = read_image(write_labels(tmp_path / "b.tif", big), lazy=False)
    assert r.data.dtype == np.uint64 and r.data.tolist() == big.tolist()
    whole = np.array([[0.0, 3.0], [70000.0, 1.0]])
    r = read_image(write_labels(tmp_path / "c.tif", whole), lazy=False)
    assert r.data.dtype == np.uint32 and r.data.tolist() == [[0, 3], [70000, 1]]
    with pytest.raises(PanoptemError, match=">= 0"):
        write_labels(tmp_path / "d.tif", np.array([[0, -1], [2, 3]], np.int32))
    with pytest.raises(PanoptemError, match="whole numbers"):
        write_labels(tmp_path / "e.tif", np.array([[0, 1.5], [2, 3]]))
    assert not (tmp_path / "d.tif").exists() and not (tmp_path / "e.tif").exists()


def test_tiff_voxel_from_imagej_and_ome_micrometres(tmp_path):
    vol = np.zeros((3, 8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "ij.tif", vol, imagej=True, resolution=(1 / 0.004, 1 / 0.005),
                     metadata={"spacing": 0.03, "unit": "um", "axes": "ZYX"})
    assert read_image(tmp_path / "ij.tif").voxel_size == pytest.approx((30.0, 5.0, 4.0))
    tifffile.imwrite(tmp_path / "o.ome.tif", vol, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.004, "PhysicalSizeY": 0.005,
                               "PhysicalSizeZ": 3.0, "PhysicalSizeZUnit": "Å"})
    assert read_image(tmp_path / "o.ome.tif").voxel_size == pytest.approx((0.3, 5.0, 4.0))
    tifffile.imwrite(tmp_path / "plain.tif", vol, photometric="minisblack")
    assert read_image(tmp_path / "plain.tif").voxel_size is None
    # an image editor's dots per inch are no pixel size (300 dpi read as 84.7 um pixels); a
    # microscope's pixel given per inch is
    for dpi, unit, want in ((300, "INCH", None), (72, "INCH", None), (1200, "INCH", None), (300 / 2.54, "CENTIMETER", None),
                            (2.54e7 / 5, "INCH", (5.0, 5.0)), (1e7 / 5, "CENTIMETER", (5.0, 5.0))):
        tifffile.imwrite(tmp_path / "dpi.tif", vol[0], resolution=(dpi, dpi), resolutionunit=unit)
        got = read_image(tmp_path / "dpi.tif").voxel_size
        assert got == (None if want is None else pytest.approx(want)), dpi
    from panoptem.io._meta import to_nm  # ImageJ's escaped units: µ and Å
    assert to_nm(2, "\\u00B5m") == 2000.0 and to_nm(2, "\\u00C5") == to_nm(2, "\\u00c5") == pytest.approx(0.2)


def test_tiff_singleton_axes_dropped_and_4d_refused(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.ones((1, 6, 1, 7, 9), np.uint16), photometric="minisblack")
    r = read_image(tmp_path / "s.tif")
    assert r.data.shape == (6, 7, 9) and r.axes == "ZYX"
    tifffile.imwrite(tmp_path / "4d.tif", np.zeros((2, 3, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(PanoptemError, match=r"\(2, 3, 8, 8\)"):
        read_image(tmp_path / "4d.tif")


def test_lazy_tiff_indexing_matches_eager(tmp_path):
    vol = RNG.integers(0, 60000, (40, 64, 48), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", vol, compression="zlib")
    lazy = read_image(tmp_path / "c.tif").data
    assert isinstance(lazy, StoreArray) and lazy.shape == vol.shape and lazy.dtype == vol.dtype
    mask = np.zeros(40, bool)
    mask[[3, 17]] = True
    keys = [5, -1, slice(2, 30, 3), slice(None, None, -2), (Ellipsis, 5), (slice(None), 10),
            [3, 1, 3], (5, [1, 2], 3), (0, slice(None), [4, 2]), mask, (slice(4, 4),),
            (np.int64(7), slice(60, 10, -7), slice(1, None))]
    for k in keys:
        np.testing.assert_array_equal(lazy[k], vol[k], err_msg=str(k))
    np.testing.assert_array_equal(np.asarray(lazy), vol)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lazy))[11], vol[11])
    with pytest.raises(IndexError):
        lazy[40]
    # uncompressed files are memory-mapped
    tifffile.imwrite(tmp_path / "u.tif", vol)
    mm = read_image(tmp_path / "u.tif").data
    assert isinstance(mm, np.memmap)
    np.testing.assert_array_equal(mm[7], vol[7])


# ---- Zarr -------------------------------------------------------------------------------

def test_zarr_labels_round_trip_with_ome_metadata(tmp_path):
    lab = RNG.integers(0, 300000, (5, 40, 33)).astype(np.uint32)
    out = write_labels(tmp_path / "lab.zarr", lab, voxel_size=(40.0, 6.0, 6.0))
    r = read_image(out)
    assert r.voxel_size == (40.0, 6.0, 6.0) and r.data.dtype == np.uint32
    np.testing.assert_array_equal(np.asarray(r.data), lab)
    g = zarr.open_group(str(out), mode="r")
    ms = g.attrs["multiscales"][0]
    assert [a["unit"] for a in ms["axes"]] == ["nanometer"] * 3
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [40.0, 6.0, 6.0]
    assert "image-label" in g.attrs
    assert _files(tmp_path) == ["lab.zarr"]  # no temp folder left
    from panoptem.io.zarr_write import LABEL_CLEVEL
    codec = g["0"].compressors[0]
    assert (codec.cname, codec.clevel) == ("zstd", LABEL_CLEVEL)  # the one label codec, as blockwise outputs


def test_ome_zarr_5d_micrometre_and_group_keys(tmp_path):
    g = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=2)
    data = RNG.integers(0, 255, (1, 1, 4, 10, 12), dtype=np.uint8)
    g.create_array("s0", data=data, chunks=(1, 1, 2, 10, 12))
    g.create_array("s1", data=data[..., ::2, ::2], chunks=(1, 1, 2, 5, 6))
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + \
        [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.05, 0.01, 0.01]}]},
        {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.05, 0.02, 0.02]}]}]}]
    r = read_image(tmp_path / "img.zarr")
    assert r.data.shape == (4, 10, 12) and r.voxel_size == pytest.approx((50.0, 10.0, 10.0))
    np.testing.assert_array_equal(r.data[1], data[0, 0, 1])
    r1 = read_image(tmp_path / "img.zarr", key="s1")
    assert r1.data.shape == (4, 5, 6) and r1.voxel_size == pytest.approx((50.0, 20.0, 20.0))
    r1 = read_image(tmp_path / "img.zarr" / "s1")        # the level's own folder: its scale too
    assert r1.data.shape == (4, 5, 6) and r1.voxel_size == pytest.approx((50.0, 20.0, 20.0))
    assert image_keys(tmp_path / "img.zarr") == []      # one image (a pyramid)
    # a plain group with two arrays needs a key
    h = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    h.create_array("raw", data=np.zeros((3, 4, 5), np.uint8))
    h.create_array("seg", data=np.ones((3, 4, 5), np.uint16))
    with pytest.raises(PanoptemError, match="raw, seg"):
        read_image(tmp_path / "two.zarr")
    assert image_keys(tmp_path / "two.zarr") == ["raw", "seg"]
    one = zarr.open_group(str(tmp_path / "one.zarr"), mode="w", zarr_format=2)   # one pyramid, in a group
    one.create_group("em")
    import shutil
    shutil.copytree(tmp_path / "img.zarr", tmp_path / "one.zarr" / "em" / "fibsem")
    r = read_image(tmp_path / "one.zarr")
    assert r.key == "em/fibsem/s0" and r.voxel_size == pytest.approx((50.0, 10.0, 10.0))
    assert image_keys(tmp_path / "one.zarr") == []
    assert read_image(tmp_path / "two.zarr", key="seg", lazy=False).data.dtype == np.uint16


# ---- MRC, HDF5 --------------------------------------------------------------------------

def test_mrc_round_trip_angstrom_to_nm(tmp_path):
    vol = RNG.integers(-100, 100, (6, 20, 24), dtype=np.int16)
    with mrcfile.new(tmp_path / "t.mrc") as m:
        m.set_data(vol)
        m.voxel_size = (4.0, 5.0, 30.0)  # x, y, z in Å
    r = read_image(tmp_path / "t.mrc")
    assert isinstance(r.data, np.memmap) and r.voxel_size == pytest.approx((3.0, 0.5, 0.4))
    np.testing.assert_array_equal(r.data, vol)
    with mrcfile.new(tmp_path / "2d.rec") as m:
        m.set_data(vol[0].astype(np.float32))
        m.voxel_size = 10.0
    r = read_image(tmp_path / "2d.rec", lazy=False)
    assert r.data.shape == (20, 24) and r.voxel_size == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_mrc_bytes_are_unsigned_where_imod_says_so(tmp_path, byteorder):
    """Mode 0 is signed (MRC2014) unless the header carries IMOD's stamp with the signed-bytes
    flag clear, as IMOD writes bytes: then 9..250 must not read as -128..127."""
    vol = RNG.integers(9, 251, (3, 8, 10), dtype=np.uint8)
    for stamp, flags, want in ((1146047817, 0, vol), (1146047817, 1, vol.view(np.int8)), (0, 0, vol.view(np.int8))):
        path = tmp_path / f"b{stamp}_{flags}.mrc"
        with mrcfile.new(path) as m:
            m.set_data(vol.view(np.int8).astype(np.dtype("i1").newbyteorder(byteorder)))
            extra = bytearray(m.header.extra2.tobytes())
            extra[40:48] = np.array([stamp, flags], np.dtype("i4").newbyteorder(m.header.mode.dtype.byteorder)).tobytes()
            m.header.extra2 = np.frombuffer(bytes(extra), np.uint8).view(m.header.extra2.dtype)
        for lazy in (True, False):
            r = read_image(path, lazy=lazy)
            assert r.data.dtype == want.dtype, (stamp, flags, lazy)
            np.testing.assert_array_equal(r.data, want)


def test_hdf5_key_auto_key_and_voxel_attrs(tmp_path):
    vol = RNG.integers(0, 1000, (4, 9, 11), dtype=np.uint16)
    with h5py.File(tmp_path / "one.h5", "w") as f:
        d = f.create_dataset("volumes/raw", data=vol)
        d.attrs["element_size_um"] = [0.03, 0.005, 0.005]
    r = read_image(tmp_path / "one.h5")
    assert isinstance(r.data, StoreArray) and r.voxel_size == pytest.approx((30.0, 5.0, 5.0))
    np.testing.assert_array_equal(r.data[2:4, ::-1], vol[2:4, ::-1])
    with h5py.File(tmp_path / "two.hdf5", "w") as f:
        f["raw"] = vol
        f["labels"] = vol.astype(np.uint32)
        f["labels"].attrs["resolution"] = [40, 4, 4]
    with pytest.raises(PanoptemError, match="labels, raw"):
        read_image(tmp_path / "two.hdf5")
    with pytest.raises(PanoptemError, match="no dataset 'nope'"):
        read_image(tmp_path / "two.hdf5", key="nope")
    r = read_image(tmp_path / "two.hdf5", key="labels", lazy=False)
    assert r.data.dtype == np.uint32 and r.voxel_size == (40.0, 4.0, 4.0)
    np.testing.assert_array_equal(r.data, vol)


# ---- PNG and folders --------------------------------------------------------------------

def test_png_grey_and_rgb(tmp_path):
    import imageio.v3 as iio
    grey = RNG.integers(0, 255, (12, 14), dtype=np.uint8)
    iio.imwrite(tmp_path / "g.png", grey)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png").data, grey)
    iio.imwrite(tmp_path / "same.png", np.stack([grey] * 3, -1))  # equal channels: exact
    np.testing.assert_array_equal(read_image(tmp_path / "same.png").data, grey)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (0, 0, 200)
    iio.imwrite(tmp_path / "c.png", rgb)
    r = read_image(tmp_path / "c.png").data
    assert r.dtype == np.uint8 and r.tolist() == [[54, 0], [0, 14]]  # 0.2125*255, 0.0721*200
    stack = RNG.integers(0, 255, (4, 12, 14), dtype=np.uint8)     # a TIFF stack misnamed .png: all of it
    tifffile.imwrite(tmp_path / "stack.png", stack, photometric="minisblack")
    r = read_image(tmp_path / "stack.png")
    np.testing.assert_array_equal(np.asarray(r.data), stack)
    assert any("is a TIFF file (named .png)" in n for n in r.notes)


def test_folder_of_pngs_natural_order_lazy(tmp_path):
    import imageio.v3 as iio
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in (10, 2, 1, 33):
        iio.imwrite(folder / f"img{i}.png", np.full((5, 7), i, np.uint8))
    (folder / "notes.txt").write_text("ignored")
    r = read_image(folder)
    assert isinstance(r.data, ImageStack) and r.data.shape == (4, 5, 7) and r.axes == "ZYX"
    assert [int(r.data[z, 0, 0]) for z in range(4)] == [1, 2, 10, 33]
    np.testing.assert_array_equal(r.data[1:3, 2], np.array([[2] * 7, [10] * 7], np.uint8))
    eager = read_image(folder, lazy=False).data
    assert isinstance(eager, np.ndarray) and eager[:, 0, 0].tolist() == [1, 2, 10, 33]
    iio.imwrite(folder / "img40.png", np.zeros((6, 7), np.uint8))
    with pytest.raises(PanoptemError, match="img40.png"):
        read_image(folder)


# ---- streaming, atomicity, protection -----------------------------------------------------

def test_streaming_tiff_writer_in_order(tmp_path):
    vol = RNG.integers(0, 2**20, (7, 16, 12)).astype(np.uint32)
    with open_label_writer(tmp_path / "s.tif", vol.shape, np.uint32, voxel_size=(3, 2, 1)) as w:
        w[0:3] = vol[0:3]
        w[3] = vol[3]
        w[4:7] = vol[4:7]
        assert _files(tmp_path)[0].startswith(".s.tif.")  # only a temp file while writing
    r = read_image(tmp_path / "s.tif")
    np.testing.assert_array_equal(np.asarray(r.data), vol)
    assert r.voxel_size == (3.0, 2.0, 1.0) and _files(tmp_path) == ["s.tif"]
    with pytest.raises(PanoptemError, match="slice order"):
        with open_label_writer(tmp_path / "o.tif", vol.shape, np.uint32) as w:
            w[2:4] = vol[2:4]
    with pytest.raises(PanoptemError, match="Only 3 of 7"):
        with open_label_writer(tmp_path / "o.tif", vol.shape, np.uint32) as w:
            w[0:3] = vol[0:3]
    with pytest.raises(PanoptemError, match="do not fit in uint16"):
        with open_label_writer(tmp_path / "o.tif", vol.shape, np.uint16) as w:
            w[0:3] = vol[0:3]
    assert _files(tmp_path) == ["s.tif"]


def test_streaming_zarr_writer_any_order(tmp_path):
    vol = RNG.integers(1, 2**31, (23, 9, 10)).astype(np.uint32)
    order = [(20, 23), (0, 2), (5, 6), (2, 5), (12, 20), (8, 12), (6, 8)]
    with open_label_writer(tmp_path / "s.zarr", vol.shape, np.uint32, chunks=(4, 5, 5)) as w:
        for z0, z1 in order:
            w[z0:z1] = vol[z0:z1]
        w[7, 1:3, 2] = 5  # partial write
    vol[7, 1:3, 2] = 5
    r = read_image(tmp_path / "s.zarr")
    np.testing.assert_array_equal(np.asarray(r.data), vol)
    assert r.voxel_size is None and _files(tmp_path) == ["s.zarr"]
    # many partially filled chunk rows at once: buffered rows are flushed as they are
    with open_label_writer(tmp_path / "p.zarr", vol.shape, np.uint32, chunks=(4, 9, 10)) as w:
        for z in list(range(0, 23, 2)) + list(range(1, 23, 2)):
            w[z] = vol[z]
    np.testing.assert_array_equal(read_image(tmp_path / "p.zarr", lazy=False).data, vol)


@pytest.mark.parametrize("name", ["x.tif", "x.zarr"])
def test_exception_inside_writer_leaves_no_file(tmp_path, name):
    with pytest.raises(RuntimeError):
        with open_label_writer(tmp_path / name, (4, 8, 8), np.uint32) as w:
            w[0:2] = np.ones((2, 8, 8), np.uint32)
            raise RuntimeError("crash")
    assert _files(tmp_path) == []


@pytest.mark.parametrize("name", ["y.tif", "y.zarr"])
def test_overwrite_refused_unless_asked_and_inputs_always(tmp_path, name):
    a = np.ones((6, 6), np.uint8)
    out = write_labels(tmp_path / name, a)
    with pytest.raises(PanoptemError, match="overwrite=True"):
        write_labels(tmp_path / name, a * 2)
    write_labels(tmp_path / name, a * 2, overwrite=True)
    assert read_image(out, lazy=False).data.max() == 2
    assert _files(tmp_path) == [name]
    rel = os.path.relpath(out)
    with pytest.raises(PanoptemError, match="input"):
        write_labels(out, a, overwrite=True, inputs=[rel])
    if name.endswith(".zarr"):  # nothing inside an input store either
        with pytest.raises(PanoptemError, match="input"):
            write_labels(out / "labels.zarr", a, inputs=[out])
    os.symlink(out, tmp_path / ("link" + out.suffix))
    with pytest.raises(PanoptemError, match="input"):
        write_labels(tmp_path / ("link" + out.suffix), a, overwrite=True, inputs=[out])
    assert read_image(out, lazy=False).data.max() == 2


# ---- errors -----------------------------------------------------------------------------

def test_read_errors_say_what_to_do(tmp_path):
    with pytest.raises(PanoptemError, match="No file or folder"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "a.xyz").write_bytes(b"x")
    with pytest.raises(PanoptemError, match=r"unsupported extension '\.xyz'.*\.tif.*\.zarr"):
        read_image(tmp_path / "a.xyz")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(PanoptemError, match="Could not read"):
        read_image(tmp_path / "bad.tif")
    with pytest.raises(PanoptemError, match="unsupported extension"):
        write_labels(tmp_path / "o.png", np.ones((3, 3), np.uint8))
    with pytest.raises(PanoptemError, match="2D .* or 3D"):
        write_labels(tmp_path / "o.tif", np.ones((2, 2, 3, 3), np.uint8))
    tifffile.imwrite(tmp_path / "dot.tif", np.zeros((1, 1, 1), np.uint8))
    tifffile.imwrite(tmp_path / "row.tif", np.zeros((1, 1, 9), np.uint8))
    with pytest.raises(PanoptemError, match=r"too small .* single pixel; give a 2D"):
        read_image(tmp_path / "dot.tif")
    with pytest.raises(PanoptemError, match=r"too small .* single line of pixels; give a 2D"):
        read_image(tmp_path / "row.tif")
    with mrcfile.new(tmp_path / "t.mrc") as m:
        m.set_data(np.zeros((4, 8, 8), np.int8))
    with open(tmp_path / "t.mrc", "r+b") as f:
        f.truncate(1024 + 100)
    with pytest.raises(PanoptemError, match="truncated"):
        read_image(tmp_path / "t.mrc")


@pytest.mark.slow
def test_lucchi_lazy(lucchi):
    path = lucchi / "training_image.tif"
    img = read_image(path)
    assert img.data.shape == (165, 768, 1024) and img.data.dtype == np.uint8 and img.axes == "ZYX"
    assert img.voxel_size is None  # the file records no voxel size (5 nm per SOURCE.md)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[100].asarray()
    np.testing.assert_array_equal(img.data[100], page)
    np.testing.assert_array_equal(img.data[98:101:2, 5], np.stack([tifffile.imread(path, key=98)[5], page[5]]))


# ---- Zarr writes --------------------------------------------------------------------------

def test_zarr_put_leaves_out_empty_chunks_with_its_own_fill_test(tmp_path):
    from panoptem.io.zarr_write import _prototype, put
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 8, 8), chunks=(2, 4, 4), dtype="uint32",
                            fill_value=0, chunk_key_encoding={"name": "v2", "separator": "."})
    vol = np.zeros((4, 8, 8), np.uint32)
    vol[0, 0, 0] = 7          # chunk 0.0.0
    vol[3, 5, 6] = 2 ** 31    # chunk 1.1.1
    put(arr, (slice(0, 4),), vol)
    np.testing.assert_array_equal(arr[:], vol)
    assert sorted(f for f in _files(tmp_path / "a.zarr") if not f.startswith("zarr")) == ["0.0.0", "1.1.1"]
    put(arr, (slice(0, 2), slice(0, 4), slice(0, 4)), np.zeros((2, 4, 4), np.uint32))  # emptied: deleted
    assert "0.0.0" not in _files(tmp_path / "a.zarr")
    np.testing.assert_array_equal(arr[:], np.where(np.arange(4)[:, None, None] < 2, 0, vol))
    buf = _prototype().nd_buffer  # the test itself, for each kind of array
    assert buf.from_numpy_array(np.zeros((3, 3), np.uint16)).all_equal(0)
    assert not buf.from_numpy_array(np.eye(3, dtype=np.uint16)).all_equal(0)
    assert buf.from_numpy_array(np.full(4, 5, np.int64)).all_equal(5)
    assert not buf.from_numpy_array(np.array([5, 5, 4], np.int64)).all_equal(5)
    assert not buf.from_numpy_array(np.array([True, False])).all_equal(False)
    assert buf.from_numpy_array(np.full(3, np.nan, np.float32)).all_equal(np.nan)  # floats: zarr's own


@pytest.mark.parametrize("shape,dtype", [((2, 700, 1000), np.uint32), ((70, 33), np.uint16), ((2, 5, 7), np.uint64)])
def test_tiff_labels_are_standard_deflate_strips_any_reader_decodes(tmp_path, shape, dtype):
    import zlib
    lab = RNG.integers(0, 5, shape).astype(dtype) * dtype(np.iinfo(dtype).max // 5)
    out = write_labels(tmp_path / "lab.tif", lab)
    np.testing.assert_array_equal(read_image(out).data, lab)
    with tifffile.TiffFile(out) as tf:
        for page in tf.pages:
            assert page.compression == 8  # Adobe deflate
            rows, got = page.rowsperstrip, []
            for off, n in zip(page.dataoffsets, page.databytecounts):
                tf.filehandle.seek(off)
                got.append(np.frombuffer(zlib.decompress(tf.filehandle.read(n)), page.dtype).reshape(-1, shape[-1]))
            assert len(got) == -(-shape[-2] // rows) and (len(got) > 1) == (shape[-2] == 700)  # 11 strips there
            np.testing.assert_array_equal(np.concatenate(got), page.asarray())


def test_zarr_dense_arrays_store_every_chunk_without_testing_it(tmp_path):
    from panoptem.io.zarr_write import dense
    arr = zarr.create_array(str(tmp_path / "d.zarr"), shape=(4, 4), chunks=(2, 4), dtype="uint8", fill_value=0,
                            chunk_key_encoding={"name": "v2", "separator": "."})
    arr[:2] = 0  # zarr's default: an empty chunk is not stored
    assert "0.0" not in _files(tmp_path / "d.zarr")
    d = dense(arr)
    d[:2] = 0
    d[2:] = 9
    assert {"0.0", "1.0"} <= set(_files(tmp_path / "d.zarr"))
    np.testing.assert_array_equal(arr[:], np.repeat([0, 9], 8).reshape(4, 4))


def test_float_labels_of_2_to_the_32_are_written_whole_or_refused(tmp_path):
    # compared as float32, 2**32 passed for 2**32 - 1 and was written as 0
    lab = np.array([[0, 2**32], [1, 2]], np.float32)
    np.testing.assert_array_equal(read_image(write_labels(tmp_path / "a.tif", lab)).data, lab.astype(np.uint64))
    with open_label_writer(tmp_path / "b.zarr", lab.shape, np.uint32) as w, \
            pytest.raises(PanoptemError, match="do not fit"):
        w[...] = lab
    with pytest.raises(PanoptemError, match="does not fit in uint64"):
        write_labels(tmp_path / "c.tif", np.array([[0, 2.0**64]]))


def test_labels_written_together_to_one_path_are_refused_before_any_is_written(tmp_path):
    lab = np.ones((3, 4), np.uint32)
    with pytest.raises(PanoptemError, match="one path"):
        write_labels_together([(tmp_path / "out.tif", lab), (tmp_path / "out.tif", lab * 2)])
    assert list(tmp_path.iterdir()) == []


def test_an_output_inside_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PanoptemError, match="is \\(or lies in\\) a file"):
        write_labels(tmp_path / "notes.txt" / "out.tif", np.ones((3, 4), np.uint32))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_tiny_pixel_size_is_kept_in_the_tiff_description(tmp_path):
    # 0.002 nm is past what a TIFF resolution rational holds (pixels per cm): tifffile raised
    path = write_labels(tmp_path / "a.tif", np.ones((2, 3, 4), np.uint32), voxel_size=(1.0, 0.002, 0.002))
    assert read_image(path).voxel_size == pytest.approx((1.0, 0.002, 0.002))


def test_one_pixel_high_colour_png_and_a_folder_of_one_image(tmp_path):
    import imageio.v3 as iio
    iio.imwrite(tmp_path / "row.png", np.zeros((1, 7, 3), np.uint8))
    with pytest.raises(PanoptemError, match="line of pixels"):  # was read as a (7, 3) grey image
        read_image(tmp_path / "row.png")
    (tmp_path / "one").mkdir()
    tifffile.imwrite(tmp_path / "one" / "s.tif", np.arange(30, dtype=np.uint8).reshape(5, 6))
    for lazy in (True, False):
        assert read_image(tmp_path / "one", lazy=lazy).data.shape == (5, 6)


def test_hdf5_units_stored_as_fixed_length_bytes(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        d = f.create_dataset("raw", data=np.zeros((2, 3, 4), np.uint8))
        d.attrs["resolution"] = [0.03, 0.005, 0.005]
        d.attrs.create("unit", np.bytes_(b"um"), dtype="S2")
    assert read_image(tmp_path / "a.h5").voxel_size == pytest.approx((30.0, 5.0, 5.0))


def test_tiff_written_a_page_at_a_time_reads_as_a_stack(tmp_path):
    vol = np.random.default_rng(0).integers(0, 60000, (4, 5, 6), dtype=np.uint16)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:  # one tifffile series per page
        for plane in vol:
            tw.write(plane, compression="zlib")
    lazy, eager = read_image(tmp_path / "pages.tif"), read_image(tmp_path / "pages.tif", lazy=False)
    np.testing.assert_array_equal(eager.data, vol)
    np.testing.assert_array_equal(lazy.data[1:4:2, 1:3], vol[1:4:2, 1:3])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lazy.data))[3], vol[3])
    assert "read as slices" in lazy.notes[0]
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tw:
        for shape in ((5, 6), (7, 8)):
            tw.write(np.ones(shape, np.uint8))
    img = read_image(tmp_path / "mixed.tif")
    assert img.shape == (5, 6) and "only the first" in img.notes[0]


def test_a_plain_file_named_zarr_is_told_a_store_is_a_folder(tmp_path):
    (tmp_path / "x.zarr").write_bytes(b"not a folder")
    with pytest.raises(PanoptemError, match="store is a folder"):
        read_image(tmp_path / "x.zarr")


@pytest.mark.parametrize("given", [5, "5,5", (5, "x")])
def test_write_labels_refuses_a_voxel_size_that_is_not_one_size_per_axis(tmp_path, given):
    from panoptem.io import write_labels
    with pytest.raises(PanoptemError, match="voxel_size must be 2 positive numbers"):
        write_labels(tmp_path / "l.tif", np.ones((4, 4), np.uint32), voxel_size=given)
    assert not (tmp_path / "l.tif").exists()


def test_write_labels_of_ragged_nested_lists_is_one_error(tmp_path):
    from panoptem.io import write_labels
    with pytest.raises(PanoptemError, match="labels is nested lists of unequal lengths"):
        write_labels(tmp_path / "l.tif", [[1, 2], [3]])
