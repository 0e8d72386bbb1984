"""Exports (TorchScript, empanada-napari, ONNX) and empanada TorchScript models in panoptem."""
import json
from typing import Dict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from panoptem.cli import app
from panoptem.errors import PanoptemError
from panoptem.inference.segment2d import segment_2d
from panoptem.models import registry
from panoptem.models.export import export_onnx, export_torchscript
from panoptem.models.home import get_card, sha256_of
from panoptem.models.load import load_model


X = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 1, 64, 96), dtype=np.float32))
IMAGE = np.random.default_rng(3).integers(0, 256, (64, 96), dtype=np.uint8)


def run(model, x=X):
    with torch.no_grad():
        return {k: v.float() for k, v in load_model(str(model), device="cpu").module(x).items()}


# ---------------------------------------------------------------- empanada model files in panoptem

# Two squares (rows, cols) and the heatmap cell at each one's centre: what an ideal network says.
SQUARES = [(slice(8, 24), slice(8, 24)), (slice(36, 60), slice(32, 56))]
PEAKS = [(3, 3), (11, 10)]


class OracleEmpanadaNet(torch.nn.Module):
    """empanada's TorchScript interface with fixed outputs for a 64 x 64 input."""

    def __init__(self):
        super().__init__()
        sem = torch.full((1, 1, 64, 64), -10.0)
        ctr = torch.zeros(1, 1, 16, 16)
        for (r, c), (pr, pc) in zip(SQUARES, PEAKS):
            sem[..., r, c] = 10.0
            ctr[0, 0, pr, pc] = 1.0
        self.register_buffer("sem", sem)
        self.register_buffer("ctr", ctr)

    def forward(self, x: torch.Tensor, render_steps: int = 2, interpolate_ins: bool = True) -> Dict[str, torch.Tensor]:
        n = x.shape[0]
        sem = self.sem.expand(n, -1, -1, -1)
        ctr = self.ctr.expand(n, -1, -1, -1)
        off = torch.zeros(n, 2, 16, 16)
        if render_steps != 2:
            sem = F.interpolate(sem, scale_factor=2.0 ** (render_steps - 2), mode="bilinear")
        if interpolate_ins:
            ctr = F.interpolate(ctr, size=[64, 64], mode="bilinear")
            off = F.interpolate(off, size=[64, 64], mode="bilinear")
        return {"sem_logits": sem, "ctr_hmp": ctr, "offsets": off}


def empanada_files(folder):
    torch.jit.save(torch.jit.script(OracleEmpanadaNet()), str(folder / "Oracle_v1.pth"))
    cfg = {"model": "https://example.org/Oracle_v1.pth", "model_quantized": None,
           "norms": {"mean": 0.57571, "std": 0.12765}, "padding_factor": 16, "thing_list": [1],
           "labels": [1], "class_names": {1: "mito"}, "description": "oracle in empanada's format",
           "FINETUNE": {"dataset_params": {"label_divisor": 1000}}}
    (folder / "Oracle_v1.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "Oracle_v1.yaml", folder / "Oracle_v1.pth"


def expected_oracle_labels(div):
    exp = np.zeros((64, 64), np.uint32)
    for i, sq in enumerate(SQUARES, 1):
        exp[sq] = div + i
    return exp


def test_empanada_torchscript_model_segments(home, tmp_path):
    cfg, pth = empanada_files(tmp_path)
    # as a MitoNet user would: register the yaml with the local .pth
    registry.register("Oracle_v1", cfg, weights=str(pth))
    model = load_model("Oracle_v1", device="cpu")
    card = model.card
    assert card.weights.format == "empanada_torchscript" and card.padding_factor == 16
    assert card.normalization.mode == "dtype_max" and card.label_divisor == 1000
    assert [(c.id, c.name, c.kind) for c in card.classes] == [(1, "mito", "instance")]
    img = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    labels = segment_2d(img, model)
    assert labels.dtype == np.uint32
    np.testing.assert_array_equal(labels, expected_oracle_labels(10000))
    labels = segment_2d(img, model, maximum_objects_per_class=1000, fine_boundaries=True)
    np.testing.assert_array_equal(labels, expected_oracle_labels(1000))


# ---------------------------------------------------------------- panoptem -> empanada


def test_empanada_export_round_trip(home, tmp_path, tiny_card):
    out = export_torchscript(tiny_card, tmp_path / "Tiny_empanada.pth", empanada_interface=True)
    cfg = yaml.safe_load((tmp_path / "Tiny_empanada.yaml").read_text())
    assert cfg["model"] == str(out.resolve()) and cfg["model_quantized"] is None
    assert cfg["norms"] == {"mean": 0.5, "std": 0.25} and cfg["padding_factor"] == 32
    assert (cfg["thing_list"], cfg["labels"], cfg["class_names"]) == ([1], [1], {1: "mitochondria"})
    assert "percentiles" in cfg["description"] and "FINETUNE" not in cfg
    assert cfg["panoptem"]["sha256"] == sha256_of(out)

    card = get_card(str(tmp_path / "Tiny_empanada.yaml"))
    assert card.weights.format == "empanada_torchscript"
    assert card.normalization == get_card(str(tiny_card)).normalization  # kept through the panoptem section

    # what empanada's fields cannot say comes back too (the padding multiple, the pixel range)
    d = yaml.safe_load(tiny_card.read_text())
    (tmp_path / "ranged.yaml").write_text(yaml.safe_dump({**d, "input_multiple": 16, "pixel_range_nm": [6.0, 10.0],
                                                         "voxel_size_nm": 5.0, "context_spacing_nm": 7.5}))
    export_torchscript(tmp_path / "ranged.yaml", tmp_path / "ranged_e.pth", empanada_interface=True)
    back = get_card(str(tmp_path / "ranged_e.yaml"))
    assert (back.input_multiple, back.pixel_range_nm, back.voxel_size_nm, back.context_spacing_nm) == \
        (16, (6.0, 10.0), 5.0, 7.5)
    ref, got = run(tiny_card), run(tmp_path / "Tiny_empanada.yaml")
    torch.testing.assert_close(got["sem_logits"], F.interpolate(ref["sem_logits"], size=(64, 96), mode="bilinear"),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(got["ctr_hmp"], ref["ctr_hmp"], rtol=0, atol=1e-6)
    torch.testing.assert_close(got["offsets"], ref["offsets"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(segment_2d(IMAGE, str(tmp_path / "Tiny_empanada.yaml")),
                                  segment_2d(IMAGE, str(tiny_card)))

    # empanada's own calls: fine instance outputs, and one more render step after downsampling
    net = torch.jit.load(str(out))
    with torch.no_grad():
        fine = net(X, 2, True)
        more = net(X, 3, False)
    assert fine["ctr_hmp"].shape == (2, 1, 64, 96) and fine["offsets"].shape == (2, 2, 64, 96)
    torch.testing.assert_close(fine["ctr_hmp"], F.interpolate(ref["ctr_hmp"], size=(64, 96), mode="bilinear"))
    assert more["sem_logits"].shape == (2, 1, 128, 192) and more["ctr_hmp"].shape == (2, 1, 16, 24)

    with pytest.raises(PanoptemError, match="already exists"):
        export_torchscript(tiny_card, out, empanada_interface=True)


def test_torchscript_export_and_record_in_registered_card(home, tmp_path, tiny_card):
    registry.register("tiny_reg", tiny_card)
    out = export_torchscript("tiny_reg", tmp_path / "tiny_ts.pt")
    card = get_card(str(tmp_path / "tiny_ts.yaml"))
    assert (card.weights.file, card.weights.format) == ("tiny_ts.pt", "torchscript")
    assert card.weights.sha256 == sha256_of(out)
    ref, got = run(tiny_card), run(tmp_path / "tiny_ts.yaml")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6)
    exports = get_card("tiny_reg").exports
    assert [(e.file, e.format, e.sha256) for e in exports] == [("tiny_ts.pt", "torchscript", sha256_of(out))]
    assert (home / "models" / "tiny_reg" / "tiny_ts.pt").read_bytes() == out.read_bytes()  # a copy in the store
    # an empanada model exported again keeps its own network
    cfg, pth = empanada_files(tmp_path)
    registry.register("Oracle_v1", cfg, weights=str(pth))
    again = export_torchscript("Oracle_v1", tmp_path / "again.pth", empanada_interface=True)
    assert yaml.safe_load((tmp_path / "again.yaml").read_text())["norms"] == {"mean": 0.57571, "std": 0.12765}
    np.testing.assert_array_equal(segment_2d(IMAGE[:, :64], str(tmp_path / "again.yaml")),
                                  expected_oracle_labels(10000))
    assert again.exists()


# ---------------------------------------------------------------- ONNX


def test_onnx_export_matches_torch(home, tmp_path, tiny_card):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    registry.register("tiny_reg", tiny_card)
    out = export_onnx("tiny_reg", tmp_path / "tiny_net.onnx")
    card = get_card(str(tmp_path / "tiny_net.yaml"))
    assert (card.weights.file, card.weights.format, card.weights.sha256) == ("tiny_net.onnx", "onnx", sha256_of(out))
    assert get_card("tiny_reg").exports[-1].format == "onnx"
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((3, 1, 96, 32), dtype=np.float32))
    got = dict(zip(["sem_logits", "ctr_hmp", "offsets"], sess.run(None, {"image": x.numpy()})))
    ref = run(tiny_card, x)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k].numpy(), rtol=1e-4, atol=1e-5)
    # the card says how to feed the graph (for other tools); panoptem runs the model it came from
    with pytest.raises(PanoptemError, match="other tools.*register that model"):
        load_model(str(tmp_path / "tiny_net.yaml"))
    with pytest.raises(PanoptemError, match="other tools.*register that model"):
        registry.register("tiny_onnx", tmp_path / "tiny_net.yaml")
    assert not (home / "models" / "tiny_onnx").exists()


# ---------------------------------------------------------------- command line


def test_cli_exports(home, tmp_path, tiny_card):
    runner = CliRunner()
    assert runner.invoke(app, ["model", "register", "tiny_reg", "--card", str(tiny_card)]).exit_code == 0
    r = runner.invoke(app, ["model", "export", "tiny_reg", "-o", str(tmp_path / "e.pth"), "--format", "empanada"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"exported": "tiny_reg", "format": "empanada", "file": str(tmp_path / "e.pth"),
                                    "card": str(tmp_path / "e.yaml")}
    # the exported pair registers like any empanada model
    r = runner.invoke(app, ["model", "register", "back", "--card", str(tmp_path / "e.yaml"),
                            "--weights", str(tmp_path / "e.pth")])
    assert r.exit_code == 0, r.stderr
    assert get_card("back").weights.format == "empanada_torchscript"
    r = runner.invoke(app, ["model", "export", "tiny_reg", "-o", str(tmp_path / "e.pth"), "--format", "empanada"])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "--overwrite" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # a folder as the output: the file goes into it, named after the model
    (tmp_path / "shared").mkdir()
    for fmt, suffix in (("package", ".panoptem"), ("onnx", ".onnx")):
        r = runner.invoke(app, ["model", "export", "tiny_reg", "-o", str(tmp_path / "shared"), "--format", fmt])
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["file"] == str(tmp_path / "shared" / f"tiny_reg{suffix}")
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["tiny_reg.onnx", "tiny_reg.panoptem",
                                                                       "tiny_reg.yaml"]
    # a folder not there yet, named with a trailing slash (it was written as a file of that name)
    for fmt, name in (("package", "tiny_reg.panoptem"), ("torchscript", "tiny_reg.pt")):
        r = runner.invoke(app, ["model", "export", "tiny_reg", "-o", f"{tmp_path / ('new_' + fmt)}/", "--format", fmt])
        assert r.exit_code == 0, r.stderr
        assert (tmp_path / f"new_{fmt}" / name).is_file() and not (tmp_path / f"new_{fmt}.panoptem").exists()


def test_an_export_never_replaces_the_model_it_exports(home, tmp_path, tiny_card):
    """--overwrite replaces an earlier export, never the card or weights being exported (a card
    sharing those weights then failed to load: sha256 mismatch)."""
    runner = CliRunner()
    assert runner.invoke(app, ["model", "export", str(tiny_card), "-o", str(tmp_path / "m.pt"),
                               "--format", "torchscript"]).exit_code == 0
    mine = tmp_path / "mine.yaml"
    mine.write_text((tmp_path / "m.yaml").read_text())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for out in ("m.pt", "mine.pt"):   # its weights; its card beside the export (mine.yaml)
        r = runner.invoke(app, ["model", "export", str(mine), "-o", str(tmp_path / out), "--format", "torchscript",
                                "--overwrite"])
        assert r.exit_code == 2 and "a file of the model being exported" in r.stderr, r.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    r = runner.invoke(app, ["model", "export", str(mine), "-o", str(tmp_path / "m2.pt"), "--format", "torchscript"])
    assert r.exit_code == 0, r.stderr


# ---------------------------------------------------------------- models that see neighbouring planes


def test_exports_of_a_model_that_sees_neighbours(home, tmp_path):
    """ONNX and TorchScript take its C input channels; the empanada interface (one plane) is refused."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from conftest import make_tiny_card
    registry.register("tiny3", make_tiny_card(tmp_path, context_slices=1, name="tiny3"))
    with pytest.raises(PanoptemError, match="empanada-napari feeds one plane"):
        export_torchscript("tiny3", tmp_path / "e.pth", empanada_interface=True)
    assert not (tmp_path / "e.pth").exists()
    out = export_onnx("tiny3", tmp_path / "t3.onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((2, 3, 64, 96), dtype=np.float32))
    got = dict(zip(["sem_logits", "ctr_hmp", "offsets"], sess.run(None, {"image": x.numpy()})))
    ref = run(get_card("tiny3").source_dir + "/card.yaml", x)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k].numpy(), rtol=1e-4, atol=1e-5)
    ts = export_torchscript("tiny3", tmp_path / "ts3.pt")
    assert get_card(str(tmp_path / "ts3.yaml")).context_slices == 1
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(ts))(x)["offsets"].numpy(), ref["offsets"].numpy(), atol=1e-5)


def test_an_export_over_an_earlier_one_replaces_network_and_card_as_a_pair(home, tmp_path, tiny_card, monkeypatch):
    """export --overwrite moved the new network into place, then wrote its card: stopped between
    the two, a new network lay beside the old card (whose sha256 no longer matched). Both are now
    complete before either is moved."""
    from panoptem.models import export as ex
    out = tmp_path / "m.pt"
    ex.export_torchscript(tiny_card, out)
    before = (out.read_bytes(), out.with_suffix(".yaml").read_bytes())

    def stopped(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(ex, "sha256_of", stopped)          # stopped before the card is written
    with pytest.raises(KeyboardInterrupt):
        ex.export_torchscript(tiny_card, out, empanada_interface=True, overwrite=True)
    assert (out.read_bytes(), out.with_suffix(".yaml").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".m", "m"))) == ["m.pt", "m.yaml"]
