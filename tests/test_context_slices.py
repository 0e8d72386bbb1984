"""Models that see each plane with its neighbours (card ``context_slices``): every path hands
the network the right planes. A hand-set network that takes the brightest of a plane and its
neighbours must give exactly what a single-plane network gives on the volume max-filtered along
the stack's axis."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from panoptem.errors import PanoptemError
from panoptem.inference.engine import Predictor
from panoptem.inference.segment2d import segment_2d, take_plane
from panoptem.inference.segment3d import neighbour_reach, run_stack, with_neighbours
from panoptem.models.card import ModelCard, Weights
from panoptem.params import PLANE_AXIS, Params3D

from _models import dark_blob_model, neighbour_model, save_neighbour_model


SPECKS = {"xy": np.s_[5, 10:20, 10:20], "xz": np.s_[8:16, 30, 60:75], "yz": np.s_[2:12, 5:20, 140]}


def scene(shape=(20, 48, 150), seed=0):
    """Dark balls of several sizes, and dark specks one slice thick along each axis (which a
    model that needs dark neighbours does not see)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    vol = np.full(shape, 200, np.uint8)
    for _ in range(7):
        c = [rng.integers(3, n - 3) for n in shape]
        r = rng.uniform(3, 7)
        vol[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r * r] = 40
    for box in SPECKS.values():
        vol[box] = 40
    return vol


def test_with_neighbours_clamps_at_the_stack_ends():
    planes = np.arange(6)[:, None, None] * np.ones((6, 1, 1), int)
    got = with_neighbours(planes[1:], 1, 2, 6, 1, 6)[:, :, 0, 0]  # planes 2..5 from a block holding 1..5
    assert got.tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 5]]
    got = with_neighbours(planes, 0, 0, 2, 2, 6)[:, :, 0, 0]
    assert got.tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3]]
    assert take_plane(planes, 5, "xy", neighbours=1)[:, 0, 0].tolist() == [4, 5, 5]


def test_neighbours_farther_or_closer_than_the_models_are_interpolated_or_skipped():
    planes = (np.arange(6) * 10.0)[:, None, None] * np.ones((6, 1, 1))
    # a quarter of a plane apart (serial sections 4 x the model's spacing): linear between planes
    got = with_neighbours(planes, 0, 0, 6, 1, 6, step=0.25)[:, :, 0, 0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[0, 0, 2.5], [7.5, 10, 12.5], [17.5, 20, 22.5], [27.5, 30, 32.5],
                                     [37.5, 40, 42.5], [47.5, 50, 50]])
    # planes half the model's spacing apart: every second plane, clamped at the ends
    got = with_neighbours(planes, 0, 2, 5, 1, 6, step=2)[:, :, 0, 0]
    assert got.tolist() == [[0, 20, 40], [10, 30, 50], [20, 40, 50]]
    assert neighbour_reach(1, 0.25) == 1 and neighbour_reach(1, 2) == 2 and neighbour_reach(2, 1.5) == 3
    assert neighbour_reach(0, 3) == 0
    np.testing.assert_allclose(take_plane(planes, 5, "xy", neighbours=2, step=0.75)[:, 0, 0], [35, 42.5, 50, 50, 50])
    # a neighbour falling on a plane at the reach's end (2 x 0.5, 2 x 1.5): only the planes in reach are read
    np.testing.assert_allclose(take_plane(planes, 3, "xy", neighbours=2, step=0.5)[:, 0, 0], [20, 25, 30, 35, 40])
    np.testing.assert_allclose(with_neighbours(planes[:4], 0, 0, 1, 2, 6, step=1.5)[0, :, 0, 0], [0, 0, 0, 15, 30])


def test_neighbour_step_from_the_voxel_size_and_the_cards_spacing():
    from panoptem.inference.segment2d import neighbour_step
    from panoptem.params import Params2D
    card = neighbour_model(voxel_size_nm=5.0).card
    p = Params2D()
    assert neighbour_step(card, p, (40.0, 5.0, 5.0), "xy") == 0.125
    assert neighbour_step(card, p, (2.5, 5.0, 5.0), "xy") == 2.0
    assert neighbour_step(card, p, (40.0, 5.0, 5.0), "xz") == 1.0  # its stack axis is y, 5 nm
    assert neighbour_step(card, p, (5.1, 5.0, 5.0), "xy") == 1.0  # within 5 %
    assert neighbour_step(card, p, None, "xy") == 1.0  # unknown
    assert neighbour_step(card, Params2D(resample=False), (40.0, 5.0, 5.0), "xy") == 1.0
    # trained on serial sections 40 nm apart (5 nm pixels): such sections are its neighbours as they are
    sections = card.model_copy(update={"context_spacing_nm": 40.0})
    assert neighbour_step(sections, p, (40.0, 5.0, 5.0), "xy") == 1.0
    assert neighbour_step(sections, p, (10.0, 5.0, 5.0), "xy") == 4.0
    assert neighbour_step(dark_blob_model().card, p, (40.0, 5.0, 5.0), "xy") == 1.0  # sees no neighbours
    with pytest.raises(ValueError, match="context_spacing_nm"):
        card.model_validate({**card.model_dump(), "context_spacing_nm": -1.0})


def _interpolated_max(vol: np.ndarray, step: float) -> np.ndarray:
    """The brightest of each xy plane and its neighbours ``step`` planes away (linear between
    planes, clamped at the ends): what NeighbourNet sees through a single-plane network's eyes."""
    n = len(vol)
    v = vol.astype(np.float32)
    out = []
    for i in range(n):
        chans = []
        for pos in (i - step, i, i + step):
            pos = min(max(pos, 0), n - 1)
            lo = int(np.floor(pos))
            t = np.float32(pos - lo)
            a, b = v[lo], v[min(lo + 1, n - 1)]
            chans.append(a + (b - a) * t)
        out.append(np.max(chans, axis=0))
    return np.stack(out)


@pytest.mark.parametrize("step", [0.25, 2.0])
def test_stack_gives_the_neighbours_at_the_models_spacing(step):
    """Serial sections 4 x the model's spacing (neighbours interpolated a quarter of the way) or
    planes at half of it (every second plane): exactly the single-plane network on the volume
    max-filtered with those neighbours; ``segment_3d`` takes the step from the voxel size."""
    from panoptem.inference.segment3d import segment_3d
    vol = scene()
    p = Params3D(min_size=20, min_extent=1, median_slices=1)
    pr = Predictor(neighbour_model(), device="cpu", batch_size=3).with_factor(None, neighbour_step=step)
    got = run_stack(vol, pr, p, "xy", (40.0, 200.0))
    want = run_stack(_interpolated_max(vol, step), Predictor(dark_blob_model(), device="cpu", batch_size=3), p, "xy",
                     (40.0, 200.0))
    np.testing.assert_array_equal(got, want)
    plain = run_stack(vol, Predictor(neighbour_model(), device="cpu", batch_size=3), p, "xy", (40.0, 200.0))
    assert not np.array_equal(got, plain)
    res = segment_3d(vol, neighbour_model(voxel_size_nm=5.0), voxel_size=(5.0 / step, 5.0, 5.0), device="cpu",
                     **p.model_dump())
    assert res.pixel_size["neighbour_step"] == {"xy": step}
    intensity = Predictor(neighbour_model(), device="cpu").intensity(vol)
    np.testing.assert_array_equal(res.labels["mitochondria"] > 0,
                                  run_stack(vol, pr, p, "xy", intensity) > 0)


@pytest.mark.parametrize("plane", ["xy", "xz", "yz"])
@pytest.mark.parametrize("batch_size", [3, 8])
def test_stack_sees_each_plane_with_its_neighbours(plane, batch_size):
    """Exactly the single-plane network on the max-filtered volume, along every axis; yz planes
    cross the reader's 64-plane chunks."""
    vol = scene()
    axis = PLANE_AXIS[plane]
    filtered = ndimage.maximum_filter1d(vol, 3, axis=axis, mode="nearest")
    p = Params3D(min_size=20, min_extent=1, median_slices=1)
    got = run_stack(vol, Predictor(neighbour_model(), device="cpu", batch_size=batch_size), p, plane, (40.0, 200.0))
    want = run_stack(filtered, Predictor(dark_blob_model(), device="cpu", batch_size=batch_size), p, plane,
                     (40.0, 200.0))
    np.testing.assert_array_equal(got, want)
    lone = run_stack(vol, Predictor(dark_blob_model(), device="cpu", batch_size=batch_size), p, plane,
                     (40.0, 200.0))
    speck = SPECKS[plane]  # one plane thick along this stack's axis: no dark neighbours
    assert (lone[speck] > 0).mean() > 0.5 and (got[speck] == 0).all()
    assert len(np.unique(got)) > 4  # the balls stay


def test_2d_plane_with_its_neighbours_and_alone():
    vol = scene()
    stack = take_plane(vol, 5, "xy", neighbours=1)
    got = segment_2d(stack, neighbour_model(), with_neighbours=True, min_piece_area=0)
    want = segment_2d(stack.max(axis=0), dark_blob_model(), min_piece_area=0)
    np.testing.assert_array_equal(got, want)
    speck = SPECKS["xy"][1:]
    assert (segment_2d(vol[5], dark_blob_model(), min_piece_area=0)[speck] > 0).mean() > 0.5
    assert (got[speck] == 0).all()  # the speck in slice 5 alone
    # a lone image fills every channel with itself: the single-plane network's result
    np.testing.assert_array_equal(segment_2d(vol[5], neighbour_model(), min_piece_area=0),
                                  segment_2d(vol[5], dark_blob_model(), min_piece_area=0))


def test_2d_neighbours_refused_when_they_do_not_fit():
    vol = scene()
    with pytest.raises(PanoptemError, match="sees 1 neighbour"):
        segment_2d(take_plane(vol, 5, "xy", neighbours=2), neighbour_model(), with_neighbours=True)
    with pytest.raises(PanoptemError, match="with_neighbours takes one plane"):
        segment_2d(vol[:2], neighbour_model(), with_neighbours=True)
    with pytest.raises(PanoptemError, match="takes planes as"):
        Predictor(dark_blob_model(), device="cpu").predict(take_plane(vol, 5, "xy", neighbours=1)[None], (40, 200))


def test_tiled_planes_see_their_neighbours():
    vol = scene((10, 150, 300))
    pred = Predictor(neighbour_model(), device="cpu", tile_size=128)
    got = pred.predict(take_plane(vol, 2, "xy", neighbours=1)[None], (40.0, 200.0))
    want = Predictor(dark_blob_model(), device="cpu", tile_size=128).predict(vol[1:4].max(0)[None], (40.0, 200.0))
    np.testing.assert_array_equal(got.semantic_probability, want.semantic_probability)


@pytest.mark.parametrize("grey", [30, 128])
def test_a_blank_neighbour_is_mean_grey_in_tiles_too(grey):
    """A neighbour of one value throughout (a blank section) is mean grey for the network, whether
    the plane is cut into tiles or not (tiles saw its raw grey: their labels hung on its value)."""
    stack = take_plane(scene((10, 150, 300)), 5, "xy", neighbours=1)
    stack[0] = grey
    whole = segment_2d(stack, neighbour_model(), with_neighbours=True, min_piece_area=0, intensity=(40.0, 200.0))
    tiled = segment_2d(stack, neighbour_model(), with_neighbours=True, min_piece_area=0, intensity=(40.0, 200.0),
                       tile_size=64)
    np.testing.assert_array_equal(whole, tiled)


def test_card_checks_context_against_the_architecture():
    with pytest.raises(ValueError, match="means 3"):
        ModelCard(name="m", weights=Weights(file="m.pt"), context_slices=1, architecture={"in_channels": 1})
    with pytest.raises(ValueError, match="0 or more"):
        ModelCard(name="m", weights=Weights(file="m.pt"), context_slices=-1)
    assert ModelCard(name="m", weights=Weights(file="m.pt"), context_slices=2).input_channels == 5


def test_onnx_runtime_runs_a_network_of_three_input_channels(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("PANOPTEM_HOME", str(tmp_path / "home"))
    from panoptem.models.architecture import build_model
    from panoptem.models.load import LoadedModel
    arch = dict(num_classes=1, widths=[8, 8, 8, 8, 8], depths=[1, 1, 1, 1], decoder_channels=8, head_channels=8,
                in_channels=3)
    torch.manual_seed(0)
    card = ModelCard(name="tiny3", weights=Weights(file="none"), architecture=arch, context_slices=1)
    lm = LoadedModel(card, build_model(arch).eval(), "cpu")
    planes = take_plane(scene(), 5, "xy", neighbours=1)[None]
    a = Predictor(lm, device="cpu", runtime="torch").predict(planes, (40.0, 200.0))
    b = Predictor(lm, device="cpu", runtime="onnx").predict(planes, (40.0, 200.0))
    np.testing.assert_allclose(a.semantic_probability, b.semantic_probability, atol=1e-4)
    np.testing.assert_allclose(a.offsets, b.offsets, atol=1e-3)


def test_cli_segment2d_of_a_volume_plane_gives_the_model_its_neighbours(capsys, tmp_path):
    """`panoptem segment2d VOLUME --slice N --plane xz` with a model that sees neighbours: the
    labels of segment_2d on the plane with its neighbours along y (the speck there is gone)."""
    import tifffile

    from panoptem.cli import main
    card = save_neighbour_model(tmp_path)
    vol = scene()
    tifffile.imwrite(tmp_path / "vol.tif", vol)
    out = tmp_path / "lab.tif"
    assert main(["segment2d", str(tmp_path / "vol.tif"), "-o", str(out), "--model", str(card), "--slice", "30",
                 "--plane", "xz", "--min_piece_area", "0"]) == 0, capsys.readouterr().err
    got = tifffile.imread(out)
    want = segment_2d(take_plane(vol, 30, "xz", neighbours=1), str(card), with_neighbours=True, device="cpu",
                      min_piece_area=0)
    alone = segment_2d(take_plane(vol, 30, "xz"), str(card), device="cpu", min_piece_area=0)
    np.testing.assert_array_equal(got, want)
    speck = SPECKS["xz"][0], SPECKS["xz"][2]
    assert got.shape == (20, 150) and (got[speck] == 0).all() and (alone[speck] > 0).mean() > 0.5


def test_resampled_planes_keep_their_channels():
    """A factor that is not a whole one resamples every channel of every plane to the network grid."""
    vol = scene()
    lone = Predictor(neighbour_model(), device="cpu").with_factor((1.5, 1.5)).predict(vol[4:6], (40.0, 200.0))
    want = Predictor(dark_blob_model(), device="cpu").with_factor((1.5, 1.5)).predict(vol[4:6], (40.0, 200.0))
    np.testing.assert_array_equal(lone.semantic_probability, want.semantic_probability)
    planes = np.stack([take_plane(vol, z, "xy", neighbours=1) for z in (4, 5)])
    got = Predictor(neighbour_model(), device="cpu").with_factor((1.5, 1.5)).predict(planes, (40.0, 200.0))
    assert got.semantic_probability.shape == want.semantic_probability.shape == (2, 1, 32, 100)
    assert not np.array_equal(got.semantic_probability, want.semantic_probability)


@pytest.mark.parametrize("voxel_size,warned", [((50.0, 5.0, 5.0), True), ((5.0, 5.0, 5.0), False)])
def test_segment3d_says_when_the_neighbours_lie_farther_apart_than_in_training(capsys, tmp_path, voxel_size,
                                                                               warned):
    from panoptem.cli import main
    from panoptem.io import write_image
    write_image(tmp_path / "v.tif", scene(), voxel_size=voxel_size)
    assert main(["segment3d", str(tmp_path / "v.tif"), "-o", str(tmp_path / "o.tif"), "--model",
                 "MitoLite_3slice_v1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert ("sees each plane with neighbours 5 nm away" in err) == warned
    assert ("the xy planes are 50 nm apart, so it is given neighbours 5 nm away" in err) == warned


@pytest.mark.parametrize("args, words", [
    (dict(index=1, neighbours=-1), "neighbours must be a whole number >= 0"),  # was an empty (0, H, W) array
    (dict(index=1.5), "slice index must be a whole number"),                  # was a raw IndexError
    (dict(index=1, stride=0), "stride >= 1"),
])
def test_take_plane_refuses_arguments_it_cannot_honour(args, words):
    v = np.zeros((4, 8, 8), np.uint8)
    with pytest.raises(PanoptemError, match=words):
        take_plane(v, **args)
    with pytest.raises(PanoptemError, match=r"ZYX volume, not of an array of shape \(8, 8\)"):
        take_plane(v[0], 0)
    assert take_plane(v, np.int64(2), neighbours=1).shape == (3, 8, 8)
