"""The public Python API: ``rethink.run(spec)`` runs one randomization test end to end.

spec -> data source -> subset -> randomization (drawn once) -> preprocessing -> model -> engine
-> store. A spec whose run already finished in the store is not run again (unless ``force``);
an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from . import __version__
from .data import load_dataset, subset
from .data.randomize import randomize
from .data.transforms import preprocess
from .errors import UserError
from .models import build, num_params
from .seeding import generator, torch_seed
from .spec import RunSpec, from_dict
from .store import Store
from .train.engine import TrainConfig, TrainData, train

DEFAULT_STORE = os.path.join("runs", "rethink.sqlite")


@dataclass
class RunResult:
    run_id: str
    status: str
    spec: RunSpec
    summary: dict
    evals: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    cached: bool = False  # True when the finished run was read back from the store

    @property
    def train_acc(self):
        return self.summary.get("train_acc")

    @property
    def test_acc(self):
        return self.summary.get("test_acc")

    @property
    def time_to_fit(self):
        return self.summary.get("time_to_fit")

    def to_json(self) -> dict:
        """The object ``rethink run --json`` prints."""
        keys = ("num_params", "train_acc", "test_acc", "time_to_fit", "train_loss", "test_loss", "steps",
                "epochs", "train_seconds", "best_test_acc", "n_train", "n_test", "device")
        return {"run_id": self.run_id, "status": self.status, **{k: self.summary.get(k) for k in keys},
                "cached": self.cached, "spec": self.spec.to_dict()}


@functools.lru_cache(maxsize=4)
def _load(name: str, data_dir: str | None):
    return load_dataset(name, data_dir)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this package runs from, if it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def resolve_crop(crop, side: int) -> int | None:
    """``auto``: the paper's 32 -> 28 centre crop for 32x32 images, none otherwise."""
    if crop == "auto":
        return 28 if side == 32 else None
    if crop == "none":
        return None
    if crop > side:
        raise UserError(f"--crop {crop} is larger than the {side}x{side} images; use at most {side} or --crop none")
    return crop


@dataclass
class Prepared:
    data: TrainData
    dataset: object  # the (subset) Dataset before randomization
    input_shape: tuple[int, int, int]
    num_classes: int
    replaced_fraction: float
    changed_fraction: float


def prepare(spec: RunSpec, device: torch.device) -> Prepared:
    """Load, subset, randomize (once, from the run's seed) and preprocess the data onto ``device``."""
    ds = _load(spec.dataset, spec.data_dir)
    ds = subset(ds, spec.train_size, spec.test_size, generator(spec.seed, "subset"))
    r = randomize(spec.randomize, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes,
                  generator(spec.seed, "randomize"), p=spec.p, test_labels=spec.test_labels,
                  test_inputs=spec.test_inputs)
    crop = resolve_crop(spec.crop, ds.x_train.shape[-1])
    std = spec.preprocess == "standard"

    def tensor(a, dtype=torch.float32):
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    raw_train = tensor(r.x_train)
    data = TrainData(
        x_train=preprocess(raw_train, crop, std), y_train=tensor(r.y_train, torch.long),
        x_test=preprocess(tensor(r.x_test), crop, std), y_test=tensor(r.y_test, torch.long),
        y_train_true=tensor(r.y_train_true, torch.long), changed=tensor(r.changed, torch.bool),
        x_train_raw=raw_train if spec.augment else None, crop=crop, standardize=std)
    return Prepared(data, ds, tuple(data.x_train.shape[1:]), ds.num_classes,
                    float(r.replaced.mean()), float(r.changed.mean()))


def build_model(spec: RunSpec, input_shape, num_classes: int) -> torch.nn.Module:
    """The spec's model, initialized from the run's own seed stream."""
    options = {}
    if spec.hidden is not None:
        options["hidden"] = spec.hidden
    if spec.width != 1.0:
        options["width"] = spec.width
    if spec.dropout:
        options["dropout"] = spec.dropout
    torch.manual_seed(torch_seed(spec.seed, "init"))
    return build(spec.model, input_shape, num_classes, **options)


def train_config(spec: RunSpec) -> TrainConfig:
    return TrainConfig(
        lr=spec.resolved_lr, lr_decay=spec.lr_decay, momentum=spec.momentum, weight_decay=spec.weight_decay,
        batch_size=spec.batch_size, epochs=spec.epochs, max_steps=spec.max_steps, augment=spec.augment,
        eval_every=spec.eval_every, fit_threshold=spec.fit_threshold, stop_on_fit=spec.stop_on_fit,
        seed=spec.seed)


def _warn(msg: str) -> None:
    print(f"rethink: {msg}", file=sys.stderr)


def run(
    spec: RunSpec | dict,
    store: str | Store | None = DEFAULT_STORE,
    *,
    force: bool = False,
    checkpoint_dir: str | None = None,
    checkpoint_interval: float | None = 60.0,
    on_progress=None,
) -> RunResult:
    """Run one spec (a :class:`RunSpec` or a dict of its fields) and record it in ``store``.

    ``store=None`` runs without recording (and without checkpoints). Checkpoints go to
    ``checkpoint_dir`` (default: ``checkpoints/`` beside the store) at the end of an epoch once
    ``checkpoint_interval`` seconds have passed since the last (0: every epoch; None: never).
    Returns a :class:`RunResult`; raises KeyboardInterrupt after recording an interrupted run.
    """
    spec = spec if isinstance(spec, RunSpec) else from_dict(spec)
    run_id = spec.run_id
    db = store if isinstance(store, Store) or store is None else Store(store)
    device = resolve_device(spec.device)
    torch.set_flush_denormal(True)
    prepared = prepare(spec, device)
    checksum = prepared.dataset.checksum
    previous = db.get_run(run_id) if db else None
    if previous and previous["status"] in ("fitted", "budget", "diverged") and not force:
        changed = [f"{what} {old} -> {new}" for what, old, new in (
            ("package version", previous["package_version"], __version__),
            ("git commit", previous["git_commit"], git_commit()),
            ("data checksum", previous["data_checksum"], checksum)) if old != new]
        if changed:
            _warn(f"run {run_id} was stored with a different {', '.join(changed)}; pass --force to run it again")
        return RunResult(run_id, previous["status"], spec, previous["summary"], db.evals(run_id),
                         db.step_losses(run_id), cached=True)

    model = build_model(spec, prepared.input_shape, prepared.num_classes).to(device)
    n_params = num_params(model)
    ckpt_path = resume = None
    if db is not None and checkpoint_interval is not None:
        folder = checkpoint_dir or os.path.join(os.path.dirname(os.path.abspath(db.path)), "checkpoints")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create checkpoint folder {folder} ({e.strerror}); pass --checkpoint-dir with a writable path") from None
        ckpt_path = os.path.join(folder, f"{run_id}.pt")
        if os.path.exists(ckpt_path) and not force and previous is not None:
            resume = torch.load(ckpt_path, map_location=device, weights_only=False)
            if resume.get("run_id") != run_id or resume.get("data_checksum") != checksum:
                resume = None
            else:
                _warn(f"resuming run {run_id} from its checkpoint after epoch {resume['epoch']}")
    if db is not None:
        db.start_run(run_id, spec.to_dict(), package_version=__version__, git_commit=git_commit(),
                     data_checksum=checksum, device=str(device), num_params=n_params)
    extra = {"run_id": run_id, "data_checksum": checksum}
    result = train(model, prepared.data, train_config(spec), checkpoint_path=ckpt_path, resume=resume,
                   on_progress=on_progress, checkpoint_extra=extra,
                   checkpoint_interval=checkpoint_interval or 0.0)
    last = result.evals[-1] if result.evals else {}
    summary = {
        **{k: last.get(k) for k in ("train_loss", "train_acc", "test_loss", "test_acc",
                                    "corrupted_acc_noisy", "corrupted_acc_true", "clean_acc")},
        "best_test_acc": max((e["test_acc"] for e in result.evals), default=None),
        "time_to_fit": result.time_to_fit, "steps": result.steps, "epochs": result.epochs,
        "train_seconds": result.train_seconds, "eval_seconds": result.eval_seconds,
        "num_params": n_params, "n_train": len(prepared.data.y_train), "n_test": len(prepared.data.y_test),
        "num_classes": prepared.num_classes, "input_shape": list(prepared.input_shape),
        "replaced_fraction": prepared.replaced_fraction, "changed_fraction": prepared.changed_fraction,
        "lr": spec.resolved_lr, "device": str(device),
    }
    if db is not None:
        db.finish_run(run_id, result.status, summary, result.evals, result.step_losses)
    out = RunResult(run_id, result.status, spec, summary, result.evals, result.step_losses)
    if result.status == "interrupted":
        raise KeyboardInterrupt(out)
    return out
