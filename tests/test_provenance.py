"""Every segmentation panoptem writes says what made it (model, weights' hash, parameters,
inputs, pixel sizes, release, time), in the file, and reads it back."""
import json

import numpy as np
import pytest
import tifffile

import panoptem
from panoptem._provenance import NAMESPACE, from_description, read_provenance
from panoptem.cli import main
from panoptem.inference.segment3d import segment_3d, write_result
from panoptem.params import Params3D

from _models import dark_blob_model
from test_segment3d import P, phantom


def _same_run(rec, params: dict, inputs, run="segment3d"):
    assert rec["software"] == "panoptem" and rec["version"] == panoptem.__version__ and rec["run"] == run
    assert rec["model"] == "darkblob" and rec["params"] == json.loads(json.dumps(params))
    assert rec["inputs"] == [str(p) for p in inputs] and rec["made"].endswith("+00:00")


@pytest.mark.parametrize("name,kw", [("mito.tif", {}), ("mito.zarr", {}), ("mito.tif", {"orthoplane": True}),
                                     ("mito.zarr", {"inference_plane": "xz"})])
def test_a_3d_run_writes_what_made_it_with_the_labels(tmp_path, name, kw):
    """Streamed (one plane into a file) and in-memory (ortho-plane) runs alike."""
    vol, _ = phantom()
    src = tmp_path / "vol.tif"
    tifffile.imwrite(src, vol)
    res = segment_3d(vol, dark_blob_model(), output=tmp_path / name, voxel_size=(8.0, 4.0, 4.0), inputs=[src],
                     **P, **kw)
    back = panoptem.read_image(tmp_path / name)
    rec = back.provenance
    _same_run(rec, Params3D(**P, **kw).model_dump(), [src])
    assert rec == res.provenance and rec["pixel_size"] == res.pixel_size
    assert back.voxel_size == (8.0, 4.0, 4.0)  # the OME metadata is intact beside the record
    again = write_result(res, tmp_path / "copy.zarr", voxel_size=(8.0, 4.0, 4.0))
    assert read_provenance(again[0]["output"]) == rec
    assert read_provenance(tmp_path / "copy.zarr" / "0") == rec  # a level read alone finds its group's


def test_ome_tiff_holds_the_record_as_a_comment_annotation(tmp_path):
    """Bio-Formats / Fiji show it: an OME comment annotation in the panoptem namespace."""
    vol, _ = phantom()
    segment_3d(vol, dark_blob_model(), output=tmp_path / "m.tif", **P)
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        desc = tif.pages[0].description
        assert tif.is_ome and tif.series[0].shape == vol.shape
    assert f'<CommentAnnotation ID="Annotation:0" Namespace="{NAMESPACE}">' in desc
    assert from_description(desc)["params"]["min_size"] == P["min_size"]


def test_labels_of_64_bits_keep_the_record_in_their_json_description(tmp_path):
    lab = np.zeros((3, 16, 16), np.uint64)
    lab[1, 4:8, 4:8] = 2**40
    rec = {"software": "panoptem", "params": {"note": 'quotes " and <tags> & such'}}
    panoptem.write_labels(tmp_path / "big.tif", lab, provenance=rec)
    assert panoptem.read_image(tmp_path / "big.tif").provenance == rec
    panoptem.write_labels(tmp_path / "plain.tif", lab)
    tifffile.imwrite(tmp_path / "other.tif", lab.astype(np.uint8))
    assert read_provenance(tmp_path / "plain.tif") is None and read_provenance(tmp_path / "other.tif") is None
    assert from_description("<OME><CommentAnnotation Namespace=\"" + NAMESPACE + "\"><Value>{not json"
                            "</Value></CommentAnnotation></OME>") is None


def test_a_blockwise_run_writes_its_record_too(tmp_path):
    vol, _ = phantom()
    src = tmp_path / "vol.zarr"
    panoptem.write_labels(src, vol.astype(np.uint32), voxel_size=(5.0, 5.0, 5.0))  # any array file will do
    segment_3d(str(src), dark_blob_model(), output=tmp_path / "b.zarr", blockwise=True, block_shape=(24, 64, 64),
               halo=(8, 16, 16), n_workers=1, **P)
    rec = read_provenance(tmp_path / "b.zarr")
    _same_run(rec, rec["params"], [src], run="segment3d blockwise")
    assert rec["params"]["min_size"] == P["min_size"] and rec["block_shape"][0] == 24
    assert rec["pixel_size"]["input_voxel_size_nm"] == [5.0, 5.0, 5.0]


def test_segment2d_records_the_plane_it_segmented(capsys, tmp_path, tiny_card):
    vol = tmp_path / "vol.tif"
    tifffile.imwrite(vol, np.random.default_rng(0).integers(0, 255, (5, 64, 96), dtype=np.uint8))
    code = main(["segment2d", str(vol), "-o", str(tmp_path / "s.tif"), "--model", str(tiny_card), "--slice", "2",
                 "--plane", "xz", "--confidence-thr", "0.4"])
    _, err = capsys.readouterr()
    assert code == 0, err
    rec = read_provenance(tmp_path / "s.tif")
    assert rec["run"] == "segment2d" and rec["plane"] == "xz" and rec["slice"] == 2
    assert rec["params"]["confidence_thr"] == 0.4 and rec["inputs"] == [str(vol)]


def test_napari_shows_the_record_as_layer_metadata(tmp_path):
    from panoptem.napari._reader import read_layers
    vol, _ = phantom()
    segment_3d(vol, dark_blob_model(), output=tmp_path / "m.zarr", **P)
    (data, meta, kind), = read_layers(str(tmp_path / "m.zarr"))
    assert kind == "labels" and meta["metadata"]["panoptem"]["params"]["min_size"] == P["min_size"]
