"""Inference at the model's pixel size: an oracle network that only sees disks of its
training size finds them at any input pixel size once the input is resampled, and the
labels come back on the input grid."""
import json
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panoptem import PanoptemError, segment_2d, segment_3d
from panoptem.inference.resample import PixelPlan, plan_pixels, snap
from panoptem.models.card import ModelCard, Weights
from panoptem.models.load import LoadedModel

from _models import dark_blob_model

MODEL_NM = 5.0
RADIUS_NM = 45.0  # disks of 9 pixels' radius at the model's 5 nm


class DiskOracle(torch.nn.Module):
    """A hand-set network that knows one pixel size: a dark pixel is foreground only when
    it lies within 4 pixels of a dark 9 x 9 window (disks of radius >= ~6 px); smaller
    disks, as a coarser input shows them, are left out. Centre heatmap: the blurred
    cores; offsets 0 (each pixel joins the nearest centre)."""

    def forward(self, x):
        dark = (x < 0).float()
        core = (F.avg_pool2d(dark, 9, stride=1, padding=4, count_include_pad=False) > 0.97).float()
        near = F.max_pool2d(core, 9, stride=1, padding=4)
        fg = dark * near
        c4 = F.avg_pool2d(core, 4)
        hm = F.avg_pool2d(c4, 5, stride=1, padding=2, count_include_pad=False)
        return {"sem_logits": 20 * (fg - 0.5), "ctr_hmp": hm, "offsets": torch.zeros_like(c4).repeat(1, 2, 1, 1)}


def oracle(voxel_size_nm=MODEL_NM, pixel_range_nm=None):
    card = ModelCard(name="disk-oracle", weights=Weights(file="none"), padding_factor=32, label_divisor=None,
                     voxel_size_nm=voxel_size_nm, pixel_range_nm=pixel_range_nm)
    return LoadedModel(card, DiskOracle().eval(), "cpu")


CENTRES_NM = [(400.0, 400.0), (400.0, 1100.0), (1100.0, 700.0)]


def disks(pixel_nm: float, size_nm: float = 1500.0, depth: int = 0):
    """Dark disks of radius RADIUS_NM on a bright background at ``pixel_nm`` (y = x), and
    their labels; ``depth`` > 0: a stack of that many identical slices."""
    n = int(round(size_nm / pixel_nm))
    yy, xx = (np.mgrid[:n, :n] + 0.5) * pixel_nm
    rng = np.random.default_rng(0)
    img = rng.integers(170, 230, (n, n)).astype(np.uint8)  # textured: intensity percentiles mean something
    lab = np.zeros((n, n), np.uint32)
    for i, (cy, cx) in enumerate(CENTRES_NM, 1):
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= RADIUS_NM ** 2
        img[m] = rng.integers(20, 60, int(m.sum()))
        lab[m] = i
    if depth:
        return np.repeat(img[None], depth, 0), np.repeat(lab[None], depth, 0)
    return img, lab


def _match(pred, gt):
    """IoU of every ground-truth object with the prediction overlapping it most."""
    ious = []
    for i in range(1, int(gt.max()) + 1):
        g = gt == i
        ids, n = np.unique(pred[g], return_counts=True)
        n, ids = n[ids > 0], ids[ids > 0]
        if not ids.size:
            ious.append(0.0)
            continue
        p = pred == ids[n.argmax()]
        ious.append(np.count_nonzero(p & g) / np.count_nonzero(p | g))
    return ious


@pytest.mark.parametrize("pixel_nm", [10.0, 7.5, 2.5, 5.0])
def test_2d_resamples_any_factor_and_returns_the_input_grid(pixel_nm):
    img, gt = disks(pixel_nm)
    res = segment_2d(img, oracle(), voxel_size=(pixel_nm, pixel_nm), return_outputs=True, min_distance_object_centers=5)
    lab = res.labels
    assert lab.shape == img.shape
    assert len(np.unique(lab[lab > 0])) == 3
    assert min(_match(lab, gt)) > 0.8, _match(lab, gt)
    assert res.pixel_size["input_voxel_size_nm"] == [pixel_nm, pixel_nm]
    assert res.pixel_size["network_pixel_nm"]["xy"] == pytest.approx([MODEL_NM, MODEL_NM], rel=0.06)


def test_without_a_pixel_size_the_oracle_misses_and_pixel_size_option_fixes_it():
    img, gt = disks(10.0)
    assert segment_2d(img, oracle()).max() == 0  # unknown pixel size: no resampling, disks too small
    assert segment_2d(img, oracle(), voxel_size=(10.0, 10.0), resample=False).max() == 0
    lab = segment_2d(img, oracle(), pixel_size=10.0, min_distance_object_centers=5)
    assert min(_match(lab, gt)) > 0.8
    # the option overrides what the file says
    lab = segment_2d(img, oracle(), voxel_size=(5.0, 5.0), pixel_size=10.0, min_distance_object_centers=5)
    assert min(_match(lab, gt)) > 0.8


def test_downsampling_combines_with_resampling():
    img, gt = disks(2.5)
    # 2.5 nm -> the model's 5 nm (x2), then Image Downsampling x2: the network sees 10 nm, too coarse
    res = segment_2d(img, oracle(), voxel_size=(2.5, 2.5), downsampling=2, return_outputs=True)
    assert res.pixel_size["network_pixel_nm"]["xy"] == [10.0, 10.0] and res.pixel_size["factors"]["xy"] == [4, 4]
    assert res.labels.max() == 0
    # unknown pixel size: Image Downsampling alone, as before (2.5 nm pixels shrunk x2 = 5 nm)
    lab = segment_2d(img, oracle(), downsampling=2, min_distance_object_centers=3)
    assert min(_match(lab, gt)) > 0.8


def test_tiled_2d_with_non_integer_factor_matches_whole():
    img, gt = disks(7.5)
    whole = segment_2d(img, oracle(), voxel_size=(7.5, 7.5), min_distance_object_centers=5)
    tiled = segment_2d(img, oracle(), voxel_size=(7.5, 7.5), min_distance_object_centers=5, tile_size=128)
    assert min(_match(tiled, gt)) > 0.8
    assert np.count_nonzero((whole > 0) != (tiled > 0)) <= 0.01 * whole.size


@pytest.mark.parametrize("orthoplane", [False, True])
def test_3d_anisotropic_stack_resamples_each_plane(orthoplane):
    # 10 nm in-plane, 5 nm in z (the model's): xy planes are enlarged x2 in-plane, xz / yz along x or y only
    img, gt = disks(10.0, depth=20)
    res = segment_3d(img, oracle(), voxel_size=(5.0, 10.0, 10.0), orthoplane=orthoplane, min_size=0, min_extent=1,
                     median_slices=1, min_distance_object_centers=5, allow_one_view=True)
    lab = res.labels["mitochondria"]
    assert lab.shape == img.shape
    assert min(_match(lab, gt)) > 0.75, _match(lab, gt)
    f = res.pixel_size["factors"]
    assert f["xy"] == [0.5, 0.5]
    if orthoplane:
        assert f["xz"] == [1.0, 0.5] and f["yz"] == [1.0, 0.5]


def test_3d_xz_stack_is_stretched_along_z():
    # isotropic disks seen in xz of a volume sampled 2x coarser in z than in-plane (5 nm)
    rng = np.random.default_rng(1)
    vol = rng.integers(170, 230, (40, 64, 64)).astype(np.uint8)
    gt = np.zeros(vol.shape, np.uint32)
    zz, xx = np.mgrid[:40, :64]
    ellipse = ((zz + 0.5) * 10 - 200) ** 2 + ((xx + 0.5) * 5 - 160) ** 2 <= RADIUS_NM ** 2
    vol[:, 20:44] = np.where(ellipse[:, None, :], rng.integers(20, 60, (40, 24, 64)), vol[:, 20:44])
    gt[:, 20:44] = ellipse[:, None, :]
    res = segment_3d(vol, oracle(), voxel_size=(10.0, 5.0, 5.0), inference_plane="xz", min_size=0, min_extent=1,
                     median_slices=1)
    assert res.pixel_size["factors"]["xz"] == [0.5, 1.0]
    lab = res.labels["mitochondria"]
    assert min(_match(lab, gt)) > 0.75
    # without resampling the ellipses are too thin in z for the oracle
    none = segment_3d(vol, oracle(), voxel_size=(10.0, 5.0, 5.0), inference_plane="xz", min_size=0, min_extent=1,
                      median_slices=1, resample=False)
    assert none.labels["mitochondria"].max() == 0


class CountingOracle(DiskOracle):
    """The oracle, counting the planes it is given."""

    seen = 0

    def forward(self, x):
        CountingOracle.seen += int(x.shape[0])
        return super().forward(x)


def _cylinders(depth_y: int):
    """An isotropic 2.5 nm volume (z 80, y ``depth_y``, x 128) whose xz planes show two dark
    disks of radius RADIUS_NM, the first running through y 2..5, the second 4..depth_y - 2."""
    rng = np.random.default_rng(3)
    vol = rng.integers(170, 230, (80, depth_y, 128)).astype(np.uint8)
    zz, xx = (np.mgrid[:80, :128] + 0.5) * 2.5
    for (cz, cx), ys in (((100.0, 80.0), slice(2, 6)), ((100.0, 230.0), slice(4, depth_y - 2))):
        disk = (zz - cz) ** 2 + (xx - cx) ** 2 <= RADIUS_NM ** 2
        part = vol[:, ys]
        part[np.broadcast_to(disk[:, None, :], part.shape)] = 40
    return vol


@pytest.mark.parametrize("depth_y", [16, 15])
def test_xz_stack_averages_planes_down_to_the_network_pixel(tmp_path, depth_y):
    # 2.5 nm voxels, a 5 nm model: each xz network plane is the mean of 2 y planes (its labels
    # stand for both); here y planes come in equal pairs, so that equals the stack of every
    # other plane at 5 nm along y, its labels repeated
    pairs = np.repeat(_cylinders(8), 2, axis=1)[:, :depth_y]
    counting = LoadedModel(oracle().card, CountingOracle().eval(), "cpu")
    kw = dict(inference_plane="xz", min_size=0, min_extent=1, median_slices=1, batch_size=4)
    CountingOracle.seen = 0
    res = segment_3d(pairs, counting, voxel_size=(2.5, 2.5, 2.5), **kw)
    assert CountingOracle.seen == 8 and res.pixel_size["stack_step"] == {"xz": 2}
    assert "each the mean of 2 planes along y" in plan_pixels(5.0, (2.5,) * 3).describe(("xz",))
    once = segment_3d(pairs[:, ::2], oracle(), voxel_size=(2.5, 5.0, 2.5), **kw)
    assert once.pixel_size["stack_step"] == {"xz": 1}
    lab = res.labels["mitochondria"]
    np.testing.assert_array_equal(lab, np.repeat(once.labels["mitochondria"], 2, axis=1)[:, :depth_y])
    assert lab.max() == 2
    # extents on the input grid: the cylinder 8 planes deep along y (4 network planes) passes
    # min_extent 7, the one 4 planes deep does not
    sizes = np.bincount(lab.ravel())[1:]
    thick = segment_3d(pairs, oracle(), voxel_size=(2.5,) * 3, **{**kw, "min_extent": 7, "min_size": int(sizes.min())})
    assert thick.labels["mitochondria"].max() == 1
    # from the network cache of a first run, a second computes nothing and gives the same labels
    for seen in (8, 0):
        CountingOracle.seen = 0
        cached = segment_3d(pairs, counting, voxel_size=(2.5,) * 3, cache_dir=tmp_path / "cache", **kw)
        assert CountingOracle.seen == seen
        np.testing.assert_array_equal(cached.labels["mitochondria"], lab)
    # streamed to a file (relabelled block by block): the same labels
    out = tmp_path / "xz.tif"
    segment_3d(pairs, oracle(), voxel_size=(2.5, 2.5, 2.5), output=out, **kw)
    import tifffile
    np.testing.assert_array_equal(tifffile.imread(out), lab)


def test_orthoplane_views_average_their_planes_and_keep_every_section():
    vol = np.repeat(_cylinders(8), 2, axis=1)
    counting = LoadedModel(oracle().card, CountingOracle().eval(), "cpu")
    kw = dict(voxel_size=(2.5, 2.5, 2.5), min_size=0, min_extent=1, median_slices=1, batch_size=4)
    xz = segment_3d(vol, oracle(), inference_plane="xz", **kw).labels["mitochondria"]
    for fusion in ("consensus", "probability"):
        CountingOracle.seen = 0
        res = segment_3d(vol, counting, orthoplane=True, fusion=fusion, allow_one_view=True, pixel_vote_thr=1, **kw)
        # every one of the 80 xy sections; the xz stack along y and the yz stack along x halved
        assert CountingOracle.seen == 80 + 8 + 64, fusion
        assert res.pixel_size["stack_step"] == {"xy": 1, "xz": 2, "yz": 2}
        assert res.labels["mitochondria"].shape == vol.shape
    # only the xz view sees the cylinders (the others' planes cut them too thin): with one vote
    # enough, the consensus keeps the xz stack's objects
    consensus = segment_3d(vol, oracle(), orthoplane=True, allow_one_view=True, pixel_vote_thr=1, **kw)
    np.testing.assert_array_equal(consensus.labels["mitochondria"] > 0, xz > 0)
    assert xz.max() == 2


def test_a_2d_xz_slice_is_given_to_the_network_as_the_3d_stack_gives_it():
    # a disk through y = 3..11 at 2.5 nm: the xz stack's network plane for y = 2 and 3 is their
    # mean, so the 3D stack finds the disk at y = 2; a 2D run of that slice (CLI --plane xz, the
    # napari 2D dock on a rolled view) takes the same mean and finds it too
    from panoptem.inference.segment2d import stack_step, take_plane
    from panoptem.params import Params2D
    rng = np.random.default_rng(3)
    vol = rng.integers(170, 230, (80, 16, 128)).astype(np.uint8)
    zz, xx = (np.mgrid[:80, :128] + 0.5) * 2.5
    disk = (zz - 100.0) ** 2 + (xx - 150.0) ** 2 <= RADIUS_NM ** 2
    vol[:, 3:12] = np.where(disk[:, None, :], 40, vol[:, 3:12])
    lab3 = segment_3d(vol, oracle(), voxel_size=(2.5,) * 3, inference_plane="xz", min_size=0, min_extent=1,
                      median_slices=1).labels["mitochondria"][:, 2] > 0
    k = stack_step(oracle().card, Params2D(), (2.5,) * 3, "xz")
    assert k == 2 and stack_step(oracle().card, Params2D(), (2.5,) * 3, "xy") == 1
    lab2 = segment_2d(take_plane(vol, 2, "xz", stride=k), oracle(), voxel_size=(2.5, 2.5)) > 0
    assert segment_2d(take_plane(vol, 2, "xz"), oracle(), voxel_size=(2.5, 2.5)).max() == 0  # y = 2 alone: none
    assert lab3.sum() > 500 and np.count_nonzero(lab2 & lab3) / np.count_nonzero(lab2 | lab3) > 0.9


def test_plan_rules_and_refusals():
    assert snap(1.04) == 1.0 and snap(2.08) == 2.0 and snap(3.0) == 3.0 and snap(1.5) == 1.5
    p = plan_pixels(5.0, (40.0, 5.0, 5.0), ndim=3)
    assert p.factor("xy") == (1.0, 1.0) and p.factor("xz") == (0.125, 1.0)
    assert p.stack_step("xz") == p.stack_step("yz") == 1  # y and x already at the model's pixel
    assert plan_pixels(5.0, (5.0, 2.5, 2.5)).stack_step("xy") == 1  # every section, whatever z is
    assert plan_pixels(5.0, (5.0, 1.7, 1.7)).stack_step("xz") == 3
    assert plan_pixels(5.0, (5.0, 3.3, 3.3)).stack_step("yz") == 1  # not a whole reduction
    assert plan_pixels(5.0, (5.0, 2.5, 2.5), resample=False).stack_step("xz") == 1
    p.check(("xy",))
    p2 = plan_pixels(5.0, (50.0, 5.0, 5.0), ndim=3)
    with pytest.raises(PanoptemError, match="xz planes would be resampled"):
        p2.check(("xy", "xz", "yz"))
    p2.check(("xy",))
    with pytest.raises(PanoptemError, match="--pixel-size"):
        plan_pixels(5.0, (0.01, 0.01)).check(("xy",))
    q = plan_pixels(5.0, None, pixel_size=10.0, ndim=3)
    assert q.voxel_size == (10.0, 10.0, 10.0) and q.z_assumed and "z assumed" in q.describe()
    assert "unknown" in plan_pixels(5.0, None).describe()
    assert "unknown" in plan_pixels(None, (10.0, 10.0)).describe() and plan_pixels(None, (10.0, 10.0)).factor() == (1, 1)
    assert isinstance(plan_pixels(5.0, (5.0, 5.0)), PixelPlan)


@settings(derandomize=True, database=None, deadline=None, print_blob=False, max_examples=300)
@given(ratio=st.floats(1 / 8, 64))
def test_factors_that_are_not_whole_are_small_fractions_near_the_ratio(ratio):
    from panoptem.inference.resample import as_fraction
    r = snap(ratio)
    f = as_fraction(r)
    assert float(f) == r and f.denominator <= 16 and f.numerator <= 64
    if f.numerator > 1 and f.denominator > 1:  # neither a whole reduction nor a whole enlargement
        assert abs(r / ratio - 1) <= 0.04
    else:  # snapped: within 5 % of a whole number, one over one, or 1
        assert abs(ratio * f.denominator / f.numerator - 1) <= 0.05


@settings(derandomize=True, database=None, deadline=None, print_blob=False, max_examples=30)
@given(f=st.sampled_from([Fraction(12, 11), Fraction(10, 11), Fraction(2, 3), Fraction(13, 12), Fraction(5, 8),
                          Fraction(7, 3), Fraction(1, 2), Fraction(3, 5)]),
       m=st.integers(1, 90), parts=st.integers(1, 4))
def test_resampling_by_a_fraction_is_the_same_in_parts(f, m, parts):
    # a plane resampled in parts that start on multiples of p gives the whole plane's values bit for
    # bit away from the parts' own edges; and the values are PyTorch's at that exact scale
    from panoptem.inference.resample import network_shape, resample_planes
    rng = np.random.default_rng(m)
    x = rng.random((2, 5, m * f.numerator + int(rng.integers(0, f.numerator)))).astype(np.float32)
    whole = resample_planes(x, (1.0, float(f)))
    assert whole.shape[-1] == network_shape(x.shape, (1, f))[1] >= x.shape[-1] / f
    margin = 2 + int(np.ceil(1 / f))  # output pixels whose taps reach past a part's edge
    for i in range(1, parts):
        start = (i * m // parts) * f.numerator
        part = resample_planes(x[..., start:], (1.0, float(f)))
        s = start * f.denominator // f.numerator
        assert part.shape[-1] == whole.shape[-1] - s
        np.testing.assert_array_equal(part[..., margin:], whole[..., s + margin:])
    t = F.interpolate(torch.from_numpy(x)[None], scale_factor=(1.0, float(1 / f)), mode="bilinear",
                      antialias=f > 1, align_corners=False, recompute_scale_factor=False)[0].numpy()
    n = min(t.shape[-1], whole.shape[-1])
    np.testing.assert_allclose(whole[..., :n], t[..., :n], atol=1e-4)  # PyTorch places centres in float32


@pytest.mark.parametrize("voxel, params", [((5.0, 5.0, 7.5), {}), ((7.5, 5.0, 5.0), {"orthoplane": True}),
                                           ((7.5, 5.0, 5.0), {"inference_plane": "xz", "median_slices": 3}),
                                           ((5.0, 2.5, 2.5), {"orthoplane": True, "fusion": "probability"})])
def test_blockwise_resamples_each_axis_by_its_own_factor(tmp_path, voxel, params):
    # columns at 7.5 nm (x 2/3, rows as they are); z at 7.5 nm, which xz / yz planes stretch x 3/2;
    # or xy planes reduced x2 (Image Downsampling) while xz / yz planes are resampled along x or y only
    from panoptem.distributed import segment_blockwise
    from panoptem.io import read_image
    if voxel[2] != voxel[1]:
        img, gt = (a[:, ::2, ::3] for a in disks(2.5, depth=3))  # disks sampled at 5 nm rows, 7.5 nm columns
    else:  # odd sides: the last network pixel of each is the mean of the pixels left
        img, gt = (a[:, 5:, 3:] for a in disks(voxel[1], depth=32 if params.get("orthoplane") else 12))
    kw = dict(min_size=0, min_extent=1, min_distance_object_centers=3, voxel_size=voxel, **{"median_slices": 1, **params})
    whole = segment_3d(img, oracle(), **kw)
    block = {"xy": (3, 64, 64), "xz": (64, 64, 96)}.get(params.get("inference_plane", "xy"))
    if params.get("orthoplane"):
        block = (32, 160, 160) if voxel[1] == 5.0 else (32, 192, 192)  # 4 and 16 blocks
    r = segment_blockwise(img, oracle(), tmp_path / "o.zarr", n_workers=1, processes=False, block_shape=block,
                          halo=(32, 32, 32), **kw)
    assert r.pixel_size == whole.pixel_size and r.blocks >= 4
    fs = [f for pair in r.pixel_size["factors"].values() for f in pair]
    assert len(set(fs)) > 1  # no one factor on every axis
    out = np.asarray(read_image(tmp_path / "o.zarr").data)
    assert np.array_equal(out, whole.labels["mitochondria"])
    assert min(_match(out, gt)) > 0.7, _match(out, gt)


@pytest.mark.parametrize("nm,crop", [(2.5, (0, 0)), (2.5, (1, 3)), (5 / 3, (2, 0))])
def test_blockwise_whole_factor_equals_whole_volume(tmp_path, nm, crop):
    # 2.5 nm: x2 downsampling to the model's 5 nm; 1.67 nm: x3, a whole factor that Image
    # Downsampling cannot name (blockwise refused it once); also with sides that are not multiples
    # of the factor: the last network pixel of a side is the mean of the pixels left, in the last
    # block as in the whole plane
    from panoptem.distributed import segment_blockwise
    from panoptem.io import read_image
    img, gt = (a[:, crop[0]:, crop[1]:] for a in disks(nm, depth=8))
    k = round(MODEL_NM / nm)
    kw = dict(min_size=0, min_extent=1, median_slices=1, min_distance_object_centers=3)
    whole = segment_3d(img, oracle(), voxel_size=(nm,) * 3, **kw)
    assert whole.pixel_size["factors"]["xy"] == [k, k] and whole.pixel_size["source"] == "voxel_size"
    r = segment_blockwise(img, oracle(), tmp_path / "o.zarr", voxel_size=(nm,) * 3, n_workers=1,
                          processes=False, block_shape=(8, 256, 256), halo=(0, 64, 64), **kw)
    assert r.pixel_size["factors"]["xy"] == [k, k] and r.pixel_size["source"] == "voxel_size" and r.blocks >= 9
    out = np.asarray(read_image(tmp_path / "o.zarr").data)
    assert np.array_equal(out, whole.labels["mitochondria"])
    assert min(_match(out, gt)) > 0.8


@pytest.mark.parametrize("pixel_nm, depth, params", [(10.0, 5, {}), (15.0, 5, {}), (10.0, 40, {"orthoplane": True}),
                                                     (10.0, 40, {"orthoplane": True, "fusion": "probability"})])
def test_blockwise_whole_enlargement_equals_whole_volume(tmp_path, pixel_nm, depth, params):
    # pixels 2 or 3 times the model's: the network's grid is that much finer than the volume's,
    # and blocks cut the planes (their edges on both grids)
    from panoptem.distributed import segment_blockwise
    from panoptem.io import read_image
    img, gt = disks(pixel_nm, depth=depth)
    k = round(pixel_nm / MODEL_NM)
    kw = dict(min_size=0, min_extent=1, median_slices=1, min_distance_object_centers=3, **params)
    whole = segment_3d(img, oracle(), voxel_size=(pixel_nm,) * 3, **kw)
    assert whole.pixel_size["factors"]["xy"] == [round(1 / k, 6)] * 2
    block = (32, 96, 96) if depth > 5 else (3, 64, 64)  # ortho-plane blocks are 32 deep at least
    r = segment_blockwise(img, oracle(), tmp_path / "o.zarr", voxel_size=(pixel_nm,) * 3, n_workers=1,
                          processes=False, block_shape=block, halo=(32, 32, 32), **kw)
    assert r.pixel_size["factors"] == whole.pixel_size["factors"] and r.blocks >= 8
    out = np.asarray(read_image(tmp_path / "o.zarr").data)
    assert np.array_equal(out, whole.labels["mitochondria"])
    assert min(_match(out, gt)) > 0.8


@settings(derandomize=True, database=None, deadline=None, print_blob=False, max_examples=8,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(k=st.sampled_from([2, 3, 4]), depth=st.integers(2, 4), crop=st.tuples(*[st.floats(0, 1)] * 4),
       block=st.tuples(st.sampled_from([1, 2, 32]), st.sampled_from([32, 64]), st.sampled_from([32, 64])),
       params=st.sampled_from([{}, {"fine_boundaries": True}, {"median_slices": 3}, {"inference_plane": "xz"}]),
       centres=st.sampled_from([1, 3]))
def test_blockwise_enlargement_of_any_crop_equals_whole_volume(tmp_path, k, depth, crop, block, params, centres):
    # sides that are no multiple of the blocks, windows cut at the volume's edges, three enlargements
    from panoptem.distributed import segment_blockwise
    from panoptem.io import read_image
    img, _ = disks(MODEL_NM * k, depth=depth)
    n = img.shape[1]
    h, w = 33 + int(crop[0] * (n - 33)), 33 + int(crop[1] * (n - 33))
    y0, x0 = int(crop[2] * (n - h)), int(crop[3] * (n - w))
    vol = np.ascontiguousarray(img[:, y0:y0 + h, x0:x0 + w])
    kw = dict(min_size=0, min_extent=1, min_distance_object_centers=centres, voxel_size=(MODEL_NM * k,) * 3,
              **{"median_slices": 1, **params})
    whole = segment_3d(vol, oracle(), **kw).labels["mitochondria"]
    out = tmp_path / f"o{k}_{h}_{w}_{y0}_{x0}_{block}.zarr"
    segment_blockwise(vol, oracle(), out, n_workers=1, processes=False, block_shape=block, halo=(32, 32, 32), **kw)
    np.testing.assert_array_equal(np.asarray(read_image(out).data), whole)


def test_blockwise_default_blocks_give_the_network_tiles_of_the_same_size_when_enlarging(tmp_path):
    from panoptem.distributed import segment_blockwise
    vol = np.random.default_rng(0).integers(150, 250, (2, 600, 40)).astype(np.uint8)
    at_model = segment_blockwise(vol, oracle(), tmp_path / "a.zarr", voxel_size=(5.0,) * 3, n_workers=1,
                                 processes=False)
    coarse = segment_blockwise(vol, oracle(), tmp_path / "b.zarr", voxel_size=(10.0,) * 3, n_workers=1,
                               processes=False)  # x2: blocks of 512 volume pixels, 1024 network pixels
    assert at_model.blocks == 1 and coarse.blocks == 2


def test_blockwise_enlarges_the_tiles_its_global_context_is_taken_from(tmp_path):
    # the shipped network on the bundled crop at 20 nm: enlarged x2 to 10 nm, 9 tiles per slice, each
    # given its slice's context, which the context pass takes from tiles enlarged as the network sees them
    from panoptem.distributed import segment_blockwise
    from panoptem.io import read_image
    from panoptem.sample import SAMPLE_PATH
    five = np.asarray(read_image(SAMPLE_PATH).data[:8]).astype(np.float32)
    vol = five.reshape(8, 96, 4, 96, 4).mean(axis=(2, 4)).round().astype(np.uint8)  # 20 nm pixels
    whole = segment_3d(vol, "MitoLite_v1", voxel_size=(20.0,) * 3, device="cpu").labels["mitochondria"]
    r = segment_blockwise(vol, "MitoLite_v1", tmp_path / "o.zarr", voxel_size=(20.0,) * 3, n_workers=1,
                          processes=False, block_shape=(8, 32, 32), halo=(0, 32, 32))
    assert r.pixel_size["factors"]["xy"] == [0.5, 0.5] and r.blocks == 9 and r.timings["context_pass_s"] > 0
    out = np.asarray(read_image(tmp_path / "o.zarr").data)
    assert (whole > 0).mean() > 0.1 and ((out > 0) == (whole > 0)).mean() >= 0.999  # 0.9976 from tiles not enlarged


TILED = 2  # the disks image repeated 2 x 2 in-plane: room for several blocks at factors like 10/11


@pytest.mark.parametrize("pixel_nm", [7.5, 5.5, 4.6, 8.0, 3.3])
@settings(derandomize=True, database=None, deadline=None, print_blob=False, max_examples=3,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(depth=st.integers(2, 4),
       crop=st.tuples(*[st.floats(0, 1)] * 4), block=st.tuples(st.sampled_from([1, 3]), st.sampled_from([64, 300])),
       params=st.sampled_from([{}, {"fine_boundaries": True}, {"median_slices": 3}, {"inference_plane": "xz"}]))
def test_blockwise_resampling_by_a_fraction_equals_whole_volume(tmp_path, pixel_nm, depth, crop, block, params):
    # factors p/q (2/3, 10/11, 13/12, 5/8, 3/2... as nice_fraction gives them): blocks on multiples of p
    # volume pixels and q network pixels, each resampled with the whole plane's weights
    from panoptem.distributed import segment_blockwise
    from panoptem.io import read_image
    img = np.tile(disks(pixel_nm, depth=depth)[0], (1, TILED, TILED))
    n = img.shape[1]
    h, w = 100 + int(crop[0] * min(n - 100, 400)), 100 + int(crop[1] * min(n - 100, 400))  # up to 500 x 500
    y0, x0 = int(crop[2] * (n - h)), int(crop[3] * (n - w))
    vol = np.ascontiguousarray(img[:, y0:y0 + h, x0:x0 + w])
    kw = dict(min_size=0, min_extent=1, min_distance_object_centers=3, voxel_size=(pixel_nm,) * 3,
              **{"median_slices": 1, **params})
    whole = segment_3d(vol, oracle(), **kw)
    out = tmp_path / f"o{pixel_nm}_{h}_{w}_{y0}_{x0}_{block}.zarr"
    r = segment_blockwise(vol, oracle(), out, n_workers=1, processes=False, block_shape=(block[0], *block[1:] * 2),
                          halo=(32, 32, 32), **kw)
    f = r.pixel_size["factors"][params.get("inference_plane", "xy")]
    assert f == whole.pixel_size["factors"][params.get("inference_plane", "xy")] and not float(f[0]).is_integer()
    np.testing.assert_array_equal(np.asarray(read_image(out).data), whole.labels["mitochondria"])


@pytest.mark.parametrize("pixel_nm, params, tiles", [(7.5, {"orthoplane": True}, 1),
                                                     (7.5, {"orthoplane": True, "fusion": "probability"}, 1),
                                                     (5.5, {}, 2)])
def test_blockwise_fraction_in_many_blocks_finds_the_disks(tmp_path, pixel_nm, params, tiles):
    from panoptem.distributed import segment_blockwise
    from panoptem.io import read_image
    img, gt = disks(pixel_nm, depth=32 if params else 3)
    img = np.tile(img, (1, tiles, tiles))
    gt = np.block([[gt + 3 * (tiles * i + j) * (gt > 0) for j in range(tiles)] for i in range(tiles)])
    kw = dict(min_size=0, min_extent=1, median_slices=1, min_distance_object_centers=3, voxel_size=(pixel_nm,) * 3,
              **params)
    whole = segment_3d(img, oracle(), **kw)
    block = (32, 96, 96) if params else (3, 64, 64)  # rounded up to multiples of 32 p: 128 (2/3), 320 (10/11)
    r = segment_blockwise(img, oracle(), tmp_path / "o.zarr", n_workers=1, processes=False, block_shape=block,
                          halo=(32, 32, 32), **kw)
    out = np.asarray(read_image(tmp_path / "o.zarr").data)
    assert r.blocks >= 4 and np.array_equal(out, whole.labels["mitochondria"])
    assert len(_match(out, gt)) == 3 * tiles ** 2 and min(_match(out, gt)) > (0.75 if params else 0.8)  # whole: 0.78


def test_blockwise_takes_the_pixel_size_a_whole_volume_run_takes(tmp_path):
    from panoptem.distributed import segment_blockwise
    from panoptem.io import read_image
    img, gt = disks(12.0, depth=3)
    img = np.tile(img, (1, 3, 3))  # 375 x 375: blocks of 160 (5 network pixels are 12 volume pixels: 32 x 5)
    kw = dict(min_size=0, min_extent=1, median_slices=1, min_distance_object_centers=3, voxel_size=(12.0,) * 3)
    ranged = oracle(pixel_range_nm=(4.0, 5.0))
    # the nearest size in the range, 5 nm (x2.4, the fraction 12/5), both ways
    whole = segment_3d(img, ranged, **kw)
    r = segment_blockwise(img, ranged, tmp_path / "o.zarr", n_workers=1, processes=False,
                          block_shape=(3, 64, 64), halo=(0, 32, 32), **kw)
    assert r.pixel_size == whole.pixel_size and r.pixel_size["network_pixel_nm"]["xy"] == [5.0, 5.0]
    out = np.asarray(read_image(tmp_path / "o.zarr").data)
    assert r.blocks == 9 and np.array_equal(out, whole.labels["mitochondria"])
    assert min(_match(out[:, :125, :125], gt)) > 0.8


def test_pixel_size_given_for_a_pyramid_is_its_full_resolution_levels(tmp_path, capsys):
    """--pixel-size with an OME-Zarr pyramid: the level was chosen from the file's scales, then the
    size given was taken as that coarser level's: the network saw the image at twice the size
    asked, and the labels, written at the size given, covered half the image."""
    from panoptem.cli import main
    from panoptem.io import read_image, write_image
    img, _ = disks(5.0)
    src = write_image(tmp_path / "img.zarr", img[:256, :256], voxel_size=(5.0, 5.0))  # levels of 5, 10, ... nm
    for extra in ([], ["--pixel-size", "5"]):
        out = tmp_path / f"l{len(extra)}.zarr"
        assert main(["segment2d", str(src), "-o", str(out), "--model", "MitoLite_v1", *extra]) == 0
        lab = read_image(out)
        extent = np.array(lab.data.shape) * lab.voxel_size
        assert np.allclose(extent, 256 * 5.0), (extra, lab.data.shape, lab.voxel_size)
    capsys.readouterr()


def test_cli_says_what_it_used(tmp_path, capsys):
    from panoptem.cli import main
    from panoptem.io import read_image, write_image
    img, _ = disks(10.0)
    src = write_image(tmp_path / "img.tif", img, voxel_size=(10.0, 10.0))
    # the shipped model segments best at 6-10 nm: a 10 nm image runs as it is
    code = main(["segment2d", str(src), "-o", str(tmp_path / "l.tif"), "--model", "MitoLite_v1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    note = "note: input voxel size 10 x 10 nm (from file) lies in the model's 6-10 nm (within 5 %): no resampling"
    assert note in err
    rec = json.loads(out.strip().splitlines()[-1])
    assert rec["pixel_size"]["factors"]["xy"] == [1.0, 1.0] and rec["pixel_size"]["source"] == "file"
    assert rec["pixel_size"]["model_pixel_range_nm"] == [6.0, 10.0]
    code = main(["segment2d", str(src), "-o", str(tmp_path / "l2.tif"), "--pixel-size", "5"])
    out, err = capsys.readouterr()
    assert code == 0 and "the model's 6-10 nm: scaled y x0.5, x x0.5 to 10 nm pixels" in err, err
    assert json.loads(out.strip().splitlines()[-1])["pixel_size"]["factors"]["xy"] == [2.0, 2.0]
    assert read_image(tmp_path / "l2.tif").voxel_size == (5.0, 5.0)  # the labels carry the size as run
    # the voxel size a 3D run got from its file is reported as the file's, in the note and the
    # JSON, whole-volume and blockwise; given in Python, as the argument's
    vol = write_image(tmp_path / "vol.tif", np.stack([img] * 4), voxel_size=(10.0, 10.0, 10.0))
    for extra in ([], ["--blockwise", "--workers", "1"]):
        code = main(["segment3d", str(vol), "-o", str(tmp_path / f"v{len(extra)}.zarr"), "--pixel-size", "5",
                     "--model", "MitoLite_v1", *extra])
        out, err = capsys.readouterr()
        assert code == 0 and "(from file + pixel_size)" in err, err
        assert json.loads(out.strip().splitlines()[-1])["pixel_size"]["source"] == "file + pixel_size"
        assert read_image(tmp_path / f"v{len(extra)}.zarr").voxel_size == (10.0, 5.0, 5.0)
    # 15 nm, coarser than the shipped model's 6-10 nm: x1.5 to 10 nm, whole-volume and blockwise
    coarse = write_image(tmp_path / "coarse.tif", np.stack([disks(15.0)[0]] * 2), voxel_size=(15.0, 15.0, 15.0))
    for extra in ([], ["--blockwise", "--workers", "1"]):
        code = main(["segment3d", str(coarse), "-o", str(tmp_path / f"c{len(extra)}.zarr"), *extra])
        out, err = capsys.readouterr()
        assert code == 0 and "scaled y x1.5, x x1.5 to 10 nm pixels" in err, err
        rec = json.loads(out.strip().splitlines()[-1])["pixel_size"]
        assert rec["network_pixel_nm"]["xy"] == [10.0, 10.0] and rec["factors"]["xy"] == [0.666667, 0.666667]
    res = segment_3d(np.stack([img] * 4), "MitoLite_v1", voxel_size=(10.0, 10.0, 10.0), pixel_size=5.0,
                     output=tmp_path / "py.tif")
    assert res.pixel_size["source"] == "voxel_size + pixel_size" and res.pixel_size["factors"]["xy"] == [2.0, 2.0]
    assert read_image(tmp_path / "py.tif").voxel_size == (10.0, 5.0, 5.0)
    assert segment_2d(img, "MitoLite_v1", voxel_size=(10.0, 10.0), return_outputs=True).pixel_size["source"] == "voxel_size"
    code = main(["segment2d", str(src), "-o", str(tmp_path / "l3.tif"), "--no-resample", "--pixel-size", "5"])
    out, err = capsys.readouterr()
    assert code == 0 and "resampling off" in err
    code = main(["segment2d", str(src), "-o", str(tmp_path / "l4.tif"), "--pixel-size", "-3"])
    out, err = capsys.readouterr()
    assert code == 2 and "pixel_size" in err


@pytest.mark.parametrize("pixel_nm, factor", [(2.5, 2.0), (4.5, 1.0), (1.5, 3.0), (12.0, 5 / 12), (3.0, 4 / 3)])
def test_a_model_with_a_range_is_given_pixels_inside_it(pixel_nm, factor):
    # the oracle finds the disks at about 4-5 nm (radius 9 px at 5 nm, 11 at 4 nm) and misses them
    # much coarser: a card saying 4-5 nm gets its pixels there (whole factors where one lands inside)
    img, gt = disks(pixel_nm)
    res = segment_2d(img, oracle(pixel_range_nm=(4.0, 5.0)), voxel_size=(pixel_nm, pixel_nm), return_outputs=True,
                     min_distance_object_centers=5)
    assert res.pixel_size["factors"]["xy"] == pytest.approx([factor, factor])
    assert 4.0 * 0.95 <= res.pixel_size["network_pixel_nm"]["xy"][0] <= 5.0 * 1.05
    assert res.labels.shape == img.shape and min(_match(res.labels, gt)) > 0.8, _match(res.labels, gt)
    # without the range the same card resamples to its 5 nm exactly
    plain = plan_pixels(5.0, (pixel_nm, pixel_nm))
    assert plain.network_nm() == pytest.approx((5.0, 5.0), rel=0.06)


def test_range_keeps_the_network_pixels_square():
    from panoptem.inference.resample import working_pixel
    plan = plan_pixels(5.0, (40.0, 5.0, 5.0), working=(6.0, 10.0))
    assert plan.factor("xy") == (2.0, 2.0)
    plan = plan_pixels(5.0, (7.0, 5.0, 5.0), working=(6.0, 10.0))  # xz planes: z and x both to 10 nm
    assert plan.network_nm("xz") == pytest.approx((10.0, 10.0))
    five = plan_pixels(5.0, (5.0, 5.0, 5.0), working=(6.0, 10.0))
    assert {five.factor(pl) for pl in ("xy", "xz", "yz")} == {(2.0, 2.0)} and five.short() == "5 x 5 x 5 nm, resampled to 10 nm (the model's 6-10 nm)"
    assert plan_pixels(5.0, None, working=(6.0, 10.0)).factor() == (1.0, 1.0)
    assert "the model segments best at 6-10 nm pixels" in plan_pixels(5.0, None, working=(6.0, 10.0)).describe()
    assert "the model was trained at 5 nm pixels" in plan_pixels(5.0, None).describe()
    assert working_pixel(6.0 * 0.96, 6.0, 10.0) == 6.0 * 0.96  # within the tolerance: as it is
    with pytest.raises(ValueError, match="pixel_range_nm"):
        ModelCard(name="m", weights=Weights(file="m.pt"), pixel_range_nm=(10.0, 6.0))


def test_shipped_cards_say_their_range():
    from panoptem.models.card import card_info
    from panoptem.models.home import get_card
    card = get_card("MitoLite_v1")
    assert card.pixel_range_nm == (6.0, 10.0) and card.voxel_size_nm == 5.0
    assert card.working_pixel_nm == pytest.approx(60 ** 0.5)
    assert "segments best at pixels of 6-10 nm" in card_info(card)
    # the 3-slice model did best near its training pixels (bench/pixel_range.py): no range
    card = get_card("MitoLite_3slice_v1")
    assert card.pixel_range_nm is None and card.working_pixel_nm == 5.0 == card.neighbour_spacing_nm


def _ellipsoids(seed: int, shape, r_px: float) -> np.ndarray:
    """Dark ellipsoids of about ``r_px`` pixels' radius in-plane on a textured background."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    v = rng.integers(170, 230, shape).astype(np.uint8)
    for _ in range(rng.integers(2, 6)):
        c, r, rz = rng.uniform(0, shape), rng.uniform(0.8, 1.6) * r_px, rng.uniform(2, shape[0])
        m = ((zz - c[0]) / rz) ** 2 + ((yy - c[1]) / r) ** 2 + ((xx - c[2]) / r) ** 2 < 1
        v[m] = rng.integers(20, 60, int(m.sum()))
    return v


@settings(derandomize=True, database=None, deadline=None, print_blob=False, max_examples=10,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), xy_nm=st.sampled_from([1.7, 2.5, 3.3, 7.5, 10.0]),
       z_nm=st.sampled_from([None, 12.0]), depth=st.integers(6, 20), side=st.integers(100, 180),
       plane=st.sampled_from(["xy", "xz", "yz", "ortho", "fusion"]), downsampling=st.sampled_from([1, 2]))
def test_blockwise_equals_whole_volume_at_random_pixel_sizes(seed, xy_nm, z_nm, depth, side, plane, downsampling):
    """Random volumes of odd sides at random pixel sizes (whole reductions of 3, fractions,
    enlargements, anisotropic z), one plane or ortho-plane, with or without Image Downsampling:
    blockwise gives the whole-volume labels (a random search of this kind found the blockwise
    run refusing a reduction by 3 and differing at sides that are not multiples of the factor)."""
    import tempfile
    from pathlib import Path

    from panoptem.distributed import segment_blockwise
    v = _ellipsoids(seed, (depth, side, side + seed % 37), 45.0 / xy_nm)
    kw = dict(min_size=0, min_extent=1, median_slices=1, voxel_size=(z_nm or xy_nm, xy_nm, xy_nm),
              downsampling=downsampling)
    kw.update({"inference_plane": plane} if plane in ("xy", "xz", "yz") else
              {"orthoplane": True, "fusion": "probability" if plane == "fusion" else "consensus"})
    whole = segment_3d(v, oracle(), **kw).labels["mitochondria"]
    with tempfile.TemporaryDirectory() as d:
        r = segment_blockwise(v, oracle(), Path(d) / "o.zarr", n_workers=1, processes=False, block_shape=(8, 64, 64),
                              halo=(32, 32, 32), progress=False, **kw)
        np.testing.assert_array_equal(np.asarray(r.labels["mitochondria"][:]), whole)


def test_resampling_past_the_input_repeats_the_edge_with_or_without_antialiasing():
    from panoptem.inference.resample import resize_at
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    for antialias in (False, True):  # 4 pixels shrunk 2 x give 2; asked for 4, the last ones repeat the edge
        out = resize_at(x, (2, 2), (4, 4), antialias=antialias)
        assert out.shape == (4, 4)
        np.testing.assert_array_equal(out[3], out[2])
        np.testing.assert_array_equal(out[:, 3], out[:, 2])


def test_a_pixel_size_given_for_an_xz_or_yz_plane_overrides_y_and_x_not_z(tmp_path):
    """--pixel-size is the in-plane (y, x) size of the volume, as a 3D run applies it: a yz plane
    of a 40 x 5 x 5 nm volume keeps its 40 nm z, so giving the file's own 5 nm changes nothing,
    and the labels are written with the plane's (z, y) sizes."""
    from typer.testing import CliRunner

    from panoptem.cli import app
    from panoptem.io import read_image, write_image
    from panoptem.sample import load_sample
    src = write_image(tmp_path / "v.tif", load_sample()[:12, :128, :128], voxel_size=(40.0, 5.0, 5.0))
    runs = {}
    for name, extra in (("file", []), ("same", ["--pixel-size", "5"]), ("other", ["--pixel-size", "8"])):
        out = tmp_path / f"{name}.tif"
        r = CliRunner().invoke(app, ["segment2d", str(src), "-o", str(out), "--plane", "yz", "--slice", "64",
                                     "--threads", "1", *extra])
        assert r.exit_code == 0, r.output
        runs[name] = read_image(out)
    assert runs["file"].voxel_size == runs["same"].voxel_size == (40.0, 5.0)
    np.testing.assert_array_equal(runs["file"].data, runs["same"].data)
    assert runs["other"].voxel_size == (40.0, 8.0)
    # a --batch stack is written with the pixel size it ran at too
    r = CliRunner().invoke(app, ["segment2d", str(src), "-o", str(tmp_path / "b.tif"), "--batch", "--threads", "1",
                                 "--pixel-size", "8"])
    assert r.exit_code == 0, r.output
    assert read_image(tmp_path / "b.tif").voxel_size == (40.0, 8.0, 8.0)


def test_averaged_planes_keep_the_dtype_a_model_divides_by(tmp_path):
    """An xz plane of a volume finer than the model is the mean of two planes (float32); a model
    normalising by the dtype's maximum (empanada's configs) still divides by the volume's (255),
    in segment2d --plane as in the 3D xz stack, and finds what that stack finds on the plane."""
    import tifffile
    from _models import DarkBlobNet, dark_blob_model

    from panoptem.cli import main
    from panoptem.io import write_image
    from panoptem.models.card import Normalization, Weights
    from panoptem.models.home import sha256_of
    w = tmp_path / "db.pt"
    torch.jit.save(torch.jit.script(DarkBlobNet().eval()), str(w))
    card = dark_blob_model().card.model_copy(update={
        "normalization": Normalization(mode="dtype_max"), "voxel_size_nm": 5.0,
        "weights": Weights(file=w.name, sha256=sha256_of(w), format="torchscript")})
    (tmp_path / "db.yaml").write_text(card.to_yaml())
    vol = np.full((16, 64, 64), 200, np.uint8)
    vol[:, 20:44, 20:44] = 40                                      # a dark rod through every plane
    write_image(tmp_path / "v.tif", vol, voxel_size=(2.5, 2.5, 2.5))  # finer than the model's 5 nm
    model = ["--model", str(tmp_path / "db.yaml")]
    assert main(["segment2d", str(tmp_path / "v.tif"), "-o", str(tmp_path / "p.tif"), *model, "--slice", "32",
                 "--plane", "xz", "--min-piece-area", "0"]) == 0
    assert main(["segment3d", str(tmp_path / "v.tif"), "-o", str(tmp_path / "s.tif"), *model,
                 "--inference-plane", "xz", "--min-size", "0", "--median-slices", "1"]) == 0
    two, three = tifffile.imread(tmp_path / "p.tif") > 0, tifffile.imread(tmp_path / "s.tif")[:, 32] > 0
    assert three.sum() > 100
    np.testing.assert_array_equal(two, three)


def test_a_plane_tested_in_2d_is_scaled_as_the_3d_run_scales_it(tmp_path):
    """segment2d --plane scales the plane with the volume's intensity range, as the 3D stack scales
    every plane (its own percentiles differed from the stack's on a yz plane of the sample)."""
    import tifffile
    from typer.testing import CliRunner

    import panoptem
    from panoptem.cli import app
    v = panoptem.load_sample()[:, 100:260, 100:260]
    v[:, :, :40] = np.clip(v[:, :, :40].astype(int) + 60, 0, 255)  # planes brighter than the volume's average
    tifffile.imwrite(tmp_path / "v.tif", v)
    run = CliRunner().invoke
    r = run(app, ["segment3d", str(tmp_path / "v.tif"), "-o", str(tmp_path / "s.tif"), "--inference-plane", "yz",
                  "--median-slices", "1", "--min-size", "0", "--min-extent", "1", "--threads", "1"])
    assert r.exit_code == 0, r.output
    three = tifffile.imread(tmp_path / "s.tif") > 0
    checked = 0
    fg = three.sum(axis=(0, 1))
    bright = int(np.argmax(fg[:40])), 40 + int(np.argmax(fg[40:]))  # one in the brightened planes, one not
    for x in bright:
        r = run(app, ["segment2d", str(tmp_path / "v.tif"), "-o", str(tmp_path / f"p{x}.tif"), "--plane", "yz",
                      "--slice", str(x), "--min-piece-area", "0", "--threads", "1"])
        assert r.exit_code == 0, r.output
        two = tifffile.imread(tmp_path / f"p{x}.tif") > 0
        assert np.count_nonzero(two != three[:, :, x]) <= 0.01 * max(np.count_nonzero(three[:, :, x]), 100), x
        checked += np.count_nonzero(three[:, :, x])
    assert checked > 200


@pytest.mark.parametrize("given, words", [
    (5, r"voxel_size takes 3 positive sizes in nm, one per axis \(Z, Y, X\), not 5; .* give pixel_size=5 instead"),
    ((5, 5), r"voxel_size takes 3 positive sizes .* not \(5, 5\)\.$"),
    ((40, 0, 5), r"not \(40, 0, 5\)"),
    (("a", 5, 5), r"not \('a', 5, 5\)"),
])
def test_a_voxel_size_with_too_few_or_bad_sizes_is_one_error(tiny_card, given, words):
    """A scalar raised a raw TypeError; two sizes for a volume were dropped without a word (the run
    went on as if the pixel size were unknown, not resampled)."""
    with pytest.raises(PanoptemError, match=words):
        segment_3d(np.zeros((3, 64, 64), np.uint8), str(tiny_card), voxel_size=given)


def test_a_2d_run_takes_the_last_two_sizes_of_a_stacks_voxel_size(tiny_card):
    with pytest.raises(PanoptemError, match=r"one per axis \(Y, X\), not 5; .* pixel_size=5 instead"):
        segment_2d(np.zeros((64, 64), np.uint8), str(tiny_card), voxel_size=5)
    img = np.zeros((64, 64), np.uint8)
    assert segment_2d(img, str(tiny_card), voxel_size=(40, 5, 5)).shape == (64, 64)


@pytest.mark.parametrize("zyx_nm,plane,extra", [((5.0, 7.0, 7.0), "xz", []), ((30.0, 5.0, 7.0), "xz", []),
                                                ((5.0, 5.0, 5.0), "xy", ["--pixel-size", "8"])])
def test_a_parameter_test_on_a_plane_runs_at_the_3d_runs_pixel_size(tmp_path, capsys, zyx_nm, plane, extra):
    """The shipped model segments best at 6-10 nm: a 3D xz stack picks the pixel from the
    volume's y and x; the 2D test of one xz plane picked it from the plane's z and x (10 nm
    where the stack runs at 7, or 7 where it runs at 10); an xy plane told 8 nm runs at 8."""
    import tifffile
    from panoptem.cli import main
    from panoptem.sample import load_sample
    vol = np.ascontiguousarray(load_sample()[:12, 100:164, 100:164])
    src = tmp_path / "vol.tif"
    tifffile.imwrite(src, vol, imagej=True, resolution=(1 / zyx_nm[2], 1 / zyx_nm[1]),
                     metadata={"axes": "ZYX", "unit": "nm", "spacing": zyx_nm[0]})
    got = {}
    for cmd, how in (("segment3d", ["--inference-plane", plane]), ("segment2d", ["--plane", plane, "--slice", "6"])):
        code = main([cmd, str(src), "-o", str(tmp_path / f"{cmd}.tif"), "--model", "MitoLite_v1", "--threads", "1",
                     *how, *extra])
        out, err = capsys.readouterr()
        assert code == 0, err
        got[cmd] = json.loads(out.strip().splitlines()[-1])["pixel_size"]["network_pixel_nm"]
    assert got["segment2d"]["xy"] == got["segment3d"][plane]


def test_a_plane_of_one_value_resampled_by_a_fraction_finds_nothing():
    """One value throughout is a blank plane, whatever the pixel size: resampled at 3/2 first,
    its float32 values were no longer all equal, and the whole grey plane was one object."""
    model = dark_blob_model()
    model.card = model.card.model_copy(update={"voxel_size_nm": 7.5})
    for nm in (5.0, 7.5):
        labels = segment_2d(np.full((96, 96), 41, np.uint8), model, voxel_size=(nm, nm), intensity=(0, 255))
        assert not labels.any(), nm
