"""Bad inputs, one per reproducer: each gets one ``error:`` line and exit 2 (no traceback),
leaves its inputs as they were and nothing behind in the output folder; or, where the input is
fine but ambiguous, it is read the documented way and the assumption is said."""
import errno
import hashlib
import json
import os
import re
import struct

import numpy as np
import pytest
import tifffile
import torch
import yaml

from panoptem.cli import main
from panoptem.errors import PanoptemError

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- helpers


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder):
    """Every file and folder under ``folder`` (hidden ones too) with its content hash."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


PROGRESS = re.compile(r"^[\w ]+:\s+\d+%\|")  # a tqdm bar (redrawn in place with carriage returns)


def error_lines(err):
    """stderr without progress bars and ``note:`` lines (what the reader assumed, said up front)."""
    out = []
    for ln in err.split("\n"):
        parts = [p for p in ln.split("\r") if p.strip()]
        if parts and not all(PROGRESS.match(p) for p in parts) and not ln.startswith("note: "):
            out.append(ln)
    return out


def assert_one_line_error(code, err, *words):
    lines = error_lines(err)
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def space(tmp_path):
    """``(inputs, outputs)`` folders; the test checks both are unchanged after a refused command."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    return inp, out


def refused(capsys, space, *args, words=()):
    """Run the command; assert one error line, and inputs and outputs untouched."""
    inp, out = space
    before_in, before_out = snapshot(inp), snapshot(out)
    code, _, err = run(capsys, *args)
    line = assert_one_line_error(code, err, *words)
    assert snapshot(inp) == before_in, "an input changed"
    assert snapshot(out) == before_out, f"left behind: {set(snapshot(out)) - set(before_out)}"
    return line


def huge_header_tiff(path, height, width, one_strip=True):
    """A baseline 8-bit TIFF whose header claims ``height x width`` pixels but holds 16 bytes."""
    data = b"\0" * 16
    rows, count = (height, min(height * width, 2**32 - 1)) if one_strip else (1, width)
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
            (277, 3, 1), (278, 4, rows), (279, 4, count)]
    ifd = struct.pack("<H", len(tags))
    for tag, typ, val in tags:
        ifd += struct.pack("<HHI", tag, typ, 1) + (struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val))
    path.write_bytes(b"II*\0" + struct.pack("<I", 8 + len(data)) + data + ifd + struct.pack("<I", 0))
    return path


def volume(path, shape=(6, 64, 64), seed=0, **kw):
    tifffile.imwrite(path, np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8), **kw)
    return path


# ---------------------------------------------------------------- 2. one clear line


@pytest.mark.parametrize("cmd", ["segment2d", "segment3d"])
def test_truncated_tiff(capsys, space, tiny_card, cmd):
    inp, out = space
    whole = volume(inp / "whole.tif", photometric="minisblack").read_bytes()
    (inp / "cut.tif").write_bytes(whole[: len(whole) // 2])
    refused(capsys, space, cmd, inp / "cut.tif", "-o", out / "o.tif", "--model", tiny_card,
            words=("cut.tif", "truncated"))


def test_truncated_compressed_tiff_is_not_read_as_its_first_slice(capsys, space, tiny_card):
    inp, out = space
    whole = volume(inp / "z.tif", (20, 64, 64), compression="zlib", photometric="minisblack").read_bytes()
    (inp / "cut.tif").write_bytes(whole[: len(whole) * 2 // 3])
    refused(capsys, space, "segment3d", inp / "cut.tif", "-o", out / "o.tif", "--model", tiny_card,
            words=("cut.tif", "truncated"))


@pytest.mark.parametrize("cmd", ["segment2d", "segment3d"])
@pytest.mark.parametrize("one_strip", [True, False])
def test_tiff_header_claiming_100000_squared_is_refused_before_allocating(capsys, space, tiny_card, cmd,
                                                                          one_strip, monkeypatch):
    inp, out = space
    huge_header_tiff(inp / "huge.tif", 100_000, 100_000, one_strip)

    def no_big_arrays(*a, **k):  # the refusal must come before any pixel buffer
        raise AssertionError("allocated pixels for a file that cannot hold them")
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_big_arrays)
    line = refused(capsys, space, cmd, inp / "huge.tif", "-o", out / "o.tif", "--model", tiny_card,
                   words=("huge.tif", "100000 x 100000"))
    assert "9.3 GiB" in line


def test_image_larger_than_memory_is_refused_before_reading(capsys, space, tiny_card, monkeypatch):
    from panoptem import _memory
    inp, out = space
    volume(inp / "img.tif", (256, 256))
    monkeypatch.setattr(_memory, "physical_memory", lambda: 100_000)  # a machine with 100 kB
    refused(capsys, space, "segment2d", inp / "img.tif", "-o", out / "o.tif", "--model", tiny_card,
            words=("256 x 256", "memory", "crop"))


def test_3d_labels_that_cannot_fit_in_memory_are_refused_before_the_network(capsys, space, tiny_card, monkeypatch):
    """A run that holds its labels in memory (ortho-plane here) on a machine without room for them
    is refused before any work, pointing to --blockwise; an xy run streams its labels to the file."""
    from panoptem import _memory
    from panoptem.inference import segment3d as s3
    inp, out = space
    volume(inp / "v.tif", (4, 64, 64))
    monkeypatch.setattr(_memory, "physical_memory", lambda: 4 * 4 * 64 * 64 - 1)  # not the labels' 64 kB
    monkeypatch.setattr(s3, "_segment", lambda *a, **k: pytest.fail("ran the network"))
    refused(capsys, space, "segment3d", inp / "v.tif", "-o", out / "o.tif", "--model", tiny_card, "--orthoplane",
            words=("4 x 64 x 64", "memory", "--blockwise"))
    with pytest.raises(PanoptemError, match="give an output file"):
        s3.segment_3d(tifffile.imread(inp / "v.tif"), tiny_card)
    monkeypatch.undo()
    monkeypatch.setattr(_memory, "physical_memory", lambda: 4 * 4 * 64 * 64 - 1)
    code, _, err = run(capsys, "segment3d", inp / "v.tif", "-o", out / "o.tif", "--model", tiny_card)
    assert code == 0, err


def test_a_lazy_2d_image_too_large_is_refused_before_it_is_read(space, tiny_card, monkeypatch):
    """A 2D Zarr image (taken whole to make a stack of one plane) is refused by the memory check
    before it is read."""
    import zarr

    from panoptem import _memory, segment_2d
    from panoptem.inference import segment2d as s2
    from panoptem.io import read_image
    inp, _ = space
    zarr.open_group(str(inp / "big.zarr"), mode="w").create_array("0", shape=(512, 512), chunks=(64, 64),
                                                                 dtype=np.uint8)
    monkeypatch.setattr(_memory, "physical_memory", lambda: 100_000)
    monkeypatch.setattr(s2, "_one_plane_stack", lambda *a: pytest.fail("read the image"))
    with pytest.raises(PanoptemError, match="512 x 512 pixels"):
        segment_2d(read_image(inp / "big.zarr").data, tiny_card)


def test_the_3d_memory_check_counts_every_volume_a_run_holds(space, monkeypatch):
    """A two-class run holds a volume per class beside its panoptic stack, an ortho-plane consensus
    three stacks beside its labels: counted as one volume, they were let through."""
    from _models import dark_blob_model, save_two_class_model
    from panoptem import _memory
    from panoptem.inference import segment3d as s3
    inp, _ = space
    card = save_two_class_model(inp)
    vol = np.zeros((4, 64, 64), np.uint8)
    monkeypatch.setattr(_memory, "physical_memory", lambda: 2 * 4 * vol.size)   # room for two uint32 volumes
    monkeypatch.setattr(s3, "_segment", lambda *a, **k: pytest.fail("ran the network"))
    with pytest.raises(PanoptemError, match="its labels alone"):
        s3.segment_3d(vol, card)                        # 2 classes + the panoptic stack: 3 volumes
    with pytest.raises(PanoptemError, match="its labels alone"):
        s3.segment_3d(vol, dark_blob_model(), orthoplane=True)   # labels + 3 stacks


@pytest.mark.parametrize("cmd", ["segment2d", "segment3d"])
def test_tile_size_7(capsys, space, tiny_card, cmd):
    inp, out = space
    volume(inp / "v.tif", photometric="minisblack")
    refused(capsys, space, cmd, inp / "v.tif", "-o", out / "o.tif", "--model", tiny_card, "--tile-size", "7",
            words=("tile_size", "at least 64"))


def test_tile_too_small_for_the_model_at_this_downsampling(capsys, space, tiny_card):
    inp, out = space
    volume(inp / "v.tif", (256, 256))
    refused(capsys, space, "segment2d", inp / "v.tif", "-o", out / "o.tif", "--model", tiny_card,
            "--tile-size", "100", "--downsampling", "2", words=("Tile size 100", "at least 128"))


@pytest.mark.parametrize("cmd", ["segment2d", "segment3d"])
def test_tile_too_small_where_the_pixel_size_reduces_the_image_further(capsys, space, cmd):
    """A tile that fits Image Downsampling 4 but not the 8 times the pixel size makes of it
    (2.5 nm for a 5 nm model): one line, before any output (it once stopped in the tiling)."""
    from conftest import make_tiny_card
    inp, out = space
    card = make_tiny_card(inp, voxel_size_nm=5.0)
    volume(inp / "v.tif", (3, 500, 415) if cmd == "segment3d" else (500, 415))
    refused(capsys, space, cmd, inp / "v.tif", "-o", out / "o.tif", "--model", card, "--tile-size", "384",
            "--downsampling", "4", "--pixel-size", "2.5", words=("Tile size 384", "8 times", "at least 512"))


@pytest.mark.parametrize("cmd", ["segment2d", "segment3d"])
@pytest.mark.parametrize("device", ["banana", "cpu:1", "cuda:x", ""])
def test_bad_device(capsys, space, tiny_card, cmd, device):
    inp, out = space
    volume(inp / "v.tif", photometric="minisblack")
    refused(capsys, space, cmd, inp / "v.tif", "-o", out / "o.tif", "--model", tiny_card, "--device", device,
            words=("auto, cpu, cuda",))


@pytest.mark.parametrize("batch", ["-1", "-8"])
def test_batch_size_leaves_no_cache_folder(capsys, space, tiny_card, batch):
    inp, out = space
    volume(inp / "v.tif", photometric="minisblack")
    refused(capsys, space, "segment3d", inp / "v.tif", "-o", out / "o.tif", "--model", tiny_card,
            "--batch-size", batch, words=("Batch size",))
    assert not (out / ".o.tif.panoptem-cache").exists()


def test_card_whose_weights_are_another_network(capsys, space, tiny_card):
    inp, out = space
    volume(inp / "v.tif", (64, 64))
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
    torch.save(other.state_dict(), inp / "other.pt")
    card = yaml.safe_load(tiny_card.read_text())
    card["weights"] = {"file": "other.pt"}
    (inp / "other.yaml").write_text(yaml.safe_dump(card))
    refused(capsys, space, "segment2d", inp / "v.tif", "-o", out / "o.tif", "--model", inp / "other.yaml",
            words=("other.pt", "do not fit", "another network"))


def test_card_whose_weights_are_not_a_state_dict(capsys, space, tiny_card):
    inp, out = space
    volume(inp / "v.tif", (64, 64))
    torch.save([1, 2, 3], inp / "list.pt")
    card = yaml.safe_load(tiny_card.read_text())
    card["weights"] = {"file": "list.pt"}
    (inp / "list.yaml").write_text(yaml.safe_dump(card))
    refused(capsys, space, "segment2d", inp / "v.tif", "-o", out / "o.tif", "--model", inp / "list.yaml",
            words=("list.pt", "no state dict"))


def test_measure_zero_size_image(capsys, space):
    inp, out = space
    with pytest.warns(UserWarning):
        tifffile.imwrite(inp / "empty.tif", np.zeros((0, 0), np.uint8))
    refused(capsys, space, "measure", inp / "empty.tif", "-o", out / "t.csv", words=("empty.tif", "no pixels"))
    from panoptem import measure
    with pytest.raises(PanoptemError, match="no pixels"):
        measure(np.zeros((0, 5), np.uint32))


def test_measure_never_writes_over_its_input_or_a_table_without_overwrite(capsys, space):
    """`measure -o` naming the labels (a slip of the keyboard) once replaced them with a CSV."""
    inp, out = space
    tifffile.imwrite(inp / "lab.tif", np.ones((8, 8), np.uint16))
    refused(capsys, space, "measure", inp / "lab.tif", "-o", inp / "lab.tif", words=("lab.tif", ".csv"))
    refused(capsys, space, "measure", inp / "lab.tif", "-o", out / "lab.tiff", words=(".csv, .xlsx, .parquet",))
    (out / "t.csv").write_text("a table of the user's\n")
    refused(capsys, space, "measure", inp / "lab.tif", "-o", out / "t.csv", words=("already exists", "--overwrite"))
    code, _, err = run(capsys, "measure", inp / "lab.tif", "-o", out / "t.csv", "--overwrite")
    assert code == 0, err
    assert (out / "t.csv").read_text().startswith("label,")


@pytest.mark.parametrize("voxel", ["a,b", "1,nan", "0,1", "-1,1", ",", "1e308,1e308"])
def test_measure_bad_voxel_size(capsys, space, voxel):
    inp, out = space
    tifffile.imwrite(inp / "lab.tif", np.ones((8, 8), np.uint16))
    refused(capsys, space, "measure", inp / "lab.tif", "-o", out / "t.csv", "--voxel-size", voxel,
            words=("--voxel-size",))


def disc_dataset(folder, n=2, empty=()):
    """A dataset folder: ``n`` 64x64 patches with a painted disc, except the ``empty`` ones."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    yy, xx = np.indices((64, 64))
    for i in range(n):
        disc = (yy - 32) ** 2 + (xx - 20 - 8 * i) ** 2 < 100
        tifffile.imwrite(folder / "images" / f"p{i}.tif", np.where(disc, 40, 200).astype(np.uint8))
        tifffile.imwrite(folder / "masks" / f"p{i}.tif", (disc * (i not in empty)).astype(np.uint16))
    return folder


def test_finetune_dataset_holding_a_text_file_named_tif(capsys, space, tiny_card, home):
    inp, out = space
    ds = disc_dataset(inp / "ds")
    (ds / "images" / "notes.tif").write_text("this is text, not an image\n")
    (ds / "masks" / "notes.tif").write_text("this too\n")
    refused(capsys, space, "finetune", tiny_card, "--train-dir", ds, "--name", "x", "--iterations", "1",
            "--patch-size", "64", "--device", "cpu", words=("notes.tif", "Could not read"))
    assert not (home / "models").exists()


@pytest.mark.parametrize("option, value, word", [
    ("--lr", "nan", "finite"), ("--lr", "-1", "greater than 0"), ("--lr", "inf", "finite"),
    ("--batch-size", "0", "batch_size"), ("--iterations", "0", "iterations"), ("--seed", "-1", "seed"),
    ("--patch-size", "100", "multiple of 32"), ("--layers", "decoder", "layers"),
    ("--seed", str(2**64), "at most 2^53"), ("--iterations", str(2**70), "at most 2^53"),
])
def test_finetune_bad_numbers(capsys, space, tiny_card, home, option, value, word):
    inp, _ = space
    ds = disc_dataset(inp / "ds")
    refused(capsys, space, "finetune", tiny_card, "--train-dir", ds, "--name", "x", option, value, words=(word,))
    assert not home.exists()


@pytest.mark.parametrize("option, value, word", [
    ("--widths", "-1,2,3,4,5", "idths"), ("--widths", "8,8,8", "idths"), ("--widths", "a,b", "idths"),
    ("--gamma", "nan", "gamma"), ("--gamma", "-1", "gamma"), ("--lr", "nan", "lr"),
    ("--label-divisor", "0", "label_divisor"), ("--voxel-size-nm", "-5", "voxel_size_nm"),
    ("--voxel-size-nm", "nan", "voxel_size_nm"), ("--batch-size", "-3", "batch_size"),
])
def test_train_bad_numbers(capsys, space, home, option, value, word):
    inp, _ = space
    ds = disc_dataset(inp / "ds")
    refused(capsys, space, "train", "--train-dir", ds, "--name", "x", "--iterations", "1", "--patch-size", "64",
            option, value, words=(word,))
    assert not home.exists()  # nothing registered, no training folder


@pytest.mark.parametrize("args, word", [
    (("--train-slices", "abc"), "START:STOP"), (("--train-slices", "5:5"), "select nothing"),
    (("--val-slices", "3:4"), "select one slice"),
    (("--lr", "nan"), "lr"), (("--min-scale", "2", "--max-scale", "1"), "scale"),
    (("--batch-size", "0"), "batch_size"), (("--schedule-steps", "-1"), "schedule_steps"),
])
def test_train_volume_bad_options(capsys, space, args, word):
    inp, out = space
    volume(inp / "v.tif", (6, 64, 64), photometric="minisblack")
    refused(capsys, space, "train-volume", inp / "v.tif", inp / "v.tif", "-o", out / "run", *args, words=(word,))


@pytest.mark.parametrize("args, word", [
    (("--n", "-1"), "'n'"), (("--patch-size", "0"), "patch_size"), (("--plane", "diagonal"), "plane"),
    (("--flipbook-depth", "0"), "flipbook_depth"), (("--seed", "-2"), "seed"), (("--n", "0"), "Nothing to store"),
    (("--label-divisor", "0"), "label_divisor"), (("--class", "x,y"), "integer"),
])
def test_patches_bad_options_create_no_folder(capsys, space, args, word):
    inp, out = space
    volume(inp / "v.tif", (6, 64, 64), photometric="minisblack")
    refused(capsys, space, "patches", inp / "v.tif", "-o", out / "ds", "--patch-size", "32", *args, words=(word,))
    assert not (out / "ds").exists()


@pytest.mark.parametrize("cmd", [("patches", "{z}", "-o", "{z}", "--patch-size", "32"),
                                 ("patches", "{z}", "-o", "{z}/ds", "--patch-size", "32"),
                                 ("train-volume", "{z}", "{z}", "-o", "{z}/run", "--iterations", "1")])
def test_a_dataset_or_run_folder_in_the_input_store_is_one_line(capsys, space, cmd):
    """Datasets and checkpoints are never written into an input (a Zarr store here)."""
    import zarr
    inp, _ = space
    zarr.open_group(str(inp / "v.zarr"), mode="w").create_array("0", data=np.full((6, 64, 64), 9, np.uint8))
    refused(capsys, space, *[a.format(z=inp / "v.zarr") for a in cmd], words=("inside the input",))


@pytest.mark.parametrize("cmd", [("train-volume", "{v}", "{v}", "-o", "{f}", "--iterations", "1"),
                                 ("train-volume", "{v}", "{v}", "-o", "{f}/run", "--iterations", "1"),
                                 ("patches", "{v}", "-o", "{f}", "--patch-size", "32"),
                                 ("segment3d", "{v}", "-o", "{o}", "--model", "{card}", "--cache-dir", "{f}"),
                                 ("segment3d", "{v}", "-o", "{o}", "--model", "{card}", "--cache-dir", "{f}/c",
                                  "--blockwise", "--workers", "1")])
def test_a_folder_argument_naming_a_file_is_one_line(capsys, space, tiny_card, cmd):
    """-o of training and of patches, and --cache-dir, name folders; a file there is refused, untouched."""
    inp, out = space
    volume(inp / "v.tif", (6, 64, 64), photometric="minisblack")
    (out / "notes.txt").write_text("a file of the user's\n")
    args = [a.format(v=inp / "v.tif", f=out / "notes.txt", o=out / "o.zarr", card=tiny_card) for a in cmd]
    refused(capsys, space, *args, words=("notes.txt", "not a folder"))


@pytest.mark.parametrize("command", ["segment3d", "measure"])
def test_an_output_name_too_long_for_what_is_kept_beside_it_is_one_line(capsys, space, tiny_card, command):
    """A legal 249-byte name: the files kept beside it while writing (.NAME.<id>.part, .NAME.lock)
    were past the file system's 255 bytes (a raw OSError)."""
    inp, out = space
    volume(inp / "v.tif", (4, 64, 64), photometric="minisblack")
    tifffile.imwrite(inp / "l.tif", np.ones((4, 64, 64), np.uint16), photometric="minisblack")
    name = "m" * 245
    cmd = (("segment3d", inp / "v.tif", "-o", out / f"{name}.tif", "--model", tiny_card) if command == "segment3d"
           else ("measure", inp / "l.tif", "-o", out / f"{name}.csv"))
    refused(capsys, space, *cmd, words=("bytes long", "shorten it"))


def test_a_folder_where_a_table_goes_is_replaced_with_overwrite(capsys, tmp_path):
    """--overwrite replaces a folder standing where a one-file output goes, as segment3d does (the
    table and report writers raised IsADirectoryError)."""
    tifffile.imwrite(tmp_path / "l.tif", np.ones((4, 16, 16), np.uint16), photometric="minisblack")
    (tmp_path / "t.csv").mkdir()
    (tmp_path / "t.csv" / "inside.txt").write_text("x")
    code, _, err = run(capsys, "measure", tmp_path / "l.tif", "-o", tmp_path / "t.csv", "--overwrite")
    assert code == 0, err
    assert (tmp_path / "t.csv").is_file() and (tmp_path / "t.csv").read_text().startswith("label")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_literal_tilde_is_the_home_folder_everywhere(monkeypatch, tmp_path, tiny_card):
    """'~/...' given in Python (or quoted on the command line): the output, the cache and a dataset
    folder go to the home folder, with no './~' folder made beside."""
    from panoptem import segment_3d
    from panoptem.training.dataset import store_dataset
    from panoptem.training.patches import pick_patches
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    vol = np.random.default_rng(0).integers(0, 255, (4, 64, 64)).astype(np.uint8)
    segment_3d(vol, str(tiny_card), output="~/a.tif", cache_dir="~/cache", keep_cache=True)
    store_dataset(pick_patches(vol[0], n=1, patch_size=32), "~/ds")
    assert (home / "a.tif").is_file() and (home / "cache").is_dir() and (home / "ds" / "images").is_dir()
    from panoptem import segment_2d
    from panoptem.models.home import user_home
    from panoptem.training.dataset import dataset_folders
    assert dataset_folders(["~/ds"]) == [home / "ds"]
    segment_2d(vol, str(tiny_card), batch=True, resume_dir="~/slices")
    monkeypatch.setenv("PANOPTEM_HOME", "~/models")
    assert user_home() == home / "models"
    assert (home / "slices").is_dir() and list(cwd.iterdir()) == []


CACHE_CASES = ["foreign xy.zarr file", "foreign xy.zarr store", "preview", "output", "in input", "output a store",
               "in output", "input a store"]


@pytest.mark.parametrize("blockwise", [False, True])
@pytest.mark.parametrize("case", CACHE_CASES)
def test_a_cache_folder_that_would_write_over_the_users_files_is_one_line(capsys, space, tiny_card, case, blockwise):
    """--cache-dir never writes into what is not panoptem's cache: a user's xy.zarr in it (a file
    raised FileExistsError; a store was written into), the output or the preview (is, holds or
    lies in the cache's xy.zarr: the labels replaced the cache and a later run decoded zeros),
    an input store (the cache in it, or it as the cache's xy.zarr)."""
    import zarr
    inp, out = space
    volume(inp / "v.tif", (4, 64, 64), photometric="minisblack")
    source, output = inp / "v.tif", out / "o.zarr"
    args, word = ["--cache-dir", str(out / "cd")], "not panoptem's cache"
    if case == "foreign xy.zarr file":
        (out / "cd").mkdir()
        (out / "cd" / "xy.zarr").write_text("a user's file\n")
    elif case == "foreign xy.zarr store":
        zarr.open_group(str(out / "cd" / "xy.zarr"), mode="w").create_array("raw", data=np.ones((2, 8, 8), np.uint8))
    elif case == "preview":
        pytest.importorskip("matplotlib")
        args, word = ["--cache-dir", str(out / "p.png"), "--preview", str(out / "p.png")], "p.png' overlap"
    elif case == "output":
        args, word = ["--cache-dir", str(out / "o.zarr")], "o.zarr' overlap"
    elif case == "output a store":
        output, word = out / "cd" / "xy.zarr", "xy.zarr' overlap"
    elif case == "in output":
        args, word = ["--cache-dir", str(out / "o.zarr" / "c")], "o.zarr' overlap"
    elif case == "in input":
        zarr.open_group(str(inp / "v.zarr"), mode="w").create_array("0", data=np.full((4, 64, 64), 9, np.uint8))
        source, args, word = inp / "v.zarr", ["--cache-dir", str(inp / "v.zarr" / "cache")], "inside the input"
    else:
        zarr.open_group(str(inp / "xy.zarr"), mode="w").create_array("0", data=np.full((4, 64, 64), 9, np.uint8))
        source, args, word = inp / "xy.zarr", ["--cache-dir", str(inp)], "xy.zarr' overlap"
    more = ["--blockwise", "--workers", "1"] if blockwise else []
    refused(capsys, space, "segment3d", source, "-o", output, "--model", tiny_card, *args, *more, words=(word,))


def test_a_blockwise_run_refused_for_its_cache_leaves_no_work_folder(capsys, space, tiny_card):
    """A cache holding a whole-volume run's outputs: refused in one line, and the blockwise work
    folder made before the cache was looked at is gone (it stayed, with its run.json)."""
    inp, out = space
    volume(inp / "v.tif", (4, 64, 64), photometric="minisblack")
    code, _, err = run(capsys, "segment3d", inp / "v.tif", "-o", out / "whole.tif", "--model", tiny_card,
                       "--cache-dir", out / "cache")
    assert code == 0, err
    refused(capsys, space, "segment3d", inp / "v.tif", "-o", out / "bw.zarr", "--model", tiny_card, "--cache-dir",
            out / "cache", "--blockwise", "--workers", "1", words=("whole-volume run",))


@pytest.mark.parametrize("command, args, word", [
    ("segment3d", ("--scheduler", "nonsense"), "not a Dask scheduler address"),
    ("segment3d", ("--scheduler", "tcp://host:notaport"), "not a Dask scheduler address"),
    ("segment3d", ("--scheduler", ""), "not a Dask scheduler address"),
    ("segment3d", ("--workers", "100000"), "--workers must be from 1 to"),
    ("segment3d", ("--workers", "0"), "--workers must be from 1 to"),
    ("measure", ("--scheduler", "http://host:8786"), "not a Dask scheduler address"),
    ("measure", ("--workers", "-1"), "--workers must be from 1 to"),
    ("segment3d", ("--workers", "2", "--scheduler", "tcp://127.0.0.1:1"), "Drop --workers"),  # was ignored
    ("measure", ("--workers", "2", "--scheduler", "tcp://127.0.0.1:1"), "Drop --workers"),
])
def test_blockwise_cluster_options_are_checked_before_any_work(capsys, space, tiny_card, command, args, word):
    """A scheduler address Dask cannot parse (a ValueError traceback; '' ran locally), a worker
    count past 4 per core (it tried to start them all) and local workers asked for beside a
    scheduler (ignored without a word) are one line, and leave no work folder."""
    inp, out = space
    volume(inp / "v.tif", (4, 64, 64), photometric="minisblack")
    tifffile.imwrite(inp / "l.tif", np.ones((4, 64, 64), np.uint16), photometric="minisblack")
    if command == "segment3d":
        cmd = ("segment3d", inp / "v.tif", "-o", out / "o.zarr", "--model", tiny_card, "--blockwise")
    else:
        cmd = ("measure", inp / "l.tif", "-o", out / "t.csv", "--blockwise")
    refused(capsys, space, *cmd, *args, words=(word,))


@pytest.mark.parametrize("command, shape, args, word", [
    ("segment2d", (4, 64, 64), ("--key", "raw"), "drop the key"),
    ("segment3d", (4, 64, 64), ("--key", "raw"), "drop the key"),
    ("segment2d", (4, 64, 64), ("--unique-ids",), "add --batch"),
    ("segment2d", (4, 64, 64), ("--batch", "--slice", "2"), "--batch segments every xy slice"),
    ("segment2d", (64, 64), ("--plane", "xz"), "one 2D image"),
    ("segment2d", (64, 64), ("--slice", "0"), "one 2D image"),
    ("bench", (4, 64, 64), ("--orthoplane", "--plane", "yz"), "drop --plane"),
])
def test_options_that_would_do_nothing_are_one_line(capsys, space, tiny_card, command, shape, args, word):
    """An option that cannot apply to this input or run is refused, not silently ignored."""
    inp, out = space
    volume(inp / "v.tif", shape, photometric="minisblack")
    target = () if command == "bench" else ("-o", out / "o.tif")
    refused(capsys, space, command, inp / "v.tif", *target, "--model", tiny_card, *args, words=(word,))


@pytest.mark.parametrize("command", ["segment2d", "segment3d"])
def test_a_preview_inside_the_output_names_the_output(capsys, space, tiny_card, command):
    pytest.importorskip("matplotlib")
    inp, out = space
    volume(inp / "v.tif", (4, 64, 64), photometric="minisblack")
    refused(capsys, space, command, inp / "v.tif", "-o", out / "o.zarr", "--model", tiny_card,
            "--preview", out / "o.zarr" / "p.png", words=("is inside) the output", "o.zarr"))


BROKEN_YAML = "name: x\n  weights: [1, 2\n"


@pytest.mark.parametrize("cmd", [("model", "info", "{card}"),
                                 ("segment2d", "{img}", "-o", "{out}", "--model", "{card}"),
                                 ("model", "register", "x", "--card", "{card}")])
def test_yaml_error_is_one_line_with_file_and_place(capsys, space, home, cmd):
    inp, out = space
    card = inp / "bad.yaml"
    card.write_text(BROKEN_YAML)
    volume(inp / "v.tif", (64, 64))
    args = [a.format(card=card, img=inp / "v.tif", out=out / "o.tif") for a in cmd]
    line = refused(capsys, space, *args, words=("bad.yaml", "not valid YAML", "line 2, column 10"))
    assert "^" not in line


@pytest.mark.parametrize("content", [b"not a png at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_unreadable_png_is_one_line(capsys, space, tiny_card, content):
    inp, out = space
    (inp / "bad.png").write_bytes(content)
    refused(capsys, space, "segment2d", inp / "bad.png", "-o", out / "o.tif", "--model", tiny_card,
            words=("bad.png",))


def test_corrupt_strip_inside_a_volume_is_one_line(capsys, space, tiny_card):
    inp, out = space
    path = volume(inp / "z.tif", (12, 64, 64), compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[7].dataoffsets[0]
    data = bytearray(path.read_bytes())
    data[offset:offset + 40] = b"\xff" * 40
    path.write_bytes(bytes(data))
    for cmd in (["segment3d"], ["segment2d", "--batch"]):
        refused(capsys, space, cmd[0], path, "-o", out / "o.tif", "--model", tiny_card, *cmd[1:],
                words=("z.tif", "corrupt"))


def test_known_reader_errors_that_escape_are_one_line(capsys, space, tiny_card, monkeypatch):
    """The top-level handler's net: a decoder's own error class (here tifffile's) becomes one line."""
    from panoptem.inference import segment2d as s2
    inp, out = space
    volume(inp / "v.tif", (64, 64))

    def boom(*a, **k):
        raise tifffile.TiffFileError("corrupted page\nsecond line of detail")
    monkeypatch.setattr(s2, "segment_2d", boom)
    refused(capsys, space, "segment2d", inp / "v.tif", "-o", out / "o.tif", "--model", tiny_card,
            words=("TiffFileError", "corrupted page second line"))


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_one_line_saying_what_to_do(capsys, space, tiny_card, monkeypatch, err):
    """A disk that fills during a run (here as the streamed output is written) is named as such,
    with the way on: free space or write elsewhere, then the same command resumes."""
    from panoptem.inference import segment3d as s3
    inp, out = space
    volume(inp / "v.tif", (4, 64, 64))

    def full(*a, **k):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(s3, "segment_3d", full)
    refused(capsys, space, "segment3d", inp / "v.tif", "-o", out / "o.zarr", "--model", tiny_card,
            words=("disk is full", os.strerror(err), "run the same command again"))


@pytest.mark.parametrize("where", ["output folder", "input"])
def test_no_permission_is_one_line_naming_the_folder_or_file(capsys, space, tiny_card, monkeypatch, where):
    """A folder the user cannot write to (the lock or temporary file panoptem was creating in it)
    is named by the folder; a file that exists but cannot be read, by itself."""
    from panoptem.inference import segment3d as s3
    inp, out = space
    volume(inp / "v.tif", (4, 64, 64))
    name = out / ".o.zarr.lock" if where == "output folder" else inp / "v.tif"

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(name))
    monkeypatch.setattr(s3, "segment_3d", denied)
    refused(capsys, space, "segment3d", inp / "v.tif", "-o", out / "o.zarr", "--model", tiny_card,
            words=(f"no permission to use '{out if where == 'output folder' else name}'", "a folder you can write to"))


@pytest.mark.parametrize("command, args, word", [
    ("segment3d", ("--min-extent", str(2**64)), "at most 2^53"),
    ("segment3d", ("--min-size", str(2**63)), "at most 2^53"),
    ("segment2d", ("--maximum-objects-per-class", str(2**63)), "at most 2^53"),
    ("segment2d", ("--threads", str(10**20)), "from 1 to 4096"),
])
def test_whole_numbers_past_64_bits_are_one_line(capsys, space, tiny_card, command, args, word):
    """Numbers too large for the 64-bit arithmetic of ids and sizes are refused up front (they
    raised OverflowError, or with a divisor near 2^63 gave labels that were all 0)."""
    inp, out = space
    volume(inp / "v.tif", (4, 64, 64), photometric="minisblack")
    refused(capsys, space, command, inp / "v.tif", "-o", out / "o.tif", "--model", tiny_card, *args, words=(word,))


@pytest.mark.parametrize("args, word", [
    (("--confidence-thr", "abc"), "--confidence-thr"), (("--tile-size", "1.5"), "--tile-size"),
    (("--no-such-option",), "No such option"), (("-o",), "requires an argument"),
])
def test_usage_errors_are_one_line(capsys, space, tiny_card, args, word):
    inp, out = space
    volume(inp / "v.tif", (64, 64))
    refused(capsys, space, "segment2d", inp / "v.tif", "--model", tiny_card, "-o", out / "o.tif", *args,
            words=(word,))


def test_missing_argument_is_one_line(capsys, space):
    line = refused(capsys, space, "segment2d", words=("Missing argument",))
    assert "panoptem segment2d --help" in line


def test_warnings_are_one_line(capsys, space):
    import warnings
    from panoptem import cli
    inp, _ = space

    @cli.app.command("warn-test-only")
    def _warn():
        warnings.warn("first\nsecond", UserWarning)
    try:
        code, _, err = run(capsys, "warn-test-only")
    finally:
        cli.app.registered_commands.pop()
    assert code == 0 and err == "warning: first second\n"


@pytest.mark.parametrize("cmd", ["measure", "evaluate"])
def test_label_divisor_larger_than_the_label_dtype(capsys, tmp_path, cmd):
    """Found by the fuzz test: uint8 labels with --label-divisor 1000 overflowed numpy."""
    lab = np.zeros((16, 16), np.uint8)
    lab[2:6, 2:6], lab[9:14, 9:14] = 1, 2
    tifffile.imwrite(tmp_path / "lab.tif", lab)
    args = [tmp_path / "lab.tif", "-o", tmp_path / "t.csv"] if cmd == "measure" else [tmp_path / "lab.tif"] * 2
    code, out, err = run(capsys, cmd, *args, "--label-divisor", "1000")
    assert code == 0, err
    rec = json.loads(out.strip().splitlines()[-1])
    assert rec["objects"] == 2 if cmd == "measure" else rec["f1_50"] == 1.0


# ---------------------------------------------------------------- 3. refused or handled


def test_all_empty_masks_refused_some_empty_fine(tmp_path, home):
    from panoptem.training.dataset import DatasetFolders
    with pytest.raises(PanoptemError, match="is empty"):
        DatasetFolders([disc_dataset(tmp_path / "none", empty=(0, 1))])
    data = DatasetFolders([disc_dataset(tmp_path / "some", empty=(0,))])
    assert len(data) == 2 and not data.masks[0].any() and data.masks[1].any()


@pytest.mark.parametrize("cmd", [("finetune", "{card}"), ("train",)])
def test_all_empty_masks_refused_by_the_commands(capsys, space, tiny_card, home, cmd):
    inp, _ = space
    ds = disc_dataset(inp / "ds", empty=(0, 1))
    args = [a.format(card=tiny_card) for a in cmd]
    refused(capsys, space, *args, "--train-dir", ds, "--name", "x", "--iterations", "1", "--patch-size", "64",
            "--device", "cpu", words=("empty", "paint"))
    assert not (home / "models").exists()


def test_train_gamma_nan_registers_nothing(tmp_path, home):
    from panoptem.training.finetune import train_new
    with pytest.raises(PanoptemError, match="gamma"):
        train_new([disc_dataset(tmp_path / "ds")], "x", iterations=1, patch_size=64, gamma=float("nan"))
    assert not home.exists()


def test_qsyx_tiff_is_refused_naming_its_axes(capsys, space, tiny_card):
    from panoptem.io import read_image
    inp, out = space
    with pytest.warns(DeprecationWarning):  # tifffile stores the 4 as separate RGBA planes
        volume(inp / "q.tif", (2, 4, 256, 256))
    with tifffile.TiffFile(inp / "q.tif") as tif:
        assert tif.series[0].axes == "QSYX"  # what the reproducer is about
    for cmd in ("segment2d", "segment3d"):
        refused(capsys, space, cmd, inp / "q.tif", "-o", out / "o.tif", "--model", tiny_card,
                words=("q.tif", "4D", "Q (unknown) = 2", "S (colour samples) = 4", "one channel"))
    with pytest.raises(PanoptemError, match="4D"):
        read_image(inp / "q.tif")


@pytest.mark.parametrize("n", [3, 4])
def test_three_or_four_slices_without_metadata_stay_a_stack(capsys, tmp_path, tiny_card, n):
    from panoptem.io import read_image
    vol = np.random.default_rng(n).integers(0, 255, (n, 64, 64), dtype=np.uint8)
    with pytest.warns(DeprecationWarning):  # tifffile stores them as separate RGB(A) planes
        tifffile.imwrite(tmp_path / "s.tif", vol)
    img = read_image(tmp_path / "s.tif")
    np.testing.assert_array_equal(np.asarray(img.data), vol)
    assert len(img.notes) == 1 and f"{n} grey slices" in img.notes[0]
    code, out, err = run(capsys, "segment3d", tmp_path / "s.tif", "-o", tmp_path / "o.tif", "--model", tiny_card,
                         "--min-size", "0", "--min-extent", "0")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["shape"] == [n, 64, 64]
    assert f"note: 's.tif' marks its {n} planes as separate colour planes" in err


def test_channel_axis_read_as_slices_is_said_and_samples_not_last_refused(tmp_path):
    from panoptem.io import read_image
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((2, 16, 16), np.uint8), metadata={"axes": "CYX"})
    img = read_image(tmp_path / "c.tif")
    assert img.data.shape == (2, 16, 16) and "axes CYX" in img.notes[0] and "channel" in img.notes[0]
    tifffile.imwrite(tmp_path / "m.tif", np.zeros((16, 16, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig", extrasamples=[0, 0, 0, 0])
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.series[0].axes == "YXS"
    with pytest.raises(PanoptemError, match="5 samples per pixel"):
        read_image(tmp_path / "m.tif")


def test_contiguous_rgb_is_still_colour(tmp_path):
    from panoptem.io import read_image
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 255
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    img = read_image(tmp_path / "c.tif")
    assert img.data.shape == (32, 32) and not img.notes
    assert int(np.asarray(img.data)[0, 0]) == round(0.2125 * 255)
    stack = np.repeat(rgb[None], 2, axis=0)  # a stack of colour images: still colour, then grey slices
    tifffile.imwrite(tmp_path / "cs.tif", stack, photometric="rgb")
    assert read_image(tmp_path / "cs.tif").data.shape == (2, 32, 32)


def test_device_names_checked_by_the_api():
    from panoptem.models.load import pick_device
    assert pick_device("cpu") == "cpu" and pick_device(" CPU ") == "cpu"
    for bad in ("banana", "cpu:0", "mps:1", "cuda0", "gpu"):
        with pytest.raises(PanoptemError, match="not one of"):
            pick_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(PanoptemError, match="no CUDA"):
            pick_device("cuda:0")
    else:
        with pytest.raises(PanoptemError, match="does not exist"):
            pick_device(f"cuda:{torch.cuda.device_count()}")


def test_schema_rules_hold_for_the_api(tmp_path, home, tiny_card):
    """The same rule on the API as on the command line (the widgets call the same functions)."""
    from panoptem.inference.segment2d import segment_2d
    from panoptem.training.finetune import finetune
    from panoptem.training.patches import pick_patches
    with pytest.raises(PanoptemError, match="lr"):
        finetune(str(tiny_card), disc_dataset(tmp_path / "ds"), name="x", lr=float("nan"))
    with pytest.raises(PanoptemError, match="flipbook_depth"):
        pick_patches(np.zeros((8, 64, 64), np.uint8), n=1, patch_size=32, flipbook=True, flipbook_depth=0)
    with pytest.raises(PanoptemError, match="Batch size"):
        segment_2d(np.zeros((64, 64), np.uint8), str(tiny_card), batch_size=-1)
    with pytest.raises(PanoptemError, match="tile_size"):
        segment_2d(np.zeros((64, 64), np.uint8), str(tiny_card), tile_size=7)
