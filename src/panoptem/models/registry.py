"""The user's model registry: register, download, package, archive.

Where models live (and how names find their cards) is :mod:`.home`'s business; this
module acts on the home through it. Every write ends in an atomic rename.

For example (needs the files)::

    register("MitoNet_v1", "MitoNet_v1.yaml", weights="MitoNet_v1.pth")
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from pathlib import Path

from .._atomic import atomic_path, existing_folder, move_into_place, write_text
from ..errors import PanoptemError
from . import home
from .card import ONNX_ONLY, ModelCard, Weights, load_card
from .home import check_name, is_user_model, sha256_of

URL_SCHEMES = ("http", "https", "file")
PACKAGE_SUFFIX = ".panoptem"


# ---------------------------------------------------------------- helpers


def _is_url(s: str) -> bool:
    return "://" in s


def _check_url(url: str) -> str:
    try:
        scheme = urllib.parse.urlparse(url).scheme.lower()
    except ValueError as e:  # e.g. an unclosed [ of an IPv6 host
        raise PanoptemError(f"Weights URL '{url}' is malformed ({e}); check it.") from None
    if scheme not in URL_SCHEMES:
        raise PanoptemError(f"Weights URL '{url}' must start with http://, https:// or file://.")
    if scheme == "file" and not _file_url_path(url).is_file():
        raise PanoptemError(f"Weights URL '{url}' points to no file; check the path.")
    return url


def _file_url_path(url: str) -> Path:
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))


def _registry_lock():
    """The lock under which models' folders are put in place, archived and restored: a check and
    its rename are one step for every panoptem process sharing the home."""
    from .._atomic import waiting_lock
    return waiting_lock(home.user_home() / ".registry.lock")


def _move_dir_into_place(src: Path, dest: Path, replace: bool = False) -> None:
    """Rename folder ``src`` to ``dest``; with ``replace`` an existing ``dest``
    is first renamed aside (into the staging area), then deleted once the new one is in place."""
    with _registry_lock():
        if dest.exists() and not replace:
            raise PanoptemError(f"A model named '{dest.name}' was registered meanwhile (by another run?); choose "
                                "another name, or pass overwrite=True (--overwrite) to replace it.")
        move_into_place(src, dest, aside=src.parent / (src.name + ".old"))


# ---------------------------------------------------------------- register


def _stage_model(card: ModelCard, weights: str, stage: Path, allow_unverified: bool = False) -> ModelCard:
    """Copy local weights (and the card's export files) into ``stage`` and return the
    card to write there, with bare file names and the weights' sha256.

    ``weights`` is the user's own choice (a path or URL); file references inside
    the card itself must be files beside it (see :func:`~.card.resolve_reference`).
    A remote file is recorded with its sha256: from the card, or, with
    ``allow_unverified``, from downloading it now.
    """
    card = card.model_copy(deep=True)
    if _is_url(weights) and urllib.parse.urlparse(weights).scheme.lower() == "file":
        weights = str(_file_url_path(_check_url(weights)))  # a local file after all: copy it in
    if _is_url(weights):
        url = _check_url(weights)
        sha = card.weights.sha256
        if not sha:
            if not allow_unverified:
                raise PanoptemError(f"The card gives no sha256 for {url}, so the download could not be checked; "
                                    "add `sha256:` under `weights:` in the card, download the file and pass it "
                                    "with --weights FILE, or pass --allow-unverified to download it now and "
                                    "record its sha256.")
            probe = card.model_copy(deep=True)
            probe.weights = Weights(file=url, sha256=None, format=card.weights.format)
            got = fetch_weights(probe, allow_unverified=True)
            sha = sha256_of(got)
            kept = home.cache_dir(sha) / got.name  # where later loads look for it
            kept.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, kept)
            shutil.rmtree(got.parent, ignore_errors=True)
        card.weights = Weights(file=url, sha256=sha, format=card.weights.format)
    else:
        src = Path(weights).expanduser()
        if not src.is_file():
            raise PanoptemError(f"Weights file {src} does not exist; check the path or pass --weights.")
        fname = src.name if src.name != "card.yaml" else "weights" + src.suffix
        dst = stage / fname
        shutil.copyfile(src, dst)
        digest = sha256_of(dst)
        if card.weights.sha256 and card.weights.sha256.lower() != digest:
            raise PanoptemError(f"Weights file {src} does not match the sha256 in its model card (card "
                                f"{card.weights.sha256[:12]}..., file {digest[:12]}...); use the weights the card "
                                "describes, or remove sha256 from the card if you trust this file.")
        card.weights = Weights(file=fname, sha256=digest, format=card.weights.format)
        if card.weights.format == "state_dict" and not card.architecture:
            card.architecture = _architecture_in(dst)
    if card.weights.format == "state_dict" and card.architecture:
        from .architecture import architecture_config
        card.architecture = architecture_config(card.architecture)  # every setting, not only those given
    exports = []
    for w in card.exports:
        path = card.weights_path(w)
        if _is_url(path):
            if not w.sha256:
                warnings.warn(f"export {path} of the card has no sha256; it was left out", stacklevel=3)
                continue
            exports.append(w)
        elif Path(path).is_file():
            fname = Path(path).name if Path(path).name != "card.yaml" else "export" + Path(path).suffix
            if not (stage / fname).exists():
                shutil.copyfile(path, stage / fname)
            digest = sha256_of(stage / fname)
            if w.sha256 and w.sha256.lower() != digest:
                raise PanoptemError(f"Export file {path} does not match the sha256 in its model card; "
                                    "re-export it or remove it from the card.")
            exports.append(Weights(file=fname, sha256=digest, format=w.format))
        else:
            warnings.warn(f"export {path} of the card does not exist; it was left out", stacklevel=3)
    card.exports = exports
    card.source_dir = None
    return card


def _architecture_in(weights: Path) -> dict:
    """The ``architecture`` saved with panoptem state-dict weights ({} when there is none or
    the file cannot be read: loading the model reports that)."""
    import torch
    try:
        blob = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file: left to load_model to explain
        return {}
    arch = blob.get("architecture") if isinstance(blob, dict) else None
    return dict(arch) if isinstance(arch, dict) else {}


def register(name: str, card_path: str | Path, weights: str | None = None, overwrite: bool = False,
             allow_unverified: bool = False) -> Path:
    """Register a model under ``name`` in the user's folder.

    Parameters
    ----------
    name : new model name (letters, digits, ``_ . -``).
    card_path : panoptem or empanada YAML card.
    weights : weights file or http(s)/file URL; default: the card's own.
        Local files are copied (their sha256 is checked against the card's, or
        recorded if the card has none); URLs are recorded with the card's
        sha256 and downloaded on first use.
    overwrite : replace a user model of the same name.
    allow_unverified : a URL whose card gives no sha256 is downloaded now and
        its sha256 recorded (without it such a URL is refused).

    Returns
    -------
    Path of the registered card (``<home>/models/<name>/card.yaml``).
    """
    home.check_new_name(name, overwrite)
    card = load_card(card_path)
    if card.weights.format == "onnx":
        raise PanoptemError(ONNX_ONLY)
    dest = home.model_dir(name)
    src = weights if weights is not None else card.weights_path()
    if not _is_url(src) and weights is None and not Path(src).is_file():
        raise PanoptemError(f"Weights file {src} named by card {card_path} does not exist; pass --weights "
                            "with the file's path or URL.")
    with home.staging(f"register-{name}-") as stage:
        new = _stage_model(card, src, stage, allow_unverified=allow_unverified)
        new.name = name
        (stage / "card.yaml").write_text(new.to_yaml())
        load_card(stage / "card.yaml")  # what we wrote must read back
        _move_dir_into_place(stage, dest, replace=overwrite)
    return dest / "card.yaml"


# ---------------------------------------------------------------- download


def _cache_dir(card: ModelCard, url: str) -> Path:
    # the card's sha256 is 64 hex digits (checked when it was read); nothing else of a card names a folder
    key = card.weights.sha256 or f"unverified-{hashlib.sha256(url.encode()).hexdigest()[:16]}"
    return home.cache_dir(key)


def _file_name(url: str) -> str:
    """A safe local name for the file a URL downloads (its last part, or ``weights.bin``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name)[-100:]
    return name if name.strip(".") else "weights.bin"


def _verified(path: Path, expected: str | None) -> bool:
    """Whether ``path`` matches ``expected`` (remembered by size and mtime so a
    large cached file is hashed once, not on every load)."""
    if not expected:
        return True
    marker = path.with_name(path.name + ".sha256")
    st = path.stat()
    stamp = f"{expected} {st.st_size} {st.st_mtime_ns}"
    if marker.exists() and marker.read_text().strip() == stamp:
        return True
    if sha256_of(path) != expected.lower():
        return False
    try:
        write_text(marker, stamp + "\n")
    except OSError as e:  # a home this user cannot write to (a site-wide one): hashed again next time
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    return True


def fetch_weights(card: ModelCard, timeout: float = 60.0, allow_unverified: bool = False) -> Path:
    """Local path of a card's weights, downloading a URL once into
    ``<home>/cache/<sha256 or name>/`` and checking the card's sha256.

    A cached file that no longer matches is downloaded again; a download that
    does not match is deleted and raises :class:`PanoptemError`. A URL without
    a sha256 is refused unless ``allow_unverified`` (used by :func:`register`,
    which then records the hash).
    """
    url = card.weights_path()
    if not _is_url(url):
        return Path(url)
    _check_url(url)
    expected = (card.weights.sha256 or "").lower() or None
    if expected is None and not allow_unverified:
        raise PanoptemError(f"Model '{card.name}' downloads {url} but its card gives no sha256 to check it "
                            "with; register it with `panoptem model register NAME --card CARD "
                            "--allow-unverified` (which records the hash), or add `sha256:` to the card.")
    folder = _cache_dir(card, url)
    fname = _file_name(url)
    dest = folder / fname
    if dest.exists() and _verified(dest, expected):
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    try:
        with atomic_path(dest, suffix=".part") as tmp, open(tmp, "wb") as f, \
                urllib.request.urlopen(url, timeout=timeout) as r:
            from tqdm import tqdm
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {fname}", disable=None,
                      leave=False) as bar:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
            f.flush()
            digest = h.hexdigest()
            if expected and digest != expected:
                raise PanoptemError(f"Downloaded {url} does not match the sha256 in model card '{card.name}' "
                                    f"(card {expected[:12]}..., file {digest[:12]}...); the file was deleted: "
                                    "check the URL or the card.")
        if expected:
            _verified(dest, expected)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise PanoptemError(f"Could not download {url} ({e}); check the URL and your connection, or download "
                            "the file yourself and register it with --weights FILE.") from None
    return dest


# ---------------------------------------------------------------- packages


def _resolve(card: ModelCard, w: Weights) -> Path:
    path = card.weights_path(w)
    if _is_url(path):
        if w is card.weights:
            return fetch_weights(card)
        raise ValueError(path)
    if not Path(path).is_file():
        raise PanoptemError(f"File {path} of model '{card.name}' is missing; re-register the model.")
    return Path(path)


def _verified_sha(card: ModelCard, w: Weights, path: Path) -> str:
    """sha256 of ``path``, refusing a file that no longer matches its card."""
    digest = sha256_of(path)
    if w.sha256 and w.sha256.lower() != digest:
        raise PanoptemError(f"File {path} of model '{card.name}' does not match the sha256 in its card (it was "
                            "changed after registration); nothing was exported: re-register the model.")
    return digest


def export_package(name: str, out_file: str | Path) -> Path:
    """Write model ``name`` (registered name or card path) as one ``.panoptem``
    file: a zip holding ``card.yaml``, the weights and local export files.
    Remote weights are downloaded first. Never overwrites ``out_file``."""
    card = home.get_card(name)
    out = Path(out_file)
    if not out.suffix:
        out = out.with_suffix(PACKAGE_SUFFIX)
    if out.exists():
        raise PanoptemError(f"{out} already exists; choose another output file or delete it.")
    existing_folder(out.parent, "the package")
    home.check_outside_store(out)
    pack = card.model_copy(deep=True)
    files: dict[str, Path] = {}
    wpath = _resolve(card, card.weights)
    pack.weights = Weights(file=wpath.name, sha256=_verified_sha(card, card.weights, wpath),
                           format=card.weights.format)
    files[wpath.name] = wpath
    exports = []
    for w in card.exports:
        try:
            p = _resolve(card, w)
        except (ValueError, PanoptemError):  # remote or missing extras stay as they are in the card
            exports.append(w)
            continue
        if p.name not in files:
            files[p.name] = p
            exports.append(Weights(file=p.name, sha256=_verified_sha(card, w, p), format=w.format))
    pack.exports = exports
    with atomic_path(out, replace=False) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("card.yaml", pack.to_yaml())
        for arc, p in files.items():
            z.write(p, arc)
    return out


def import_package(file: str | Path, name: str | None = None) -> str:
    """Register the model in a ``.panoptem`` package, or in a bioimage.io model package
    (a zip with ``rdf.yaml``: :func:`~.bioimageio.import_bioimageio`); returns its name.

    ``name`` defaults to the name in the package's card; an existing name is
    refused (pass another ``name``)."""
    f = Path(file)
    if not f.is_file():
        raise PanoptemError(f"Model package {f} is a folder; give the package file itself." if f.is_dir() else
                            f"Model package {f} does not exist; check the path.")
    from .bioimageio import import_bioimageio, is_bioimageio_package
    if is_bioimageio_package(f):
        return import_bioimageio(f, name=name)
    with home.staging("import-") as stage:
        if "card.yaml" not in home.unpack(f, stage, "panoptem model package"):
            raise PanoptemError(f"{f} holds no card.yaml, so it is not a panoptem model package.")
        card = load_card(stage / "card.yaml")
        new_name = check_name(name or card.name)
        if new_name in home.card_paths() or home.model_dir(new_name).exists():
            raise PanoptemError(f"A model named '{new_name}' already exists; import it under another name "
                                "with --name NEW_NAME.")
        register(new_name, stage / "card.yaml")
    return new_name


# ---------------------------------------------------------------- archive


def archive(name: str) -> Path:
    """Hide model ``name`` from the list of models.

    A user model moves to the archive folder; a built-in one is recorded in
    the list of archived built-in models (the package is never modified).
    Returns where the model now is. Undo with :func:`restore`.
    """
    check_name(name)
    with _registry_lock():
        if is_user_model(name):
            dest = home.archived_dir(name)
            if dest.exists():
                raise PanoptemError(f"An archived model '{name}' already exists in {dest}; restore it or delete "
                                    "that folder first.")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(home.model_dir(name), dest)
            return dest
    hidden = home.archived_builtins()
    if home.is_builtin(name):
        if name in hidden:
            raise PanoptemError(f"Model '{name}' is already archived; `panoptem model restore {name}` brings it back.")
        return home.change_archived_builtins(add={name})
    if name in hidden or home.archived_dir(name).exists():
        raise PanoptemError(f"Model '{name}' is already archived; `panoptem model restore {name}` brings it back.")
    raise PanoptemError(f"Unknown model '{name}'; `panoptem model list` shows the models you can archive.")


def restore(name: str) -> Path:
    """Bring an archived model back; returns its card path."""
    check_name(name)
    src = home.archived_dir(name)
    with _registry_lock():
        hidden = home.archived_builtins()
        if src.exists():
            dest = home.model_dir(name)
            if dest.exists() or (home.is_builtin(name) and name not in hidden):
                raise PanoptemError(f"A model named '{name}' exists again; archive or rename it before restoring.")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            return dest / "card.yaml"
    if name in hidden:
        home.change_archived_builtins(remove={name})
        return home.builtin_card(name)
    raise PanoptemError(f"Model '{name}' is not archived; `panoptem model list --all` shows archived models.")
