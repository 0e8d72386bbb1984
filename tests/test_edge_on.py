"""A 2D run of one xz / yz plane of a volume (parameter testing) sees the xy sections edge-on as
the volume's 3D stack of that plane does: nothing on blank sections, a thin volume's frame as
padding (``plane_edge_on`` / ``segment_2d(edge_on=)``), so what the test shows is what 3D gives."""
import numpy as np
import pytest
import tifffile

from panoptem.cli import main
from panoptem.errors import PanoptemError
from panoptem.inference.engine import card_intensity
from panoptem.inference.segment2d import segment_2d, take_plane
from panoptem.inference.segment3d import plane_edge_on, segment_3d

from _models import dark_blob_model
from test_segment3d import phantom

#: the 3D stack with nothing between its planes and the 2D decoding: no median, no size filters
STACK = dict(median_slices=1, min_size=1, min_extent=1, maximum_objects_per_class=0)
#: the 2D run of one of its planes: ids 1..N as the stack's, every piece kept (no 2D piece filter)
BARE = dict(maximum_objects_per_class=0, min_piece_area=0)


def textured(vol: np.ndarray, seed: int = 0) -> np.ndarray:
    """``vol`` with a little noise: no section of it is one value (a section of one value is
    blank, as the phantom's sections beside its balls would be)."""
    noise = np.random.default_rng(seed).integers(0, 12, vol.shape)
    return np.where(vol > 0, np.clip(vol.astype(np.int64) + noise, 1, 255), 0).astype(np.uint8)


def _stack_plane(vol, plane: str, index: int, model, **kw) -> np.ndarray:
    """Foreground of plane ``index`` of the volume's 3D stack along ``plane``."""
    lab = segment_3d(vol, model, inference_plane=plane, **STACK, **kw).labels["mitochondria"]
    return (lab[:, index] if plane == "xz" else lab[:, :, index]) > 0


@pytest.mark.parametrize("plane,index,ds", [("xz", 30, 1), ("yz", 40, 1), ("xz", 30, 2)])
def test_a_blank_section_is_nothing_in_a_2d_plane_as_in_its_3d_stack(plane, index, ds):
    """Downsampled x2, a network row covers the blank section and the next: the decoding cuts the
    blank one exactly, as the stack's does."""
    vol = textured(phantom()[0])
    vol[14] = 0  # a missing section, through two of the balls
    m = dark_blob_model()
    rows, pad = plane_edge_on(vol, 1 if plane == "xz" else 2, index)
    assert rows.tolist() == [z == 14 for z in range(len(vol))] and pad is None  # deep: its own padding
    img, rng = take_plane(vol, index, plane), card_intensity(m.card, vol)  # the volume's range, as 3D
    told = segment_2d(img, m, edge_on=(rows, pad), intensity=rng, downsampling=ds, **BARE)
    alone = segment_2d(img, m, intensity=rng, downsampling=ds, **BARE)
    assert alone[14].any() and not told[14].any()
    np.testing.assert_array_equal(told > 0, _stack_plane(vol, plane, index, m, downsampling=ds))


def test_a_thin_framed_volume_gives_its_2d_plane_the_frame_as_padding():
    vol = np.zeros((16, 180, 180), np.uint8)  # 16 sections in a frame of 40 black pixels
    vol[:, 40:140, 40:140] = textured(phantom((16, 100, 100), balls=[(8, 30, 30), (8, 70, 60)], r=10)[0])
    m = dark_blob_model()
    rows, pad = plane_edge_on(vol, 1, 70)
    assert rows is None and pad is not None and pad[:, :40].all() and not pad[:, 40:140].any()
    img, rng = take_plane(vol, 70, "xz"), card_intensity(m.card, vol)
    told = segment_2d(img, m, edge_on=(rows, pad), intensity=rng, **BARE)
    alone = segment_2d(img, m, intensity=rng, **BARE)
    assert alone[:, :40].any() and not told[:, :40].any()  # 16 rows cannot tell the frame themselves
    np.testing.assert_array_equal(told > 0, _stack_plane(vol, "xz", 70, m))


def test_tiled_planes_cut_blank_sections_too():
    vol = textured(phantom((40, 100, 300), balls=[(14, 50, 60), (14, 50, 200)])[0])
    vol[14] = 0
    m = dark_blob_model()
    rows, pad = plane_edge_on(vol, 1, 50)
    img, rng = take_plane(vol, 50, "xz"), card_intensity(m.card, vol)
    whole = segment_2d(img, m, edge_on=(rows, pad), intensity=rng, downsampling=2, **BARE)
    tiled = segment_2d(img, m, edge_on=(rows, pad), intensity=rng, downsampling=2, tile_size=128, **BARE)
    assert not tiled[14].any() and (tiled > 0).sum() > 500
    np.testing.assert_array_equal(tiled > 0, whole > 0)


def test_edge_on_that_does_not_fit_is_one_clear_error():
    img = take_plane(phantom()[0], 30, "xz")
    with pytest.raises(PanoptemError, match="edge_on must be"):
        segment_2d(img, dark_blob_model(), edge_on=(np.zeros(5, bool), None))
    with pytest.raises(PanoptemError, match="give that plane alone"):
        segment_2d(np.stack([img, img]), dark_blob_model(), batch=True, edge_on=(None, None))


def test_cli_segment2d_of_an_xz_slice_takes_the_blank_sections(capsys, tmp_path, monkeypatch):
    """``segment2d --slice --plane xz``: the plane as its 3D stack sees it."""
    from panoptem.inference import segment2d as s2
    vol = textured(phantom()[0])
    vol[14] = 0
    tifffile.imwrite(tmp_path / "vol.tif", vol)
    seen, real = [], s2.segment_2d
    monkeypatch.setattr(s2, "segment_2d", lambda *a, **k: (seen.append(k.get("edge_on")), real(*a, **k))[1])
    code = main(["segment2d", str(tmp_path / "vol.tif"), "-o", str(tmp_path / "o.tif"), "--slice", "30",
                 "--plane", "xz", "--device", "cpu"])
    _, err = capsys.readouterr()
    assert code == 0, err
    rows, pad = seen[0]
    assert rows.tolist() == [z == 14 for z in range(len(vol))] and pad is None
    assert not tifffile.imread(tmp_path / "o.tif")[14].any()


def test_outputs_kept_as_bytes_are_cleared_at_the_byte_scale():
    """Tiled planes keep probabilities as bytes (x 255): a row cleared of a model with a
    background channel gets 255 there (full background), not 1 (as good as none)."""
    from panoptem.inference.predict import ModelOutput, clear_padding
    out = ModelOutput(np.full((1, 3, 8, 8), 100, np.uint8), np.ones((1, 1, 2, 2), np.float32),
                      np.zeros((1, 2, 2, 2), np.float32))
    pad = np.zeros((1, 8, 8), bool)
    pad[0, 2] = True
    clear_padding(out, pad)
    assert (out.semantic_probability[0, 0, 2] == 255).all() and (out.semantic_probability[0, 1:, 2] == 0).all()
    assert (out.semantic_probability[0, :, 3] == 100).all()
    floats = ModelOutput(np.full((1, 3, 8, 8), 0.4, np.float32), np.ones((1, 1, 2, 2), np.float32),
                         np.zeros((1, 2, 2, 2), np.float32))
    clear_padding(floats, pad)
    assert (floats.semantic_probability[0, 0, 2] == 1.0).all()
