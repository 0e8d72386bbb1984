"""Preprocessing, tiling and the 2D API with small local models."""
import json

import numpy as np
import pytest

from panoptem.errors import PanoptemError
from panoptem.inference.engine import Predictor
from panoptem.inference.preprocess import intensity_range, normalize
from panoptem.inference.segment2d import segment_2d, take_plane, make_unique
from panoptem.models.load import load_model

from _models import dark_blob_model


def blobs_image(shape=(256, 320), centers=((60, 60), (150, 200), (200, 80)), r=18, dtype=np.uint8,
                lo=40, hi=220):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, hi, np.float64)
    for cy, cx in centers:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = lo
    return img.astype(dtype)


@pytest.mark.parametrize("dtype,lo,hi", [(np.uint8, 40, 220), (np.uint16, 1000, 1100),
                                         (np.int32, -5000, 90000), (np.float32, 0.1, 0.2)])
def test_normalisation_any_dtype_same_result(dtype, lo, hi):
    img = blobs_image(dtype=dtype, lo=lo, hi=hi)
    x = normalize(img, *intensity_range(img))
    ref = blobs_image()
    xr = normalize(ref, *intensity_range(ref))
    assert np.allclose(x, xr, atol=1e-3)
    # a narrow-range 16-bit image must not come out empty
    labels = segment_2d(img, dark_blob_model(), maximum_objects_per_class=0)
    assert len(np.unique(labels)) - 1 == 3


def test_padding_is_left_out_of_the_intensity_range():
    """A black border (padding_mask) would make the range start at 0 and shift the tissue's
    contrast; its pixels are left out, and an image of nothing but padding keeps its own."""
    img = np.random.default_rng(0).integers(50, 200, (64, 100)).astype(np.uint8)
    padded = img.copy()
    padded[:, :40] = 0
    assert intensity_range(padded) == intensity_range(img[:, 40:]) != intensity_range(padded[:, :41])
    vol = np.stack([padded] * 3)
    assert intensity_range(vol) == intensity_range(img[:, 40:])
    assert intensity_range(np.zeros((40, 40), np.uint8)) == (0.0, 0.0)


def test_a_heatmap_cell_past_the_planes_edge_whose_part_in_it_is_padding_has_no_centre():
    """The last cell of a plane 94 wide spans columns 92-95: its part in the plane (92, 93) is
    padding, so nothing is found there (a centre kept there drew real pixels to it); a cell
    holding one pixel of the image keeps the network's heatmap."""
    from panoptem.inference.predict import STRIDE, ModelOutput, clear_padding
    pad = np.zeros((2, 8, 94), bool)
    pad[0, :, 92:] = True                      # plane 0: the edge cell's part in the plane is padding
    pad[1, :, 89:] = True                      # plane 1 as well, but the cell before keeps pixel 88
    pad[1, 4:, 93] = False                     # ... and its edge cell holds image in rows 4-7
    out = clear_padding(ModelOutput(np.ones((2, 1, 8, 94), np.float32), np.ones((2, 1, 2, 24), np.float32),
                                    np.zeros((2, 2, 2, 24), np.float32)), pad)
    hm = out.heatmap[:, 0]
    assert STRIDE == 4 and hm[0, :, 23].tolist() == [0, 0] and hm[0, :, :23].all()
    assert hm[1, :, 22].all() and hm[1, :, 23].tolist() == [0, 1]
    assert not out.semantic_probability[0, 0, :, 92:].any() and out.semantic_probability[0, 0, :, :92].all()


@pytest.mark.parametrize("rows, n_reads", [(4, 4), (40, 4)])
def test_intensity_of_a_volume_in_strips_reads_each_strip_once(tmp_path, monkeypatch, rows, n_reads):
    """A deflate TIFF stored in image-wide strips: the sampled boxes that share rows are read
    together (each strip decoded once, not once per box), with the same range as in memory;
    all boxes of a slab of slices are read as one block unless that touches more strips."""
    import tifffile
    from panoptem.io import read_image
    from panoptem.inference import preprocess
    vol = np.random.default_rng(0).integers(0, 60000, (40, 160, 200), dtype=np.uint16)
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, vol, compression="zlib", rowsperstrip=rows)
    lazy = read_image(str(path)).data
    assert lazy.chunks == (1, rows, 200)
    reads, orig = [], type(lazy)._read
    monkeypatch.setattr(type(lazy), "_read", lambda self, key: (reads.append(key), orig(self, key))[1])
    got = intensity_range(lazy, max_samples=20_000)
    monkeypatch.undo()
    assert got == intensity_range(vol, max_samples=20_000)
    # one read per z cell of the 4 x 8 x 8 grid, not 256: the boxes, read with the 32 rows and columns
    # around them that tell padding, span every strip of their slices
    assert len(reads) == n_reads
    # slabs of at most SAMPLE_DEPTH slices: 16 of the 40 slices decoded
    assert len({z for key in reads for z in range(key[0].start, key[0].stop)}) == 4 * preprocess.SAMPLE_DEPTH
    boxes = preprocess._sample_boxes(vol.shape, 20_000)
    assert [b.tolist() for b in preprocess.read_boxes(vol, boxes)] == [vol[b].tolist() for b in boxes]
    # a block larger than READ_BLOCK_BYTES (e.g. pages stored as one huge strip) is not read
    reads.clear()
    monkeypatch.setattr(type(lazy), "_read", lambda self, key: (reads.append(key), orig(self, key))[1])
    monkeypatch.setattr(preprocess, "READ_BLOCK_BYTES", 4 * 4 * 200 * 2)  # one (z, y) row of boxes
    assert [b.tolist() for b in preprocess.read_boxes(lazy, boxes)] == [vol[b].tolist() for b in boxes]
    assert len(reads) == 32
    monkeypatch.undo()
    import dask.array as da  # chunks as tuples of tuples: read box by box
    assert intensity_range(da.from_array(vol, chunks=(8, 40, 50)), max_samples=20_000) == got


def test_normalize_constant_image_is_finite():
    img = np.full((8, 8), 7, np.uint16)
    assert np.isfinite(normalize(img, *intensity_range(img))).all()


@pytest.mark.parametrize("value", [0, 40, 128, 255])
def test_a_uniform_image_or_slice_holds_no_object(value):
    """A blank or grey-filled section has nothing to find: no object (it was given to the network
    as the darkest grey, and called one object covering it all); in a batch stack such a slice
    is empty and the others are as segmented alone; a uniform volume and its thin xz/yz planes too."""
    from panoptem.inference.segment3d import segment_3d
    flat = np.full((96, 96), value, np.uint8)
    assert not segment_2d(flat, dark_blob_model()).any()
    img = blobs_image()
    stack = np.stack([img, np.full_like(img, value), img])
    lab = segment_2d(stack, dark_blob_model(), batch=True)
    assert not lab[1].any() and np.array_equal(lab[0], segment_2d(img, dark_blob_model())) and lab[0].any()
    vol = np.full((6, 64, 64), value, np.uint8)   # xz/yz planes of 6 x 64: too thin to count as padding
    for kw in (dict(), dict(inference_plane="xz"), dict(orthoplane=True)):
        assert not segment_3d(vol, dark_blob_model(), **kw).labels["mitochondria"].any(), kw


def test_a_flat_region_larger_than_a_tile_is_segmented_as_untiled():
    """A tile wholly inside a flat area is not a blank plane: tiled and untiled runs agree (the
    blank-plane rule taken per tile cut holes along the tiles into a large uniform object)."""
    img = np.full((256, 320), 220, np.uint8)
    img[20:236, 40:300] = 40                      # one large dark object, far wider than the tiles
    whole = segment_2d(img, dark_blob_model(), maximum_objects_per_class=0)
    tiled = segment_2d(img, dark_blob_model(), maximum_objects_per_class=0, tile_size=64)
    assert (whole > 0).sum() > 50_000 and np.array_equal(whole > 0, tiled > 0)
    assert not segment_2d(np.full((256, 320), 40, np.uint8), dark_blob_model(), tile_size=64).any()  # blank: none


def test_a_black_frame_changes_nothing_inside_it():
    """Where padding frames the planes the network is given the box within the frame (its start
    on the output grid), so slices of the bundled sample framed by black pixels give the unframed
    slices' labels, to the bit (foreground IoU 0.82 when the network saw a 128-pixel frame, 0.95
    when its global context left the frame out but its reach did not)."""
    import panoptem
    img = panoptem.load_sample()[10:13]
    ref = panoptem.segment_3d(img, device="cpu").labels["mitochondria"]
    assert (ref > 0).sum() > 10_000
    for top, left, bottom, right in ((128, 128, 128, 128), (100, 36, 60, 0)):
        framed = np.zeros((3, 384 + top + bottom, 384 + left + right), np.uint8)
        framed[:, top:top + 384, left:left + 384] = img
        got = panoptem.segment_3d(framed, device="cpu").labels["mitochondria"]
        np.testing.assert_array_equal(got[:, top:top + 384, left:left + 384], ref)
        assert got.sum() == ref.sum()  # nothing in the frame


def test_a_framed_image_is_segmented_alone_whatever_its_batch():
    """Each plane is cut to its own frame: a framed image batched with an unframed one (or another
    frame) gets the labels it gets alone (the batch's common box had given it other labels)."""
    import panoptem
    v = panoptem.load_sample()
    a = np.pad(v[0, 224:384, 0:160], ((40, 0), (0, 0)))        # a band of 40 black rows on top
    b = v[1, 184:384, 0:160]
    c = np.pad(v[2, 200:384, 16:160], ((0, 16), (16, 0)))      # another frame
    alone = [segment_2d(p, "MitoLite_v1", device="cpu") for p in (a, b, c)]
    for bs in (2, 3):
        got = segment_2d(np.stack([a, b, c]), "MitoLite_v1", batch=True, batch_size=bs, device="cpu")
        for i in range(3):
            np.testing.assert_array_equal(got[i], alone[i], err_msg=f"batch {bs}, image {i}")
    assert all(lab.any() for lab in alone)


def test_tiles_of_a_framed_image_for_a_network_that_pads_to_64(tmp_path):
    """A card padding to 64 pixels: a tile's framed box reaches a cell past the tile's grid (the
    network's margin), which is left out of the plane's context rather than failing."""
    from conftest import make_tiny_card
    card = make_tiny_card(tmp_path, name="pf64", padding_factor=64)
    img = np.random.default_rng(0).integers(60, 200, (256, 256)).astype(np.uint8)
    img[:40] = 0
    img[:, :40] = 0
    lab = segment_2d(img, str(card), tile_size=128, device="cpu")
    assert lab.shape == img.shape and not lab[:40].any() and not lab[:, :40].any()


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_test_time_flips_of_a_framed_image_each_weigh_their_own_cells(runtime):
    """Flip TTA of a plane that holds padding: every flipped pass leaves the padding out of its own
    context as a run on the flipped plane does, on sides that are not whole 32-pixel cells too
    (MitoLite_v1 pads to 16: 336 pixels flip cells onto cells 16 pixels off)."""
    import panoptem
    img = panoptem.load_sample()[10][:, :336].copy()
    img[:100, :120] = 0  # a corner: the plane's own context leaves it out, and the network sees all the plane
    one = Predictor("MitoLite_v1", device="cpu", runtime=runtime, batch_size=1)
    rng = one.intensity(img)
    tta = Predictor("MitoLite_v1", device="cpu", runtime=runtime, batch_size=1, tta=True).predict(img, rng)
    flips = ((), (-1,), (-2,), (-2, -1))
    probs = [np.flip(one.predict(np.flip(img, f).copy(), rng).semantic_probability, f).astype(np.float64)
             for f in flips]
    logits = [np.log(p / (1 - p)) for p in np.clip(probs, 1e-7, 1 - 1e-7)]  # TTA averages the logits
    want = 1 / (1 + np.exp(-sum(logits) / 4))
    tissue = img[None, None] > 0
    np.testing.assert_allclose(tta.semantic_probability[tissue], want[tissue], atol=1e-4)


def test_tiles_of_a_real_slice_take_the_whole_slices_context():
    """Tiles are given the global context of their whole slice (summed over the tiles' cores), so
    the shipped model's tiles of 256 find the untiled objects: foreground IoU 0.999 on slices of
    the bundled sample (0.992 when each tile took its own context)."""
    import panoptem
    img = panoptem.load_sample()
    for z in (5, 20):
        whole = segment_2d(img[z], "MitoLite_v1", device="cpu") > 0
        tiled = segment_2d(img[z], "MitoLite_v1", device="cpu", tile_size=256) > 0
        assert whole.sum() > 5_000 and (whole & tiled).sum() / (whole | tiled).sum() > 0.997, z


def test_an_empty_stack_is_one_error():
    for shape, kw in (((0, 64, 64), dict(batch=True)), ((0, 64, 64), dict(batch=True, unique_ids=True)),
                      ((64, 0), {})):
        with pytest.raises(PanoptemError, match="holds no pixel"):
            segment_2d(np.zeros(shape, np.uint8), dark_blob_model(), **kw)


def test_a_channel_axis_of_one_last_is_refused_not_segmented_as_slices():
    """(Y, X, 1) was refused as "a 3D input" with the advice batch=True, which then segmented
    Y slices of X x 1 pixels."""
    img = blobs_image()[..., None]
    for batch in (False, True):
        with pytest.raises(PanoptemError, match=r"channel axis of 1 last; drop that axis \(image\[\.\.\., 0\]\)"):
            segment_2d(img, dark_blob_model(), batch=batch)


def test_a_range_past_float32_normalises_as_any_other():
    """Float32 data spanning +-3e38 (the span overflows in float32) scales as the same image in uint8."""
    ref = blobs_image()
    big = (ref.astype(np.float64) / 255 * 6e38 - 3e38).astype(np.float32)
    assert np.allclose(normalize(big, *intensity_range(big)), normalize(ref, *intensity_range(ref)), atol=1e-3)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_downsampling_round_trip_keeps_size_and_objects(factor):
    img = blobs_image(shape=(250, 333), r=30)  # not multiples of anything
    lab = segment_2d(img, dark_blob_model(), downsampling=factor, maximum_objects_per_class=0)
    assert lab.shape == img.shape and lab.dtype == np.uint32
    assert len(np.unique(lab)) - 1 == 3
    fg = lab > 0
    truth = img < 100
    assert (fg & truth).sum() / (fg | truth).sum() > (0.85 if factor < 4 else 0.75)  # 16-px semantic cells at 4x


def test_bad_downsampling_is_refused():
    with pytest.raises(PanoptemError, match="Image Downsampling"):
        segment_2d(blobs_image(), dark_blob_model(), downsampling=3)


def test_tiles_give_the_same_outputs_as_one_pass():
    centers = [(y, x) for y in range(40, 600, 90) for x in range(40, 700, 110)]
    img = blobs_image(shape=(620, 700), centers=centers, r=20)
    model = dark_blob_model()
    whole = Predictor(model).predict(img)
    tiled = Predictor(model, tile_size=256).predict(img, Predictor(model).intensity(img[None]))
    assert np.allclose(whole.semantic_probability, tiled.semantic_probability, atol=1e-5)
    assert np.allclose(whole.heatmap, tiled.heatmap, atol=1e-5)
    one = segment_2d(img, model, maximum_objects_per_class=0)
    tl = segment_2d(img, model, tile_size=256, maximum_objects_per_class=0)
    assert (one == tl).all() and len(np.unique(one)) - 1 == len(centers)


def test_batch_mode_ids_restart_or_unique():
    stack = np.stack([blobs_image(), blobs_image(centers=((60, 60),))])
    lab = segment_2d(stack, dark_blob_model(), batch=True)
    assert lab.shape == stack.shape
    assert set(np.unique(lab[0])) == {0, 10001, 10002, 10003}
    assert set(np.unique(lab[1])) == {0, 10001}
    uniq = segment_2d(stack, dark_blob_model(), batch=True, unique_ids=True)
    assert set(np.unique(uniq[1])) == {0, 10004}
    assert (uniq // 10000 == lab // 10000).all()


def test_make_unique_without_divisor():
    s = np.array([[[1, 2]], [[1, 0]]], np.uint32)
    assert make_unique(s, None).tolist() == [[[1, 2]], [[3, 0]]]


def test_make_unique_reads_a_list_or_a_lazy_stack_slice_by_slice(tmp_path):
    """The same ids from an array, a list of slices and a Zarr array (read a slice at a time:
    a lazy stack was read whole, then copied twice), as uint32 unless the ids need more."""
    import zarr
    s = np.array([[[1001, 2001], [0, 1002]], [[1001, 0], [3000, 0]], [[0, 0], [0, 0]]], np.uint32)
    z = zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=s.shape, chunks=(1, 2, 2), dtype=np.uint32)
    z[:] = s
    want = make_unique(s, 1000)
    assert want.dtype == np.uint32 and want[1].tolist() == [[1003, 0], [3000, 0]]
    for other in (list(s), z):
        got = make_unique(other, 1000)
        assert got.dtype == np.uint32 and np.array_equal(got, want)
    assert make_unique(np.array([[[2**32 - 1]], [[5]]], np.uint64), None).dtype == np.uint64


def test_3d_input_without_batch_is_an_error():
    with pytest.raises(PanoptemError, match="batch=True"):
        segment_2d(np.zeros((3, 64, 64), np.uint8), dark_blob_model())


def test_take_plane():
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert (take_plane(vol, 1, "xy") == vol[1]).all()
    assert (take_plane(vol, 2, "xz") == vol[:, 2]).all()
    assert (take_plane(vol, 3, "yz") == vol[:, :, 3]).all()
    with pytest.raises(PanoptemError, match="outside"):
        take_plane(vol, 5, "xy")


def test_tiny_real_architecture_runs_from_card(tiny_card):
    m = load_model(str(tiny_card), "cpu")
    lab = segment_2d(blobs_image(), m, return_outputs=True)
    assert lab.labels.shape == (256, 320) and lab.labels.dtype == np.uint32
    assert lab.semantic_probability.shape == (1, 256, 320)


def test_corrupt_weights_are_refused(tiny_card):
    (tiny_card.parent / "tiny.pt").write_bytes(b"not a model")
    with pytest.raises(PanoptemError, match="sha256"):
        load_model(str(tiny_card), "cpu")


def test_unknown_model_is_refused():
    with pytest.raises(PanoptemError, match="Unknown model"):
        load_model("NoSuchModel")


def _same_partition(a, b):
    """Same objects (as pixel sets), whatever their ids."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (len(pairs[0]) == len(np.unique(a)) == len(np.unique(b))) and ((pairs[0] == 0) == (pairs[1] == 0)).all()


@pytest.mark.parametrize("fine", [False, True])
def test_large_image_decoded_tile_by_tile_equals_one_pass(fine, monkeypatch):
    from panoptem.inference import large2d
    monkeypatch.setattr(large2d, "DECODE_TILE", 96)  # many decode tiles, objects across their borders
    centers = [(y, x) for y in range(40, 600, 90) for x in range(40, 700, 110)]
    img = blobs_image(shape=(620, 700), centers=centers, r=20)
    img[300:320, :] = 40  # a long object across every tile column
    model = dark_blob_model()
    one = segment_2d(img, model, maximum_objects_per_class=0, fine_boundaries=fine)
    big = segment_2d(img, model, tile_size=256, maximum_objects_per_class=0, fine_boundaries=fine)
    assert big.shape == one.shape and big.dtype == np.uint32
    assert _same_partition(one, big)
    assert len(np.unique(big)) - 1 == len(np.unique(one)) - 1


@pytest.mark.parametrize("fine", [False, True])
def test_downsampled_tiles_of_odd_sides_equal_one_pass(fine):
    """Image Downsampling of a plane whose sides are not multiples of the factor: the tiles
    (each downsampled on its own, the last one cut at the plane's end) give the labels of one
    pass, objects at the far edges included, in place."""
    centers = [(y, x) for y in range(40, 640, 90) for x in range(40, 700, 110)] + [(606, 688)]
    img = blobs_image(shape=(621, 701), centers=centers, r=20)
    model = dark_blob_model()
    one = segment_2d(img, model, downsampling=2, maximum_objects_per_class=0, fine_boundaries=fine)
    big = segment_2d(img, model, downsampling=2, tile_size=256, maximum_objects_per_class=0, fine_boundaries=fine)
    assert big.shape == one.shape == img.shape
    assert _same_partition(one, big) and len(np.unique(one)) - 1 == len(centers)
    fg, truth = one > 0, img < 100
    corner = (slice(590, None), slice(670, None))  # the object at the far corner, where the windows are cut
    assert (fg[corner] & truth[corner]).sum() / (fg[corner] | truth[corner]).sum() > 0.85


def test_min_piece_area_drops_small_pieces_only():
    from panoptem.params import Params3D
    img = blobs_image(centers=((60, 60), (150, 200)), r=18)
    img[200:206, 250:256] = 40  # a 6 x 6 dark speck: a piece of 36 pixels
    model = dark_blob_model()
    plain = segment_2d(img, model, maximum_objects_per_class=0, min_piece_area=0)
    sizes = np.bincount(plain.ravel())[1:]
    assert len(sizes) == 3 and sizes.min() < 100 < np.sort(sizes)[1]
    kept = segment_2d(img, model, maximum_objects_per_class=0, min_piece_area=100)
    assert len(np.unique(kept)) - 1 == 2
    big = np.isin(plain, np.flatnonzero(np.bincount(plain.ravel()) >= 100)[1:])
    assert np.array_equal(kept > 0, big)  # the large objects keep every pixel
    default = segment_2d(img, model, maximum_objects_per_class=0)   # 40 px by default: the speck goes
    assert np.array_equal(default > 0, big)
    assert "min_piece_area" not in Params3D.model_fields  # 2D only


def test_large_image_drops_small_pieces_while_decoding(monkeypatch):
    """Tiled decoding removes small pieces from their areas counted per decode tile, with the
    labels remove_small_pieces gives on the whole image (and without calling it): a piece split
    by a tile border keeps its whole area."""
    import panoptem.inference.segment2d as s2
    from panoptem.inference import large2d
    from panoptem.inference.postprocess import remove_small_pieces
    from panoptem.labels import relabel_sequential_per_class
    monkeypatch.setattr(large2d, "DECODE_TILE", 96)
    img = blobs_image(shape=(620, 700), centers=((60, 60), (400, 500)), r=20)
    img[91:101, 300:310] = 40  # a speck across the decode-tile border at row 96
    img[188:196, 92:100] = 40  # a speck across the decode-tile corner (192, 96)
    model = dark_blob_model()
    plain = segment_2d(img, model, tile_size=256, maximum_objects_per_class=0, min_piece_area=0)
    a, b = plain[95, 304], plain[191, 95]
    area = np.bincount(plain.ravel())
    assert a and b and plain[97, 304] == a and plain[193, 97] == b and area[b] < 70 < area[a] < 140
    monkeypatch.setattr(s2, "remove_small_pieces", lambda *a, **k: pytest.fail("whole-image filter"))
    got = segment_2d(img, model, tile_size=256, maximum_objects_per_class=0, min_piece_area=70)
    assert np.array_equal(got, relabel_sequential_per_class(remove_small_pieces(plain, 70), None))  # ids 1..N too
    assert got[95, 304] and not got[191, 95]  # kept whole, though each tile holds less than 70 of it


def test_a_tiled_image_gives_the_same_labels_with_or_without_its_outputs():
    """return_outputs (what the napari 2D dock asks for) decodes a tiled image as a plain call
    does, from the same stitched outputs, at thresholds that fall on their 1/255 steps too."""
    import panoptem
    plane = np.ascontiguousarray(panoptem.load_sample()[:, :, 60])       # a 30 x 384 yz plane
    for thr in (0.2, 0.4, 0.6, 0.8):
        kw = dict(tile_size=96, confidence_thr=thr, threads=1)
        plain = panoptem.segment_2d(plane, **kw)
        res = panoptem.segment_2d(plane, return_outputs=True, **kw)
        np.testing.assert_array_equal(res.labels, plain)
        assert res.semantic_probability.dtype == np.float32 and res.semantic_probability.max() <= 1.0
        assert res.centers is not None


def test_an_interrupted_batch_resumes_and_gives_the_labels_of_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    """segment2d --batch keeps each slice's labels beside the output as they are made: run again
    after an interruption, it computes only the slices left (and a slice whose input changed),
    writes the labels an uninterrupted run writes, and removes what it kept."""
    import tifffile

    import panoptem
    from panoptem.cli import main
    from panoptem.inference import segment2d as s2d
    from panoptem.inference.slice_store import SliceStore
    stack = panoptem.load_sample()[:12]
    tifffile.imwrite(tmp_path / "st.tif", stack)
    args = ["segment2d", str(tmp_path / "st.tif"), "--batch", "--threads", "1"]
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "once.tif")]) == 0
    once = tifffile.imread(tmp_path / "once.tif")
    assert once.max() > 0
    # ids restart in every slice: the objects are counted slice by slice
    per_slice = sum(len(np.unique(s)) - 1 for s in once)
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["objects"] == per_slice > len(np.unique(once)) - 1
    real_put, puts = SliceStore.put, []

    def put_then_stop(self, index, labels, digests):
        real_put(self, index, labels, digests)
        puts.append(index)
        if len(puts) == 2:
            raise KeyboardInterrupt  # as Ctrl-C after two batches
    monkeypatch.setattr(SliceStore, "put", put_then_stop)
    assert main([*args, "-o", str(tmp_path / "twice.tif")]) == 130
    monkeypatch.setattr(SliceStore, "put", real_put)
    assert not (tmp_path / "twice.tif").exists() and (tmp_path / ".twice.tif.panoptem-slices").is_dir()
    # a run refused for another reason (a mistyped option) leaves the interrupted run's slices alone
    assert main([*args, "-o", str(tmp_path / "twice.tif"), "--device", "cdua"]) == 2
    assert (tmp_path / ".twice.tif.panoptem-slices").is_dir()
    decoded = []
    real_decode = s2d.decode_panoptic
    monkeypatch.setattr(s2d, "decode_panoptic", lambda *a, **k: (decoded.append(1), real_decode(*a, **k))[1])
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "twice.tif")]) == 0
    done_before = sum(len(i) for i in puts)
    assert len(decoded) == len(stack) - done_before == 4
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "twice.tif"), once)
    assert not (tmp_path / ".twice.tif.panoptem-slices").exists()
    # kept slices of another input plane or other parameters are not taken
    store = SliceStore(tmp_path / "kept", {"params": 1}, stack.shape)
    from panoptem.inference.cache import plane_hashes
    h = plane_hashes(stack[:2])
    store.put([0, 1], [once[0], once[1]], h)
    again = SliceStore(tmp_path / "kept", {"params": 1}, stack.shape)
    assert again.valid(0, h[0]) and not again.valid(0, h[1]) and not again.valid(2, h[0])
    assert not SliceStore(tmp_path / "kept", {"params": 2}, stack.shape).valid(0, h[0])
    # a damaged store is started afresh, not a traceback
    store = SliceStore(tmp_path / "kept", {"params": 2}, stack.shape)
    store.put([0], [once[0]], h[:1])
    for chunk in (tmp_path / "kept" / "done").iterdir():
        if not chunk.name.startswith("."):
            chunk.write_bytes(b"not a chunk")
    assert not SliceStore(tmp_path / "kept", {"params": 2}, stack.shape).valid(0, h[0])
    # weights without a sha256 are told apart by their file
    from panoptem.inference.segment2d import _weights_id
    from panoptem.models.card import ModelCard, Weights
    w = tmp_path / "w.pt"
    w.write_bytes(b"1")
    card = ModelCard(name="m", weights=Weights(file=str(w)))
    first = _weights_id(card)
    import os
    w.write_bytes(b"22")
    os.utime(w, ns=(1, 1))
    assert _weights_id(card) != first


def test_a_batch_streams_its_labels_but_numbering_them_across_the_stack_needs_them_all(tmp_path, monkeypatch, capsys):
    """On a machine too small for a stack's labels, --batch runs (its slices kept on disk) and
    --unique-ids, which holds them all at once, is refused before the work."""
    import tifffile

    import panoptem
    import panoptem._memory as mem
    from panoptem.cli import main
    stack = panoptem.load_sample()[:6, :128, :128]
    tifffile.imwrite(tmp_path / "st.tif", stack)
    monkeypatch.setattr(mem, "physical_memory", lambda: 450_000)  # a batch fits, every label of the stack not
    args = ["segment2d", str(tmp_path / "st.tif"), "--batch", "--threads", "1"]
    assert main([*args, "-o", str(tmp_path / "a.tif")]) == 0
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "b.tif"), "--unique-ids"]) == 2
    assert "memory" in capsys.readouterr().err and not (tmp_path / ".b.tif.panoptem-slices").exists()


def test_tiles_overlap_by_the_networks_reach_so_no_object_is_found_twice_at_a_seam():
    """Tiles of 192 pixels on the sample's 384² slices (an overlap of 10 % found objects twice on both
    sides of each seam) give the objects of the whole slice."""
    import panoptem
    vol = panoptem.load_sample()
    for z in (0, 10, 20):
        whole = panoptem.segment_2d(vol[z], threads=1)
        tiled = panoptem.segment_2d(vol[z], tile_size=192, threads=1)
        assert panoptem.evaluate(tiled, whole)["f1_50"] == 1.0, z


@pytest.mark.parametrize("bad", [5, (1, 2, 3), (200.0, 10.0), (0, float("nan"))])
def test_an_intensity_range_that_is_not_one_is_refused(bad):
    import panoptem
    with pytest.raises(PanoptemError, match="intensity must be"):
        panoptem.segment_2d(panoptem.load_sample()[0], intensity=bad)


@pytest.mark.parametrize("kw", [{}, {"tile_size": 128}])
def test_objects_removed_whole_by_min_piece_area_leave_no_gap_in_the_ids(kw):
    """Objects were numbered before small pieces were removed: an object removed whole left its
    number unused (ids 1, 3, 4 where 1..N is promised; 10001, 10003 with the divisor)."""
    img = blobs_image(centers=((60, 60), (150, 200), (40, 250), (200, 80)), r=18)
    yy, xx = np.mgrid[:256, :320]
    img[(yy - 120) ** 2 + (xx - 110) ** 2 < 9] = 30  # a speck: an object, then a piece under 40 px
    for divisor, first in ((0, 1), (10000, 10001)):
        with_speck = segment_2d(img, dark_blob_model(), maximum_objects_per_class=divisor, min_piece_area=0, **kw)
        lab = segment_2d(img, dark_blob_model(), maximum_objects_per_class=divisor, min_piece_area=40, **kw)
        ids = np.unique(lab[lab > 0])
        assert len(np.unique(with_speck[with_speck > 0])) == len(ids) + 1  # the speck was an object
        assert ids.tolist() == list(range(first, first + len(ids)))


def _stripes(shape):
    """Stripes of 40 and 220: nothing mid-grey (normalised far from 0) anywhere."""
    img = np.full(shape, 220.0, np.float32)
    img[..., ::8, :] = img[..., 1::8, :] = img[..., 2::8, :] = img[..., 3::8, :] = 40.0
    return img


def test_missing_data_is_padding_not_an_object():
    """NaN (missing data) became the mean grey and nothing told it from tissue: a NaN region was
    found as an object, an all-NaN section of a stack was one object over the whole plane, and
    one such slice stopped a --batch run ("no finite values")."""
    from _models import grey_blob_model
    from panoptem.inference.segment3d import segment_3d
    model = grey_blob_model()
    img = _stripes((256, 320))
    img[100:180, 120:200] = np.nan
    assert not segment_2d(img, model, maximum_objects_per_class=0).any()
    grey = img.copy()
    grey[100:180, 120:200] = 130.0  # the same region mid-grey: found (the model sees grey)
    assert segment_2d(grey, model, maximum_objects_per_class=0)[140, 160] > 0
    vol = np.stack([_stripes((128, 160))] * 6)
    vol[3] = np.nan
    assert not segment_3d(vol, model, median_slices=1, min_size=0).labels["mitochondria"].any()
    stack = np.stack([grey[:128, :160], np.full((128, 160), np.nan, np.float32)])
    lab = segment_2d(stack, model, batch=True)
    assert not lab[1].any()


def test_a_tile_that_cuts_a_band_of_padding_sees_it_as_padding():
    """A tile judges padding with the pixels around it in its plane: the 20 columns of a 40-column
    black band that it holds are padding (alone they are narrower than the window), a dark spot
    is not, and a plane of one value is padding throughout."""
    from panoptem.inference.engine import _tile_blank
    from panoptem.inference.preprocess import padding_mask
    planes = np.random.default_rng(0).integers(1, 255, (2, 120, 150)).astype(np.uint8)
    planes[0, :, :40] = 0
    planes[0, 60:70, 80:90] = 0
    tile = planes[:, 10:110, 20:140]
    assert padding_mask(tile) is None
    pad = _tile_blank(planes, None, (10, 110, 20, 140))
    assert pad.shape == tile.shape and pad[0, :, :20].all() and not pad[0, :, 20:].any() and not pad[1].any()
    flagged = _tile_blank(planes, np.array([False, True]), (10, 110, 20, 140))
    assert flagged[1].all() and not flagged[0, :, 20:].any()
    assert _tile_blank(planes, None, (10, 110, 60, 140)) is None
    given = np.zeros(planes.shape, bool)
    given[1, :5] = True
    np.testing.assert_array_equal(_tile_blank(planes, given, (0, 50, 0, 60)), given[:, :50, :60])
