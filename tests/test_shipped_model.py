"""The bundled models: their cards, and MitoLite_v1 on real, held-out data (Lucchi slices
135-164, which it never trained on)."""
import re

import numpy as np
import pytest

import panoptem
from panoptem import evaluate
from panoptem.models.card import load_card
from panoptem.models.home import DEFAULT_MODEL, ZOO

BUNDLED = sorted(p.stem for p in ZOO.glob("*.yaml"))

# Floors sit well below the measured validation figures (README, model card) so that
# the test fails on a broken model or pipeline, not on a platform's rounding noise.
IOU_FLOOR_2D = 0.80
IOU_FLOOR_3D = 0.80


@pytest.fixture(scope="module")
def model():
    return panoptem.load_model("MitoLite_v1", device="cpu")


def test_card_describes_the_weights(model):
    card = model.card
    assert card.weights.sha256 and card.voxel_size_nm == 5.0
    assert card.thing_ids == [1] and card.classes[0].name == "mitochondria"
    assert 0 < card.validation["foreground_iou_2d"] <= 1
    assert (card.padding_factor, card.pad_multiple) == (32, 16)  # grids of 32, inputs padded to 16


@pytest.mark.slow
def test_finds_mitochondria_on_a_held_out_slice(lucchi, model):
    import tifffile
    img = tifffile.imread(lucchi / "training_image.tif", key=150)
    gt = tifffile.imread(lucchi / "training_instances2d.tif", key=150)
    lab = panoptem.segment_2d(img, model)
    r = evaluate(lab, gt)
    assert r["foreground_iou"] > IOU_FLOOR_2D
    assert r["f1_50"] > 0.6
    assert lab.min() == 0 and (lab[lab > 0] > 10000).all()  # divisor arithmetic: first id 10001


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MitoLite_v1", "MitoLite_3slice_v1"])
def test_sample_volume_3d_against_ground_truth(lucchi, name):
    import cc3d
    import tifffile
    vol = panoptem.load_sample()
    mask = tifffile.imread(lucchi / "training_mask.tif", key=range(135, 165))[:, 64:448, 64:448] > 0
    gt = cc3d.connected_components(mask.astype(np.uint8), connectivity=6)
    res = panoptem.segment_3d(vol, panoptem.load_model(name, device="cpu"), min_size=500)
    r = evaluate(res.labels["mitochondria"], gt)
    assert r["foreground_iou"] > IOU_FLOOR_3D
    assert r["n_pred"] >= 3


def test_the_default_model_is_bundled_and_runs_on_the_sample_without_shared_data():
    assert DEFAULT_MODEL in BUNDLED
    lab = panoptem.segment_2d(panoptem.load_sample()[15], panoptem.load_model(DEFAULT_MODEL, device="cpu"))
    assert lab.shape == (384, 384) and len(np.unique(lab)) > 2


def test_black_padding_is_not_a_mitochondrion(model):
    """What aligning a stack leaves around its slices (exact 0) is darker than anything the
    intensity range expects: the model found it as one object covering 98 % of it. It is now
    background, in 2D (also downsampled), 3D and blockwise runs; the tissue keeps its objects."""
    vol = panoptem.load_sample()[10:14]
    padded = vol.copy()
    padded[:, :, :96] = 0
    padded[:, :40] = 0
    plain = panoptem.segment_2d(vol[1], model)
    for f in (1, 2):
        lab = panoptem.segment_2d(padded[1], model, downsampling=f)
        assert not lab[:, :96].any() and not lab[:40].any()
    lab = panoptem.segment_2d(padded[1], model)
    inside = (slice(60, None), slice(120, None))   # away from the padding's edge
    assert ((lab[inside] > 0) == (plain[inside] > 0)).mean() > 0.98
    lab3 = panoptem.segment_3d(padded, model, median_slices=1, min_size=0).labels["mitochondria"]
    assert not lab3[:, :, :96].any() and not lab3[:, :40].any() and lab3.any()


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_card_reports_figures_on_slices_it_never_trained_on(name):
    """The validation block is Lucchi 135-164: a bundled model must have trained before it
    (``slices A-B`` with B < 135) and say that its figures are held out."""
    card = load_card(ZOO / f"{name}.yaml")
    first, last = (int(x) for x in re.search(r"slices (\d+)-(\d+)", card.training["data"]).groups())
    assert first <= last < 135 and "--val-slices 135:165" in card.training["command"]
    assert "never trained on" in card.validation["how"] and 0 < card.validation["f1_50_3d"] <= 1


def test_three_slice_card_and_a_run_on_the_sample_without_shared_data():
    three_slice = panoptem.load_model("MitoLite_3slice_v1", device="cpu")
    card = three_slice.card
    assert card.context_slices == 1 and card.architecture["in_channels"] == 3 == card.input_channels
    assert card.validation["f1_50_3d"] > 0 and "neighbour" in card.validation["how"]
    vol = panoptem.load_sample()[10:16]
    res = panoptem.segment_3d(vol, three_slice, min_size=100)
    assert res.labels["mitochondria"].shape == vol.shape and res.objects["mitochondria"] >= 1
