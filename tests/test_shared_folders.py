"""A facility's shared folders: what one member made, another can read, resume and replace (as
the umask allows); what one cannot write is refused before the work. Checks that need another
user run in a child process that becomes one (the suite runs as root in CI), or as this user
where it is not root (its own read-only files are then as foreign)."""
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from panoptem.errors import PanoptemError

NOBODY = 65534


def as_another_user(check) -> None:
    """Run ``check()`` as a user other than the owner of what the test made (a forked child that
    becomes ``nobody`` where this is root); its assertion errors fail the test."""
    if os.geteuid() != 0:
        check()
        return
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            check()
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported through the exit code
            os.write(2, f"as another user: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the check failed as another user"


@pytest.fixture
def shared():
    """A folder everyone can write to, outside pytest's private tmp folders."""
    d = Path(tempfile.mkdtemp(prefix="panoptem-shared-"))
    d.chmod(0o777)
    yield d
    import shutil
    for q in [d, *d.rglob("*")]:  # the closed folders a test made, open again to be removed
        if q.is_dir() and not q.is_symlink():
            q.chmod(0o777)
    shutil.rmtree(d, ignore_errors=True)


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_a_lock_another_members_killed_run_left_does_not_keep_this_one_out(shared):
    """Its .NAME.lock (not writable by others) refused every other member's resume or rewrite."""
    from panoptem._atomic import exclusive_output
    lock = shared / ".mito.tif.lock"
    lock.write_text("")
    lock.chmod(0o444)

    def resume():
        with exclusive_output(shared / "mito.tif"):
            pass
    as_another_user(resume)


def test_files_and_staging_folders_follow_the_umask(home):
    """Tables, reports, previews, checkpoints... were 0644 whatever the umask (labels beside them
    followed it), and a staging folder was private: another member's run could not clear it."""
    from panoptem._atomic import FOLDER_LOCK, write_text
    from panoptem.models import home as home_mod
    for mask, want in ((0o002, 0o664), (0o077, 0o600)):
        with umask(mask):
            f = write_text(home / f"t{mask}.csv", "label\n1\n")
        assert stat.S_IMODE(f.stat().st_mode) == want, oct(mask)
    with umask(0o002), home_mod.staging("x-") as stage:
        assert stat.S_IMODE(stage.parent.stat().st_mode) == 0o775
        assert stat.S_IMODE((stage.parent / FOLDER_LOCK).stat().st_mode) == 0o664


def test_a_preview_or_report_into_a_folder_this_user_cannot_write_is_refused_before_the_work(shared):
    """A preview into a folder not writable here was found out after the whole 3D run, whose
    labels stayed behind."""
    from panoptem.reporting._preview import prepare_preview
    closed = shared / "closed"
    closed.mkdir()
    closed.chmod(0o555)

    def check():
        with pytest.raises(PanoptemError, match="No permission to write 'p.png'"):
            prepare_preview(closed / "p.png")
    as_another_user(check)


def test_weights_a_read_only_model_home_holds_are_used_without_writing_beside_them(shared):
    """A site-wide home this user cannot write to: weights whose sha256 marker is missing were
    refused (EACCES writing the marker) although they match the card."""
    from panoptem.models.home import sha256_of
    from panoptem.models.registry import _verified
    cache = shared / "cache"
    cache.mkdir()
    weights = cache / "w.pt"
    weights.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    cache.chmod(0o555)
    expected = sha256_of(weights)
    as_another_user(lambda: None if _verified(weights, expected) else pytest.fail("not verified"))
    assert not (cache / "w.pt.sha256").exists()


def test_a_lock_left_in_a_sticky_folder_is_left_there_by_the_run_that_took_it_over(shared):
    """In a sticky scratch folder (/tmp's mode) only its owner may delete the killed run's lock: the
    run that went past it failed with a raw PermissionError after all its work."""
    from panoptem._atomic import exclusive_output
    shared.chmod(0o1777)
    (shared / ".out.zarr.lock").write_text("")

    def run():
        with exclusive_output(shared / "out.zarr"):
            (shared / "out.zarr").mkdir()
        assert (shared / "out.zarr").is_dir()
    as_another_user(run)


def test_replacing_another_members_output_in_a_sticky_folder_is_refused_before_the_work(shared, monkeypatch):
    """--overwrite of another user's file in a folder with the sticky bit (/tmp, a facility's
    scratch) did all the work, then failed at the final rename."""
    from panoptem._atomic import check_output
    shared.chmod(0o1777)
    theirs = shared / "mito.tif"
    theirs.write_bytes(b"their labels")
    mine = shared / "mine.tif"
    if os.geteuid() != 0:  # without root no file can be another's: this user plays another one
        monkeypatch.setattr(os, "geteuid", lambda: NOBODY)

    def check():
        with pytest.raises(PanoptemError, match="belongs to another user"):
            check_output(theirs, overwrite=True)
        assert check_output(mine, overwrite=True) == mine  # a new name there is fine
    as_another_user(check)
    assert theirs.read_bytes() == b"their labels"
