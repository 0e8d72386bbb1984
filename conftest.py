"""Settings for the doctests of the package (the suite runs ``--doctest-modules`` on src/panoptem)."""
import importlib.util

import pytest
from _pytest.doctest import DoctestItem

# the plugin's modules import napari; without it (no "napari" extra) their doctests cannot run
collect_ignore_glob = [] if importlib.util.find_spec("napari") else ["src/panoptem/napari/*"]


@pytest.fixture(autouse=True)
def _doctests_in_a_fresh_folder(request, tmp_path, monkeypatch):
    """Examples that write files write them into a temporary folder, with an empty model home."""
    if isinstance(request.node, DoctestItem):
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("PANOPTEM_HOME", str(tmp_path / "home"))
    yield
