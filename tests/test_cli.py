"""Command-line behaviour: outputs, and one clear line for every user error."""
import json

import numpy as np
import tifffile

from panoptem.cli import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_input_is_one_line_error(capsys, tmp_path):
    code, out, err = run(capsys, "segment2d", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "o.tif"))
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_model_is_one_line_error(capsys, tmp_path):
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.zeros((64, 64), np.uint8))
    code, _, err = run(capsys, "segment2d", str(img), "-o", str(tmp_path / "o.tif"), "--model", "Nope")
    assert code == 2 and "Unknown model" in err and "Traceback" not in err


def test_impossible_parameter_is_one_line_error(capsys, tmp_path, tiny_card):
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.zeros((64, 64), np.uint8))
    code, _, err = run(capsys, "segment2d", str(img), "-o", str(tmp_path / "o.tif"), "--model", str(tiny_card),
                       "--downsampling", "3")
    assert code == 2 and "downsampling" in err and "Traceback" not in err
    code, _, err = run(capsys, "segment2d", str(img), "-o", str(tmp_path / "o.tif"), "--model", str(tiny_card),
                       "--confidence_thr", "1.5")
    assert code == 2 and "confidence_thr" in err


def test_segment2d_slice_of_volume_and_no_overwrite(capsys, tmp_path, tiny_card):
    vol = tmp_path / "vol.tif"
    tifffile.imwrite(vol, np.random.default_rng(0).integers(0, 255, (5, 64, 96), dtype=np.uint8))
    out = tmp_path / "lab.tif"
    code, stdout, err = run(capsys, "segment2d", str(vol), "-o", str(out), "--model", str(tiny_card),
                            "--slice", "2", "--plane", "xz")
    assert code == 0, err
    rec = json.loads(stdout.strip().splitlines()[-1])
    assert rec["shape"] == [5, 96]
    assert tifffile.imread(out).shape == (5, 96)
    code, _, err = run(capsys, "segment2d", str(vol), "-o", str(out), "--model", str(tiny_card))
    assert code == 2 and "exists" in err
    code, _, err = run(capsys, "segment2d", str(vol), "-o", str(vol), "--model", str(tiny_card), "--overwrite")
    assert code == 2  # never overwrite the input
    assert tifffile.imread(vol).shape == (5, 64, 96)


def test_segment2d_xz_slice_is_averaged_as_the_3d_stack_does(capsys, tmp_path, monkeypatch):
    # a 5 nm model, a volume told 2.5 nm: the xz slice is given as the mean of its pair of y
    # planes, as the 3D xz stack gives it; with --no-resample, the slice itself
    from conftest import make_tiny_card
    from panoptem.inference import segment2d
    card = make_tiny_card(tmp_path, voxel_size_nm=5.0)
    vol = tmp_path / "vol.tif"
    tifffile.imwrite(vol, np.random.default_rng(0).integers(0, 255, (20, 64, 96), dtype=np.uint8))
    strides, take = [], segment2d.take_plane
    monkeypatch.setattr(segment2d, "take_plane", lambda *a, **k: (strides.append(k.get("stride", 1)), take(*a, **k))[1])
    for extra, want in (((), 2), (("--no-resample",), 1)):
        out = tmp_path / f"lab{want}.tif"
        code, _, err = run(capsys, "segment2d", str(vol), "-o", str(out), "--model", str(card), "--slice", "3",
                           "--plane", "xz", "--pixel-size", "2.5", *extra)
        assert code == 0, err
        assert strides[-1] == want and tifffile.imread(out).shape == (20, 96)


def test_segment2d_batch(capsys, tmp_path, tiny_card):
    vol = tmp_path / "vol.tif"
    tifffile.imwrite(vol, np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8), photometric="minisblack")
    code, stdout, err = run(capsys, "segment2d", str(vol), "-o", str(tmp_path / "b.tif"), "--model",
                            str(tiny_card), "--batch", "--unique-ids")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["shape"] == [3, 64, 64]


def test_model_list_and_info(capsys, tiny_card):
    code, out, _ = run(capsys, "model", "info", str(tiny_card))
    assert code == 0
    assert "mitochondria (instance)" in out and "patch size must be divisible by: 32" in out


def test_measure_and_evaluate_commands(capsys, tmp_path):
    from panoptem.io import write_labels
    lab = np.zeros((10, 20, 20), np.uint32)
    lab[2:6, 2:8, 2:10] = 1
    lab[5:9, 10:18, 10:18] = 2
    p = write_labels(tmp_path / "lab.tif", lab, voxel_size=(10.0, 5.0, 5.0))
    code, out, err = run(capsys, "measure", str(p), "-o", str(tmp_path / "t.csv"))
    assert code == 0, err
    rec = json.loads(out.strip().splitlines()[-1])
    assert rec["objects"] == 2 and rec["voxel_size_nm"] == [10.0, 5.0, 5.0]
    assert "voxel size unknown" not in err
    import csv
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert float(rows[0]["volume_nm3"]) == 4 * 6 * 8 * 10 * 5 * 5
    bare = write_labels(tmp_path / "bare.tif", lab)  # no voxel size: counted in voxels, and said so
    code, out, err = run(capsys, "measure", str(bare), "-o", str(tmp_path / "v.csv"))
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["voxel_size_nm"] is None
    assert "note: voxel size unknown" in err and "--voxel-size Z,Y,X" in err
    assert float(next(csv.DictReader(open(tmp_path / "v.csv")))["volume_nm3"]) == 4 * 6 * 8
    code, out, err = run(capsys, "evaluate", str(p), str(p))
    assert code == 0 and json.loads(out)["f1_50"] == 1.0
    # a stack of 2D images measured slice by slice: objects in every slice they cross, in 2D
    code, out, err = run(capsys, "measure", str(p), "-o", str(tmp_path / "s.csv"), "--per-slice")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert json.loads(out.strip().splitlines()[-1])["objects"] == 8 == len(rows)
    assert [(r["slice"], r["label"]) for r in rows[:2]] == [("2", "1"), ("3", "1")]
    assert float(rows[0]["area_nm2"]) == 6 * 8 * 5 * 5 and "volume_nm3" not in rows[0]
    code, out, err = run(capsys, "measure", str(p), "-o", str(tmp_path / "b.csv"), "--per-slice", "--blockwise")
    assert code != 0 and "leave out --blockwise" in err and not (tmp_path / "b.csv").exists()


def test_segment3d_hdf5_key_streams_to_zarr(capsys, tmp_path, tiny_card):
    import h5py
    src = tmp_path / "vol.h5"
    with h5py.File(src, "w") as f:
        f["raw"] = np.random.default_rng(1).integers(0, 255, (6, 64, 64), dtype=np.uint8)
        f["other"] = np.zeros((2, 2), np.uint8)
    code, _, err = run(capsys, "segment3d", str(src), "-o", str(tmp_path / "o.zarr"), "--model", str(tiny_card))
    assert code == 2 and "key" in err.lower()
    code, out, err = run(capsys, "segment3d", str(src), "--key", "raw", "-o", str(tmp_path / "o.zarr"),
                         "--model", str(tiny_card), "--min-size", "0", "--min-extent", "0")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["shape"] == [6, 64, 64]


def test_segment3d_interrupted_run_resumes_from_its_cache(capsys, tmp_path, tiny_card, monkeypatch):
    vol = tmp_path / "vol.tif"
    tifffile.imwrite(vol, np.random.default_rng(2).integers(0, 255, (12, 64, 64), dtype=np.uint8),
                     photometric="minisblack")
    out = tmp_path / "lab.tif"
    args = ("segment3d", str(vol), "-o", str(out), "--model", str(tiny_card), "--batch-size", "4",
            "--min-size", "0", "--min-extent", "0")
    from panoptem.inference import segment3d as s3
    real = s3.Predictor.predict
    calls = []

    def dying(self, planes, *a, **k):
        calls.append(len(planes))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, planes, *a, **k)

    monkeypatch.setattr(s3.Predictor, "predict", dying)
    code, _, err = run(capsys, *args)
    assert code == 130 and "resume" in err and not out.exists()
    cache = tmp_path / ".lab.tif.panoptem-cache"
    assert cache.exists()
    calls.clear()
    monkeypatch.setattr(s3.Predictor, "predict", lambda self, planes, *a, **k: calls.append(len(planes))
                        or real(self, planes, *a, **k))
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert calls == [4, 4]  # the first batch came from the cache
    assert out.exists() and not cache.exists()


def test_evaluate_command_scores_a_prediction_against_different_truth(capsys, tmp_path):
    """Hand-counted numbers: one exact match, one shifted object (IoU 2/3), one miss, one false object."""
    gt = np.zeros((20, 40), np.uint16)
    gt[0:10, 0:10] = 1        # 100 px, found exactly
    gt[0:10, 20:30] = 2       # 100 px, found shifted by 2 columns: 80 px overlap, IoU 80/120
    gt[12:20, 0:5] = 3        # 40 px, missed
    pred = np.zeros((20, 40), np.uint32)
    pred[0:10, 0:10] = 7
    pred[0:10, 22:32] = 8
    pred[12:20, 30:40] = 9    # 80 px on background: a false object
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    code, out, err = run(capsys, "evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif"))
    assert code == 0, err
    r = json.loads(out)
    assert (r["n_pred"], r["n_gt"]) == (3, 3)
    assert (r["tp_50"], r["fp_50"], r["fn_50"]) == (2, 1, 1)
    assert (r["tp_75"], r["fp_75"], r["fn_75"]) == (1, 2, 2)
    assert r["precision_50"] == r["recall_50"] == r["f1_50"] == 2 / 3
    assert r["f1_75"] == 1 / 3
    assert abs(r["foreground_iou"] - 180 / 340) < 1e-12           # (100 + 80) / (280 + 240 - 180)
    assert abs(r["sq"] - (1 + 2 / 3) / 2) < 1e-12 and abs(r["rq"] - 2 / 3) < 1e-12
    assert abs(r["pq"] - 5 / 9) < 1e-12
    assert abs(r["mean_ap"] - (4 * 2 / 4 + 6 * 1 / 5) / 10) < 1e-12  # TP 2 up to IoU 0.65, then 1
    assert abs(r["matched_iou_mean"] - 5 / 6) < 1e-12
    assert r["errors"]["false_objects"] == 1 and r["errors"]["misses"] == 1
    assert r["errors"]["splits"] == r["errors"]["merges"] == 0
    # ignoring ground truth under 50 px removes the miss: recall 1, precision 2/3
    code, out, err = run(capsys, "evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif"),
                         "--ignore-smaller", "50")
    assert code == 0, err
    r = json.loads(out)
    assert (r["n_gt"], r["n_ignored_gt"], r["n_ignored_pred"]) == (2, 1, 0)
    assert r["recall_50"] == 1.0 and r["precision_50"] == 2 / 3 and r["f1_50"] == 0.8


def test_segment3d_two_class_model_writes_one_file_per_class(capsys, tmp_path):
    from _models import save_two_class_model
    from test_segment3d import two_class_phantom

    from panoptem import evaluate
    from panoptem.io import read_image
    vol, truth = two_class_phantom()
    src = tmp_path / "vol.tif"
    tifffile.imwrite(src, vol)
    card = save_two_class_model(tmp_path)
    code, out, err = run(capsys, "segment3d", str(src), "-o", str(tmp_path / "seg.tif"), "--model", str(card),
                         "--min-size", "200", "--min-extent", "3", "--return-panoptic")
    assert code == 0, err
    recs = [json.loads(line) for line in out.strip().splitlines()]
    assert [(r.get("class"), r.get("stack"), r.get("objects")) for r in recs] == [
        ("mitochondria", None, 2), ("nucleus", None, 2), (None, "xy", None)]
    assert sorted(p.name for p in tmp_path.glob("seg*")) == ["seg_mitochondria.tif", "seg_nucleus.tif",
                                                              "seg_xy.tif"]
    for cls, name in ((1, "mitochondria"), (2, "nucleus")):
        lab = np.asarray(read_image(tmp_path / f"seg_{name}.tif").data)
        assert set(np.unique(lab)) == {0, 1, 2} and evaluate(lab, truth[cls])["f1_50"] == 1.0
    panoptic = np.asarray(read_image(tmp_path / "seg_xy.tif").data)
    assert set(np.unique(panoptic)) == {0, 10001, 10002, 20001, 20002}


def test_model_info_prints_card_info(capsys, tiny_card):
    from panoptem.models.card import card_info, load_card
    code, out, _ = run(capsys, "model", "info", str(tiny_card))
    assert code == 0 and out == card_info(load_card(tiny_card))
    assert out.splitlines()[0] == "name: tiny" and out.endswith("(state_dict)\n")


def test_training_patch_and_measure_options_come_from_the_schema():
    """Every option of these commands is generated from its schema: names, defaults and help."""
    import typer.main

    from panoptem.cli import app
    from panoptem.params import FinetuneParams, MeasureParams, PatchParams, TrainParams, VolumeTrainParams
    group = typer.main.get_command(app)
    for cmd, cls, exclude in (("train-volume", VolumeTrainParams, {"gamma"}), ("patches", PatchParams, set()),
                              ("finetune", FinetuneParams, set()), ("train", TrainParams, set()),
                              ("measure", MeasureParams, set()), ("report", MeasureParams, set())):
        params = {p.name: p for p in group.commands[cmd].params}
        for name, field in cls.model_fields.items():
            if name in exclude:
                assert name not in params, (cmd, name)
                continue
            opt = params[name]
            assert "--" + name.replace("_", "-") in opt.opts, (cmd, name)
            default = ",".join(map(str, field.default)) if isinstance(field.default, list) else field.default
            assert opt.default == default and field.description in opt.help, (cmd, name)
    assert "-n" in {o for p in group.commands["patches"].params for o in p.opts}  # the short name stays
