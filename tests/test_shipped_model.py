"""The bundled model on real, held-out data (Lucchi slices 135-164, never trained on)."""
import numpy as np
import pytest

import panoptem
from panoptem import evaluate

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
