"""The package face: public names stay what they are, parameter objects work."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import panoptem
from panoptem.errors import PanoptemError

from _models import dark_blob_model

SRC = str(Path(panoptem.__file__).resolve().parents[1])

CALLS = {
    "measure": "panoptem.measure(lab, voxel_size=(2.0, 1.0, 1.0))['volume_nm3'].tolist() == [16.0]",
    "evaluate": "panoptem.evaluate(lab, lab)['f1_50'] == 1.0",
    "error_breakdown": "panoptem.error_breakdown(lab, lab)['counts']['splits'] == 0",
    "summarize": "panoptem.summarize(panoptem.measure(lab))['count'].tolist() == [1]",
}


@pytest.mark.parametrize("order", [["measure", "evaluate", "error_breakdown", "summarize"],
                                   ["evaluate", "summarize", "error_breakdown", "measure"]])
def test_public_functions_stay_functions_in_any_order(order):
    """Each public function twice, in a fresh interpreter: using one must not turn
    another into a module (a submodule of the same name would replace it)."""
    lines = ["import numpy as np", "import panoptem",
             "lab = np.zeros((4, 5, 6), np.uint8); lab[1:3, 1:3, 1:3] = 1"]
    for name in order + order:
        lines += [f"assert callable(panoptem.{name}), type(panoptem.{name})", f"assert {CALLS[name]}"]
    r = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True,
                       env={"PYTHONPATH": SRC, "PATH": ""}, timeout=120)
    assert r.returncode == 0, r.stderr


def test_importing_panoptem_does_not_import_torch():
    code = "import sys, panoptem; panoptem.Params3D(); panoptem.evaluate; assert 'torch' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": SRC, "PATH": ""}, timeout=120)
    assert r.returncode == 0, r.stderr


def test_every_public_name_resolves():
    from panoptem.inference.segment3d import Result3D
    from panoptem.params import Params2D, Params3D
    for name in panoptem.__all__:
        assert getattr(panoptem, name) is not None, name
    assert panoptem.Params2D is Params2D and panoptem.Params3D is Params3D and panoptem.Result3D is Result3D
    assert "segment_3d" in dir(panoptem)
    with pytest.raises(AttributeError):
        panoptem.no_such_thing  # noqa: B018


def _image():
    img = np.full((96, 96), 200, np.uint8)
    yy, xx = np.mgrid[:96, :96]
    img[(yy - 30) ** 2 + (xx - 30) ** 2 < 100] = 40
    img[(yy - 66) ** 2 + (xx - 62) ** 2 < 144] = 40
    return img


def test_segment_2d_takes_a_params_object_and_overrides():
    img, model = _image(), dark_blob_model()
    plain = panoptem.segment_2d(img, model, maximum_objects_per_class=0)
    p = panoptem.Params2D(maximum_objects_per_class=0)
    assert (panoptem.segment_2d(img, model, params=p) == plain).all()
    assert int(plain.max()) == 2
    none = panoptem.Params2D(maximum_objects_per_class=0, confidence_thr=1.0)   # nothing is that sure
    assert not panoptem.segment_2d(img, model, params=none).any()
    assert (panoptem.segment_2d(img, model, params=none, confidence_thr=0.5) == plain).all()  # override wins
    assert (panoptem.segment_2d(img, model, params={"maximum_objects_per_class": 0}) == plain).all()
    # a 3D parameter object lends its 2D fields
    assert (panoptem.segment_2d(img, model, params=panoptem.Params3D(maximum_objects_per_class=0)) == plain).all()
    with pytest.raises(PanoptemError, match="confidence_thr"):
        panoptem.segment_2d(img, model, params=p, confidence_thr=2)


def test_segment_2d_takes_a_zarr_array_or_an_hdf5_dataset(tmp_path):
    """Neither takes a new axis by indexing ([None]): they raised IndexError / TypeError."""
    import h5py
    import zarr
    img, model = _image(), dark_blob_model()
    plain = panoptem.segment_2d(img, model)
    z = zarr.open_array(str(tmp_path / "img.zarr"), mode="w", shape=img.shape, dtype=img.dtype, chunks=(32, 32))
    z[:] = img
    assert np.array_equal(panoptem.segment_2d(z, model), plain)
    with h5py.File(tmp_path / "img.h5", "w") as f:
        f["img"] = img
        assert np.array_equal(panoptem.segment_2d(f["img"], model), plain)


def test_the_largest_label_divisor_keeps_every_object():
    """A divisor as large as parameters take (2^53) still gives ids class x divisor + n exactly
    (2^63 - 1 was taken and, overflowing, gave labels that were all 0; it is now refused)."""
    from panoptem.params import MAX_WHOLE
    img, model = _image(), dark_blob_model()
    big = panoptem.segment_2d(img, model, maximum_objects_per_class=MAX_WHOLE)
    assert sorted(np.unique(big).tolist()) == [0, MAX_WHOLE + 1, MAX_WHOLE + 2]
    with pytest.raises(PanoptemError, match="at most 2"):
        panoptem.segment_2d(img, model, maximum_objects_per_class=2**63 - 1)


def test_segment_3d_takes_a_params_object_and_overrides():
    vol = np.stack([_image()] * 8)
    model = dark_blob_model()
    p = panoptem.Params3D(min_size=10**6, min_extent=1)
    assert panoptem.segment_3d(vol, model, params=p).objects["mitochondria"] == 0
    res = panoptem.segment_3d(vol, model, params=p, min_size=100)
    assert isinstance(res, panoptem.Result3D) and res.objects["mitochondria"] == 2
    assert p.min_size == 10**6  # the caller's object is left as it was


def test_typer_lives_in_the_cli_package_only():
    root = Path(panoptem.__file__).parent
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if "import typer" in p.read_text() and p.parent.name != "cli")
    assert users == []


def test_python_dash_m_panoptem_runs_the_command_line():
    r = subprocess.run([sys.executable, "-m", "panoptem", "model", "--help"], capture_output=True, text=True,
                       env={"PYTHONPATH": SRC, "PATH": "", "COLUMNS": "200"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(c in r.stdout for c in ("list", "info", "register", "export", "import", "archive", "restore"))


def test_the_readmes_python_names_resolve():
    """Every `from panoptem... import ...` in the README's code (commented examples too) imports,
    and every `panoptem.NAME` it calls exists."""
    import re
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))
    imports = sorted(set(re.findall(r"^[ #]*(from panoptem[\w.]* import [\w, ]+)", code, flags=re.M)))
    names = sorted(set(re.findall(r"\bpanoptem\.([A-Za-z_]\w*)\b", code)) - {"distributed"})
    assert len(imports) >= 2 and len(names) >= 5, (imports, names)
    lines = ["import panoptem", *imports, *[f"assert hasattr(panoptem, {n!r}), {n!r}" for n in names]]
    r = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True,
                       env={"PYTHONPATH": SRC, "PATH": ""}, timeout=120)
    assert r.returncode == 0, r.stderr


def test_nested_lists_are_taken_where_arrays_are(tmp_path):
    """preview, write_labels, write_image and take_plane raised AttributeError on lists."""
    from panoptem import preview, read_image, take_plane, write_labels
    from panoptem.io import write_image
    lab = [[[0, 3, 3], [0, 0, 5]], [[1, 1, 0], [0, 0, 5]]]
    assert np.array_equal(np.asarray(read_image(write_labels(tmp_path / "l.tif", lab)).data), np.asarray(lab))
    assert np.array_equal(np.asarray(read_image(write_image(tmp_path / "i.tif", lab)).data), np.asarray(lab))
    assert take_plane(lab, 1, "yz").tolist() == [[3, 0], [1, 0]]
    assert "3 objects" in preview(lab).title


def test_ragged_nested_lists_are_one_error():
    """Rows of unequal lengths: numpy's ValueError became one line naming the argument."""
    import panoptem
    from panoptem.errors import PanoptemError
    ragged = [[1, 2], [3]]
    for call, what in ((lambda: panoptem.segment_2d(ragged), "image"), (lambda: panoptem.segment_3d([ragged]), "volume"),
                       (lambda: panoptem.measure(ragged), "label image"),
                       (lambda: panoptem.evaluate(ragged, [[1, 2], [3, 4]]), "prediction")):
        with pytest.raises(PanoptemError, match=f"The {what} is nested lists of unequal lengths"):
            call()


def test_blockwise_options_without_blockwise_are_one_error():
    """scheduler=, n_workers=, mask=... without blockwise=True were ignored (the run went in memory);
    the command line refuses them without --blockwise, and client= was refused already."""
    import panoptem
    from panoptem.errors import PanoptemError
    vol = np.zeros((4, 64, 64), np.uint8)
    with pytest.raises(PanoptemError, match=r"scheduler=, mask= apply to blockwise runs only"):
        panoptem.segment_3d(vol, scheduler="tcp://127.0.0.1:8786", mask=np.ones((4, 64, 64), bool))
