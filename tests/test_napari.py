"""The napari plugin in a real viewer (on a private Xvfb, nothing on screen): manifest, sample,
reader/writer, and the widgets driven by clicking their buttons (a hand-set TorchScript model
finds dark blobs).

Qt's offscreen platform creates GL contexts through the X server but renders nothing (black
canvas), so with an X server we use the xcb platform when it loads, else offscreen."""
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("napari", reason="napari is not installed: pip install 'panoptem[napari]'")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed: pip install 'panoptem[test]'")


_KEEP: list = []


def _ensure_display() -> str | None:
    """napari's canvas needs OpenGL, which Qt's offscreen platform takes from an X server:
    use $DISPLAY, else start a private Xvfb that a watchdog stops when this process ends."""
    if os.environ.get("DISPLAY"):
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return "no X display and no Xvfb for OpenGL: apt-get install xvfb (or run under xvfb-run)"
    r, w = os.pipe()
    watchdog = (f"'{xvfb}' -displayfd {w} -screen 0 1920x1200x24 -nolisten tcp 2>/dev/null & x=$!; "
                f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; kill $x")
    subprocess.Popen(["sh", "-c", watchdog], pass_fds=(w,), stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, start_new_session=True)
    os.close(w)
    got = b""
    while not got.endswith(b"\n"):  # Xvfb writes "N\n" once it accepts clients
        chunk = os.read(r, 32)
        if not chunk:
            break
        got += chunk
    _KEEP.append(r)  # never close: a later write by Xvfb must not kill it with SIGPIPE
    num = got.decode().strip()
    if not num:
        return "Xvfb did not start"
    os.environ["DISPLAY"] = f":{num}"
    return None


def _qt_platform() -> str:
    """xcb when Qt can open a window on the display (libxcb-* present), else offscreen."""
    from pytestqt.qt_compat import qt_api   # probe with the binding the tests use
    api = qt_api.pytest_qt_api or os.environ.get("QT_API", "")
    probe = subprocess.run([sys.executable, "-c", "from qtpy.QtWidgets import QApplication; QApplication([])"],
                           env={**os.environ, "QT_QPA_PLATFORM": "xcb", **({"QT_API": api} if api else {})},
                           capture_output=True, timeout=120)
    return "xcb" if probe.returncode == 0 else "offscreen"


_NO_DISPLAY = _ensure_display()
if not os.environ.get("QT_QPA_PLATFORM"):
    os.environ["QT_QPA_PLATFORM"] = "offscreen" if _NO_DISPLAY else _qt_platform()
pytestmark = [pytest.mark.gui, pytest.mark.skipif(_NO_DISPLAY is not None, reason=str(_NO_DISPLAY))]

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

from panoptem.errors import PanoptemError  # noqa: E402

MANIFEST = Path(__file__).resolve().parents[1] / "src" / "panoptem" / "napari" / "napari.yaml"


class DarkBlobNet(nn.Module):
    """Dark pixels are foreground; the centre heatmap is blurred darkness; offsets 0 (stride 4)."""

    def forward(self, x):
        dark = F.relu(-x - 0.5)
        d4 = F.avg_pool2d(dark, 4)
        blur = F.avg_pool2d(d4, 5, stride=1, padding=2, count_include_pad=False)
        return {"sem_logits": 20 * (d4 - 0.75), "ctr_hmp": blur,
                "offsets": torch.zeros_like(d4).repeat(1, 2, 1, 1)}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """PANOPTEM_HOME with one registered model, 'darkblob' (TorchScript, nothing downloaded)."""
    from panoptem.models.home import sha256_of
    from panoptem.napari._inference import cached_model
    d = tmp_path / "home" / "models" / "darkblob"
    d.mkdir(parents=True)
    torch.jit.script(DarkBlobNet()).save(str(d / "model.pt"))
    card = {"name": "darkblob", "description": "test model: dark blobs", "label_divisor": None,
            "weights": {"file": "model.pt", "sha256": sha256_of(d / "model.pt"), "format": "torchscript"}}
    (d / "card.yaml").write_text(yaml.safe_dump(card))
    monkeypatch.setenv("PANOPTEM_HOME", str(tmp_path / "home"))
    cached_model.cache_clear()
    yield
    cached_model.cache_clear()


@pytest.fixture
def registered():
    """The plugin known to napari (installed: by its entry point; else from the manifest file)."""
    from npe2 import PluginManager, PluginManifest
    pm = PluginManager.instance()
    if "panoptem" not in pm:
        pm.register(PluginManifest.from_file(MANIFEST))


@pytest.fixture
def viewer(make_napari_viewer, registered):
    return make_napari_viewer()


def blobs(shape=(4, 128, 160), centers=((30, 40), (64, 110), (100, 40)), r=14):
    """Dark discs (40) on a bright background (220), the same in every slice."""
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    img = np.full(shape[1:], 220, np.uint8)
    for cy, cx in centers:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 40
    return np.broadcast_to(img, shape).copy()


def dock(viewer, cls):
    w = cls(viewer)
    viewer.window.add_dock_widget(w, name=cls.__name__)
    return w


def run_and_wait(qtbot, w, timeout=60_000):
    w.run_button.native.click()
    qtbot.waitUntil(lambda: not w.running, timeout=timeout)


# ------------------------------------------------------------------ manifest, sample, reader, writer

def test_reader_tells_panoptems_32_bit_grey_images_from_its_labels(tmp_path):
    # every panoptem TIFF was tagged "panoptem": a uint32 grey image opened as labels
    from panoptem.io import write_image, write_labels
    from panoptem.napari._reader import is_labels
    vol = np.arange(2 * 8 * 8, dtype=np.uint32).reshape(2, 8, 8)
    for dtype in (np.uint32, np.int32):
        assert not is_labels(write_image(tmp_path / f"img_{np.dtype(dtype)}.tif", vol.astype(dtype)), dtype)
    assert is_labels(write_labels(tmp_path / "mito.tif", vol), np.uint32)


def test_manifest_is_valid_and_importable():
    from npe2 import PluginManifest
    m = PluginManifest.from_file(MANIFEST)
    m.validate_imports()
    assert m.name == "panoptem"
    assert [w.display_name for w in m.contributions.widgets] == [
        "2D Inference (Parameter Testing)", "3D Inference", "Proofread Labels", "Measure Labels", "Models",
        "Pick Patches + Store Dataset", "Fine-tune", "Train", "Export Segmentations", "Create / Merge Tiles"]
    assert [s.key for s in m.contributions.sample_data] == ["sample"]
    assert m.contributions.writers[0].layer_types == ["labels"]


def test_sample_opens_with_voxel_size(viewer):
    viewer.open_sample("panoptem", "sample")
    layer = viewer.layers["panoptem sample"]
    assert layer.data.shape == (30, 384, 384) and layer.data.dtype == np.uint8
    assert tuple(layer.scale) == (5.0, 5.0, 5.0)


def test_reader_and_writer_round_trip_labels(viewer, tmp_path):
    import tifffile

    from panoptem.napari._reader import get_reader
    from panoptem.napari._writer import write_labels
    lab = np.zeros((3, 20, 30), np.uint32)
    lab[1, 5:10, 5:12] = 7
    lab[2, 1:3, 20:25] = 70000
    out = write_labels(str(tmp_path / "cells.tif"), lab, {"scale": (40.0, 4.0, 4.0), "metadata": {}})
    assert out == [str(tmp_path / "cells.tif")]
    layer = viewer.open(out[0], plugin="panoptem")[0]
    assert layer.__class__.__name__ == "Labels"            # panoptem wrote it as labels
    assert np.array_equal(layer.data, lab) and tuple(layer.scale) == (40.0, 4.0, 4.0)
    # a plain integer image is an image; the same named *_labels is labels
    tifffile.imwrite(tmp_path / "em.tif", (lab % 251).astype(np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "em_labels.tif", (lab % 251).astype(np.uint8), photometric="minisblack")
    em = viewer.open(str(tmp_path / "em.tif"), plugin="panoptem")[0]
    assert em.__class__.__name__ == "Image" and em.data.shape == (3, 20, 30)
    em_labels = viewer.open(str(tmp_path / "em_labels.tif"), plugin="panoptem")[0]
    assert em_labels.__class__.__name__ == "Labels" and np.array_equal(em_labels.data, lab % 251)
    z = write_labels(str(tmp_path / "cells.zarr"), lab, {"scale": (1.0, 1.0, 1.0), "metadata": {"voxel_size": (8, 8, 8)}})
    zl = viewer.open(z[0], plugin="panoptem")[0]              # OME-Zarr 'image-label' -> labels
    assert zl.__class__.__name__ == "Labels" and np.array_equal(zl.data, lab) and tuple(zl.scale) == (8, 8, 8)
    # a layer's position (nm, as its scale) goes with it to OME-Zarr and comes back
    t = write_labels(str(tmp_path / "placed.zarr"), lab, {"scale": (8.0, 8.0, 8.0), "translate": (80.0, -16.0, 4.0),
                                                          "metadata": {}})
    assert tuple(viewer.open(t[0], plugin="panoptem")[0].translate) == (80.0, -16.0, 4.0)
    # with a scale that is not nm (here none given), the translate is not nm either: not written
    u = write_labels(str(tmp_path / "unplaced.zarr"), lab, {"scale": (1.0, 1.0, 1.0), "translate": (5.0, 5.0, 5.0),
                                                            "metadata": {"voxel_size": (8, 8, 8)}})
    assert tuple(viewer.open(u[0], plugin="panoptem")[0].translate) == (0.0, 0.0, 0.0)
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None


def test_reader_opens_ome_zarr_pyramids(viewer, tmp_path, monkeypatch):
    import tifffile
    import zarr

    from panoptem.io import write_labels
    from panoptem.napari import _reader
    ds = []
    grp = zarr.open_group(str(tmp_path / "em.zarr"), mode="w", zarr_format=2)
    for i in range(3):  # c, z, y, x in µm, 2 x 2 in-plane steps, the origin at (1, 2, 3) µm
        grp.create_array(str(i), data=np.full((1, 4, 64 >> i, 80 >> i), i, np.uint8))
        ds.append({"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [1, 0.01, 0.005 * 2**i, 0.005 * 2**i]},
            {"type": "translation", "translation": [0, 1.0, 2.0 + 0.0025 * (2**i - 1), 3.0 + 0.0025 * (2**i - 1)]}]})
    axes = [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    grp.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": ds}]
    em = viewer.open(str(tmp_path / "em.zarr"), plugin="panoptem")[0]
    assert em.multiscale and [lv.shape for lv in em.data] == [(4, 64, 80), (4, 32, 40), (4, 16, 20)]
    assert [int(np.asarray(lv[0, 0, 0])) for lv in em.data] == [0, 1, 2]
    assert tuple(em.scale) == (10, 5, 5) and isinstance(em.data[0][1:3], np.ndarray)  # level 0 as the engine reads it
    assert tuple(em.translate) == pytest.approx((1000, 2000, 3000))                  # where it lies, in nm
    lab = np.zeros((4, 600, 700), np.uint32)
    lab[1:3, 100:300, 200:400] = 9
    write_labels(tmp_path / "big_labels.zarr", lab, voxel_size=(10, 5, 5))
    small = viewer.open(str(tmp_path / "big_labels.zarr"), plugin="panoptem")[0]
    assert not small.multiscale and isinstance(small.data, np.ndarray)   # editable
    monkeypatch.setattr(_reader, "IN_MEMORY_LABELS_BYTES", 0)            # too large to edit: its pyramid
    big = viewer.open(str(tmp_path / "big_labels.zarr"), plugin="panoptem")[0]
    assert big.__class__.__name__ == "Labels" and big.multiscale and len(big.data) > 1
    assert np.array_equal(np.asarray(big.data[0]), lab) and tuple(big.scale) == (10, 5, 5)
    level = viewer.open(str(tmp_path / "big_labels.zarr" / "1"), plugin="panoptem")[0]   # one level's folder
    assert level.__class__.__name__ == "Labels" and tuple(level.scale) == (10, 10, 10)
    saved = big.save(str(tmp_path / "saved_labels.tif"), plugin="panoptem")     # its full resolution
    assert saved and np.array_equal(tifffile.imread(saved[0]), lab)
    import shutil
    shutil.rmtree(tmp_path / "big_labels.zarr" / "1")                  # a level lost in a partial copy
    (tmp_path / "em.zarr" / ".zattrs").write_text((tmp_path / "em.zarr" / ".zattrs").read_text()
                                                   .replace('"path": "2"', '"where": "2"'))
    for name in ("big_labels.zarr", "em.zarr"):                          # level 0 alone
        layer = viewer.open(str(tmp_path / name), plugin="panoptem")[0]
        assert not layer.multiscale and layer.data.shape == (lab.shape if name[0] == "b" else (4, 64, 80))
    ms = grp.attrs["multiscales"]                                        # levels that do not shrink
    ms[0]["datasets"] = [ds[0], {**ds[0], "path": "same"}]
    grp.create_array("same", data=np.zeros((1, 4, 64, 80), np.uint8))
    grp.attrs["multiscales"] = ms
    layer = viewer.open(str(tmp_path / "em.zarr"), plugin="panoptem")[0]
    assert not layer.multiscale and layer.data.shape == (4, 64, 80)


def test_reader_opens_each_image_of_an_hdf5_file_or_zarr_group(viewer, tmp_path):
    import shutil

    import h5py
    import zarr

    from panoptem.io import write_labels
    raw = np.arange(3 * 32 * 32, dtype=np.uint32).reshape(3, 32, 32).astype(np.uint8)
    ids = np.full((3, 32, 32), 2**60 + 3, np.uint64)
    with h5py.File(tmp_path / "cremi.h5", "w") as f:                  # CREMI's layout
        f["volumes/raw"] = raw
        f["volumes/raw"].attrs["resolution"] = (40.0, 4.0, 4.0)
        f["volumes/labels/neuron_ids"] = ids
        f["annotations/ids"] = np.arange(5)                             # not images: left out
        f["annotations/locations"] = np.zeros((5, 3))
    layers = {ly.name: ly for ly in viewer.open(str(tmp_path / "cremi.h5"), plugin="panoptem")}
    assert sorted(layers) == ["cremi/volumes/labels/neuron_ids", "cremi/volumes/raw"]
    em, seg = layers["cremi/volumes/raw"], layers["cremi/volumes/labels/neuron_ids"]
    assert em.__class__.__name__ == "Image" and np.array_equal(em.data[...], raw) and tuple(em.scale) == (40, 4, 4)
    assert seg.__class__.__name__ == "Labels" and np.array_equal(seg.data, ids)
    grp = zarr.open_group(str(tmp_path / "multi.zarr"), mode="w", zarr_format=2)
    grp.create_array("raw", data=raw)
    grp.create_group("labels")
    write_labels(tmp_path / "mito.zarr", ids[:, :, :16], voxel_size=(40, 4, 4))
    shutil.copytree(tmp_path / "mito.zarr", tmp_path / "multi.zarr" / "labels" / "mito")  # an 'image-label' pyramid
    layers = {ly.name: ly for ly in viewer.open(str(tmp_path / "multi.zarr"), plugin="panoptem")}
    assert sorted(layers) == ["multi/labels/mito", "multi/raw"]
    assert layers["multi/labels/mito"].__class__.__name__ == "Labels"
    assert np.array_equal(layers["multi/labels/mito"].data, ids[:, :, :16])
    assert layers["multi/raw"].__class__.__name__ == "Image"
    shutil.rmtree(tmp_path / "multi.zarr" / "raw")                      # one image left, in its group
    (one,) = viewer.open(str(tmp_path / "multi.zarr"), plugin="panoptem")
    assert one.name == "multi" and one.__class__.__name__ == "Labels" and np.array_equal(one.data, ids[:, :, :16])


def test_reader_gives_labels_of_a_mapped_file_in_writable_memory(viewer, tmp_path):
    import mrcfile
    import tifffile
    lab = np.zeros((3, 16, 16), np.uint16)
    lab[1, 4:8, 4:8] = 5
    tifffile.imwrite(tmp_path / "raw_labels.tif", lab, photometric="minisblack")  # uncompressed: a file mapping
    with mrcfile.new(tmp_path / "seg_labels.mrc") as m:
        m.set_data(lab)
    for name in ("raw_labels.tif", "seg_labels.mrc"):
        layer = viewer.open(str(tmp_path / name), plugin="panoptem")[0]
        assert layer.__class__.__name__ == "Labels" and np.array_equal(layer.data, lab)
        layer.data[0, 0, 0] = 9                                          # editable, as proofreading needs
        layer.paint((2, 10, 10), 7, refresh=False)
        assert layer.data[2, 10, 10] == 7 and tifffile.imread(tmp_path / "raw_labels.tif")[0, 0, 0] == 0


# ------------------------------------------------------------------ parameter forms

def test_forms_come_from_the_parameter_schema(viewer, home):
    from panoptem.models.home import DEFAULT_MODEL
    from panoptem.napari._inference import Inference2DWidget, Inference3DWidget
    from panoptem.params import Params2D, Params3D
    for cls, params in ((Inference2DWidget, Params2D), (Inference3DWidget, Params3D)):
        w = dock(viewer, cls)
        assert list(w.form.values()) == list(params.model_fields)
        for name, field in params.model_fields.items():
            assert getattr(params(**{name: w.form.values()[name]}), name) == field.default  # "0" typed is [0]
            assert w.form[name].tooltip == field.description
        assert "darkblob" in w.model.choices
        assert w.model.value == (DEFAULT_MODEL if DEFAULT_MODEL in w.model.choices else "darkblob")
    assert w.form["downsampling"].label == "Image Downsampling"
    assert w.form["median_slices"].choices == (1, 3, 5, 7, 9, 11)
    assert w.form["inference_plane"].choices == ("xy", "xz", "yz")
    w.form.set_values(min_size=123, orthoplane=True)
    p = w.form.params()
    assert isinstance(p, Params3D) and p.min_size == 123 and p.orthoplane


# ------------------------------------------------------------------ 2D inference

def test_2d_inference_of_an_xz_plane_averages_its_pair_as_the_3d_stack(viewer, qtbot, home, tmp_path, monkeypatch):
    """A 5 nm model and a layer of 2.5 nm voxels: the xz plane on screen is given to the network
    as the mean of its pair of y planes, as a 3D xz stack gives it."""
    from panoptem.inference import segment2d
    from panoptem.napari._inference import Inference2DWidget, cached_model
    card = tmp_path / "home" / "models" / "darkblob" / "card.yaml"
    card.write_text(card.read_text() + "voxel_size_nm: 5.0\n")
    cached_model.cache_clear()
    strides, take = [], segment2d.take_plane
    monkeypatch.setattr(segment2d, "take_plane", lambda *a, **k: (strides.append(k.get("stride", 1)), take(*a, **k))[1])
    img = viewer.add_image(blobs((8, 128, 160)), name="blobs", scale=(2.5, 2.5, 2.5))
    w = dock(viewer, Inference2DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    viewer.dims.order = (1, 0, 2)                      # show xz: y is the slider
    viewer.dims.set_point(1, 64 * 2.5)
    run_and_wait(qtbot, w)
    assert strides == [2] and "xz plane 64" in w.status.value


def test_2d_inference_of_an_xz_plane_takes_blank_sections_as_its_3d_stack(viewer, qtbot, home, monkeypatch):
    """The 2D dock on an xz plane of a volume with a missing section: the section's row is
    nothing, as in the 3D xz stack."""
    from panoptem.inference import segment2d
    from panoptem.napari._inference import Inference2DWidget
    from test_edge_on import textured
    from test_segment3d import phantom
    vol = textured(phantom()[0])
    vol[14] = 0
    seen, real = [], segment2d.segment_2d
    monkeypatch.setattr(segment2d, "segment_2d", lambda *a, **k: (seen.append(k.get("edge_on")), real(*a, **k))[1])
    img = viewer.add_image(vol, name="vol")
    w = dock(viewer, Inference2DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    w.form.set_values(min_piece_area=0)
    viewer.dims.order = (1, 0, 2)                      # show xz: y is the slider
    viewer.dims.set_point(1, 30)
    run_and_wait(qtbot, w)
    assert "xz plane 30" in w.status.value, w.status.value
    rows, pad = seen[-1]
    assert rows.tolist() == [z == 14 for z in range(len(vol))] and pad is None
    out = viewer.layers["vol-2D-prediction"].data
    assert out.any() and not out[14].any()


def test_2d_inference_on_the_current_plane_xy_xz_and_batch(viewer, qtbot, home):
    from panoptem.napari._inference import Inference2DWidget
    img = viewer.add_image(blobs(), name="blobs", scale=(10.0, 5.0, 5.0))
    w = dock(viewer, Inference2DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    w.form.set_values(maximum_objects_per_class=0)
    viewer.dims.set_point(0, 20.0)                     # z = 2 (scale 10)
    run_and_wait(qtbot, w)
    out = viewer.layers["blobs-2D-prediction"]
    assert out.data.shape == (1, 128, 160) and out.data.dtype == np.uint32
    assert tuple(out.scale) == (10.0, 5.0, 5.0) and tuple(out.translate) == (20.0, 0.0, 0.0)
    assert np.unique(out.data).tolist() == [0, 1, 2, 3]
    assert w.status.value.startswith("Done: 3 objects on xy plane 2")

    viewer.dims.order = (1, 0, 2)                      # show xz: y is the slider
    viewer.dims.set_point(1, 64 * 5.0)                 # y = 64 crosses the middle blob only
    run_and_wait(qtbot, w)
    out = viewer.layers["blobs-2D-prediction"]        # same layer, new plane
    assert out.data.shape == (4, 1, 160) and tuple(out.translate) == (0.0, 320.0, 0.0)
    assert len(np.unique(out.data)) - 1 == 1
    assert "xz plane 64" in w.status.value

    w.batch.value = True
    run_and_wait(qtbot, w)
    stack = viewer.layers["blobs-batch-prediction"]
    assert stack.data.shape == (4, 128, 160) and tuple(stack.scale) == (10.0, 5.0, 5.0)
    assert all(len(np.unique(s)) - 1 == 3 for s in stack.data)


def test_2d_inference_adds_a_fresh_layer_when_the_last_result_was_deleted_meanwhile(viewer, qtbot, home):
    from panoptem.napari._inference import Inference2DWidget
    img = viewer.add_image(blobs()[0], name="img")
    w = dock(viewer, Inference2DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    run_and_wait(qtbot, w)
    w.run_button.native.click()                        # the result arrives after the layer is gone
    viewer.layers.remove("img-2D-prediction")
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert w.status.value.startswith("Done: 3 objects"), w.status.value
    assert len(np.unique(viewer.layers["img-2D-prediction"].data)) == 4


def test_3d_cancel_after_the_last_batch_shows_the_finished_result(viewer, qtbot, home, tmp_path):
    from panoptem.napari._inference import Inference3DWidget
    img = viewer.add_image(blobs((4, 64, 64), centers=((32, 32),), r=10), name="vol")
    w = dock(viewer, Inference3DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    w.zarr_dir.value = tmp_path / "out"

    def late_cancel(plane, done, total):  # every slice through the network; decoding goes on
        if done == total and w.cancel_button.enabled:
            w.cancel_button.native.click()
    w._bridge.step.connect(late_cancel)
    run_and_wait(qtbot, w)
    # the result was dropped and the status said "Cancelling..." for good; now the run either stops or shows it
    if w.status.value.startswith("Cancelled"):
        assert "vol-mitochondria-prediction" not in viewer.layers and not list((tmp_path / "out").glob("*.zarr"))
    else:
        assert w.status.value.startswith("Done") and "vol-mitochondria-prediction" in viewer.layers, w.status.value
    assert w.run_button.enabled and not w.cancel_button.enabled


def test_2d_inference_hands_a_model_the_planes_neighbours(viewer, qtbot, home):
    """A model with context_slices 1 sees the shown plane with the planes before and after it: a
    disc in that plane alone is not dark in its neighbours, so it finds the other three only."""
    from _models import NeighbourNet
    from panoptem.models.home import models_dir, sha256_of
    from panoptem.napari._inference import Inference2DWidget
    d = models_dir() / "neighbours"
    d.mkdir(parents=True)
    torch.jit.script(NeighbourNet()).save(str(d / "model.pt"))
    card = {"name": "neighbours", "description": "test model", "label_divisor": None, "context_slices": 1,
            "weights": {"file": "model.pt", "sha256": sha256_of(d / "model.pt"), "format": "torchscript"}}
    (d / "card.yaml").write_text(yaml.safe_dump(card))
    vol = blobs()
    yy, xx = np.mgrid[:128, :160]
    vol[2][(yy - 100) ** 2 + (xx - 110) ** 2 < 14 * 14] = 40  # in plane 2 only
    img = viewer.add_image(vol, name="vol")
    w = dock(viewer, Inference2DWidget)
    w.reset_choices()
    w.image.value, w.device.value = img, "cpu"
    w.form.set_values(maximum_objects_per_class=0)
    viewer.dims.set_point(0, 2.0)
    found = {}
    for model in ("darkblob", "neighbours"):
        w.model.value = model
        run_and_wait(qtbot, w)
        found[model] = len(np.unique(viewer.layers["vol-2D-prediction"].data)) - 1
    assert found == {"darkblob": 4, "neighbours": 3}, w.status.value


def test_2d_inference_reports_errors_in_the_widget(viewer, qtbot, home):
    from panoptem.napari._inference import Inference2DWidget
    w = dock(viewer, Inference2DWidget)
    run_and_wait(qtbot, w)
    assert w.status.value.startswith("Error: Choose an image layer")
    viewer.add_image(blobs()[0], name="one")
    w.image.value = viewer.layers["one"]
    w.batch.value = True
    run_and_wait(qtbot, w)
    assert "Batch mode needs a 3D stack" in w.status.value


def test_2d_inference_confined_to_a_polygon_roi_on_a_3d_plane(viewer, qtbot, home):
    from skimage.draw import polygon2mask

    from panoptem.napari._inference import Inference2DWidget
    img = viewer.add_image(blobs(), name="blobs", scale=(10.0, 5.0, 5.0))
    # a square around the middle blob (64, 110) plus part of the left one (100, 40), on plane z = 2
    square = np.array([[2, 40, 84], [2, 40, 136], [2, 88, 136], [2, 88, 84]], float)
    cut = np.array([[2, 92, 20], [2, 92, 60], [2, 104, 60], [2, 104, 20]], float)
    other_plane = square + [1, 0, 0]
    roi = viewer.add_shapes([square, cut, other_plane], shape_type="polygon", name="roi", scale=(10.0, 5.0, 5.0))
    w = dock(viewer, Inference2DWidget)
    assert w.roi.value is None and w.output.value is None      # never picked silently
    w.image.value, w.roi.value = img, roi
    w.model.value, w.device.value = "darkblob", "cpu"
    w.form.set_values(maximum_objects_per_class=0)
    viewer.dims.set_point(0, 20.0)
    run_and_wait(qtbot, w)
    out = viewer.layers["blobs-2D-prediction"].data.copy()
    assert out.shape == (1, 128, 160)
    inside = polygon2mask((128, 160), square[:, 1:]) | polygon2mask((128, 160), cut[:, 1:])
    assert not out[0][~inside].any() and out[0][inside].any()
    assert np.unique(out).tolist() == [0, 1, 2]        # renumbered after the cut-away objects
    assert out[0][98, 40] > 0 and out[0][91, 40] == 0 and out[0][108, 40] == 0
    w.roi.value = None                                 # the whole plane: the middle blob is the same
    run_and_wait(qtbot, w)
    full = viewer.layers["blobs-2D-prediction"].data
    assert np.unique(full).tolist() == [0, 1, 2, 3]
    assert np.array_equal(out[0] == out[0][64, 110], full[0] == full[0][64, 110])   # exact placement
    w.roi.value = roi

    viewer.dims.set_point(0, 0.0)                      # no ROI on plane 0: said, not guessed
    run_and_wait(qtbot, w)
    assert "covers this plane" in w.status.value


def test_confine_helpers_ellipse_renumber_viewport(viewer):
    from panoptem.errors import PanoptemError
    from panoptem.napari._confine import mask_box, renumber, shapes_mask, viewport_box
    img = viewer.add_image(np.zeros((40, 50), np.uint8), name="img")
    ell = viewer.add_shapes([np.array([[10, 10], [10, 30], [20, 30], [20, 10]], float)], shape_type="ellipse",
                            name="ell")
    m = shapes_mask(ell, img, None, 0, (40, 50))
    assert mask_box(m) == (slice(10, 21), slice(10, 31)) and m[15, 20] and m[10, 20] and m[15, 10]
    assert not m[11, 11] and not m[19, 29]              # an ellipse, not its box
    viewer.add_shapes([np.array([[0, 0], [0, 5]], float)], shape_type="path", name="line")
    with pytest.raises(PanoptemError, match="covers this plane"):
        shapes_mask(viewer.layers["line"], img, None, 0, (40, 50))
    assert renumber(np.array([0, 5, 5, 9], np.uint32), None).tolist() == [0, 1, 1, 2]
    assert renumber(np.array([0, 1003, 2007, 1001], np.uint32), 1000).tolist() == [0, 1002, 2001, 1001]
    assert viewport_box([[0, 5, 7], [3, 20, 80]], 0, 3, (30, 60)) == (slice(5, 21), slice(7, 60))
    with pytest.raises(PanoptemError, match="visible part"):
        viewport_box(np.zeros((2, 2), int), None, 2, (30, 60))


def test_2d_inference_output_to_a_chosen_layer_at_the_current_plane(viewer, qtbot, home):
    from panoptem.napari._inference import Inference2DWidget
    img = viewer.add_image(blobs(), name="blobs")
    keep = np.zeros((4, 128, 160), np.uint32)
    keep[0, :5, :5], keep[3, 60:70, 100:120] = 7, 9
    target = viewer.add_labels(keep.copy(), name="target")
    wrong = viewer.add_labels(np.zeros((4, 10, 10), np.uint32), name="wrong")
    w = dock(viewer, Inference2DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    w.form.set_values(maximum_objects_per_class=0)
    viewer.dims.set_point(0, 2)
    run_and_wait(qtbot, w)                             # a new layer, to compare with
    expected = viewer.layers["blobs-2D-prediction"].data[0].copy()
    viewer.layers.remove("blobs-2D-prediction")
    w.output.value = wrong
    run_and_wait(qtbot, w)
    assert "choose a labels layer of the same shape" in w.status.value and not wrong.data.any()
    w.output.value = target
    run_and_wait(qtbot, w)
    assert "blobs-2D-prediction" not in viewer.layers
    assert np.array_equal(target.data[[0, 1, 3]], keep[[0, 1, 3]])      # other planes untouched
    assert np.unique(target.data[2]).tolist() == [0, 1, 2, 3]
    assert np.array_equal(target.data[2], expected)
    assert w.status.value == "Done: 3 objects on xy plane 2 into 'target'; model pixel size unknown: not resampled."
    target.undo()                                      # one undoable edit
    assert np.array_equal(target.data, keep)


def test_2d_inference_confined_to_the_viewport(make_napari_viewer, registered, qtbot, home):
    from panoptem.napari._inference import Inference2DWidget
    viewer = make_napari_viewer(show=True)             # corner_pixels are set when the canvas draws
    img = viewer.add_image(blobs()[0], name="one")
    w = dock(viewer, Inference2DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    w.form.set_values(maximum_objects_per_class=0)
    w.viewport.value = True
    from panoptem.napari._layers import camera_of
    cam = camera_of(viewer)
    cam.center, cam.zoom = (64, 110), 8.0
    qtbot.waitUntil(lambda: img.corner_pixels[1, 1] - img.corner_pixels[0, 1] < 100, timeout=5000)
    (r0, c0), (r1, c1) = img.corner_pixels
    run_and_wait(qtbot, w)
    out = viewer.layers["one-2D-prediction"].data
    assert out.shape == (128, 160)
    seen = np.zeros(out.shape, bool)
    seen[r0:r1 + 1, c0:c1 + 1] = True
    assert not out[~seen].any() and out[64, 110] > 0 and out[30, 40] == 0 and out[100, 40] == 0


# ------------------------------------------------------------------ 3D inference

def test_3d_inference_on_the_sample_with_screenshot(make_napari_viewer, registered, qtbot, home):
    from panoptem.napari._inference import Inference3DWidget
    from panoptem.napari._layers import camera_of
    viewer = make_napari_viewer(show=True)             # a shown window renders (under Xvfb: off screen)
    viewer.open_sample("panoptem", "sample")
    w = dock(viewer, Inference3DWidget)
    w.image.value = viewer.layers["panoptem sample"]
    w.device.value = "cpu"
    w.model.value = "darkblob"                         # docs/screenshots.py makes the README's pictures
    w.form.set_values(return_panoptic=True)
    run_and_wait(qtbot, w, timeout=120_000)
    assert w.status.value.startswith("Done:"), w.status.value
    mito = viewer.layers["panoptem sample-mitochondria-prediction"]
    stack = viewer.layers["panoptem sample-panoptic-stack-xy"]
    assert mito.data.shape == (30, 384, 384) and mito.data.dtype == np.uint32
    assert tuple(mito.scale) == (5.0, 5.0, 5.0) and tuple(stack.scale) == (5.0, 5.0, 5.0)
    assert mito.data.max() > 0 and len(np.unique(mito.data)) - 1 == int(mito.data.max())  # ids 1..N
    assert w.progress.value == 30 and w.progress.max == 30
    viewer.layers.remove("panoptem sample-panoptic-stack-xy")
    viewer.window.resize(1600, 950)
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    camera_of(viewer).angles = (-15, 30, 70)
    shot = viewer.screenshot(canvas_only=True)
    assert shot.ndim == 3 and shot.shape[-1] == 4
    if os.environ["QT_QPA_PLATFORM"] != "offscreen":   # offscreen draws nothing
        assert shot[..., :3].std() > 10


def test_3d_inference_finds_exactly_the_synthetic_objects(viewer, qtbot, home, tmp_path):
    from panoptem.napari._inference import Inference3DWidget
    img = viewer.add_image(blobs((8, 128, 160)), name="tubes", scale=(20.0, 5.0, 5.0), translate=(100.0, 0, 0))
    w = dock(viewer, Inference3DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    w.form.set_values(min_size=50, min_extent=2)
    run_and_wait(qtbot, w)
    out = viewer.layers["tubes-mitochondria-prediction"]
    assert np.unique(out.data).tolist() == [0, 1, 2, 3]
    assert tuple(out.scale) == (20.0, 5.0, 5.0) and tuple(out.translate) == (100.0, 0.0, 0.0)
    assert "Done: 3 mitochondria" in w.status.value
    rec = out.metadata["panoptem"]  # how the layer was made, and it goes into the file it is saved to
    assert rec["model"] == "darkblob" and rec["params"]["min_size"] == 50
    from panoptem._provenance import read_provenance
    from panoptem.napari._writer import write_labels
    path, = write_labels(str(tmp_path / "saved.zarr"), out.data, {"scale": out.scale, "metadata": out.metadata})
    saved = read_provenance(path)
    assert saved["saved_from"].startswith("a napari labels layer") and saved["params"] == rec["params"]


def test_two_class_model_gives_a_layer_per_class_as_the_engine(viewer, qtbot, home):
    """A registered two-class model: 3D inference adds one labels layer per class, each the
    engine's; 2D inference on a plane gives the panoptic ids of both classes."""
    from _models import save_two_class_model
    from test_segment3d import two_class_phantom
    from panoptem import segment_2d, segment_3d
    from panoptem.napari._inference import Inference2DWidget, Inference3DWidget
    d = Path(os.environ["PANOPTEM_HOME"]) / "models" / "twoclass"
    d.mkdir(parents=True)
    save_two_class_model(d).rename(d / "card.yaml")
    vol, _ = two_class_phantom()
    img = viewer.add_image(vol, name="balls")
    w = dock(viewer, Inference3DWidget)
    w.image.value = img
    w.model.value, w.device.value = "twoclass", "cpu"
    w.form.set_values(min_size=100, min_extent=3)
    run_and_wait(qtbot, w)
    assert w.status.value.startswith("Done: 2 mitochondria, 2 nucleus"), w.status.value
    ref = segment_3d(vol, "twoclass", device="cpu", min_size=100, min_extent=3)
    for name, lab in ref.labels.items():
        np.testing.assert_array_equal(np.asarray(viewer.layers[f"balls-{name}-prediction"].data), lab)
    w2 = dock(viewer, Inference2DWidget)
    w2.image.value = img
    w2.model.value, w2.device.value = "twoclass", "cpu"
    viewer.dims.set_current_step(0, 24)
    run_and_wait(qtbot, w2)
    (plane,) = np.asarray(viewer.layers["balls-2D-prediction"].data)  # one plane, placed at z = 24
    np.testing.assert_array_equal(plane, segment_2d(vol[24], "twoclass", device="cpu"))
    assert {v // 10000 for v in np.unique(plane) if v} == {1, 2}


def tubes_in_memory(viewer, qtbot, **image_kw):
    """A 3D dock run on the darkblob model over three tubes, in memory: (dock, labels), the
    result layer removed again."""
    from panoptem.napari._inference import Inference3DWidget
    img = viewer.add_image(blobs((8, 128, 160)), name="tubes", scale=(20.0, 5.0, 5.0), **image_kw)
    w = dock(viewer, Inference3DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    w.form.set_values(min_size=50, min_extent=2)
    run_and_wait(qtbot, w)
    labels = np.asarray(viewer.layers["tubes-mitochondria-prediction"].data).copy()
    assert not w.result.streamed
    viewer.layers.remove("tubes-mitochondria-prediction")
    return w, labels


def same_objects(a, b) -> bool:
    """Whether two label volumes hold the same objects voxel for voxel, whatever their ids."""
    pairs = np.unique(np.stack([np.ravel(a), np.ravel(b)]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b)) and pairs[:, 0].tolist() == [0, 0]


def test_3d_inference_streams_to_a_zarr_folder(viewer, qtbot, home, tmp_path):
    w, in_memory = tubes_in_memory(viewer, qtbot, translate=(40.0, 0.0, -10.0))
    w.zarr_dir.value = tmp_path / "out"
    run_and_wait(qtbot, w)
    path = tmp_path / "out" / "tubes_darkblob.zarr"
    assert path.is_dir() and w.result.streamed, w.status.value
    out = viewer.layers["tubes-mitochondria-prediction"]
    assert not isinstance(out.data, np.ndarray)        # read lazily from the file
    streamed = np.asarray(out.data)
    assert np.unique(in_memory).tolist() == [0, 1, 2, 3]
    assert same_objects(in_memory, streamed)     # the streamed ids may be numbered class * divisor + n
    assert tuple(out.scale) == (20.0, 5.0, 5.0)
    from panoptem.io import read_image
    assert read_image(path).origin == (40.0, 0.0, -10.0)   # the file lies where the image does
    assert w.status.value.endswith(f"(written to {path}); model pixel size unknown: not resampled.")
    run_and_wait(qtbot, w)                             # never overwritten
    assert w.status.value.startswith("Error: ") and "already exists" in w.status.value
    (tmp_path / "a file").write_text("kept")
    w.zarr_dir.value = tmp_path / "a file"             # was a raw FileExistsError, the status unchanged
    run_and_wait(qtbot, w)
    assert w.status.value == f"Error: {tmp_path / 'a file'} is a file, not a folder; choose a Zarr output folder."
    w.zarr_dir.value = tmp_path / "a file" / "sub"
    run_and_wait(qtbot, w)
    assert w.status.value.startswith(f"Error: Cannot make the folder {tmp_path / 'a file' / 'sub'}")
    assert (tmp_path / "a file").read_text() == "kept"


def test_3d_multi_gpu_runs_blockwise_with_one_worker_per_device(viewer, qtbot, home, tmp_path, monkeypatch):
    """Multi GPU (empanada's box): refused in one line without two GPUs or without a Zarr folder;
    with them (two CPU "devices" stand in for GPUs here), one worker per device, blockwise, the
    same objects as the run in the dock's own process."""
    from panoptem.napari import _inference
    w, plain = tubes_in_memory(viewer, qtbot)
    w.multigpu.value = True
    monkeypatch.setattr(_inference, "cuda_devices", lambda: [])
    run_and_wait(qtbot, w)
    assert "needs two or more CUDA GPUs; this machine has 0" in w.status.value, w.status.value
    monkeypatch.setattr(_inference, "cuda_devices", lambda: ["cpu", "cpu"])
    run_and_wait(qtbot, w)
    assert "choose a Zarr output folder" in w.status.value, w.status.value
    w.zarr_dir.value = tmp_path / "out"
    from panoptem.distributed import _cluster
    planned, plan = [], _cluster.plan_workers
    monkeypatch.setattr(_cluster, "plan_workers", lambda *a, **k: planned.append((a[1], plan(*a, **k))) or planned[-1][1])
    run_and_wait(qtbot, w, timeout=180_000)
    assert [(devices, workers) for devices, (workers, _) in planned] == [(["cpu", "cpu"], 2)]  # a worker per device
    path = tmp_path / "out" / "tubes_darkblob.zarr"
    assert w.status.value.startswith("Done: 3 mitochondria") and path.is_dir(), w.status.value
    assert same_objects(plain, np.asarray(viewer.layers["tubes-mitochondria-prediction"].data))


def test_3d_cancel_really_stops(viewer, qtbot, home):
    from panoptem.napari._inference import Inference3DWidget
    img = viewer.add_image(blobs((40, 64, 64), centers=((32, 32),), r=10), name="long")
    w = dock(viewer, Inference3DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    w.run_button.native.click()
    assert w.cancel_button.enabled
    w.cancel_button.native.click()                 # before the first batch of 4 slices ends
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert w.status.value == "Cancelled (stopped after 4 of 40 xy slices)."
    assert "long-mitochondria-prediction" not in viewer.layers
    assert not w.cancel_button.enabled and w.run_button.enabled


# ------------------------------------------------------------------ proofreading

def click(qtbot, w, key, timeout=30_000):
    """Click a dock's button and wait for its worker (whole-volume work runs in one)."""
    w.buttons[key].native.click()
    qtbot.waitUntil(lambda: not w.running, timeout=timeout)


def rooms(z=3):
    """Per plane: label 1 = two rooms joined by a corridor (row 4), label 2 aside, label 3 in a corner."""
    a = np.zeros((9, 20), np.uint32)
    a[1:8, 1:7] = 1
    a[1:8, 9:15] = 1
    a[4, 7:9] = 1
    a[2:6, 17:19] = 2
    a[8, 0] = 3
    return np.stack([a] * z)


def test_proofread_merge_plane_then_3d_with_undo(viewer, qtbot):
    from panoptem.napari._proofread import ProofreadWidget
    data = rooms()
    lab = viewer.add_labels(data.copy(), name="lab", scale=(30.0, 5.0, 5.0))
    pts = viewer.add_points([[1 * 30.0, 4 * 5.0, 3 * 5.0], [1 * 30.0, 3 * 5.0, 17 * 5.0]], name="p")  # world coords
    w = dock(viewer, ProofreadWidget)
    assert w.points.value is None and w.shapes.value is None   # never picked silently
    w.labels_layer.value = lab
    click(qtbot, w, "merge")
    assert "Choose a points or shapes layer" in w.status.value
    w.points.value = pts
    viewer.dims.set_point(0, 30.0)                     # plane z = 1
    click(qtbot, w, "merge")
    exp = data.copy()
    exp[1][exp[1] == 2] = 1
    assert np.array_equal(lab.data, exp), w.status.value
    assert w.status.value == "Merged [1, 2] -> 1 in xy plane 1: 8 voxels changed."
    click(qtbot, w, "undo")
    assert np.array_equal(lab.data, data)
    click(qtbot, w, "redo")
    assert np.array_equal(lab.data, exp)
    click(qtbot, w, "undo")
    lab.selected_label = 2                             # the selected label wins when it is among them
    w.apply_3d.value = True
    click(qtbot, w, "merge")
    assert np.array_equal(lab.data, np.where(data == 1, 2, data))


def test_proofread_splits_every_marked_label(viewer, qtbot):
    """Several marked labels are split in one edit (each by its own points), undone at once."""
    from panoptem.napari._proofread import ProofreadWidget
    one = rooms(1)[0]
    data = np.concatenate([one, np.where(one == 1, 4, 0)], axis=1)  # label 4: the same house, to the right
    lab = viewer.add_labels(data.copy(), name="houses")
    w = dock(viewer, ProofreadWidget)
    w.labels_layer.value = lab
    w.points.value = viewer.add_points([[4, 3], [4, 12], [4, 23], [4, 32]], name="seeds")
    w.use_points.value = True
    click(qtbot, w, "split")
    assert w.status.value.startswith("Split [1, 4]"), w.status.value
    assert np.unique(lab.data).tolist() == [0, 2, 3, 5, 6, 7, 8]          # 1 -> 5, 6 and 4 -> 7, 8
    assert lab.data[4, 3] == 5 and lab.data[4, 12] == 6 and lab.data[4, 23] == 7 and lab.data[4, 32] == 8
    click(qtbot, w, "undo")
    assert np.array_equal(lab.data, data)


def test_proofread_delete_with_a_line_split_and_morph(viewer, qtbot):
    from panoptem.napari._proofread import ProofreadWidget
    data = rooms()
    lab = viewer.add_labels(data.copy(), name="lab")
    line = viewer.add_shapes([np.array([[2, 3, 16], [2, 3, 19]])], shape_type="path", name="cut")
    w = dock(viewer, ProofreadWidget)
    w.labels_layer.value = lab
    w.shapes.value = line
    viewer.dims.set_point(0, 2)
    click(qtbot, w, "delete")             # the line crosses label 2 in plane 2
    exp = data.copy()
    exp[2][exp[2] == 2] = 0
    assert np.array_equal(lab.data, exp)

    w.shapes.value = None
    pts = viewer.add_points([[2, 4, 3], [2, 4, 12]], name="seeds")
    w.points.value = pts
    w.use_points.value = True
    click(qtbot, w, "split")
    assert "Mark exactly one label" not in w.status.value, w.status.value
    assert np.unique(lab.data[2]).tolist() == [0, 3, 4, 5]                    # new ids after the max (3)
    assert np.unique(lab.data[2][1:8, 1:7]).tolist() == [4] and np.unique(lab.data[2][1:8, 9:15]).tolist() == [5]
    assert lab.data[2, 4, 7] == 4 and lab.data[2, 4, 8] == 5
    assert np.array_equal(lab.data[:2], data[:2])
    click(qtbot, w, "undo")
    click(qtbot, w, "undo")
    assert np.array_equal(lab.data, data)

    w.new_ids_start.value = 2                          # 2, 3 exist: refused, nothing changes
    click(qtbot, w, "split")
    assert "collide" in w.status.value and np.array_equal(lab.data, data)

    # two marked labels, one of which cannot be split (the 1-voxel label 3): nothing is split
    w.new_ids_start.value = 0
    w.use_points.value = False
    w.min_distance.value = 3
    pts.data = [[2, 4, 3], [2, 8, 0]]
    click(qtbot, w, "split")
    assert "Nothing split" in w.status.value and "label 3" in w.status.value, w.status.value
    assert np.array_equal(lab.data, data)

    # dilate label 3 (corner) in 3D: it grows into background only
    viewer.layers.remove(pts)
    w.points.value = viewer.add_points([[0, 8, 0]], name="corner")
    w.apply_3d.value = True
    w.op.value, w.radius.value = "dilate", 1
    click(qtbot, w, "morph")
    assert lab.data[1, 8, 1] == 3 and lab.data[0, 7, 0] == 3 and lab.data[1, 7, 1] == 1  # the room is kept
    assert (lab.data == 1).sum() == (data == 1).sum() and (lab.data == 2).sum() == (data == 2).sum()


def test_proofread_filter_count_jump_next(viewer, qtbot):
    from panoptem.napari._proofread import ProofreadWidget
    data = rooms()
    lab = viewer.add_labels(data.copy(), name="lab", scale=(30.0, 5.0, 5.0))
    w = dock(viewer, ProofreadWidget)
    w.labels_layer.value = lab
    w.apply_3d.value = True
    w.min_size.value = 4                               # label 3 has 3 voxels: removed; 4 would stay
    click(qtbot, w, "filter")
    out = viewer.layers["lab-filtered"]
    assert np.array_equal(out.data, np.where(data == 3, 0, data)) and np.array_equal(lab.data, data)
    assert tuple(out.scale) == (30.0, 5.0, 5.0) and "Removed 1 labels" in w.status.value
    assert w.labels_layer.value is lab
    click(qtbot, w, "count")
    assert w.status.value == "Labels per class: class 1: 3"
    w.label_id.value = 2
    lab.data[:2][lab.data[:2] == 2] = 0                # label 2 only in plane z=2 now
    click(qtbot, w, "jump")
    assert viewer.dims.point[0] == 60.0 and lab.selected_label == 2
    click(qtbot, w, "next_label")
    assert lab.selected_label == 4
    w.divisor.value, w.class_id.value = 1000, 2
    click(qtbot, w, "next_label")
    assert lab.selected_label == 2001


def test_proofread_2d_points_over_3d_labels_mark_the_plane_shown(viewer, qtbot):
    from panoptem.napari._proofread import ProofreadWidget
    data = rooms()
    lab = viewer.add_labels(data.copy(), name="lab")
    w = dock(viewer, ProofreadWidget)
    w.labels_layer.value = lab
    w.points.value = viewer.add_points(np.array([[5.0, 17.0]]), ndim=2, name="p2d")  # drawn on every plane
    viewer.dims.set_point(0, 2)
    click(qtbot, w, "delete")
    assert w.status.value == "Deleted [2] in xy plane 2: 8 voxels changed.", w.status.value
    assert (lab.data[2] != 2).all() and (lab.data[:2] == data[:2]).all()


def test_proofread_marks_uint64_ids_past_2_to_the_53_exactly(viewer, qtbot):
    from panoptem.napari._proofread import ProofreadWidget
    big = 2**53 + 1                                    # float64 holds it as 2**53: another id
    data = rooms().astype(np.uint64) * np.uint64(2) + np.uint64(big - 2)
    data[rooms() == 0] = 0
    lab = viewer.add_labels(data.copy(), name="lab")
    w = dock(viewer, ProofreadWidget)
    w.labels_layer.value = lab
    w.points.value = viewer.add_points([[1, 4, 3]], name="p")
    viewer.dims.set_point(0, 1)
    click(qtbot, w, "delete")
    assert w.status.value == f"Deleted [{big}] in xy plane 1: 86 voxels changed.", w.status.value
    click(qtbot, w, "next_label")
    assert lab.selected_label == big + 5               # ids big, big + 2 and big + 4: the largest + 1


def test_proofread_new_points_layer_is_picked_and_scaled(viewer):
    from panoptem.napari._proofread import ProofreadWidget
    lab = viewer.add_labels(rooms(), name="lab", scale=(30.0, 5.0, 5.0))
    w = dock(viewer, ProofreadWidget)
    w.labels_layer.value = lab
    w.new_points_layer()
    pts = viewer.layers["proofread points"]
    assert w.points.value is pts and tuple(pts.scale) == (30.0, 5.0, 5.0) and w.labels_layer.value is lab


# ------------------------------------------------------------------ measure

def test_measure_widget_fills_features_and_csv(viewer, qtbot, tmp_path, monkeypatch):
    from panoptem.napari._measure import MeasureWidget
    calls = []

    def fake_measure(labels, voxel_size, **kw):
        calls.append(voxel_size)
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        return {"label": ids, "volume_nm3": counts * float(np.prod(voxel_size))}

    monkeypatch.setitem(sys.modules, "panoptem._measure", types.SimpleNamespace(measure=fake_measure))
    lab = viewer.add_labels(rooms(2), name="lab", scale=(30.0, 5.0, 5.0))
    w = dock(viewer, MeasureWidget)
    w.labels_layer.value = lab
    w.csv.value = tmp_path / "objects.csv"
    run_and_wait(qtbot, w)
    assert calls == [(30.0, 5.0, 5.0)]
    assert lab.features["index"].tolist() == [1, 2, 3]
    assert lab.features["volume_nm3"].tolist() == [2 * 86 * 750.0, 2 * 8 * 750.0, 2 * 750.0]
    lines = (tmp_path / "objects.csv").read_text().splitlines()
    assert lines == ["index,label,volume_nm3", "1,1,129000.0", "2,2,12000.0", "3,3,1500.0"]
    assert w.status.value.startswith("Measured 3 objects (nm)")


def test_measure_widget_with_the_real_measure(viewer, qtbot):
    from panoptem import measure  # noqa: F401 - the real one, not a stand-in
    from panoptem.napari._measure import MeasureWidget
    lab = viewer.add_labels(rooms(2), name="lab", scale=(30.0, 5.0, 5.0))
    img = viewer.add_image(np.where(rooms(2) > 0, 100, 0).astype(np.uint8), name="em")
    w = dock(viewer, MeasureWidget)
    w.labels_layer.value = lab
    assert w.image.value is None                       # optional: never picked silently
    w.image.value = img
    run_and_wait(qtbot, w)
    assert lab.features["index"].tolist() == [1, 2, 3]
    assert lab.features["voxels"].tolist() == [172, 16, 2]
    assert lab.features["volume_nm3"].tolist() == [172 * 750.0, 16 * 750.0, 2 * 750.0]
    assert lab.features["mean_intensity"].tolist() == [100.0, 100.0, 100.0]


def test_measure_widget_measures_a_stack_of_2d_images_per_slice(viewer, qtbot, tmp_path):
    """Per slice: a 2D batch result's slices measured as separate images (ids restart in each); the
    table is saved, not set as the layer's features, where ids repeat across slices."""
    from panoptem.napari._measure import MeasureWidget
    stack = np.zeros((3, 20, 20), np.uint32)
    stack[0, 2:6, 2:6] = 1
    stack[2, 10:15, 10:12] = 1
    lab = viewer.add_labels(stack, name="batch", scale=(1.0, 5.0, 5.0))
    w = dock(viewer, MeasureWidget)
    w.labels_layer.value = lab
    w.per_slice.value = True
    w.csv.value = str(tmp_path / "t.csv")
    run_and_wait(qtbot, w)
    assert w.table["slice"].tolist() == [0, 2] and w.table["area_nm2"].tolist() == [16 * 25.0, 10 * 25.0]
    assert "slice" not in lab.features and w.status.value.startswith("Measured 2 objects in 3 slices (nm)")
    assert open(tmp_path / "t.csv").readline().startswith("index,slice,label,")
    viewer.add_labels(stack[0], name="one")
    w.labels_layer.value = viewer.layers["one"]
    w.run()
    assert "untick Per slice" in w.status.value


def test_measure_widget_measures_a_multiscale_layer_at_full_resolution_if_it_fits(viewer, qtbot, monkeypatch):
    """A multiscale labels layer (an OME-Zarr output) is measured at level 0; labels that cannot
    fit in memory are refused in the status line, pointing to blockwise measurement."""
    from panoptem import _memory
    from panoptem.napari._measure import MeasureWidget
    full = rooms(2)
    lab = viewer.add_labels([full, full[:, ::2, ::2]], name="lab", scale=(30.0, 5.0, 5.0))
    assert lab.multiscale
    w = dock(viewer, MeasureWidget)
    w.labels_layer.value = lab
    run_and_wait(qtbot, w)
    assert lab.features["voxels"].tolist() == [172, 16, 2]  # level 0's, not the coarse level's
    monkeypatch.setattr(_memory, "physical_memory", lambda: 100)
    w.run()
    assert "--blockwise" in w.status.value and "memory" in w.status.value, w.status.value


# ------------------------------------------------------------------ export segmentations

def test_export_widget_writes_masks_and_images(viewer, qtbot, tmp_path):
    import tifffile

    from panoptem.io import read_image
    from panoptem.napari._export import ExportWidget
    lab_data = rooms()
    img_data = (np.arange(3 * 9 * 20) % 200).astype(np.uint8).reshape(3, 9, 20)
    lab = viewer.add_labels(lab_data, name="lab", scale=(30.0, 5.0, 5.0))
    img = viewer.add_image(img_data, name="em")
    w = dock(viewer, ExportWidget)
    assert w.image.value is None                       # optional: never picked silently
    w.labels_layer.value = lab
    run_and_wait(qtbot, w)
    assert w.status.value == "Error: Choose the folder to export into."
    w.folder.value = tmp_path
    w.image.value = img
    run_and_wait(qtbot, w)                        # one volume, voxel size from the layer
    root = tmp_path / "lab"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tif")) == ["images/lab.tif", "masks/lab.tif"]
    assert w.status.value == f"Exported 1 mask file(s) and 1 image file(s) to {root}."
    m = read_image(root / "masks" / "lab.tif")
    assert np.array_equal(np.asarray(m.data), lab_data) and tuple(m.voxel_size) == (30.0, 5.0, 5.0)
    assert np.array_equal(tifffile.imread(root / "images" / "lab.tif"), img_data)

    run_and_wait(qtbot, w)                        # never overwritten
    assert "already exists" in w.status.value
    w.name.value, w.voxel_size.value = "odd", "nan, 5, 5"
    run_and_wait(qtbot, w)                        # refused before any folder is made
    assert "positive numbers" in w.status.value and not (tmp_path / "odd").exists()
    w.name.value, w.slices.value, w.image.value, w.voxel_size.value = "slices", True, None, "40, 4, 4"
    run_and_wait(qtbot, w)
    assert sorted(p.name for p in (tmp_path / "slices" / "masks").iterdir()) == [
        "slices_0000.tif", "slices_0001.tif", "slices_0002.tif"]
    assert not (tmp_path / "slices" / "images").exists()
    s1 = read_image(tmp_path / "slices" / "masks" / "slices_0001.tif")
    assert np.array_equal(np.asarray(s1.data), lab_data[1]) and tuple(s1.voxel_size) == (4.0, 4.0)

    w.name.value, w.slices.value, w.format.value = "vol", False, "zarr"
    run_and_wait(qtbot, w)
    z = read_image(tmp_path / "vol" / "masks" / "vol.zarr")
    assert np.array_equal(np.asarray(z.data), lab_data) and tuple(z.voxel_size) == (40.0, 4.0, 4.0)
    w.name.value, w.voxel_size.value = "bad", "4, 4"
    run_and_wait(qtbot, w)
    assert w.status.value.startswith("Error: Voxel size needs 3 positive numbers")


def test_export_widget_writes_surface_meshes_where_napari_shows_the_objects(viewer, qtbot, tmp_path):
    """Surface meshes (3D): meshes/<label>.ply beside masks/, x, y, z in nm with the layer's
    position added; refused for a 2D layer, with nothing written."""
    from panoptem import measure
    from panoptem.napari._export import ExportWidget
    from panoptem.meshes import INDEX
    from skimage.measure import mesh_surface_area
    from test_meshes import VS, read_ply, scene
    lab_data = scene()
    lab = viewer.add_labels(lab_data, name="mito", scale=VS, translate=(500.0, 0.0, -40.0))
    w = dock(viewer, ExportWidget)
    w.labels_layer.value, w.folder.value, w.meshes.value = lab, tmp_path, True
    run_and_wait(qtbot, w)
    root = tmp_path / "mito"
    assert w.status.value == f"Exported 1 mask file(s), 3 mesh(es) to {root}."
    assert sorted(p.name for p in (root / "meshes").iterdir()) == ["12.ply", "3.ply", "7.ply", INDEX]
    table = measure(lab_data, voxel_size=VS)
    v, f = read_ply(root / "meshes" / "3.ply")
    assert mesh_surface_area(v, f) == pytest.approx(table["surface_area_nm2"][0], rel=1e-4)
    centre = [table[f"centroid_{a}_nm"][0] + t for a, t in zip("xyz", (-40.0, 0.0, 500.0))]
    assert np.allclose(v.mean(axis=0), centre, atol=5.0)
    flat = viewer.add_labels(lab_data[10], name="flat")
    w.labels_layer.value = flat
    run_and_wait(qtbot, w)
    assert w.status.value.startswith("Error: Surface meshes are made of 3D objects") and not (tmp_path / "flat").exists()


@pytest.mark.parametrize("name", ["..", "."])
def test_export_never_writes_or_cleans_up_outside_its_own_folder(tmp_path, name):
    """A Name of '..' or '.' is refused (with a folder not made yet, '..' wrote beside it, and a
    failed second export removed the folder above it, the user's files with it)."""
    from panoptem.napari._export_files import export_segmentation
    projects = tmp_path / "projects"
    projects.mkdir()
    (projects / "notes.txt").write_text("a month of annotations")
    for folder in ("exports", "exports2"):
        with pytest.raises(PanoptemError, match="not '.' or '..'"):
            export_segmentation(projects / folder, name, np.ones((2, 8, 8), np.uint32))
    assert sorted(p.name for p in projects.iterdir()) == ["notes.txt"]


def test_export_into_a_file_or_a_folder_it_cannot_make_is_one_error(tmp_path):
    from panoptem.napari._export_files import export_segmentation
    (tmp_path / "afile").write_text("kept")
    with pytest.raises(PanoptemError, match="afile is a file, not a folder"):
        export_segmentation(tmp_path / "afile", "lab", np.ones((2, 8, 8), np.uint32))
    with pytest.raises(PanoptemError, match="Cannot make the export folder .*afile/sub/lab"):
        export_segmentation(tmp_path / "afile" / "sub", "lab", np.ones((2, 8, 8), np.uint32))
    assert (tmp_path / "afile").read_text() == "kept"


def test_inference_docks_take_the_pixel_size_from_the_layer(viewer, qtbot, home, tmp_path):
    from panoptem.napari._inference import Inference2DWidget, Inference3DWidget
    card = Path(os.environ["PANOPTEM_HOME"]) / "models" / "darkblob" / "card.yaml"
    d = yaml.safe_load(card.read_text())
    card.write_text(yaml.safe_dump({**d, "voxel_size_nm": 5.0}))   # the model now states its pixel size
    img = viewer.add_image(blobs((4, 64, 80), centers=((16, 20), (32, 55)), r=7), name="coarse",
                           scale=(20.0, 10.0, 10.0))
    plain = viewer.add_image(blobs(), name="plain")
    for cls in (Inference2DWidget, Inference3DWidget):
        w = dock(viewer, cls)
        w.model.value, w.device.value = "darkblob", "cpu"
        w.image.value = plain
        assert w.form.values()["pixel_size"] is None        # napari's default scale: unknown
        w.image.value = img
        assert w.form["pixel_size"].value == 10.0 and w.form.params().pixel_size == 10.0
        if cls is Inference3DWidget:
            w.form.set_values(min_size=10, min_extent=1)
        run_and_wait(qtbot, w)
        assert w.status.value.startswith("Done: 2 "), w.status.value
        assert "10 x 10 nm, resampled to the model's 5 nm" in w.status.value
        w.form.set_values(pixel_size=5.0)                     # the user's own value wins
        run_and_wait(qtbot, w)
        assert w.status.value.endswith("5 x 5 nm, no resampling needed."), w.status.value
        w.form.set_values(pixel_size=None, resample=False)
        run_and_wait(qtbot, w)
        assert w.status.value.endswith("10 x 10 nm, resampling off."), w.status.value
        out = viewer.layers["coarse-2D-prediction" if cls is Inference2DWidget else "coarse-mitochondria-prediction"]
        assert out.data.shape[-2:] == (64, 80) and tuple(out.scale)[-2:] == (10.0, 10.0)


def test_run_stays_off_until_the_last_result_layer_is_in(viewer, qtbot, home):
    # the buttons came back when the job ended, while its layers were still going in one by one
    from panoptem.napari._inference import Inference3DWidget
    img = viewer.add_image(blobs((4, 64, 64), centers=((32, 32),), r=10), name="vol")
    w = dock(viewer, Inference3DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    w.form.set_values(orthoplane=True, return_panoptic=True)  # 4 layers, added one per turn of the loop
    seen, ended = [], w._finished

    def finished():
        ended()
        seen.append((w._adding, w.run_button.enabled))
    w._finished = finished
    run_and_wait(qtbot, w)
    assert seen == [(True, False)] and w.run_button.enabled and len(w.result_layers) == 4, seen


@pytest.mark.parametrize("x_nm", [6.0, float(np.float32(6.1))])
def test_3d_dock_keeps_unequal_y_and_x_sizes_of_the_layer(viewer, qtbot, home, tmp_path, x_nm):
    # the pixel size field shows the x size; left as prefilled, the 3D dock took it for y too (and
    # a size with more decimals than the field shows, a float32 6.1 from a file header, was taken
    # for one the user typed)
    from panoptem import segment_3d
    from panoptem.napari._inference import Inference3DWidget
    card = Path(os.environ["PANOPTEM_HOME"]) / "models" / "darkblob" / "card.yaml"
    card.write_text(yaml.safe_dump({**yaml.safe_load(card.read_text()), "voxel_size_nm": 5.0}))
    data = blobs((4, 64, 80), centers=((16, 20), (40, 55)), r=9)
    img = viewer.add_image(data, name="aniso", scale=(10.0, 5.0, x_nm))
    w = dock(viewer, Inference3DWidget)
    w.model.value, w.device.value = "darkblob", "cpu"
    w.image.value = img
    assert w.form["pixel_size"].value == round(x_nm, 3)
    w.form.set_values(min_size=10, min_extent=1)
    run_and_wait(qtbot, w)
    want = segment_3d(data, "darkblob", device="cpu", voxel_size=(10.0, 5.0, x_nm), min_size=10, min_extent=1)
    assert f"10 x 5 x {round(x_nm, 3):g} nm" in w.status.value, w.status.value
    np.testing.assert_array_equal(viewer.layers["aniso-mitochondria-prediction"].data, want.labels["mitochondria"])


def test_use_quantized_model_runs_the_int8_network_on_a_cpu_and_is_ignored_elsewhere(viewer, qtbot, home, tmp_path):
    """empanada's "Use quantized model": on a CPU, panoptem's own network in int8 (its quantized
    graph made in the cache); a model that cannot run quantized runs as it is."""
    pytest.importorskip("onnxruntime")
    import panoptem
    from panoptem.napari._inference import Inference2DWidget
    img = viewer.add_image(panoptem.load_sample(), name="em", scale=(5.0, 5.0, 5.0))
    w = dock(viewer, Inference2DWidget)
    w.image.value = img
    w.model.value, w.device.value = "MitoLite_v1", "cpu"
    assert w.quantized.value is False and w.quantized.text == "Use quantized model"
    run_and_wait(qtbot, w)
    fp32 = np.asarray(viewer.layers["em-2D-prediction"].data).copy()
    assert "int8" not in w.status.value and not list((tmp_path / "home" / "cache" / "onnx").glob("*int8*"))
    w.quantized.value = True
    run_and_wait(qtbot, w)
    int8 = np.asarray(viewer.layers["em-2D-prediction"].data)
    assert w.status.value.startswith("Done:") and w.status.value.endswith("; int8 network."), w.status.value
    assert list((tmp_path / "home" / "cache" / "onnx").glob("*.int8*.onnx"))
    r = panoptem.evaluate(int8[0], fp32[0])
    assert r["f1_50"] == 1.0 and 0.95 <= r["foreground_iou"] < 1.0, r  # another network, the same objects
    w.model.value = "darkblob"  # TorchScript: no int8 copy, runs in float32
    w.image.value = viewer.add_image(blobs(), name="blobs", scale=(5.0, 5.0, 5.0))
    w.form.set_values(maximum_objects_per_class=0)
    viewer.dims.set_point(0, 0.0)
    run_and_wait(qtbot, w)
    assert w.status.value.startswith("Done: 3 objects") and "int8" not in w.status.value, w.status.value
