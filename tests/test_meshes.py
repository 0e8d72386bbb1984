"""Surface meshes of objects (``panoptem mesh`` / :func:`panoptem.export_meshes`): the surface
that measure measures, written as PLY / OBJ / STL in nm, outward-facing, placed where the
object is, resumable, and refused with one clear error where the input cannot give them."""
import json

import numpy as np
import pytest
import tifffile
from skimage.measure import mesh_surface_area

import panoptem
from panoptem import meshes
from panoptem.cli import main
from panoptem.errors import PanoptemError

VS = (10.0, 5.0, 4.0)  # anisotropic, as serial sections are


def scene():
    """An ellipsoid (id 3), a box (id 7) and a small ball (id 12) in a ZYX volume."""
    z, y, x = np.mgrid[:30, :60, :70]
    lab = np.zeros((30, 60, 70), np.uint32)
    lab[((z - 14) * VS[0]) ** 2 + ((y - 30) * VS[1]) ** 2 + ((x - 20) * VS[2]) ** 2 < 80.0 ** 2] = 3
    lab[8:22, 20:44, 45:62] = 7
    lab[((z - 25) * VS[0]) ** 2 + ((y - 8) * VS[1]) ** 2 + ((x - 60) * VS[2]) ** 2 < 25.0 ** 2] = 12
    return lab


def read_ply(path):
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    lines = head.decode().splitlines()
    nv = int(next(s for s in lines if s.startswith("element vertex")).split()[-1])
    nf = int(next(s for s in lines if s.startswith("element face")).split()[-1])
    verts = np.frombuffer(body[:12 * nv], "<f4").reshape(nv, 3)
    tri = np.frombuffer(body[12 * nv:], dtype=[("n", "u1"), ("i", "<i4", (3,))], count=nf)
    assert (tri["n"] == 3).all()
    return verts.astype(np.float64), tri["i"].astype(np.int64)


def read_obj(path):
    v, f = [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            v.append([float(t) for t in line.split()[1:]])
        elif line.startswith("f "):
            f.append([int(t) - 1 for t in line.split()[1:]])
    return np.asarray(v), np.asarray(f)


def read_stl(path):
    data = path.read_bytes()
    n = int(np.frombuffer(data[80:84], "<u4")[0])
    rec = np.frombuffer(data[84:], dtype=[("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")], count=n)
    return rec["n"].astype(np.float64), rec["v"].astype(np.float64)


def test_meshes_are_the_measured_surfaces_outward_in_nm_where_the_objects_are(tmp_path):
    lab = scene()
    origin = (1000.0, -50.0, 20.0)
    table = panoptem.measure(lab, voxel_size=VS)
    res = panoptem.export_meshes(lab, tmp_path / "m", voxel_size=VS, origin=origin)
    assert [o["label"] for o in res["objects"]] == [3, 7, 12] and res["coordinates"] == "x, y, z in nm"
    assert json.loads((tmp_path / "m" / meshes.INDEX).read_text()) == res
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["12.ply", "3.ply", "7.ply", meshes.INDEX]
    for i, rec in enumerate(res["objects"]):
        v, f = read_ply(tmp_path / "m" / rec["file"])
        assert (len(v), len(f)) == (rec["vertices"], rec["faces"])
        area = mesh_surface_area(v, f)
        assert area == pytest.approx(table["surface_area_nm2"][i], rel=1e-4)  # the measured surface
        assert rec["area_nm2"] == pytest.approx(table["surface_area_nm2"][i], rel=1e-9)
        vol = meshes.mesh_volume(v, f)
        assert vol > 0  # faces turn counter-clockwise seen from outside
        # the volume kept: within 0.3 % for the large ones, 4 % for the ball 5 sections deep (on so few
        # voxels the triangles depart from the smoothed mask the level was chosen on)
        assert vol == pytest.approx(table["volume_nm3"][i], rel=0.003 if rec["label"] != 12 else 0.05)
        # x, y, z in nm, the origin added: centred on the object's centroid, inside its box
        centre = [table[f"centroid_{a}_nm"][i] + origin["zyx".index(a)] for a in "xyz"]
        assert np.allclose(v.mean(axis=0), centre, atol=0.1 * max(VS) + 0.02 * np.ptp(v, axis=0).max())
        lo = [table[f"bbox_min_{a}"][i] * VS["zyx".index(a)] + origin["zyx".index(a)] for a in "xyz"]
        hi = [table[f"bbox_max_{a}"][i] * VS["zyx".index(a)] + origin["zyx".index(a)] for a in "xyz"]
        assert (v.min(axis=0) >= np.asarray(lo) - 2 * max(VS)).all() and (v.max(axis=0) <= np.asarray(hi) + max(VS)).all()


def test_obj_and_stl_hold_the_same_mesh(tmp_path):
    lab = scene()
    ply = panoptem.export_meshes(lab, tmp_path / "ply", voxel_size=VS, ids=[3])
    panoptem.export_meshes(lab, tmp_path / "obj", voxel_size=VS, ids=[3], fmt="obj")
    panoptem.export_meshes(lab, tmp_path / "stl", voxel_size=VS, ids=[3], fmt="stl")
    v, f = read_ply(tmp_path / "ply" / "3.ply")
    vo, fo = read_obj(tmp_path / "obj" / "3.obj")
    np.testing.assert_array_equal(fo, f)
    np.testing.assert_allclose(vo, v, rtol=1e-5, atol=1e-3)
    normals, tri = read_stl(tmp_path / "stl" / "3.stl")
    np.testing.assert_allclose(tri, v[f], rtol=1e-6, atol=1e-4)
    out = np.einsum("ij,ij->i", normals, tri.mean(axis=1) - v.mean(axis=0))
    assert (out > 0).mean() > 0.99  # the facets' normals point away from the ellipsoid's centre
    assert ply["objects"][0]["faces"] == len(tri)


def test_a_stopped_run_resumes_with_the_meshes_it_wrote(tmp_path, monkeypatch):
    lab = scene()
    fresh = panoptem.export_meshes(lab, tmp_path / "fresh", voxel_size=VS)
    src = tmp_path / "lab.tif"
    tifffile.imwrite(src, lab)
    made, real = [], meshes.object_mesh

    def stop_at_the_second(mask, *a, **k):
        made.append(1)
        if len(made) == 2:
            raise KeyboardInterrupt
        return real(mask, *a, **k)

    monkeypatch.setattr(meshes, "object_mesh", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        panoptem.export_meshes(lab, tmp_path / "m", voxel_size=VS, inputs=[src])
    work = tmp_path / f".m{meshes.WORK_SUFFIX}"
    assert not (tmp_path / "m").exists() and (work / "3.ply").is_file()
    made.clear()
    monkeypatch.setattr(meshes, "object_mesh", lambda mask, *a, **k: (made.append(1), real(mask, *a, **k))[1])
    res = panoptem.export_meshes(lab, tmp_path / "m", voxel_size=VS, inputs=[src])
    assert len(made) == 2 and res == fresh and not work.exists()  # the two it had not written
    for name in ("3.ply", "7.ply", "12.ply"):
        assert (tmp_path / "m" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    # another call (another format) does not take a stopped run's meshes
    monkeypatch.setattr(meshes, "object_mesh", stop_at_the_second)
    made.clear()
    with pytest.raises(KeyboardInterrupt):
        panoptem.export_meshes(lab, tmp_path / "n", voxel_size=VS, inputs=[src])
    monkeypatch.setattr(meshes, "object_mesh", lambda mask, *a, **k: (made.append(1), real(mask, *a, **k))[1])
    made.clear()
    panoptem.export_meshes(lab, tmp_path / "n", voxel_size=VS, inputs=[src], fmt="obj")
    assert len(made) == 3 and sorted(p.suffix for p in (tmp_path / "n").iterdir()) == [".json"] + [".obj"] * 3


def test_bad_requests_are_one_clear_error_and_touch_nothing(tmp_path):
    lab = scene()
    for kw, msg in (({"fmt": "vtk"}, "Mesh format must be one of ply, obj, stl"),
                    ({"ids": [3, 99]}, r"Label\(s\) 99 are not in the labels"),
                    ({"voxel_size": (1.0, 0.0, 1.0)}, "voxel_size must be 3 positive numbers"),
                    ({"origin": (1.0, 2.0)}, "origin must be 3 finite numbers")):
        with pytest.raises(PanoptemError, match=msg):
            panoptem.export_meshes(lab, tmp_path / "m", **kw)
    with pytest.raises(PanoptemError, match="give a ZYX label volume"):
        panoptem.export_meshes(lab[0], tmp_path / "m")
    assert not list(tmp_path.iterdir())
    (tmp_path / "m").mkdir()
    with pytest.raises(PanoptemError, match="already exists"):
        panoptem.export_meshes(lab, tmp_path / "m", voxel_size=VS)


def test_cli_mesh_reads_the_voxel_size_and_writes_the_ids_asked(capsys, tmp_path):
    lab = scene()
    panoptem.write_labels(tmp_path / "lab.tif", lab, voxel_size=VS)
    code = main(["mesh", str(tmp_path / "lab.tif"), "-o", str(tmp_path / "m"), "--format", "stl", "--ids", "7,12"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rec = json.loads(out.strip().splitlines()[-1])
    assert rec["objects"] == 2 and rec["voxel_size_nm"] == list(VS) and rec["format"] == "stl"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["12.stl", "7.stl", meshes.INDEX]
    table = panoptem.measure(lab, voxel_size=VS)
    assert rec["area_nm2"] == pytest.approx(float(table["surface_area_nm2"][1:].sum()), rel=1e-6)
    for args, msg in ((["--ids", "a,b"], "--ids must be labels"), (["--format", "vtk"], "--format must be one of"),
                      ([], "already exists")):
        code = main(["mesh", str(tmp_path / "lab.tif"), "-o", str(tmp_path / "m"), *args])
        _, err = capsys.readouterr()
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
    code = main(["mesh", str(tmp_path / "lab.tif"), "-o", str(tmp_path / "lab.tif"), "--overwrite"])
    _, err = capsys.readouterr()
    assert code == 2 and "input" in err and tifffile.imread(tmp_path / "lab.tif").shape == lab.shape


def test_boxes_found_block_by_block_give_the_same_meshes(tmp_path):
    """A volume larger than memory: the boxes from the blockwise measurement, each object read
    alone from the lazy labels."""
    from panoptem.distributed.measure import measure_blockwise
    lab = scene()
    panoptem.write_labels(tmp_path / "lab.zarr", lab, voxel_size=VS)
    lazy = panoptem.read_image(tmp_path / "lab.zarr").data
    table = measure_blockwise(str(tmp_path / "lab.zarr"), voxel_size=VS, surface=False, block_shape=(16, 32, 32),
                              n_workers=1, processes=False)
    a = panoptem.export_meshes(lazy, tmp_path / "a", voxel_size=VS, table=table)
    b = panoptem.export_meshes(lab, tmp_path / "b", voxel_size=VS)
    assert a == b


def test_ids_asked_twice_are_meshed_once_in_the_order_given(tmp_path):
    res = panoptem.export_meshes(scene(), tmp_path / "m", voxel_size=VS, ids=[7, 7, 3])
    assert [o["label"] for o in res["objects"]] == [7, 3]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["3.ply", "7.ply", meshes.INDEX]


def test_cli_mesh_blockwise_gives_the_meshes_of_the_labels_in_memory(capsys, tmp_path):
    lab = scene()
    panoptem.write_labels(tmp_path / "lab.zarr", lab, voxel_size=VS, origin=(0.0, 100.0, 0.0))
    for name, extra in (("mem", []), ("blocks", ["--blockwise", "--workers", "1", "--block-shape", "16,32,32"])):
        code = main(["mesh", str(tmp_path / "lab.zarr"), "-o", str(tmp_path / name), *extra])
        _, err = capsys.readouterr()
        assert code == 0, err
    a, b = (json.loads((tmp_path / n / meshes.INDEX).read_text()) for n in ("mem", "blocks"))
    assert a == b and [o["label"] for o in a["objects"]] == [3, 7, 12] and a["origin_nm"] == [0.0, 100.0, 0.0]
    for o in a["objects"]:
        assert (tmp_path / "mem" / o["file"]).read_bytes() == (tmp_path / "blocks" / o["file"]).read_bytes()
