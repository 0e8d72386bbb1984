"""Erode / dilate / fill holes of whole label images, and the same options in 2D and 3D
inference, the command line and Zarr chunking."""
import json

import numpy as np
import pytest

from panoptem.inference.postprocess import dilate_labels, erode_labels, fill_holes, postprocess_labels
from panoptem.inference.segment2d import segment_2d
from panoptem.inference.segment3d import segment_3d, write_result

from _models import dark_blob_model
from test_segment3d import P, phantom


def test_dilation_grows_into_background_only_and_keeps_touching_objects_apart():
    lab = np.zeros((7, 9), np.uint32)
    lab[1:4, 1:3] = 1
    lab[1:4, 5:7] = 2          # one free column (x = 3, 4) between them
    lab[6, 8] = 3
    out = dilate_labels(lab, 1)
    assert (out[lab > 0] == lab[lab > 0]).all()                       # nothing overwritten
    assert out[2, 3] == 1 and out[2, 4] == 2 and out[0, 1] == 1 and out[5, 8] == 3
    assert out[0, 0] == 0                                            # face neighbours only (no corner)
    out2 = dilate_labels(lab, 2)
    assert (out2[lab > 0] == lab[lab > 0]).all()
    # cells reached by 1 and 2 in the same step stay background
    assert out2[0, 3] == 1 and out2[0, 4] == 2 and out2[4, 3] == 1
    # a voxel reached by two labels at once: a one-voxel gap
    gap = np.array([[1, 0, 2]], np.uint32)
    assert dilate_labels(gap, 3).tolist() == [[1, 0, 2]]


def test_erosion_removes_borders_with_background_and_with_other_labels():
    lab = np.zeros((7, 10), np.int32)
    lab[1:6, 1:5] = 1
    lab[1:6, 5:9] = 2          # touching label 1 along x = 4 | 5
    out = erode_labels(lab, 1)
    assert set(np.unique(out)) == {0, 1, 2} and (out[out > 0] == lab[out > 0]).all()  # only removes
    assert out[3, 2] == 1 and out[3, 3] == 1 and out[3, 4] == 0 and out[3, 5] == 0 and out[3, 6] == 2
    assert out[1].tolist() == [0] * 10 and (out[:, 1] == 0).all()
    assert (out == 1).sum() == 3 * 2 and (out == 2).sum() == 3 * 2
    edge = np.ones((3, 3), np.uint8)                                 # the array edge does not erode
    assert erode_labels(edge, 2).tolist() == edge.tolist()
    assert not erode_labels(lab, 3).any()


def test_fill_holes_only_fills_background_enclosed_by_one_label():
    lab = np.zeros((12, 20), np.uint16)
    lab[1:6, 1:6] = 1
    lab[3, 3] = 0              # a hole of 1
    lab[7:12, 1:6] = 2
    lab[9, 3], lab[11, 3] = 0, 0   # a hole, and a notch open to the image edge
    lab[1:8, 8:16] = 3
    lab[3:6, 10:14] = 0        # a hole holding label 4 with a ring of background
    lab[4, 11:13] = 4
    lab[1:4, 17:20] = 5        # 5 and 6 share the background between them
    lab[5:8, 17:20] = 6
    lab[4, 18] = 0
    out = fill_holes(lab)
    assert out[3, 3] == 1 and out[9, 3] == 2 and out[11, 3] == 0
    assert (out[3:6, 10:14][lab[3:6, 10:14] == 0] == 0).all() and (out[4, 11:13] == 4).all()
    assert out[4, 18] == 0
    changed = out != lab
    assert changed.sum() == 2
    # 3D: plane by plane (the hole in plane 0 is closed by plane 1, still filled)
    vol = np.stack([lab, np.where(lab > 0, lab, 0)])
    vol[1, 3, 3] = 1
    assert np.array_equal(fill_holes(vol)[0], out) and fill_holes(vol)[1, 3, 3] == 1


def test_postprocess_order_and_nothing_asked():
    lab = np.zeros((1, 12), np.uint32)
    lab[0, 2:6] = 1
    assert postprocess_labels(lab) is lab
    # erode 1 then dilate 1 restores a bar (an opening)
    assert np.array_equal(postprocess_labels(lab, erosion=1, dilation=1), lab)


def test_segment_2d_fills_holes_when_asked():
    img = np.full((96, 96), 220, np.uint8)
    yy, xx = np.mgrid[:96, :96]
    ring = ((yy - 48) ** 2 + (xx - 48) ** 2 < 30 ** 2) & ((yy - 48) ** 2 + (xx - 48) ** 2 >= 8 ** 2)
    img[ring] = 40
    kw = dict(maximum_objects_per_class=0, semantic_only=True)        # the ring is one object
    plain = segment_2d(img, dark_blob_model(), **kw)
    filled = segment_2d(img, dark_blob_model(), fill_holes_in_segmentation=True, **kw)
    assert plain[48, 48] == 0 and filled[48, 48] == plain[48, 30] > 0
    assert np.array_equal(filled, fill_holes(plain))


def test_segment_3d_erodes_dilates_and_fills_after_linking():
    vol, _ = phantom()
    plain = segment_3d(vol, dark_blob_model(), **P)
    post = segment_3d(vol, dark_blob_model(), label_erosion=1, label_dilation=2, fill_holes_in_segmentation=True,
                      **P)
    exp = postprocess_labels(plain.labels["mitochondria"], 1, 2, True)
    assert np.array_equal(post.labels["mitochondria"], exp)
    assert (post.labels["mitochondria"] > 0).sum() > (plain.labels["mitochondria"] > 0).sum()
    assert post.objects == plain.objects == {"mitochondria": 4}


@pytest.mark.parametrize("plane", ["xy", "yz"])
def test_streamed_morphology_equals_in_memory(tmp_path, plane):
    vol, _ = phantom()
    kw = dict(label_erosion=2, label_dilation=3, fill_holes_in_segmentation=True, inference_plane=plane, **P)
    mem = segment_3d(vol, dark_blob_model(), **kw)
    out = tmp_path / "l.zarr"
    import panoptem.inference.segment3d as s3
    orig = s3._remap_to_writer
    s3._remap_to_writer = lambda *a, **k: orig(*a, **k, block=5)   # many Z blocks, each with a halo
    try:
        st = segment_3d(vol, dark_blob_model(), output=out, chunk_size=16, **kw)
    finally:
        s3._remap_to_writer = orig
    assert st.streamed
    assert np.array_equal(np.asarray(st.labels["mitochondria"][:]), mem.labels["mitochondria"])
    import zarr
    assert zarr.open_group(str(out), mode="r")["0"].chunks == (16, 16, 16)


def test_write_result_zarr_chunks(tmp_path):
    vol, _ = phantom(shape=(20, 60, 60), balls=[(10, 30, 30)])
    res = segment_3d(vol, dark_blob_model(), **P)
    write_result(res, tmp_path / "m.zarr", chunk_size=8)
    write_result(res, tmp_path / "d.zarr")
    write_result(res, tmp_path / "a.zarr", chunk_size=(5, 30, 60))
    from panoptem.params import Params3D, zarr_chunks
    assert Params3D(chunk_size=np.int64(8)).chunk_size == [8] and zarr_chunks(np.int64(8), (4, 9, 9)) == (4, 8, 8)
    import zarr
    assert zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["0"].chunks == (5, 30, 60)
    assert zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["0"].chunks == (8, 8, 8)
    assert zarr.open_group(str(tmp_path / "d.zarr"), mode="r")["0"].chunks == (20, 60, 60)


def test_cli_has_the_new_options(capsys, tmp_path, tiny_card):
    import tifffile

    from panoptem.cli import main
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "v.tif", rng.integers(0, 255, (6, 64, 64), dtype=np.uint8))
    code = main(["segment3d", str(tmp_path / "v.tif"), "-o", str(tmp_path / "o.zarr"), "--model", str(tiny_card),
                 "--min-size", "0", "--min-extent", "0", "--label-erosion", "1", "--label-dilation", "2",
                 "--fill-holes-in-segmentation", "--chunk-size", "16", "--orthoplane"])
    out, err = capsys.readouterr()
    assert code == 0, err
    import zarr
    assert zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["0"].chunks == (6, 16, 16)
    code = main(["segment3d", str(tmp_path / "v.tif"), "-o", str(tmp_path / "p.zarr"), "--model", str(tiny_card),
                 "--label-erosion", "51"])
    out, err = capsys.readouterr()
    assert code == 2 and "label_erosion" in err
    # per axis, as empanada's "a,b,c": a streamed xy run writes these chunks as they come
    code = main(["segment3d", str(tmp_path / "v.tif"), "-o", str(tmp_path / "q.zarr"), "--model", str(tiny_card),
                 "--min-size", "0", "--min-extent", "0", "--chunk-size", "2,32,16"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert zarr.open_group(str(tmp_path / "q.zarr"), mode="r")["0"].chunks == (2, 32, 16)
    for bad in ("2,32", "0,32,16", "a,b,c", "-1"):
        code = main(["segment3d", str(tmp_path / "v.tif"), "-o", str(tmp_path / "r.zarr"), "--model", str(tiny_card),
                     "--chunk-size", bad])
        out, err = capsys.readouterr()
        assert code == 2 and "chunk" in err.lower() and "Traceback" not in err, (bad, err)
        assert not (tmp_path / "r.zarr").exists()
    code = main(["segment2d", str(tmp_path / "v.tif"), "-o", str(tmp_path / "s.tif"), "--model", str(tiny_card),
                 "--fill-holes-in-segmentation"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["shape"] == [64, 64]


def test_remove_small_pieces_in_place_changes_contiguous_labels_only():
    from panoptem.inference.postprocess import remove_small_pieces
    lab = np.array([[1, 1, 1, 0, 1], [1, 1, 0, 0, 0]], np.uint32)
    out = remove_small_pieces(lab, 2, in_place=True)
    assert np.shares_memory(out, lab) and lab.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    strided = np.zeros((2, 6), np.uint32)[:, ::2]
    strided[0, 0] = 7
    assert not remove_small_pieces(strided, 2, in_place=True).any() and strided[0, 0] == 7  # a copy changed


@pytest.mark.parametrize("dtype, big", [(np.uint64, 2**53 + 1), (np.uint64, 2**64 - 2), (np.int64, 2**63 - 2)])
def test_morphology_keeps_64_bit_ids_that_float64_cannot_hold(dtype, big):
    # scipy's rank filters take 64-bit integers through float64: 2**53 + 1 came back as 2**53
    lab = np.zeros((5, 6), dtype)
    lab[1:4, 1:3] = big
    lab[1:4, 4:6] = big - 1
    small = (lab > 0) * (lab - (big - 3))  # the same picture with ids 1 and 2
    for op in (erode_labels, dilate_labels):
        got = op(lab, 1)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, np.where(op(small, 1) > 0, op(small, 1) + (big - 3), 0))
