"""Multi-class targets, the dataset sampler, fine-tuning and training new models (tiny models)."""
import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from panoptem.errors import PanoptemError
from panoptem.models import home as home_mod
from panoptem.models.home import get_card
from panoptem.training.dataset import DatasetFolders, store_dataset
from panoptem.training.finetune import finetune, frozen_modules, train_new
from panoptem.training.patches import Patch
from panoptem.training.targets import make_panoptic_targets
from panoptem.training.train import TrainConfig


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Empty PANOPTEM_HOME and built-in zoo, one torch thread (the suite stays light on small machines)."""
    monkeypatch.setenv("PANOPTEM_HOME", str(tmp_path / "home"))
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    monkeypatch.setattr(home_mod, "ZOO", zoo)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path / "home"
    torch.set_num_threads(threads)


def discs(seed, size=64, n=4, dtype=np.uint8, bright=200, dark=50):
    """Dark discs on a bright background and their instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    img = np.full((size, size), bright, dtype)
    lab = np.zeros((size, size), np.uint32)
    for k in range(n):
        cy, cx = rng.integers(10, size - 10, 2)
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(5, 9)) ** 2
        img[d], lab[d] = dark, k + 1
    return img, lab


def disc_dataset(folder, n=3, **kw):
    ps = []
    for i in range(n):
        img, lab = discs(i, **kw)
        ps.append(Patch(img, lab, img.shape, "xy", i, 0, 0, img.shape[0], img.shape, source="discs"))
    store_dataset(ps, folder)
    return folder


# ---------------------------------------------------------------- targets


def test_panoptic_targets_exact_on_a_hand_made_mask():
    lab = np.zeros((32, 32), np.int64)
    lab[0:12, 0:12] = 1001            # class 1 (instance): centroid (5.5, 5.5) = centre of cell (1, 1)
    lab[20:28, 20:28] = 2000          # class 2 (semantic only)
    sem, hm, off, wt = make_panoptic_targets(lab, 1000, thing_ids=[1], class_ids=[1, 2])
    assert sem.dtype == np.int64
    assert np.all(sem[0:12, 0:12] == 1) and np.all(sem[20:28, 20:28] == 2)
    assert sem.sum() == 144 + 2 * 64
    assert hm.shape == (8, 8) and hm[1, 1] == 1.0 and np.unravel_index(hm.argmax(), hm.shape) == (1, 1)
    np.testing.assert_allclose(hm[1, 2], np.exp(-16 / 72), rtol=1e-6)   # 4 px away, sigma 6
    np.testing.assert_array_equal(wt[:3, :3], 1)
    assert wt.sum() == 9
    np.testing.assert_allclose(off[:, 0, 0], [4, 4])      # cell centre (1.5, 1.5) -> centroid
    np.testing.assert_allclose(off[:, 2, 2], [-4, -4])
    np.testing.assert_allclose(off[:, 1, 1], [0, 0])
    assert not off[:, 3:, :].any() and not off[:, :, 3:].any()
    # the semantic-only class contributes nothing to heatmap and offsets
    only_stuff = np.where(lab == 2000, 2000, 0)
    _, hm2, off2, wt2 = make_panoptic_targets(only_stuff, 1000, thing_ids=[1], class_ids=[1, 2])
    assert not hm2.any() and not off2.any() and not wt2.any()
    no_stuff = np.where(lab == 1001, 1001, 0)
    np.testing.assert_array_equal(make_panoptic_targets(no_stuff, 1000, [1], [1, 2])[1], hm)


def test_panoptic_targets_channel_order_and_errors():
    lab = np.zeros((8, 8), np.int64)
    lab[:4] = 3001
    lab[4:] = 1002
    sem, hm, _, _ = make_panoptic_targets(lab, 1000, thing_ids=[1, 3], class_ids=[3, 1])
    assert np.all(sem[:4] == 1) and np.all(sem[4:] == 2)   # channel i = class_ids[i - 1]
    with pytest.raises(PanoptemError, match=r"class\(es\) \[2\]"):
        make_panoptic_targets(np.full((8, 8), 2001), 1000, thing_ids=[1], class_ids=[1])
    # no divisor: every object is an instance of the one class
    sem, hm, _, wt = make_panoptic_targets(np.pad(np.full((4, 4), 7), ((0, 4), (0, 4))), None, [1])
    assert sem.sum() == 16 and hm.max() > 0.9 and wt[0, 0] == 1


def test_dataset_folders_weights_and_batches(tmp_path):
    a = disc_dataset(tmp_path / "a", n=1)
    b = disc_dataset(tmp_path / "b", n=4)
    ds = DatasetFolders([a, b], gamma=0.7)
    w_b = 0.25 ** 0.7
    np.testing.assert_allclose(ds.probabilities, np.array([1, w_b, w_b, w_b, w_b]) / (1 + 4 * w_b))
    assert DatasetFolders([a, b], gamma=1.0).probabilities[0] == pytest.approx(0.5)
    assert DatasetFolders([a, b], gamma=0.0).probabilities[0] == pytest.approx(0.2)
    x, sem, hm, off, wt = ds.batch(np.random.default_rng(0), TrainConfig(batch_size=3, patch_size=64))
    assert x.shape == (3, 1, 64, 64) and sem.dtype == torch.float32 and hm.shape == (3, 16, 16)
    assert set(torch.unique(sem).tolist()) == {0.0, 1.0}


def test_dataset_folders_multi_class_channels(tmp_path):
    img, lab = discs(0, n=2)
    lab = np.where(lab > 0, 1000 + lab, 0).astype(np.uint32)
    lab[:, :6] = 2000                       # a semantic-only band
    p = Patch(img, lab, img.shape, "xy", None, 0, 0, 64, (64, 64), source="mc")
    store_dataset([p], tmp_path, class_names={1: "mito", 2: ("er", "semantic")}, label_divisor=1000)
    ds = DatasetFolders(tmp_path, classes=["1,mito,instance", "2,er,semantic"])
    cfg = TrainConfig(batch_size=2, patch_size=64, scale_range=(1.0, 1.0))
    x, sem, hm, off, wt = ds.batch(np.random.default_rng(0), cfg)
    assert sem.dtype == torch.int64 and set(torch.unique(sem).tolist()) == {0, 1, 2}
    assert int((sem == 2).sum()) == 2 * 64 * 6      # the band survives flips and rotations whole
    assert int((sem == 1).sum()) == 2 * int(((lab > 1000) & (lab < 2000)).sum())
    with pytest.raises(PanoptemError, match="holds class"):
        DatasetFolders(tmp_path, classes=["1,mito,instance", "3,other,semantic"])


# ---------------------------------------------------------------- fine-tuning


def test_finetune_lowers_the_loss_registers_and_segments(home, tmp_path, tiny_card):
    import panoptem
    data = disc_dataset(tmp_path / "ds", n=3)
    r = finetune(str(tiny_card), data, name="tiny_ft", iterations=30, patch_size=64, layers="all", lr=5e-3,
                 log=lambda s: None)
    losses = r["losses"]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert r["evaluated_on"].startswith("1 held-out patch of 3") and len(r["held_out"]) == 1
    assert r["before"]["n_images"] == r["after"]["n_images"] == 1
    assert r["after"]["f1_50"] >= r["before"]["f1_50"]   # the best held-out weights, the base's included
    card = get_card("tiny_ft")
    assert card.training["base_model"] == "tiny" and card.training["n_patches"] == 2
    assert card.training["held_out"] == r["held_out"]
    assert "tiny fine-tuned on 2 patch(es)" in card.description
    assert card.validation["after"] == r["after"]
    img, _ = discs(5)
    out = panoptem.segment_2d(img, "tiny_ft", device="cpu")
    assert out.shape == img.shape and out.dtype == np.uint32


def tube_volume(n=16, size=160, seed=0):
    """Dark tubes through every slice of a volume, and their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    img = np.full((n, size, size), 200, np.uint8)
    lab = np.zeros((n, size, size), np.uint32)
    for k in range(10):
        cy, cx = rng.integers(12, size - 12, 2)
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(6, 10)) ** 2
        img[:, d], lab[:, d] = 50, k + 1
    return img, lab


def test_a_model_that_sees_neighbours_fine_tunes_on_flipbook_patches(home, tmp_path):
    """Flipbook patches keep the planes around each painted one: a model with context_slices
    trains and is scored on each patch with its neighbours, and the result keeps them. Patches
    without flipbooks are refused with one error that says how to pick them."""
    import panoptem
    from conftest import make_tiny_card
    from panoptem.training.dataset import load_dataset
    from panoptem.training.patches import pick_patches
    card = make_tiny_card(tmp_path, context_slices=1, name="tiny3")
    vol, lab = tube_volume()
    books = tmp_path / "books"
    store_dataset(pick_patches(vol, n=4, patch_size=64, flipbook=True, labels=lab, seed=1), books)
    imgs, masks, _ = load_dataset(books, context=1)
    assert all(im.shape == (3, *m.shape) for im, m in zip(imgs, masks))
    r = finetune(str(card), books, name="tiny3_ft", iterations=4, patch_size=64, layers="all", lr=5e-3,
                 log=lambda s: None)
    assert r["before"]["n_images"] == 1 and get_card("tiny3_ft").context_slices == 1
    out = panoptem.segment_3d(vol, "tiny3_ft", device="cpu")
    assert out.labels["mitochondria"].shape == vol.shape
    plain = tmp_path / "plain"
    store_dataset(pick_patches(vol, n=3, patch_size=64, labels=lab, seed=1), plain)
    with pytest.raises(PanoptemError, match="--flipbook"):
        finetune(str(card), plain, name="tiny3_ft2", iterations=2, patch_size=64, log=lambda s: None)
    assert not (home / "models" / "tiny3_ft2").exists()
    # a flipbook shallower than the model's context, inside the volume, lacks planes the volume has:
    # refused (clamping it would show the painted plane as its own neighbour); at the volume's first
    # plane the clamp is the one inference makes, and the patch trains as it is
    thin = tmp_path / "thin"
    store_dataset(pick_patches(vol, n=1, patch_size=64, points=[(5, 32, 32)], flipbook=True, flipbook_depth=2,
                               labels=lab), thin)
    with pytest.raises(PanoptemError, match="--flipbook-depth 3"):
        load_dataset(thin, context=1)
    edge = tmp_path / "edge"
    store_dataset(pick_patches(vol, n=1, patch_size=64, points=[(0, 32, 32)], flipbook=True, flipbook_depth=2,
                               labels=lab), edge)
    im = load_dataset(edge, context=1)[0][0]
    np.testing.assert_array_equal(im, panoptem.take_plane(vol, 0, "xy", neighbours=1)[:, :64, :64])


def test_finetune_with_one_patch_and_a_validation_folder(home, tmp_path, tiny_card):
    data = disc_dataset(tmp_path / "one", n=1)
    val = disc_dataset(tmp_path / "val", n=2)
    r = finetune(str(tiny_card), data, val_dir=val, name="one", iterations=3, patch_size=64, log=lambda s: None)
    assert len(r["losses"]) == 3 and r["before"]["n_images"] == 2 and r["after"]["n_gt"] == 8
    assert r["evaluated_on"] == f"validation folder {val} (2 patches)"
    assert get_card("one").training["batch_size"] == 1


def _tensors(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("layers", ["none", "stage3", "all"])
def test_layer_freezing_really_freezes(home, tmp_path, tiny_card, layers):
    data = disc_dataset(tmp_path / "ds", n=2)
    r = finetune(str(tiny_card), data, name=f"f_{layers}", iterations=3, patch_size=64, layers=layers, lr=1e-2,
                 log=lambda s: None)
    old, new = _tensors(tiny_card.parent / "tiny.pt"), _tensors(r["weights"])
    frozen = frozen_modules(layers)
    for k in old:
        if not old[k].is_floating_point():
            continue   # BatchNorm's num_batches_tracked
        same = torch.equal(old[k], new[k])
        if k.split(".")[0] in frozen:
            assert same, f"{k} changed although {layers} freezes it"
        elif k.split(".")[0] in ("stem", "stage1", "stage2", "stage3", "stage4") or "head" in k:
            assert not same, f"{k} did not train with layers={layers}"


def test_frozen_modules_choices():
    assert frozen_modules("none") == ("stem", "stage1", "stage2", "stage3", "stage4")
    assert frozen_modules("stage4") == ("stem", "stage1", "stage2", "stage3")
    assert frozen_modules("stage1") == ("stem",)
    assert frozen_modules("all") == ()
    with pytest.raises(PanoptemError, match="layers must be one of"):
        frozen_modules("decoder")


def test_finetune_refusals(home, tmp_path, tiny_card):
    data = disc_dataset(tmp_path / "ds", n=1)
    ts = yaml.safe_load(tiny_card.read_text())
    ts["weights"]["format"] = "torchscript"
    (tmp_path / "ts.yaml").write_text(yaml.safe_dump(ts))
    with pytest.raises(PanoptemError, match="cannot fine-tune"):
        finetune(str(tmp_path / "ts.yaml"), data, name="x", iterations=1, patch_size=64)
    finetune(str(tiny_card), data, name="taken", iterations=1, patch_size=64, log=lambda s: None)
    with pytest.raises(PanoptemError, match="already registered"):
        finetune(str(tiny_card), data, name="taken", iterations=1, patch_size=64)
    with pytest.raises(PanoptemError, match="multiple of 32"):
        finetune(str(tiny_card), data, name="y", patch_size=100)
    with pytest.raises(PanoptemError, match="not a dataset folder"):
        finetune(str(tiny_card), tmp_path / "nothing", name="y", patch_size=64)


def test_sixteen_bit_data_trains_like_eight_bit(tmp_path):
    """The same picture in uint8 and in a narrow uint16 range gives the same network input."""
    a = disc_dataset(tmp_path / "u8", n=1)
    b = disc_dataset(tmp_path / "u16", n=1, dtype=np.uint16, bright=31000, dark=30100)
    cfg = TrainConfig(batch_size=1, patch_size=64)
    xa = DatasetFolders(a).batch(np.random.default_rng(0), cfg)[0]
    xb = DatasetFolders(b).batch(np.random.default_rng(0), cfg)[0]
    torch.testing.assert_close(xa, xb, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- new models


def test_train_new_multi_class_registers_a_softmax_model(home, tmp_path):
    from conftest import TINY_ARCH
    import panoptem
    ps = []
    for i in range(2):
        img, lab = discs(i, n=2)
        lab = np.where(lab > 0, 1000 + lab, 0).astype(np.uint32)
        lab[:, :8], img[:, :8] = 2000, 120
        ps.append(Patch(img, lab, img.shape, "xy", i, 0, 0, 64, (64, 64), source="mc"))
    store_dataset(ps, tmp_path / "mc", class_names={1: "mito", 2: ("er", "semantic")}, label_divisor=1000)
    arch = {k: v for k, v in TINY_ARCH.items() if k != "num_classes"}
    r = train_new([tmp_path / "mc"], "mc_model", labels=["1,mito,instance", "2,er,semantic"], label_divisor=1000,
                  iterations=4, patch_size=64, architecture=arch, out_dir=tmp_path / "run", log=lambda s: None)
    card = get_card("mc_model")
    assert [(c.id, c.name, c.kind) for c in card.classes] == [(1, "mito", "instance"), (2, "er", "semantic")]
    assert card.architecture["num_classes"] == 3 and card.label_divisor == 1000
    assert len(r["losses"]) == 4 and (tmp_path / "run" / "checkpoint.pt").exists()
    res = panoptem.segment_2d(ps[0].image, "mc_model", device="cpu", return_outputs=True)
    assert res.semantic_probability.shape == (3, 64, 64)
    with pytest.raises(PanoptemError, match="label-divisor"):
        train_new([tmp_path / "mc"], "x", labels=["1,mito,instance", "2,er,semantic"], iterations=1)


def test_training_again_under_a_freed_name_trains_afresh(home, tmp_path):
    # the registered run's work folder stayed: the next run "resumed" its finished checkpoint
    from conftest import TINY_ARCH
    from panoptem.models.registry import archive
    ps = [Patch(*discs(i, n=2), (64, 64), "xy", i, 0, 0, 64, (64, 64), source="d") for i in range(2)]
    store_dataset(ps, tmp_path / "d")
    kw = dict(iterations=2, patch_size=64, architecture=TINY_ARCH, log=lambda s: None)
    assert len(train_new([tmp_path / "d"], "again", **kw)["losses"]) == 2
    archive("again")
    assert len(train_new([tmp_path / "d"], "again", **kw)["losses"]) == 2


# ---------------------------------------------------------------- command line


def test_cli_patches_and_finetune(home, tmp_path, tiny_card):
    import tifffile
    from panoptem.cli import app
    vol = np.stack([discs(i)[0] for i in range(6)])
    lab = np.stack([discs(i)[1] for i in range(6)])
    tifffile.imwrite(tmp_path / "vol.tif", vol)
    tifffile.imwrite(tmp_path / "lab.tif", lab)
    (tmp_path / "pts.csv").write_text("index,axis-0,axis-1,axis-2\n0,1,16,16\n")
    run = CliRunner().invoke
    res = run(app, ["patches", str(tmp_path / "vol.tif"), "-o", str(tmp_path / "todo"), "--n", "2",
                    "--patch-size", "32", "--points", str(tmp_path / "pts.csv"), "--flipbook", "--flipbook-depth", "3"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[0])
    assert out["images"] == 2 and out["masks"] == 0 and out["names"][0] == "vol_xy-1_y0_x0"
    assert "masks are to be painted" in res.output
    assert len(list((tmp_path / "todo" / "flipbooks").iterdir())) == 2
    assert not list((tmp_path / "todo" / "masks").iterdir())
    res = run(app, ["patches", str(tmp_path / "vol.tif"), "-o", str(tmp_path / "pairs"), "--n", "3",
                    "--patch-size", "64", "--is-2d-stack", "--labels", str(tmp_path / "lab.tif")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip())["masks"] == 3
    res = run(app, ["finetune", str(tiny_card), "--train-dir", str(tmp_path / "pairs"), "--name", "cli_ft",
                    "--iterations", "2", "--patch-size", "64"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["name"] == "cli_ft" and {"before", "after", "loss_first5", "card"} <= set(out)
    res = run(app, ["finetune", str(tiny_card), "--train-dir", str(tmp_path / "todo"), "--name", "z"])
    assert res.exit_code == 2 and "no mask" in res.output


@pytest.mark.parametrize("mode", ["percentile", "dtype_max"])
def test_training_scales_images_as_inference_does(mode):
    from panoptem.inference.preprocess import MEAN, STD, dtype_range, intensity_range, normalize
    from panoptem.models.card import Normalization
    from panoptem.training.dataset import _unit
    img = np.random.default_rng(0).integers(1000, 5000, (32, 32)).astype(np.uint16)
    norm = Normalization(mode=mode)
    lo, hi = dtype_range(img) if mode == "dtype_max" else intensity_range(img)
    np.testing.assert_allclose((_unit(img, norm) - MEAN) / STD, normalize(img, lo, hi), atol=1e-5)


def test_cards_and_weights_record_the_whole_architecture(home, tmp_path, tiny_card):
    """Weights never depend on constructor defaults: what training writes names every setting."""
    from panoptem.models.architecture import architecture_config
    every = set(architecture_config())
    r = train_new([disc_dataset(tmp_path / "d", n=1)], "partial", architecture={"widths": [8, 8, 8, 8, 8]},
                  iterations=1, patch_size=64, out_dir=tmp_path / "run", log=lambda s: None)
    arch = get_card("partial").architecture
    assert set(arch) == every and arch["widths"] == [8] * 5 and arch["decoder_channels"] == 64
    blob = torch.load(r["weights"], weights_only=True)
    assert blob["architecture"] == arch
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["architecture"] == arch
    r = finetune(str(tiny_card), tmp_path / "d", name="ft", iterations=1, patch_size=64, log=lambda s: None)
    assert set(get_card("ft").architecture) == every


# ---------------------------------------------------------------- schedule, empty patches, cancel


@pytest.mark.parametrize("steps", [20, 100, 1000])
def test_one_cycle_is_torchs_curve_where_torch_works(steps):
    from panoptem.training.train import OneCycle
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    o1, o2 = torch.optim.AdamW([p1], lr=2e-3), torch.optim.AdamW([p2], lr=2e-3)
    ref = torch.optim.lr_scheduler.OneCycleLR(o1, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    mine = OneCycle(o2, 2e-3, steps)
    for _ in range(steps):
        assert o1.param_groups[0]["lr"] == pytest.approx(o2.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        assert o1.param_groups[0]["betas"] == pytest.approx(o2.param_groups[0]["betas"])
        o1.step(); ref.step(); o2.step(); mine.step()
    assert mine.state_dict() == {"last_epoch": steps}


@pytest.mark.parametrize("steps", [1, 2, 9, 10, 11, 19])
def test_one_cycle_works_for_short_runs(steps):
    from panoptem.training.train import OneCycle
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = OneCycle(opt, 1e-3, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(1e-3)                       # no warm-up shorter than a step
    assert all(np.isfinite(lrs)) and all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("iterations", [1, 10, 11])
def test_finetune_any_number_of_iterations(home, tmp_path, tiny_card, iterations):
    data = disc_dataset(tmp_path / "ds", n=2)
    r = finetune(str(tiny_card), data, name=f"it{iterations}", iterations=iterations, patch_size=64,
                 log=lambda s: None)
    assert len(r["losses"]) == iterations and get_card(f"it{iterations}").training["iterations"] == iterations
    assert not (home / "training" / f"it{iterations}").exists()    # the work folder goes once registered


def test_train_new_at_ten_iterations(home, tmp_path):
    from conftest import TINY_ARCH
    data = disc_dataset(tmp_path / "ds", n=2)
    arch = {k: v for k, v in TINY_ARCH.items() if k != "num_classes"}
    r = train_new(data, "ten", iterations=10, patch_size=64, architecture=arch, log=lambda s: None)
    assert len(r["losses"]) == 10


def test_train_new_on_inverted_images_with_invert_trains_as_on_plain_ones(home, tmp_path):
    from conftest import TINY_ARCH
    plain = disc_dataset(tmp_path / "plain", n=2)
    store_dataset([Patch(255 - img, lab, img.shape, "xy", i, 0, 0, img.shape[0], img.shape, source="discs")
                   for i, (img, lab) in enumerate(discs(i) for i in range(2))], tmp_path / "inv")
    arch = {k: v for k, v in TINY_ARCH.items() if k != "num_classes"}
    a = train_new(plain, "a", iterations=3, patch_size=64, architecture=arch, log=lambda s: None)
    b = train_new(tmp_path / "inv", "b", iterations=3, patch_size=64, architecture=arch, log=lambda s: None,
                  invert=True)
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5)
    assert get_card("b").training["invert"] is True
    c = train_new(tmp_path / "inv", "c", iterations=3, patch_size=64, architecture=arch, log=lambda s: None)
    assert not np.allclose(c["losses"], a["losses"], rtol=1e-3)


def test_empty_patches_are_true_negatives_but_all_empty_is_refused(home, tmp_path, tiny_card):
    img, lab = discs(0)
    blank = np.full_like(img, 200)
    ps = [Patch(img, lab, img.shape, "xy", 0, 0, 0, 64, img.shape, source="d"),
          Patch(blank, np.zeros_like(lab), img.shape, "xy", 1, 0, 0, 64, img.shape, source="d")]
    store_dataset(ps, tmp_path / "ds")
    r = finetune(str(tiny_card), tmp_path / "ds", name="neg", iterations=3, patch_size=64, log=lambda s: None)
    assert get_card("neg").training["n_patches"] == 2 and len(r["losses"]) == 3
    store_dataset(ps[1:], tmp_path / "blank")
    with pytest.raises(PanoptemError, match="Every mask .* is empty"):
        finetune(str(tiny_card), tmp_path / "blank", name="none", iterations=3, patch_size=64)


def test_cancelled_finetune_keeps_its_checkpoint_and_continues(home, tmp_path, tiny_card):
    from panoptem.models.home import card_paths
    from panoptem.training.train import TrainingCancelled
    data, val = disc_dataset(tmp_path / "ds", n=2), disc_dataset(tmp_path / "val", n=1)
    seen = []
    with pytest.raises(TrainingCancelled) as e:
        finetune(str(tiny_card), data, val, name="stopme", iterations=8, patch_size=64, log=lambda s: None,
                 on_step=lambda r: seen.append(r["step"]), stop=lambda: len(seen) >= 2)
    work = home / "training" / "stopme"
    assert e.value.step == 3 and seen == [1, 2, 3]              # stop() first said yes after step 3
    assert e.value.checkpoint == work / "checkpoint.pt"
    assert torch.load(work / "checkpoint.pt", weights_only=False)["step"] == 3
    assert "stopme" not in card_paths()
    lines = []
    r = finetune(str(tiny_card), data, val, name="stopme", iterations=8, patch_size=64, log=lines.append)
    assert "resumed from step 3" in lines and len(r["losses"]) == 5
    assert "stopme" in card_paths() and not work.exists()
    scored = [h["step"] for h in r["validation"]]            # the steps scored before the stop too
    assert scored == list(range(1, 9)) and get_card("stopme").validation["scored_steps"] == scored


def test_a_refused_finetune_leaves_the_checkpoint_a_stopped_run_kept(home, tmp_path, tiny_card):
    from panoptem.training.train import TrainingCancelled
    data = disc_dataset(tmp_path / "ds", n=2)
    seen = []
    with pytest.raises(TrainingCancelled):
        finetune(str(tiny_card), data, name="X", layers="none", iterations=8, patch_size=64, log=lambda s: None,
                 on_step=lambda r: seen.append(r["step"]), stop=lambda: len(seen) >= 2)
    with pytest.raises(PanoptemError, match="other settings .*layers.*--restart"):  # another set of trained layers
        finetune(str(tiny_card), data, name="X", layers="all", iterations=8, patch_size=64, log=lambda s: None)
    assert (home / "training" / "X" / "checkpoint.pt").exists()  # the refusal did not delete it
    # another base model, another dataset: another run (its scores and weights are not this one's)
    other = tmp_path / "other.yaml"
    other.write_text(tiny_card.read_text())
    with pytest.raises(PanoptemError, match="base_model"):
        finetune(str(other), data, name="X", layers="none", iterations=8, patch_size=64, log=lambda s: None)
    with pytest.raises(PanoptemError, match="train_dir"):
        finetune(str(tiny_card), disc_dataset(tmp_path / "ds2", n=2), name="X", layers="none", iterations=8,
                 patch_size=64, log=lambda s: None)
    with pytest.raises(PanoptemError, match="step 3, past the 1 iterations"):
        finetune(str(tiny_card), data, name="X", layers="none", iterations=1, patch_size=64, log=lambda s: None)
    steps = []  # the same run resumes, and --restart starts afresh
    finetune(str(tiny_card), data, name="X", layers="none", iterations=8, patch_size=64, log=lambda s: None,
             on_step=lambda r: steps.append(r["step"]))
    assert steps == list(range(4, 9))
    steps.clear()
    finetune(str(tiny_card), data, name="X2", layers="all", iterations=3, patch_size=64, log=lambda s: None,
             on_step=lambda r: steps.append(r["step"]), resume=False)
    assert steps == [1, 2, 3]


def test_a_validation_folder_that_is_trained_on_is_refused(home, tmp_path, tiny_card):
    from panoptem.training.finetune import train_new
    data = disc_dataset(tmp_path / "root" / "ds", n=2)
    for val in (data, tmp_path / "root"):  # the folder itself, or a root holding it
        with pytest.raises(PanoptemError, match="also trained on"):
            finetune(str(tiny_card), data, val_dir=val, name="V", iterations=1, patch_size=64, log=lambda s: None)
        with pytest.raises(PanoptemError, match="also trained on"):
            train_new([data], name="W", val_dir=val, iterations=1, patch_size=64, log=lambda s: None)


def test_a_run_killed_while_scoring_scores_that_step_again(home, tmp_path, tiny_card):
    # the checkpoint of a step was written before its scoring: the resumed run never scored it
    from panoptem.training.train import load_checkpoint

    class Killed(Exception):
        pass

    data = disc_dataset(tmp_path / "ds", n=4)
    kw = dict(name="k", iterations=4, patch_size=64, val_fraction=0.5, validate_every=2, log=lambda s: None)
    import panoptem.training.finetune as ft
    real = ft.evaluate_pairs
    calls = []

    def evaluate_or_die(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # before, step 2, then step 4: the process dies here
            raise Killed
        return real(*a, **k)
    ft.evaluate_pairs = evaluate_or_die
    try:
        with pytest.raises(Killed):
            finetune(str(tiny_card), data, **kw)
    finally:
        ft.evaluate_pairs = real
    ckpt = home / "training" / "k" / "checkpoint.pt"
    assert not ckpt.exists() or load_checkpoint(ckpt)["step"] < 4
    r = finetune(str(tiny_card), data, **kw)
    assert [h["step"] for h in r["validation"]][-1] == 4


def test_cancelled_train_new_keeps_its_checkpoint(home, tmp_path):
    from conftest import TINY_ARCH

    from panoptem.training.train import TrainingCancelled
    data = disc_dataset(tmp_path / "ds", n=2)
    arch = {k: v for k, v in TINY_ARCH.items() if k != "num_classes"}
    with pytest.raises(TrainingCancelled, match="stopped after step 1 of 6"):
        train_new(data, "fresh", iterations=6, patch_size=64, architecture=arch, log=lambda s: None,
                  stop=lambda: True)
    assert torch.load(home / "training" / "fresh" / "checkpoint.pt", weights_only=False)["step"] == 1
    r = train_new(data, "fresh", iterations=6, patch_size=64, architecture=arch, log=lambda s: None)
    assert len(r["losses"]) == 5


@pytest.mark.parametrize("edit, field", [({"label_divisor": "1000"}, "label_divisor"),
                                         ({"label_divisor": -5}, "label_divisor"),
                                         ({"patches": ["a"]}, "patches"),
                                         ({"classes": "mitochondria"}, "classes"),
                                         ({"patches": {"a": {"middle": "1"}}}, "patches/a/middle")])
def test_a_hand_edited_dataset_description_is_refused_naming_the_field(tmp_path, edit, field):
    from panoptem.training.dataset import load_dataset
    data = disc_dataset(tmp_path / "ds", n=1)
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, **edit}))
    with pytest.raises(PanoptemError, match=f"'{field}' must be"):
        load_dataset(data)


def test_huge_ids_stay_objects(tmp_path):
    """Float ids past 2^32 (stored exactly as uint64) and uint64 ids past 2^63 (instance ids without
    a divisor) are objects to learn, not background."""
    from panoptem.training.dataset import TrainingData, label_mask
    lab = np.zeros((8, 8))
    lab[2:4, 2:4] = 2**33 + 1
    kept = label_mask(lab, "mask")
    assert kept.dtype == np.uint64 and int(kept.max()) == 2**33 + 1
    with pytest.raises(PanoptemError, match="2\\^53"):
        label_mask(np.full((2, 2), 2.0**60), "mask")
    huge = np.zeros((64, 64), np.uint64)
    huge[10:40, 10:40] = 2**63 + 5
    data = TrainingData([("src", [np.full((64, 64), 100, np.uint8)], [huge], None, ["a"])])
    assert np.count_nonzero(data._codes[0]) == 900
    with pytest.raises(PanoptemError, match="2\\^63"):
        TrainingData([("src", [np.full((64, 64), 100, np.uint8)], [huge], 1000, ["a"])])


def test_a_restarted_run_keeps_nothing_of_the_run_before(home, tmp_path, tiny_card):
    """--restart (resume=False) removes the earlier run's scores and best weights: a restarted run,
    stopped before it scored and resumed, reports only what it scored itself."""
    from panoptem.training.train import TrainingCancelled
    data = disc_dataset(tmp_path / "ds", n=4)

    def run(layers, validate_every, resume=True, stop_after=None):
        seen = []
        try:
            return finetune(str(tiny_card), data, name="X", layers=layers, iterations=4, patch_size=64,
                            validate_every=validate_every, resume=resume, log=lambda s: None,
                            on_step=lambda r: seen.append(r["step"]),
                            stop=(lambda: len(seen) >= stop_after) if stop_after is not None else None)
        except TrainingCancelled:
            return None
    run("none", 1, stop_after=2)                  # scored at steps 1 to 3, then stopped
    assert (home / "training" / "X" / "scores.json").exists()
    run("all", 4, resume=False, stop_after=0)     # another run, afresh, stopped at step 1 before scoring
    r = run("all", 4)                             # resumed: it scores at step 4 only
    assert [h["step"] for h in r["validation"]] == [4] and r["kept_step"] in (0, 4)


def test_finetune_takes_every_train_dir_given(home, tmp_path, tiny_card, capsys):
    from panoptem.cli import main
    a, b = disc_dataset(tmp_path / "a", n=3), disc_dataset(tmp_path / "b", n=2)
    assert main(["finetune", str(tiny_card), "--train-dir", str(a), "--train-dir", str(b), "--name", "ab",
                 "--iterations", "1", "--patch-size", "64", "--val-fraction", "0.25"]) == 0
    capsys.readouterr()
    t = get_card("ab").training
    assert t["train_dirs"] == [str(a), str(b)] and t["n_patches"] + len(t["held_out"]) == 5
    # a folder given twice, or also inside a root given, is taken once: none held out is trained on
    from panoptem.training.dataset import dataset_folders
    assert dataset_folders([a, a, tmp_path]) == [a, b]


def test_a_killed_finetune_resumes_from_its_last_scoring(home, tmp_path, tiny_card):
    """Killed at any step (here by an error after step 5), fine-tuning resumes from the checkpoint
    of its last scored step (4), not from step 0."""
    from panoptem.training.train import load_checkpoint

    class Killed(Exception):
        pass

    def die(rec):
        if rec["step"] == 5:
            raise Killed
    data = disc_dataset(tmp_path / "ds", n=4)
    kw = dict(name="k", iterations=8, patch_size=64, val_fraction=0.5, validate_every=2)
    with pytest.raises(Killed):
        finetune(str(tiny_card), data, log=lambda s: None, on_step=die, **kw)
    assert load_checkpoint(home / "training" / "k" / "checkpoint.pt")["step"] == 4
    lines, steps = [], []
    r = finetune(str(tiny_card), data, log=lines.append, on_step=lambda r: steps.append(r["step"]), **kw)
    assert "resumed from step 4" in lines and steps == [5, 6, 7, 8]
    assert [h["step"] for h in r["validation"]] == [2, 4, 6, 8]


def test_ctrl_c_of_the_finetune_command_keeps_a_checkpoint_the_same_command_resumes(home, tmp_path, tiny_card,
                                                                                   monkeypatch, capsys,
                                                                                   terminal_ctrl_c):
    """Ctrl-C: exit status 130 and the message to re-run; the same command resumes from the step
    it stopped at (it started over from step 0)."""
    import os
    import signal

    from panoptem.cli import main
    from panoptem.training import train as train_mod
    data = disc_dataset(tmp_path / "ds", n=4)
    args = ["finetune", str(tiny_card), "--train-dir", str(data), "--name", "cc", "--iterations", "6",
            "--patch-size", "64", "--validate-every", "100"]
    real, calls = train_mod.panoptic_loss, []

    def loss_then_ctrl_c(*a):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a)
    monkeypatch.setattr(train_mod, "panoptic_loss", loss_then_ctrl_c)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "stopped after step 3 of 6" in err and "re-run the same command to resume" in err
    monkeypatch.setattr(train_mod, "panoptic_loss", real)
    assert main(args) == 0
    assert "resumed from step 3" in capsys.readouterr().err
    assert get_card("cc").training["iterations"] == 6


def test_inverted_patches_train_and_score_as_the_plain_ones(home, tmp_path, tiny_card, monkeypatch):
    """``invert``: patches with bright discs on a dark ground give the network the input of the
    plain patches, so a fine-tuning run on them trains as the plain run does, and scores them
    segmented with ``invert`` (as the dark-disc finder below finds what it finds in the plain
    patches); the new card says so, and a scoring asked for with the other contrast is refused."""
    from panoptem.training import finetune as ft
    from _models import dark_blob_model
    plain, inv = disc_dataset(tmp_path / "plain", n=3), tmp_path / "inv"
    ps = []
    for i in range(3):
        img, lab = discs(i)
        ps.append(Patch(255 - img, lab, img.shape, "xy", i, 0, 0, img.shape[0], img.shape, source="discs"))
    store_dataset(ps, inv)
    cfg = TrainConfig(batch_size=2, patch_size=64)
    xa = DatasetFolders(plain).batch(np.random.default_rng(0), cfg)[0]
    xb = DatasetFolders(inv, invert=True).batch(np.random.default_rng(0), cfg)[0]
    torch.testing.assert_close(xb, xa, atol=1e-5, rtol=0)
    assert not torch.allclose(DatasetFolders(inv).batch(np.random.default_rng(0), cfg)[0], xa, atol=0.1)
    scored = []
    real = ft.evaluate_pairs

    def by_a_disc_finder(model, images, masks, divisors, **params):  # the scoring, with a model that finds discs
        scored.append(real(dark_blob_model(), images, masks, divisors, **params))
        return real(model, images, masks, divisors, **params)

    monkeypatch.setattr(ft, "evaluate_pairs", by_a_disc_finder)
    kw = dict(iterations=3, patch_size=64, val_fraction=0.34, log=lambda s: None)
    a = finetune(str(tiny_card), plain, name="plain", **kw)
    b = finetune(str(tiny_card), inv, name="inv", invert=True, **kw)
    assert a["before"] == b["before"] and a["after"] == b["after"]
    assert [h.split("/", 1)[1] for h in a["held_out"]] == [h.split("/", 1)[1] for h in b["held_out"]]
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5)
    half = len(scored) // 2
    assert scored[0]["n_pred"] > 0 and scored[half:] == scored[:half]  # the discs found, in both runs alike
    assert get_card("inv").training["invert"] is True and "invert" not in get_card("plain").training
    with pytest.raises(PanoptemError, match="invert is given twice"):
        finetune(str(tiny_card), inv, name="again", invert=True, segment_params={"invert": False}, **kw)
