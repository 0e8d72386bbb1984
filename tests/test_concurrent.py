"""Two runs at once: an output neither replaces without being told, one model registry, one
dataset folder, one lock for every path to an output."""
import threading
import time

import numpy as np
import pytest

from panoptem._atomic import atomic_path, exclusive_output, waiting_lock
from panoptem.errors import PanoptemError


def _blocked_until_released(lock_path, work):
    """Run ``work`` in a thread while ``lock_path`` is held here: whether it was still waiting
    after half a second, and what it returned (or raised) once the lock was released."""
    out = {}

    def run():
        try:
            out["value"] = work()
        except Exception as e:  # noqa: BLE001 - handed to the test
            out["error"] = e
    with waiting_lock(lock_path):
        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.5)
        waited = t.is_alive()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return waited, out.get("value")


def test_a_file_another_run_wrote_meanwhile_is_kept_and_this_run_refused(tmp_path):
    """Checked before its work, written after: a table (measure), report, preview or package
    that appeared at the output meanwhile was replaced without --overwrite."""
    from panoptem._table import write_table
    target = tmp_path / "table.csv"
    with pytest.raises(PanoptemError, match="appeared while this run was writing"):
        with atomic_path(target, replace=False) as tmp:
            tmp.write_text("mine")
            target.write_text("theirs")
    assert target.read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    with pytest.raises(PanoptemError, match="already exists"):
        write_table({"label": np.array([1])}, target, overwrite=False)
    write_table({"label": np.array([1])}, tmp_path / "new.csv", overwrite=False)
    assert (tmp_path / "new.csv").read_text().splitlines() == ["label", "1"]


def test_registering_archiving_and_restoring_take_turns_in_the_registry(home, tiny_card):
    """Check and rename are one step under the registry's lock: two registrations of one name at
    once both succeeded (the later replacing the other) or one failed with a raw OSError."""
    from panoptem.models import registry
    lock = home / ".registry.lock"
    waited, card = _blocked_until_released(lock, lambda: registry.register("m1", tiny_card))
    assert waited and card == home / "models" / "m1" / "card.yaml"
    with pytest.raises(PanoptemError, match="already registered"):
        registry.register("m1", tiny_card)
    waited, where = _blocked_until_released(lock, lambda: registry.archive("m1"))
    assert waited and where == home / "archived" / "m1"
    waited, _ = _blocked_until_released(lock, lambda: registry.restore("m1"))
    assert waited and (home / "models" / "m1" / "card.yaml").exists()


def test_stores_into_one_dataset_folder_take_turns(tmp_path):
    """Two `patches` runs into one folder picked the same free names and overwrote each other's
    files and dataset.json entries."""
    from panoptem.training.dataset import load_dataset, store_dataset
    from test_patches import disc_patches
    store_dataset(disc_patches(1), tmp_path)
    waited, names = _blocked_until_released(tmp_path, lambda: store_dataset(disc_patches(2), tmp_path))
    assert waited and names == ["disc_y0_x0_2", "disc_y0_x4"]
    assert load_dataset(tmp_path)[2]["names"] == ["disc_y0_x0", "disc_y0_x0_2", "disc_y0_x4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json", "images", "masks"]


def test_one_output_reached_by_two_paths_has_one_lock(tmp_path):
    """`train-volume -o runs/m1` and `-o runs/latest` (a link to m1) both wrote the same folder."""
    (tmp_path / "m1").mkdir()
    (tmp_path / "latest").symlink_to(tmp_path / "m1")
    from conftest import output_held_elsewhere
    with output_held_elsewhere(tmp_path / "m1"):
        with pytest.raises(PanoptemError, match="Another panoptem run is writing"):
            with exclusive_output(tmp_path / "latest"):
                pass
    with exclusive_output(tmp_path / "latest"):  # free again
        pass


def test_a_preview_another_run_wrote_meanwhile_is_kept(tmp_path, monkeypatch):
    """segment2d / segment3d checked their --preview before the work and drew it over whatever
    was there after it."""
    import panoptem
    from panoptem.inference import segment2d
    from _models import dark_blob_model
    img = np.full((64, 64), 200, np.uint8)
    img[20:40, 20:40] = 40
    theirs = tmp_path / "p.png"
    check = segment2d.check_classes

    def meanwhile(*a):
        theirs.write_bytes(b"theirs")
        return check(*a)
    monkeypatch.setattr(segment2d, "check_classes", meanwhile)
    with pytest.raises(PanoptemError, match="already exists"):
        panoptem.segment_2d(img, dark_blob_model(), preview=theirs)
    assert theirs.read_bytes() == b"theirs"
    theirs3 = tmp_path / "p3.png"
    with pytest.raises(PanoptemError, match="already exists"):
        panoptem.segment_3d(np.stack([img] * 4), dark_blob_model(), preview=theirs3, min_size=0,
                            callback=lambda *a: theirs3.write_bytes(b"theirs") and None)
    assert theirs3.read_bytes() == b"theirs"


def test_an_output_that_is_a_link_is_replaced_not_written_through(tmp_path):
    """The lock of a link to a file is the link's own: a dangling link's missing folders were
    made where it pointed."""
    from panoptem.io import write_labels
    link = tmp_path / "out.tif"
    link.symlink_to(tmp_path / "gone" / "run5" / "out.tif")
    write_labels(link, np.ones((4, 4), np.uint8), overwrite=True)
    assert not link.is_symlink() and link.is_file() and not (tmp_path / "gone").exists()
