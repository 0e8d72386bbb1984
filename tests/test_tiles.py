"""Create / Merge Tiles (empanada's, for large 2D images): a round trip gives back the image and
its mask exactly, painted mask tiles come back in place, bad input is one clear error."""
import json

import numpy as np
import pytest
import tifffile

from panoptem.cli import main
from panoptem.errors import PanoptemError
from panoptem.tiles import create_tiles, merge_tiles


@pytest.fixture
def big(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(1, 65535, (300, 530), dtype=np.uint16)
    mask = np.zeros(img.shape, np.uint16)
    mask[20:90, 100:400] = 7
    mask[280:, 500:] = 300          # in the padded corner tile
    tifffile.imwrite(tmp_path / "big.tif", img)
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    return tmp_path, img, mask


def test_tiles_round_trip_keeps_the_image_and_its_mask(big):
    tmp, img, mask = big
    tiles = create_tiles(tmp / "big.tif", tmp / "t", tile_size=128, mask=tmp / "mask.tif")
    assert len(tiles) == 3 * 5 and tiles[0].name == "000_000.tif" and tiles[-1].name == "256_512.tif"
    corner = tifffile.imread(tiles[-1])
    assert corner.shape == (128, 128) and corner.dtype == np.uint16
    assert np.array_equal(corner[:44, :18], img[256:, 512:]) and not corner[44:].any() and not corner[:, 18:].any()
    rec = json.loads((tmp / "t" / "tiles.json").read_text())
    assert rec["shape"] == [300, 530] and rec["tile_size"] == 128 and len(rec["tiles"]) == 15
    out = merge_tiles(tmp / "t", tmp / "back")
    back, back_mask = tifffile.imread(out["image"]), tifffile.imread(out["mask"])
    assert back.dtype == np.uint16 and np.array_equal(back, img)        # not forced to uint8
    assert np.array_equal(back_mask, mask) and back_mask.dtype == np.uint32


def test_painted_mask_tiles_come_back_in_place(big):
    """Tiles cut without a mask, two painted afterwards (one with an id past 32 bits): the merged
    mask has them in place and background elsewhere."""
    tmp, img, _ = big
    create_tiles(tmp / "big.tif", tmp / "t", tile_size=128)
    (tmp / "t" / "masks").mkdir()
    paint = np.zeros((128, 128), np.uint64)
    paint[10:20, 30:40] = 5
    tifffile.imwrite(tmp / "t" / "masks" / "128_256.tif", paint.astype(np.uint16))
    paint[:4, :4] = 2**40
    tifffile.imwrite(tmp / "t" / "masks" / "000_384.tif", paint)
    floats = np.zeros((128, 128), np.float32)           # as Fiji saves a painted mask: whole-numbered floats
    floats[10:12, 60:62] = 9
    tifffile.imwrite(tmp / "t" / "masks" / "256_000.tif", floats)
    out = merge_tiles(tmp / "t", tmp / "back")
    mask = tifffile.imread(out["mask"])
    assert mask.dtype == np.uint64 and set(np.unique(mask).tolist()) == {0, 5, 9, 2**40}
    assert (mask[138:148, 286:296] == 5).all() and (mask[:4, 384:388] == 2**40).all() and (mask == 9).sum() == 4
    assert (mask == 5).sum() == 200


def test_tile_commands_on_the_command_line(big, capsys):
    tmp, img, mask = big
    assert main(["tiles", "create", str(tmp / "big.tif"), "--mask", str(tmp / "mask.tif"), "-o", str(tmp / "t"),
                 "--tile-size", "256"]) == 0
    assert json.loads(capsys.readouterr().out) == {"tiles": 6, "folder": str(tmp / "t")}
    assert main(["tiles", "merge", str(tmp / "t"), "-o", str(tmp / "back")]) == 0
    capsys.readouterr()
    assert np.array_equal(tifffile.imread(tmp / "back" / "image.tif"), img)
    assert main(["tiles", "merge", str(tmp / "t"), "-o", str(tmp / "back")]) == 2     # never overwritten
    assert "--overwrite" in capsys.readouterr().err
    assert main(["tiles", "create", str(tmp / "big.tif"), "-o", str(tmp / "t"), "--tile-size", "128",
                 "--overwrite"]) == 0                                             # a tile folder is replaced
    assert len(list((tmp / "t" / "images").iterdir())) == 15 and not (tmp / "t" / "masks").exists()
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".")] == []


def test_bad_tile_input_is_one_clear_error(big):
    tmp, img, mask = big
    tifffile.imwrite(tmp / "vol.tif", np.zeros((3, 40, 40), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp / "small.tif", mask[:10])
    (tmp / "notes").mkdir()
    (tmp / "notes" / "mine.txt").write_text("the user's\n")
    (tmp / "results.csv").write_text("a,b\n")
    cases = [(lambda: create_tiles(tmp / "vol.tif", tmp / "a"), "2D image"),
             (lambda: create_tiles(tmp / "big.tif", tmp / "a", mask=tmp / "small.tif"), "give the image's mask"),
             (lambda: create_tiles(tmp / "big.tif", tmp / "a", tile_size=8), "from 16 to 100000"),
             (lambda: create_tiles(tmp / "big.tif", tmp / "notes", overwrite=True), "not a tile folder"),
             (lambda: create_tiles(tmp / "big.tif", tmp / "results.csv", overwrite=True), "not a tile folder"),
             (lambda: merge_tiles(tmp / "notes", tmp / "b"), "not a tile folder")]
    for call, words in cases:
        with pytest.raises(PanoptemError, match=words):
            call()
    assert (tmp / "notes" / "mine.txt").read_text() == "the user's\n" and not (tmp / "a").exists()
    assert (tmp / "results.csv").read_text() == "a,b\n"
    create_tiles(tmp / "big.tif", tmp / "t", tile_size=128)
    with pytest.raises(PanoptemError, match="input"):
        merge_tiles(tmp / "t", tmp / "t" / "images")           # never into the tiles themselves
    tifffile.imwrite(tmp / "t" / "images" / "000_000.tif", np.zeros((130, 128), np.uint16))
    with pytest.raises(PanoptemError, match="not the 128 x 128 it was cut as"):
        merge_tiles(tmp / "t", tmp / "b")                      # was cropped without a word
    tifffile.imwrite(tmp / "t" / "images" / "000_000.tif", np.zeros((128, 128), np.uint16))
    record = json.loads((tmp / "t" / "tiles.json").read_text())
    for bad in (["x", 1], "55"):
        (tmp / "t" / "tiles.json").write_text(json.dumps({**record, "voxel_size": bad}))
        with pytest.raises(PanoptemError, match="damaged"):
            merge_tiles(tmp / "t", tmp / "b")
    (tmp / "t" / "tiles.json").write_text(json.dumps(record))
    (tmp / "t" / "images" / "000_128.tif").unlink()
    with pytest.raises(PanoptemError, match="missing"):
        merge_tiles(tmp / "t", tmp / "b")


def test_merge_over_an_earlier_pair_replaces_it_as_a_pair(big, monkeypatch):
    """merge --overwrite wrote the new image.tif, then mask.tif: stopped between the two, a new
    image was left beside the old mask. Both are now complete before either is moved into place."""
    from panoptem.io import writers
    tmp, img, _ = big
    create_tiles(tmp / "big.tif", tmp / "t", tile_size=128, mask=tmp / "mask.tif")
    merge_tiles(tmp / "t", tmp / "back")
    before = {k: (tmp / "back" / f"{k}.tif").read_bytes() for k in ("image", "mask")}
    tifffile.imwrite(tmp / "t" / "images" / "000_000.tif", np.zeros((128, 128), np.uint16))  # a tile changed

    def stopped(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(writers, "label_dtype", stopped)   # stopped as the mask begins
    with pytest.raises(KeyboardInterrupt):
        merge_tiles(tmp / "t", tmp / "back", overwrite=True)
    assert {k: (tmp / "back" / f"{k}.tif").read_bytes() for k in ("image", "mask")} == before
    assert sorted(p.name for p in (tmp / "back").iterdir()) == ["image.tif", "mask.tif"]
