import functools
import http.server
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

def pytest_configure(config):
    """Under pytest-xdist (``-n N``), each worker process on cores of its own: every one would
    otherwise run its networks and its Dask workers on all the machine's cores, N times over."""
    name, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if name is None or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    i = int(name.removeprefix("gw"))
    share = cores[i::count] or [cores[i % len(cores)]]
    os.sched_setaffinity(0, share)


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LUCCHI = SHARED / "data" / "lucchi"


@pytest.fixture
def lucchi():
    """Path of the Lucchi data folder (shared/data/lucchi beside the repository); skips only when
    it is absent."""
    if not LUCCHI.exists():
        pytest.skip("shared/data/lucchi beside the repository is not present (the project's CI has it)")
    return LUCCHI


TINY_ARCH = dict(num_classes=1, widths=[8, 8, 8, 8, 8], depths=[1, 1, 1, 1], decoder_channels=8, head_channels=8)


def make_tiny_card(folder, context_slices: int = 0, name: str = "tiny", **fields):
    """Card path of a tiny randomly initialised PanopticNet in ``folder`` (seeded; nothing
    downloaded), seeing ``context_slices`` neighbours on each side of a plane; ``fields``: more
    card fields (e.g. ``voxel_size_nm``)."""
    import torch
    import yaml

    from panoptem.models.architecture import build_model
    from panoptem.models.home import sha256_of

    torch.manual_seed(0)
    arch = {**TINY_ARCH, "in_channels": 2 * context_slices + 1} if context_slices else TINY_ARCH
    m = build_model(arch)
    w = folder / f"{name}.pt"
    torch.save({"architecture": arch, "state_dict": m.state_dict()}, w)
    card = {"name": name, "description": "tiny random test model", "architecture": arch,
            "label_divisor": None, "weights": {"file": w.name, "sha256": sha256_of(w)}}
    if context_slices:
        card["context_slices"] = context_slices
    card.update(fields)
    p = folder / f"{name}.yaml"
    p.write_text(yaml.safe_dump(card))
    return p


@pytest.fixture
def tiny_card(tmp_path):
    """Card path of a tiny randomly initialised PanopticNet (nothing downloaded)."""
    return make_tiny_card(tmp_path)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty PANOPTEM_HOME and an empty built-in zoo (tests must not see MitoLite_v1)."""
    from panoptem.models import home as home_mod
    h = tmp_path / "home"
    monkeypatch.setenv("PANOPTEM_HOME", str(h))
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    monkeypatch.setattr(home_mod, "ZOO", zoo)
    return h


@pytest.fixture
def server(tmp_path):
    """A local HTTP server (127.0.0.1, random port) serving tmp_path/served; counts GETs."""
    served = tmp_path / "served"
    served.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def do_HEAD(self):
            hits.append("HEAD " + self.path)
            super().do_HEAD()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    httpd.timeout = 5
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)


@contextmanager
def output_held_elsewhere(target):
    """``target``'s output lock (``exclusive_output``) held by another thread of this process while
    the block runs, as a napari dock's worker or another run holds it."""
    from panoptem._atomic import exclusive_output
    held, release = threading.Event(), threading.Event()

    def hold():
        with exclusive_output(target):
            held.set()
            release.wait(30)
    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(30)
        yield
    finally:
        release.set()
        t.join(30)


@pytest.fixture
def terminal_ctrl_c():
    """SIGINT as in a terminal's foreground: Python's KeyboardInterrupt handler (a suite started
    in the background of a non-interactive shell inherits SIGINT ignored)."""
    import signal
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)
