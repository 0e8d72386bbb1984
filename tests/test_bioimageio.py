"""bioimage.io model packages: export -> validate (bioimageio.spec, offline) -> import gives the
same outputs; packages from elsewhere whose interface fits run too; hostile packages are refused."""
import json
import zipfile

import numpy as np
import pytest
import yaml

pytest.importorskip("bioimageio.spec", reason="bioimageio.spec is not installed")

from panoptem import PanoptemError, load_sample, segment_2d  # noqa: E402
from panoptem.models.bioimageio import (  # noqa: E402
    RDF,
    apply_preprocessing,
    export_bioimageio,
    import_bioimageio,
    validate_package,
)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """MitoLite_v1 exported once as a bioimage.io package."""
    return export_bioimageio("MitoLite_v1", tmp_path_factory.mktemp("bio") / "mitolite")


@pytest.fixture
def user_home(tmp_path, monkeypatch):
    """An empty PANOPTEM_HOME; the built-in models stay visible (they are exported)."""
    monkeypatch.setenv("PANOPTEM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _unpack(pkg, folder):
    folder.mkdir()
    with zipfile.ZipFile(pkg) as z:
        z.extractall(folder)
    return folder


def _repack(folder, out, rdf=None, extra=()):
    if rdf is not None:
        (folder / RDF).write_text(rdf if isinstance(rdf, str) else yaml.safe_dump(rdf, sort_keys=False))
    with zipfile.ZipFile(out, "w") as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f.name)
        for name, data in extra:
            z.writestr(name, data)
    return out


def _image():
    return load_sample()[12]


def test_export_is_a_valid_package_with_real_test_tensors(package, tmp_path):
    import torch
    assert package.name == "mitolite.zip"
    folder = _unpack(package, tmp_path / "p")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "panoptem_card.yaml", "panoptem_weights.pt", "rdf.yaml", "test_ctr_hmp.npy",
                     "test_input.npy", "test_offsets.npy", "test_sem_logits.npy", "weights.pt"]
    descr = validate_package(folder)
    assert descr.name == "MitoLite_v1" and str(descr.inputs[0].axes[2].unit) == "nanometer"
    rdf = yaml.safe_load((folder / RDF).read_text())
    assert rdf["inputs"][0]["axes"][2]["scale"] == 5.0 and [o["id"] for o in rdf["outputs"]] == \
        ["sem_logits", "ctr_hmp", "offsets"]
    # what a bioimage.io runtime does: the declared preprocessing, then the TorchScript weights
    raw = np.load(folder / "test_input.npy")
    assert raw.dtype == np.uint8 and raw.shape == (1, 1, 256, 256) and raw.std() > 10   # real EM, not zeros
    net = torch.jit.load(str(folder / "weights.pt"))
    with torch.no_grad():
        outs = net(torch.from_numpy(apply_preprocessing(raw, rdf["inputs"][0]["preprocessing"])))
    for o, t in zip(rdf["outputs"], outs):
        np.testing.assert_allclose(t.numpy(), np.load(folder / o["test_tensor"]["source"]), rtol=1e-4, atol=1e-4)
    # the preprocessing steps equal panoptem's own normalisation
    from panoptem.inference.preprocess import intensity_range, normalize
    lo, hi = intensity_range(raw[0, 0])
    np.testing.assert_allclose(apply_preprocessing(raw, rdf["inputs"][0]["preprocessing"])[0, 0],
                               normalize(raw[0, 0], lo, hi), atol=1e-4)


def test_round_trip_gives_the_same_model_and_outputs(package, user_home):
    from panoptem.models.home import get_card
    name = import_bioimageio(package, name="mito_back")
    card, orig = get_card(name), get_card("MitoLite_v1")
    assert card.weights.format == "state_dict" and card.weights.sha256 == orig.weights.sha256
    assert card.voxel_size_nm == orig.voxel_size_nm and card.normalization == orig.normalization
    img = _image()
    a, b = segment_2d(img, "MitoLite_v1", device="cpu"), segment_2d(img, name, device="cpu")
    assert a.max() > 0 and np.array_equal(a, b)


def test_import_through_the_cli_recognises_the_format(package, user_home, tmp_path, capsys):
    from panoptem.cli import main
    out = tmp_path / "cli.zip"
    assert main(["model", "export", "MitoLite_v1", "-o", str(out), "--format", "bioimageio"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec == {"exported": "MitoLite_v1", "format": "bioimageio", "file": str(out)}
    assert main(["model", "export", "MitoLite_v1", "-o", str(out), "--format", "bioimageio"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["model", "import", str(out), "--name", "from_cli"]) == 0
    assert json.loads(capsys.readouterr().out) == {"imported": "from_cli"}


def test_a_package_from_elsewhere_runs_with_its_torchscript_weights(package, user_home, tmp_path):
    """Without panoptem's attachments: the TorchScript weights, the normalisation of the
    preprocessing and the pixel size of the input axes."""
    from panoptem.models.home import get_card
    folder = _unpack(package, tmp_path / "p")
    rdf = yaml.safe_load((folder / RDF).read_text())
    rdf.pop("attachments"), rdf.pop("config")
    rdf["name"] = "someone else-s model"
    for f in ("panoptem_card.yaml", "panoptem_weights.pt"):
        (folder / f).unlink()
    pkg = _repack(folder, tmp_path / "foreign.zip", rdf)
    name = import_bioimageio(pkg)
    assert name == "someone_else-s_model"
    card = get_card(name)
    assert card.weights.format == "torchscript" and card.voxel_size_nm == 5.0 and card.padding_factor == 32
    assert card.normalization.low_pct == 0.5 and card.normalization.std == pytest.approx(0.25)
    img = _image()
    a, b = segment_2d(img, "MitoLite_v1", device="cpu"), segment_2d(img, name, device="cpu")
    assert np.count_nonzero(a != b) <= 1e-3 * a.size


@pytest.mark.parametrize("attack", ["subfolder", "parent", "alias_bomb", "tampered_weights", "absolute_source",
                                    "url_source", "wrong_interface", "card_escapes", "not_a_model"])
def test_hostile_or_unfit_packages_are_refused(package, user_home, tmp_path, attack):
    from panoptem.models.home import card_paths
    folder = _unpack(package, tmp_path / "p")
    rdf = yaml.safe_load((folder / RDF).read_text())
    extra, expect = (), None
    if attack == "subfolder":
        extra, expect = [("sub/x.txt", b"x")], "unexpected entry"
    elif attack == "parent":
        extra, expect = [("../evil.txt", b"x")], "unexpected entry"
    elif attack == "alias_bomb":
        rdf = (folder / RDF).read_text() + "bomb: &a [1, 1]\nbombs: [*a, *a, *a]\n"
        expect = "aliases"
    elif attack == "tampered_weights":
        (folder / "weights.pt").write_bytes((folder / "weights.pt").read_bytes() + b"\0")
        expect = "does not match its sha256"
    elif attack == "absolute_source":
        rdf["weights"]["torchscript"]["source"] = str(folder / "weights.pt")
        expect = "not a file in the card's folder"
    elif attack == "url_source":
        rdf["documentation"] = "https://example.org/README.md"
        expect = "outside the package"
    elif attack == "wrong_interface":
        rdf.pop("attachments"), rdf.pop("config")
        rdf["outputs"] = rdf["outputs"][:2]
        expect = "interface does not fit panoptem"
    elif attack == "card_escapes":
        card = yaml.safe_load((folder / "panoptem_card.yaml").read_text())
        card["weights"]["file"] = "../../weights.pt"
        (folder / "panoptem_card.yaml").write_text(yaml.safe_dump(card))
        for a in rdf["attachments"]:
            if a["source"] == "panoptem_card.yaml":
                import hashlib
                a["sha256"] = hashlib.sha256((folder / "panoptem_card.yaml").read_bytes()).hexdigest()
        expect = "bare file name"
    elif attack == "not_a_model":
        rdf = {"format_version": "0.3.0", "type": "dataset", "name": "d", "description": "d", "authors": [],
               "cite": [{"text": "x", "url": "https://example.org"}], "license": "MIT"}
        expect = "not"
    pkg = _repack(folder, tmp_path / "bad.zip", rdf, extra)
    with pytest.raises(PanoptemError, match=expect):
        import_bioimageio(pkg)
    from panoptem.models.home import ZOO
    assert not card_paths().keys() - {p.stem for p in ZOO.glob("*.yaml")}   # nothing registered
    assert not (tmp_path / "evil.txt").exists()


def test_a_model_with_a_short_name_exports(user_home, tmp_path, tiny_card):
    # bioimage.io names have 5 characters or more
    from panoptem.models.registry import register
    register("mito", tiny_card)
    validate_package(_unpack(export_bioimageio("mito", tmp_path / "short"), tmp_path / "p"))
    assert import_bioimageio(tmp_path / "short.zip", name="mito_back") == "mito_back"


def test_import_contacts_nothing_the_package_links_to(package, user_home, tmp_path, server, monkeypatch):
    # covers, citations and the repository are links: validating the package must not fetch them
    _, base, hits = server
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(tmp_path / "bioimageio_cache"))
    folder = _unpack(package, tmp_path / "p")
    rdf = yaml.safe_load((folder / RDF).read_text())
    rdf["covers"] = [f"{base}/cover.png?who=me"]
    rdf["cite"][0]["url"] = f"{base}/cite"
    rdf["git_repo"] = f"{base}/repo"
    assert import_bioimageio(_repack(folder, tmp_path / "linked.zip", rdf), name="linked") == "linked"
    assert hits == []


def test_a_model_that_sees_neighbours_exports_its_channels_and_comes_back(user_home, tmp_path):
    """MitoLite_3slice_v1: three named input channels normalised together, a real 3-slice test input,
    and the imported model gives the same labels."""
    import torch
    from panoptem import take_plane
    pkg = export_bioimageio("MitoLite_3slice_v1", tmp_path / "three")
    folder = _unpack(pkg, tmp_path / "p")
    validate_package(folder)
    rdf = yaml.safe_load((folder / RDF).read_text())
    assert rdf["inputs"][0]["axes"][1]["channel_names"] == ["em_z-1", "em", "em_z+1"]
    raw = np.load(folder / "test_input.npy")
    assert raw.shape == (1, 3, 256, 256) and not np.array_equal(raw[0, 0], raw[0, 1])  # real neighbours
    x = apply_preprocessing(raw, rdf["inputs"][0]["preprocessing"])
    from panoptem.inference.preprocess import intensity_range, normalize
    lo, hi = intensity_range(raw[0])  # one range for the plane and its neighbours, as panoptem
    np.testing.assert_allclose(x[0], normalize(raw[0], lo, hi), atol=1e-4)
    with torch.no_grad():
        out = torch.jit.load(str(folder / "weights.pt"))(torch.from_numpy(x))
    np.testing.assert_allclose(out[2].numpy(), np.load(folder / "test_offsets.npy"), rtol=1e-4, atol=1e-4)
    name = import_bioimageio(pkg, name="three_back")
    stack = take_plane(load_sample(), 12, "xy", neighbours=1)
    a = segment_2d(stack, "MitoLite_3slice_v1", device="cpu", with_neighbours=True)
    b = segment_2d(stack, name, device="cpu", with_neighbours=True)
    assert a.max() > 0 and np.array_equal(a, b)
