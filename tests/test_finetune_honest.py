"""Fine-tuning that stays honest: held-out scores (never the training patches), the best
held-out weights kept, background-only patches counted, replay of the model's own data."""
import json

import numpy as np
import pytest
import torch

from panoptem.models.home import get_card
from panoptem.training import finetune as ft
from panoptem.training.dataset import DatasetFolders, store_dataset
from panoptem.training.finetune import _Mixed, _validation, evaluate_pairs, finetune, split_held_out
from panoptem.training.patches import Patch
from panoptem.training.train import TrainConfig
from test_finetune import disc_dataset, discs, home  # noqa: F401 - fixture


def _empty_patches(folder, n, size=64):
    rng = np.random.default_rng(7)
    ps = [Patch(rng.integers(150, 250, (size, size)).astype(np.uint8), np.zeros((size, size), np.uint32),
                (size, size), "xy", i, 0, 0, size, (size, size), source="bg") for i in range(n)]
    store_dataset(ps, folder)
    return folder


def test_split_holds_out_both_kinds_and_never_everything():
    pos, neg = np.ones((2, 2)), np.zeros((2, 2))
    assert split_held_out([pos, pos], 0.5) == ([0, 1], [])                 # too few to hold any out
    assert split_held_out([pos] * 4, 0.0) == ([0, 1, 2, 3], [])
    masks = [pos] * 12 + [neg] * 4
    train, held = split_held_out(masks, 0.25, seed=3)
    assert len(held) == 4 and sorted(train + held) == list(range(16))
    assert sum(masks[i].any() for i in held) == 3 and sum(not masks[i].any() for i in held) == 1
    assert split_held_out(masks, 0.25, seed=3) == (train, held)            # reproducible
    few = [pos, neg, neg, neg]
    assert split_held_out(few, 0.5) == ([0, 1, 2, 3], [])                  # the one patch with objects trains


@pytest.mark.parametrize("n", range(3, 13))
def test_split_keeps_objects_on_both_sides_of_any_small_set(n):
    # held-out background alone scores a model that finds nothing best (nothing to find, nothing found)
    for n_pos in range(n + 1):
        masks = [np.ones((2, 2))] * n_pos + [np.zeros((2, 2))] * (n - n_pos)
        for fraction in (0.05, 0.2, 0.25, 0.3, 0.5, 0.9):
            train, held = split_held_out(masks, fraction, seed=1)
            assert sorted(train + held) == list(range(n))
            if n_pos >= 2:
                assert len(held) == min(max(1, round(n * fraction)), n - 2)
            if n_pos < 2:
                assert held == [], (n_pos, fraction)
                continue
            assert any(masks[i].any() for i in held) and any(masks[i].any() for i in train), (n_pos, fraction)


def test_held_out_patches_are_not_trained_on(tmp_path):
    data_dir = disc_dataset(tmp_path / "ds", n=5)
    _empty_patches(tmp_path / "ds2", 3)
    data = DatasetFolders([data_dir, tmp_path / "ds2"])
    train, val, where, held = _validation(None, data, 0.25, 0, 0.7)
    assert len(held) == 2 and where == "2 held-out patches of 8 (1 background-only), not trained on"
    assert not set(held) & set(train.names) and len(train) == 6
    assert sorted(held + train.names) == sorted(data.names)
    assert len(val[0]) == 2 and sum(not m.any() for m in val[1]) == 1
    assert train.counts == [4, 2]                                          # each folder keeps its weight


def test_background_only_patches_count_as_false_positives():
    from _models import dark_blob_model
    img, lab = discs(0)
    model = dark_blob_model()
    full = evaluate_pairs(model, [img], [lab], maximum_objects_per_class=0)
    assert full["n_pred"] > 0 and full["precision_50"] > 0.5 and full["n_empty"] == 0
    both = evaluate_pairs(model, [img, img], [lab, np.zeros_like(lab)], maximum_objects_per_class=0)
    assert both["n_empty"] == 1 and both["false_on_empty"] == full["n_pred"]
    assert both["precision_50"] == pytest.approx(full["precision_50"] / 2, abs=1e-4)   # twice the objects found
    assert both["recall_50"] == full["recall_50"]
    assert "on the 1 background-only patch" in ft.scores_line(both)


def _scripted(monkeypatch, f1s):
    """evaluate_pairs returns F1 = f1s[i] on its i-th call and records the weights it scored."""
    seen = []

    def fake(model, images, masks, divisors=None, **params):
        i = len(seen)
        seen.append({k: v.detach().clone() for k, v in model.module.state_dict().items()})
        f = f1s[i]
        return dict(foreground_iou=f, f1_50=f, precision_50=f, recall_50=f, n_images=len(images), n_gt=1,
                    n_pred=1, n_empty=0, false_on_empty=0)
    monkeypatch.setattr(ft, "evaluate_pairs", fake)
    return seen


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_keeps_the_best_held_out_weights_not_the_last(home, tmp_path, tiny_card, monkeypatch):
    seen = _scripted(monkeypatch, [0.2, 0.5, 0.9, 0.6, 0.3])   # before, steps 2, 4, 6, 8
    r = finetune(str(tiny_card), disc_dataset(tmp_path / "ds", n=4), name="best", iterations=8, patch_size=64,
                 layers="all", lr=1e-2, validate_every=2, log=lambda s: None)
    assert [h["step"] for h in r["validation"]] == [2, 4, 6, 8]
    assert r["kept_step"] == 4 and r["after"]["f1_50"] == 0.9 and r["before"]["f1_50"] == 0.2
    got = _weights(r["weights"])
    for k, v in seen[2].items():                                 # the weights scored at step 4
        assert torch.equal(got[k], v), k
    assert not all(torch.equal(got[k], v) for k, v in seen[4].items() if v.is_floating_point())
    assert get_card("best").validation["kept_step"] == 4


def test_keeps_the_base_weights_when_no_step_beats_them(home, tmp_path, tiny_card, monkeypatch):
    _scripted(monkeypatch, [0.8, 0.5, 0.4])
    r = finetune(str(tiny_card), disc_dataset(tmp_path / "ds", n=4), name="base", iterations=4, patch_size=64,
                 layers="all", lr=1e-2, validate_every=2, log=lambda s: None)
    assert r["kept_step"] == 0 and r["after"] == r["before"]
    base = _weights(tiny_card.parent / "tiny.pt")
    got = _weights(r["weights"])
    assert all(torch.equal(got[k], v) for k, v in base.items())


def test_too_few_patches_are_not_scored_on_themselves(home, tmp_path, tiny_card):
    lines = []
    r = finetune(str(tiny_card), disc_dataset(tmp_path / "ds", n=2), name="two", iterations=2, patch_size=64,
                 log=lines.append)
    assert r["before"] is None and r["after"] is None and r["evaluated_on"] is None
    assert any("too few to hold any out" in s for s in lines)
    # the last weights are kept, and said so (it said step 0: the base model's)
    assert r["kept_step"] == 2 and get_card("two").validation["kept_step"] == 2
    assert not all(torch.equal(_weights(r["weights"])[k], v) for k, v in _weights(tiny_card.parent / "tiny.pt").items())


def test_replay_mixes_the_stated_share_of_every_batch(tmp_path):
    own = DatasetFolders(disc_dataset(tmp_path / "own", n=2))
    rep = DatasetFolders(disc_dataset(tmp_path / "rep", n=2, size=128, dark=90))
    mixed = _Mixed(own, rep, 0.25)
    calls = []
    for name, d in (("own", own), ("replay", rep)):
        orig = d.batch
        d.batch = lambda rng, cfg, _o=orig, _n=name: (calls.append((_n, cfg.batch_size)), _o(rng, cfg))[1]
    x, sem, hm, off, wt = mixed.batch(np.random.default_rng(0), TrainConfig(batch_size=8, patch_size=64))
    assert calls == [("own", 6), ("replay", 2)] and x.shape == (8, 1, 64, 64) and hm.shape[0] == 8
    assert mixed.replayed(2) == 1 and mixed.replayed(1) == 0 and _Mixed(own, rep, 0.0).replayed(8) == 0


def test_cli_finetune_with_replay_prints_held_out_precision_and_recall(home, tmp_path, tiny_card, capsys):
    from panoptem.cli import main
    data = disc_dataset(tmp_path / "ds", n=4)
    rep = disc_dataset(tmp_path / "rep", n=2)
    code = main(["finetune", str(tiny_card), "--train-dir", str(data), "--name", "cli_ft", "--iterations", "4",
                 "--patch-size", "64", "--replay", str(rep), "--replay-ratio", "0.5", "--val-fraction", "0.25"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "before: IoU" in err and "precision" in err and "recall" in err and "held-out patch of 4" in err
    assert "replay: 2 of every 5 patches" in err   # batch: min(8, 3 own + 2 replay)
    rec = json.loads(out.strip().splitlines()[-1])
    assert rec["evaluated_on"].startswith("1 held-out patch of 4") and "recall_50" in rec["after"]
    card = get_card("cli_ft")
    assert card.training["replay_dirs"] == [str(rep)] and card.training["replay_ratio"] == 0.5


def test_a_validation_folder_without_dataset_json_takes_the_given_divisor(tmp_path):
    # the masks were scored as if painted without a divisor: every object a false one
    from panoptem.training.dataset import DatasetFolders
    from panoptem.training.finetune import _eval_set
    for name in ("train", "val"):
        ps = [Patch(np.full((64, 64), 200, np.uint8), np.pad(np.full((20, 20), 1001, np.uint32), 22), (64, 64),
                    "xy", i, 0, 0, 64, (64, 64), source=name) for i in range(2)]
        store_dataset(ps, tmp_path / name, label_divisor=1000)
        (tmp_path / name / "dataset.json").unlink()          # empanada's layout: no dataset.json
    data = DatasetFolders([tmp_path / "train"], label_divisor=1000)
    assert _eval_set(tmp_path / "val", data)[2] == [1000, 1000]
    assert _validation(tmp_path / "val", data, 0.25, 0, 0.7)[1][2] == [1000, 1000]


def test_a_resumed_run_keeps_no_best_scored_after_its_checkpoint(home, tmp_path, tiny_card, monkeypatch):
    """Killed while checkpointing step 2, which scored best, a fine-tuning resumed from step 1 (here
    asked to end there) keeps step 1's weights and scores: never those of a step it did not reach."""
    from panoptem.training import train as train_mod
    seen = _scripted(monkeypatch, [0.2, 0.5, 0.9, 0.2])   # before, steps 1, 2; before again

    class Killed(Exception):
        pass
    real = train_mod._atomic_save

    def save_or_die(obj, path):
        if "opt" in obj and obj["step"] == 2:
            raise Killed
        real(obj, path)
    monkeypatch.setattr(train_mod, "_atomic_save", save_or_die)
    data = disc_dataset(tmp_path / "ds", n=4)
    kw = dict(name="kb", patch_size=64, layers="all", lr=1e-2, validate_every=1, log=lambda s: None)
    with pytest.raises(Killed):
        finetune(str(tiny_card), data, iterations=3, **kw)
    assert torch.load(home / "training" / "kb" / "best.pt", weights_only=True)["step"] == 2
    r = finetune(str(tiny_card), data, iterations=1, **kw)
    assert r["kept_step"] == 1 and r["after"]["f1_50"] == 0.5 and [h["step"] for h in r["validation"]] == [1]
    assert get_card("kb").validation["scored_steps"] == [1]
    got = _weights(r["weights"])
    assert all(torch.equal(got[k], v) for k, v in seen[1].items())   # the weights scored at step 1
