"""Patch picking (points, borders, planes, flipbooks, pairs) and dataset folders."""
import json

import numpy as np
import pytest

from panoptem.errors import PanoptemError
from panoptem.training.dataset import load_dataset, store_dataset
from panoptem.training.patches import Patch, pick_patches


def coords_volume(shape=(20, 40, 50)):
    """Every voxel holds its own coordinates: z * 10000 + y * 100 + x."""
    z, y, x = np.indices(shape)
    return (z * 10000 + y * 100 + x).astype(np.int32)


def coords_image(shape=(100, 120)):
    y, x = np.indices(shape)
    return (y * 1000 + x).astype(np.int32)


# ---------------------------------------------------------------- picking


def test_point_patches_are_centred_and_shifted_inside_at_borders():
    img = coords_image()
    ps = pick_patches(img, n=0, patch_size=32, points=[(50, 60), (3, 117), (99.4, 0.2)])
    assert [(p.y0, p.x0) for p in ps] == [(34, 44), (0, 88), (68, 0)]
    for p in ps:
        np.testing.assert_array_equal(p.image, img[p.y0:p.y0 + 32, p.x0:p.x0 + 32])
        assert p.index is None and p.plane == "xy" and p.valid == (32, 32) and p.labels is None
    # the point sits at the patch centre when there is room
    assert ps[0].image[16, 16] == 50 * 1000 + 60
    assert ps[0].point == (50.0, 60.0)


def test_paired_patches_crop_labels_at_the_same_place():
    img = coords_image((96, 96))
    labels = img * 2 + 1
    ps = pick_patches(img, n=5, patch_size=32, points=[(40, 40)], labels=labels, seed=3)
    assert len(ps) == 5
    for p in ps:
        np.testing.assert_array_equal(p.labels, p.image * 2 + 1)
        np.testing.assert_array_equal(p.image, img[p.y0:p.y0 + 32, p.x0:p.x0 + 32])


def test_random_patches_lie_on_a_grid_and_never_overlap():
    img = coords_image((128, 128))
    ps = pick_patches(img, n=9, patch_size=32, points=[(40, 40)], seed=1)
    rand = ps[1:]
    assert len(rand) == 8 and all(p.point is None for p in rand)
    corners = {(p.y0, p.x0) for p in rand}
    assert len(corners) == 8
    assert all(y % 32 == 0 and x % 32 == 0 for y, x in corners)
    # the point's patch covers [24, 56) x [24, 56): no random cell may touch it
    assert (ps[0].y0, ps[0].x0) == (24, 24)
    assert not any(abs(y - 24) < 32 and abs(x - 24) < 32 for y, x in corners)
    # 16 cells minus the 4 the point's patch touches leave 12: asking for more warns
    with pytest.warns(UserWarning, match="only 13"):
        assert len(pick_patches(img, n=20, patch_size=32, points=[(40, 40)])) == 13


def test_random_picks_are_reproducible_with_the_seed():
    img = coords_image((128, 128))
    a = [(p.y0, p.x0) for p in pick_patches(img, n=4, patch_size=32, seed=7)]
    b = [(p.y0, p.x0) for p in pick_patches(img, n=4, patch_size=32, seed=7)]
    assert a == b


def test_planes_xz_and_yz_take_the_right_axes():
    v = coords_volume()
    (xz,) = pick_patches(v, n=0, patch_size=16, points=[(10, 20, 25)], plane="xz")
    assert (xz.plane, xz.index, xz.y0, xz.x0) == ("xz", 20, 2, 17)
    np.testing.assert_array_equal(xz.image, v[2:18, 20, 17:33])
    assert xz.image[0, 0] == 2 * 10000 + 20 * 100 + 17
    (yz,) = pick_patches(v, n=0, patch_size=16, points=[(10, 20, 25)], plane="yz")
    assert (yz.plane, yz.index, yz.y0, yz.x0) == ("yz", 25, 2, 12)
    np.testing.assert_array_equal(yz.image, v[2:18, 12:28, 25])
    (xy,) = pick_patches(v, n=0, patch_size=16, points=[(10, 20, 25)], plane="xy")
    np.testing.assert_array_equal(xy.image, v[10, 12:28, 17:33])


def test_random_plane_uses_all_three_planes():
    v = coords_volume((40, 40, 40))
    ps = pick_patches(v, n=30, patch_size=16, plane="random", seed=0)
    assert {p.plane for p in ps} == {"xy", "xz", "yz"}
    for p in ps:
        sl = [slice(p.y0, p.y0 + 16), slice(p.x0, p.x0 + 16)]
        expect = {"xy": v[p.index][tuple(sl)], "xz": v[sl[0], p.index, sl[1]], "yz": v[sl[0], sl[1], p.index]}
        np.testing.assert_array_equal(p.image, expect[p.plane])


def test_flipbook_middle_is_the_points_plane():
    v = coords_volume()
    ps = pick_patches(v, n=0, patch_size=16, points=[(10, 20, 20), (1, 20, 20), (19, 20, 20)], flipbook=True,
                      flipbook_depth=5)
    assert [p.middle for p in ps] == [2, 1, 4]
    assert [p.index for p in ps] == [10, 1, 19]
    for p in ps:
        assert p.image.shape == (5, 16, 16)
        assert np.all(p.image[p.middle] // 10000 == p.index)
        start = p.index - p.middle
        np.testing.assert_array_equal(p.image, v[start:start + 5, 12:28, 12:28])
        np.testing.assert_array_equal(p.annotated()[0], v[p.index, 12:28, 12:28])


def test_random_flipbooks_do_not_share_planes():
    v = coords_volume((20, 16, 16))
    with pytest.warns(UserWarning, match="only 4"):
        ps = pick_patches(v, n=10, patch_size=16, flipbook=True, flipbook_depth=5, seed=0)
    assert len(ps) == 4  # 20 planes hold 4 flipbooks of 5
    assert sorted(p.index for p in ps) == [2, 7, 12, 17]


def test_stack_points_and_small_image_padding():
    stack = np.stack([coords_image((20, 30)) + 100000 * i for i in range(3)])
    (p,) = pick_patches(stack, n=0, patch_size=32, points=[(2, 10, 10)], is_2d_stack=True)
    assert (p.index, p.y0, p.x0, p.valid) == (2, 0, 0, (20, 30))
    assert p.image.shape == (32, 32)
    np.testing.assert_array_equal(p.image[:20, :30], stack[2])
    assert np.all(p.image[20:] == np.median(stack[2]).astype(np.int32))
    np.testing.assert_array_equal(p.annotated()[0], stack[2])


@pytest.mark.parametrize("kwargs, match", [
    (dict(points=[(200, 5)]), "outside"),
    (dict(points=[(1, 2, 3)]), "2 coordinates"),
    (dict(plane="xz"), "only xy"),
    (dict(flipbook=True), "3D volume"),
    (dict(labels=np.zeros((5, 5))), "do not match"),
])
def test_bad_requests_are_clear_errors(kwargs, match):
    with pytest.raises(PanoptemError, match=match):
        pick_patches(coords_image(), n=1, patch_size=16, **kwargs)


# ---------------------------------------------------------------- dataset folders


def disc_patches(n=3, size=32):
    yy, xx = np.indices((size, size))
    out = []
    for i in range(n):
        img = np.full((size, size), 200 + i, np.uint16)
        lab = np.zeros((size, size), np.uint32)
        d = (yy - 10 - i) ** 2 + (xx - 12) ** 2 <= 25
        img[d], lab[d] = 40, 1
        out.append(Patch(img, lab, (size, size), "xy", None, 0, 4 * i, size, (size, size), source="disc"))
    return out


def test_store_and_load_round_trip(tmp_path):
    ps = disc_patches()
    names = store_dataset(ps, tmp_path / "ds")
    assert names == ["disc_y0_x0", "disc_y0_x4", "disc_y0_x8"]
    images, masks, meta = load_dataset(tmp_path / "ds")
    assert meta["names"] == names and meta["label_divisor"] is None
    assert meta["classes"] == [{"id": 1, "name": "mitochondria", "kind": "instance"}]
    assert meta["patches"]["disc_y0_x4"]["x0"] == 4
    for p, im, m in zip(ps, images, masks):
        assert im.dtype == np.uint16
        np.testing.assert_array_equal(im, p.image)
        np.testing.assert_array_equal(m, p.labels)


def test_store_appends_without_clobbering_and_overwrite_replaces(tmp_path):
    ps = disc_patches(2)
    store_dataset(ps, tmp_path)
    again = store_dataset(ps[:1], tmp_path)
    assert again == ["disc_y0_x0_2"]
    changed = disc_patches(1)[0]
    changed.image = changed.image + 1
    assert store_dataset([changed], tmp_path, overwrite=True) == ["disc_y0_x0"]
    images, _, meta = load_dataset(tmp_path)
    assert meta["names"] == ["disc_y0_x0", "disc_y0_x0_2", "disc_y0_x4"]
    np.testing.assert_array_equal(images[0], ps[0].image + 1)
    np.testing.assert_array_equal(images[1], ps[0].image)
    assert set(json.loads((tmp_path / "dataset.json").read_text())["patches"]) == set(meta["names"])


def test_a_store_that_stopped_half_way_is_finished_by_running_it_again(tmp_path, monkeypatch):
    """A store stopped after some patches' files (a kill, a full disk) leaves the folder marked:
    loading refuses it in one line, and storing the same patches again replaces what the stopped
    run wrote under the same names (it stored them a second time as NAME_2, beside an image
    without its mask); earlier patches, and a mask the user painted since, stay."""
    import panoptem.io as io
    store_dataset(disc_patches(1), tmp_path)
    ps = disc_patches(3)[1:]
    real_write, calls = io.write_labels, []

    def failing(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(path, *a, **k)
    monkeypatch.setattr(io, "write_labels", failing)
    with pytest.raises(OSError):
        store_dataset(ps, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "images" / "disc_y0_x8.tif").exists() and not (tmp_path / "masks" / "disc_y0_x8.tif").exists()
    with pytest.raises(PanoptemError, match="run it again to finish"):
        load_dataset(tmp_path)
    assert store_dataset(ps, tmp_path) == ["disc_y0_x4", "disc_y0_x8"]
    images, masks, meta = load_dataset(tmp_path)
    assert meta["names"] == ["disc_y0_x0", "disc_y0_x4", "disc_y0_x8"] and len(images) == 3
    # stopped again before its record: the patch whose mask the user painted since keeps it
    (tmp_path / ".storing.json").write_text(json.dumps({"names": ["mine", "theirs"], "masks": ["theirs"]}))
    for name in ("mine", "theirs"):
        for d in ("images", "masks"):
            (tmp_path / d / f"{name}.tif").write_bytes((tmp_path / d / "disc_y0_x0.tif").read_bytes())
    store_dataset([], tmp_path)
    assert load_dataset(tmp_path)[2]["names"] == ["disc_y0_x0", "disc_y0_x4", "disc_y0_x8", "mine"]
    # a pair of the user's in a hand-made folder, which a stopped overwrite never reached, stays
    hand = tmp_path / "hand"
    (hand / "images").mkdir(parents=True)
    (hand / "masks").mkdir()
    for d in ("images", "masks"):
        (hand / d / "disc_y0_x4.tif").write_bytes((tmp_path / d / "disc_y0_x0.tif").read_bytes())
    monkeypatch.setattr(io, "write_labels", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "disk full")))
    with pytest.raises(OSError):
        store_dataset(disc_patches(2), hand, overwrite=True)
    monkeypatch.undo()
    store_dataset(disc_patches(3)[2:], hand)
    assert (hand / "images" / "disc_y0_x4.tif").exists() and (hand / "masks" / "disc_y0_x4.tif").exists()


def test_overwrite_keeps_the_mask_of_the_same_image_and_drops_another_images(tmp_path):
    vol = np.random.default_rng(0).integers(0, 255, (10, 64, 64), dtype=np.uint8)
    lab = np.zeros(vol.shape, np.uint32)
    lab[:, 10:30, 10:30] = 1
    pick = dict(n=1, patch_size=32, points=[(5, 20, 20)], source="v")
    painted = pick_patches(vol, labels=lab, **pick)
    store_dataset(painted, tmp_path)
    (tmp_path / "masks" / "v_xy-5_y4_x4.tif").rename(tmp_path / "masks" / "v_xy-5_y4_x4.png")
    store_dataset(pick_patches(vol, **pick), tmp_path, overwrite=True)  # the same patch, picked again
    _, masks, _ = load_dataset(tmp_path)
    np.testing.assert_array_equal(masks[0], painted[0].labels)
    book = pick_patches(255 - vol, flipbook=True, flipbook_depth=3, **pick)
    store_dataset(book, tmp_path, overwrite=True)  # another image under that name: its mask would not fit
    assert sorted(f.name for f in tmp_path.rglob("*.*") if f.suffix != ".json") == ["v_xy-5_y4_x4.tif"] * 2
    with pytest.raises(PanoptemError, match="no mask"):
        load_dataset(tmp_path)
    store_dataset(painted, tmp_path, overwrite=True)  # a plain patch with its mask: the flipbook goes
    images, masks, _ = load_dataset(tmp_path)
    assert not (tmp_path / "flipbooks" / "v_xy-5_y4_x4.tif").exists()
    np.testing.assert_array_equal(images[0], painted[0].image)
    np.testing.assert_array_equal(masks[0], painted[0].labels)


def test_store_keeps_empty_masks_as_true_negatives_and_refuses_mismatched_ones(tmp_path):
    ps = disc_patches(2)
    ps[1].labels = np.zeros_like(ps[1].labels)
    store_dataset(ps, tmp_path / "a")
    images, masks, meta = load_dataset(tmp_path / "a")
    assert meta["names"] == ["disc_y0_x0", "disc_y0_x4"]
    assert masks[0].any() and masks[1].shape == images[1].shape and not masks[1].any()
    ps = disc_patches(1)
    ps[0].labels = ps[0].labels[:20]
    ps[0].valid = (32, 32)
    with pytest.raises(PanoptemError, match="disc_y0_x0.*differ in shape"):
        store_dataset(ps, tmp_path / "b")


def test_store_refuses_unknown_classes_and_other_divisors(tmp_path):
    ps = disc_patches(1)
    ps[0].labels = ps[0].labels * 3001  # class 3 with divisor 1000
    with pytest.raises(PanoptemError, match=r"class\(es\) \[3\]"):
        store_dataset(ps, tmp_path, class_names={1: "mito", 2: ("er", "semantic")}, label_divisor=1000)
    store_dataset(disc_patches(1), tmp_path)
    with pytest.raises(PanoptemError, match=r"label divisor none and classes 1 mitochondria \(instance\); these "
                                            "patches have divisor 1000"):
        store_dataset(disc_patches(1), tmp_path, label_divisor=1000)


def test_store_refuses_objects_a_divisor_puts_in_class_0(tmp_path):
    # napari paints label 1 by default: with divisor 1000 that is class 0, learned as background
    with pytest.raises(PanoptemError, match="class 0"):
        store_dataset(disc_patches(1), tmp_path, label_divisor=1000)
    assert not (tmp_path / "dataset.json").exists()


def test_unannotated_patches_store_images_only_and_load_refuses_them(tmp_path):
    ps = disc_patches(2)
    ps[1].labels = None
    store_dataset(ps, tmp_path)
    assert sorted(f.name for f in (tmp_path / "images").iterdir()) == ["disc_y0_x0.tif", "disc_y0_x4.tif"]
    assert sorted(f.name for f in (tmp_path / "masks").iterdir()) == ["disc_y0_x0.tif"]
    with pytest.raises(PanoptemError, match=r"\['disc_y0_x4'\].*no mask"):
        load_dataset(tmp_path)
    (tmp_path / "images" / "disc_y0_x4.tif").unlink()
    (tmp_path / "masks" / "extra.tif").write_bytes((tmp_path / "masks" / "disc_y0_x0.tif").read_bytes())
    with pytest.raises(PanoptemError, match=r"\['extra'\].*no image"):
        load_dataset(tmp_path)


def test_flipbooks_store_their_middle_plane(tmp_path):
    v = coords_volume()
    lab = (v % 7 == 0).astype(np.uint8)
    ps = pick_patches(v, n=0, patch_size=16, points=[(1, 20, 20)], flipbook=True, labels=lab)
    (name,) = store_dataset(ps, tmp_path)
    images, masks, meta = load_dataset(tmp_path)
    np.testing.assert_array_equal(images[0], v[1, 12:28, 12:28])
    np.testing.assert_array_equal(masks[0], lab[1, 12:28, 12:28])
    assert meta["patches"][name]["middle"] == 1 and meta["patches"][name]["flipbook_depth"] == 5
    import tifffile
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "flipbooks" / f"{name}.tif"), v[0:5, 12:28, 12:28])


def test_load_reads_png_masks(tmp_path):
    import imageio.v3 as iio
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    iio.imwrite(tmp_path / "images" / "a.png", img)
    iio.imwrite(tmp_path / "masks" / "a.png", (img > 30).astype(np.uint8))
    images, masks, meta = load_dataset(tmp_path)
    np.testing.assert_array_equal(images[0], img)
    assert masks[0].sum() == 33 and meta["classes"] is None and not meta["has_meta"]


def test_a_point_that_is_not_a_number_is_refused():
    from panoptem.errors import PanoptemError
    with pytest.raises(PanoptemError, match="not a number"):
        pick_patches(np.zeros((8, 64, 64), np.uint8), n=1, patch_size=32, points=[(3, float("nan"), 30)])
