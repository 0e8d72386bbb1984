"""Previews, label reports and evaluation reports (panoptem.reporting)."""
import base64
import csv
import json
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from panoptem.cli import main
from panoptem.errors import PanoptemError
from panoptem.reporting import evaluation_report, label_colors, objects_per_slice, preview, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def read_png(path) -> np.ndarray:
    from matplotlib.image import imread
    return np.round(imread(path)[..., :3] * 255).astype(np.uint8)


def five_objects():
    """(10, 60, 90) labels whose five objects all cross z = 2 and z = 7 (the planes of n_slices=2)."""
    lab = np.zeros((10, 60, 90), np.uint32)
    lab[1:9, 5:20, 5:30] = 3
    lab[1:9, 30:55, 10:25] = 8
    lab[2:8, 10:40, 40:60] = 21
    lab[1:10, 45:58, 65:88] = 10002
    lab[2:9, 2:5, 70:73] = 7  # 3 x 3 pixels: all outline
    return lab


class Counting:
    """An array-like that counts what is read through it (and refuses to be read whole)."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.ndim = a, tuple(a.shape), a.dtype, len(a.shape)
        self.keys, self.voxels = [], 0

    def __getitem__(self, key):
        out = np.asarray(self.a[key])
        self.keys.append(key)
        self.voxels += out.size
        return out

    def __array__(self, *args, **kw):
        raise AssertionError("the whole array was read")


# ------------------------------------------------------------------------------------ preview


def test_preview_size_colours_and_scale_bar(tmp_path):
    lab = five_objects()
    pv = preview(lab, tmp_path / "p.png", voxel_size=(20.0, 10.0, 10.0), n_slices=2, title="t")
    png = read_png(tmp_path / "p.png")
    assert np.array_equal(png, pv.rgb)  # what is returned is what was written, pixel for pixel
    # 10 nm per pixel (no downscaling): two 60 x 90 panels; the picture is at least 560 wide;
    # height = title band (8 + 16 + 4) + caption 16 + panel 60 + gap 6 + footer 30.
    assert png.shape == (140, 560, 3)
    assert [p["index"] for p in pv.panels] == [2, 7]
    assert [(b[2] - b[0], b[3] - b[1]) for b in (p["box"] for p in pv.panels)] == [(60, 90), (60, 90)]
    # every object is drawn in its own colour
    colours = {tuple(c) for c in png.reshape(-1, 3)}
    for i in (3, 8, 21, 10002, 7):
        assert tuple(label_colors([i])[0]) in colours, i
    assert len({tuple(c) for c in label_colors([3, 8, 21, 10002, 7])}) == 5
    # scale bar: a quarter of a 900 nm panel rounds down to 200 nm = 20 pixels of 10 nm
    assert (pv.unit, pv.pixel_size, pv.scale_bar, pv.scale_bar_px) == ("nm", 10.0, 200.0, 20)
    top, left, bottom, right = pv.scale_bar_box
    assert right - left == 20
    row = png[(top + bottom) // 2]
    assert (row[left:right] == 0).all()
    assert (row[left - 1] == 255).all() and (row[right] == 255).all()


def test_preview_of_a_grey_image_with_nan_padding_keeps_its_contrast():
    lab = np.zeros((3, 40, 40), np.uint32)
    lab[:, 10:20, 10:20] = 1
    img = np.random.default_rng(0).random(lab.shape).astype(np.float32)
    clean = preview(lab, image=img).rgb
    img[0, 0, 0] = np.nan                      # every percentile was NaN: black panels
    assert abs(float(preview(lab, image=img).rgb.mean()) - float(clean.mean())) < 1.0


def test_preview_scale_bar_when_downscaled(tmp_path):
    """A 400 x 1000 plane of 3 nm pixels drawn at most 250 pixels wide: 12 nm per picture pixel."""
    lab = np.zeros((4, 400, 1000), np.uint16)
    lab[:, 100:300, 200:700] = 1
    pv = preview(lab, None, voxel_size=(5.0, 3.0, 3.0), n_slices=1, max_size=250)
    assert pv.pixel_size == 12.0
    assert pv.panels[0]["box"][2] - pv.panels[0]["box"][0] == 100
    assert pv.panels[0]["box"][3] - pv.panels[0]["box"][1] == 250
    assert pv.scale_bar == 500.0  # a quarter of 3 µm, rounded down to 1, 2 or 5 x 10^n
    assert pv.scale_bar_px == 42  # 41.7 pixels of 12 nm: within half a pixel
    top, left, bottom, right = pv.scale_bar_box
    row = pv.rgb[(top + bottom) // 2]
    assert right - left == 42 and (row[left:right] == 0).all() and (row[right] == 255).all()


def test_preview_anisotropic_orthoplanes():
    """xz and yz panels are stretched to physical proportions: 10 slices of 40 nm = 40 pixels of 10 nm."""
    lab = five_objects()
    pv = preview(lab, None, voxel_size=(40.0, 10.0, 10.0), planes=("xy", "xz", "yz"), n_slices=2)
    sizes = {p["plane"]: (p["box"][2] - p["box"][0], p["box"][3] - p["box"][1]) for p in pv.panels}
    assert sizes == {"xy": (60, 90), "xz": (40, 90), "yz": (40, 60)}
    assert pv.unit == "nm" and pv.pixel_size == 10.0


def test_preview_reads_only_the_drawn_planes():
    lab, img = Counting(five_objects()), Counting(np.arange(10 * 60 * 90, dtype=np.uint16).reshape(10, 60, 90))
    pv = preview(lab, None, image=img, voxel_size=(10.0, 10.0, 10.0), planes=("xy", "xz"), n_slices=3)
    assert len(pv.panels) == 6
    for a in (lab, img):
        assert len(a.keys) == 6
        assert a.voxels == 3 * 60 * 90 + 3 * 10 * 90
        assert all(sum(isinstance(k, int) for k in key) == 1 for key in a.keys)  # one plane per read
    assert "objects" not in pv.title  # a lazy array is not read whole to count them


def test_preview_of_a_huge_lazy_zarr_is_cheap(tmp_path):
    """A 26 GB (virtual) Zarr volume: three decimated planes are read, nothing else."""
    import zarr
    from panoptem.io import read_image
    path = tmp_path / "huge.zarr"
    z = zarr.create_array(store=str(path), shape=(400, 4096, 4096), chunks=(1, 512, 512), dtype="uint32",
                          fill_value=0)
    for k in (66, 200, 333):  # the planes drawn with n_slices=3
        z[k, 1000:1600, 2000:2800] = 5
    lab = Counting(read_image(path).data)
    pv = preview(lab, tmp_path / "huge.png", voxel_size=(8.0, 4.0, 4.0), n_slices=3, max_size=256)
    assert [p["index"] for p in pv.panels] == [66, 200, 333]
    assert lab.voxels == 3 * 256 * 256
    assert tuple(label_colors([5])[0]) in {tuple(c) for c in pv.rgb.reshape(-1, 3)}
    assert pv.pixel_size == 64.0


def test_preview_refuses_to_overwrite_and_explains_missing_matplotlib(tmp_path, monkeypatch):
    lab = five_objects()
    p = tmp_path / "p.png"
    p.write_bytes(b"keep")
    with pytest.raises(PanoptemError, match="already exists"):
        preview(lab, p)
    assert p.read_bytes() == b"keep"
    preview(lab, p, overwrite=True)
    assert p.read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(PanoptemError, match=r"\.png"):
        preview(lab, tmp_path / "p.jpg")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PanoptemError, match=r"pip install 'panoptem\[report\]'"):
        preview(lab, tmp_path / "q.png")


def test_segment_apis_write_previews(tmp_path, tiny_card):
    from panoptem.inference.segment2d import segment_2d
    from panoptem.inference.segment3d import segment_3d
    vol = np.random.default_rng(0).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    segment_3d(vol, str(tiny_card), preview=tmp_path / "3d.png", voxel_size=(5.0, 5.0, 5.0), min_size=0,
               min_extent=0, orthoplane=True)
    segment_2d(vol[0], str(tiny_card), preview=tmp_path / "2d.png", voxel_size=(5.0, 5.0))
    segment_2d(vol, str(tiny_card), batch=True, preview=tmp_path / "batch.png")
    for name, rows in (("3d.png", 3), ("2d.png", 1), ("batch.png", 1)):
        png = read_png(tmp_path / name)
        assert png.shape[1] >= 560 and png.shape[0] > rows * 64, name
    with pytest.raises(PanoptemError, match="already exists"):  # checked before the network runs
        segment_2d(vol[0], str(tiny_card), preview=tmp_path / "2d.png")


def test_cli_previews(capsys, tmp_path, tiny_card):
    import tifffile
    vol = tmp_path / "vol.tif"
    tifffile.imwrite(vol, np.random.default_rng(1).integers(0, 255, (6, 64, 64), dtype=np.uint8))
    code, out, err = run(capsys, "segment3d", str(vol), "-o", str(tmp_path / "o.zarr"), "--model", str(tiny_card),
                         "--min-size", "0", "--min-extent", "0", "--preview", str(tmp_path / "o.png"))
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["preview"] == str(tmp_path / "o.png")
    assert (tmp_path / "o.png").read_bytes().startswith(PNG_SIGNATURE)
    # an existing preview stops the run before anything is written
    code, out, err = run(capsys, "segment3d", str(vol), "-o", str(tmp_path / "o2.tif"), "--model", str(tiny_card),
                         "--preview", str(tmp_path / "o.png"))
    assert code == 2 and err.startswith("error:") and "already exists" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o2.tif").exists()
    code, out, err = run(capsys, "segment2d", str(vol), "-o", str(tmp_path / "s.tif"), "--model", str(tiny_card),
                         "--preview", str(tmp_path / "s.png"))
    assert code == 0, err
    assert (tmp_path / "s.png").read_bytes().startswith(PNG_SIGNATURE)


# ------------------------------------------------------------------------------------ report


class Page(HTMLParser):
    """Images, links and the table of largest objects of a report."""

    def __init__(self):
        super().__init__()
        self.srcs, self.hrefs, self.headers, self.rows = [], [], [], []
        self._in_objects = self._cell = False
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
        if tag == "a":
            self.hrefs.append(a.get("href", ""))
        if tag == "table":
            self._in_objects = "objects" in (a.get("class") or "").split()
        if self._in_objects and tag == "tr":
            self.rows.append([])
        if self._in_objects and tag in ("td", "th"):
            self._cell, self._text = True, ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_objects = False
        if self._in_objects and tag in ("td", "th"):
            self._cell = False
            self.rows[-1].append(self._text)

    def handle_data(self, data):
        if self._cell:
            self._text += data


def parse(path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    p.headers, p.rows = p.rows[0], p.rows[1:]
    return p


def test_report_table_matches_panoptem_measure(capsys, tmp_path):
    from panoptem.io import write_image, write_labels
    lab = five_objects()
    labels = write_labels(tmp_path / "lab.tif", lab, voxel_size=(20.0, 10.0, 7.5))
    image = write_image(tmp_path / "img.tif", np.random.default_rng(2).integers(0, 255, lab.shape, dtype=np.uint8))
    code, out, err = run(capsys, "measure", str(labels), "-o", str(tmp_path / "m.csv"), "--image", str(image))
    assert code == 0, err
    measured = {r["label"]: r for r in csv.DictReader(open(tmp_path / "m.csv"))}
    code, out, err = run(capsys, "report", str(labels), "--image", str(image), "-o", str(tmp_path / "r.html"),
                         "--top", "4")
    assert code == 0, err
    page = parse(tmp_path / "r.html")
    # self-contained: every picture and link is a data: URI; pictures decode to PNG
    assert len(page.srcs) == 3
    for src in page.srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert page.hrefs and all(h.startswith("data:") for h in page.hrefs)
    # the table: the 4 largest objects, with measure's columns and numbers
    assert page.headers == list(next(iter(measured.values())))
    assert len(page.rows) == 4
    voxels = [int(r[page.headers.index("voxels")]) for r in page.rows]
    assert voxels == sorted((int(r["voxels"]) for r in measured.values()), reverse=True)[:4]
    for row in page.rows:
        ref = measured[row[0]]
        for name, text in zip(page.headers, row):
            assert float(text) == pytest.approx(float(ref[name]), rel=1e-5, abs=1e-9), (row[0], name)
    # the embedded CSV holds every object
    csv_uri = next(h for h in page.hrefs if h.startswith("data:text/csv"))
    rows = list(csv.DictReader(base64.b64decode(csv_uri.split(",", 1)[1]).decode().splitlines()))
    assert {r["label"] for r in rows} == set(measured)


def test_report_blockwise_reads_the_volume_lazily_and_gives_the_same_report(capsys, tmp_path, monkeypatch):
    """`report --blockwise` measures on Dask workers and draws from the Zarr lazily: the same
    pictures and table as the in-memory report. Without it, labels that cannot fit in memory are
    refused up front, naming --blockwise, by `report` and `measure` alike (and by `evaluate`,
    saying to crop)."""
    from panoptem import _memory
    from panoptem.io import write_image, write_labels
    lab = five_objects()
    labels = write_labels(tmp_path / "lab.zarr", lab, voxel_size=(20.0, 10.0, 7.5))
    image = write_image(tmp_path / "img.tif", np.random.default_rng(2).integers(0, 255, lab.shape, dtype=np.uint8))
    pages = []
    for name, extra in (("mem", []), ("blk", ["--blockwise", "--workers", "1", "--block-shape", "4,32,32"])):
        code, out, err = run(capsys, "report", str(labels), "--image", str(image), "-o", str(tmp_path / f"{name}.html"),
                             "--top", "10", *extra)
        assert code == 0, err
        pages.append(parse(tmp_path / f"{name}.html"))
    mem, blk = pages
    assert mem.srcs[0] == blk.srcs[0] and mem.srcs[2] == blk.srcs[2]  # the planes, the objects per slice
    assert blk.headers == mem.headers and len(blk.rows) == len(mem.rows) == 5
    for a, b in zip(mem.rows, blk.rows):
        assert [float(x) for x in b] == pytest.approx([float(x) for x in a], rel=1e-5, abs=1e-9)
    monkeypatch.setattr(_memory, "physical_memory", lambda: 1000)  # a machine of 1 kB
    for cmd, out in (("report", "r.html"), ("measure", "m.csv")):
        code, _, err = run(capsys, cmd, str(labels), "-o", str(tmp_path / out))
        assert code == 2 and "--blockwise" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / out).exists()
    code, _, err = run(capsys, "evaluate", str(labels), str(labels))
    assert code == 2 and "crop both" in err and len(err.strip().splitlines()) == 1, err


def test_report_2d_pdf_and_refusals(tmp_path):
    lab = five_objects()[5]
    out = report(lab, tmp_path / "r.pdf", voxel_size=(4.0, 4.0))
    assert out.read_bytes().startswith(b"%PDF")
    with pytest.raises(PanoptemError, match="already exists"):
        report(lab, tmp_path / "r.pdf")
    with pytest.raises(PanoptemError, match=r"\.html or \.pdf"):
        report(lab, tmp_path / "r.txt")
    with pytest.raises(PanoptemError, match="needs a file name ending in .pdf"):
        report(lab, tmp_path / "r.html", format="pdf")
    page = parse(report(lab, tmp_path / "r2.html", top=100))
    assert len(page.rows) == 5 and "area_nm2" in page.headers


def test_report_command_refuses_to_write_over_its_input(capsys, tmp_path):
    from panoptem.io import write_labels
    p = write_labels(tmp_path / "lab.tif", five_objects())
    code, out, err = run(capsys, "report", str(p), "-o", str(tmp_path / "r"), "--format", "pdf")
    assert code == 0, err
    assert json.loads(out)["output"].endswith("r.pdf")
    code, out, err = run(capsys, "report", str(p), "-o", str(p), "--overwrite")
    assert code == 2 and err.startswith("error:")


def test_objects_per_slice_against_brute_force():
    rng = np.random.default_rng(3)
    lab = rng.integers(0, 6, (5, 7, 9)).astype(np.uint32) * 1000
    counts = objects_per_slice(lab)
    for axis in range(3):
        expected = [len(set(np.take(lab, i, axis=axis).ravel()) - {0}) for i in range(lab.shape[axis])]
        assert counts[axis].tolist() == expected
    assert [c.tolist() for c in objects_per_slice(lab[0])] == [
        [len(set(r) - {0}) for r in lab[0]], [len(set(c) - {0}) for c in lab[0].T]]


class _Reads:
    """A lazy label array (a Zarr's chunks) that records the size of every read."""

    def __init__(self, arr):
        self.arr, self.shape, self.dtype, self.chunks = arr, arr.shape, arr.dtype, arr.chunks
        self.reads = []

    def __getitem__(self, key):
        out = np.asarray(self.arr[key])
        self.reads.append(out.nbytes)
        return out


@pytest.mark.parametrize("shape, chunks", [((13, 40, 50), (4, 16, 16)), ((3, 70, 33), (3, 9, 33)),
                                           ((70, 90), (16, 32))])
def test_objects_per_slice_of_a_lazy_volume_reads_it_a_few_chunks_at_a_time(tmp_path, monkeypatch, shape, chunks):
    """A label volume larger than memory is counted from reads of whole chunks under a byte
    budget (here a few chunks), with the counts of the whole array."""
    import zarr

    from panoptem.reporting import _report
    rng = np.random.default_rng(7)
    lab = (rng.integers(0, 40, shape) * (rng.random(shape) < 0.3)).astype(np.uint32) * 3
    arr = zarr.create_array(str(tmp_path / "l.zarr"), shape=shape, chunks=chunks, dtype="uint32")
    arr[...] = lab
    budget = 3 * int(np.prod(chunks)) * 4
    monkeypatch.setattr(_report, "_TILE_BYTES", budget)
    lazy = _Reads(arr)
    ids = np.unique(lab)[1:]
    got = objects_per_slice(lazy, ids)
    assert [c.tolist() for c in got] == [c.tolist() for c in objects_per_slice(lab)]
    assert sum(lazy.reads) == lab.nbytes and len(lazy.reads) >= 3 and max(lazy.reads) <= budget, lazy.reads


# ------------------------------------------------------------------------------------ evaluate --report


def test_evaluation_report_pictures_each_kind_of_error(tmp_path):
    from test_evaluate_errors import every_error
    pred, gt = every_error()
    pred, gt = np.stack([pred] * 3), np.stack([gt] * 3)
    img = np.random.default_rng(4).integers(0, 255, gt.shape, dtype=np.uint8)
    evaluation_report(pred, gt, tmp_path / "e.html", image=img, n_examples=1)
    text = (tmp_path / "e.html").read_text()
    page = parse_any(tmp_path / "e.html")
    # one picture per kind (false objects, misses, splits, merges), all embedded
    assert len(page.srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in page.srcs)
    for heading in ("False objects: 1", "Misses: 1", "Splits: 2", "Merges: 1"):
        assert heading in text
    assert "1 more not shown" in text  # the second split
    assert "ground truth label 1 (600 voxels, slice z = 0); pieces: 11, 12" in text


def parse_any(path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_evaluate_command_modes_and_report(capsys, tmp_path):
    from panoptem.io import write_labels
    from test_evaluate_errors import stack_2d_results
    pred, gt = stack_2d_results()
    pp, gp = write_labels(tmp_path / "p.tif", pred), write_labels(tmp_path / "g.tif", gt)
    code, out, err = run(capsys, "evaluate", str(pp), str(gp), "--per-slice")
    r = json.loads(out)
    assert code == 0 and (r["n_pred"], r["n_gt"], r["tp_50"]) == (3, 3, 2)
    assert r["errors"]["false_objects"] == 1 and r["errors"]["misses"] == 1
    code, out, err = run(capsys, "evaluate", str(pp), str(gp), "--per-slice", "--ignore-smaller", "10",
                         "--report", str(tmp_path / "e.html"))
    r = json.loads(out)
    assert code == 0, err
    assert (r["n_gt"], r["n_ignored_gt"], r["fn_50"], r["report"]) == (2, 1, 0, str(tmp_path / "e.html"))
    page = parse_any(tmp_path / "e.html")
    assert len(page.srcs) == 1  # the false object; the missed object was ignored
    code, out, err = run(capsys, "evaluate", str(pp), str(gp), "--report", str(tmp_path / "e.html"))
    assert code == 2 and "already exists" in err
