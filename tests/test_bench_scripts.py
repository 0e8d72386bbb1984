"""The benchmark scripts under bench/ still run against the package as it is (small inputs)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(*args, timeout=600) -> list[str]:
    """The JSON lines a script printed (it must exit with 0)."""
    r = subprocess.run([sys.executable, *map(str, args)], cwd=BENCH, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [line for line in r.stdout.splitlines() if line.startswith("{")]


def test_gpu_check_script_runs_every_check_on_the_cpu(tmp_path):
    """bench_gpu.py is run on GPU machines only now and then: on the CPU, against the CPU, every
    check must pass (it compares each path with the same path, so the tolerance holds)."""
    out = tmp_path / "gpu.jsonl"
    printed = _run(BENCH / "bench_gpu.py", "--device", "cpu", "--shape", "8,192,256", "--large", "384",
                   "--iterations", "2", "--repeat", "1", "--out", out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]  # whole (printed lines may be cut)
    assert len(lines) == len(printed)
    checks = {r["check"]: r for r in lines if r["check"] != "bench_line"}
    assert set(checks) == {"machine", "batch", "network", "xy", "orthoplane", "tta", "large_2d", "finetune",
                           "blockwise", "bench"}
    assert all(r["ok"] for r in checks.values()), [r for r in checks.values() if not r["ok"]]
    assert checks["xy"]["cpu_objects"]["mitochondria"] > 0  # the comparisons compare objects
    assert checks["xy"]["fp32"]["identical"] and checks["blockwise"]["foreground_iou"] > 0.99
    assert checks["bench"]["orthoplane"]["same_labels_as_staged"]


@pytest.mark.slow
def test_behind_network_script_runs(lucchi):
    (line,) = _run(BENCH / "bench_behind_network.py", "--lucchi", lucchi, "--z", "135:141", "--repeat", "1",
                   "--mode", "xy")
    rec = json.loads(line)
    assert rec["shape"] == [6, 768, 1024] and rec["seconds"] > 0 and rec["objects"]["mitochondria"] > 0


def test_gpu_forward_script_runs_on_the_cpu(tmp_path):
    """bench_gpu_forward.py, like bench_gpu.py, runs on GPU machines only now and then: on the
    CPU every variant must run (no CUDA graph there) and each call must be taken apart."""
    prof = tmp_path / "profile.txt"
    lines = [json.loads(line) for line in _run(BENCH / "bench_gpu_forward.py", "--device", "cpu", "--shape",
                                                "4,64,96", "--profile", prof, "--repeat", "1")]
    assert not [r for r in lines if "error" in r], [r for r in lines if "error" in r]
    timed = {(r["plane"], r["variant"]) for r in lines if r["variant"] != "steps"}
    variants = {"fp16", "fp32", "fp16_nchw", "fp16_nchw_weights", "fp16_unfolded", "fp16_up_nchw", "predict"}
    assert timed == {(p, v) for p in ("xy", "xz", "yz") for v in variants}
    steps = {r["plane"]: r["ms"] for r in lines if r["variant"] == "steps"}
    assert set(steps) == {"xy", "xz", "yz"} and all(s["forward"] > 0 for s in steps.values())
    assert "one xz network call" in prof.read_text()


@pytest.mark.slow
def test_thin_padding_script_runs(lucchi):
    lines = [json.loads(line) for line in _run(BENCH / "bench_thin_padding.py", "--lucchi", lucchi, "--planes", "3",
                                               "--rounds", "1")]
    assert [(r["round"], r["padding_factor"], r["padded_rows"]) for r in lines] == [
        (0, pf, rows) for pf, rows in ((32, 192), (16, 176), (8, 168))]
    assert all(0.3 < r["foreground_iou_vs_truth"] <= 1 for r in lines)
    assert all(0.3 < r["f1_50_per_plane"] <= 1 and r["objects_truth"] > 3 for r in lines)
    yz = [json.loads(line) for line in _run(BENCH / "bench_thin_padding.py", "--lucchi", lucchi, "--planes", "2",
                                            "--axis", "yz", "--rounds", "1")]
    assert [r["padding_factor"] for r in yz] == [32, 16, 8] and "2 yz planes" in yz[0]["input"]
    crops = [json.loads(line) for line in _run(BENCH / "bench_thin_padding.py", "--lucchi", lucchi, "--xy-crops",
                                               "--z", "150:156")]
    assert [r["input_multiple"] for r in crops] == [32, 16] * 3
    assert [r["input"] for r in crops[:2]] == ["Lucchi z150-155 cropped to [6, 760, 1000]"] * 2
    assert all(0.5 < r["f1_50_2d"] <= 1 and 0.5 < r["foreground_iou_3d"] <= 1 for r in crops)


def test_context_slices_network_starts_as_the_single_slice_one():
    """train_context_slices.py's 2.5D network starts from a 1-channel network's weights with zeros
    on the neighbours' channels: the same outputs whatever the neighbours hold."""
    import torch
    sys.path.insert(0, str(BENCH))
    try:
        import train_context_slices as tcs
    finally:
        sys.path.remove(str(BENCH))
    from panoptem.models.architecture import architecture_config, build_model
    arch = architecture_config({"widths": [8, 8, 8, 8, 8], "decoder_channels": 8, "head_channels": 8})
    one = build_model(arch).eval()
    three = tcs.build_with_channels(1)(arch)
    three.load_state_dict(tcs.inflated_state(one.state_dict(), 1))
    three.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = one(x[:, 1:2]), three(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert three.stem[0].weight.shape[1] == 3 and not three.stem[0].weight[:, [0, 2]].any()


@pytest.mark.slow
def test_context_slices_script_trains_and_scores(lucchi, tmp_path):
    out = tmp_path / "levers.jsonl"
    _run(BENCH / "train_context_slices.py", "--lucchi", lucchi, "--run-dir", tmp_path / "run", "--iterations", "2",
         "--validate-every", "2", "--val-slices", "150:158", "--out", out)
    rec = json.loads(out.read_text())
    import cc3d
    import tifffile
    mask = tifffile.imread(Path(lucchi) / "training_mask.tif", key=range(150, 158)) > 0
    sizes = np.bincount(cc3d.connected_components(mask, connectivity=6).ravel())[1:]
    gt2d = tifffile.imread(Path(lucchi) / "training_instances2d.tif", key=range(150, 158))
    objects_2d = sum(np.count_nonzero(np.unique(s)) for s in gt2d)
    assert rec["kept_step"] == 2 and len(rec["val3d_f1_during"]) == 1 and rec["n_gt_3d"] == (sizes >= 500).sum()
    assert 0.5 < rec["foreground_iou_3d"] <= 1 and 0.5 < rec["f1_50_2d"] <= 1 and rec["n_gt_2d"] == objects_2d
    _run(BENCH / "train_context_slices.py", "--lucchi", lucchi, "--score", tmp_path / "run" / "best.pt",
         "--val-slices", "150:154", "--out", tmp_path / "scored.jsonl")
    scored = json.loads((tmp_path / "scored.jsonl").read_text())
    assert scored["data"] == "lucchi z150-153 (never trained on)" and 0.5 < scored["foreground_iou_3d"] <= 1


@pytest.mark.slow
def test_object_confidence_script_runs(lucchi, tmp_path):
    lines = [json.loads(line) for line in _run(BENCH / "object_confidence.py", "--lucchi", lucchi, "--z", "150:160")]
    objects, summary = lines[:-1], lines[-1]
    assert summary["objects"] == len(objects) > 3 and summary["true"] + summary["false"] == len(objects)
    assert all(0 < r["mean"] <= 1 and r["voxels"] > 0 for r in objects)
    assert summary["mean_below_0.92"]["true"] + summary["mean_below_0.92"]["false"] == sum(
        r["mean"] < 0.92 for r in objects)


@pytest.mark.slow
def test_pixel_range_script_gives_the_network_the_pixels_asked(lucchi):
    lines = [json.loads(s) for s in _run(BENCH / "pixel_range.py", "--lucchi", lucchi, "--block", "135:141",
                                         "--models", "MitoLite_v1", "--network-nm", "5,10")]
    assert [r["network_pixel_nm"] for r in lines] == [5.0, 10.0]
    assert all(0 < r["foreground_iou"] <= 1 and r["n_gt"] > 0 for r in lines)


@pytest.mark.slow
def test_coarse_volume_script_scores_both_runs(lucchi):
    lines = [json.loads(s) for s in _run(BENCH / "blockwise_coarse.py", "--lucchi", lucchi, "--block", "135:139",
                                         "--reduce", "3", "--workers", "1")]
    whole, blocks = lines
    assert whole["network_pixel_nm"] == blocks["network_pixel_nm"] == [10.0, 10.0] and blocks["blocks"] == 6
    assert all(0.5 < r["foreground_iou"] <= 1 and r["n_gt"] > 0 for r in lines)


def test_release_script_writes_the_measured_pixel_range(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from release_mitolite import publish

    from panoptem.models.card import load_card
    zoo = Path(__file__).resolve().parents[1] / "src" / "panoptem" / "models" / "zoo"
    card = load_card(publish(zoo / "MitoLite_v1.pt", "again", "d", 5.0, out_dir=tmp_path, pixel_range_nm=(6.0, 10.0)))
    assert card.pixel_range_nm == (6.0, 10.0) and card.voxel_size_nm == 5.0
    assert load_card(publish(zoo / "MitoLite_v1.pt", "plain", "d", 5.0, out_dir=tmp_path)).pixel_range_nm is None


def test_intensity_script_times_the_sampling_of_a_lazy_tiff(tmp_path):
    import numpy as np
    import tifffile
    vol = np.random.default_rng(1).integers(10, 200, (12, 96, 128), dtype=np.uint8)
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, vol, compression="zlib", rowsperstrip=48)
    out = tmp_path / "r.jsonl"
    (line,) = _run(BENCH / "bench_intensity.py", path, "--repeat", "2", "--out", out)
    rec = json.loads(out.read_text())
    assert json.loads(line) == rec
    assert rec["lazy"] == "StoreArray" and rec["chunks"] == [1, 48, 128] and rec["shape"] == [12, 96, 128]
    assert len(rec["runs_s"]) == 2 and rec["read_boxes_s"] > 0
    from panoptem.inference.preprocess import intensity_range
    assert rec["range"] == list(intensity_range(vol))


@pytest.mark.slow
def test_intensity_sampling_script_scores_both_samplings(lucchi):
    lines = [json.loads(s) for s in _run(BENCH / "intensity_sampling.py", "--lucchi", lucchi, "--crops", "3")]
    assert [r["sampling"] for r in lines] == ["panoptem (slabs)", "4 x 4 x 4 cubes"]
    slabs, cubes = lines
    assert slabs["crops"] == 4 and slabs["slices_read_whole"] == 16 and cubes["slices_read_whole"] == 124
    assert all(0 <= r["low_error_mean"] <= r["low_error_max"] < 20 for r in lines)


def test_label_grid_script_scores_both_grids(lucchi):
    lines = [json.loads(s) for s in _run(BENCH / "label_grid.py", "--lucchi", lucchi, "--z", "140:150")]
    fine, coarse, between = lines
    assert fine["grid"].startswith("input grid") and coarse["grid"].startswith("network grid")
    assert all(0.5 < r["foreground_iou"] <= 1 and r["n_gt"] > 0 for r in (fine, coarse))
    assert 0.9 < between["foreground_iou"] < 1  # the outlines move, the objects stay


def test_block_means_are_the_means_of_each_2_x_2_block(monkeypatch):
    import numpy as np
    monkeypatch.syspath_prepend(str(BENCH))
    from label_grid import block_means
    vol = np.arange(2 * 5 * 4, dtype=np.uint8).reshape(2, 5, 4)  # an odd row count: the last row is cut
    out = block_means(vol)
    assert out.shape == (2, 2, 2) and out.dtype == np.uint8
    assert out[1, 1, 0] == round(float(vol[1, 2:4, 0:2].mean()))


def test_link_scale_script_links_its_tubes():
    """bench_link_scale.py generates tubes through every block, some cut by a face along x, and
    links them on the client as a blockwise run does: each tube one object, each cut plane of a
    tube one 2D object (the numbers follow from the generated grid)."""
    lines = [json.loads(line) for line in _run(BENCH / "bench_link_scale.py", "--pieces", "3e4,1e5",
                                                "--per-plane", "16")]
    assert len(lines) == 2
    for r in lines:
        gz, gy, gx = (n // s for n, s in zip(r["shape"], (64, 1024, 1024)))
        depth, cut = r["shape"][0], int(16 * 0.1)  # the default --split: 1 tube of 16 per block
        pairs = gx // 2  # blocks joined across a face along x, per row
        assert r["blocks"] == gz * gy * gx and r["pieces"] == depth * 16 * gy * gx
        assert r["objects_2d"] == r["pieces"] - depth * gy * pairs * cut
        assert r["objects"] == gy * (gx * 16 - pairs * cut), r
        assert r["peak_rss_above_start_mb"] > 0 and r["solve_s"] > 0
    assert lines[1]["blocks"] > lines[0]["blocks"] > 8  # several blocks along every axis


@pytest.mark.slow
def test_min_piece_area_script_measures_every_area_it_is_given(lucchi):
    """Its 0 row keeps every piece (empanada's figure), not the default 40 the run applies."""
    rows = {r["min_piece_area"]: r for r in map(json.loads, _run(BENCH / "min_piece_area.py", "--lucchi", lucchi,
                                                                 "--areas", "0,40"))}
    assert rows[0]["objects"] > rows[40]["objects"] and rows[0]["f1_50"] < rows[40]["f1_50"]


def test_tile_context_script_compares_both_contexts_with_one_pass(lucchi):
    lines = [json.loads(x) for x in _run(BENCH / "tile_context.py", "--lucchi", lucchi, "600", "--tiles", "256")]
    assert [(r["tile"], r.get("context")) for r in lines] == [(0, None), (256, "plane"), (256, "own")]
    plane, own = lines[1:]
    assert plane["default"] and not own["default"]
    assert plane["foreground_agreement"] > 0.99 and own["foreground_agreement"] > 0.98
    assert plane["mean_abs_difference"] < own["mean_abs_difference"]  # the plane's context: nearer the one pass


def test_framed_thin_script_finds_nothing_in_the_frame_in_either_engine(lucchi):
    lines = [json.loads(x) for x in _run(BENCH / "framed_thin.py", "--lucchi", lucchi, "--z", "135:143",
                                         "--crop", "0:256,0:256", "--planes", "xz", "--blockwise")]
    assert [(r["plane"], r["engine"]) for r in lines] == [("xz", "memory"), ("xz", "blockwise")]
    assert all(r["voxels_in_frame"] == 0 and r["shape"] == [8, 336, 336] for r in lines)
    assert lines[0]["foreground_iou"] > 0.98 and lines[1]["foreground_iou"] > 0.9
