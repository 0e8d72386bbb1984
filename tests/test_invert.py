"""Inverted contrast (``invert``): data whose membranes are bright, seen by the network as the
dark-membrane contrast it was trained on, in every engine, and kept apart in caches."""
import numpy as np
import pytest
import tifffile

from panoptem.cli import main
from panoptem.errors import PanoptemError
from panoptem.inference.preprocess import means_first, normalize, to_unit
from panoptem.inference.segment2d import segment_2d
from panoptem.inference.segment3d import segment_3d
from panoptem.sample import load_sample

from _models import dark_blob_model
from test_segment3d import P, phantom


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("dtype,lo,hi", [(np.uint8, 30, 220), (np.uint16, 1000, 1100), (np.float32, 0.1, 0.2),
                                         (np.int64, -2**40, 2**40)])
def test_a_range_given_high_to_low_inverts_the_unit_scale(dtype, lo, hi):
    """``to_unit(x, high, low)`` is ``1 - to_unit(x, low, high)``: clipped symmetrically, one
    range per plane too; a range of one value stays the mean grey either way."""
    x = np.linspace(lo - (hi - lo) / 2, hi + (hi - lo) / 2, 50).astype(dtype)
    plain, inverted = to_unit(x, lo, hi), to_unit(x, hi, lo)
    assert plain.min() < 0 and plain.max() > 1  # past the ends: the clip margin is met on both sides
    np.testing.assert_allclose(inverted, 1 - plain, atol=1e-6)
    planes = np.stack([x, x]).reshape(2, 5, 10)
    rng = np.array([[lo, hi], [hi, lo]], np.float64).T.reshape(2, 2, 1, 1)
    both = to_unit(planes, rng[0], rng[1])
    np.testing.assert_allclose(both[1], 1 - both[0], atol=1e-6)
    flat = np.array([7, 7], dtype)
    assert to_unit(flat, 7, 7).tolist() == [0.5, 0.5]
    np.testing.assert_allclose(normalize(x, hi, lo), -normalize(x, lo, hi), atol=1e-5)  # about the mean grey


def test_an_inverted_range_clips_the_same_pixels():
    """Averaging before normalising is allowed by the same pixels whichever way the range runs."""
    planes = np.random.default_rng(0).integers(0, 255, (2, 16, 16), dtype=np.uint8)
    for lo, hi in ((0.0, 255.0), (100.0, 120.0)):
        assert means_first(planes, hi, lo, 2) == means_first(planes, lo, hi, 2)
    assert means_first(planes, 255.0, 0.0, 2) and not means_first(planes, 120.0, 100.0, 2)


def test_2d_inverted_image_with_invert_is_the_plain_image():
    """A dark-blob finder given bright blobs finds nothing like them; with ``invert`` it finds
    exactly what it finds in the plain image."""
    img = load_sample()[15]
    m = dark_blob_model()
    plain = segment_2d(img, m, maximum_objects_per_class=0)
    assert plain.any()
    np.testing.assert_array_equal(segment_2d(255 - img, m, maximum_objects_per_class=0, invert=True), plain)
    wrong = segment_2d(255 - img, m, maximum_objects_per_class=0)
    assert _iou(wrong > 0, plain > 0) < 0.5


def test_2d_tiles_invert_their_context_too():
    """Tiles given their slice's global context (a first pass of the encoder over the tiles: the
    bundled model) see it inverted as well."""
    img = load_sample()[20]
    plain = segment_2d(img, "MitoLite_v1", device="cpu", tile_size=256)
    assert plain.any()
    np.testing.assert_array_equal(segment_2d(255 - img, "MitoLite_v1", device="cpu", tile_size=256, invert=True),
                                  plain)


@pytest.mark.parametrize("kw", [{}, {"inference_plane": "xz"}, {"orthoplane": True}])
def test_3d_inverted_volume_with_invert_is_the_plain_volume(kw):
    vol, truth = phantom()
    m = dark_blob_model()
    plain = segment_3d(vol, m, **P, **kw).labels["mitochondria"]
    assert _iou(plain > 0, truth > 0) > 0.8
    np.testing.assert_array_equal(segment_3d(255 - vol, m, invert=True, **P, **kw).labels["mitochondria"], plain)
    assert _iou(segment_3d(255 - vol, m, **P, **kw).labels["mitochondria"] > 0, truth > 0) < 0.5


def test_cached_outputs_of_a_run_without_invert_are_not_taken(tmp_path):
    """The network's outputs depend on the contrast it saw: a cache made without ``invert`` is
    refused with the reason, and a cache made with it gives the same labels again."""
    vol, _ = phantom()
    m = dark_blob_model()
    segment_3d(vol, m, cache_dir=tmp_path / "plain", **P)
    with pytest.raises(PanoptemError, match=r"different run \(invert contrast differs\)"):
        segment_3d(vol, m, cache_dir=tmp_path / "plain", invert=True, **P)
    first = segment_3d(255 - vol, m, cache_dir=tmp_path / "inv", invert=True, **P)
    again = segment_3d(255 - vol, m, cache_dir=tmp_path / "inv", invert=True, **P)
    assert again.timings["network_s"] == 0
    np.testing.assert_array_equal(again.labels["mitochondria"], first.labels["mitochondria"])


def test_cli_invert_on_the_bundled_model_and_sample(capsys, tmp_path):
    """``--invert``: the bundled model on an inverted slice of the bundled sample finds what it
    finds in the plain slice; without it, next to nothing of it."""
    img = load_sample()[15]
    tifffile.imwrite(tmp_path / "plain.tif", img)
    tifffile.imwrite(tmp_path / "inverted.tif", 255 - img)
    outs = {}
    for name, src, extra in (("plain", "plain.tif", ()), ("inv", "inverted.tif", ("--invert",)),
                             ("wrong", "inverted.tif", ())):
        code = main(["segment2d", str(tmp_path / src), "-o", str(tmp_path / f"{name}_labels.tif"),
                     "--pixel-size", "5", *extra])
        _, err = capsys.readouterr()
        assert code == 0, err
        outs[name] = tifffile.imread(tmp_path / f"{name}_labels.tif")
    assert (outs["plain"] > 0).mean() > 0.05
    np.testing.assert_array_equal(outs["inv"], outs["plain"])
    assert _iou(outs["wrong"] > 0, outs["plain"] > 0) < 0.3


def test_a_preview_says_the_contrast_was_inverted():
    from panoptem.reporting import preview
    _, lab = phantom()
    told = preview(lab, None, voxel_size=(5.0, 5.0, 5.0), params={"invert": True, "min_size": 200})
    plain = preview(lab, None, voxel_size=(5.0, 5.0, 5.0), params={"invert": False, "min_size": 200})
    assert "invert=True" in told.title and "min_size=200" in told.title
    assert "invert" not in plain.title and "min_size=200" in plain.title


def test_a_model_trained_with_invert_says_so_to_a_run_without_it(capsys, tmp_path):
    from conftest import make_tiny_card
    card = make_tiny_card(tmp_path, training={"invert": True})
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, load_sample()[15])
    notes = []
    for extra in ((), ("--invert",)):
        code = main(["segment2d", str(img), "-o", str(tmp_path / f"o{len(extra)}.tif"), "--model", str(card), *extra])
        _, err = capsys.readouterr()
        assert code == 0, err
        notes.append("trained on images with bright membranes" in err)
    assert notes == [True, False]


def test_the_docks_say_so_too():
    from panoptem.models.card import ModelCard, Weights
    from panoptem.napari._inference import _contrast_words
    from panoptem.params import Params2D
    card = ModelCard(name="m", weights=Weights(file="m.pt"), training={"invert": True})
    assert "tick Invert contrast" in _contrast_words(card, Params2D())
    assert _contrast_words(card, Params2D(invert=True)) == ""
    assert _contrast_words(ModelCard(name="n", weights=Weights(file="n.pt")), Params2D()) == ""
