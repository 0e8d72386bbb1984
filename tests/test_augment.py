"""Training augmentations: hard-negative centres, paler objects, crops around a centre."""
import numpy as np
from scipy import ndimage as ndi

from panoptem.training.augment import dark_background_points, pale_objects, sample_patch


def scene():
    """A bright field with one dark labelled object and one equally dark unlabelled blob."""
    yy, xx = np.indices((256, 256))
    img = np.full((256, 256), 0.8, np.float32)
    obj = (yy - 60) ** 2 + (xx - 60) ** 2 <= 20 ** 2
    blob = (yy - 190) ** 2 + (xx - 180) ** 2 <= 20 ** 2
    img[obj] = img[blob] = 0.2
    return img, obj.astype(np.uint16), blob


def test_dark_points_lie_on_unlabelled_dark_structures_only():
    img, lab, blob = scene()
    pts = dark_background_points(img, lab)
    assert len(pts) > 10
    assert blob[pts[:, 0], pts[:, 1]].mean() > 0.9                 # on the look-alike
    d = np.hypot(pts[:, 0] - 60, pts[:, 1] - 60)
    assert d.min() > 20 + 16                                         # never on or beside the object
    assert len(dark_background_points(img, lab, max_points=5)) == 5
    # no objects at all: the darkest blocks, on or at the edge of either dark disc
    pts = dark_background_points(img, np.zeros_like(lab))
    near = np.minimum(np.hypot(pts[:, 0] - 60, pts[:, 1] - 60), np.hypot(pts[:, 0] - 190, pts[:, 1] - 180))
    assert len(pts) and (near <= 20 + 8).all()


def test_pale_objects_lighten_and_flatten_the_inside_only():
    img, lab, _ = scene()
    rng = np.random.default_rng(0)
    tex = img + np.where(lab > 0, 0.1 * np.sin(np.arange(256) / 2)[None, :], 0).astype(np.float32)
    out = pale_objects(rng, tex, lab, strength=(0.5, 0.5))
    inside = lab > 0
    core = np.zeros_like(inside); core[50:70, 50:70] = True
    assert out[core].mean() > tex[core].mean() + 0.2                 # lighter: halfway to the background
    assert out[core].std() < 0.6 * tex[core].std()                   # fainter texture
    noisy = tex + np.random.default_rng(1).normal(0, 0.05, tex.shape).astype(np.float32)
    pale = pale_objects(rng, noisy, lab, strength=(0.5, 0.5))
    hf = lambda a: a - ndi.gaussian_filter(a, 1.0)                    # noqa: E731
    assert abs(hf(pale)[core].std() - hf(noisy)[core].std()) < 0.1 * hf(noisy)[core].std()   # the noise stays
    far = np.ones_like(inside); far[20:100, 20:100] = False
    assert np.array_equal(out[far], tex[far])                        # the rest untouched
    assert pale_objects(rng, tex, np.zeros_like(lab)) is tex         # nothing to make pale


def test_a_centred_crop_contains_its_centre():
    img, lab, blob = scene()
    rng = np.random.default_rng(1)
    for _ in range(20):
        p, q = sample_patch(rng, img, blob.astype(np.int64), 64, (1.0, 1.0), centre=(190, 180))
        assert q.sum() > 0.25 * blob.sum()     # the crop holds much of the blob around its centre


def test_channels_of_a_slice_are_cropped_and_turned_alike():
    """sample_patch of (C, H, W) channels: each channel gets exactly the crop, zoom, turn and flip
    the 2D slice gets from the same random draws (neighbouring slices as input channels)."""
    r = np.random.default_rng(3)
    im = r.random((90, 120)).astype(np.float32)
    lab = r.integers(0, 4, (90, 120))
    stack = np.stack([im, 1 - im, im * 0.5])
    for seed, zoom in ((0, (1.0, 1.0)), (1, (0.4, 1.3)), (2, (1.5, 2.0))):
        flat, flat_lab = sample_patch(np.random.default_rng(seed), im, lab, 48, zoom)
        chans, chans_lab = sample_patch(np.random.default_rng(seed), stack, lab, 48, zoom)
        assert chans.shape == (3, 48, 48) and flat.shape == (48, 48)
        np.testing.assert_array_equal(chans_lab, flat_lab)
        np.testing.assert_allclose(chans[0], flat, atol=1e-6)
        np.testing.assert_allclose(chans[1], 1 - flat, atol=1e-5)
        np.testing.assert_allclose(chans[2], flat * 0.5, atol=1e-6)
