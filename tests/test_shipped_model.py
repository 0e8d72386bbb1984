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
def test_sample_volume_3d_against_ground_truth(lucchi, model):
    import cc3d
    import tifffile
    vol = panoptem.load_sample()
    mask = tifffile.imread(lucchi / "training_mask.tif", key=range(135, 165))[:, 64:448, 64:448] > 0
    gt = cc3d.connected_components(mask.astype(np.uint8), connectivity=6)
    res = panoptem.segment_3d(vol, model, min_size=500)
    r = evaluate(res.labels["mitochondria"], gt)
    assert r["foreground_iou"] > IOU_FLOOR_3D
    assert r["n_pred"] >= 3


def test_sample_runs_without_shared_data(model):
    lab = panoptem.segment_2d(panoptem.load_sample()[15], model)
    assert lab.shape == (384, 384) and len(np.unique(lab)) > 2


def _slices(card) -> tuple[int, int]:
    """First and last training slice named by a bundled card (``slices A-B``)."""
    first, last = re.search(r"slices (\d+)-(\d+)", card.training["data"]).groups()
    return int(first), int(last)


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_card_says_where_its_figures_come_from(name):
    """A model that never saw the validation block (135-164) reports its own figures on it; one
    trained on it reports the held-out figures of a bundled model made by the same recipe
    without it, and keeps its own figures there apart, marked as not held out."""
    card = load_card(ZOO / f"{name}.yaml")
    v = card.validation
    if _slices(card)[1] < 135:
        assert "never trained on" in v["how"] and "trained_on_block" not in v
        return
    recipe = re.search(r"measured with (\S+), the same recipe", v["how"]).group(1)
    rcard = load_card(ZOO / f"{recipe}.yaml")
    assert _slices(rcard)[1] < 135 and rcard.architecture == card.architecture
    assert {k: v[k] for k in rcard.validation if k != "how"} == {k: x for k, x in rcard.validation.items()
                                                                 if k != "how"}
    assert "not a held-out figure" in v["trained_on_block"]["how"]
    assert "--val-slices" not in card.training["command"]


def test_the_default_model_is_bundled_and_segments_the_sample():
    assert DEFAULT_MODEL in BUNDLED
    vol = panoptem.load_sample()
    lab = panoptem.segment_2d(vol[15], panoptem.load_model(DEFAULT_MODEL, device="cpu"))
    assert lab.shape == (384, 384) and len(np.unique(lab)) > 2
