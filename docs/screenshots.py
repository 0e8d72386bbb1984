"""Refresh the README's napari pictures: docs/screenshot.png and docs/napari/<module>.png.

Each picture is the napari window with one panoptem dock, after that dock did its job on
the bundled sample with the bundled model. Needs a display (e.g. ``xvfb-run -s "-screen 0
1920x1200x24" python docs/screenshots.py``); models trained for the pictures go to a
temporary PANOPTEM_HOME, so the user's registry is left alone.

    python docs/screenshots.py [--out docs]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def settle(app, seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def wait(app, widget, timeout: float = 600) -> None:
    end = time.perf_counter() + timeout
    while widget.running:
        if time.perf_counter() > end:
            raise TimeoutError(f"{type(widget).__name__} did not finish: {widget.status.value}")
        app.processEvents()
        time.sleep(0.02)
    settle(app)
    if widget.status.value.startswith("Error"):
        raise RuntimeError(widget.status.value)


def save(viewer, app, path: Path) -> None:
    """A full-window screenshot, stored as a 256-colour PNG (a fifth of the size)."""
    from PIL import Image
    settle(app, 0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(shot[..., :3]).quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent), help="docs folder")
    out = Path(ap.parse_args().out)
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        sys.exit("no display: run under xvfb-run (see the docstring)")
    os.environ["PANOPTEM_HOME"] = tempfile.mkdtemp(prefix="panoptem-shots-")
    if "QT_API" not in os.environ:  # a Qt 6 binding when one is installed (as the napari extra does)
        import importlib.util
        for api, mod in (("pyqt6", "PyQt6"), ("pyside6", "PySide6")):
            if importlib.util.find_spec(mod):
                os.environ["QT_API"] = api
                break

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from panoptem.models.home import DEFAULT_MODEL
    from panoptem.napari._export import ExportWidget
    from panoptem.napari._finetune import FinetuneWidget
    from panoptem.napari._inference import Inference2DWidget, Inference3DWidget
    from panoptem.napari._layers import camera_of
    from panoptem.napari._measure import MeasureWidget
    from panoptem.napari._models import ModelsWidget
    from panoptem.napari._patches import PatchesWidget
    from panoptem.napari._proofread import ProofreadWidget
    from panoptem.napari._train import TrainWidget

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.window.resize(1400, 1000)
    viewer.open_sample("panoptem", "sample")
    sample = viewer.layers["panoptem sample"]
    docks = []

    def only(cls, **kw):
        for d in docks:
            viewer.window.remove_dock_widget(d)
        docks.clear()
        w = cls(viewer)
        docks.append(viewer.window.add_dock_widget(w, name=cls.help_title, **kw))
        settle(app)
        return w

    def click(w, key="run"):
        (w.buttons[key] if key != "run" else w.run_button).native.click()
        wait(app, w)

    # 3D inference: the main picture (3D view) and the dock with the result on a plane
    w = only(Inference3DWidget)
    w.image.value, w.model.value, w.device.value = sample, DEFAULT_MODEL, "cpu"
    click(w)
    mito = viewer.layers["panoptem sample-mitochondria-prediction"]
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    camera_of(viewer).angles = (-15, 30, 70)
    save(viewer, app, out / "screenshot.png")
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    viewer.dims.set_point(0, 15 * sample.scale[0])
    bar = w.native.scroll_area.verticalScrollBar()
    bar.setValue(bar.maximum())  # the dock's end: output, run, progress and the status line
    save(viewer, app, out / "napari" / "inference_3d.png")

    # 2D inference on the shown plane
    mito.visible = False
    w = only(Inference2DWidget)
    w.image.value, w.model.value, w.device.value = sample, DEFAULT_MODEL, "cpu"
    click(w)
    save(viewer, app, out / "napari" / "inference_2d.png")
    viewer.layers.remove("panoptem sample-2D-prediction")
    mito.visible = True

    # proofreading: merge two objects marked by points on the shown plane
    w = only(ProofreadWidget)
    w.labels_layer.value = mito
    w.new_points_layer()
    plane = np.asarray(mito.data[15])
    ids, counts = np.unique(plane[plane > 0], return_counts=True)
    two = ids[np.argsort(counts)[-2:]]
    pts = [np.argwhere(plane == i).mean(axis=0) for i in two]
    w.points.value.data = [[15, *p] for p in pts]
    click(w, "merge")
    save(viewer, app, out / "napari" / "proofread.png")
    click(w, "undo")
    viewer.layers.remove("proofread points")

    # measurements
    w = only(MeasureWidget)
    w.labels_layer.value, w.image.value = mito, sample
    click(w)
    save(viewer, app, out / "napari" / "measure.png")

    # models: the card of the bundled model
    w = only(ModelsWidget)
    w.model.value = DEFAULT_MODEL
    settle(app)
    save(viewer, app, out / "napari" / "models.png")

    # patches, paired with the prediction (as when correcting a model's output)
    w = only(PatchesWidget)
    w.image.value, w.labels_layer.value = sample, mito
    w.n.value, w.patch_size.value = 6, 128
    click(w, "pick")
    data = Path(tempfile.mkdtemp(prefix="panoptem-shots-data-"))
    w.folder.value = data / "patches"
    click(w, "store")
    mito.visible = sample.visible = False
    viewer.dims.set_point(0, 2)  # a patch with labels (the paired prediction)
    cam = camera_of(viewer)
    cam.center, cam.zoom = (64, 64), 5.5  # onto the patches (the hidden sample is larger in nm)
    save(viewer, app, out / "napari" / "patches.png")
    for name in ("panoptem sample-patches", "panoptem sample-patches-labels"):
        viewer.layers.remove(name)
    mito.visible = sample.visible = True
    viewer.reset_view()

    # fine-tuning and training on those patches (a few steps: the pictures show the docks)
    w = only(FinetuneWidget)
    w.model.value, w.device.value = DEFAULT_MODEL, "cpu"
    w.train_dir.value = data / "patches"
    w.name.value, w.iterations.value, w.patch_size.value = "MitoLite_sample", 10, 128
    click(w)
    save(viewer, app, out / "napari" / "finetune.png")
    w = only(TrainWidget)
    w.train_dir.value = data / "patches"
    w.name.value, w.size.value, w.iterations.value, w.patch_size.value = "SmallNet", "small", 10, 128
    w.device.value = "cpu"
    click(w)
    save(viewer, app, out / "napari" / "train.png")

    # export
    w = only(ExportWidget)
    w.labels_layer.value, w.image.value = mito, sample
    w.folder.value, w.name.value, w.meshes.value = data, "sample_mito", True
    click(w)
    save(viewer, app, out / "napari" / "export.png")
    viewer.close()


if __name__ == "__main__":
    main()
