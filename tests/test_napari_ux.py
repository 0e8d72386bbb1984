"""The plugin as a user meets it: every dock labelled (with and without layers), every control
with a tooltip, status lines not clipped, docks that fit the screen, Help, the new options,
Cancel, and a window that keeps responding while work runs (fixtures from test_napari)."""
import os
import time

import pytest

pytest.importorskip("napari", reason="napari is not installed: pip install 'panoptem[napari]'")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed: pip install 'panoptem[test]'")

import numpy as np
import test_napari as _tn
from test_napari import blobs, dock, run_and_wait

home, registered, viewer, pytestmark = _tn.home, _tn.registered, _tn.viewer, _tn.pytestmark


def dock_classes():
    """Every dock the manifest declares, as (display name, class)."""
    import importlib

    from npe2 import PluginManifest
    m = PluginManifest.from_file(_tn.MANIFEST)
    cmds = {c.id: c.python_name for c in m.contributions.commands}
    out = []
    for w in m.contributions.widgets:
        mod, cls = cmds[w.command].split(":")
        out.append((w.display_name, getattr(importlib.import_module(mod), cls)))
    return out


def nameless(w) -> list[str]:
    """Controls of a dock that show no name: buttons without text, other controls without a
    visible label beside them."""
    from magicgui.widgets import Label
    from magicgui.widgets.bases import ButtonWidget

    from panoptem.napari._forms import iter_controls
    bad = []
    for c in iter_controls(w):
        if isinstance(c, Label):
            continue
        if isinstance(c, ButtonWidget):
            if not (c.text or "").strip():
                bad.append(c.name)
            continue
        lw = c._labeled_widget()
        if lw is None or not str(lw._label_widget.value).strip() or not lw._label_widget.native.isVisible():
            bad.append(c.name or repr(c))
    return bad


def open_all_groups(w):
    from magicgui.widgets import Container

    from panoptem.napari._forms import Group

    def walk(c):
        if isinstance(c, Group) and c.folded:
            c.toggle()
        if isinstance(c, Container):
            for x in c:
                walk(x)
    walk(w)


def add_some_layers(viewer):
    viewer.add_image(blobs(), name="em")
    viewer.add_labels(np.zeros((4, 128, 160), np.uint32), name="lab")
    viewer.add_points([[1, 5, 5]], name="pts")
    viewer.add_shapes([np.array([[1, 0, 0], [1, 5, 5]])], shape_type="path", name="sh")


@pytest.mark.parametrize("layers_first", [False, True])
def test_every_dock_shows_its_field_names_and_tooltips(make_napari_viewer, registered, home, qtbot, layers_first):
    viewer = make_napari_viewer(show=True)
    if layers_first:
        add_some_layers(viewer)
    docks = []
    for title, cls in dock_classes():
        w = cls(viewer)
        viewer.window.add_dock_widget(w, name=title)
        open_all_groups(w)
        docks.append((title, w))
    qtbot.wait(50)
    if not layers_first:
        add_some_layers(viewer)             # the pickers fill up; names must stay
        qtbot.wait(50)
    from magicgui.widgets import Label

    from panoptem.napari._forms import iter_controls
    for title, w in docks:
        assert w.labels is False, title                       # the dock's own column has no label column
        assert nameless(w) == [], (title, nameless(w))
        no_tip = [c.name for c in iter_controls(w) if not isinstance(c, Label) and not (c.tooltip or "").strip()]
        assert no_tip == [], (title, no_tip)
        assert w.help_button.enabled and w.help_title


def test_tooltips_say_the_units(viewer, home):
    from panoptem.napari._finetune import FinetuneWidget
    from panoptem.napari._inference import Inference3DWidget
    from panoptem.napari._patches import PatchesWidget
    from panoptem.napari._proofread import ProofreadWidget
    w3 = dock(viewer, Inference3DWidget)
    for name, unit in [("min_size", "voxels"), ("min_extent", "voxels"), ("median_slices", "slices"),
                       ("tile_size", "pixels"), ("min_distance_object_centers", "heatmap cells"),
                       ("label_erosion", "voxels"), ("label_dilation", "voxels"), ("chunk_size", "voxels"),
                       ("bridge_gaps", "slices")]:
        assert unit in w3.form[name].tooltip, name
    pr = dock(viewer, ProofreadWidget)
    for c in (pr.radius, pr.min_distance, pr.hole_size, pr.min_size):
        assert "voxels" in c.tooltip, c.name
    assert "pixels" in dock(viewer, PatchesWidget).patch_size.tooltip
    assert "pixels" in dock(viewer, FinetuneWidget).patch_size.tooltip


def test_training_patch_and_measure_docks_start_at_the_schema_defaults(viewer, home):
    from panoptem.napari._finetune import FinetuneWidget
    from panoptem.napari._measure import MeasureWidget
    from panoptem.napari._patches import PatchesWidget
    from panoptem.napari._train import TrainWidget
    from panoptem.params import FinetuneParams, MeasureParams, PatchParams, TrainParams
    for cls, widget, names in ((FinetuneParams, FinetuneWidget, ("iterations", "patch_size", "layers", "lr",
                                                                "val_fraction", "replay_ratio")),
                               (TrainParams, TrainWidget, ("iterations", "patch_size", "lr")),
                               (PatchParams, PatchesWidget, ("n", "patch_size", "plane", "flipbook_depth", "seed")),
                               (MeasureParams, MeasureWidget, ("surface",))):
        w = dock(viewer, widget)
        for name in names:
            assert getattr(w, name).value == cls.model_fields[name].default, (widget.__name__, name)


def test_the_parameter_boxes_offer_what_the_command_line_takes_and_nothing_it_refuses(viewer, home):
    """A threshold of 0.125 can be typed in as on the command line, and a field that must be above 0
    (Link IoU Thr) does not go down to 0."""
    from panoptem.napari._forms import ParamsForm
    from panoptem.params import Params3D
    form = ParamsForm(Params3D)
    assert form["iou_thr"].min > 0 and form["ioa_thr"].min > 0 and form["confidence_thr"].min == 0
    form.set_values(confidence_thr=0.125, iou_thr=form["iou_thr"].min)
    assert form["confidence_thr"].value == 0.125
    p = form.params()                                      # the smallest the box offers is valid
    assert p.confidence_thr == 0.125 and 0 < p.iou_thr < 0.01


def test_status_lines_are_full_width_and_not_clipped(make_napari_viewer, registered, home, qtbot):
    viewer = make_napari_viewer(show=True)
    long = ("Done: 5 mitochondria in 12.3 s (written to /a/rather/long/folder/name/that/needs/several/lines/"
            "volume_MitoLite_v1.zarr). " * 2)
    for title, cls in dock_classes():
        w = cls(viewer)
        viewer.window.add_dock_widget(w, name=title)
        assert w.status in list(w), title                      # straight in the dock's column, not in a row
        w.status.value = long
        qtbot.wait(30)
        lab = w.status.native
        assert lab.wordWrap() and lab.width() > 150, title
        assert lab.height() >= lab.heightForWidth(lab.width()) - 1, (title, lab.height(), lab.heightForWidth(lab.width()))


def test_all_docks_open_fit_on_the_screen(make_napari_viewer, registered, home, qtbot):
    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    for title, cls in dock_classes():
        viewer.window.add_dock_widget(cls(viewer), name=title)
        qtbot.wait(20)
    qtbot.wait(100)
    assert win.frameGeometry().height() <= 1200, win.frameGeometry().height()   # the 1200-px screen
    win.resize(1400, 900)
    qtbot.wait(100)
    assert win.height() <= 900 + 5                               # the docks shrink (they scroll)


def test_help_shows_the_modules_readme_section(viewer, home, qtbot):
    from panoptem.napari._help import help_section, readme_text
    text = readme_text()
    for title, cls in dock_classes():
        md = help_section(cls.help_title, text)               # the README has a section per dock
        assert md.splitlines()[0].lstrip("#").strip() == cls.help_title and len(md.splitlines()) > 2, title
    from panoptem.napari._inference import Inference3DWidget
    w = dock(viewer, Inference3DWidget)
    w.help_button.native.click()
    qtbot.waitUntil(lambda: w.help_dialog is not None and w.help_dialog.isVisible(), timeout=5000)
    from qtpy.QtWidgets import QTextBrowser
    shown = w.help_dialog.findChild(QTextBrowser).toPlainText()
    assert shown.startswith("3D Inference") and "Stack Parameters" in shown and "Erode Labels" in shown
    w.help_dialog.close()


def test_help_section_parsing_stops_at_the_next_heading():
    from panoptem.errors import PanoptemError
    from panoptem.napari._help import help_section
    md = "# t\n## A\na\n```\n# not a heading\n```\n### A.1\nb\n## B\nc\n### A.1\nd\n"
    assert help_section("A", md, within=None) == "## A\na\n```\n# not a heading\n```\n### A.1\nb\n"
    assert help_section("A.1", md, within="B") == "### A.1\nd\n"      # only inside section B
    with pytest.raises(PanoptemError, match="no section 'C'"):
        help_section("C", md, within=None)


def test_the_tests_run_on_a_qt6_binding():
    import qtpy
    assert qtpy.API_NAME in ("PyQt6", "PySide6"), qtpy.API_NAME
    assert qtpy.QT_VERSION.startswith("6.")


# ------------------------------------------------------------------ 2D / 3D options

def test_3d_groups_fold_and_postprocessing_matches_the_engine(viewer, qtbot, home, tmp_path):
    import zarr

    from panoptem.inference.postprocess import postprocess_labels
    from panoptem.napari._inference import GROUPS_3D, Inference3DWidget
    img = viewer.add_image(blobs((8, 128, 160)), name="tubes", scale=(20.0, 5.0, 5.0))
    w = dock(viewer, Inference3DWidget)
    groups = {g.title: g for g in w if hasattr(g, "title")}
    assert list(groups) == list(GROUPS_3D)  # "Input" holds the layer, model and pixel size
    assert [c.name for c in groups["Stack Parameters"].body] == list(GROUPS_3D["Stack Parameters"])
    adv = groups["Advanced"]
    assert adv.folded and not w.form["iou_thr"].native.isVisibleTo(w.native)
    adv.header.native.click()
    assert not adv.folded and w.form["iou_thr"].native.isVisibleTo(w.native)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    w.form.set_values(min_size=50, min_extent=2, orthoplane=True)
    run_and_wait(qtbot, w)
    plain = np.asarray(viewer.layers["tubes-mitochondria-prediction"].data).copy()
    viewer.layers.remove("tubes-mitochondria-prediction")
    w.form["label_erosion"].value, w.form["label_dilation"].value = 1, 3
    w.form["fill_holes_in_segmentation"].native.click()
    w.form["chunk_size"].value = "4,16,8"   # z,y,x, as empanada's box takes it
    w.zarr_dir.value = tmp_path
    run_and_wait(qtbot, w)
    out = np.asarray(viewer.layers["tubes-mitochondria-prediction"].data)
    assert w.status.value.startswith("Done: 3 mitochondria"), w.status.value
    assert (out > 0).sum() > (plain > 0).sum()
    assert np.array_equal(out, postprocess_labels(plain, 1, 3, True))      # the engine's morphology, exactly
    # the ortho-plane result, written to Zarr (it is not streamed) with the chunk size asked
    z = zarr.open_group(str(tmp_path / "tubes_darkblob.zarr"), mode="r")["0"]
    assert z.chunks == (4, 16, 8) and np.array_equal(z[:], out)


def test_2d_fill_holes_from_the_form(viewer, qtbot, home):
    from panoptem.napari._inference import Inference2DWidget
    img = np.full((96, 96), 220, np.uint8)
    yy, xx = np.mgrid[:96, :96]
    r2 = (yy - 48) ** 2 + (xx - 48) ** 2
    img[(r2 < 30 ** 2) & (r2 >= 8 ** 2)] = 40
    layer = viewer.add_image(img, name="ring")
    w = dock(viewer, Inference2DWidget)
    w.image.value = layer
    w.model.value, w.device.value = "darkblob", "cpu"
    w.form.set_values(maximum_objects_per_class=0, semantic_only=True)
    run_and_wait(qtbot, w)
    assert viewer.layers["ring-2D-prediction"].data[48, 48] == 0
    w.form["fill_holes_in_segmentation"].native.click()
    run_and_wait(qtbot, w)
    assert viewer.layers["ring-2D-prediction"].data[48, 48] == 1, w.status.value


def test_2d_batch_status_counts_objects_not_ids(viewer, qtbot, home):
    from panoptem.napari._inference import Inference2DWidget
    img = viewer.add_image(blobs(), name="blobs")
    w = dock(viewer, Inference2DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    w.batch.value = True
    run_and_wait(qtbot, w)
    stack = viewer.layers["blobs-batch-prediction"].data
    assert len(np.unique(stack)) - 1 == 3                        # ids restart: 3 distinct ids ...
    assert w.status.value == "Done: 12 objects on 4 slices (ids restart in every slice); model pixel size unknown: not resampled."   # ... 12


# ------------------------------------------------------------------ proofreading: reasons, count table

def test_morph_off_the_shown_plane_says_why(viewer, qtbot):
    from panoptem.napari._proofread import ProofreadWidget
    from test_napari import click, rooms
    lab = viewer.add_labels(rooms(), name="lab")
    w = dock(viewer, ProofreadWidget)
    w.labels_layer.value = lab
    w.points.value = viewer.add_points([[0, 4, 3]], name="p")
    viewer.dims.set_point(0, 2)
    before = lab.data.copy()
    click(qtbot, w, "morph")
    assert w.status.value == ("Error: No label is marked: none of the 1 point(s) lies on the shown xy plane 2; "
                              "move the slider to a point's plane, or tick Apply in 3D.")
    assert np.array_equal(lab.data, before)
    w.points.value.data = np.array([[2, 0, 19]])                  # on the plane, on background
    click(qtbot, w, "delete")
    assert "lie on background (label 0)" in w.status.value
    w.points.value.data = np.array([[2, 4, 3]])
    w.op.value, w.hole_size.value = "fill_holes", 5
    click(qtbot, w, "morph")
    assert w.status.value == ("Morphed (fill_holes) [1] in xy plane 2: nothing changed (no hole of at most "
                              "Hole size voxels enclosed by one label).")


def test_count_exports_a_table_as_csv_and_xlsx(viewer, qtbot, tmp_path):
    import xml.etree.ElementTree as ET
    import zipfile

    from panoptem.napari._proofread import ProofreadWidget
    from test_napari import click, rooms
    data = rooms()
    data[0][data[0] == 2] = 1002
    lab = viewer.add_labels(data, name="lab")
    w = dock(viewer, ProofreadWidget)
    w.labels_layer.value = lab
    w.apply_3d.value = True
    w.divisor.value = 1000
    w.count_file.value = tmp_path / "count.csv"
    click(qtbot, w, "count")
    assert w.status.value == f"Labels per class: class 0: 3, class 1: 1; table saved to {tmp_path / 'count.csv'}"
    assert (tmp_path / "count.csv").read_text().splitlines() == [
        "class_id,label,voxels", "0,1,258", "0,2,16", "0,3,3", "1,1002,8"]
    w.count_file.value = tmp_path / "count.xlsx"
    click(qtbot, w, "count")
    with zipfile.ZipFile(tmp_path / "count.xlsx") as z:
        sheet = ET.fromstring(z.read("xl/worksheets/sheet1.xml"))
        assert "xl/workbook.xml" in z.namelist()
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    rows = [[(c.find("m:v", ns).text if c.find("m:v", ns) is not None else c.find("m:is/m:t", ns).text)
             for c in r.findall("m:c", ns)] for r in sheet.findall("m:sheetData/m:row", ns)]
    assert rows == [["class_id", "label", "voxels"], ["0", "1", "258"], ["0", "2", "16"], ["0", "3", "3"],
                    ["1", "1002", "8"]]



def test_filter_and_count_each_slice_of_a_batch_stack(viewer, qtbot, tmp_path):
    """A 2D batch stack (ids restart per slice): Filter and Count work on each slice on its own."""
    from panoptem.napari._proofread import ProofreadWidget
    from test_napari import click
    from test_proofread import batch_stack
    lab = viewer.add_labels(batch_stack(), name="batch")
    w = dock(viewer, ProofreadWidget)
    w.labels_layer.value = lab
    w.each_slice.value = True
    w.count_file.value = tmp_path / "per_slice.csv"
    click(qtbot, w, "count")
    assert w.status.value.startswith("Labels per class (over 2 slices): class 1: 3"), w.status.value
    assert (tmp_path / "per_slice.csv").read_text().splitlines() == [
        "slice,class_id,label,voxels", "0,1,1,4", "0,1,2,1", "1,1,1,1"]
    w.min_size.value = 2
    click(qtbot, w, "filter")
    assert w.status.value.startswith("Removed 2 labels (over 2 slices)"), w.status.value
    out = viewer.layers["batch-filtered"].data
    assert out[0, 0, 1] == 1 and not out[1].any()
    w.labels_layer.value = viewer.add_labels(batch_stack()[0], name="one")
    click(qtbot, w, "count")
    assert "needs a 3D stack" in w.status.value


def test_proofread_reads_a_pyramid_at_full_resolution_and_never_writes_a_table_over_its_file(viewer, qtbot,
                                                                                              tmp_path):
    """Count, Filter and Jump of a multiscale labels layer read level 0 (np.asarray of a pyramid is its
    coarsest level: wrong counts, a shrunk filtered layer); a table named as the layer's own file
    is refused (the labels file had been replaced by CSV text)."""
    from panoptem.io import write_labels
    from panoptem.napari._proofread import ProofreadWidget
    from test_napari import click
    full = np.zeros((3, 32, 32), np.uint32)
    full[:, 2:10, 2:10], full[:, 20:22, 20:22] = 1, 2          # label 2: 12 voxels, gone at level 1
    lab = viewer.add_labels([full, full[:, ::4, ::4]], multiscale=True, name="pyr")
    w = dock(viewer, ProofreadWidget)
    w.labels_layer.value = lab
    w.apply_3d.value = True
    w.count_file.value = tmp_path / "pyr.csv"
    click(qtbot, w, "count")
    assert (tmp_path / "pyr.csv").read_text().splitlines() == ["class_id,label,voxels", "1,1,192", "1,2,12"]
    w.min_size.value = 20
    click(qtbot, w, "filter")
    assert np.array_equal(viewer.layers["pyr-filtered"].data, np.where(full == 1, 1, 0))
    src = write_labels(tmp_path / "mine.tif", full)
    w.labels_layer.value = viewer.open(src, plugin="panoptem")[0]
    before = src.read_bytes()
    for target in (src, tmp_path / "notes.txt"):
        w.count_file.value = target
        click(qtbot, w, "count")
        assert w.status.value.startswith("Error: ") and ("input" in w.status.value or ".csv" in w.status.value)
    assert src.read_bytes() == before and not (tmp_path / "notes.txt").exists()


def test_tiles_dock_cuts_and_merges_files(viewer, qtbot, tmp_path):
    """Create / Merge Tiles from the dock: files in, files out, the image back exactly."""
    import tifffile

    from panoptem.napari._tiles import TilesWidget
    img = np.random.default_rng(0).integers(0, 65535, (150, 200), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", img)
    w = dock(viewer, TilesWidget)
    w.tiles_dir.value = tmp_path / "t"
    w.create_button.native.click()
    assert w.status.value == "Error: Choose the 2D image file."
    w.image_file.value, w.tile_size.value = tmp_path / "big.tif", 64
    w.create_button.native.click()
    qtbot.waitUntil(lambda: not w.running, timeout=30_000)
    assert w.status.value == f"Wrote 12 tiles of 64 pixels to {tmp_path / 't'}.", w.status.value
    w.merged_dir.value = tmp_path / "m"
    w.merge_button.native.click()
    qtbot.waitUntil(lambda: not w.running, timeout=30_000)
    assert w.status.value == f"Wrote {tmp_path / 'm' / 'image.tif'}.", w.status.value
    assert np.array_equal(tifffile.imread(tmp_path / "m" / "image.tif"), img)


# ------------------------------------------------------------------ models: the card follows the picker

def test_models_card_follows_the_picker_and_rows_are_named(viewer, qtbot, home, tmp_path):
    from panoptem.napari._models import ModelsWidget
    from test_napari_models import click_and_wait
    w = dock(viewer, ModelsWidget)
    w.model.value = "darkblob"
    assert w.info.value.startswith("name: darkblob")              # shown without pressing anything
    assert w.info._labeled_widget()._label_widget.value == "Model card"
    w.out_file.value = tmp_path / "dark.panoptem"
    click_and_wait(qtbot, w, "export")
    w.package.value, w.new_name.value = tmp_path / "dark.panoptem", "dark2"
    click_and_wait(qtbot, w, "import")
    assert w.model.value == "dark2" and w.info.value.startswith("name: dark2\n"), w.info.value


# ------------------------------------------------------------------ patches: drop, empty patch -> fine-tune

def test_drop_a_patch_then_store_with_empty_patches_and_finetune(viewer, qtbot, home, tmp_path, tiny_card):
    import tifffile

    from panoptem.models.registry import register
    from panoptem.napari._finetune import FinetuneWidget
    from panoptem.napari._patches import PatchesWidget
    from test_napari_models import _run_and_check_training, click_and_wait
    register("tiny", tiny_card)
    vol = blobs((4, 128, 128), centers=((30, 30), (90, 90)), r=12)
    w = dock(viewer, PatchesWidget)
    w.image.value = viewer.add_image(vol, name="vol")
    w.n.value, w.patch_size.value = 4, 64
    click_and_wait(qtbot, w, "pick")
    shown, paint = w.patch_layers
    assert shown.data.shape == (4, 64, 64)
    names = [p.name for p in w.patches]
    viewer.dims.set_point(0, 1)
    w.buttons["drop"].native.click()
    assert [p.name for p in w.patches] == names[:1] + names[2:] and shown.data.shape == (3, 64, 64)
    assert w.status.value == f"Dropped patch 1 ({names[1]}); 3 left."
    paint.data[0, 10:30, 10:30] = 1
    paint.refresh()
    w.folder.value = tmp_path / "ds"
    click_and_wait(qtbot, w, "store")
    masks = {p.stem: tifffile.imread(p) for p in (tmp_path / "ds" / "masks").iterdir()}
    assert sorted(masks) == sorted(names[:1] + names[2:]) and masks[names[0]].any()
    assert sum(not m.any() for m in masks.values()) == 2
    ft = dock(viewer, FinetuneWidget)
    ft.model.value, ft.device.value = "tiny", "cpu"
    ft.train_dir.value = tmp_path / "ds"
    ft.name.value, ft.iterations.value, ft.patch_size.value = "with_negatives", 3, 64
    _run_and_check_training(ft, qtbot, "with_negatives", iterations=3)


# ------------------------------------------------------------------ fine-tune at any iteration count; cancel

@pytest.fixture
def tiny_dataset(tmp_path, tiny_card, home):
    from panoptem.models.registry import register
    from panoptem.training.dataset import store_dataset
    from panoptem.training.patches import pick_patches
    register("tiny", tiny_card)
    vol = blobs((2, 64, 64), centers=((20, 20), (44, 40)), r=8)
    store_dataset(pick_patches(vol, n=2, patch_size=64, labels=(vol < 100).astype(np.uint32), source="b"),
                  tmp_path / "ds")
    return tmp_path / "ds"


@pytest.mark.parametrize("iterations", [1, 10, 11])
def test_finetune_widget_at_1_10_and_11_iterations(viewer, qtbot, tiny_dataset, iterations):
    from panoptem.napari._finetune import FinetuneWidget
    from test_napari_models import _run_and_check_training
    w = dock(viewer, FinetuneWidget)
    w.model.value, w.device.value = "tiny", "cpu"
    w.train_dir.value = tiny_dataset
    w.name.value, w.iterations.value, w.patch_size.value = f"it{iterations}", iterations, 64
    _run_and_check_training(w, qtbot, f"it{iterations}", iterations=iterations)


def test_cancel_finetune_keeps_the_checkpoint_and_the_next_run_continues(viewer, qtbot, tiny_dataset):
    import torch

    from panoptem.models.home import user_home
    from panoptem.napari._finetune import FinetuneWidget
    w = dock(viewer, FinetuneWidget)
    w.model.value, w.device.value = "tiny", "cpu"
    w.train_dir.value = tiny_dataset
    w.name.value, w.iterations.value, w.patch_size.value = "stopped", 400, 64
    w.run_button.native.click()
    assert w.cancel_button.enabled
    qtbot.waitUntil(lambda: w.progress.value >= 2, timeout=60_000)
    w.cancel_button.native.click()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    ckpt = user_home() / "training" / "stopped" / "checkpoint.pt"
    step = torch.load(ckpt, weights_only=False)["step"]
    assert 2 <= step < 400 and w.status.value == (f"Cancelled: stopped after step {step} of 400; checkpoint kept "
                                                  f"in {ckpt}. Run again with the same name to continue from "
                                                  "there.")
    assert not w.cancel_button.enabled and w.run_button.enabled
    w.iterations.value = step + 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        w.run_button.native.click()
        qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    finally:
        torch.set_num_threads(threads)
    assert w.status.value.startswith("Done: registered 'stopped'") and len(w.result["losses"]) == 2
    assert not ckpt.exists()


def test_train_widget_two_classes_divisor_size_and_cancel(viewer, qtbot, home, tmp_path):
    import torch

    from panoptem.models.home import get_card
    from panoptem.napari._train import TrainWidget
    from panoptem.training.dataset import store_dataset
    from panoptem.training.patches import Patch
    img = blobs((1, 64, 64), centers=((20, 20), (44, 40)), r=8)[0]
    lab = np.zeros((64, 64), np.uint32)
    lab[img < 100] = 1001
    lab[44:, 40:][img[44:, 40:] < 100] = 1002
    lab[:6, :] = 2000                                               # a semantic class: a band
    ps = [Patch(img, lab, img.shape, "xy", i, 0, 0, 64, img.shape, source="two") for i in range(2)]
    store_dataset(ps, tmp_path / "ds", class_names={1: "mito", 2: ("membrane", "semantic")}, label_divisor=1000)
    w = dock(viewer, TrainWidget)
    w.train_dir.value = tmp_path / "ds"
    w.name.value, w.patch_size.value, w.device.value = "two", 64, "cpu"
    w.classes.value = "1,mito,instance\n2,membrane,semantic"
    run_and_wait(qtbot, w)
    assert w.status.value == ("Error: Several classes need a Label divisor: the one the masks were painted with "
                              "(label = class x divisor + n).")
    w.label_divisor.value = 1000
    w.size.value, w.widths.value = "custom", "8,8,8,8,8"
    w.iterations.value = 500
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        w.run_button.native.click()
        qtbot.waitUntil(lambda: w.progress.value >= 1, timeout=60_000)
        w.cancel_button.native.click()
        qtbot.waitUntil(lambda: not w.running, timeout=60_000)
        assert w.status.value.startswith("Cancelled: stopped after step "), w.status.value
        w.iterations.value = 3
        w.run_button.native.click()
        qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    finally:
        torch.set_num_threads(threads)
    assert w.status.value.startswith("Done: registered 'two'"), w.status.value
    card = get_card("two")
    assert [(c.name, c.kind) for c in card.classes] == [("mito", "instance"), ("membrane", "semantic")]
    assert card.label_divisor == 1000 and card.architecture["widths"] == [8, 8, 8, 8, 8]
    assert card.architecture["num_classes"] == 3


# ------------------------------------------------------------------ a window that keeps responding

def _ticks_during(qtbot, w, start, timeout=300_000):
    """Start a job and record a 20 ms Qt timer's ticks until it ends (and 0.3 s after)."""
    from qtpy.QtCore import QTimer
    ticks = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    t0 = time.perf_counter()
    start()
    qtbot.waitUntil(lambda: not w.running, timeout=timeout)
    qtbot.wait(300)
    timer.stop()
    gaps = np.diff([t0, *ticks])
    return gaps, time.perf_counter() - t0


def test_3d_inference_keeps_the_window_responsive(make_napari_viewer, registered, qtbot, home):
    """The GUI thread only adds layers: a 20 ms timer keeps ticking through a 3D run on a
    32 x 768 x 1024 volume and its result (bounds generous for a shared 2-core machine)."""
    from panoptem.napari._inference import Inference3DWidget
    viewer = make_napari_viewer(show=True)
    vol = np.tile(blobs((1, 128, 160), r=14), (32, 6, 6))[:, :768, :960]
    img = viewer.add_image(vol, name="big")
    w = dock(viewer, Inference3DWidget)
    w.image.value = img
    w.model.value, w.device.value = "darkblob", "cpu"
    w.form.set_values(return_panoptic=True, min_size=50, min_extent=2)
    qtbot.wait(200)
    gaps, took = _ticks_during(qtbot, w, w.run_button.native.click)
    assert w.status.value.startswith("Done: 108 mitochondria"), w.status.value
    assert len(w.result_layers) == 2
    p95, worst = float(np.percentile(gaps, 95)), float(gaps.max())
    report = f"3D run {took:.1f} s: {gaps.size} ticks, p95 gap {p95 * 1000:.0f} ms, longest {worst * 1000:.0f} ms"
    print(report)
    if os.environ.get("PANOPTEM_STALL_LOG"):
        with open(os.environ["PANOPTEM_STALL_LOG"], "a") as f:
            f.write(report + "\n")
    assert p95 < 0.25, report
    assert worst < 2.0, report


# ------------------------------------------------------------------ errors in a dock's words

def test_dock_errors_name_the_docks_controls_not_command_line_flags(viewer, qtbot, home, monkeypatch):
    """An error shown in a dock names its controls ('Tile size'), not --tile-size or --help, and
    leaves out advice a dock user cannot follow (--overwrite, Python keywords)."""
    from panoptem.napari._inference import Inference2DWidget, Inference3DWidget
    w = dock(viewer, Inference2DWidget)
    w.image.value = viewer.add_image(blobs(), name="em")
    w.model.value = "darkblob"
    w.form["tile_size"].value = 5
    run_and_wait(qtbot, w)
    assert w.status.value == "Error: 'Tile size' = 5: Tile size must be 0 (no tiling) or at least 64 pixels.", \
        w.status.value
    w3 = dock(viewer, Inference3DWidget)
    w3.image.value, w3.model.value = viewer.layers["em"], "darkblob"
    w3.form["chunk_size"].value = "abc"
    run_and_wait(qtbot, w3)
    assert w3.status.value.startswith("Error: 'Zarr chunk size' = 'abc': ") and "--" not in w3.status.value
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    w.form["tile_size"].value, w.device.value = 0, "cuda"
    run_and_wait(qtbot, w)
    assert w.status.value.endswith("no CUDA GPU is visible; choose Device cpu or auto."), w.status.value


@pytest.mark.parametrize("raw, expected", [
    ("'/d/busy' already exists; choose another folder or pass --overwrite.",
     "'/d/busy' already exists; choose another folder."),
    ("A model named 'tiny' is already registered; choose another name, or pass overwrite=True (--overwrite) to "
     "replace it.", "A model named 'tiny' is already registered; choose another name."),
    ("The volume (1, 32, 32) is too thin for 3D inference; use segment2d --batch.",
     "The volume (1, 32, 32) is too thin for 3D inference; use 2D Inference with Batch mode."),
    ("'/d' holds no tiles.json: it is not a tile folder made by create_tiles (panoptem tiles create).",
     "'/d' holds no tiles.json: it is not a tile folder made by Create tiles."),
    ("X was saved with other settings; run the command as it was to resume it, or pass --restart "
     "(resume=False in Python) to start afresh, or choose another --name than 'X' (or another --out-dir).",
     "X was saved with other settings; run the command as it was to resume it, or choose another "
     "'New model name' than 'X'."),
    ("Checkpoint c.pt is not a panoptem training checkpoint; delete it or pass --restart.",
     "Checkpoint c.pt is not a panoptem training checkpoint; delete it."),
    ("Several classes need --label-divisor: the divisor the masks were painted with",
     "Several classes need 'Label divisor (0: none)': the divisor the masks were painted with"),
    ("beyond the x0.01562..x8 panoptem accepts; pass --pixel-size NM if the file's metadata is wrong, or turn "
     "resampling off (--no-resample).", "beyond the x0.01562..x8 panoptem accepts; set Pixel size if the file's "
     "metadata is wrong, or untick Resample to model."),
    ("A 2D image has only xy planes; use plane='xy'.", "A 2D image has only xy planes; set 'Plane' to xy."),
    ("fewer than 5 planes along the normal of xz; use a smaller flipbook_depth.",
     "fewer than 5 planes along the normal of xz; use a smaller 'Flipbook depth (planes)'."),
])
def test_dock_words_of_the_librarys_messages(raw, expected):
    from panoptem.napari._advice import dock_words
    controls = {"new_name": "New model name", "label_divisor": "Label divisor (0: none)", "tile_size": "Tile size",
                "plane": "Plane", "flipbook_depth": "Flipbook depth (planes)"}
    assert dock_words(raw, controls) == expected


def test_dock_words_keep_flags_without_a_control_and_messages_without_flags():
    from panoptem.napari._advice import dock_words
    # a folder named like a control stays as it is (it became /tmp/x/'Training dataset')
    assert dock_words("/tmp/x/train_dir is not a dataset folder", {"train_dir": "Training dataset"}) == \
        "/tmp/x/train_dir is not a dataset folder"
    assert dock_words("download the file and pass it with --weights FILE, or pass --allow-unverified to download "
                      "it now and record its sha256.", {}) == "download the file and register it with its Weights file."
    assert dock_words("use --key to name it", {}) == "use --key to name it"
    assert dock_words("Nothing to say: x-- y", {"x": "X"}) == "Nothing to say: x-- y"


# ------------------------------------------------------------------ the viewer closed, files, scales

def test_closing_the_viewer_while_inference_runs_is_quiet(make_napari_viewer, registered, qtbot, home, monkeypatch):
    """The worker's progress and result reached docks whose Qt widgets were deleted: "wrapped
    C/C++ object ... has been deleted", which aborts a plain Python process with PyQt6."""
    import sys
    import threading

    import panoptem.inference.segment3d as s3
    from panoptem.napari._inference import Inference3DWidget
    started, go = threading.Event(), threading.Event()
    real = s3.segment_3d

    def held(*a, **k):  # the run goes on once the viewer is closed
        started.set()
        go.wait(30)
        return real(*a, **k)
    monkeypatch.setattr(s3, "segment_3d", held)
    errors = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: errors.append(a[1]))
    viewer = make_napari_viewer()
    viewer.add_image(blobs(), name="em")
    w = dock(viewer, Inference3DWidget)
    w.model.value, w.device.value = "darkblob", "cpu"
    w.run_button.native.click()
    assert started.wait(30)
    worker = w.worker
    viewer.close()
    qtbot.wait(100)
    go.set()
    qtbot.waitUntil(lambda: worker.is_running is False, timeout=60_000)
    qtbot.wait(300)
    assert not [e for e in errors if "has been deleted" in str(e)], errors
    assert w._closed and w._stop.is_set()


def test_a_result_streamed_to_its_file_is_view_only(viewer, qtbot, home, tmp_path, monkeypatch):
    """A 3D result written to a Zarr folder is read from it, and its layer was left editable:
    painting raised TypeError at every brush move, and using it as 2D Output to layer left the
    dock "Running" for good."""
    from panoptem.napari._inference import Inference2DWidget, Inference3DWidget
    img = viewer.add_image(blobs(), name="em")
    w3 = dock(viewer, Inference3DWidget)
    w3.model.value, w3.device.value = "darkblob", "cpu"
    w3.zarr_dir.value = str(tmp_path)
    run_and_wait(qtbot, w3)
    lazy = w3.result_layers[0]
    assert not isinstance(lazy.data, np.ndarray) and not lazy.editable
    w2 = dock(viewer, Inference2DWidget)
    w2.reset_choices()
    w2.image.value, w2.output.value = img, lazy
    w2.model.value, w2.device.value = "darkblob", "cpu"
    import panoptem.inference.segment2d as s2
    ran, real = [], s2.segment_2d
    monkeypatch.setattr(s2, "segment_2d", lambda *a, **k: (ran.append(1), real(*a, **k))[1])
    run_and_wait(qtbot, w2)
    assert w2.status.value.startswith("Error:") and "read from a file" in w2.status.value, w2.status.value
    assert not ran  # refused before the run


def test_a_scale_set_after_opening_a_file_is_the_voxel_size(viewer, qtbot, home, tmp_path):
    """The file's voxel size kept in the layer's metadata won over a scale the user set later:
    volumes measured 8 x too small, with no word."""
    from panoptem.io import write_labels
    from panoptem.napari._measure import MeasureWidget
    from panoptem.napari._reader import get_reader
    lab = np.zeros((4, 20, 20), np.uint32)
    lab[1:3, 5:15, 5:15] = 1
    write_labels(tmp_path / "l.tif", lab, voxel_size=(5, 5, 5))
    data, meta, kind = get_reader(str(tmp_path / "l.tif"))(str(tmp_path / "l.tif"))[0]
    layer = viewer.add_labels(data, **meta)
    layer.scale = (40, 5, 5)
    w = dock(viewer, MeasureWidget)
    w.reset_choices()
    w.labels_layer.value = layer
    run_and_wait(qtbot, w)
    assert float(layer.features["volume_nm3"][0]) == 200 * 40 * 25
