"""Model registry: register, download, package, archive, and the `panoptem model` commands."""
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from panoptem.cli import app
from panoptem.errors import PanoptemError
from panoptem.models import home as home_mod
from panoptem.models import registry
from panoptem.models.card import load_card
from panoptem.models.home import card_paths, get_card, sha256_of
from panoptem.models.load import load_model


def outputs(name_or_card, x):
    m = load_model(str(name_or_card), device="cpu")
    with torch.no_grad():
        return {k: v.float() for k, v in m.module(x).items()}


X = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 1, 64, 64), dtype=np.float32))


def assert_same_outputs(a, b):
    oa, ob = outputs(a, X), outputs(b, X)
    assert set(oa) == {"sem_logits", "ctr_hmp", "offsets"}
    for k in oa:
        torch.testing.assert_close(oa[k], ob[k], rtol=0, atol=0)


def write_card(path: Path, weights: str, sha256=None, name="tiny"):
    from conftest import TINY_ARCH
    d = {"name": name, "description": "tiny test model\nsecond line", "architecture": TINY_ARCH,
         "label_divisor": 1000, "weights": {"file": weights, "sha256": sha256}}
    path.write_text(yaml.safe_dump(d))
    return path


# ---------------------------------------------------------------- register


def test_register_copies_card_and_weights(home, tiny_card):
    path = registry.register("tiny_reg", tiny_card)
    assert path == home / "models" / "tiny_reg" / "card.yaml"
    copied = home / "models" / "tiny_reg" / "tiny.pt"
    assert copied.read_bytes() == (tiny_card.parent / "tiny.pt").read_bytes()
    card = load_card(path)
    assert card.name == "tiny_reg" and card.weights.file == "tiny.pt"
    assert card.weights.sha256 == sha256_of(copied)
    assert list(card_paths()) == ["tiny_reg"]
    assert [(m.name, m.source, m.archived) for m in home_mod.list_models()] == [("tiny_reg", "user", False)]
    assert_same_outputs("tiny_reg", tiny_card)
    assert not list((home / "tmp").iterdir())  # staging cleaned up


def test_a_killed_registration_leaves_nothing_in_the_staging_area(home, tmp_path, tiny_card):
    """A process killed while staging (a copy of the weights) leaves its folder in <home>/tmp: the
    next staging removes it, but not a folder a live process holds, nor one that is not panoptem's."""
    import os
    import subprocess
    import sys
    kill = ("import os; from panoptem.models import home; cm = home.staging('register-x-'); d = cm.__enter__(); "
            "(d / 'w.pt').write_bytes(bytes(1000)); os._exit(9)")
    env = {**os.environ, "PANOPTEM_HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", kill], env=env).returncode == 9
    tmp = home / "tmp"
    assert len(list(tmp.iterdir())) == 1                     # the killed process's copy
    (tmp / "users-own").mkdir()
    with home_mod.staging("import-") as live:
        registry.register("tiny_reg", tiny_card)
        assert live.is_dir()
    assert [p.name for p in tmp.iterdir()] == ["users-own"]
    assert not any(p.name.startswith(".") for p in (home / "models" / "tiny_reg").iterdir())


def test_register_records_sha256_when_card_has_none(home, tmp_path, tiny_card):
    card = write_card(tmp_path / "nosha.yaml", "tiny.pt")
    registry.register("nosha", card)
    reg = get_card("nosha")
    assert reg.weights.sha256 == hashlib.sha256((tmp_path / "tiny.pt").read_bytes()).hexdigest()
    assert reg.label_divisor == 1000


def test_register_weights_option_overrides_card(home, tmp_path, tiny_card):
    other = tmp_path / "sub"
    other.mkdir()
    (other / "renamed.pt").write_bytes((tmp_path / "tiny.pt").read_bytes())
    card = write_card(tmp_path / "missing.yaml", "does_not_exist.pt")
    with pytest.raises(PanoptemError, match="--weights"):
        registry.register("x", card)
    registry.register("x", card, weights=str(other / "renamed.pt"))
    assert get_card("x").weights.file == "renamed.pt"
    assert (home / "models" / "x" / "renamed.pt").exists()


def test_sha256_mismatch_is_refused(home, tmp_path, tiny_card):
    card = write_card(tmp_path / "bad.yaml", "tiny.pt", sha256="0" * 64)
    with pytest.raises(PanoptemError, match="does not match the sha256"):
        registry.register("bad", card)
    assert not (home / "models" / "bad").exists()
    assert list(card_paths()) == []


def test_names_duplicates_and_overwrite(home, tmp_path, tiny_card):
    for bad in ("../evil", "a b", "", ".hidden", "x/y"):
        with pytest.raises(PanoptemError, match="not allowed"):
            registry.register(bad, tiny_card)
    registry.register("Mito-v1.2_b", tiny_card)
    with pytest.raises(PanoptemError, match="already registered.*--overwrite"):
        registry.register("Mito-v1.2_b", tiny_card)
    card = write_card(tmp_path / "desc.yaml", "tiny.pt", name="other")
    registry.register("Mito-v1.2_b", card, overwrite=True)
    assert get_card("Mito-v1.2_b").description.startswith("tiny test model")
    assert list(card_paths()) == ["Mito-v1.2_b"]
    # a built-in name is never taken over
    (home_mod.ZOO / "Builtin.yaml").write_text(tiny_card.read_text())
    with pytest.raises(PanoptemError, match="built-in"):
        registry.register("Builtin", tiny_card, overwrite=True)


def test_url_weights_are_recorded_and_checked(home, tiny_card):
    with pytest.raises(PanoptemError, match="http://, https:// or file://"):
        registry.register("u", tiny_card, weights="ftp://example.org/w.pt")
    with pytest.raises(PanoptemError, match="points to no file"):
        registry.register("u", tiny_card, weights="file:///nonexistent/w.pt")
    registry.register("u", tiny_card, weights="https://example.org/models/w.pt")
    card = get_card("u")
    assert card.weights.file == "https://example.org/models/w.pt"
    assert card.weights.sha256 == load_card(tiny_card).weights.sha256
    assert not (home / "models" / "u" / "w.pt").exists()  # nothing downloaded at register time


def test_file_url_is_copied_like_a_path(home, tmp_path, tiny_card):
    url = (tmp_path / "tiny.pt").as_uri()
    registry.register("f", tiny_card, weights=url)
    assert_same_outputs("f", tiny_card)
    assert get_card("f").weights.file == "tiny.pt"  # a bare name in the model's folder, not a URL
    assert (home / "models" / "f" / "tiny.pt").read_bytes() == (tmp_path / "tiny.pt").read_bytes()
    assert not (home / "cache").exists()


# ---------------------------------------------------------------- download over http


def test_fetch_weights_downloads_once_and_verifies(home, tmp_path, tiny_card, server):
    served, base, hits = server
    (served / "tiny.pt").write_bytes((tmp_path / "tiny.pt").read_bytes())
    registry.register("web", tiny_card, weights=f"{base}/tiny.pt")
    assert_same_outputs("web", tiny_card)
    load_model("web", device="cpu")
    path = registry.fetch_weights(get_card("web"))
    assert hits == ["/tiny.pt"]  # downloaded exactly once
    sha = load_card(tiny_card).weights.sha256
    assert path == home / "cache" / sha / "tiny.pt"
    assert sha256_of(path) == sha
    # a damaged cached file is downloaded again
    path.write_bytes(b"garbage")
    assert sha256_of(registry.fetch_weights(get_card("web"))) == sha
    assert hits == ["/tiny.pt", "/tiny.pt"]
    # the package of a remote model carries the weights
    pkg = registry.export_package("web", tmp_path / "web.panoptem")
    with zipfile.ZipFile(pkg) as z:
        assert sorted(z.namelist()) == ["card.yaml", "tiny.pt"]
    assert len(hits) == 2


def test_download_with_wrong_sha256_is_deleted(home, tmp_path, tiny_card, server):
    served, base, hits = server
    (served / "other.pt").write_bytes(b"not the weights the card describes")
    registry.register("web", tiny_card, weights=f"{base}/other.pt")
    with pytest.raises(PanoptemError, match="does not match the sha256.*deleted"):
        load_model("web", device="cpu")
    sha = load_card(tiny_card).weights.sha256
    assert list((home / "cache" / sha).iterdir()) == []  # neither the file nor a partial download remain
    registry.register("gone", tiny_card, weights=f"{base}/missing.pt")
    with pytest.raises(PanoptemError, match="Could not download.*404"):
        load_model("gone", device="cpu")
    assert hits == ["/other.pt", "/missing.pt"]


# ---------------------------------------------------------------- packages


def test_package_export_import_round_trip(home, tmp_path, tiny_card):
    registry.register("tiny_reg", tiny_card)
    pkg = registry.export_package("tiny_reg", tmp_path / "tiny")
    assert pkg == tmp_path / "tiny.panoptem"
    with zipfile.ZipFile(pkg) as z:
        assert sorted(z.namelist()) == ["card.yaml", "tiny.pt"]
        card = yaml.safe_load(z.read("card.yaml"))
    assert card["name"] == "tiny_reg" and card["weights"]["file"] == "tiny.pt"
    with pytest.raises(PanoptemError, match="already exists"):
        registry.export_package("tiny_reg", pkg)
    with pytest.raises(PanoptemError, match="--name"):
        registry.import_package(pkg)
    assert registry.import_package(pkg, name="tiny_copy") == "tiny_copy"
    assert sorted(card_paths()) == ["tiny_copy", "tiny_reg"]
    assert_same_outputs("tiny_copy", tiny_card)


def test_import_refuses_damaged_packages(home, tmp_path, tiny_card):
    not_zip = tmp_path / "a.panoptem"
    not_zip.write_bytes(b"hello")
    with pytest.raises(PanoptemError, match="not a zip"):
        registry.import_package(not_zip)
    evil = tmp_path / "evil.panoptem"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("card.yaml", tiny_card.read_text())
        z.writestr("../tiny.pt", b"x")
    with pytest.raises(PanoptemError, match="unexpected entry"):
        registry.import_package(evil)
    # a tampered weights file fails the card's sha256
    tampered = tmp_path / "t.panoptem"
    with zipfile.ZipFile(tampered, "w") as z:
        z.writestr("card.yaml", tiny_card.read_text())
        z.writestr("tiny.pt", b"tampered")
    with pytest.raises(PanoptemError, match="sha256"):
        registry.import_package(tampered)
    assert list(card_paths()) == []


# ---------------------------------------------------------------- archive


def test_archive_and_restore_user_model(home, tiny_card):
    registry.register("tiny_reg", tiny_card)
    assert registry.archive("tiny_reg") == home / "archived" / "tiny_reg"
    assert list(card_paths()) == []
    with pytest.raises(PanoptemError, match="archived.*restore tiny_reg"):
        load_model("tiny_reg")
    assert [(m.name, m.archived) for m in home_mod.list_models(include_archived=True)] == [("tiny_reg", True)]
    with pytest.raises(PanoptemError, match="already archived"):
        registry.archive("tiny_reg")
    registry.restore("tiny_reg")
    assert list(card_paths()) == ["tiny_reg"]
    assert_same_outputs("tiny_reg", tiny_card)
    with pytest.raises(PanoptemError, match="not archived"):
        registry.restore("tiny_reg")
    with pytest.raises(PanoptemError, match="Unknown model"):
        registry.archive("nope")


def test_archive_builtin_model(home, tiny_card):
    builtin = home_mod.ZOO / "Builtin_v1.yaml"
    (home_mod.ZOO / "tiny.pt").write_bytes((tiny_card.parent / "tiny.pt").read_bytes())
    builtin.write_text(tiny_card.read_text())
    assert list(card_paths()) == ["Builtin_v1"]
    registry.archive("Builtin_v1")
    assert json.loads((home / "archived.json").read_text()) == ["Builtin_v1"]
    assert builtin.exists()  # the installed package is never modified
    assert list(card_paths()) == []
    assert [(m.name, m.source, m.archived) for m in home_mod.list_models(include_archived=True)] == [
        ("Builtin_v1", "built-in", True)]
    registry.restore("Builtin_v1")
    assert json.loads((home / "archived.json").read_text()) == []
    assert list(card_paths()) == ["Builtin_v1"]


def test_archiving_at_once_loses_no_name(home):
    """archived.json is read and written under a lock: writers at once (threads here; processes
    archiving two built-ins at once lost one) all count."""
    import threading
    start = threading.Barrier(12)

    def add(i):
        start.wait()
        home_mod.change_archived_builtins(add={f"M{i}"})
    threads = [threading.Thread(target=add, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert json.loads((home / "archived.json").read_text()) == sorted(f"M{i}" for i in range(12))
    home_mod.change_archived_builtins(remove={"M3"})
    assert "M3" not in json.loads((home / "archived.json").read_text())


# ---------------------------------------------------------------- command line


def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def assert_one_line_error(code, err, *words):
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for w in words:
        assert w in err


def test_cli_round_trip(home, tmp_path, tiny_card):
    code, out, err = cli("model", "register", "tiny_reg", "--card", tiny_card)
    assert code == 0, err
    assert json.loads(out) == {"registered": "tiny_reg", "card": str(home / "models" / "tiny_reg" / "card.yaml")}
    code, out, _ = cli("model", "list")
    assert (code, out) == (0, "tiny_reg\ttiny random test model\n")
    code, out, _ = cli("model", "info", "tiny_reg")
    assert code == 0 and "  1: mitochondria (instance); first label to paint: 1" in out
    assert f"weights: {home / 'models' / 'tiny_reg' / 'tiny.pt'} (state_dict)" in out
    code, out, _ = cli("model", "export", "tiny_reg", "-o", tmp_path / "p.panoptem")
    assert code == 0 and (tmp_path / "p.panoptem").exists()
    code, _, err = cli("model", "import", tmp_path / "p.panoptem")
    assert_one_line_error(code, err, "--name")
    code, out, _ = cli("model", "import", tmp_path / "p.panoptem", "--name", "copy")
    assert (code, json.loads(out)) == (0, {"imported": "copy"})
    code, _, _ = cli("model", "archive", "copy")
    assert code == 0
    assert cli("model", "list")[1] == "tiny_reg\ttiny random test model\n"
    assert cli("model", "list", "--all")[1] == ("tiny_reg\ttiny random test model\n"
                                               "copy\t(archived) tiny random test model\n")
    code, _, _ = cli("model", "restore", "copy")
    assert code == 0 and sorted(card_paths()) == ["copy", "tiny_reg"]


def test_cli_errors_are_one_line(home, tmp_path, tiny_card):
    assert cli("model", "register", "t", "--card", tiny_card)[0] == 0
    assert_one_line_error(*cli("model", "register", "t", "--card", tiny_card)[::2], "already registered")
    assert_one_line_error(*cli("model", "register", "a b", "--card", tiny_card)[::2], "not allowed")
    assert_one_line_error(*cli("model", "register", "m", "--card", tmp_path / "no.yaml")[::2], "does not exist")
    assert_one_line_error(*cli("model", "info", "nope")[::2], "Unknown model")
    assert_one_line_error(*cli("model", "export", "t", "-o", tmp_path / "x", "--format", "zip")[::2], "--format")
    assert_one_line_error(*cli("model", "archive", "nope")[::2], "Unknown model")
    assert_one_line_error(*cli("model", "restore", "t")[::2], "not archived")
    assert_one_line_error(*cli("model", "import", tmp_path / "none.panoptem")[::2], "does not exist")
    # a folder given for the package, a file given for the export's folder: said as they are
    assert_one_line_error(*cli("model", "import", tmp_path)[::2], "is a folder; give the package file itself")
    (tmp_path / "afile").write_text("kept")
    for fmt in ("package", "onnx", "torchscript", "bioimageio"):
        assert_one_line_error(*cli("model", "export", "t", "-o", tmp_path / "afile" / "x", "--format", fmt)[::2],
                              "afile' is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "kept"


def test_shipped_card_names_every_architecture_setting():
    from panoptem.models.architecture import architecture_config
    card = load_card(home_mod.ZOO / "MitoLite_v1.yaml")
    assert card.architecture == architecture_config(card.architecture)  # nothing left to a default
    assert card.weights.sha256 == sha256_of(home_mod.ZOO / card.weights.file)


@pytest.mark.parametrize("given", ["partial", "none"])
def test_register_records_the_whole_architecture(home, tmp_path, tiny_card, given):
    from conftest import TINY_ARCH
    from panoptem.models.architecture import architecture_config
    d = yaml.safe_load(tiny_card.read_text())
    if given == "partial":  # only what differs from the defaults of today
        d["architecture"] = {"widths": TINY_ARCH["widths"], "depths": TINY_ARCH["depths"], "decoder_channels": 8,
                             "head_channels": 8}
    else:  # none in the card: the one saved with the weights
        del d["architecture"]
    card = tmp_path / "card.yaml"
    card.write_text(yaml.safe_dump(d))
    path = registry.register("arch", card, weights=str(tiny_card.parent / "tiny.pt"))
    assert load_card(path).architecture == architecture_config(TINY_ARCH)
    assert load_model("arch", "cpu").module.config == architecture_config(TINY_ARCH)


def test_the_home_and_the_registry_need_no_loader():
    """models/home.py owns the home; the registry acts on it without the loader (no import
    cycle) and neither pulls in torch."""
    import subprocess
    import sys
    code = ("import sys, panoptem.models.registry, panoptem.models.home; "
            "assert 'panoptem.models.load' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    src = str(Path(registry.__file__).resolve().parents[2])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src},
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("field, value", [("voxel_size_nm", 0.0), ("voxel_size_nm", -5.0),
                                          ("voxel_size_nm", float("nan")), ("voxel_size_nm", float("inf")),
                                          ("context_spacing_nm", float("inf")), ("pixel_range_nm", [4.0, float("inf")])])
def test_a_card_with_an_impossible_pixel_size_is_refused(home, tmp_path, tiny_card, field, value):
    """A card's pixel sizes are positive, finite nm: 0 or inf divided later with a traceback, -5
    ran 'at -5 nm'."""
    import yaml

    from panoptem.models.card import load_card
    card = yaml.safe_load(tiny_card.read_text())
    card[field] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(card))
    with pytest.raises(PanoptemError, match=field):
        load_card(bad)
