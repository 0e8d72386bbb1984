"""panoptem beside empanada-napari 1.2.4, same network, same data.

Exports a panoptem model with empanada's TorchScript interface, registers it in an
empanada-napari installation (its own Python environment, ``--python``, with its model
registry under ``--home``), runs empanada's stages there with a runner script
(``--harness``, widget defaults, float model, CPU; see empanada_compare.md) and panoptem
in-process with the same parameters, scores both against the Lucchi ground truth and
prints one JSON line per (engine, stage), plus one ``panoptem_vs_empanada`` line per
stage that scores panoptem's labels against empanada's (how alike the two engines are).

Data: slices ``z0:z1`` of ``lucchi/training_image.tif`` (default 135-164, the validation
block), optionally a centred ``--crop``. 3D ground truth: 6-connected components of the
mask over the same block; 2D ground truth: the original 2D objects of the slice.

Timing: ``seconds`` excludes model loading in both engines; ``network_seconds`` is
empanada's ``model_forward`` timer (forward + sigmoid) and panoptem's ``network_s``
(normalise + forward + sigmoid). ``2d``: ``seconds`` is the median of the warm repeats,
empanada's ``network_seconds`` the mean forward time over all repeats (cold one
included). Each empanada stage runs in a fresh process, so its time includes numba
compilation and TorchScript warm-up unless ``--empanada-warmup``. Compare the engines
within one run: both run on the same machine under the same load.

Normalisation: the export keeps the card's mean/std but empanada divides by the dtype
maximum where panoptem stretches percentiles; every line carries ``normalisation_note``
and ``normalisation`` (gain/offset between the two inputs). ``--norm matched`` rewrites the
registered yaml's norms so that empanada's network input equals panoptem's on the block;
then the remaining differences are algorithmic (median at stack ends, padding mode,
linking, consensus).

Usage (EMPANADA: a Python environment with empanada-napari 1.2.4; RUNNER: its runner script):
    .venv/bin/python bench/empanada_compare.py --lucchi DIR --python EMPANADA/bin/python --harness RUNNER \
        --model MitoLite_v1 --stages 2d,stack,ortho
    .venv/bin/python bench/empanada_compare.py --lucchi DIR --engines panoptem --tiny --z0 135 --z1 145 --crop 256
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import add_lucchi_argument, emit, lucchi_dir, peak_rss_mb
# empanada-napari's widget defaults; panoptem's Params3D defaults are the same values
PARAMS = dict(downsampling=1, confidence_thr=0.5, center_confidence_thr=0.1, min_distance_object_centers=3,
              fine_boundaries=False, semantic_only=False, maximum_objects_per_class=10000)
PARAMS_2D = dict(PARAMS, min_piece_area=0)  # empanada keeps every piece
PARAMS_3D = dict(PARAMS, median_slices=3, min_size=500, min_extent=5, pixel_vote_thr=2, allow_one_view=False)
TINY_ARCH = dict(num_classes=1, widths=[8, 8, 8, 8, 8], depths=[1, 1, 1, 1], decoder_channels=8, head_channels=8)


# ------------------------------------------------------------------ data


def parse_crop(text: str | None) -> tuple[int, int] | None:
    """``"256"`` -> (256, 256); ``"256x384"`` -> (256, 384) (height x width)."""
    if not text:
        return None
    parts = [int(p) for p in text.lower().split("x")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def load_block(lucchi: Path, z0: int, z1: int, crop: tuple[int, int] | None):
    """Image, 3D ground truth (6-connected components of the mask) and 2D ground truth."""
    import cc3d
    import tifffile
    zs = range(z0, z1)
    img = tifffile.imread(lucchi / "training_image.tif", key=zs)
    mask = tifffile.imread(lucchi / "training_mask.tif", key=zs) > 0
    gt2d = tifffile.imread(lucchi / "training_instances2d.tif", key=zs)
    if crop:
        h, w = crop
        y0, x0 = (img.shape[1] - h) // 2, (img.shape[2] - w) // 2
        sl = (slice(None), slice(y0, y0 + h), slice(x0, x0 + w))
        img, mask, gt2d = img[sl], mask[sl], gt2d[sl]
    gt3d = cc3d.connected_components(mask.astype(np.uint8), connectivity=6)
    return np.ascontiguousarray(img), gt3d, np.ascontiguousarray(gt2d)


def make_tiny(folder: Path, volume: np.ndarray) -> Path:
    """A tiny random panoptem model (as tests/conftest.py's ``tiny_card``) whose output
    biases are shifted so that it finds objects on ``volume``: about 10 % of the pixels
    of the middle slice are foreground, about 1 % of heatmap cells exceed 0.1 and
    offsets are zero (pixels join their nearest centre). Random blobs, not mitochondria:
    it exercises decoding, linking, filtering and consensus of both engines."""
    import torch
    import yaml
    from panoptem.inference.preprocess import intensity_range, normalize
    from panoptem.models.architecture import build_model
    from panoptem.models.home import sha256_of
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = build_model(TINY_ARCH).eval()
    img = volume[volume.shape[0] // 2]
    h, w = (-(-s // 32) * 32 for s in img.shape)
    x = np.zeros((1, 1, h, w), np.float32)
    x[0, 0, :img.shape[0], :img.shape[1]] = normalize(img, *intensity_range(volume))
    with torch.no_grad():
        out = net(torch.from_numpy(x))
        sem = out["sem_logits"][..., :img.shape[0] // 4, :img.shape[1] // 4]
        ctr = torch.logit(out["ctr_hmp"][..., :img.shape[0] // 4, :img.shape[1] // 4], eps=1e-6)
        net.sem_head.out.bias -= torch.quantile(sem.flatten(), 0.90)
        net.ctr_head.out.bias += float(np.log(0.1 / 0.9)) - torch.quantile(ctr.flatten(), 0.99)
        net.off_head.out.weight.zero_()
        net.off_head.out.bias.zero_()
    wf = folder / "tiny.pt"
    torch.save({"architecture": TINY_ARCH, "state_dict": net.state_dict()}, wf)
    card = {"name": "tiny", "description": "tiny random test model (biases set to find blobs)",
            "architecture": TINY_ARCH, "label_divisor": None, "weights": {"file": "tiny.pt", "sha256": sha256_of(wf)}}
    p = folder / "tiny.yaml"
    p.write_text(yaml.safe_dump(card))
    return p


# ------------------------------------------------------------------ normalisation


def normalisation(card, volume: np.ndarray) -> dict:
    """How empanada's input relates to panoptem's on ``volume``.

    empanada: ``e = (x / dtype_max - m) / s``. panoptem (percentile mode):
    ``p = ((x - lo) / (hi - lo) - m) / s``. So ``e = gain * p + offset`` with
    ``gain = (hi - lo) / dtype_max`` and ``offset = (lo + m (hi - lo) - m dtype_max) / (dtype_max s)``;
    empanada norms ``mean' = (lo + m (hi - lo)) / dtype_max``, ``std' = s (hi - lo) / dtype_max``
    reproduce panoptem's input exactly (up to panoptem's clipping far outside lo..hi).
    """
    from panoptem.inference.preprocess import dtype_range, intensity_range
    n = card.normalization
    m, s = float(n.mean), float(n.std)
    dmax = dtype_range(volume)[1]
    if n.mode == "dtype_max":
        return {"mode": "dtype_max", "identical": True, "matched_norms": {"mean": m, "std": s},
                "note": "the card normalises by dtype max like empanada: both engines see the same input"}
    lo, hi = intensity_range(volume, low_pct=n.low_pct, high_pct=n.high_pct)
    gain = (hi - lo) / dmax
    offset = (lo + m * (hi - lo) - m * dmax) / (dmax * s)
    # largest difference in network input (in std units) over the lo..hi intensity span
    diff = max(abs((gain - 1) * p + offset) for p in ((0 - m) / s, (1 - m) / s))
    matched = {"mean": (lo + m * (hi - lo)) / dmax, "std": s * (hi - lo) / dmax}
    note = (f"panoptem maps the {n.low_pct}-{n.high_pct} percentiles ({lo:g}..{hi:g}) to 0..1, empanada "
            f"divides by {dmax:g}; both then (x - {m:g}) / {s:g}. On this block empanada's input = "
            f"{gain:.3f} x panoptem's {offset:+.3f}: {100 * (1 - gain):.0f}% less contrast, up to "
            f"{diff:.2f} std apart. Empanada norms mean={matched['mean']:.4f}, std={matched['std']:.4f} "
            f"would match panoptem exactly (--norm matched).")
    return {"mode": "percentile", "identical": False, "low": lo, "high": hi, "gain": round(gain, 4),
            "offset": round(offset, 4), "max_abs_diff_std": round(diff, 3),
            "matched_norms": matched, "note": note}


# ------------------------------------------------------------------ empanada side


def empanada_env(home: Path) -> dict:
    env = dict(os.environ, HOME=str(home), QT_QPA_PLATFORM="offscreen", TQDM_DISABLE="1")
    env.pop("PYTHONPATH", None)
    return env


def export_and_register(model: str, work: Path, python: str, home: Path, norms: dict | None) -> str:
    """Export ``model`` for empanada, register it (as the "Register new model" widget
    does) and return its empanada name. ``norms``: override the yaml's norms."""
    import yaml
    from panoptem.models.export import export_torchscript
    from panoptem.models.home import get_card
    card = get_card(model)
    name = "panoptem_" + re.sub(r"[^A-Za-z0-9_]", "_", card.name) + ("_matched" if norms else "")
    pth = work / f"panoptem_{re.sub(r'[^A-Za-z0-9_]', '_', card.name)}.pth"
    export_torchscript(model, pth, empanada_interface=True, overwrite=True)
    cfg_path = pth.with_suffix(".yaml")
    if norms:
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["norms"] = {"mean": float(norms["mean"]), "std": float(norms["std"])}
        cfg_path = work / f"{name}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    code = ("import os, sys\n"
            "from empanada_napari.utils import add_new_model, get_configs\n"
            "name, cfg, pth = sys.argv[1:4]\n"
            "old = get_configs().get(name)\n"
            "if old and old.startswith(os.path.expanduser('~')):\n"
            "    os.remove(old)  # re-register instead of renaming to <name>New\n"
            "add_new_model(name, cfg, pth, False)\n")
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-c", code, name, str(cfg_path.resolve()), str(pth.resolve())],
                   env=empanada_env(home), check=True, capture_output=True, text=True)
    return name


def run_empanada(python: str, harness: Path, name: str, tif: Path, stages: list[str], out: Path, home: Path,
                 threads: int, slice_index: int, repeats: int, warmup: bool = False) -> dict:
    """Run the harness (one fresh process per stage); return {stage: result dict}.
    ``warmup``: run each stage once untimed first (excludes numba / TorchScript compilation)."""
    cmd = [python, str(harness), "--input", str(tif), "--stages", ",".join(stages), "--out", str(out),
           "--model", name, "--float", "--threads", str(threads), "--home", str(home),
           "--slice", str(slice_index), "--repeats", str(repeats), "--no-gt"] + (["--warmup"] if warmup else [])
    p = subprocess.run(cmd, env=empanada_env(home), capture_output=True, text=True)
    results = json.loads((out / "results.json").read_text())["stages"] if (out / "results.json").exists() else []
    by_stage = {r["stage"]: r for r in results}
    if p.returncode != 0 or any(r.get("failed") for r in results):
        tail = (p.stdout + p.stderr)[-3000:]
        print(f"empanada harness failed (rc={p.returncode}):\n{tail}", file=sys.stderr)
    return by_stage


def empanada_row(stage: str, r: dict) -> tuple[np.ndarray | None, dict]:
    """Labels and timings of one harness stage result."""
    import tifffile
    if not r or r.get("failed"):
        return None, {"failed": True}
    tm = r.get("timers_main", {})
    fwd = tm.get("model_forward", {"s": 0.0, "calls": 0})
    if stage == "2d":
        runs = r["t_infer_all_s"]
        warm = runs[1:] or runs
        per_run = fwd["calls"] / max(len(runs), 1)
        net = fwd["s"] / max(fwd["calls"], 1) * per_run  # mean forward time per run (includes the cold one)
        labels = tifffile.imread(r["output"])
        t = {"seconds": statistics.median(warm), "network_seconds": net, "cold_seconds": runs[0]}
    else:
        labels = tifffile.imread(next(iter(r["output"].values())))
        t = {"seconds": r["t_stage_total_s"] - r.get("t_model_load_s", 0.0), "network_seconds": fwd["s"],
             "inference_seconds": r.get("t_inference_s"), "postprocess_seconds": r.get("t_postprocess_s"),
             "instance_cells_seconds": tm.get("instance_cells", {}).get("s")}
    t.update(model_load_seconds=r.get("t_model_load_s"), peak_rss_mb=r.get("peak_rss_mb"))
    return labels, t


# ------------------------------------------------------------------ panoptem side


def run_panoptem(model, volume: np.ndarray, stage: str, slice_index: int, repeats: int):
    """Labels and timings of panoptem for one stage (model already loaded)."""
    import panoptem
    if stage == "2d":
        img = volume[slice_index]
        runs = []
        for _ in range(max(repeats, 1)):
            t = time.perf_counter()
            res = panoptem.segment_2d(img, model, **PARAMS_2D)
            runs.append(time.perf_counter() - t)
        # network alone: the same forward the 2D call makes
        from panoptem.inference.engine import Predictor
        pred = Predictor(model, device=model.device)
        nets = []
        for _ in range(max(repeats - 1, 1)):
            t = time.perf_counter()
            pred.predict(img[None], pred.intensity(img))
            nets.append(time.perf_counter() - t)
        warm = runs[1:] or runs
        return res, {"seconds": statistics.median(warm), "network_seconds": statistics.median(nets),
                     "cold_seconds": runs[0]}
    t = time.perf_counter()
    res = panoptem.segment_3d(volume, model, device=model.device, orthoplane=stage == "ortho", **PARAMS_3D)
    sec = time.perf_counter() - t
    labels = next(iter(res.labels.values()))
    tm = {k: round(v, 3) for k, v in res.timings.items()}
    return labels, {"seconds": sec, "network_seconds": res.timings.get("network_s"), "timings": tm}


# ------------------------------------------------------------------ main


def score(pred: np.ndarray, gt: np.ndarray) -> dict:
    from panoptem import evaluate
    r = evaluate(pred, gt)
    return {k: (round(r[k], 4) if isinstance(r[k], float) else r[k])
            for k in ("foreground_iou", "f1_50", "f1_75", "pq", "n_pred", "n_gt")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="MitoLite_v1", help="panoptem model name or card path")
    ap.add_argument("--tiny", action="store_true", help="use a tiny random model (pipeline check only)")
    ap.add_argument("--z0", type=int, default=135)
    ap.add_argument("--z1", type=int, default=165)
    ap.add_argument("--crop", default=None, help="centred crop, e.g. 256 or 256x384 (height x width)")
    ap.add_argument("--stages", default="2d,stack,ortho", help="comma-separated: 2d, stack, ortho")
    ap.add_argument("--engines", default="empanada,panoptem")
    ap.add_argument("--slice", type=int, default=None, help="2d stage: index in the block (default middle)")
    ap.add_argument("--repeats", type=int, default=3, help="2d stage: runs (the first is cold)")
    ap.add_argument("--norm", choices=["export", "matched"], default="export",
                    help="export: empanada gets the exported yaml's norms (dtype max + card mean/std); "
                         "matched: norms rewritten so empanada's input equals panoptem's on this block")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in both engines")
    ap.add_argument("--python", default=None, help="Python of an environment with empanada-napari 1.2.4 "
                    "(needed for the empanada engine)")
    ap.add_argument("--harness", type=Path, default=None, help="script that runs empanada-napari's stages "
                    "(see empanada_compare.md; needed for the empanada engine)")
    ap.add_argument("--work", default="empanada_compare_work", help="folder for crop, export, outputs")
    ap.add_argument("--home", default=None, help="HOME for empanada's model registry (default: WORK/home)")
    add_lucchi_argument(ap)
    ap.add_argument("--empanada-warmup", action="store_true",
                    help="run each empanada stage twice, time the second (no numba/TorchScript compile time)")
    ap.add_argument("--save", action="store_true", help="also write panoptem's labels to --work")
    a = ap.parse_args(argv)
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    if set(stages) - {"2d", "stack", "ortho"} or set(engines) - {"empanada", "panoptem"}:
        ap.error("unknown stage or engine")
    if "empanada" in engines and not (a.python and Path(a.python).exists() and a.harness and a.harness.exists()):
        ap.error("the empanada engine needs --python (an environment with empanada-napari 1.2.4) and --harness "
                 "(its runner script); or pass --engines panoptem")

    import tifffile
    import torch
    import panoptem
    from panoptem.models.home import get_card
    torch.set_num_threads(a.threads)
    work = Path(a.work).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    home = Path(a.home).expanduser().resolve() if a.home else work / "home"
    volume, gt3d, gt2d = load_block(lucchi_dir(a.lucchi), a.z0, a.z1, parse_crop(a.crop))
    model_ref = str(make_tiny(work / "tiny", volume)) if a.tiny else a.model
    zi = a.slice if a.slice is not None else volume.shape[0] // 2
    tif = work / "block.tif"
    tifffile.imwrite(tif, volume)
    card = get_card(model_ref)
    norm = normalisation(card, volume)
    common = {"model": card.name, "block": f"lucchi z{a.z0}-{a.z1 - 1}", "shape": list(volume.shape),
              "crop": a.crop, "norm": a.norm, "threads": a.threads,
              "empanada_warmup": a.empanada_warmup}
    note = norm["note"] + ("" if a.norm == "export" or norm["identical"] else
                           " This run used the matched norms in empanada.")
    if a.norm == "matched" and "2d" in stages and not norm["identical"]:
        note += " (2d: panoptem takes percentiles per slice, the matched norms come from the whole block.)"

    labels: dict[tuple[str, str], np.ndarray] = {}
    if "empanada" in engines:
        t = time.perf_counter()
        name = export_and_register(model_ref, work, a.python, home,
                                   norm["matched_norms"] if a.norm == "matched" and not norm["identical"] else None)
        t_export = time.perf_counter() - t
        t = time.perf_counter()
        out = work / "empanada"
        res = run_empanada(a.python, a.harness.resolve(), name, tif, stages, out, home, a.threads, zi, a.repeats, a.empanada_warmup)
        t_harness = time.perf_counter() - t
        for st in stages:
            lab, tm = empanada_row(st, res.get(st))
            gt = gt2d[zi] if st == "2d" else gt3d
            sc = score(lab, gt) if lab is not None else {}
            if lab is not None:
                labels[("empanada", st)] = lab
            emit(engine="empanada", stage=st, **common, **sc, **{k: _r(v) for k, v in tm.items()},
                 empanada_model=name, normalisation_note=note, normalisation=_norm_short(norm),
                 export_register_seconds=round(t_export, 2), harness_wall_seconds=round(t_harness, 1))
    if "panoptem" in engines:
        lm = panoptem.load_model(model_ref, device="cpu")
        for st in stages:
            lab, tm = run_panoptem(lm, volume, st, zi, a.repeats)
            gt = gt2d[zi] if st == "2d" else gt3d
            labels[("panoptem", st)] = lab
            if a.save:
                tifffile.imwrite(work / f"panoptem_{st}.tif", lab)
            emit(engine="panoptem", stage=st, **common, **score(lab, gt), **{k: _r(v) for k, v in tm.items()},
                 normalisation_note=note, normalisation=_norm_short(norm), peak_rss_mb=round(peak_rss_mb(), 1))
    for st in stages:
        if ("empanada", st) in labels and ("panoptem", st) in labels:
            emit(engine="panoptem_vs_empanada", stage=st, **common,
                 **score(labels[("panoptem", st)], labels[("empanada", st)]),
                 note="panoptem's labels scored against empanada's (n_gt = empanada's objects)")
    return 0


def _r(v):
    return round(v, 3) if isinstance(v, float) else v


def _norm_short(norm: dict) -> dict:
    return {k: v for k, v in norm.items() if k != "note"}


if __name__ == "__main__":
    sys.exit(main())
