"""Training from an image volume and its labels: the command, resuming, schedule options."""
import json

import numpy as np
import pytest
import tifffile
import torch

from panoptem.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: runs compared step by step must do the same arithmetic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def disc_volume(n=6, size=64, seed=0):
    """Dark discs on a bright background, new positions every slice; 2D instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    img = np.full((n, size, size), 200, np.uint8)
    lab = np.zeros((n, size, size), np.uint32)
    for z in range(n):
        for k in range(3):
            cy, cx = rng.integers(10, size - 10, 2)
            d = (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(5, 9)) ** 2
            img[z][d], lab[z][d] = 50, k + 1
    return img, lab


@pytest.fixture
def volume_files(tmp_path):
    img, lab = disc_volume()
    tifffile.imwrite(tmp_path / "image.tif", img)
    tifffile.imwrite(tmp_path / "labels.tif", lab)
    return tmp_path / "image.tif", tmp_path / "labels.tif"


def train_volume(capsys, files, out, *extra):
    args = ["train-volume", str(files[0]), str(files[1]), "-o", str(out), "--train-slices", "0:4",
            "--val-slices", "4:6", "--batch-size", "2", "--patch-size", "64", "--device", "cpu", *extra]
    code = main(args)
    stdout, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(stdout.strip().splitlines()[-1]), err


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_train_volume_writes_weights_checkpoint_and_log(capsys, tmp_path, volume_files):
    from panoptem.models.architecture import architecture_config, build_model
    rec, _ = train_volume(capsys, volume_files, tmp_path / "run", "--iterations", "3")
    out = tmp_path / "run"
    assert rec["weights"] == str(out / "weights.pt")
    blob = torch.load(out / "weights.pt", weights_only=True)
    assert blob["architecture"] == architecture_config({"num_classes": 1})
    build_model(blob["architecture"]).load_state_dict(blob["state_dict"])
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["iterations"] == 3 and cfg["batch_size"] == 2 and cfg["patch_size"] == 64
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and "val_iou" in last   # validated on the held-out slices at the end


def test_resumed_run_equals_an_uninterrupted_one(capsys, tmp_path, volume_files):
    """Stopped after 2 of 4 steps and run again: the same weights as 4 steps in one go (model,
    optimiser, schedule and random states all come back from the checkpoint)."""
    sched = ("--schedule-steps", "4")
    train_volume(capsys, volume_files, tmp_path / "once", "--iterations", "4", *sched)
    train_volume(capsys, volume_files, tmp_path / "twice", "--iterations", "2", *sched)
    _, err = train_volume(capsys, volume_files, tmp_path / "twice", "--iterations", "4", *sched)
    assert "resumed from step 2" in err
    a, b = weights(tmp_path / "once" / "weights.pt"), weights(tmp_path / "twice" / "weights.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # --restart ignores the checkpoint: 2 fresh steps, not the 4-step model
    _, err = train_volume(capsys, volume_files, tmp_path / "twice", "--iterations", "2", "--restart", *sched)
    assert "resumed" not in err
    c = weights(tmp_path / "twice" / "weights.pt")
    assert not all(torch.equal(a[k], c[k]) for k in a)
