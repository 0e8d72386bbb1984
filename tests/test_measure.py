import csv

import numpy as np
import pytest

from panoptem.errors import PanoptemError
from panoptem import measure, summarize, to_rows, write_table


def box_volume():
    lab = np.zeros((16, 30, 40), np.uint32)
    lab[3:13, 4:24, 5:35] = 9  # 10 x 20 x 30 voxels
    return lab


def ball(r, shape, vs=(1, 1, 1)):
    """Label 1 inside a ball of radius r nm on a grid of voxel size vs, centred."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    d2 = sum(((g - (s - 1) / 2) * v) ** 2 for g, s, v in zip(grids, shape, vs))
    return (d2 <= r * r).astype(np.uint16)


def test_box_volume_extent_centroid():
    t = measure(box_volume(), voxel_size=(2, 1, 1))
    assert t["label"].tolist() == [9] and t["label"].dtype == np.uint32
    assert t["class_id"].tolist() == [1]
    assert t["voxels"].tolist() == [6000]
    assert t["volume_nm3"].tolist() == [12000.0]
    assert (t["extent_z_nm"][0], t["extent_y_nm"][0], t["extent_x_nm"][0]) == (20.0, 20.0, 30.0)
    # voxel centres at index * size: z (3 + 4.5) * 2, y 4 + 9.5, x 5 + 14.5
    assert (t["centroid_z_nm"][0], t["centroid_y_nm"][0], t["centroid_x_nm"][0]) == (15.0, 13.5, 19.5)
    assert [t[f"bbox_min_{a}"][0] for a in "zyx"] == [3, 4, 5]
    assert [t[f"bbox_max_{a}"][0] for a in "zyx"] == [13, 24, 35]
    assert t["equivalent_diameter_nm"][0] == pytest.approx((6 * 12000 / np.pi) ** (1 / 3))
    # second moments of 30 consecutive x: variance (30^2 - 1) / 12, major axis sqrt(20 var)
    assert t["major_axis_length_nm"][0] == pytest.approx(np.sqrt(20 * (30 ** 2 - 1) / 12))


def test_voxel_size_none_means_one_nm():
    t = measure(box_volume())
    assert t["volume_nm3"].tolist() == [6000.0] and t["extent_z_nm"].tolist() == [10.0]


def test_ball_surface_and_sphericity():
    r = 20.0
    t = measure(ball(r, (47, 47, 47)), voxel_size=(1, 1, 1))
    assert t["volume_nm3"][0] == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.01)
    assert t["surface_area_nm2"][0] == pytest.approx(4 * np.pi * r ** 2, rel=0.05)
    assert abs(t["sphericity"][0] - 1) < 0.1
    assert t["major_axis_length_nm"][0] == pytest.approx(2 * r, rel=0.02)


def test_objects_a_few_voxels_thick_are_meshed_unsmoothed():
    """The smoothing that takes the staircase off large objects would eat small and thin ones: a
    ball of radius 2 voxels, a one-voxel sheet and a sliver whose smoothed peak barely passes 0.5
    keep their binary mesh (sphericity at most that of one voxel's mesh, never in the thousands),
    while a ball of radius 6 is smoothed (within 6 % of 4 pi r^2)."""
    lab = np.zeros((40, 40, 40), np.uint16)
    g = np.mgrid[:40, :40, :40]
    lab[((g - np.array([8, 8, 8])[:, None, None, None]) ** 2).sum(0) <= 4] = 1  # radius 2
    lab[25, 2:30, 2:30] = 2  # a one-voxel sheet
    lab[30:32, 34:36, 30:32] = 3  # 2 x 2 x 2
    lab[35, 35, 33:36] = 4  # three voxels in a row
    lab[((g - np.array([16, 26, 26])[:, None, None, None]) ** 2).sum(0) <= 36] = 5  # radius 6
    t = measure(lab, voxel_size=(5, 5, 5))
    assert (t["sphericity"] < 2.8).all() and (t["sphericity"][:4] > 0.2).all(), t["sphericity"]
    sheet = t["surface_area_nm2"][1] / 25
    assert 2 * 28 * 28 * 0.95 < sheet < 2 * 28 * 28 * 1.05  # its two faces, not what smoothing leaves
    assert t["surface_area_nm2"][4] / 25 == pytest.approx(4 * np.pi * 36, rel=0.06)


def test_anisotropic_ball_in_physical_units():
    r = 40.0  # nm, on 4 x 2 x 2 nm voxels
    t = measure(ball(r, (25, 47, 47), vs=(4, 2, 2)), voxel_size=(4, 2, 2))
    assert t["volume_nm3"][0] == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.02)
    assert t["surface_area_nm2"][0] == pytest.approx(4 * np.pi * r ** 2, rel=0.05)
    assert abs(t["sphericity"][0] - 1) < 0.1
    assert t["centroid_z_nm"][0] == 48.0 and t["centroid_x_nm"][0] == 46.0


@pytest.mark.parametrize("vs", [(5, 5, 5), (30, 5, 5), (50, 5, 5)])
def test_surface_of_a_ball_and_a_capsule_holds_on_serial_section_voxels(vs):
    """Smoothing in voxels left the coarse axis's terraces: a ball of 300 nm measured +9 % at
    30 x 5 x 5 nm and +14 % at 50 x 5 x 5 nm (sphericity 0.92, 0.88), numbers that changed with
    the section thickness."""
    r = 300.0
    n = [int(2 * (r + 40) / v) + 1 for v in vs]
    t = measure(ball(r, n, vs=vs), voxel_size=vs)
    assert t["surface_area_nm2"][0] == pytest.approx(4 * np.pi * r ** 2, rel=0.015)
    assert t["sphericity"][0] == pytest.approx(1.0, abs=0.015)
    # a capsule lying in the sections (150 nm radius, 800 nm between its caps' centres)
    g = np.meshgrid(*[(np.arange(int(1300 / v)) - (int(1300 / v) - 1) / 2) * v for v in vs], indexing="ij")
    y = np.clip(g[1], -400, 400)
    cap = (g[0] ** 2 + (g[1] - y) ** 2 + g[2] ** 2 <= 150 ** 2).astype(np.uint8)
    want = 2 * np.pi * 150 * 800 + 4 * np.pi * 150 ** 2
    assert measure(cap, voxel_size=vs)["surface_area_nm2"][0] == pytest.approx(want, rel=0.025)


@pytest.mark.parametrize("vs, thick", [((30, 5, 5), 80.0), ((50, 5, 5), 120.0), ((5, 5, 5), 20.0)])
def test_a_tilted_sheet_is_meshed_smoothed_whatever_its_width(vs, thick):
    """A flat sheet a few sections thick was taken for an object the smoothing flattens once it
    was wide enough, and meshed unsmoothed: +28 % at 1200 nm across against -7 % at 800."""
    tilt = np.deg2rad(35)  # its normal 35 degrees off z
    for radius in (400, 600):
        n = [int(np.ceil(2 * (radius + 100) / v)) + 8 for v in vs]
        z, y, x = np.meshgrid(*[(np.arange(k) - (k - 1) / 2) * v for k, v in zip(n, vs)], indexing="ij")
        across, along = np.cos(tilt) * z + np.sin(tilt) * y, -np.sin(tilt) * z + np.cos(tilt) * y
        sheet = ((np.abs(across) < thick / 2) & (along ** 2 + x ** 2 < radius ** 2)).astype(np.uint8)
        truth = 2 * np.pi * radius ** 2 + 2 * np.pi * radius * thick
        assert measure(sheet, voxel_size=vs)["surface_area_nm2"][0] == pytest.approx(truth, rel=0.1), radius


def test_axes_match_skimage_with_spacing():
    import skimage.measure as skm
    z, y, x = np.ogrid[-12:13, -22:23, -9:10]
    lab = (((z / 10) ** 2 + (y / 20) ** 2 + (x / 7) ** 2) <= 1).astype(np.uint8) * 3
    vs = (2.0, 1.5, 1.0)
    t = measure(lab, voxel_size=vs, surface=False)
    ref = skm.regionprops_table(lab, spacing=vs,
                                properties=("axis_major_length", "axis_minor_length", "centroid"))
    assert t["major_axis_length_nm"][0] == pytest.approx(ref["axis_major_length"][0])
    assert t["minor_axis_length_nm"][0] == pytest.approx(ref["axis_minor_length"][0])
    assert t["centroid_y_nm"][0] == pytest.approx(ref["centroid-1"][0])
    assert "surface_area_nm2" not in t


def test_2d_disc_area_and_perimeter():
    r = 10.0
    lab = ball(r, (41, 41), vs=(0.5, 0.5)) * 7
    n = int((lab > 0).sum())
    t = measure(lab, voxel_size=(0.5, 0.5))
    assert t["voxels"][0] == n and t["area_nm2"][0] == n * 0.25
    assert t["area_nm2"][0] == pytest.approx(np.pi * r ** 2, rel=0.01)
    assert t["perimeter_nm"][0] == pytest.approx(2 * np.pi * r, rel=0.05)
    assert abs(t["circularity"][0] - 1) < 0.1
    assert "centroid_z_nm" not in t and t["centroid_y_nm"][0] == 10.0
    assert t["equivalent_diameter_nm"][0] == pytest.approx(2 * np.sqrt(n * 0.25 / np.pi))


def test_per_slice_measures_each_slice_as_its_own_2d_image():
    """A stack of separate 2D images (a 2D batch run's, ids restarting in every slice): id 1 of
    slice 0 and id 1 of slice 2 are two objects, each measured in 2D, not one object in 3D."""
    lab = np.zeros((3, 30, 40), np.uint16)
    lab[0, 2:10, 3:20] = 1
    lab[0, 15:25, 25:35] = 2
    lab[2, 5:12, 5:9] = 1                                  # slice 1 holds nothing
    img = np.arange(lab.size, dtype=np.float32).reshape(lab.shape)
    t = measure(lab, voxel_size=(50.0, 4.0, 5.0), image=img, per_slice=True)
    assert list(t)[:2] == ["slice", "label"] and "area_nm2" in t and "volume_nm3" not in t
    assert t["slice"].tolist() == [0, 0, 2] and t["label"].tolist() == [1, 2, 1]
    for z in (0, 2):
        one = measure(lab[z], voxel_size=(4.0, 5.0), image=img[z])
        rows = t["slice"] == z
        assert set(one) == set(t) - {"slice"}
        for k in one:
            np.testing.assert_array_equal(t[k][rows], one[k], err_msg=k)
    assert t["area_nm2"].tolist() == [8 * 17 * 20.0, 10 * 10 * 20.0, 7 * 4 * 20.0]
    with pytest.raises(PanoptemError, match="3D stack of 2D label images"):
        measure(lab[0], per_slice=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_mean_intensity_leaves_out_nan_padding(bad):
    # a running total spread one NaN voxel to the mean of every object after it
    lab = np.zeros((2, 4, 6), np.uint32)
    lab[1, 1:3, 1:4] = 7
    lab[0, 2, 2:4] = 8
    img = np.full(lab.shape, 10.0, np.float32)
    img[0, 0, 0] = bad                   # background padding
    img[0, 2, 3] = bad                   # and inside object 8: its mean is of its other voxel
    img[0, 2, 2] = 4.0
    t = measure(lab, image=img)
    assert t["label"].tolist() == [7, 8] and t["mean_intensity"].tolist() == [10.0, 4.0]
    img[0, 2, 2] = bad                   # an object of padding alone has no mean
    assert np.isnan(measure(lab, image=img)["mean_intensity"][1])


def test_mean_intensity_and_classes():
    lab = np.zeros((6, 8), np.uint32)
    lab[0:2, 0:3] = 1003
    lab[4:6, 2:8] = 2001
    lab[3, 0] = 1001
    img = np.arange(48, dtype=np.uint16).reshape(6, 8)
    t = measure(lab, image=img, label_divisor=1000)
    assert t["label"].tolist() == [1001, 1003, 2001]
    assert t["class_id"].tolist() == [1, 1, 2]
    assert t["voxels"].tolist() == [1, 6, 12]
    assert t["mean_intensity"].tolist() == [24.0, np.mean([0, 1, 2, 8, 9, 10]), np.mean(img[4:6, 2:8])]
    s = summarize(t)
    assert s["class_id"].tolist() == [1, 2] and s["count"].tolist() == [2, 1]
    assert s["total_area_nm2"].tolist() == [7.0, 12.0]
    assert s["mean_area_nm2"].tolist() == [3.5, 12.0]
    assert s["median_area_nm2"].tolist() == [3.5, 12.0]


def test_csv_written_and_reread(tmp_path):
    lab = box_volume()
    lab[0:2, 0:2, 0:3] = 2
    t = measure(lab, voxel_size=(2, 1, 1))
    path = write_table(t, tmp_path / "objects.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(t)
    assert [int(r["label"]) for r in rows] == [2, 9]
    for col in t:
        assert [float(r[col]) for r in rows] == [float(v) for v in t[col]], col
    assert to_rows(t)[1]["volume_nm3"] == 12000.0 and isinstance(to_rows(t)[1]["label"], int)
    assert [p.name for p in tmp_path.iterdir()] == ["objects.csv"]  # no temporary left behind


def test_empty_and_bad_inputs():
    t = measure(np.zeros((4, 5, 6), np.uint8))
    assert len(t["label"]) == 0 and len(t["surface_area_nm2"]) == 0
    assert summarize(t)["count"].tolist() == []
    with pytest.raises(PanoptemError, match="voxel_size"):
        measure(box_volume(), voxel_size=(1, 1))
    with pytest.raises(PanoptemError, match="voxel_size"):
        measure(box_volume(), voxel_size=(1, 0, 1))
    with pytest.raises(PanoptemError, match="shape"):
        measure(box_volume(), image=np.zeros((2, 2, 2)))


def test_the_commands_read_one_dataset_of_a_container_holding_several(tmp_path, capsys):
    """A CREMI-like HDF5 file (raw image and labels side by side): measure, report and evaluate
    take --key / --image-key / --gt-key, and a missing key is asked for by its own option."""
    import json

    import h5py
    from typer.testing import CliRunner

    from panoptem.cli import app
    lab = np.zeros((4, 32, 32), np.uint32)
    lab[1:3, 4:12, 4:12], lab[1:4, 20:30, 18:28] = 1, 2
    raw = np.full(lab.shape, 100, np.uint8)
    raw[lab == 2] = 40
    with h5py.File(tmp_path / "c.h5", "w") as f:
        for name, arr in (("volumes/raw", raw), ("volumes/labels/mito", lab)):
            d = f.create_dataset(name, data=arr)
            d.attrs["resolution"] = [40.0, 4.0, 4.0]
    run = CliRunner().invoke
    h5 = str(tmp_path / "c.h5")
    for extra in ([], ["--blockwise", "--workers", "1", "--block-shape", "4,16,16"]):
        out = tmp_path / f"m{len(extra)}.csv"
        r = run(app, ["measure", h5, "--key", "volumes/labels/mito", "--image", h5, "--image-key", "volumes/raw",
                      "-o", str(out), *extra])
        assert r.exit_code == 0, r.output
        rows = list(csv.DictReader(open(out)))
        assert [float(row["mean_intensity"]) for row in rows] == [100.0, 40.0]
        assert float(rows[0]["volume_nm3"]) == 2 * 64 * 40 * 16
    r = run(app, ["evaluate", h5, h5, "--key", "volumes/labels/mito", "--gt-key", "volumes/labels/mito"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["f1_50"] == 1.0
    from panoptem.cli import main
    capsys.readouterr()
    assert main(["evaluate", h5, h5, "--key", "volumes/labels/mito"]) == 2
    assert "(--gt-key)" in capsys.readouterr().err                             # asked for by its own option
    for extra in ([], ["--blockwise", "--workers", "1"]):
        assert main(["measure", h5, "--key", "volumes/labels/mito", "--image", h5, "-o", str(tmp_path / "x.csv"),
                     *extra]) == 2
        assert "(--image-key)" in capsys.readouterr().err
    r = run(app, ["report", h5, "--key", "volumes/labels/mito", "--image", h5, "--image-key", "volumes/raw",
                  "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output


def test_a_table_is_never_written_over_an_input_nor_under_another_suffix(tmp_path):
    """write_table wrote CSV text under any name, over the labels file measured too."""
    from panoptem._table import write_table
    from panoptem.errors import PanoptemError
    table = {"label": np.array([1, 2]), "volume_nm3": np.array([3.0, 4.0])}
    labels = tmp_path / "labels.tif"
    labels.write_bytes(b"II*\x00 not a table")
    with pytest.raises(PanoptemError, match="ending in .csv, .xlsx, .parquet"):
        write_table(table, labels)
    with pytest.raises(PanoptemError, match="input"):
        write_table(table, tmp_path / "t.csv", inputs=[tmp_path / "t.csv"])
    assert labels.read_bytes() == b"II*\x00 not a table" and not (tmp_path / "t.csv").exists()
    assert write_table(table, tmp_path / "t.csv").read_text().splitlines()[0] == "label,volume_nm3"


def test_a_table_never_replaces_a_folder_unless_asked(tmp_path):
    """A folder at the table's name (a partitioned Parquet dataset, say) was removed and replaced
    by the table, from the Measure and Count docks too; only --overwrite replaces it."""
    from panoptem._table import write_table
    from panoptem.errors import PanoptemError
    table = {"label": np.array([1, 2]), "voxels": np.array([10, 20])}
    ds = tmp_path / "cells.csv"
    ds.mkdir()
    (ds / "part-0.parquet").write_bytes(b"PAR1 earlier")
    with pytest.raises(PanoptemError, match="is a folder; a table is one file"):
        write_table(table, ds)
    assert (ds / "part-0.parquet").read_bytes() == b"PAR1 earlier"
    assert write_table(table, ds, replace_folder=True).read_text().startswith("label,voxels")


def test_a_table_column_given_as_one_value_is_one_error(tmp_path):
    from panoptem._table import write_table
    from panoptem.errors import PanoptemError
    with pytest.raises(PanoptemError, match="give each column as a list or 1D array"):
        write_table({"a": 1}, tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()
