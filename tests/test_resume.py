"""Kill a 3D run with SIGKILL, run the same command again: the output equals an
uninterrupted run's to the last bit, and nothing is left beside it."""
import os
from pathlib import Path
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import torch
import yaml

from panoptem.io import read_image
from panoptem.models.home import sha256_of

from _models import DarkBlobNet
from test_segment3d import phantom

# Runs the CLI, SIGKILLing itself at the N-th network call ("predict") or the
# N-th write of output slices ("write"): the points where a real run dies.
RUNNER = textwrap.dedent("""
    import os, signal, sys
    where, n = sys.argv[1], int(sys.argv[2])
    calls = [0]
    def killer(orig):
        def f(*a, **k):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(*a, **k)
        return f
    if where == "predict":
        from panoptem.inference import engine
        engine.Predictor.predict = killer(engine.Predictor.predict)
    elif where == "write":
        from panoptem.io import writers
        for cls in (writers._TiffWriter, writers._ZarrWriter):
            cls.__setitem__ = killer(cls.__setitem__)
    from panoptem.cli import main
    sys.exit(main(sys.argv[3:]))
""")

# (where, n): after the first batch, in the middle (for ortho-plane: inside the
# second plane's stack), and after the last slice, while the labels are written
KILLS = {"xy": [("predict", 2), ("predict", 4), ("write", 1)],
         "ortho": [("predict", 2), ("predict", 12), ("write", 2)]}  # 6 + 16 + 16 batches


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Input volume and an oracle model as a TorchScript card (loadable by a fresh process)."""
    d = tmp_path_factory.mktemp("resume")
    vol, _ = phantom((24, 64, 64), [(8, 16, 16), (8, 44, 20), (16, 28, 46), (17, 48, 48)], r=7)
    tifffile.imwrite(d / "vol.tif", vol)
    torch.jit.save(torch.jit.script(DarkBlobNet()), str(d / "oracle.pt"))
    card = {"name": "oracle", "label_divisor": None, "padding_factor": 32,
            "weights": {"file": "oracle.pt", "sha256": sha256_of(d / "oracle.pt"), "format": "torchscript"}}
    (d / "oracle.yaml").write_text(yaml.safe_dump(card))
    return d


def _cli(workspace, out, plane, kill=None) -> subprocess.Popen:
    """Start the CLI in a fresh process (killing itself at ``kill``)."""
    args = ["segment3d", str(workspace / "vol.tif"), "-o", str(out), "--model", str(workspace / "oracle.yaml"),
            "--device", "cpu", "--min-size", "200", "--min-extent", "3", "--batch-size", "4"]
    if plane == "ortho":
        args += ["--orthoplane", "--return-panoptic"]
    where, n = kill or ("none", 0)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", RUNNER, where, str(n), *args], cwd=workspace, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(procs):
    """Return codes and stderr of processes started together (they share the cores)."""
    return [(p.wait(timeout=240), p.communicate()[1]) for p in procs]


def _outputs(out, plane):
    names = [out.name]
    if plane == "ortho":
        stem, ext = out.name.split(".", 1)
        names += [f"{stem}_{p}.{ext}" for p in ("xy", "xz", "yz")]
    return sorted(names)


@pytest.mark.slow
@pytest.mark.parametrize("ext", [".tif", ".zarr"])
@pytest.mark.parametrize("plane", ["xy", "ortho"])
def test_kill_and_resume_gives_the_same_bytes(workspace, tmp_path, plane, ext):
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    dirs = [tmp_path / f"k{i}" for i in range(len(KILLS[plane]))]
    for d in dirs:
        d.mkdir()
    first = _wait([_cli(workspace, ref_dir / f"mito{ext}", plane)]
                  + [_cli(workspace, d / f"mito{ext}", plane, kill) for d, kill in zip(dirs, KILLS[plane])])
    assert first[0][0] == 0, first[0][1]
    for d, kill, (code, err) in zip(dirs, KILLS[plane], first[1:]):
        assert code == -9, (kill, err)  # really killed there
        assert not (d / f"mito{ext}").exists()
        assert any(p.name.startswith(".mito") for p in d.iterdir())  # it left work behind
    again = _wait([_cli(workspace, d / f"mito{ext}", plane) for d in dirs])
    for d, kill, (code, err) in zip(dirs, KILLS[plane], again):
        assert code == 0, (kill, err)
        out = d / f"mito{ext}"
        assert sorted(p.name for p in d.iterdir()) == _outputs(out, plane), kill  # nothing else left
        for name in _outputs(out, plane):
            a, b = read_image(ref_dir / name), read_image(d / name)
            assert a.voxel_size == b.voxel_size
            x, y = np.asarray(a.data[:]), np.asarray(b.data[:])
            assert x.dtype == y.dtype and x.shape == y.shape
            assert np.array_equal(x, y), (kill, name, int((x != y).sum()))
        assert np.asarray(read_image(out).data[:]).max() >= 4  # the oracle finds the 4 balls


def test_an_output_made_drops_what_other_engines_kept_to_make_it(tmp_path):
    """What a killed run of one engine kept beside an output to resume from (a blockwise work
    folder, a 2D stack's slices, a whole-volume cache) is removed once another engine has written
    that output; the engine's own, kept on purpose (--keep-cache), stays."""
    import panoptem
    from _models import dark_blob_model
    vol = np.full((4, 64, 64), 200, np.uint8)
    vol[:, 20:40, 20:40] = 30
    out = tmp_path / "o.tif"
    kept = {s: tmp_path / f".o.tif{s}" for s in (".blockwise", ".panoptem-slices", ".panoptem-cache")}
    for folder in kept.values():
        (folder / "inside").mkdir(parents=True)
    panoptem.segment_3d(vol, dark_blob_model(), output=out, keep_cache=True, min_size=0, min_extent=1)
    assert out.exists() and kept[".panoptem-cache"].is_dir()
    assert not kept[".blockwise"].exists() and not kept[".panoptem-slices"].exists()
    # another engine writing the output leaves a cache kept on purpose
    from panoptem._atomic import drop_resume_state, leftovers
    drop_resume_state(out, "2d")
    assert kept[".panoptem-cache"].is_dir()
    # a killed run's leftovers are this output's, not those of an output whose name begins alike
    for name in (".o.tif.ab12cd34.part", ".o.tif.v2.tif.ab12cd34.part", ".o.tif.k3j_x9qz.old", ".o.tif.work",
                 ".o.tif.q1w2e3r4.part.tmp", ".o.tif.a1b2c3d4.part.tif",  # atomic_path's, with their suffix
                 ".o.tif.20261207", ".o.tif.original", ".o.tif.previous.tif"):  # the user's own: kept
        (tmp_path / name).touch()
    assert [p.name for p in leftovers(out)] == [".o.tif.a1b2c3d4.part.tif", ".o.tif.ab12cd34.part",
                                               ".o.tif.k3j_x9qz.old", ".o.tif.q1w2e3r4.part.tmp", ".o.tif.work"]


@pytest.mark.parametrize("blockwise", [False, True])
def test_a_run_killed_while_removing_its_work_leaves_nothing_a_rerun_trusts(tmp_path, monkeypatch, blockwise):
    """A finished run removes its network outputs (or blockwise work) beside the output; killed
    while removing them, it left a half-deleted folder that the next run resumed from (a raw
    KeyError, or labels with no object). The folder is renamed aside first: the next run finds
    only a leftover, removes it and gives the same labels."""
    import shutil

    import panoptem
    from panoptem import _atomic
    from _models import dark_blob_model
    vol, _ = phantom()
    out = tmp_path / "o.zarr"
    kw = dict(min_size=0, min_extent=1, blockwise=blockwise, **({"n_workers": 1} if blockwise else {}))
    first = panoptem.segment_3d(vol, dark_blob_model(), output=out, **kw)
    ref = np.asarray(first.labels["mitochondria"][:])
    killed, real_rmtree = [], shutil.rmtree
    # killed as removals begin: the folders were renamed aside, none of them deleted
    monkeypatch.setattr(_atomic.shutil, "rmtree", lambda p, **k: killed.append(p))
    panoptem.segment_3d(vol, dark_blob_model(), output=out, overwrite=True, **kw)
    monkeypatch.setattr(_atomic.shutil, "rmtree", real_rmtree)
    state = ".o.zarr.blockwise" if blockwise else ".o.zarr.panoptem-cache"
    assert killed and not (tmp_path / state).exists()
    assert any(p.name.startswith(".o.zarr.") and p.name.endswith(".old") for p in map(Path, killed))
    again = panoptem.segment_3d(vol, dark_blob_model(), output=out, overwrite=True, **kw)
    np.testing.assert_array_equal(np.asarray(again.labels["mitochondria"][:]), ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]
