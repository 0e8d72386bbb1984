"""Training loop for panoptic models: resumable, checkpointed, CPU or GPU."""
from __future__ import annotations

import functools
import inspect
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._atomic import atomic_path, write_text
from ..errors import PanoptemError
from ..inference.predict import predict_batch
from ..inference.preprocess import intensity_range
from ..models.architecture import architecture_config, build_model
from .loss import panoptic_loss, panoptic_loss_ce

if TYPE_CHECKING:
    from .dataset import TrainingData


@dataclass
class TrainConfig:
    """Settings of one training run (saved beside the checkpoints)."""

    iterations: int = 4000
    batch_size: int = 8
    patch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    scale_range: tuple[float, float] = (0.33, 1.25)
    sigma: float = 6.0
    seed: int = 0
    checkpoint_every: int = 200
    validate_every: int = 500
    architecture: dict = field(default_factory=lambda: dict(num_classes=1))
    device: str = "cpu"
    threads: int = 0
    #: length of the one-cycle schedule (0: ``iterations``)
    schedule_steps: int = 0
    #: from this step on, the learning rate anneals (cosine) from its value there to 0 at ``iterations``
    anneal_from: int = 0
    #: share of patches centred on dark structures that are not objects (hard negatives)
    hard_negatives: float = 0.0
    #: share of patches whose objects are made paler (:func:`~.augment.pale_objects`)
    pale: float = 0.0
    #: the model whose weights the run started from (recorded; None: from scratch)
    init: str | None = None


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings no run can use, naming the field (a config made by hand in Python; the
    command line checks its options itself)."""
    from ..params import is_whole
    bad = [f"{name}={getattr(cfg, name)!r} (a whole number, {least} or more)"
           for name, least in (("iterations", 1), ("batch_size", 1), ("checkpoint_every", 1),
                               ("validate_every", 1), ("seed", 0), ("schedule_steps", 0), ("anneal_from", 0),
                               ("threads", 0)) if not is_whole(getattr(cfg, name), least)]
    if not is_whole(cfg.patch_size, 64) or cfg.patch_size % 32:
        bad.append(f"patch_size={cfg.patch_size!r} (a multiple of 32, 64 or more)")
    for name in ("lr", "sigma"):
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            bad.append(f"{name}={v!r} (a positive number)")
    if not (isinstance(cfg.weight_decay, (int, float)) and math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        bad.append(f"weight_decay={cfg.weight_decay!r} (0 or more)")
    for name in ("hard_negatives", "pale"):
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and 0 <= v <= 1):
            bad.append(f"{name}={v!r} (a share, 0 to 1)")
    lo, hi = (tuple(cfg.scale_range) + (None, None))[:2]
    if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 < lo <= hi and math.isfinite(hi)):
        bad.append(f"scale_range={cfg.scale_range!r} (two positive zooms, smallest first)")
    if bad:
        raise PanoptemError("TrainConfig " + "; ".join(dict.fromkeys(bad)) + ": fix these settings.")


def better_scores(a: dict, b: dict | None) -> bool:
    """Whether held-out scores ``a`` are at least as good as ``b``: F1@0.5 first, then
    foreground IoU (a tie goes to the later, more trained, weights)."""
    return b is None or (a["f1_50"], a["foreground_iou"]) >= (b["f1_50"], b["foreground_iou"])


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(obj, tmp)


def drop_records_after(path: Path, step: int) -> None:
    """Keep only the records of steps up to ``step`` in the JSON-lines file ``path`` (a resumed run
    scores and logs the later ones again); a line cut short by a kill goes too."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line)
    if kept != lines:
        write_text(path, "".join(s + "\n" for s in kept))


class BestWeights:
    """The weights of a run's best-scored step (:func:`better_scores`), written to ``file`` (with
    their ``step`` and ``scores``; ``record``: the scores alone, as JSON) as they come, and kept
    in every checkpoint (:meth:`state`): a resumed run (:meth:`restore`) goes on with the best of
    the steps up to its checkpoint, never with one a killed run scored after it. Until a step
    scores better, the best is ``start`` (step, scores: e.g. the base model's) and ``file`` is absent."""

    def __init__(self, file: Path, architecture: dict, start: tuple[int, dict | None] = (0, None),
                 record: Path | None = None):
        self.file, self.architecture, self.start, self.record = Path(file), architecture, start, record
        self.step, self.scores = start
        self.weights: dict | None = None

    def offer(self, model, step: int, scores: dict) -> bool:
        """Keep ``model``'s weights if ``scores`` are at least as good as the best's; whether kept."""
        if not better_scores(scores, self.scores):
            return False
        self.step, self.scores = step, scores
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self._write()
        return True

    def state(self) -> dict:
        """What a checkpoint keeps of the best."""
        return {"step": self.step, "scores": self.scores, "state_dict": self.weights}

    def restore(self, state: dict | None, step: int) -> None:
        """Take the best from ``state`` (a checkpoint's, of step ``step``), or, where the checkpoint
        holds none (there is none, or an earlier panoptem wrote it), from ``file`` where its step
        is ``step`` or earlier; else start afresh. ``file`` is rewritten to match."""
        state = state if state is not None else self._read(step)
        if state is None:
            state = {"step": self.start[0], "scores": self.start[1], "state_dict": None}
        self.step, self.scores = int(state["step"]), state["scores"]
        weights = state["state_dict"]
        self.weights = None if weights is None else {k: v.cpu() for k, v in weights.items()}
        self._write()

    def _read(self, step: int) -> dict | None:
        if not self.file.exists():
            return None
        kept = torch.load(self.file, map_location="cpu", weights_only=True)  # tensors and numbers only
        if int(kept["step"]) > step:
            return None
        scores = kept.get("scores")
        if scores is None and self.record is not None and self.record.exists():
            scores = json.loads(self.record.read_text())
        return {"step": int(kept["step"]), "scores": scores, "state_dict": kept["state_dict"]}

    def _write(self) -> None:
        if self.weights is None:
            self.file.unlink(missing_ok=True)
            if self.record is not None:
                self.record.unlink(missing_ok=True)
            return
        _atomic_save({"architecture": self.architecture, "state_dict": self.weights, "step": self.step,
                      "scores": self.scores}, self.file)
        if self.record is not None:
            write_text(self.record, json.dumps(self.scores))


def semantic_iou(model, images: list[np.ndarray], masks: list[np.ndarray], device="cpu",
                 invert: bool = False) -> float:
    """Foreground IoU of thresholded semantic output on whole slices (``invert``: seen with
    their contrast inverted)."""

    inter = union = 0
    for im, m in zip(images, masks):
        lo, hi = intensity_range(im)
        out = predict_batch(model, im[None], (hi, lo) if invert else (lo, hi), device=device)
        prob = out.semantic_probability[0]
        # several channels: softmax over background + classes, foreground = not background
        pred = prob[0] >= 0.5 if prob.shape[0] == 1 else prob.argmax(0) > 0
        gt = m > 0
        inter += int((pred & gt).sum()); union += int((pred | gt).sum())
    return inter / max(union, 1)


def load_checkpoint(path: Path, device: str = "cpu") -> dict:
    """Read a training checkpoint with ``weights_only=True``: tensors, numbers,
    strings and containers only, so a crafted file cannot run code."""
    import pickle
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PanoptemError(f"Checkpoint {path} cannot be read safely ({first[:160]}); delete it or pass "
                            "--restart to start training afresh.") from None
    if not isinstance(state, dict) or not {"model", "opt", "sched", "rng", "torch_rng", "step"} <= set(state):
        raise PanoptemError(f"Checkpoint {path} is not a panoptem training checkpoint; delete it or pass --restart.")
    return state


#: TrainConfig fields that say how a run is carried out, not what it learns: a resumed run may change
#: them (iterations too: a run may be taken further, with --schedule-steps fixing its curve)
_HOW_RUN = ("device", "threads", "checkpoint_every", "validate_every", "iterations")
#: how to start afresh, where a caller does not say
RESTART = "pass --restart (resume=False in Python) to start afresh, or choose another output folder"
#: the files a run keeps in its folder (train, finetune, train-volume)
RUN_FILES = ("run.json", "train_config.json", "checkpoint.pt", "log.jsonl", "weights.pt", "best.pt", "best.json",
             "val3d.jsonl", "scores.json", "kept.pt")


def drop_partial_files(folder: Path) -> None:
    """Remove the temporary files of :func:`~panoptem._atomic.atomic_path` (``.NAME.<id>.part``...)
    that runs killed while writing :data:`RUN_FILES` left in ``folder``; to be called holding its lock."""
    from .._atomic import leftovers
    for name in RUN_FILES:
        for p in leftovers(folder / name):
            if p.is_file() and ".part" in p.name[len(name) + 1:]:
                p.unlink(missing_ok=True)


def one_run_per_folder(folder_of):
    """Decorator: a training run holds its folder (``folder_of(arguments)``, the call's arguments
    by name) while it lasts; another process training into the same folder meanwhile is refused
    in one line instead of mixing checkpoints and logs with it, as is another thread of this
    process (a napari dock's); re-entrant within a thread."""
    def deco(func):
        sig = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            from .._atomic import exclusive_output, work_folder
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            folder = work_folder(folder_of(bound.arguments), "checkpoints and weights", create=False)
            with exclusive_output(folder):
                drop_partial_files(folder)
                return func(*args, **kwargs)
        return wrapper
    return deco


def claim_run(out: Path, cfg: TrainConfig, run: dict | None = None, resume: bool = True,
              restart: str = RESTART, records: tuple[str, ...] = ()) -> None:
    """Record in ``out/run.json`` what defines the training run kept in ``out``: ``cfg`` (but
    :data:`_HOW_RUN`) and ``run`` (its data, held-out set, starting weights...). With
    ``resume``, a folder left by a run that differs is refused, naming what differs, so that a
    resumed run never mixes two runs' checkpoints and scores; ``restart`` says how to start
    afresh. Without ``resume``, the files named in ``records`` (what a run keeps beside its
    checkpoint: scores, best weights) are removed, so a restarted run never takes an earlier
    one's. A folder without the record (an earlier panoptem's) is taken as this run's."""
    ident = json.loads(json.dumps({**{k: v for k, v in asdict(cfg).items() if k not in _HOW_RUN}, **(run or {})},
                                  default=str))
    record = Path(out) / "run.json"
    if resume and record.exists():
        try:
            old = json.loads(record.read_text())
        except (OSError, ValueError):
            old = None  # unreadable: nothing to compare with
        if isinstance(old, dict) and old != ident:
            diff = [k for k in sorted(set(old) | set(ident)) if old.get(k) != ident.get(k)]
            said = "; ".join(f"{k}: {json.dumps(old.get(k))[:60]} then, {json.dumps(ident.get(k))[:60]} now"
                             for k in diff[:3]) + ("; ..." if len(diff) > 3 else "")
            raise PanoptemError(f"{out} holds a training run with other settings ({said}); run the "
                                f"command as it was to resume it, or {restart}.")
    if not resume:
        for name in records:
            (Path(out) / name).unlink(missing_ok=True)
    write_text(record, json.dumps(ident, indent=1))


def _resume(ckpt: Path, cfg: TrainConfig, arch: dict, model, opt, sched, rng) -> tuple[int, dict | None]:
    """Restore model, optimiser, schedule and random states; returns the step and what the
    caller kept in the checkpoint (``extra_state``; None). ``arch``: the run's whole architecture
    (checkpoints record theirs, completed with the defaults when older)."""
    state = load_checkpoint(ckpt, cfg.device)
    if architecture_config(state.get("architecture", arch)) != arch:
        raise PanoptemError(f"{ckpt} is a checkpoint of another network; delete {ckpt.parent} to start afresh "
                            "(train-volume: --restart), or choose another name.")
    try:
        model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"]); rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise PanoptemError(f"Checkpoint {ckpt} does not fit this training run ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120]}); delete {ckpt.parent} to start afresh (train-volume: "
                            "--restart), or choose another name or output folder.") from None
    if step > cfg.iterations:
        raise PanoptemError(f"{ckpt} was saved at step {step}, past the {cfg.iterations} iterations asked for; "
                            f"ask for {step} or more to resume it, or start afresh (--restart).")
    return step, state.get("extra")


class OneCycle:
    """One-cycle learning rate (and Adam's beta1) for any number of steps >= 1.

    The same curve as :class:`torch.optim.lr_scheduler.OneCycleLR` (``pct_start`` of
    the steps warm up by cosine from ``max_lr / 25`` to ``max_lr``, the rest anneal by
    cosine to ``max_lr / 25 / 1e4``; beta1 moves 0.95 -> 0.85 -> 0.95), except that a
    warm-up shorter than one step is left out instead of dividing by zero (torch fails
    at exactly 10 steps with ``pct_start=0.1``): short runs start at ``max_lr``.
    ``state_dict()`` holds ``last_epoch`` as torch's does, so checkpoints load either way.
    """

    def __init__(self, opt, max_lr: float, total_steps: int, pct_start: float = 0.1, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, base_momentum: float = 0.85, max_momentum: float = 0.95):
        if total_steps < 1:
            raise PanoptemError(f"A training run needs at least 1 step, not {total_steps}.")
        self.opt, self.max_lr, self.total = opt, float(max_lr), int(total_steps)
        self.initial_lr = self.max_lr / div_factor
        self.min_lr = self.initial_lr / final_div_factor
        self.momenta = (base_momentum, max_momentum)
        self.warm_end = float(pct_start * self.total) - 1  # the step at which the peak is reached (torch's)
        self.last_epoch = 0
        self._apply()

    @staticmethod
    def _cos(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * min(max(pct, 0.0), 1.0)) + 1)

    def values(self, step: int) -> tuple[float, float]:
        """(learning rate, beta1) after ``step`` steps."""
        lo_m, hi_m = self.momenta
        end = self.total - 1
        if self.warm_end >= 1 and step <= self.warm_end:
            pct = step / self.warm_end
            return self._cos(self.initial_lr, self.max_lr, pct), self._cos(hi_m, lo_m, pct)
        start = self.warm_end if self.warm_end >= 1 else 0.0
        pct = (step - start) / (end - start) if end > start else 0.0
        return self._cos(self.max_lr, self.min_lr, pct), self._cos(lo_m, hi_m, pct)

    def _apply(self) -> None:
        lr, beta1 = self.values(self.last_epoch)
        for g in self.opt.param_groups:
            g["lr"] = lr
            if "betas" in g:
                g["betas"] = (beta1, *g["betas"][1:])
            elif "momentum" in g:
                g["momentum"] = beta1

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.opt.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue counting from ``state`` (the optimiser's own state holds the current lr)."""
        self.last_epoch = int(state["last_epoch"])


class _CtrlC:
    """Ctrl-C (SIGINT) while a run trains: the first is noted (``pressed``), so that the run stops
    once its step is done and checkpointed; a second stops it at once. Python's handler comes
    back on exit. Nothing changes outside the main thread, or where SIGINT has another handler."""

    def __enter__(self):
        self.pressed, self._old = False, None
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, signum, frame) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        try:  # not print(): the handler may run while the main thread writes to stderr
            os.write(2, b"\nCtrl-C: stopping once this step is checkpointed (Ctrl-C again stops at once)\n")
        except OSError:
            pass

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class TrainingCancelled(Exception):
    """A training run stopped on request after ``step`` steps; ``checkpoint`` holds them."""

    def __init__(self, step: int, total: int, checkpoint: Path):
        super().__init__(f"stopped after step {step} of {total}; checkpoint kept in {checkpoint}")
        self.step, self.total, self.checkpoint = step, total, checkpoint


def _one_cycle_lr(cfg: TrainConfig, step: int) -> float:
    """Learning rate of the one-cycle schedule after ``step`` steps."""
    p = torch.nn.Parameter(torch.zeros(1))
    o = torch.optim.SGD([p], lr=cfg.lr)
    return OneCycle(o, cfg.lr, cfg.schedule_steps or cfg.iterations).values(step)[0]


def _train_mode(model, frozen=()) -> None:
    """Training mode, except frozen modules (their BatchNorm statistics stay put)."""
    model.train()
    for name in frozen:
        model.get_submodule(name).eval()


@one_run_per_folder(lambda a: Path(a["out_dir"]).expanduser())
def train(dataset: "TrainingData", out_dir: str | Path, cfg: TrainConfig, resume: bool = True,
          val: tuple[list, list] | None = None, log=print, *, init_state: dict | None = None,
          frozen: tuple[str, ...] = (), on_step=None, stop=None, validate=None, run: dict | None = None,
          restart: str = RESTART, extra_state=None, on_resume=None) -> Path:
    """Train a :class:`PanopticNet` on batches of ``dataset`` (a
    :class:`~panoptem.training.dataset.TrainingData`) and return the path of the final weights.

    Checkpoints (model, optimiser, schedule, random state) go to
    ``out_dir/checkpoint.pt`` every ``cfg.checkpoint_every`` steps; with
    ``resume`` an interrupted run continues from there.

    ``init_state`` starts from these weights (fine-tuning); the top-level
    modules named in ``frozen`` (e.g. ``"stem"``, ``"stage1"``) are not trained
    and keep their BatchNorm statistics; ``on_step`` is called with every
    step's record. A dataset whose semantic targets are integer channel
    indices trains with cross-entropy (:func:`panoptic_loss_ce`).

    ``validate(model, step)`` is called (model in eval mode) every ``cfg.validate_every`` steps
    and at the last one, e.g. to score held-out data and keep the best weights. What
    ``extra_state()`` returns (e.g. :meth:`BestWeights.state`) is saved in every checkpoint, and
    ``on_resume(step, extra)`` is called before the first step with the step the run starts from
    (0 when afresh) and what ``extra_state()`` gave its checkpoint (None when nothing): what the
    caller kept of later steps was scored by a killed run, and is the caller's to drop.

    ``stop()`` is asked after every step; when it returns True the run saves a
    checkpoint of that step and raises :class:`TrainingCancelled` (a later run
    with ``resume`` continues from there). Ctrl-C (in the main thread) stops the same
    way, raising ``KeyboardInterrupt``. ``run`` and ``restart``: see :func:`claim_run`
    (a resumed run must be the same run).
    """
    from .._atomic import work_folder
    check_config(cfg)
    out = work_folder(out_dir, "checkpoints and weights")
    claim_run(out, cfg, run, resume, restart, ("checkpoint.pt", "log.jsonl", "weights.pt"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    arch = architecture_config(cfg.architecture)  # every setting, saved with the weights
    model = build_model(arch).to(cfg.device).to(memory_format=torch.channels_last)
    if init_state is not None:
        model.load_state_dict(init_state)
    for name in frozen:
        model.get_submodule(name).requires_grad_(False)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 and p.requires_grad]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = OneCycle(opt, cfg.lr, cfg.schedule_steps or cfg.iterations)
    lr_cut = _one_cycle_lr(cfg, cfg.anneal_from) if cfg.anneal_from else None
    rng = np.random.default_rng(cfg.seed)
    step, extra = 0, None
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        step, extra = _resume(ckpt, cfg, arch, model, opt, sched, rng)
        log(f"resumed from step {step}")
    drop_records_after(out / "log.jsonl", step)
    if on_resume is not None:
        on_resume(step, extra)
    write_text(out / "train_config.json", json.dumps({**asdict(cfg), "architecture": arch}, indent=1))
    t0 = time.time()
    _train_mode(model, frozen)
    with open(out / "log.jsonl", "a") as logf, _CtrlC() as ctrl_c:
        while step < cfg.iterations:
            x, sem, hm, off, wt = (a.to(cfg.device) for a in dataset.batch(rng, cfg))
            x = x.contiguous(memory_format=torch.channels_last)
            outp = model(x)
            loss, parts = (panoptic_loss if sem.is_floating_point() else panoptic_loss_ce)(outp, sem, hm, off, wt)
            if not torch.isfinite(loss):  # weights of NaN would be kept, registered and run
                raise PanoptemError(f"Training diverged at step {step + 1} (the loss is {float(loss.detach())}): "
                                    "start afresh with a lower learning rate (--lr ... --restart).")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step(); sched.step()
            step += 1
            if lr_cut is not None and step >= cfg.anneal_from:
                frac = (step - cfg.anneal_from) / max(cfg.iterations - cfg.anneal_from, 1)
                for g in opt.param_groups:
                    g["lr"] = lr_cut * 0.5 * (1 + math.cos(math.pi * frac))
            rec = {"step": step, "loss": round(float(loss.detach()), 5), **parts, "lr": opt.param_groups[0]["lr"],
                   "elapsed_s": round(time.time() - t0, 1)}
            stopping = stop is not None and step < cfg.iterations and bool(stop())
            if val is not None and (step % cfg.validate_every == 0 or step == cfg.iterations):
                model.eval()
                rec["val_iou"] = semantic_iou(model, *val, device=cfg.device, invert=dataset.invert)
                _train_mode(model, frozen)
            scored = validate is not None and (step % cfg.validate_every == 0 or step == cfg.iterations)
            if scored:
                model.eval()
                validate(model, step)
                _train_mode(model, frozen)
            interrupted = ctrl_c.pressed  # Ctrl-C in this step, its scoring included: checkpointed now
            # after the step's scoring (every scored step is, so a resumed run keeps what it scored): a run
            # killed while scoring resumes before this step and scores it again
            if step % cfg.checkpoint_every == 0 or step == cfg.iterations or stopping or interrupted or scored:
                _atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                              "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "step": step,
                              "architecture": arch, "extra": extra_state() if extra_state else None}, ckpt)
            if on_step is not None:
                on_step(rec)
            if step % 20 == 0 or "val_iou" in rec or stopping or interrupted:
                logf.write(json.dumps(rec) + "\n"); logf.flush()
                log(json.dumps(rec))
            if interrupted:
                log(f"stopped after step {step} of {cfg.iterations}; checkpoint kept in {ckpt}")
                raise KeyboardInterrupt
            if stopping:
                raise TrainingCancelled(step, cfg.iterations, ckpt)
        if ctrl_c.pressed:  # while the last step was logged: it is checkpointed
            raise KeyboardInterrupt
    model.eval()
    final = out / "weights.pt"
    _atomic_save({"architecture": arch, "state_dict": model.state_dict()}, final)
    return final
