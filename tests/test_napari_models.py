"""The Models, Pick patches and Fine-tune widgets in a real viewer (fixtures from test_napari)."""
import pytest

pytest.importorskip("napari", reason="napari is not installed: pip install 'panoptem[napari]'")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed: pip install 'panoptem[test]'")

import numpy as np
import test_napari as _tn
from test_napari import blobs, dock

# the fixtures and markers of test_napari (private Xvfb, test model, viewer)
home, registered, viewer, pytestmark = _tn.home, _tn.registered, _tn.viewer, _tn.pytestmark


def click_and_wait(qtbot, w, key, timeout=30_000):
    w.buttons[key].native.click()
    qtbot.waitUntil(lambda: not w.running, timeout=timeout)


def test_models_widget_info_export_import_archive_restore_register(viewer, qtbot, home, tmp_path):
    from typer.testing import CliRunner

    from panoptem.cli.models import model_app
    from panoptem.models.home import card_paths
    from panoptem.napari._inference import Inference2DWidget
    from panoptem.napari._models import ModelsWidget
    w = dock(viewer, ModelsWidget)
    inf = dock(viewer, Inference2DWidget)
    w.model.value = "darkblob"
    click_and_wait(qtbot, w, "info")
    cli = CliRunner().invoke(model_app, ["info", "darkblob"])
    assert cli.exit_code == 0 and w.info.value == cli.output
    assert w.info.value.startswith("name: darkblob\ndescription: test model: dark blobs\n")
    assert w.info.native.isReadOnly()

    w.out_file.value = tmp_path / "dark.panoptem"
    w.format.value = "package"
    click_and_wait(qtbot, w, "export")
    assert (tmp_path / "dark.panoptem").is_file() and w.status.value.startswith("Exported 'darkblob'")
    w.out_file.value, w.format.value = tmp_path / "dark.pt", "torchscript"
    click_and_wait(qtbot, w, "export")
    assert w.status.value == f"Exported 'darkblob' to {tmp_path / 'dark.pt'}."
    assert (tmp_path / "dark.pt").is_file() and (tmp_path / "dark.yaml").is_file()

    w.package.value = tmp_path / "dark.panoptem"
    w.new_name.value = "dark2"
    click_and_wait(qtbot, w, "import")
    assert w.status.value == "Imported 'dark2'."
    assert "dark2" in card_paths() and w.model.value == "dark2"
    assert "dark2" in inf.model.choices                 # open widgets' model pickers refresh

    click_and_wait(qtbot, w, "archive")
    assert "dark2" not in card_paths() and "dark2" not in inf.model.choices
    assert w.archived.choices == ("dark2",)
    w.archived.value = "dark2"
    click_and_wait(qtbot, w, "restore")
    assert "dark2" in card_paths() and w.archived.choices == () and w.status.value == "Restored 'dark2'."

    home_models = card_paths()["darkblob"].parent
    w.new_name.value = "dark3"
    w.card.value = home_models / "card.yaml"
    w.weights.value = str(home_models / "model.pt")
    click_and_wait(qtbot, w, "register")
    assert w.status.value.startswith("Registered 'dark3'") and "dark3" in inf.model.choices

    click_and_wait(qtbot, w, "register")               # the same name again: refused, shown
    assert w.status.value.startswith("Error: A model named 'dark3' is already registered")
    w.out_file.value = tmp_path / "dark.panoptem"      # never overwritten
    click_and_wait(qtbot, w, "export")
    assert "already exists" in w.status.value


def test_models_widget_needs_inputs(viewer, qtbot, home):
    from panoptem.napari._models import ModelsWidget
    w = dock(viewer, ModelsWidget)
    click_and_wait(qtbot, w, "register")
    assert w.status.value == "Error: Fill in New name and Card file to register a model."
    click_and_wait(qtbot, w, "restore")
    assert w.status.value == "Error: No model is archived."
    assert not w.running and all(b.enabled for b in w.buttons.values())


# ------------------------------------------------------------------ pick patches + store dataset

def test_pick_patches_paint_and_store(viewer, qtbot, tmp_path):
    import tifffile

    from panoptem.napari._patches import PatchesWidget
    vol = blobs()
    img = viewer.add_image(vol, name="blobs")
    pts = viewer.add_points([[2, 64, 110]], name="clicks")
    w = dock(viewer, PatchesWidget)
    w.image.value, w.points.value = img, pts
    w.n.value, w.patch_size.value = 3, 64
    click_and_wait(qtbot, w, "pick")
    shown, paint = viewer.layers["blobs-patches"], viewer.layers["blobs-patches-labels"]
    assert shown.data.shape == (3, 64, 64) and paint.data.shape == (3, 64, 64) and not paint.data.any()
    assert np.array_equal(shown.data[0], vol[2, 32:96, 78:142])       # centred on the point
    assert w.patches[0].name == "blobs_xy-2_y32_x78"
    assert w.status.value.startswith("Picked 3 patches of 64 pixels")

    painted = (shown.data[0] < 100).astype(np.uint32)
    paint.data[0] = painted
    w.folder.value = tmp_path / "ds"
    click_and_wait(qtbot, w, "store")
    assert w.status.value == (f"Stored 3 patches (1 painted, 2 with no object as true negatives) in "
                              f"{tmp_path / 'ds'}.")
    assert len(list((tmp_path / "ds" / "images").glob("*.tif"))) == 3
    masks = {p.name: tifffile.imread(p) for p in (tmp_path / "ds" / "masks").iterdir()}
    assert len(masks) == 3 and np.array_equal(masks.pop("blobs_xy-2_y32_x78.tif"), painted)
    assert all(m.shape == (64, 64) and not m.any() for m in masks.values())     # true negatives


def test_picking_again_never_discards_painting_that_is_not_stored(viewer, qtbot, tmp_path):
    """Pick patches again replaced the painted patch labels without a word (napari cannot undo a
    removed layer): refused while painting is unstored; after Store (or with nothing painted) it
    picks anew."""
    from panoptem.napari._patches import PatchesWidget
    img = viewer.add_image(blobs(), name="blobs")
    w = dock(viewer, PatchesWidget)
    w.image.value, w.n.value, w.patch_size.value = img, 3, 64
    click_and_wait(qtbot, w, "pick")
    click_and_wait(qtbot, w, "pick")                      # nothing painted: picked anew
    assert w.status.value.startswith("Picked 3 patches"), w.status.value
    paint = viewer.layers["blobs-patches-labels"]
    paint.data[:, 5:20, 5:20] = 2
    click_and_wait(qtbot, w, "drop")                      # the dock's own change keeps it unstored
    click_and_wait(qtbot, w, "pick")
    assert "holds painting that is not stored" in w.status.value, w.status.value
    assert viewer.layers["blobs-patches-labels"] is paint and paint.data.any()
    w.folder.value = tmp_path / "ds"
    click_and_wait(qtbot, w, "store")
    click_and_wait(qtbot, w, "pick")
    assert w.status.value.startswith("Picked 3 patches") and not viewer.layers["blobs-patches-labels"].data.any()
    # another image's patches would replace the set Store writes: refused while painting is unstored ...
    other = viewer.add_image(blobs(), name="other")
    viewer.layers["blobs-patches-labels"].data[0, 1:5, 1:5] = 1
    w.image.value = other
    click_and_wait(qtbot, w, "pick")
    assert "'blobs-patches-labels' holds painting that is not stored" in w.status.value, w.status.value
    w.folder.value = tmp_path / "ds2"
    click_and_wait(qtbot, w, "store")
    click_and_wait(qtbot, w, "pick")                      # ... and stored, it picks; then back to the first image
    w.image.value = img
    click_and_wait(qtbot, w, "pick")                      # its old layers unchanged since stored: replaced
    assert w.status.value.startswith("Picked 3 patches"), w.status.value


def test_pick_patches_from_a_multiscale_level(viewer, qtbot, tmp_path):
    """Patches cut from level 1 of a pyramid, centred on a point clicked at full resolution
    (empanada's Multiscale image level); paired multiscale labels come from the same level."""
    from panoptem.napari._patches import PatchesWidget
    vol = blobs()
    half = np.ascontiguousarray(vol[:, ::2, ::2])
    img = viewer.add_image([vol, half], multiscale=True, name="pyr")
    w = dock(viewer, PatchesWidget)
    w.image.value = img
    w.points.value = viewer.add_points([[2, 64, 110]], name="clicks")
    w.n.value, w.patch_size.value, w.level.value = 1, 32, 1
    truth = (vol < 100).astype(np.uint32)
    w.labels_layer.value = viewer.add_labels([truth, truth[:, ::2, ::2]], multiscale=True, name="truth")
    click_and_wait(qtbot, w, "pick")
    shown, paint = viewer.layers["pyr-patches"], viewer.layers["pyr-patches-labels"]
    assert np.array_equal(shown.data[0], half[2, 16:48, 39:71])              # the point at (32, 55) of level 1
    assert np.array_equal(paint.data[0], truth[2, 32:96:2, 78:142:2])
    assert w.patches[0].name == "pyr-s1_xy-2_y16_x39"
    w.labels_layer.value = viewer.add_labels(truth, name="truth0")   # full-resolution labels, taken at level 1
    viewer.layers.remove("pyr-patches-labels")
    click_and_wait(qtbot, w, "pick")
    assert w.status.value.startswith("Picked"), w.status.value
    assert np.array_equal(viewer.layers["pyr-patches-labels"].data[0], truth[2, 32:96:2, 78:142:2]), w.status.value
    w.level.value = 2
    click_and_wait(qtbot, w, "pick")
    assert "levels 0 to 1" in w.status.value, w.status.value
    w.image.value = viewer.add_image(vol, name="flat")
    click_and_wait(qtbot, w, "pick")
    assert "has no other level" in w.status.value, w.status.value


def test_pick_flipbook_patches_store_the_painted_middle_plane(viewer, qtbot, tmp_path):
    import tifffile

    from panoptem.napari._patches import PatchesWidget
    vol = blobs()
    vol[3] = 0                                          # the plane after the point differs
    w = dock(viewer, PatchesWidget)
    w.image.value = viewer.add_image(vol, name="blobs")
    w.points.value = viewer.add_points([[2, 64, 110]], name="clicks")
    w.n.value, w.patch_size.value, w.flipbook.value, w.flipbook_depth.value = 1, 64, True, 3
    click_and_wait(qtbot, w, "pick")
    shown, paint = viewer.layers["blobs-patches"], viewer.layers["blobs-patches-labels"]
    assert shown.data.shape == (1, 64, 64) and np.array_equal(shown.data[0], vol[2, 32:96, 78:142])
    assert w.patches[0].middle == 1 and w.patches[0].image.shape == (3, 64, 64)
    paint.data[0, 10:20, 10:20] = 1
    w.folder.value = tmp_path / "ds"
    click_and_wait(qtbot, w, "store")
    ds = tmp_path / "ds"
    assert tifffile.imread(ds / "masks" / "blobs_xy-2_y32_x78.tif").sum() == 100
    assert np.array_equal(tifffile.imread(ds / "flipbooks" / "blobs_xy-2_y32_x78.tif"), vol[1:4, 32:96, 78:142])


def test_pick_paired_patches_and_errors(viewer, qtbot, tmp_path):
    from panoptem.napari._patches import PatchesWidget
    vol = blobs()
    img = viewer.add_image(vol, name="blobs")
    w = dock(viewer, PatchesWidget)
    w.image.value = img
    click_and_wait(qtbot, w, "store")
    assert w.status.value == "Error: Pick patches first."
    w.labels_layer.value = viewer.add_labels(np.zeros((2, 5, 5), np.uint32), name="wrong")
    click_and_wait(qtbot, w, "pick")
    assert "choose the labels of this image" in w.status.value
    lab = viewer.add_labels((vol < 100).astype(np.uint32), name="truth")
    w.labels_layer.value = lab
    w.n.value, w.patch_size.value, w.seed.value = 2, 64, 3
    click_and_wait(qtbot, w, "pick")
    shown, paint = viewer.layers["blobs-patches"], viewer.layers["blobs-patches-labels"]
    assert shown.data.shape == (2, 64, 64)
    assert np.array_equal(paint.data, (shown.data < 100).astype(np.uint32))   # cropped with the image


# ------------------------------------------------------------------ fine-tune

def _run_and_check_training(w, qtbot, name: str, iterations: int) -> None:
    """Click Run on a Fine-tune/Train widget (1 torch thread), wait, check the report."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        w.run_button.native.click()
        assert not w.run_button.enabled
        qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    finally:
        torch.set_num_threads(threads)
    assert w.status.value.startswith(f"Done: registered '{name}' (last loss "), w.status.value
    assert len(w.result["losses"]) == iterations and w.progress.value == w.progress.max == iterations
    assert w.status.value.endswith(f"{w.result['losses'][-1]:.4f}).")



def test_finetune_widget_trains_registers_and_shows_scores(viewer, qtbot, home, tmp_path, tiny_card):

    from panoptem.models.home import get_card
    from panoptem.models.registry import register
    from panoptem.napari._finetune import FinetuneWidget
    from panoptem.napari._inference import Inference2DWidget
    from panoptem.training.dataset import store_dataset
    from panoptem.training.patches import pick_patches
    register("tiny", tiny_card)
    vol = blobs((4, 64, 64), centers=((20, 20), (44, 40)), r=8)
    patches = pick_patches(vol, n=4, patch_size=64, labels=(vol < 100).astype(np.uint32), source="blobs")
    store_dataset(patches, tmp_path / "ds")
    inf = dock(viewer, Inference2DWidget)
    w = dock(viewer, FinetuneWidget)
    w.run_button.native.click()
    assert w.status.value.startswith("Error: Choose the training dataset folder")
    w.model.value, w.device.value = "tiny", "cpu"
    w.train_dir.value = tmp_path / "ds"
    w.name.value, w.iterations.value, w.patch_size.value, w.layers.value = "tiny_ft", 5, 64, "all"
    w.invert.value = True  # the patches' contrast, told to the run
    _run_and_check_training(w, qtbot, 'tiny_ft', iterations=5)
    lines = w.results.value.splitlines()
    assert lines[0] == f"evaluated on {w.result['evaluated_on']}" and "held-out patch of 4" in lines[0]
    assert lines[1] == (f"foreground_iou: {w.result['before']['foreground_iou']:.3f} -> "
                        f"{w.result['after']['foreground_iou']:.3f}")
    assert any(s.startswith("precision_50: ") for s in lines) and any(s.startswith("recall_50: ") for s in lines)
    assert lines[-1].startswith("kept: ")
    assert get_card("tiny_ft").training["iterations"] == 5 and get_card("tiny_ft").training["invert"] is True
    assert "tiny_ft" in inf.model.choices and "tiny_ft" in w.model.choices


# ------------------------------------------------------------------ train a new model

def test_train_widget_trains_and_registers_a_new_model(viewer, qtbot, home, tmp_path):
    from conftest import TINY_ARCH

    from panoptem.models.home import get_card
    from panoptem.napari._inference import Inference2DWidget
    from panoptem.napari._train import TrainWidget, step_of
    from panoptem.training.dataset import store_dataset
    from panoptem.training.patches import pick_patches
    assert step_of('{"step": 20, "loss": 0.5, "lr": 0.1}') == (20, 0.5) and step_of("before: {}") is None
    vol = blobs((4, 64, 64), centers=((20, 20), (44, 40)), r=8)
    patches = pick_patches(vol, n=4, patch_size=64, labels=(vol < 100).astype(np.uint32), source="blobs")
    store_dataset(patches, tmp_path / "ds")
    inf = dock(viewer, Inference2DWidget)
    w = dock(viewer, TrainWidget)
    w.run_button.native.click()
    assert w.status.value.startswith("Error: Choose the training dataset folder")
    w.train_dir.value = tmp_path / "ds"
    w.name.value = "  "
    w.run_button.native.click()
    assert w.status.value.startswith("Error: Fill in the new model's name")
    w.name.value, w.iterations.value, w.patch_size.value, w.device.value = "fresh", 5, 64, "cpu"
    w.architecture = {k: v for k, v in TINY_ARCH.items() if k != "num_classes"}
    _run_and_check_training(w, qtbot, 'fresh', iterations=5)
    assert w.results.value.splitlines()[0] == f"evaluated on {w.result['evaluated_on']}"
    card = get_card("fresh")
    assert card.training["iterations"] == 5 and [c.name for c in card.classes] == ["mitochondria"]
    assert "invert" not in card.training and not w.invert.value  # images as they are, unless told
    assert "fresh" in inf.model.choices
