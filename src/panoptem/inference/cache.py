"""On-disk cache of network outputs per plane (Zarr), with a per-slice
completion mark and content hash: an interrupted 3D run resumes where it
stopped, and a finished one can be re-decoded with other thresholds without
the network.

Layout: ``<cache>/<plane>.zarr`` (a chunk holds whole batches of planes, see
:func:`chunk_planes`) with arrays ``probability`` (N, C, H, W)
uint8 (probability x 255), ``heatmap`` (N, 1, h, w) and ``offsets``
(N, 2, h, w) float16, ``hash`` (N, 16) uint8 (SHA-256 of the input plane, cut to 16 bytes),
``done`` (N,) bool, and attrs describing what was run. The probabilities are compressed
(zstd, level 1: mostly 0 and 255, they shrink about 10 x); the float16 heatmap and offsets are
stored as they are (they hardly compress, and compressing them cost more than writing them).
The completion marks are written at most every :data:`MARK_EVERY_S` seconds and when the run
stops (:meth:`OutputCache.flush`): a run killed outright loses at most that much work. A cache made with a
different model, downsampling or input shape is refused (or reset); a slice
whose input plane changed since it was cached is computed again.

Every run decodes outputs at the cache's precision (:func:`at_cache_precision`),
cached or not, so a resumed run gives the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import PanoptemError
from .predict import ModelOutput

HASH_BYTES = 16
#: the completion marks are stored at most this often (each store rewrites them whole)
MARK_EVERY_S = 2.0


def byte_steps(p: np.ndarray) -> np.ndarray:
    """``p`` x 255 rounded to the nearest integer, as a new float32 array: a probability
    in the cache's steps of 1/255."""
    q = np.multiply(p, np.float32(255), dtype=np.float32)
    np.rint(q, out=q)  # what np.round does, without another array
    return q


def _stored_steps(p: np.ndarray) -> np.ndarray:
    """:func:`byte_steps` clipped to 0..255 (so that a value just past 1 cannot wrap to 0):
    the values the cache's bytes hold, as float32."""
    q = byte_steps(p)
    np.clip(q, 0, 255, out=q)
    return q


def probability_bytes(p: np.ndarray) -> np.ndarray:
    """A probability as the cache stores it: uint8, x 255, rounded and clipped."""
    return _stored_steps(p).astype(np.uint8)


def _quantize(out: ModelOutput) -> tuple[ModelOutput, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``out`` at cache precision (float32) and as the cache stores it (uint8 probabilities,
    float16 heatmap and offsets), from one rounding: the bytes are not read back."""
    q = _stored_steps(out.semantic_probability)
    stored = q.astype(np.uint8), out.heatmap.astype(np.float16), out.offsets.astype(np.float16)
    np.divide(q, np.float32(255), out=q)
    return ModelOutput(q, stored[1].astype(np.float32), stored[2].astype(np.float32)), stored


def _dequantize(prob: np.ndarray, hm: np.ndarray, off: np.ndarray) -> ModelOutput:
    p = prob.astype(np.float32)
    np.divide(p, np.float32(255.0), out=p)
    return ModelOutput(p, hm.astype(np.float32), off.astype(np.float32))


def at_cache_precision(out: ModelOutput) -> ModelOutput:
    """``out`` rounded exactly as the cache stores it (uint8 probabilities,
    float16 heatmap and offsets) and read back as float32. The probabilities stay in one
    float32 array: rounded multiples of 1/255 are what the bytes would give back."""
    p = byte_steps(out.semantic_probability)
    np.divide(p, np.float32(255), out=p)
    return ModelOutput(p, out.heatmap.astype(np.float16).astype(np.float32),
                       out.offsets.astype(np.float16).astype(np.float32))


def plane_hashes(planes: np.ndarray) -> np.ndarray:
    """(N, 16) digests of N planes (their bytes, shape and dtype): SHA-256, which CPUs with
    SHA instructions hash about 3 x faster than BLAKE2b, cut to 16 bytes."""
    planes = np.ascontiguousarray(planes)
    out = np.zeros((len(planes), HASH_BYTES), np.uint8)
    for i, p in enumerate(planes):
        h = hashlib.sha256(p.data)
        h.update(f"{p.shape}{p.dtype.str}".encode())
        out[i] = np.frombuffer(h.digest()[:HASH_BYTES], np.uint8)
    return out


#: a cache chunk holds whole batches of planes, at least this many probability bytes
CHUNK_BYTES = 4 << 20


def chunk_planes(batch: int, n: int, plane_bytes: int) -> int:
    """Planes per cache chunk: whole batches of ``batch`` planes, enough for :data:`CHUNK_BYTES`
    of ``plane_bytes`` each (each store of a chunk costs about a millisecond besides its
    bytes), at most the stack's ``n``."""
    batch = max(1, int(batch))
    per = max(1, -(-CHUNK_BYTES // max(1, batch * int(plane_bytes))))
    return max(1, min(batch * per, int(n)))


#: what a user calls each part of a cache's key
KEY_WORDS = {"model": "model", "weights": "model", "intensity": "input", "shape": "input", "dtype": "input",
             "input": "input", "plane": "plane", "downsampling": "downsampling or pixel size",
             "tile_size": "tile size", "tta": "tta", "stack_step": "pixel size", "precision": "precision",
             "block": "block shape", "halo": "halo", "neighbour_steps": "pixel size",
             "stack_steps": "pixel size", "exact_context": "block context", "skip_empty": "skip empty blocks",
             "invert": "invert contrast"}


def differing(stored: dict, key: dict) -> str:
    """What differs between the run that made a cache (its ``stored`` key) and this run's
    ``key``, in words.

    >>> differing({"model": "a", "shape": [1]}, {"model": "a", "shape": [2], "tta": True})
    'input and tta differ'
    >>> differing({"tile_size": 0}, {"tile_size": 512})
    'tile size differs'
    """
    old, new = json.loads(json.dumps(stored)), json.loads(json.dumps(key))
    parts = sorted({KEY_WORDS.get(k, k) for k in set(old) | set(new) if old.get(k) != new.get(k)})
    if len(parts) == 1:
        return f"{parts[0]} differs"
    return f"{', '.join(parts[:-1])} and {parts[-1]} differ"


#: the stacks a cache folder may hold, each as STACK.zarr (and, for blockwise runs, STACK.json
#: and STACK.done beside it)
CACHE_STACKS = ("xy", "xz", "yz", "fused")


def check_cache_dir(cache_dir, outputs=(), inputs=()) -> None:
    """One error, before any work, where a cache folder (``--cache-dir``) would write over what
    is not its own: it is a file or lies in one; it is, holds or lies inside an output; one of
    its stores (``xy.zarr``...) or their records is an output or an input, or holds one, or is
    not a cache; it is or lies inside an input. (A cache folder may hold inputs and outputs of
    other names.)"""
    from .._atomic import check_outside_inputs, work_folder
    work_folder(cache_dir, "the network outputs (--cache-dir)", create=False)
    check_outside_inputs(cache_dir, inputs, "the network outputs (--cache-dir)")
    c = Path(cache_dir).expanduser().resolve()
    own = [c / f"{v}{ext}" for v in CACHE_STACKS for ext in (".zarr", ".json", ".done")]

    def clash(q: Path) -> bool:
        return any(q == f or f in q.parents for f in own)

    for q in outputs:
        if q is None:
            continue
        q = Path(q).expanduser().resolve()
        if c == q or q in c.parents or clash(q):
            raise PanoptemError(f"--cache-dir '{cache_dir}' and the output '{q}' overlap (one is, or lies inside, "
                                "the other, or its stores); give the cache a folder of its own.")
    for q in inputs or ():
        if q is None or str(q) == "":
            continue
        q = Path(q).expanduser().resolve()
        if clash(q):
            raise PanoptemError(f"--cache-dir '{cache_dir}' and the input '{q}' overlap (the cache would write "
                                "into it); give the cache a folder of its own (inputs are never written to).")
    for v in CACHE_STACKS:
        check_store(c / f"{v}.zarr")


_CACHE_ARRAYS = {"probability", "heatmap", "offsets", "hash", "done"}


def cache_kind(path: Path) -> str | None:
    """What the store ``path`` (``STACK.zarr`` in a cache folder) is: None (missing or empty),
    "whole" (:class:`OutputCache`'s, of a whole-volume run, or what a run killed while making it
    left), "blockwise" (a blockwise run's: its record ``STACK.json`` beside it) or "foreign"."""
    if not path.exists():
        return None
    if not path.is_dir():
        return "foreign"
    if not any(path.iterdir()):
        return None
    import zarr
    try:
        g = zarr.open_group(str(path), mode="r")
        names, attrs = set(g.keys()), set(g.attrs.keys())
    except Exception:  # noqa: BLE001 - not a zarr group: not ours
        return "foreign"
    if not names <= _CACHE_ARRAYS or not attrs <= {"key"}:
        return "foreign"
    if attrs or names & {"hash", "done"}:
        return "whole"
    return "blockwise" if path.with_suffix(".json").exists() else "whole"


def check_store(path: Path, engine: str | None = None) -> None:
    """One error where the store ``path`` is not panoptem's network outputs, or (``engine``
    "whole" or "blockwise") is the other engine's."""
    kind = cache_kind(path)
    if kind == "foreign":
        raise PanoptemError(f"'{path}' is there but is not panoptem's cache of network outputs; choose another "
                            "--cache-dir (a folder of its own), or move that away.")
    if engine is not None and kind not in (None, engine):
        other, how = ("a blockwise", "with") if kind == "blockwise" else ("a whole-volume", "without")
        raise PanoptemError(f"The cache {path} holds {other} run's network outputs; give this run another "
                            f"--cache-dir, or run it {how} --blockwise.")


class OutputCache:
    """Network outputs of one stack, stored slice by slice.

    ``reset_stale``: a cache made by a different run (``key`` differs) is
    emptied instead of refused (for caches panoptem manages itself).
    """

    def __init__(self, path: str | Path, plane: str, n: int, prob_shape, grid_shape, key: dict,
                 reset_stale: bool = False, chunk: int = 1):
        import zarr

        from ..io.zarr_write import ChunkRows, dense
        self.path = Path(path) / f"{plane}.zarr"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_store(self.path, "whole")
        g = zarr.open_group(str(self.path), mode="a")
        stored = g.attrs.get("key")
        c, h, w = prob_shape
        # an earlier release stored a multi-class network's probability without its last channel
        misshapen = "probability" in g and tuple(g["probability"].shape) != (n, c, h, w)
        other = stored is not None and json.loads(json.dumps(stored)) != json.loads(json.dumps(key))
        other = other or (stored is None and "done" in g)  # an earlier release's, killed before its key
        damaged = "done" in g and any(k not in g for k in ("probability", "heatmap", "offsets", "hash"))
        if misshapen or other or damaged:
            if not reset_stale:
                why = ("its record of the run is missing" if stored is None else differing(stored, key)) if other \
                    else "some of its arrays are missing" if damaged else "its probability has another shape"
                raise PanoptemError(f"The cache {self.path} was made by a different run ({why}); "
                                    "choose another --cache-dir or delete that folder.")
            shutil.rmtree(self.path)
            g = zarr.open_group(str(self.path), mode="a")
        if "done" not in g:  # made last: what a run killed while making the cache left is made afresh
            from zarr.codecs import ZstdCodec
            gh, gw = grid_shape
            # chunks of whole batches, keys in one folder: thousands of thin xz / yz planes
            # stored a file and three folders each cost more than their network
            b, flat = chunk_planes(int(chunk), n, c * h * w), {"name": "v2", "separator": "."}
            new = {"fill_value": 0, "overwrite": True}
            g.create_array("probability", shape=(n, c, h, w), chunks=(b, c, h, w), dtype="uint8",
                           chunk_key_encoding=flat, compressors=ZstdCodec(level=1), **new)
            g.create_array("heatmap", shape=(n, 1, gh, gw), chunks=(b, 1, gh, gw), dtype="float16",
                           chunk_key_encoding=flat, compressors=None, **new)
            g.create_array("offsets", shape=(n, 2, gh, gw), chunks=(b, 2, gh, gw), dtype="float16",
                           chunk_key_encoding=flat, compressors=None, **new)
            g.create_array("hash", shape=(n, HASH_BYTES), chunks=(n, HASH_BYTES), dtype="uint8", **new)
            g.attrs["key"] = key  # before "done": a store with "done" has its key
            g.create_array("done", shape=(n,), chunks=(n,), dtype="bool", **{**new, "fill_value": False})
        self.group = g
        self._arr = {k: dense(g[k]) for k in ("probability", "heatmap", "offsets", "hash", "done")}
        self._done = np.asarray(self._arr["done"][:])
        self._hash = np.asarray(self._arr["hash"][:])
        self._marked_at, self._stale = time.monotonic(), False  # when the marks were last stored; since changed
        self._given = np.zeros_like(self._hash)  # hashes of slices put, until their outputs are stored
        self._rows = ChunkRows([self._arr[k] for k in ("probability", "heatmap", "offsets")],
                               int(self._arr["probability"].chunks[0]), n, written=self._stored)

    def done(self, i: int) -> bool:
        """Whether slice ``i`` has been stored (whatever its input)."""
        return bool(self._done[i])

    def valid(self, i0: int, hashes: np.ndarray) -> bool:
        """Whether slices ``i0..`` are stored for input planes with these hashes."""
        i1 = i0 + len(hashes)
        return bool(self._done[i0:i1].all() and np.array_equal(self._hash[i0:i1], hashes))

    def put(self, i0: int, out: ModelOutput, hashes: np.ndarray) -> ModelOutput:
        """Store outputs of slices i0.. and mark them complete (data first, then the marks, which
        reach the disk within :data:`MARK_EVERY_S` or at :meth:`flush`); returns them at cache
        precision."""
        back, q = _quantize(out)
        self._given[i0:i0 + len(out)] = hashes
        self._rows.add(i0, q)  # stored when a whole chunk (or the stack's end) is ready
        if time.monotonic() - self._marked_at >= MARK_EVERY_S:
            self.flush()
        return back

    def _stored(self, i0: int, i1: int) -> None:
        """Slices ``i0:i1`` reached the arrays: mark them done in memory."""
        self._hash[i0:i1] = self._given[i0:i1]
        self._done[i0:i1] = True
        self._stale = True

    def flush(self) -> None:
        """Store every slice put so far and the completion marks (call when the run ends or stops)."""
        self._rows.flush()
        if self._stale:
            self._arr["hash"][:] = self._hash
            self._arr["done"][:] = self._done
        self._marked_at, self._stale = time.monotonic(), False

    def get(self, i0: int, i1: int) -> ModelOutput:
        a = self._arr
        return _dequantize(a["probability"][i0:i1], a["heatmap"][i0:i1], a["offsets"][i0:i1])
