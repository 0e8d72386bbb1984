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
    assert rec["weights"] == str(out / "best.pt")       # held-out slices given: the best 3D-scored weights
    assert (out / "weights.pt").exists()
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


def test_a_volume_is_one_more_dataset_source(tmp_path):
    """Slices of a volume train exactly as the same images in a dataset folder: same
    normalisation (16-bit, clipped as inference clips), same targets, same sampling."""
    from panoptem.training.dataset import DatasetFolders, VolumeSlices
    from panoptem.training.train import TrainConfig
    img, lab = disc_volume(n=4)
    img = img.astype(np.uint16) * 40 + 1000
    img[0, :2, :2] = 65535                      # a few hot pixels, clipped away
    for sub, arr in (("images", img), ("masks", lab)):
        (tmp_path / "ds" / sub).mkdir(parents=True)
        for z in range(len(arr)):
            tifffile.imwrite(tmp_path / "ds" / sub / f"z{z}.tif", arr[z])
    cfg = TrainConfig(batch_size=4, patch_size=64, scale_range=(1.0, 1.0))
    vol = VolumeSlices(img, lab)
    folder = DatasetFolders(tmp_path / "ds")
    assert len(vol) == len(folder) == 4 and vol.names == [f"volume/z{z}" for z in range(4)]
    for a, b in zip(vol.batch(np.random.default_rng(3), cfg), folder.batch(np.random.default_rng(3), cfg)):
        assert torch.equal(a, b)
    x = vol.batch(np.random.default_rng(0), TrainConfig(batch_size=8, patch_size=64, scale_range=(1.0, 1.0)))[0]
    assert float(x.abs().max()) < 20        # the hot pixels did not blow up the contrast
    assert len(VolumeSlices(img, lab, slice(1, 3))) == 2


def test_a_run_resumes_only_as_itself(capsys, tmp_path, volume_files):
    """A folder left by a run with other slices (another held-out block) is refused, not resumed:
    its weights were trained on what the new run holds out, and its scores are of another block."""
    out = tmp_path / "run"
    train_volume(capsys, volume_files, out, "--iterations", "2")
    code = main(["train-volume", str(volume_files[0]), str(volume_files[1]), "-o", str(out), "--train-slices", "2:6",
                 "--val-slices", "0:2", "--batch-size", "2", "--patch-size", "64", "--device", "cpu",
                 "--iterations", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "train_slices" in err and "val_slices" in err and "--restart" in err, err
    steps = [json.loads(line)["step"] for line in (out / "val3d.jsonl").read_text().splitlines()]
    assert steps == [2]                                   # nothing of the refused run was scored or kept
    _, err = train_volume(capsys, volume_files, out, "--iterations", "3")   # the same run goes on
    assert "resumed from step 2" in err
    # --restart keeps nothing of the earlier run (scores, best weights, checkpoint), even where the
    # restarted run is killed before it writes its own
    from panoptem.training import from_volume, train as train_mod
    from panoptem.training.train import TrainConfig

    def killed(*a, **k):
        raise KeyboardInterrupt
    real = train_mod.train
    from_volume.train = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            from_volume.train_from_volume(str(volume_files[0]), str(volume_files[1]), str(out), "0:4", "4:6",
                                          TrainConfig(iterations=3, batch_size=2, patch_size=64), resume=False,
                                          log=lambda s: None)
    finally:
        from_volume.train = real
    assert not any((out / f).exists() for f in ("best.json", "best.pt", "val3d.jsonl"))


def test_a_diverged_run_stops_and_keeps_no_weights_of_nan(tmp_path, monkeypatch):
    from panoptem.errors import PanoptemError
    from panoptem.training import train as train_mod
    from panoptem.training.dataset import VolumeSlices
    img, lab = disc_volume(n=2)
    monkeypatch.setattr(train_mod, "panoptic_loss", lambda *a: (torch.tensor(float("nan"), requires_grad=True), {}))
    with pytest.raises(PanoptemError, match="diverged at step 1"):
        train_mod.train(VolumeSlices(img, lab), tmp_path / "run", train_mod.TrainConfig(
            iterations=2, batch_size=1, patch_size=64), log=lambda s: None)
    assert not (tmp_path / "run" / "weights.pt").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("entry", ["train", "finetune", "train_from_volume"])
def test_a_second_run_into_a_training_folder_is_refused(tmp_path, entry, tiny_card):
    """A run of another process training into the same folder: one line, the folder untouched (both
    had trained into it, one log and one checkpoint, each replacing the other's)."""
    import subprocess
    import sys
    from panoptem.errors import PanoptemError
    from panoptem.training import train as train_mod
    from panoptem.training.dataset import VolumeSlices
    from panoptem.training.finetune import finetune
    from panoptem.training.from_volume import train_from_volume
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom panoptem._atomic import exclusive_output\n"
                               "with exclusive_output(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)",
                               str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = train_mod.TrainConfig(iterations=1, batch_size=1, patch_size=64)
        img, lab = disc_volume(n=2)
        with pytest.raises(PanoptemError, match="Another panoptem run is writing"):
            if entry == "train":
                train_mod.train(VolumeSlices(img, lab), run, cfg, log=lambda s: None)
            elif entry == "finetune":
                finetune(str(tiny_card), tmp_path, out_dir=run, iterations=1, log=lambda s: None)
            else:
                tifffile.imwrite(tmp_path / "i.tif", img)
                tifffile.imwrite(tmp_path / "l.tif", lab)
                train_from_volume(str(tmp_path / "i.tif"), str(tmp_path / "l.tif"), str(run), "0:2", None, cfg,
                                  log=lambda s: None)
        assert list(run.iterdir()) == []
    finally:
        holder.kill()
        holder.wait()


def test_a_second_thread_training_into_the_same_folder_is_refused(tmp_path):
    """napari's docks train in worker threads: a second thread into the same folder is refused
    (the lock was re-entrant for the whole process, and the first run's end removed it)."""
    from conftest import output_held_elsewhere
    from panoptem._atomic import exclusive_output
    from panoptem.errors import PanoptemError
    from panoptem.training import train as train_mod
    from panoptem.training.dataset import VolumeSlices
    errors = []
    with output_held_elsewhere(tmp_path / "run"):
        img, lab = disc_volume(n=2)
        try:
            train_mod.train(VolumeSlices(img, lab), tmp_path / "run", train_mod.TrainConfig(
                iterations=1, batch_size=1, patch_size=64), log=lambda s: None)
        except PanoptemError as e:
            errors.append(str(e))
    assert len(errors) == 1 and "Another panoptem run is writing" in errors[0]
    with exclusive_output(tmp_path / "run"):          # nested in one thread: re-entrant
        with exclusive_output(tmp_path / "run"):
            pass


def test_training_shows_padding_as_inference_does():
    """Black padding (an aligned stack's border) reaches the network as the mean grey in training
    too, as at inference, not as the darkest value there is; the tissue is scaled as before."""
    from panoptem.training.dataset import VolumeSlices
    from panoptem.training.train import TrainConfig
    rng = np.random.default_rng(0)
    img = rng.integers(100, 156, (2, 64, 64)).astype(np.uint8)
    img[:, :, :34] = 0                           # a padded band, wider than the padding window
    lab = np.zeros(img.shape, np.uint32)
    lab[:, 20:40, 40:60] = 1
    x = VolumeSlices(img, lab).batch(np.random.default_rng(1), TrainConfig(
        batch_size=6, patch_size=64, scale_range=(1.0, 1.0)))[0].numpy()
    # contrast / brightness / noise move the grey a little; black would sit below -3 in a third
    # of every patch (the band is half of each)
    lows = np.quantile(x.reshape(len(x), -1), 0.3, axis=1)
    assert (lows > -2.0).all(), lows
    # values that are not numbers (a float image's blank) are the mean grey too, not NaN in the loss
    img = img.astype(np.float32)
    img[:, :, :20] = np.nan
    x = VolumeSlices(img, lab).batch(np.random.default_rng(1), TrainConfig(
        batch_size=6, patch_size=64, scale_range=(1.0, 1.0)))[0].numpy()
    assert np.isfinite(x).all()


@pytest.mark.parametrize("schedule_steps,anneal_from", [(0, 0), (12, 0), (12, 3)])
def test_schedule_options(tmp_path, schedule_steps, anneal_from):
    """--schedule-steps sets the length of the one-cycle curve; --anneal-from cuts it there
    and anneals the learning rate by cosine to 0 at the last step."""
    import math

    from conftest import TINY_ARCH
    from panoptem.training.dataset import VolumeSlices
    from panoptem.training.train import OneCycle, TrainConfig, train
    img, lab = disc_volume(n=2)
    cfg = TrainConfig(iterations=6, batch_size=1, patch_size=64, lr=1e-3, architecture=TINY_ARCH,
                      schedule_steps=schedule_steps, anneal_from=anneal_from)
    recs = []
    train(VolumeSlices(img, lab), tmp_path / "run", cfg, resume=False, log=lambda s: None, on_step=recs.append)
    lrs = [r["lr"] for r in recs]
    curve = OneCycle(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3), 1e-3, schedule_steps or 6)
    expect = [curve.values(k)[0] for k in range(1, 7)]
    if anneal_from:
        cut = curve.values(anneal_from)[0]
        expect = expect[:anneal_from - 1] + [cut * 0.5 * (1 + math.cos(math.pi * (k - anneal_from) / (6 - anneal_from)))
                                             for k in range(anneal_from, 7)]
        assert lrs[-1] == 0.0
    assert lrs == pytest.approx(expect, rel=1e-9, abs=1e-15)
    if not anneal_from:  # the curve's own end after 6 of 6 steps; halfway down a 12-step curve
        assert (lrs[-1] < 1e-6) == (schedule_steps == 0)


def test_held_out_slices_are_segmented_in_3d_and_the_best_weights_kept(capsys, tmp_path, volume_files):
    """Every --validate-every steps the held-out slices are segmented as a volume and scored
    against their 3D connected components; best.pt holds the weights of the best-scored step,
    and a resumed run remembers the best so far instead of starting the comparison afresh."""
    out = tmp_path / "run"
    rec, err = train_volume(capsys, volume_files, out, "--iterations", "4", "--validate-every", "2",
                            "--schedule-steps", "6")
    lines = [json.loads(s) for s in (out / "val3d.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    import cc3d
    cc = cc3d.connected_components(disc_volume()[1][4:6] > 0, connectivity=6)
    n_gt = int((np.bincount(cc.ravel())[1:] >= 500).sum())    # smaller ones are below the min-size filter
    assert n_gt >= 1
    assert all(r["n_gt"] == n_gt and 0 <= r["f1_50"] <= 1 for r in lines)
    best = json.loads((out / "best.json").read_text())
    assert best == max(reversed(lines), key=lambda r: (r["f1_50"], r["foreground_iou"]))
    assert rec["weights"] == str(out / "best.pt") and f"kept the weights of step {best['step']}" in err
    kept = torch.load(out / "best.pt", weights_only=True)
    assert kept["step"] == best["step"]
    if best["step"] == 4:
        final = weights(out / "weights.pt")
        assert all(torch.equal(final[k], kept["state_dict"][k]) for k in final)
    # resumed to 6 steps: one more scoring, compared against the stored best
    train_volume(capsys, volume_files, out, "--iterations", "6", "--validate-every", "2", "--schedule-steps", "6")
    lines = [json.loads(s) for s in (out / "val3d.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    best = json.loads((out / "best.json").read_text())
    assert best == max(reversed(lines), key=lambda r: (r["f1_50"], r["foreground_iou"]))
    # --restart: the scores of the earlier run are not mixed in
    train_volume(capsys, volume_files, out, "--iterations", "2", "--validate-every", "2", "--restart")
    lines = [json.loads(s) for s in (out / "val3d.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2]
    assert json.loads((out / "best.json").read_text()) == lines[0]


def test_train_volume_starts_from_a_model(capsys, tmp_path, volume_files):
    """--init starts from a registered model's weights and architecture."""
    from panoptem import load_model
    train_volume(capsys, volume_files, tmp_path / "run", "--iterations", "1", "--init", "MitoLite_v1",
                 "--lr", "1e-9")
    base = load_model("MitoLite_v1").module
    blob = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    assert blob["architecture"] == base.config
    got = blob["state_dict"]
    assert torch.allclose(got["stem.0.weight"], base.state_dict()["stem.0.weight"], atol=1e-5)  # a tiny step: still v1
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["init"] == "MitoLite_v1"


def test_init_from_a_foreign_network_is_refused(tmp_path):
    """A TorchScript model has no panoptem architecture to train on: one clear error."""
    from _models import save_two_class_model

    from panoptem.errors import PanoptemError
    from panoptem.training.from_volume import init_weights
    card = save_two_class_model(tmp_path)
    with pytest.raises(PanoptemError, match="panoptem network"):
        init_weights(str(card))


def test_train_volume_with_neighbouring_slices(capsys, tmp_path, volume_files):
    """--context-slices 1: three input channels, each slice trained with its neighbours, validated
    by the 3D pipeline handing the network each plane's neighbours; --init a 2.5D model keeps
    its channels, and changing them with --init is refused."""
    rec, err = train_volume(capsys, volume_files, tmp_path / "run", "--iterations", "2", "--validate-every", "2",
                            "--context-slices", "1")
    blob = torch.load(rec["weights"], weights_only=True)
    assert blob["architecture"]["in_channels"] == 3 and blob["state_dict"]["stem.0.weight"].shape[1] == 3
    assert json.loads((tmp_path / "run" / "val3d.jsonl").read_text().splitlines()[0])["step"] == 2
    rec, _ = train_volume(capsys, volume_files, tmp_path / "run2", "--iterations", "1", "--init",
                          "MitoLite_3slice_v1", "--lr", "1e-9")
    assert torch.load(rec["weights"], weights_only=True)["architecture"]["in_channels"] == 3
    args = ["train-volume", str(volume_files[0]), str(volume_files[1]), "-o", str(tmp_path / "run3"), "--init",
            "MitoLite_3slice_v1", "--context-slices", "0", "--iterations", "1"]
    assert main(args) == 2 and "would change its first layer" in capsys.readouterr().err


def test_volume_slices_with_neighbours_turn_every_channel_alike():
    """A volume whose slices are all the same: every channel of every training patch is the same
    image (crop, zoom, turn, paler objects, one draw of contrast, brightness and gamma) up to its
    own pixel noise, apart from the few columns the blur mixes across the channels' seams."""
    from panoptem.training.dataset import VolumeSlices
    from panoptem.training.train import TrainConfig
    img, lab = disc_volume(n=1, size=96)
    vol, labels = np.repeat(img, 5, 0), np.repeat(lab, 5, 0)
    ds = VolumeSlices(vol, labels, slice(1, 4), context=1)
    assert ds.images[0].shape == (3, 96, 96)
    x, sem, *_ = ds.batch(np.random.default_rng(1), TrainConfig(batch_size=6, patch_size=64, pale=0.5,
                                                                 hard_negatives=0.5))
    assert x.shape == (6, 3, 64, 64) and sem.shape[0] == 6
    inner = x[..., 8:-8].numpy()
    for patch in inner:
        for c in (0, 2):
            assert abs(patch[c].mean() - patch[1].mean()) < 0.05
            assert np.corrcoef(patch[c].ravel(), patch[1].ravel())[0, 1] > 0.9
    assert inner.std() > 0.5


def test_held_out_slices_are_never_trained_on(capsys, tmp_path, volume_files):
    base = ["train-volume", str(volume_files[0]), str(volume_files[1]), "--batch-size", "2", "--patch-size", "64",
            "--device", "cpu", "--iterations", "1", "--val-slices", "4:6"]
    assert main([*base, "-o", str(tmp_path / "a"), "--train-slices", "0:5"]) == 2
    assert "share 1 slice(s)" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "b")]) == 0     # the default: all slices but the held-out ones
    assert "training on the 4 slices outside the validation slices 4:6" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["negative", "fractional"])
def test_training_labels_must_be_whole_non_negative_numbers(tmp_path, bad):
    from panoptem.errors import PanoptemError
    from panoptem.training.dataset import VolumeSlices
    img, lab = disc_volume()
    lab = lab.astype(np.int16) - 1 if bad == "negative" else lab + 0.5
    with pytest.raises(PanoptemError, match="negative|non-integer"):
        VolumeSlices(img, lab, slice(0, 4))


def test_a_step_is_checkpointed_only_after_it_is_scored(tmp_path):
    # killed while scoring a step, a run resumed after it and never scored it (train-volume kept the wrong best)
    from conftest import TINY_ARCH
    from panoptem.training.dataset import VolumeSlices
    from panoptem.training.train import TrainConfig, load_checkpoint, train

    class Killed(Exception):
        pass

    def validate(model, step):
        if step == 2:
            raise Killed
    img, lab = disc_volume(n=2)
    cfg = TrainConfig(iterations=2, batch_size=1, patch_size=64, architecture=TINY_ARCH, checkpoint_every=1,
                      validate_every=2)
    with pytest.raises(Killed):
        train(VolumeSlices(img, lab), tmp_path / "run", cfg, log=lambda s: None, validate=validate)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1
    scored = []
    train(VolumeSlices(img, lab), tmp_path / "run", cfg, log=lambda s: None, validate=lambda m, s: scored.append(s))
    assert scored == [2]


def test_a_hand_made_config_no_run_can_use_is_refused_naming_the_field(tmp_path):
    from panoptem.errors import PanoptemError
    from panoptem.training.dataset import VolumeSlices
    from panoptem.training.train import TrainConfig, train
    img, lab = disc_volume(n=2)
    for kw, field in ((dict(validate_every=0), "validate_every"), (dict(checkpoint_every=0), "checkpoint_every"),
                      (dict(patch_size=50), "patch_size"), (dict(lr=float("nan")), "lr"),
                      (dict(scale_range=(1.5, 0.5)), "scale_range"), (dict(pale=1.5), "pale")):
        with pytest.raises(PanoptemError, match=field):
            train(VolumeSlices(img, lab), tmp_path / "run",
                  TrainConfig(**{"iterations": 1, "batch_size": 1, "patch_size": 64, **kw}), log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_ctrl_c_stops_once_the_step_is_checkpointed(tmp_path, terminal_ctrl_c):
    """Ctrl-C (SIGINT) stops a run when its step is done and checkpointed, then raises
    KeyboardInterrupt (the command's exit 130); the same run again resumes there, not from the
    last periodic checkpoint (none yet here: every 200 steps). A second Ctrl-C stops at once."""
    import os
    import signal

    from conftest import TINY_ARCH
    from panoptem.training.dataset import VolumeSlices
    from panoptem.training.train import TrainConfig, load_checkpoint, train
    img, lab = disc_volume(n=2)
    cfg = TrainConfig(iterations=6, batch_size=1, patch_size=64, architecture=TINY_ARCH)

    def ctrl_c(times):
        def on_step(rec):
            if rec["step"] == 2:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)
        return on_step
    lines = []
    with pytest.raises(KeyboardInterrupt):
        train(VolumeSlices(img, lab), tmp_path / "run", cfg, log=lines.append, on_step=ctrl_c(1))
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3   # pressed as step 2 was reported
    assert any(line.startswith("stopped after step 3 of 6") for line in lines)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    steps = []
    train(VolumeSlices(img, lab), tmp_path / "run", cfg, log=lines.append, on_step=lambda r: steps.append(r["step"]))
    assert "resumed from step 3" in lines and steps == [4, 5, 6]
    with pytest.raises(KeyboardInterrupt):
        train(VolumeSlices(img, lab), tmp_path / "again", cfg, log=lambda s: None, on_step=ctrl_c(2))
    assert not (tmp_path / "again" / "checkpoint.pt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_resumed_run_keeps_nothing_scored_after_its_checkpoint(tmp_path, volume_files, monkeypatch):
    """Killed while checkpointing step 3, which scored best (its best.pt written), a run resumed
    from step 2 (here to end there, as --iterations may change) keeps the best of steps 1-2 and
    their scores only: never weights of a step it did not reach."""
    from conftest import TINY_ARCH
    from panoptem.training import from_volume
    from panoptem.training import train as train_mod
    from panoptem.training.train import TrainConfig, load_checkpoint

    class Killed(Exception):
        pass
    f1 = iter([0.1, 0.2, 0.9])

    def scripted(labels, mask, min_size):
        f = next(f1, None)
        if f is None:
            raise Killed
        return dict(foreground_iou=f, f1_50=f, precision_50=f, recall_50=f, n_pred=1, n_gt=1)
    monkeypatch.setattr(from_volume, "score_3d", scripted)
    save = train_mod._atomic_save

    def killed_at_step_3(obj, path):
        if str(path).endswith("checkpoint.pt") and obj["step"] == 3:
            raise Killed
        save(obj, path)
    monkeypatch.setattr(train_mod, "_atomic_save", killed_at_step_3)
    out = tmp_path / "run"

    def run(iterations):
        cfg = TrainConfig(iterations=iterations, batch_size=2, patch_size=64, validate_every=1, checkpoint_every=2,
                          architecture=TINY_ARCH)
        return from_volume.train_from_volume(str(volume_files[0]), str(volume_files[1]), str(out), "0:4", "4:6",
                                             cfg, log=lambda s: None)
    with pytest.raises(Killed):
        run(4)
    assert torch.load(out / "best.pt", weights_only=True)["step"] == 3      # the killed run's best, past step 2
    assert run(2) == out / "best.pt"
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["step"] == 2 and json.loads((out / "best.json").read_text())["step"] == 2
    model = load_checkpoint(out / "checkpoint.pt")["model"]
    assert all(torch.equal(best["state_dict"][k], model[k]) for k in model)
    assert [json.loads(s)["step"] for s in (out / "val3d.jsonl").read_text().splitlines()] == [1, 2]


def test_a_run_removes_the_temporary_files_of_killed_saves(tmp_path):
    """A run killed while saving leaves .NAME.<id>.part files in its folder: the next run into the
    folder removes them, and nothing else (a user's files of other names stay)."""
    from conftest import TINY_ARCH
    from panoptem.training.dataset import VolumeSlices
    from panoptem.training.train import TrainConfig, train
    run = tmp_path / "run"
    run.mkdir()
    left = [run / ".checkpoint.pt.abcd1234.part.tmp", run / ".best.pt.x_y9z0ab.part.tmp",
            run / ".run.json.q1w2e3r4.part"]
    mine = [run / "notes.part", run / ".checkpoint.pt.backup", run / ".other.pt.abcd1234.part.tmp"]
    for p in left + mine:
        p.write_bytes(b"x")
    img, lab = disc_volume(n=2)
    train(VolumeSlices(img, lab), run, TrainConfig(iterations=1, batch_size=1, patch_size=64, architecture=TINY_ARCH),
          log=lambda s: None)
    assert not any(p.exists() for p in left) and all(p.exists() for p in mine)


def test_every_scored_step_is_checkpointed(tmp_path):
    """A run that scores every 3 steps and checkpoints every 5 keeps a checkpoint of step 3: what
    it scored there (its best weights) is in a checkpoint a killed run resumes from."""
    from conftest import TINY_ARCH
    from panoptem.training.dataset import VolumeSlices
    from panoptem.training.train import TrainConfig, load_checkpoint, train

    class Killed(Exception):
        pass

    def killed_after(rec):
        if rec["step"] == 3:
            raise Killed
    img, lab = disc_volume(n=2)
    cfg = TrainConfig(iterations=6, batch_size=1, patch_size=64, validate_every=3, checkpoint_every=5,
                      architecture=TINY_ARCH)
    scored = []
    with pytest.raises(Killed):
        train(VolumeSlices(img, lab), tmp_path / "run", cfg, log=lambda s: None, on_step=killed_after,
              validate=lambda model, step: scored.append(step))
    assert scored == [3] and load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3


def test_train_volume_on_an_inverted_volume_with_invert_is_the_plain_run(capsys, tmp_path, volume_files,
                                                                         monkeypatch):
    """``--invert``: a volume of bright discs trains, checks (2D) and scores its held-out block (3D)
    as the plain volume does: the same weights and the same figures."""
    from panoptem.training import train as train_mod
    checked, real = [], train_mod.semantic_iou
    monkeypatch.setattr(train_mod, "semantic_iou", lambda *a, **k: (checked.append(k.get("invert")), real(*a, **k))[1])
    img, _ = disc_volume()
    tifffile.imwrite(tmp_path / "inverted.tif", 255 - img)
    kw = ("--iterations", "2", "--validate-every", "2")
    train_volume(capsys, volume_files, tmp_path / "a", *kw)
    train_volume(capsys, (tmp_path / "inverted.tif", volume_files[1]), tmp_path / "b", *kw, "--invert")
    logs = [[json.loads(s) for s in (tmp_path / r / "log.jsonl").read_text().splitlines()] for r in "ab"]
    assert [r.get("val_iou") for r in logs[1]] == pytest.approx([r.get("val_iou") for r in logs[0]], rel=1e-5)
    assert (tmp_path / "b" / "val3d.jsonl").read_text() == (tmp_path / "a" / "val3d.jsonl").read_text()
    wa, wb = weights(tmp_path / "a" / "weights.pt"), weights(tmp_path / "b" / "weights.pt")
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5) for k in wa)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["invert"] is True
    assert checked and checked == [False] * (len(checked) // 2) + [True] * (len(checked) // 2)


def test_the_2d_checks_of_training_see_inverted_slices_inverted():
    """The semantic IoU logged while training (``val_iou``) scores inverted slices inverted."""
    from panoptem.training.train import semantic_iou
    from _models import dark_blob_model
    img, lab = disc_volume(n=2)
    net = dark_blob_model().module
    plain = semantic_iou(net, list(img), list(lab))
    assert plain > 0.8
    assert semantic_iou(net, list(255 - img), list(lab), invert=True) == pytest.approx(plain)
    assert semantic_iou(net, list(255 - img), list(lab)) < 0.2
