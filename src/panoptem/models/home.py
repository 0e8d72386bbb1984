"""The model home: where models live and how a name finds its card.

Built-in models are cards (and weights) in the package's ``zoo`` folder. The user's
folder (:func:`user_home`: ``PANOPTEM_HOME``, else the platform's data folder) holds::

    models/<name>/card.yaml      registered models (card + copied weights)
    archived/<name>/             archived user models
    archived.json                names of archived built-in models
    cache/<sha256 or name>/      downloaded weights
    training/<name>/             checkpoints of training and fine-tuning runs
    tmp/                         staging area; every write ends in an atomic rename

This module alone knows that layout (and imports no torch). The registry
(:mod:`.registry`: register, download, package, archive) and the loader
(:mod:`.load`) ask it for paths, cards and names.

>>> DEFAULT_MODEL in card_paths()
True
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .._atomic import write_text
from ..errors import PanoptemError
from .card import ModelCard, load_card

ZOO = Path(__file__).parent / "zoo"
DEFAULT_MODEL = "MitoLite_v1"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


# ---------------------------------------------------------------- places


def user_home() -> Path:
    """panoptem's user folder (``PANOPTEM_HOME`` or the platform's data dir)."""
    env = os.environ.get("PANOPTEM_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs
    return Path(platformdirs.user_data_dir("panoptem"))


def models_dir() -> Path:
    """Folder of the user's registered models, one sub-folder each."""
    return user_home() / "models"


def model_dir(name: str) -> Path:
    """Folder of the registered user model ``name`` (which may not exist)."""
    return models_dir() / name


def archived_dir(name: str) -> Path:
    """Folder of the archived user model ``name`` (which may not exist)."""
    return user_home() / "archived" / name


def cache_dir(key: str) -> Path:
    """Folder for downloaded weights, keyed by their sha256 (or a name)."""
    return user_home() / "cache" / key


def training_dir(name: str) -> Path:
    """Default folder of the checkpoints of a training or fine-tuning run for model ``name``."""
    return user_home() / "training" / name


def builtin_card(name: str) -> Path:
    """Card path of the built-in model ``name`` (which may not exist)."""
    return ZOO / f"{name}.yaml"


@contextmanager
def staging(prefix: str) -> Iterator[Path]:
    """A fresh folder under ``<home>/tmp`` (on the file system of the registry, so a finished
    folder moves into place with one atomic rename); removed on exit. It lies in a folder held
    while in use (:func:`~panoptem._atomic.held_folder`; the lock stays out of what moves into
    place): what killed processes left in ``<home>/tmp`` goes when the next staging starts."""
    from .._atomic import held_folder, remove_abandoned, shared_mode
    tmp = user_home() / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    remove_abandoned(tmp)
    holder = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))
    os.chmod(holder, shared_mode(folder=True))  # mkdtemp makes it private: others could not clear it
    try:
        with held_folder(holder):
            d = holder / "stage"
            d.mkdir()
            yield d
    finally:
        shutil.rmtree(holder, ignore_errors=True)


#: the most a model package may unpack to (the largest weights are a few hundred MB)
MAX_PACKAGE_BYTES = 4 << 30


def unpack(file: Path, stage: Path, what: str) -> list[str]:
    """Extract the zip ``file`` (a ``what``, for messages) into ``stage``: flat (no folders, no
    hidden or parent entries) and size-capped before anything is written; returns the names."""
    import zipfile
    try:
        z = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError):
        raise PanoptemError(f"{file} is not a {what} (not a zip file); export it again.") from None
    with z:
        infos = z.infolist()
        for i in infos:
            m = i.filename
            if "/" in m or "\\" in m or m.startswith(".") or m != Path(m).name:
                raise PanoptemError(f"{file} contains an unexpected entry '{m}' ({what}s are flat); it was refused.")
        size = sum(i.file_size for i in infos)
        if size > min(MAX_PACKAGE_BYTES, 100 * file.stat().st_size + (64 << 20)):  # a zip bomb
            raise PanoptemError(f"{file} unpacks to {size >> 20} MiB, far more than a {what} of its size "
                                f"({file.stat().st_size >> 20} MiB); it was refused.")
        try:
            z.extractall(stage)
        except (zipfile.BadZipFile, OSError) as e:
            raise PanoptemError(f"{file} is damaged ({e}); export it again.") from None
    return [i.filename for i in infos]


def check_outside_store(path: str | Path) -> None:
    """Refuse to write ``path`` inside the model store (built-in models, the
    user's models, archived models, downloads): an export must never replace
    a model's own files."""
    home = user_home()
    p = Path(path).expanduser().absolute()
    target = p.resolve()
    for root in (ZOO, models_dir(), home / "archived", home / "cache"):
        r = Path(root).resolve()
        if target == r or r in target.parents:
            raise PanoptemError(f"Refusing to write {p}: it is inside panoptem's model store ({r}); "
                                "write exports somewhere else.")


def registered_folder(card: ModelCard) -> Path | None:
    """The folder of ``card`` when it was read from a registered user model, else None."""
    if not card.source_dir:
        return None
    src = Path(card.source_dir)
    if src.resolve().parent == models_dir().resolve() and (src / "card.yaml").exists():
        return src
    return None


def sha256_of(path: str | Path) -> str:
    """sha256 of a file, as model cards record it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- names and state


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name (letters, digits, ``_ . -``)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise PanoptemError(f"Model name '{name}' is not allowed; use letters, digits, '_', '.' and '-' only "
                            "(starting with a letter or digit, at most 100 characters).")
    if name.lower().endswith((".yaml", ".yml")):  # --model NAME.yaml reads a card file of that name
        raise PanoptemError(f"Model name '{name}' ends like a card file; leave out the .yaml.")
    return name


def is_builtin(name: str) -> bool:
    """Whether ``name`` is a built-in model (archived or not)."""
    return builtin_card(name).exists()


def is_user_model(name: str) -> bool:
    """Whether ``name`` is a model registered in the user's folder."""
    return (model_dir(name) / "card.yaml").exists()


def check_new_name(name: str, overwrite: bool = False) -> str:
    """``name`` if a new model may take it: valid, not built-in, and not registered
    unless ``overwrite`` (checked before any work is spent on the model)."""
    check_name(name)
    if is_builtin(name):
        raise PanoptemError(f"'{name}' is the name of a built-in model; choose another name.")
    if model_dir(name).exists() and not overwrite:
        raise PanoptemError(f"A model named '{name}' is already registered; choose another name, or "
                            "pass overwrite=True (--overwrite) to replace it.")
    return name


def archived_builtins() -> set[str]:
    """Names of built-in models the user archived (``<home>/archived.json``)."""
    f = user_home() / "archived.json"
    if not f.exists():
        return set()
    try:
        names = json.loads(f.read_text())
    except (OSError, ValueError):
        return set()  # unreadable: show every built-in rather than fail everywhere
    return {str(n) for n in names} if isinstance(names, list) else set()


def change_archived_builtins(add: set[str] = frozenset(), remove: set[str] = frozenset()) -> Path:
    """Add names to and remove names from the archived built-in models, the file read and
    written under a lock (two processes archiving at once both count); returns the file."""
    from .._atomic import waiting_lock
    f = user_home() / "archived.json"
    with waiting_lock(f.parent / ".archived.json.lock"):
        names = (archived_builtins() | set(add)) - set(remove)
        return write_text(f, json.dumps(sorted(names), indent=1) + "\n")


# ---------------------------------------------------------------- finding models


@dataclass
class ModelEntry:
    """One model known to panoptem."""

    name: str
    source: str  # "built-in" or "user"
    card_path: Path
    archived: bool = False


def card_paths() -> dict[str, Path]:
    """Every known model name and its card: built-in first, then the user's
    (archived models are left out)."""
    hidden = archived_builtins()
    found = {p.stem: p for p in sorted(ZOO.glob("*.yaml")) if p.stem not in hidden}
    if models_dir().exists():
        for p in sorted(models_dir().glob("*/card.yaml")):
            found[p.parent.name] = p
    return found


def list_models(include_archived: bool = False) -> list[ModelEntry]:
    """Known models: built-in first, then the user's; archived ones last when asked."""
    out = [ModelEntry(n, "user" if p.parent.parent == models_dir() else "built-in", p)
           for n, p in card_paths().items()]
    if include_archived:
        out += [ModelEntry(n, "built-in", builtin_card(n), archived=True)
                for n in sorted(archived_builtins()) if is_builtin(n)]
        archived = user_home() / "archived"
        if archived.exists():
            out += [ModelEntry(p.parent.name, "user", p, archived=True) for p in sorted(archived.glob("*/card.yaml"))]
    return out


def get_card(name_or_path: str) -> ModelCard:
    """Model card for a registered model name or a card file path."""
    p = Path(name_or_path)
    paths = card_paths()
    if p.suffix in (".yaml", ".yml") and p.exists():
        if name_or_path in paths:  # a model registered before such names were refused
            raise PanoptemError(f"'{name_or_path}' is both a registered model and a card file here; pass the file "
                                f"as ./{name_or_path}, or rename the model.")
        return load_card(p)
    if name_or_path not in paths:
        if name_or_path in archived_builtins() or archived_dir(name_or_path).is_dir():
            raise PanoptemError(f"Model '{name_or_path}' is archived; bring it back with "
                                f"`panoptem model restore {name_or_path}`.")
        raise PanoptemError(f"Unknown model '{name_or_path}'; choose one of {sorted(paths)} "
                            "(see `panoptem model list`) or pass the path of a .yaml card.")
    return load_card(paths[name_or_path])
