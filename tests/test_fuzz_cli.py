"""Property-based fuzzing of the command line (hypothesis, fixed seed, in-process).

Generated files (valid, truncated, bytes flipped, garbage, text, headers that claim more than the
file holds), shapes, dtypes and option values go through ``segment2d``, ``segment3d``,
``evaluate``, ``measure``, ``patches``, ``finetune`` and ``model import`` / ``model register``.
Every case must end with exit status 0 or 2 and no traceback; an error prints exactly one
``error:`` line (beside progress bars and one-line ``note:`` / ``warning:`` lines); inputs stay as they were; a refused
command leaves nothing in the output folder or the model store, a finished one no hidden
leftovers. Inference runs a tiny randomly initialised model.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import struct
import tempfile
import warnings
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panoptem.cli import main

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=list(HealthCheck))
TINY_ARCH = dict(num_classes=1, widths=[8, 8, 8, 8, 8], depths=[1, 1, 1, 1], decoder_channels=8, head_channels=8)
#: generated cases per command (at least 200 together)
PLAN = {"segment2d": 40, "segment3d": 35, "evaluate": 25, "measure": 25, "patches": 30, "finetune": 20,
        "register": 25, "import": 20}
RAN: dict[str, int] = {}
_names = itertools.count()


@dataclass
class Env:
    root: Path
    home: Path
    model: Path  # folder holding tiny.yaml, tiny.pt and tiny.panoptem


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A PANOPTEM_HOME holding one tiny model 'tiny' (and nothing built in), one torch thread."""
    from panoptem.models import home as home_mod
    from panoptem.models.architecture import build_model
    from panoptem.models.home import sha256_of
    from panoptem.models.registry import export_package, register
    root = tmp_path_factory.mktemp("fuzz")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PANOPTEM_HOME", str(root / "home"))
        (root / "zoo").mkdir()
        mp.setattr(home_mod, "ZOO", root / "zoo")
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = root / "model"
        model.mkdir()
        torch.save({"architecture": TINY_ARCH, "state_dict": build_model(TINY_ARCH).state_dict()}, model / "tiny.pt")
        card = {"name": "tiny", "description": "tiny random test model", "architecture": TINY_ARCH,
                "label_divisor": None, "weights": {"file": "tiny.pt", "sha256": sha256_of(model / "tiny.pt")}}
        (model / "tiny.yaml").write_text(yaml.safe_dump(card))
        register("tiny", model / "tiny.yaml")
        export_package("tiny", model / "tiny.panoptem")
        yield Env(root, root / "home", model)
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- checks


PROGRESS = re.compile(r"^[\w ]+:\s+\d+%\|")


def error_lines(err: str) -> list[str]:
    """stderr without progress bars and ``note:`` / ``warning:`` lines (each one line)."""
    out = []
    for ln in err.split("\n"):
        parts = [p for p in ln.split("\r") if p.strip()]
        if parts and not all(PROGRESS.match(p) for p in parts) and not ln.startswith(("note: ", "warning: ")):
            out.append(ln)
    return out


def snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def run_case(env: Env, family: str, args: list, inputs: Path, outputs: Path, may_leave=()) -> tuple[int, str]:
    """Run ``panoptem ARGS`` and check the rules; returns (exit status, stdout)."""
    RAN[family] = RAN.get(family, 0) + 1
    models = env.home / "models"
    before = snapshot(inputs), snapshot(outputs), snapshot(models)
    out, err = io.StringIO(), io.StringIO()
    argv = [str(a) for a in args]
    with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings():
        code = main(argv)
    err = err.getvalue()
    where = f"panoptem {' '.join(argv)}\n--- stderr:\n{err}"
    assert code in (0, 2), f"exit status {code}: {where}"
    assert "Traceback" not in err, where
    assert snapshot(inputs) == before[0], f"an input changed: {where}"
    if code == 2:
        lines = error_lines(err)
        assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line: {where}"
        after = snapshot(outputs)
        assert after == before[1], f"left behind {sorted(set(after) - set(before[1]))}: {where}"
        assert snapshot(models) == before[2], f"the model store changed: {where}"
    else:
        hidden = [n for n in snapshot(outputs) if n not in before[1] and n.split("/")[-1].startswith(".")
                  and (n.count("/") == 0 or n.startswith("sub/") and n.count("/") == 1) and n not in may_leave]
        assert not hidden, f"hidden leftovers {hidden}: {where}"
    tmp = env.home / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), f"leftovers in the store's tmp: {where}"
    return code, out.getvalue()


def planned(family: str, case) -> None:
    """Run the generated ``case`` PLAN[family] times and check that they all ran."""
    start = RAN.get(family, 0)
    settings(FUZZ, max_examples=PLAN[family])(case)()
    assert RAN.get(family, 0) - start >= PLAN[family]


# ---------------------------------------------------------------- generated files


# simple, valid values first: hypothesis starts from (and shrinks towards) the first entries
DTYPES = ["uint8", "uint16", "float32", "uint8", "int16", "int8", "uint32", "int32", "int64", "uint64",
          "float16", "float64", "bool", "complex64"]
SIDES = [32, 48, 33, 64, 16, 31, 5, 2, 1, 0]
CORRUPTIONS = ["none"] * 6 + ["truncate", "truncate", "flip", "flip", "garbage", "text", "empty"]


@st.composite
def image_specs(draw, formats=("tif", "tif_zlib", "tif", "h5", "zarr", "mrc", "png", "folder", "npy"),
                ndims=(2, 3, 2, 3, 1, 4), dtypes=DTYPES, sides=SIDES, depths=(3, 6, 4, 2, 1, 0),
                corruptions=CORRUPTIONS, contents=("blobs", "noise", "blobs", "zeros", "max", "nan"), extra=True):
    """What file to make: format, shape, dtype, content, damage; ``extra`` adds a second HDF5
    dataset or an odd slice to a folder now and then."""
    ndim = draw(st.sampled_from(ndims))
    yx = (draw(st.sampled_from(sides)), draw(st.sampled_from(sides)))
    shape = {1: yx[:1], 2: yx, 3: (draw(st.sampled_from(depths)),) + yx,
             4: (2, draw(st.sampled_from([1, 3, 4]))) + yx}[ndim]
    fmt = draw(st.sampled_from(formats if ndim == 2 else [f for f in formats if f != "png"] or formats))
    return dict(fmt=fmt, shape=shape, dtype=draw(st.sampled_from(dtypes)),
                content=draw(st.sampled_from(contents)), corrupt=draw(st.sampled_from(corruptions)),
                seed=draw(st.integers(0, 2**16)), minisblack=draw(st.booleans()),
                extra=extra and draw(st.sampled_from([False, False, True])))


#: files that hold a readable 2D or 3D image
GOOD_FORMATS = ("tif", "tif_zlib", "h5", "zarr", "mrc", "folder", "png")
good_images = image_specs(formats=GOOD_FORMATS, ndims=(2, 3), dtypes=["uint8", "uint16", "float32", "int16"],
                          sides=[32, 40, 33, 64], depths=(3, 4, 5), corruptions=("none",),
                          contents=("blobs", "noise"), extra=False)


def make_array(spec) -> np.ndarray:
    rng = np.random.default_rng(spec["seed"])
    shape, dt = spec["shape"], np.dtype(spec["dtype"])
    kind = spec["content"]
    if kind == "blobs" and len(shape) >= 2:
        yy, xx = np.indices(shape[-2:])
        base = np.ones(shape[-2:])
        for _ in range(3):
            cy, cx, r = rng.integers(0, max(shape[-2], 1)), rng.integers(0, max(shape[-1], 1)), rng.integers(3, 9)
            base[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 0.1
        base = np.broadcast_to(base, shape) * (0.9 + 0.1 * rng.random(shape))
    elif kind == "zeros":
        base = np.zeros(shape)
    elif kind == "max":
        base = np.ones(shape)
    else:
        base = rng.random(shape)
    if dt == bool:
        return base > 0.5
    if dt.kind in "iu":
        return (base * min(np.iinfo(dt).max, 2**40)).astype(dt)
    a = (base * 1000 - 10).astype(dt)
    if kind == "nan" and a.size:
        a.flat[rng.integers(0, a.size, 3)] = [np.nan, np.inf, -np.inf]
    return a


def label_array(spec) -> np.ndarray:
    """Labels: connected blobs numbered 1..n (or, for float/bool dtypes, as they come)."""
    from scipy import ndimage
    a = make_array(spec)
    if a.ndim in (2, 3) and a.size and spec["content"] == "blobs" and np.dtype(spec["dtype"]).kind in "iu":
        lab, _ = ndimage.label(a < np.percentile(a, 30))
        return lab.astype(spec["dtype"])
    return a


def write_file(spec, path: Path, array: np.ndarray) -> Path:
    """Write ``array`` in the spec's format at ``path`` (+ suffix); returns the path to pass. Where the
    format cannot hold the array, the file gets its raw bytes instead (still a bad input)."""
    try:
        return _write_file(spec, path, array)
    except Exception:  # noqa: BLE001 - e.g. tifffile refuses a 1D or zero-width array
        p = path.with_suffix({"tif_zlib": ".tif", "folder": ".tif"}.get(spec["fmt"], "." + spec["fmt"]))
        if p.is_dir():
            import shutil
            shutil.rmtree(p)
        p.write_bytes(array.tobytes()[:4096])
        return p


def _write_file(spec, path: Path, array: np.ndarray) -> Path:
    fmt = spec["fmt"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt in ("tif", "tif_zlib"):
            p = path.with_suffix(".tif")
            tifffile.imwrite(p, array, photometric="minisblack" if spec["minisblack"] else None,
                             compression="zlib" if fmt == "tif_zlib" else None)
        elif fmt == "png":
            p = path.with_suffix(".png")
            a = array if array.ndim == 2 else array.reshape(-1, array.shape[-1])
            a = np.nan_to_num(np.real(a)).astype(np.uint16 if array.dtype == np.uint16 else np.uint8)
            from PIL import Image
            Image.fromarray(a).save(p)
        elif fmt == "mrc":
            import mrcfile
            p = path.with_suffix(".mrc")
            a = array if array.dtype.name in ("int8", "uint8", "int16", "uint16", "float16", "float32",
                                              "complex64") else array.astype(np.float32)
            try:
                with mrcfile.new(p, overwrite=True) as m:
                    m.set_data(a)
            except (ValueError, TypeError):
                p.write_bytes(b"MRC?" * 10)
        elif fmt == "h5":
            import h5py
            p = path.with_suffix(".h5")
            with h5py.File(p, "w") as f:
                f["raw"] = array
                if spec.get("extra"):
                    f["other"] = np.zeros(3, np.uint8)
        elif fmt == "zarr":
            import zarr
            p = path.with_suffix(".zarr")
            z = zarr.open_array(str(p), mode="w", shape=array.shape, dtype=array.dtype,
                                chunks=tuple(max(1, n) for n in array.shape))
            if array.size:
                z[...] = array
        elif fmt == "folder":
            p = path
            p.mkdir()
            planes = array if array.ndim == 3 else array[None] if array.ndim == 2 else [array]
            for i, plane in enumerate(planes):
                tifffile.imwrite(p / f"slice_{i}.tif", plane, photometric="minisblack")
            if spec.get("extra"):
                tifffile.imwrite(p / "slice_x.tif", np.zeros((3, 3), np.uint8))
        else:
            p = path.with_suffix(".npy")
            np.save(p, array)
    return p


def corrupt(spec, p: Path) -> None:
    """Damage one file of ``p`` (a file, or a file inside a folder / zarr store) as the spec says."""
    how = spec["corrupt"]
    if how == "none":
        return
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    if not files:
        return
    rng = np.random.default_rng(spec["seed"] + 1)
    f = files[int(rng.integers(len(files)))]
    data = f.read_bytes()
    if how == "flip" and spec["fmt"] == "h5":
        how = "truncate"  # the HDF5 C library is not made for damaged metadata: truncation only
    if how == "truncate":
        f.write_bytes(data[: int(len(data) * rng.choice([0.0, 0.05, 0.3, 0.6, 0.95]))])
    elif how == "flip" and data:
        b = bytearray(data)
        for i in rng.integers(0, len(b), int(rng.integers(1, 9))):
            b[i] ^= int(rng.integers(1, 256))
        f.write_bytes(bytes(b))
    elif how == "garbage":
        f.write_bytes(rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes())
    elif how == "text":
        f.write_text("this is not an image\n")
    elif how == "empty":
        f.write_bytes(b"")


def huge_header_tiff(path: Path, height: int, width: int) -> Path:
    """An 8-bit TIFF whose header claims ``height x width`` pixels but holds 16 bytes."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
            (277, 3, 1), (278, 4, height), (279, 4, min(height * width, 2**32 - 1))]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", t, k, 1) + (struct.pack("<HH", v, 0) if k == 3 else struct.pack("<I", v))
        for t, k, v in tags)
    path.write_bytes(b"II*\0" + struct.pack("<I", 24) + b"\0" * 16 + ifd + struct.pack("<I", 0))
    return path


def materialise(spec, folder: Path, name: str, labels: bool = False) -> Path:
    if spec.get("huge"):
        return huge_header_tiff(folder / f"{name}.tif", *spec["huge"])
    p = write_file(spec, folder / name, label_array(spec) if labels else make_array(spec))
    corrupt(spec, p)
    return p


inputs_2d3d = st.one_of(*[image_specs()] * 6,
                        st.fixed_dictionaries({"huge": st.sampled_from([(100_000, 100_000), (2**16, 2**16),
                                                                       (1, 2**31 - 1), (70_000, 3)])}))


def options(table: dict, flags=(), max_size=2):
    """A few options from ``table`` (name -> values) and ``flags``, as an argument list."""
    pick = st.lists(st.sampled_from(sorted(table)), max_size=max_size, unique=True).flatmap(
        lambda names: st.tuples(*[st.sampled_from(table[n]).map(lambda v, n=n: [n, v]) for n in names]))
    fl = st.lists(st.sampled_from(flags), max_size=2, unique=True) if flags else st.just([])
    return st.tuples(pick, fl).map(lambda t: [x for pair in t[0] for x in pair] + list(t[1]))


def workspace(env: Env):
    d = Path(tempfile.mkdtemp(dir=env.root))
    (d / "in").mkdir()
    (d / "out").mkdir()
    return d, d / "in", d / "out"


def output_path(choice: str, inp: Path, out: Path, src: Path) -> Path:
    if choice == "INPUT":
        return src
    if choice == "EXISTING":
        tifffile.imwrite(out / "o.tif", np.zeros((4, 4), np.uint8))
        return out / "o.tif"
    return out / choice


OUTPUTS = st.sampled_from(["o.tif", "o.zarr", "o.png", "sub/o.tif", "EXISTING", "INPUT"])
DEVICES = ["cpu", "banana", "cuda:7", "mps", "", "cpu:0"]
#: which part of a case is generated wild (others are valid): about 2 cases in 5 are wholly valid
WHAT = st.sampled_from(["nothing", "file", "option", "nothing", "file", "option", "output", "nothing"])


# ---------------------------------------------------------------- the commands


SEG2D_GOOD = {"--downsampling": ["1", "2"], "--confidence-thr": ["0.5", "0.3"], "--tile-size": ["0", "64"],
              "--min-distance-object-centers": ["3", "1"], "--maximum-objects-per-class": ["0", "10000"],
              "--plane": ["xy", "xz", "yz"], "--slice": ["0", "1"]}
SEG2D = {"--downsampling": ["1", "4", "3", "0", "64"],
         "--confidence-thr": ["0.5", "0", "1", "1.5", "nan", "x"],
         "--center-confidence-thr": ["0.1", "0.01", "nan"],
         "--min-distance-object-centers": ["1", "0", "36"],
         "--maximum-objects-per-class": ["1", "-1"],
         "--tile-size": ["64", "96", "7", "-5"], "--device": DEVICES,
         "--plane": ["xy", "zz"], "--slice": ["-1", "999"], "--key": ["raw", "missing"]}
FLAGS2D = ["--batch", "--unique-ids", "--fine-boundaries", "--semantic-only"]


def test_fuzz_segment2d(env):
    @given(data=st.data())
    def case(data):
        what = data.draw(WHAT)
        spec = data.draw(inputs_2d3d if what == "file" else good_images)
        opts = data.draw(options(SEG2D if what == "option" else SEG2D_GOOD, FLAGS2D))
        output = data.draw(OUTPUTS if what == "output" else st.just("o.tif"))
        if "--overwrite" not in opts and output == "EXISTING" and data.draw(st.booleans()):
            opts.append("--overwrite")
        d, inp, out = workspace(env)
        src = materialise(spec, inp, "img")
        code, stdout = run_case(env, "segment2d", ["segment2d", src, "-o", output_path(output, inp, out, src),
                                                   "--model", "tiny", "--device", "cpu", *opts], inp, out)
        if code == 0:
            assert Path(json.loads(stdout.strip().splitlines()[-1])["output"]).exists()
    planned("segment2d", case)


SEG3D_GOOD = {"--downsampling": ["1", "2"], "--median-slices": ["1", "3"], "--min-size": ["0", "10"],
              "--min-extent": ["0", "2"], "--inference-plane": ["xy", "xz", "yz"], "--pixel-vote-thr": ["1", "3"],
              "--fusion": ["consensus", "probability"], "--iou-thr": ["0.25", "0.5"], "--bridge-gaps": ["0", "1"],
              "--batch-size": ["1", "3"], "--tile-size": ["0", "64"]}
SEG3D = {"--downsampling": ["2", "5"], "--confidence-thr": ["0.2", "nan", "2"],
         "--tile-size": ["64", "7"], "--device": DEVICES, "--key": ["raw", "missing"],
         "--median-slices": ["5", "4", "13", "-1"], "--min-size": ["500", "-1"],
         "--min-extent": ["5", "-1"], "--inference-plane": ["yz", "ab"],
         "--pixel-vote-thr": ["2", "0", "4"], "--fusion": ["probability", "mean"],
         "--iou-thr": ["1.5", "nan"], "--bridge-gaps": ["1", "2"], "--batch-size": ["4", "0", "-1"]}
FLAGS3D = ["--orthoplane", "--return-panoptic", "--allow-one-view", "--keep-cache", "--semantic-only"]


def test_fuzz_segment3d(env):
    volumes = image_specs(ndims=(3, 3, 3, 2, 4), sides=[32, 16, 31, 40, 2, 1, 0], depths=(3, 5, 4, 2, 1, 0))
    good = image_specs(formats=GOOD_FORMATS[:-1], ndims=(3,), dtypes=["uint8", "uint16", "float32"],
                       sides=[32, 33, 24], depths=(3, 4, 5), corruptions=("none",), contents=("blobs",),
                       extra=False)

    @given(data=st.data())
    def case(data):
        what = data.draw(WHAT)
        spec = data.draw(st.one_of(volumes, volumes, inputs_2d3d) if what == "file" else good)
        opts = data.draw(options(SEG3D if what == "option" else SEG3D_GOOD, FLAGS3D))
        output = data.draw(OUTPUTS if what == "output" else st.just("o.tif"))
        d, inp, out = workspace(env)
        src = materialise(spec, inp, "vol")
        dest = output_path(output, inp, out, src)
        kept = f".{dest.name}.panoptem-cache" if "--keep-cache" in opts else "/none"
        run_case(env, "segment3d", ["segment3d", src, "-o", dest, "--model", "tiny", "--device", "cpu", *opts],
                 inp, out, may_leave=(kept, f"sub/{kept}"))
    planned("segment3d", case)


def label_specs(**kw):
    kw.setdefault("dtypes", ["uint16", "uint32", "uint16", "int32", "int16", "uint8", "float32", "bool", "int64"])
    kw.setdefault("formats", ("tif", "tif_zlib", "tif", "h5", "zarr", "mrc", "png", "npy"))
    return image_specs(**kw)


good_labels = label_specs(formats=("tif", "tif_zlib", "h5", "zarr", "mrc"), ndims=(2, 3),
                          dtypes=["uint16", "uint32", "int32", "uint8"], sides=[32, 40, 33], depths=(3, 4),
                          corruptions=("none",), contents=("blobs",), extra=False)


def test_fuzz_evaluate(env):
    @given(data=st.data())
    def case(data):
        what = data.draw(WHAT)
        pred = data.draw(label_specs() if what == "file" else good_labels)
        gt = data.draw(st.one_of(st.just("like"), label_specs()) if what == "file" else st.just("like"))
        opts = data.draw(options({"--label-divisor": ["1000", "1", "0", "-1", "x"]} if what == "option" else
                                 {"--label-divisor": ["1000", "1"]}))
        d, inp, out = workspace(env)
        a = materialise(pred, inp, "pred", labels=True)
        # mostly a labelling of the same shape, as in real use
        b = materialise(dict(pred, seed=pred["seed"] + 1) if gt == "like" else gt, inp, "gt", labels=True)
        run_case(env, "evaluate", ["evaluate", a, b, *opts], inp, out)
    planned("evaluate", case)


MEASURE = {"--voxel-size": ["1,1", "a", "0,1", "nan,1,1", "5,5,5,5", "-1,2"],
           "--label-divisor": ["1000", "1", "0", "-3"]}


def test_fuzz_measure(env):
    @given(data=st.data())
    def case(data):
        what = data.draw(WHAT)
        lab = data.draw(label_specs() if what == "file" else good_labels)
        opts = data.draw(options(MEASURE, ["--no-surface"]) if what == "option" else
                         options({"--label-divisor": ["1000", "1"]}, ["--no-surface"]))
        image = data.draw(st.one_of(st.none(), st.just("like"), image_specs(formats=("tif",)))
                          if what == "file" else st.sampled_from([None, "like"]))
        output = data.draw(st.sampled_from(["t.csv", "sub/t.csv", "t"]) if what == "output" else st.just("t.csv"))
        d, inp, out = workspace(env)
        src = materialise(lab, inp, "lab", labels=True)
        args = ["measure", src, "-o", out / output, *opts]
        if what != "option":
            args += ["--voxel-size", ",".join(["10"] * (len(lab["shape"]) if len(lab["shape"]) in (2, 3) else 3))]
        if image is not None:
            args += ["--image", materialise(dict(lab, fmt="tif", dtype="uint8") if image == "like" else image,
                                            inp, "img")]
        run_case(env, "measure", args, inp, out)
    planned("measure", case)


PATCHES_GOOD = {"--n": ["3", "1"], "--patch-size": ["32", "16"], "--plane": ["xy", "xz", "random"],
                "--flipbook-depth": ["1", "3"], "--seed": ["0", "7"]}
PATCHES = {"--n": ["0", "-1"], "--patch-size": ["0", "-1", "100000"], "--plane": ["random", "diagonal"],
           "--flipbook-depth": ["0", "99"], "--class": ["1,mito,instance", "x", "1,a,foo", "0,bg"],
           "--label-divisor": ["1000", "0"], "--seed": ["-1"]}


def test_fuzz_patches(env):
    @given(data=st.data())
    def case(data):
        what = data.draw(WHAT)
        spec = data.draw(image_specs(sides=[64, 33, 16, 5, 1, 0]) if what == "file" else good_images)
        opts = data.draw(options(PATCHES if what == "option" else PATCHES_GOOD, ["--flipbook", "--is-2d-stack"]))
        labels = data.draw(st.sampled_from(["none", "same", "other", "corrupt"]) if what == "file" else
                           st.sampled_from(["none", "same"]))
        points = data.draw(st.sampled_from(["none", "good", "outside", "text", "empty"]) if what == "file" else
                           st.sampled_from(["none", "good"]))
        d, inp, out = workspace(env)
        src = materialise(spec, inp, "img")
        args = ["patches", src, "-o", out / "ds", *opts]
        if labels != "none":
            lab = {"same": dict(spec, corrupt="none", dtype="uint16", content="blobs", fmt="tif"),
                   "other": dict(spec, corrupt="none", shape=(7, 9), dtype="uint16", fmt="tif"),
                   "corrupt": dict(spec, corrupt="garbage", fmt="tif")}[labels]
            args += ["--labels", materialise(lab, inp, "lab", labels=True)]
        if points != "none":
            text = {"good": "z,y,x\n1,10,10\n0,3,4\n", "outside": "5000,5000,5000\n", "text": "a,b\nc,d\n",
                    "empty": ""}[points]
            (inp / "pts.csv").write_text(text)
            args += ["--points", inp / "pts.csv"]
        run_case(env, "patches", args, inp, out)
    planned("patches", case)


@st.composite
def datasets(draw, good: bool):
    """A dataset folder: 1-3 image/mask pairs; unless ``good``, some damaged or mismatched (or none)."""
    n = draw(st.sampled_from([2, 1, 3] if good else [2, 1, 3, 0]))
    pairs = []
    for _ in range(n):
        if good:
            img = draw(image_specs(formats=("tif", "png"), ndims=(2,), sides=[32, 40, 64], dtypes=["uint8", "uint16"],
                                   corruptions=("none",), contents=("blobs", "noise"), extra=False))
            mask = draw(st.sampled_from(["blobs", "blobs", "empty"]))
        else:
            img = draw(image_specs(formats=("tif", "png", "tif"), ndims=(2, 2, 2, 3), sides=[32, 40, 64, 16],
                                   depths=(2,), dtypes=["uint8", "uint8", "uint16", "float32", "int16"]))
            mask = draw(st.sampled_from(["blobs", "empty", "negative", "fraction", "shape", "missing", "text",
                                         "class"]))
        pairs.append((img, mask))
    return pairs


def write_dataset(pairs, folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i, (spec, mask) in enumerate(pairs):
        img = materialise(spec, folder / "images", f"p{i}")
        shape = make_array(spec).shape if spec["corrupt"] == "none" else (32, 32)
        m = np.zeros(shape[-2:], np.uint16)
        m[2:12, 3:14] = 1
        m[20:, 20:] = 2
        suffix = img.suffix if img.is_file() else ".tif"
        target = folder / "masks" / f"p{i}{suffix if suffix in ('.tif', '.png') else '.tif'}"
        if mask == "missing":
            continue
        if mask == "text":
            target.write_text("no mask here\n")
            continue
        m = {"empty": np.zeros_like(m), "negative": m.astype(np.int16) - 1, "fraction": m * 0.5,
             "shape": m[:5, :5], "class": m * 7}.get(mask, m)
        tifffile.imwrite(target.with_suffix(".tif"), m)
    return folder


FINETUNE_GOOD = {"--iterations": ["1", "2"], "--patch-size": ["64", "96"], "--lr": ["0.001", "0.01"],
                 "--batch-size": ["1", "2"], "--layers": ["none", "all", "stage4"], "--seed": ["0", "3"]}
FINETUNE = {"--iterations": ["0", "-1"], "--patch-size": ["0", "33", "32"], "--lr": ["nan", "-1", "0", "2", "inf"],
            "--batch-size": ["0", "-1"], "--layers": ["decoder"], "--device": ["banana"], "--seed": ["-1"]}


def test_fuzz_finetune(env):
    @given(data=st.data())
    def case(data):
        what = data.draw(WHAT)
        pairs = data.draw(datasets(good=what != "file"))
        opts = data.draw(options(FINETUNE if what == "option" else FINETUNE_GOOD))
        model, name, val = "tiny", "new", "none"
        if what == "output":  # the new model's name, the base model, the validation folder
            model = data.draw(st.sampled_from(["tiny", "nope"]))
            name = data.draw(st.sampled_from(["new", "bad name", "tiny", "../up", ""]))
            val = data.draw(st.sampled_from(["none", "same", "missing"]))
        d, inp, out = workspace(env)
        ds = write_dataset(pairs, inp / "ds")
        name = f"ft{next(_names)}" if name == "new" else name
        args = ["finetune", model, "--train-dir", ds, "--name", name, "--patch-size", "64", "--iterations", "1",
                "--device", "cpu", *opts]
        if val != "none":
            args += ["--val-dir", ds if val == "same" else inp / "nothing"]
        code, _ = run_case(env, "finetune", args, inp, out)
        if code == 0:
            assert (env.home / "models" / name / "card.yaml").exists()
    planned("finetune", case)


CARD_MUTATIONS = ["none", "none", "broken_yaml", "not_mapping", "alias", "drop_weights", "wrong_type",
                  "other_net", "garbage_weights", "missing_weights", "absolute", "dotdot", "bad_sha",
                  "empanada", "huge_widths"]


def write_card(env: Env, folder: Path, how: str) -> Path:
    card = yaml.safe_load((env.model / "tiny.yaml").read_text())
    weights = folder / "w.pt"
    weights.write_bytes((env.model / "tiny.pt").read_bytes())
    card["weights"] = {"file": "w.pt", "sha256": card["weights"]["sha256"]}
    text = None
    if how == "broken_yaml":
        text = "name: x\n  weights: [1, 2\n"
    elif how == "not_mapping":
        text = "- just\n- a list\n"
    elif how == "alias":
        text = "a: &x [1, 2]\nb: *x\nname: y\nweights: {file: w.pt}\n"
    elif how == "drop_weights":
        del card["weights"]
    elif how == "wrong_type":
        card["label_divisor"] = "many"
    elif how == "other_net":
        torch.save(torch.nn.Conv2d(1, 2, 3).state_dict(), weights)
        card["weights"].pop("sha256")
    elif how == "garbage_weights":
        weights.write_bytes(b"\x80\x04garbage")
        card["weights"].pop("sha256")
    elif how == "missing_weights":
        weights.unlink()
    elif how == "absolute":
        card["weights"]["file"] = str(env.model / "tiny.pt")
    elif how == "dotdot":
        card["weights"]["file"] = "../w.pt"
    elif how == "bad_sha":
        card["weights"]["sha256"] = "0" * 64
    elif how == "empanada":
        text = yaml.safe_dump({"model": "w.pt", "norms": {"mean": 0.5, "std": 0.2}, "padding_factor": 16})
    elif how == "huge_widths":
        card["architecture"] = dict(TINY_ARCH, widths=[-1, 2, 3, 4, 5])
        card["weights"].pop("sha256")
    p = folder / "card.yaml"
    p.write_text(text if text is not None else yaml.safe_dump(card))
    return p


def test_fuzz_model_register(env):
    @given(data=st.data())
    def case(data):
        what = data.draw(WHAT)
        how = data.draw(st.sampled_from(CARD_MUTATIONS) if what == "file" else st.just("none"))
        name = data.draw(st.sampled_from(["a b", "", "tiny", "..", "x/y", "new"]) if what == "output" else
                         st.just("new"))
        weights = data.draw(st.sampled_from(["missing", "text", "url", "tiny"]) if what == "option" else
                            st.sampled_from(["none", "tiny"]))
        overwrite = data.draw(st.booleans())
        d, inp, out = workspace(env)
        card = write_card(env, inp, how)
        name = f"reg{next(_names)}" if name == "new" else name
        args = ["model", "register", name, "--card", card]
        if weights != "none":
            w = {"tiny": env.model / "tiny.pt", "missing": inp / "nope.pt",
                 "url": "http://127.0.0.1:9/w.pt"}.get(weights)
            if weights == "text":
                (inp / "t.pt").write_text("text")
                w = inp / "t.pt"
            args += ["--weights", w]
        if overwrite:
            args.append("--overwrite")
        run_case(env, "register", args, inp, out)
    planned("register", case)


def test_fuzz_model_import(env):
    @given(data=st.data())
    def case(data):
        what = data.draw(WHAT)
        how = data.draw(st.sampled_from(["truncate", "flip", "garbage", "text", "empty", "no_card", "subfolder",
                                         "card_dotdot", "bad_card", "missing_weights"]) if what == "file" else
                        st.just("none"))
        name = data.draw(st.sampled_from(["none", "tiny", "bad name", "new"]) if what in ("output", "option") else
                         st.just("new"))
        seed = data.draw(st.integers(0, 2**16))
        d, inp, out = workspace(env)
        pkg = inp / "m.panoptem"
        src = (env.model / "tiny.panoptem").read_bytes()
        if how in ("truncate", "flip", "garbage", "text", "empty", "none"):
            pkg.write_bytes(src)
            corrupt({"corrupt": how, "seed": seed, "fmt": "zip"}, pkg)
        else:
            with zipfile.ZipFile(io.BytesIO(src)) as z:
                members = {m: z.read(m) for m in z.namelist()}
            card = yaml.safe_load(members["card.yaml"])
            if how == "no_card":
                members.pop("card.yaml")
            elif how == "subfolder":
                members["sub/x.txt"] = b"x"
            elif how == "card_dotdot":
                card["weights"]["file"] = "../tiny.pt"
                members["card.yaml"] = yaml.safe_dump(card).encode()
            elif how == "bad_card":
                members["card.yaml"] = b"name: [unclosed\n"
            elif how == "missing_weights":
                members.pop(card["weights"]["file"])
            with zipfile.ZipFile(pkg, "w") as z:
                for m, blob in members.items():
                    z.writestr(m, blob)
        args = ["model", "import", pkg]
        if name != "none":
            args += ["--name", f"imp{next(_names)}" if name == "new" else name]
        run_case(env, "import", args, inp, out)
    planned("import", case)


def test_plan_is_at_least_200_cases():
    """Each command's test checks that its planned cases all ran; together they are 200 or more."""
    assert sum(PLAN.values()) >= 200
