"""Hostile files: nothing panoptem reads may run code or pull another local file in.

Every payload here would create a marker file if it ever ran; the marker must never appear.
"""
import shutil
import zipfile

import numpy as np
import pytest
import tifffile
import torch
import yaml

from panoptem.cli import main
from panoptem.errors import PanoptemError
from panoptem.models import registry
from panoptem.models.card import load_card
from panoptem.models.home import get_card, sha256_of


class _Payload:
    """Unpickling this creates ``path`` (via ``open(path, "w")``)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _evil_pickle(path, marker, extra=None):
    blob = dict(extra or {})
    blob["payload"] = _Payload(marker)
    torch.save(blob, path)


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


def _one_error_line(err: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


# ---------------------------------------------------------------- pickles


@pytest.mark.parametrize("command", ["train-volume", "train"])
def test_crafted_checkpoint_never_runs(home, tmp_path, capsys, command):
    marker = tmp_path / "MARKER"
    run = tmp_path / "run"
    run.mkdir()
    _evil_pickle(run / "checkpoint.pt", marker, {"model": {}, "opt": {}, "sched": {}, "rng": {},
                                                  "torch_rng": torch.get_rng_state(), "step": 1})
    img = (np.random.default_rng(0).random((4, 64, 64)) * 255).astype(np.uint8)
    lab = np.zeros((4, 64, 64), np.uint16)
    lab[:, 10:30, 10:30] = 1
    if command == "train-volume":
        tifffile.imwrite(tmp_path / "img.tif", img)
        tifffile.imwrite(tmp_path / "lab.tif", lab)
        argv = ["train-volume", tmp_path / "img.tif", tmp_path / "lab.tif", "-o", run, "--iterations", "2",
                "--batch-size", "1", "--patch-size", "64"]
    else:
        ds = tmp_path / "ds"
        (ds / "images").mkdir(parents=True)
        (ds / "masks").mkdir()
        tifffile.imwrite(ds / "images" / "a.tif", img[0])
        tifffile.imwrite(ds / "masks" / "a.tif", lab[0])
        argv = ["train", "--train-dir", ds, "--name", "evil", "--out-dir", run, "--iterations", "2",
                "--batch-size", "1", "--patch-size", "64", "--device", "cpu"]
    code, err = _run(argv, capsys)
    assert code == 2
    _one_error_line(err)
    assert "cannot be read safely" in err and "--restart" in err
    assert not marker.exists()


def test_crafted_weights_never_run(home, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    _evil_pickle(tmp_path / "w.pt", marker)
    card = {"name": "evil", "weights": {"file": "w.pt", "sha256": sha256_of(tmp_path / "w.pt")}}
    (tmp_path / "evil.yaml").write_text(yaml.safe_dump(card))
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((64, 64), np.uint8))
    code, err = _run(["segment2d", tmp_path / "img.tif", "-o", tmp_path / "out.tif", "--model",
                      tmp_path / "evil.yaml", "--device", "cpu"], capsys)
    assert code == 2
    _one_error_line(err)
    assert not marker.exists() and not (tmp_path / "out.tif").exists()
    # registering and packaging it runs nothing either (the file is only copied)
    registry.register("evil", tmp_path / "evil.yaml")
    registry.export_package("evil", tmp_path / "evil.panoptem")
    assert not marker.exists()


# ---------------------------------------------------------------- file references


def _card_with(tmp_path, folder, weights_file, tiny_card, exports=()):
    d = yaml.safe_load(tiny_card.read_text())
    d["weights"]["file"] = weights_file
    d["weights"].pop("sha256", None)
    d["exports"] = [{"file": f, "format": "torchscript"} for f in exports]
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "card.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.fixture
def secret(tmp_path):
    s = tmp_path / "elsewhere" / "secret.txt"
    s.parent.mkdir()
    s.write_text("private key material")
    return s


def _store_holds(home, text: str) -> bool:
    return any(p.is_file() and text.encode() in p.read_bytes() for p in home.rglob("*"))


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "subfolder", "symlink", "file-url"])
@pytest.mark.parametrize("where", ["weights", "exports"])
def test_card_references_outside_its_folder_are_refused(home, tmp_path, tiny_card, secret, kind, where):
    folder = tmp_path / "cards"
    folder.mkdir()
    shutil.copy(tmp_path / "tiny.pt", folder / "tiny.pt")
    ref = {"absolute": str(secret), "dotdot": "../elsewhere/secret.txt", "subfolder": "sub/secret.txt",
           "symlink": "link.pt", "file-url": secret.as_uri()}[kind]
    if kind == "symlink":
        (folder / "link.pt").symlink_to(secret)
    if kind == "subfolder":
        (folder / "sub").mkdir()
        shutil.copy(secret, folder / "sub" / "secret.txt")
    card = _card_with(tmp_path, folder, ref if where == "weights" else "tiny.pt", tiny_card,
                      exports=[ref] if where == "exports" else [])
    with pytest.raises(PanoptemError, match="card"):
        registry.register("m", card)
    assert not _store_holds(home, "private key material")
    with pytest.raises(PanoptemError):  # loading the card directly is refused as well
        get_card(str(card)).weights_path(get_card(str(card)).exports[0] if where == "exports" else None)


@pytest.mark.parametrize("ref", ["/etc/hostname", "../secret.txt", "x/../../secret.txt"])
def test_package_with_outside_references_is_refused(home, tmp_path, tiny_card, secret, ref):
    d = yaml.safe_load(tiny_card.read_text())
    d["weights"] = {"file": "tiny.pt", "format": "state_dict"}
    d["exports"] = [{"file": ref, "format": "torchscript"}]
    pkg = tmp_path / "evil.panoptem"
    with zipfile.ZipFile(pkg, "w") as z:
        z.writestr("card.yaml", yaml.safe_dump(d))
        z.write(tmp_path / "tiny.pt", "tiny.pt")
    shutil.copy(secret, tmp_path / "secret.txt")
    with pytest.raises(PanoptemError):
        registry.import_package(pkg)
    assert not (home / "models").exists() or not any((home / "models").iterdir())
    assert not _store_holds(home, "private key material")


def test_bare_and_same_folder_references_still_work(home, tmp_path, tiny_card):
    card = load_card(tiny_card)
    assert card.weights_path() == str(tmp_path / "tiny.pt")
    d = yaml.safe_load(tiny_card.read_text())
    d["weights"]["file"] = str(tmp_path / "tiny.pt")  # absolute, but beside the card (empanada's own yaml)
    (tmp_path / "abs.yaml").write_text(yaml.safe_dump(d))
    registry.register("abs", tmp_path / "abs.yaml")
    assert get_card("abs").weights.file == "tiny.pt"


# ---------------------------------------------------------------- YAML


BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("argv", [["model", "info", "{card}"],
                                  ["model", "register", "bomb", "--card", "{card}", "--weights", "{w}"],
                                  ["segment2d", "{img}", "-o", "{out}", "--model", "{card}"]])
def test_yaml_bomb_is_refused_at_once(home, tmp_path, tiny_card, capsys, argv):
    (tmp_path / "bomb.yaml").write_text(BOMB)
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((64, 64), np.uint8))
    args = [a.format(card=tmp_path / "bomb.yaml", w=tmp_path / "tiny.pt", img=tmp_path / "img.tif",
                     out=tmp_path / "out.tif") for a in argv]
    code, err = _run(args, capsys)
    assert code == 2
    _one_error_line(err)
    assert "aliases" in err and "bomb.yaml" in err


def test_oversized_and_python_tagged_cards_are_refused(home, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: x\ndescription: '" + "x" * (2 << 20) + "'\n")
    with pytest.raises(PanoptemError, match="bytes"):
        load_card(big)
    marker = tmp_path / "MARKER"
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(f"name: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    with pytest.raises(PanoptemError, match="not valid YAML"):
        load_card(tagged)
    assert not marker.exists()


# ---------------------------------------------------------------- downloads


def test_url_without_sha256_is_refused_unless_allowed(home, tmp_path, tiny_card, server):
    served, base, hits = server
    (served / "tiny.pt").write_bytes((tmp_path / "tiny.pt").read_bytes())
    d = yaml.safe_load(tiny_card.read_text())
    d["weights"] = {"file": f"{base}/tiny.pt", "format": "state_dict"}  # no sha256
    (tmp_path / "remote.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(PanoptemError, match="--allow-unverified"):
        registry.register("r", tmp_path / "remote.yaml")
    with pytest.raises(PanoptemError, match="no sha256"):  # used directly, it is refused at load
        from panoptem.models.load import load_model
        load_model(str(tmp_path / "remote.yaml"), device="cpu")
    assert hits == []  # nothing was downloaded
    registry.register("r", tmp_path / "remote.yaml", allow_unverified=True)
    assert get_card("r").weights.sha256 == sha256_of(tmp_path / "tiny.pt")
    from panoptem.models.load import load_model
    load_model("r", device="cpu")
    assert hits == ["/tiny.pt"]  # downloaded once, at registration, then found in the cache


# ---------------------------------------------------------------- exports


def test_export_never_writes_into_the_store(home, tmp_path, tiny_card, capsys):
    registry.register("m", tiny_card)
    weights = home / "models" / "m" / "tiny.pt"
    before = weights.read_bytes()
    for fmt in ("torchscript", "empanada", "onnx", "package"):
        code, err = _run(["model", "export", "m", "-o", weights, "--format", fmt, "--overwrite"], capsys)
        assert code == 2, fmt
        _one_error_line(err)
        assert "model store" in err or "already exists" in err
    assert weights.read_bytes() == before
    get_card("m")  # still loads
    from panoptem.models.load import load_model
    load_model("m", device="cpu")


def test_package_of_a_tampered_model_is_refused(home, tmp_path, tiny_card):
    registry.register("m", tiny_card)
    weights = home / "models" / "m" / "tiny.pt"
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(PanoptemError, match="does not match the sha256"):
        registry.export_package("m", tmp_path / "m.panoptem")
    assert not (tmp_path / "m.panoptem").exists()


# ---------------------------------------------------------------- card fields that name places


@pytest.mark.parametrize("sha", ["../../outside", "/tmp/elsewhere", "ab" * 31, "G" * 64])
def test_a_sha256_that_is_not_64_hex_digits_is_refused(home, tmp_path, tiny_card, sha):
    # the sha256 names the download's cache folder: a path there made folders outside the store
    d = yaml.safe_load(tiny_card.read_text())
    d["weights"] = {"file": "https://example.org/w.pt", "sha256": sha, "format": "state_dict"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(PanoptemError, match="64 hexadecimal"):
        load_card(tmp_path / "c.yaml")
    d["weights"]["sha256"] = "AB" * 32  # upper case is the same digest
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    assert load_card(tmp_path / "c.yaml").weights.sha256 == "ab" * 32


@pytest.mark.parametrize("url, name", [("https://example.org/a/%2e%2e", "weights.bin"),
                                       ("https://example.org/" + "w" * 300 + ".pt", "w" * 97 + ".pt"),
                                       ("https://example.org/we%20ights/..%2fx%20y.pt", "x_y.pt")])
def test_a_downloads_file_name_stays_one_safe_name(url, name):
    assert registry._file_name(url) == name


def test_a_zip_bomb_package_is_refused_before_it_is_unpacked(home, tmp_path, tiny_card):
    pkg = tmp_path / "bomb.panoptem"
    with zipfile.ZipFile(pkg, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("card.yaml", tiny_card.read_text())
        z.writestr("zeros.bin", b"\0" * (200 << 20))  # 200 MiB in about 200 kB
    with pytest.raises(PanoptemError, match="far more than"):
        registry.import_package(pkg)
    assert not any((home / "tmp").iterdir())


@pytest.mark.parametrize("text", ["name: x\nweights: {file: w.pt}\nvalidation: {a: " + "[" * 500 + "]" * 500 + "}\n",
                                  "name: x\nweights: {file: w.pt}\npadding_factor: " + "9" * 5000 + "\n",
                                  "model: w.pt\nnorms: [1, 2]\n",
                                  "model: w.pt\nnorms: {}\nclass_names: [a]\n",
                                  "name: x\nweights: {file: w.pt}\noutput_stride: 0\ninput_multiple: 4\n",
                                  "name: x\nweights: {file: w.pt}\npadding_factor: 0\n"])
def test_malformed_cards_are_one_error_line(home, tmp_path, capsys, text):
    (tmp_path / "c.yaml").write_text(text)
    code, err = _run(["model", "info", tmp_path / "c.yaml"], capsys)
    assert code == 2
    _one_error_line(err)


def test_a_model_name_ending_like_a_card_file_is_refused(home, tmp_path, tiny_card):
    with pytest.raises(PanoptemError, match="ends like a card file"):
        registry.register("mito.yaml", tiny_card)


@pytest.mark.parametrize("change, expect", [({"classes": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, "semantic"),
                                            ({"output_stride": 8}, "output_stride must be 4"),
                                            ({"padding_factor": 6}, "multiple of output_stride")])
def test_a_card_that_does_not_fit_its_network_is_refused(home, tmp_path, tiny_card, change, expect):
    # two classes on a one-channel network ran with only class 1 ever found; stride 8 decoded wrongly
    d = yaml.safe_load(tiny_card.read_text())
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**d, **change}))
    with pytest.raises(PanoptemError, match=expect):
        load_card(tmp_path / "c.yaml")


def test_weights_of_another_input_width_are_refused_for_a_card_without_an_architecture(home, tmp_path, tiny_card):
    from conftest import TINY_ARCH
    from panoptem.models.architecture import build_model
    from panoptem.models.load import load_model
    arch = {**TINY_ARCH, "in_channels": 3}
    torch.save({"architecture": arch, "state_dict": build_model(arch).state_dict()}, tmp_path / "three.pt")
    d = {k: v for k, v in yaml.safe_load(tiny_card.read_text()).items() if k != "architecture"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**d, "weights": {"file": "three.pt"}}))
    with pytest.raises(PanoptemError, match="3 input and 1 semantic channel"):
        load_model(str(tmp_path / "c.yaml"), device="cpu").module
