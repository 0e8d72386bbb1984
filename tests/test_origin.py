"""The position of a volume in space (an OME-Zarr level's translation) read with it and written
with the labels made on its grid, so that labels and image overlay in napari, neuroglancer...
"""
import json

import numpy as np
import pytest
import zarr

from panoptem.errors import PanoptemError
from panoptem.io import read_image, write_image, write_labels


def _ngff(path, levels, outer=None, axes="zyx", unit="micrometer"):
    """An OME-Zarr image whose levels are ``(name, data, scale, translation)``."""
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    ds = []
    for name, data, scale, shift in levels:
        g.create_array(name, data=data, chunks=data.shape)
        t = [{"type": "scale", "scale": scale}] + ([{"type": "translation", "translation": shift}] if shift else [])
        ds.append({"path": name, "coordinateTransformations": t})
    ax = [{"name": a, "type": "channel"} if a == "c" else {"name": a, "type": "space", "unit": unit} for a in axes]
    ms = {"version": "0.4", "axes": ax, "datasets": ds}
    if outer:
        ms["coordinateTransformations"] = outer
    g.attrs["multiscales"] = [ms]
    return path


def test_the_origin_of_each_level_comes_in_nm(tmp_path):
    v = np.arange(4 * 16 * 16, dtype=np.uint8).reshape(4, 16, 16)
    p = _ngff(tmp_path / "a.zarr", [("s0", v, [0.01, 0.005, 0.005], [1.0, 2.0, 3.0]),
                                    ("s1", v[:, ::2, ::2], [0.01, 0.01, 0.01], [1.0, 2.0025, 3.0025])])
    assert read_image(p).origin == pytest.approx((1000.0, 2000.0, 3000.0))
    assert read_image(p, key="s1").origin == pytest.approx((1000.0, 2002.5, 3002.5))
    assert read_image(p / "s1").origin == pytest.approx((1000.0, 2002.5, 3002.5))   # the level's own folder
    assert read_image(p, pixel_size_nm=10).origin == pytest.approx((1000.0, 2002.5, 3002.5))
    # the multiscale's own transformations apply after the level's; a channel axis of one is dropped,
    # negative positions are positions too
    c = _ngff(tmp_path / "c.zarr", [("0", v[None], [1, 2, 5, 5], [0, -10, 4, 0])], axes="czyx", unit="nanometer",
              outer=[{"type": "scale", "scale": [1, 1, 2, 2]}, {"type": "translation", "translation": [0, 0, 0, 100]}])
    img = read_image(c)
    assert img.voxel_size == (2.0, 10.0, 10.0) and img.origin == pytest.approx((-10.0, 8.0, 100.0))
    # none said, or no unit to put it in nm: no origin
    assert read_image(_ngff(tmp_path / "n.zarr", [("0", v, [0.01, 0.005, 0.005], None)])).origin is None
    nounit = _ngff(tmp_path / "u.zarr", [("0", v, [1, 1, 1], [5, 5, 5])], unit=None)
    assert read_image(nounit).voxel_size is None and read_image(nounit).origin is None


def test_an_offset_attribute_beside_resolution_is_an_origin(tmp_path):
    """funlib / daisy and CREMI store ``resolution`` and ``offset`` (nm) on the array."""
    a = zarr.open_array(str(tmp_path / "raw.zarr"), mode="w", shape=(4, 16, 16), dtype=np.uint8, zarr_format=2)
    a.attrs.update(resolution=[40, 4, 4], offset=[400, 80, -8])
    img = read_image(tmp_path / "raw.zarr")
    assert img.voxel_size == (40.0, 4.0, 4.0) and img.origin == (400.0, 80.0, -8.0)


def test_written_labels_carry_the_origin_on_every_level(tmp_path):
    lab = np.zeros((4, 160, 160), np.uint32)
    lab[1:3, 20:90, 30:100] = 5
    p = write_labels(tmp_path / "l.zarr", lab, voxel_size=(10, 5, 5), origin=(1000, -20, 7.5))
    ds = json.loads((p / ".zattrs").read_text())["multiscales"][0]["datasets"]
    assert len(ds) == 2  # a level keeps every second voxel from the first: the same position
    assert all(d["coordinateTransformations"][1] == {"type": "translation", "translation": [1000.0, -20.0, 7.5]}
               for d in ds)
    assert read_image(p).origin == (1000.0, -20.0, 7.5) and read_image(p, key="1").origin == (1000.0, -20.0, 7.5)
    np.testing.assert_array_equal(np.asarray(read_image(p).data[:]), lab)
    img = write_image(tmp_path / "i.zarr", lab.astype(np.uint8), voxel_size=(10, 5, 5), origin=(1, 2, 3))
    assert read_image(img).origin == (1.0, 2.0, 3.0)
    assert read_image(write_labels(tmp_path / "plain.zarr", lab, voxel_size=(10, 5, 5))).origin is None
    with pytest.raises(PanoptemError, match="needs voxel_size"):
        write_labels(tmp_path / "x.zarr", lab, origin=(0, 0, 1))
    with pytest.raises(PanoptemError, match="3 finite numbers"):
        write_labels(tmp_path / "x.zarr", lab, voxel_size=(1, 1, 1), origin=(0, 1))
    assert not (tmp_path / "x.zarr").exists()


def test_segmentation_outputs_keep_the_inputs_origin(tmp_path, tiny_card):
    """segment3d (whole volume, blockwise) and segment2d of one plane write their labels where
    the input lies; a TIFF input has no origin and its OME-Zarr output none either."""
    from typer.testing import CliRunner

    from panoptem.cli import app
    rng = np.random.default_rng(0)
    v = rng.integers(60, 200, (6, 64, 64)).astype(np.uint8)
    p = _ngff(tmp_path / "em.zarr", [("s0", v, [0.008, 0.008, 0.008], [0.5, 1.0, 2.0])])
    run = CliRunner().invoke
    shift = [{"type": "translation", "translation": [500.0, 1000.0, 2000.0]}]
    for args, name in ((["segment3d"], "whole.zarr"), (["segment3d", "--blockwise", "--workers", "1"], "blocks.zarr"),
                       (["segment2d", "--plane", "xz", "--slice", "3"], "xz.zarr")):
        r = run(app, [*args, str(p), "-o", str(tmp_path / name), "--model", str(tiny_card), "--threads", "1"])
        assert r.exit_code == 0, r.output
        ds = json.loads((tmp_path / name / ".zattrs").read_text())["multiscales"][0]["datasets"][0]
        want = shift if name != "xz.zarr" else [{"type": "translation", "translation": [500.0, 2000.0]}]
        assert ds["coordinateTransformations"][1:] == want, name


def test_units_and_offsets_in_the_units_the_voxel_size_is_given_in(tmp_path):
    """funlib writes one unit per axis; an offset is in the voxel size's units (µm here); CREMI's
    HDF5 keeps resolution and offset on the dataset; a translation that cannot be read leaves the
    position unknown rather than the data unreadable."""
    import h5py
    a = zarr.open_array(str(tmp_path / "um.zarr"), mode="w", shape=(4, 16, 16), dtype=np.uint8, zarr_format=2)
    a.attrs.update(voxel_size=[0.03, 0.006, 0.005], units=["um", "um", "um"], offset=[0.3, 0.06, 0])
    img = read_image(tmp_path / "um.zarr")
    assert img.voxel_size == pytest.approx((30.0, 6.0, 5.0)) and img.origin == pytest.approx((300.0, 60.0, 0.0))
    b = zarr.open_array(str(tmp_path / "el.zarr"), mode="w", shape=(4, 16, 16), dtype=np.uint8, zarr_format=2)
    b.attrs.update(element_size_um=[0.04, 0.004, 0.004], offset=[0.4, 0.08, 0])
    assert read_image(tmp_path / "el.zarr").origin == pytest.approx((400.0, 80.0, 0.0))
    with h5py.File(tmp_path / "cremi.h5", "w") as f:
        d = f.create_dataset("volumes/raw", data=np.zeros((4, 16, 16), np.uint8))
        d.attrs["resolution"], d.attrs["offset"] = [40.0, 4.0, 4.0], [400.0, 80.0, 0.0]
        f.create_dataset("volumes/labels/neuron_ids", data=np.zeros((4, 16, 16), np.uint64))
    img = read_image(tmp_path / "cremi.h5", key="volumes/raw")
    assert img.voxel_size == (40.0, 4.0, 4.0) and img.origin == (400.0, 80.0, 0.0)
    v = np.zeros((4, 16, 16), np.uint8)
    for bad in ([None, 0, 0], ["a", 0, 0], 5):
        p = _ngff(tmp_path / f"bad{len(str(bad))}.zarr", [("0", v, [0.01, 0.005, 0.005], bad)])
        img = read_image(p)
        assert img.voxel_size == (10.0, 5.0, 5.0) and img.origin is None
