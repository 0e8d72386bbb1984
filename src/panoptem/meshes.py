"""Surface meshes of segmented 3D objects, one file per object, in nm: for Blender, Amira,
Imaris, ParaView or MeshLab.

Each mesh is the surface :func:`panoptem.measure` measures (its area is the table's
``surface_area_nm2``): the object's voxels smoothed by a Gaussian of one width in nm and cut at
the level that keeps its volume. Vertices are x, y, z in nm (the labels' origin added, where
known); faces turn counter-clockwise seen from outside, so normals point out.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .errors import PanoptemError

#: the file formats meshes are written in
MESH_FORMATS = ("ply", "obj", "stl")
#: beside the output folder while meshes are written: the files made so far, which a run of the
#: same call resumes from
WORK_SUFFIX = ".panoptem-meshes"
#: the index of a mesh folder: one record per object (label, file, vertices, faces, area)
INDEX = "meshes.json"
#: in the work folder: a line per mesh written, what a resumed run keeps
DONE = "written.jsonl"


def object_mesh(mask: np.ndarray, voxel_size=None, corner=(0, 0, 0),
                origin=None) -> tuple[np.ndarray, np.ndarray]:
    """The surface of one object: ``mask`` (Z, Y, X bool, the object's box), ``voxel_size`` (nm
    per voxel, z, y, x; default 1), ``corner`` (the box's first voxel in the volume) and
    ``origin`` (nm position of the volume's first voxel, z, y, x). Returns vertices (V, 3) x, y, z
    in nm (float64) and faces (F, 3) int64, counter-clockwise seen from outside.

    >>> m = np.zeros((9, 9, 9), bool); m[2:7, 2:7, 2:7] = True
    >>> v, f = object_mesh(m, (2.0, 1.0, 1.0))
    >>> bool(mesh_volume(v, f) > 0), bool(v[:, 2].min() > 0)  # outward; z (the third column) in nm
    (True, True)
    """
    from skimage.measure import marching_cubes

    from ._measure import surface_field
    mask = np.asarray(mask, bool)
    if mask.ndim != 3:
        raise PanoptemError(f"A mesh is the surface of a 3D object; this mask has {mask.ndim} dimensions.")
    if not mask.any():
        raise PanoptemError("The object's mask is empty: there is no surface to mesh.")
    vs = np.ones(3) if voxel_size is None else np.asarray(voxel_size, np.float64)
    field, level, margin = surface_field(mask, vs)
    verts, faces, _, _ = marching_cubes(field, level=level, spacing=tuple(vs))
    shift = (np.asarray(corner, np.float64) - margin) * vs
    if origin is not None:
        shift += np.asarray(origin, np.float64)
    verts = verts.astype(np.float64) + shift
    # z, y, x -> x, y, z: the reflection turns marching cubes' inward-facing winding outward
    return np.ascontiguousarray(verts[:, ::-1]), faces.astype(np.int64)


def mesh_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume a closed triangle mesh encloses: positive where its faces turn
    counter-clockwise seen from outside."""
    a, b, c = (verts[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def mesh_bytes(verts: np.ndarray, faces: np.ndarray, fmt: str = "ply", name: str = "object") -> bytes:
    """A mesh as the bytes of a ``fmt`` file: binary little-endian PLY, Wavefront OBJ (text) or
    binary STL (float32 coordinates in the binary formats)."""
    v = np.asarray(verts, "<f4")
    f = np.asarray(faces, np.int64)
    if fmt == "ply":
        head = (f"ply\nformat binary_little_endian 1.0\ncomment panoptem object {name}, nm\n"
                f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
                f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n").encode()
        tri = np.zeros(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        tri["n"], tri["i"] = 3, f
        return head + v.tobytes() + tri.tobytes()
    if fmt == "obj":
        lines = [f"# panoptem object {name}, nm", f"o {name}"]
        lines += [f"v {x:.6g} {y:.6g} {z:.6g}" for x, y, z in np.asarray(verts, np.float64)]
        lines += [f"f {a} {b} {c}" for a, b, c in f + 1]
        return ("\n".join(lines) + "\n").encode()
    if fmt == "stl":
        a, b, c = (v[f[:, i]] for i in range(3))
        n = np.cross(b - a, c - a)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), np.float32(1e-30))
        rec = np.zeros(len(f), dtype=[("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])
        rec["n"], rec["v"] = n, np.stack([a, b, c], axis=1)
        head = f"panoptem object {name}, nm".encode()[:80].ljust(80, b" ")
        return head + struct.pack("<I", len(f)) + rec.tobytes()
    raise PanoptemError(f"Mesh format must be one of {', '.join(MESH_FORMATS)}, not '{fmt}'.")


def export_meshes(labels, output, voxel_size=None, origin=None, ids=None, fmt: str = "ply", table=None,
                  overwrite: bool = False, inputs=(), progress: bool = False) -> dict:
    """Write the surface mesh of every object of a 3D label volume (or of ``ids``) into the
    folder ``output``: ``<label>.<fmt>`` each, and :data:`INDEX` listing them (label, file,
    vertices, faces, area in nm²). Returns that index's content.

    ``labels``: ZYX labels, in memory or a lazy array (each object's box is read alone);
    ``voxel_size`` / ``origin``: nm, z, y, x (default 1 nm voxels, origin 0); ``table``: a
    :func:`panoptem.measure` table of the labels (its ``label`` and ``bbox_*`` columns; default:
    measured here, in memory); ``inputs``: files the output must not touch. The folder is written
    beside under another name and put in place at the end; a run of the same call that was
    stopped resumes with the objects it had written (an array given in memory starts afresh).
    """
    from skimage.measure import mesh_surface_area

    from ._atomic import check_output, discard, exclusive_output, move_into_place, write_bytes, write_text
    from .io.writers import check_voxel_size, check_origin
    if fmt not in MESH_FORMATS:
        raise PanoptemError(f"Mesh format must be one of {', '.join(MESH_FORMATS)}, not '{fmt}'.")
    shape = tuple(int(n) for n in getattr(labels, "shape", np.shape(labels)))
    if len(shape) != 3:
        raise PanoptemError(f"Meshes are made of 3D objects; these labels have shape {shape}: give a ZYX "
                            "label volume.")
    vs = np.asarray(check_voxel_size(voxel_size, 3) or (1.0, 1.0, 1.0))
    org = np.asarray(check_origin(origin, tuple(vs), 3) or (0.0, 0.0, 0.0))
    if table is None:
        from ._measure import measure
        table = measure(np.asarray(labels), voxel_size=tuple(vs), surface=False)
    boxes = {int(lab): (lo, hi) for lab, lo, hi in zip(
        np.asarray(table["label"]), np.stack([np.asarray(table[f"bbox_min_{a}"]) for a in "zyx"], axis=1),
        np.stack([np.asarray(table[f"bbox_max_{a}"]) for a in "zyx"], axis=1))}
    wanted = sorted(boxes) if ids is None else list(dict.fromkeys(int(i) for i in ids))  # each once
    missing = [i for i in wanted if i not in boxes]
    if missing:
        raise PanoptemError(f"Label(s) {', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''} "
                            "are not in the labels; give ids that are (panoptem measure lists them).")
    out = check_output(output, overwrite, inputs)
    work = out.parent / f".{out.name}{WORK_SUFFIX}"
    stamp = {"inputs": [str(Path(i).expanduser().absolute()) for i in inputs if i], "shape": list(shape),
             "voxel_size": vs.tolist(), "origin": org.tolist(), "ids": wanted, "format": fmt}
    with exclusive_output(out):
        if work.exists() and (not stamp["inputs"] or _stamp(work) != stamp):
            discard(work, out)  # another call's meshes, or an array no later call can be told from
        work.mkdir(parents=True, exist_ok=True)
        write_text(work / "run.json", json.dumps(stamp))
        done = _written(work, fmt)  # by the stopped run this one resumes
        index = []
        from tqdm import tqdm
        with open(work / DONE, "a") as log, tqdm(total=len(wanted), unit="object", desc="meshes",
                                                  disable=not progress) as bar:
            for lab in wanted:
                if lab not in done:
                    lo, hi = boxes[lab]
                    mask = np.asarray(labels[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))]) == lab
                    verts, faces = object_mesh(mask, vs, lo, org)
                    write_bytes(work / f"{lab}.{fmt}", mesh_bytes(verts, faces, fmt, str(lab)))
                    done[lab] = {"label": lab, "file": f"{lab}.{fmt}", "vertices": len(verts),
                                 "faces": len(faces), "area_nm2": float(mesh_surface_area(verts, faces))}
                    log.write(json.dumps(done[lab]) + "\n")
                    log.flush()
                index.append(done[lab])
                bar.update(1)
        result = {"objects": index, "voxel_size_nm": vs.tolist(), "origin_nm": org.tolist(),
                  "format": fmt, "coordinates": "x, y, z in nm"}
        write_text(work / INDEX, json.dumps(result, indent=1))
        for name in ("run.json", DONE):
            (work / name).unlink()
        move_into_place(work, out)
    return result


def _stamp(work: Path) -> dict | None:
    """What call made the meshes in a work folder (None when it cannot say)."""
    try:
        return json.loads((work / "run.json").read_text())
    except (OSError, ValueError):
        return None


def _written(work: Path, fmt: str) -> dict[int, dict]:
    """The meshes a stopped run wrote in ``work`` (its log's complete lines whose files are
    there), by label."""
    done = {}
    try:
        lines = (work / DONE).read_text().splitlines()
    except OSError:
        return done
    for line in lines:
        try:
            rec = json.loads(line)
            lab = int(rec["label"])
        except (ValueError, KeyError, TypeError):
            continue  # the line a killed run was writing
        if rec.get("file") == f"{lab}.{fmt}" and (work / rec["file"]).is_file():
            done[lab] = rec
    return done
