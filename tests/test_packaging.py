"""Package metadata the napari hub lists the plugin with, and the Qt binding the napari extra installs."""
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_napari_extra_installs_a_qt6_binding_and_hub_metadata_is_there():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = " ".join(meta["optional-dependencies"]["napari"])
    assert "PyQt6" in extra or "PySide6" in extra
    assert "PyQt5" not in extra and "PySide2" not in extra
    assert "Framework :: napari" in meta["classifiers"]
    assert meta["description"] and meta["readme"] == "README.md" and "napari" in meta["keywords"]
    manifest = yaml.safe_load((ROOT / "src" / "panoptem" / "napari" / "napari.yaml").read_text())
    assert manifest["visibility"] == "public" and "Segmentation" in manifest["categories"]


def test_readme_pictures_exist():
    import re
    text = (ROOT / "README.md").read_text()
    pics = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "docs/screenshot.png" in pics and len(pics) >= 10
    missing = [p for p in pics if not (ROOT / p).is_file()]
    assert missing == []
