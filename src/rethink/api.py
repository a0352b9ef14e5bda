"""The public Python API: ``rethink.run(spec)`` runs one randomization test end to end.

spec -> data source -> subset -> randomization (drawn once) -> preprocessing -> model -> engine
-> store. A spec whose run already finished in the store is not run again (unless ``force``);
an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from . import distributed
from . import tensorboard as tb
from .data import load_dataset, subset
from .data.dataset import binarize
from .data.randomize import randomize
from .data.transforms import preprocess
from .errors import UserError, make_folder
from .models import build, num_params
from .seeding import generator, torch_seed
from .spec import FIELD_NAMES, RunSpec, from_dict
from .store import METRICS, Store
from .train.engine import TrainConfig, TrainData, train
from .version import __version__

DEFAULT_STORE = os.path.join("runs", "rethink.sqlite")
FINISHED = ("fitted", "converged", "budget", "diverged")


@dataclass
class RunResult:
    run_id: str
    status: str
    spec: RunSpec
    summary: dict
    evals: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    cached: bool = False  # True when the finished run was read back from the store
    measures: dict = field(default_factory=dict)  # stored measures, where a recipe asks for them
    examples: list[dict] = field(default_factory=list)  # per-example records (track_examples), until stored

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
        keys = (
            "num_params",
            "train_acc",
            "test_acc",
            "time_to_fit",
            "train_loss",
            "test_loss",
            "steps",
            "epochs",
            "train_seconds",
            "best_test_acc",
            "n_train",
            "n_test",
            "device",
            "models_in_batch",
            "compiled",
            "replaced_fraction",
            "changed_fraction",
            "corrupted_acc_noisy",
            "corrupted_acc_true",
            "clean_acc",
        )
        return {
            "run_id": self.run_id,
            "status": self.status,
            **{k: self.summary.get(k) for k in keys},
            "cached": self.cached,
            "spec": self.spec.to_dict(),
        }


@functools.lru_cache(maxsize=4)
def cached_dataset(name: str, data_dir: str | None):
    """:func:`rethink.data.load_dataset`, kept for the next runs of the same data in this process."""
    return load_dataset(name, data_dir)


def _source(spec: RunSpec):
    """The spec's dataset: loaded into memory, or with ``stream`` an index of its image files."""
    if spec.stream:
        from .data.streaming import index_folder

        return index_folder(spec.dataset, spec.data_dir)
    return cached_dataset(spec.dataset, spec.data_dir)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this package runs from, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__), capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def set_deterministic(device: torch.device) -> None:
    """With ``RETHINK_DETERMINISTIC=1``, make CUDA runs repeat bitwise (CPU runs always do): only
    deterministic kernels, no cuDNN autotuning, and the fixed cuBLAS workspace that requires.
    Without it, CUDA runs let cuDNN autotune (pick the fastest convolution kernels)."""
    if device.type != "cuda":
        return
    if os.environ.get("RETHINK_DETERMINISTIC", "0") in ("", "0"):
        torch.backends.cudnn.benchmark = True
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)


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
    ds = _source(spec)
    ds = subset(ds, spec.train_size, spec.test_size, generator(spec.seed, "subset"), training=True)
    if spec.binary:  # after the subset: the same images as the run without it
        ds = binarize(ds)
    r = randomize(
        spec.randomize,
        ds.x_train,
        ds.y_train,
        ds.x_test,
        ds.y_test,
        ds.num_classes,
        generator(spec.seed, "randomize"),
        p=spec.p,
        test_labels=spec.test_labels,
        test_inputs=spec.test_inputs,
    )
    if spec.stream:  # images are decoded as they are read; only file lists and labels are held
        from .data.streaming import streaming_data

        data = streaming_data(
            ds,
            r,
            device,
            image_size=spec.image_size,
            standardize_images=spec.preprocess == "standard",
            workers=spec.loader_workers,
            eval_batch_size=spec.batch_size,
        )
        return Prepared(
            data,
            ds,
            (3, spec.image_size, spec.image_size),
            ds.num_classes,
            float(r.replaced.mean()),
            float(r.changed.mean()),
        )
    crop = resolve_crop(spec.crop, ds.x_train.shape[-1])
    std = spec.preprocess == "standard"

    def tensor(a, dtype=torch.float32):
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    raw_train = tensor(r.x_train)
    data = TrainData(
        x_train=preprocess(raw_train, crop, std),
        y_train=tensor(r.y_train, torch.long),
        x_test=preprocess(tensor(r.x_test), crop, std),
        y_test=tensor(r.y_test, torch.long),
        y_train_true=tensor(r.y_train_true, torch.long),
        changed=tensor(r.changed, torch.bool),
        x_train_raw=raw_train if spec.augment else None,
        crop=crop,
        standardize=std,
    )
    return Prepared(
        data, ds, tuple(data.x_train.shape[1:]), ds.num_classes, float(r.replaced.mean()), float(r.changed.mean())
    )


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
    """The engine's settings: the spec's fields of the same names, with the learning rate resolved."""
    shared = {
        f.name: getattr(spec, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name in FIELD_NAMES and f.name != "lr"
    }
    return TrainConfig(lr=spec.resolved_lr, **shared)


def warn(msg: str) -> None:
    """One ``rethink:`` line on stderr: something the user should know that does not stop the run."""
    print(f"rethink: {msg}", file=sys.stderr)


def load_result(db: Store, run_id: str) -> RunResult | None:
    """A stored run as a :class:`RunResult` (None if the store does not have it)."""
    row = db.get_run(run_id)
    if row is None:
        return None
    return RunResult(
        run_id,
        row["status"],
        from_dict(row["spec"]),
        row["summary"] or {},
        db.evals(run_id),
        db.step_losses(run_id),
        cached=True,
    )


def lookup(db: Store | None, spec: RunSpec) -> RunResult | None:
    """The stored result of a finished run of ``spec``, or None. Warns when it was stored by
    another package version or git commit, or from other data."""
    previous = db.get_run(spec.run_id) if db is not None else None
    if not previous or previous["status"] not in FINISHED:
        return None
    checksum = _source(spec).checksum
    changed = [
        f"{what} {old} -> {new}"
        for what, old, new in (
            ("package version", previous["package_version"], __version__),
            ("git commit", previous["git_commit"], git_commit()),
            ("data checksum", previous["data_checksum"], checksum),
        )
        if old != new
    ]
    if changed:
        warn(f"run {spec.run_id} was stored with a different {', '.join(changed)}; pass --force to run it again")
    return load_result(db, spec.run_id)


def checkpoint_dir_of(store_path: str) -> str:
    """A store's own checkpoint folder: ``NAME.checkpoints/`` beside the store file ``NAME.sqlite``."""
    return os.path.splitext(os.path.abspath(store_path))[0] + ".checkpoints"


def checkpoint_file(db: Store, spec: RunSpec, checkpoint_dir: str | None) -> str:
    """Where ``spec``'s checkpoint lives: ``RUN_ID.pt`` in ``checkpoint_dir`` or the store's own
    folder (:func:`checkpoint_dir_of`). A checkpoint of the run that another store left in a shared
    ``checkpoint_dir`` is kept: this store's goes beside it, named with this store's id."""
    folder = checkpoint_dir or checkpoint_dir_of(db.path)
    make_folder(folder, "checkpoint folder", "--checkpoint-dir")
    path = os.path.join(folder, f"{spec.run_id}.pt")
    if os.path.exists(path) and _store_of(path) != db.store_id:
        own = os.path.join(folder, f"{spec.run_id}.{db.store_id}.pt")
        if not os.path.exists(own):
            warn(
                f"checkpoint {path} belongs to another store; run {spec.run_id} starts afresh and checkpoints to {own}"
            )
        return own
    return path


def _store_of(checkpoint: str) -> str | None:
    """The id of the store a checkpoint belongs to (its tensors are mapped, not read)."""
    return read_checkpoint(checkpoint, "cpu", mmap=True).get("store_id")


def read_checkpoint(path: str, device: torch.device | str, mmap: bool = False) -> dict:
    """A checkpoint's contents, unpickled by torch's ``weights_only`` loader, which builds tensors,
    numbers, strings and containers only: a crafted file cannot run code here. Anything else (or a
    file that is no checkpoint) is a :class:`UserError`."""
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
        raise UserError(
            f"checkpoint {path} is refused: it holds something other than tensors, numbers and strings, "
            f"which could run code when loaded ({reason.rstrip('.')}); rethink did not write it: delete it "
            "and run again (the run starts afresh)"
        ) from None


def execute(
    spec: RunSpec,
    checkpoint_path: str | None = None,
    *,
    checkpoint_interval: float = 60.0,
    resume: bool = True,
    on_progress=None,
    on_start=None,
    compile: bool = False,
    store_id: str | None = None,
    tensorboard: str | None = None,
) -> RunResult:
    """Train one spec, with no store: load and randomize the data, build the model, train.

    With ``checkpoint_path``, a matching checkpoint there (same store id, run id and data, of a run
    that did not finish) is resumed unless ``resume`` is False, and new checkpoints (which record
    ``store_id``, the store the run belongs to) are written there. ``on_start()`` is called once the
    data and model are ready, just before training (bad input has been reported by then). An
    interrupted run (Ctrl-C) comes back with status "interrupted". Safe to call in a worker process.
    ``compile`` trains through ``torch.compile`` (same arithmetic up to float rounding).
    ``tensorboard``: a folder for the run's live scalars (:mod:`rethink.tensorboard`).
    """
    device = distributed.setup(resolve_device(spec.device))  # under torchrun: join the ranks
    set_deterministic(device)
    prepared = prepare(spec, device)
    distributed.check_batches(len(prepared.data.y_train), spec.batch_size)
    checksum = prepared.dataset.checksum
    model = build_model(spec, prepared.input_shape, prepared.num_classes).to(device)
    state = load_checkpoint(checkpoint_path, spec, checksum, device, store_id) if resume else None
    if on_start:
        on_start()
    cfg = dataclasses.replace(train_config(spec), compile=compile)
    board = tb.open_board(tensorboard, spec, state) if distributed.rank() == 0 else None
    try:
        result = train(
            model,
            prepared.data,
            cfg,
            checkpoint_path=checkpoint_path,
            resume=state,
            on_progress=on_progress,
            checkpoint_extra={"run_id": spec.run_id, "data_checksum": checksum, "store_id": store_id},
            checkpoint_interval=checkpoint_interval,
            board=board,
        )
    finally:
        if board is not None:
            board.close()
    return summarize(spec, prepared, model, cfg, result, device)


def load_checkpoint(
    path: str | None, spec: RunSpec, checksum: str, device: torch.device, store_id: str | None = None
) -> dict | None:
    """The checkpoint at ``path`` if it is one to resume: of this store, this run and this data,
    written before the run ended. A finished run's last checkpoint is not: resuming it would copy
    its end (status, time to fit) instead of training."""
    if not path or not os.path.exists(path):
        return None
    state = read_checkpoint(path, device)
    if (state.get("store_id"), state.get("run_id"), state.get("data_checksum")) != (
        store_id,
        spec.run_id,
        checksum,
    ) or state.get("finished"):
        return None
    warn(f"resuming run {spec.run_id} from its checkpoint at step {state['result']['steps']}")
    return state


def summarize(
    spec: RunSpec,
    prepared: Prepared,
    model: torch.nn.Module,
    cfg: TrainConfig,
    result,
    device: torch.device,
    models_in_batch: int = 1,
) -> RunResult:
    """A trained run's :class:`RunResult`: the engine's result and a summary of the run.
    ``models_in_batch``: how many models trained together in one batch (1: alone)."""
    checksum = prepared.dataset.checksum
    last = result.evals[-1] if result.evals else {}
    summary = {
        **{k: last.get(k) for k in METRICS},
        "best_test_acc": max((e["test_acc"] for e in result.evals), default=None),
        "time_to_fit": result.time_to_fit,
        "steps": result.steps,
        "epochs": result.epochs,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "checkpoint_step": result.checkpoint_step,
        "num_params": num_params(model),
        "n_train": len(prepared.data.y_train),
        "n_test": len(prepared.data.y_test),
        "num_classes": prepared.num_classes,
        "input_shape": list(prepared.input_shape),
        "replaced_fraction": prepared.replaced_fraction,
        "changed_fraction": prepared.changed_fraction,
        "lr": spec.resolved_lr,
        "device": str(device),
        "data_checksum": checksum,
        "models_in_batch": models_in_batch,
        "compiled": cfg.compile,
        "precision": "bf16 autocast" if cfg.bf16 and device.type == "cuda" else "float32",
        **({"test_top5": last["test_top5"]} if "test_top5" in last else {}),
    }
    return RunResult(
        spec.run_id, result.status, spec, summary, result.evals, result.step_losses, examples=result.examples
    )


def start(db: Store, specs: RunSpec | list[RunSpec], status: str = "running") -> None:
    """Mark the specs' runs as running (or queued) in the store, owned by this process; refuses
    (UserError) if another live process on this machine trains one of them."""
    specs = [specs] if isinstance(specs, RunSpec) else specs
    elsewhere = db.start_runs(
        [(s.run_id, s.to_dict()) for s in specs], status=status, package_version=__version__, git_commit=git_commit()
    )
    for o in elsewhere:
        warn(
            f"run {o['run_id']} is marked running by process {o['owner_pid']} on {o['owner_host']}, which this "
            "machine cannot check; if that process still runs, both train it"
        )


def record(db: Store, result: RunResult) -> None:
    """Write a finished (or interrupted) run's status, summary and metrics in one transaction."""
    s = result.summary
    db.finish_run(
        result.run_id,
        result.status,
        s,
        result.evals,
        result.step_losses,
        result.examples,
        data_checksum=s.get("data_checksum"),
        device=s.get("device"),
        num_params=s.get("num_params"),
    )


def run(
    spec: RunSpec | dict,
    store: str | Store | None = DEFAULT_STORE,
    *,
    force: bool = False,
    checkpoint_dir: str | None = None,
    checkpoint_interval: float | None = 60.0,
    on_progress=None,
    compile: bool = False,
    tensorboard: str | None = None,
) -> RunResult:
    """Run one spec (a :class:`RunSpec` or a dict of its fields) and record it in ``store``.

    A finished run of the same spec is read back from the store instead (``force`` runs it
    again). ``store=None`` runs without recording or checkpoints. Checkpoints go to
    ``checkpoint_dir`` (default: the store's own ``NAME.checkpoints/`` beside it) at the end of an epoch once
    ``checkpoint_interval`` seconds have passed since the last (0: every epoch; None: never); an
    interrupted run resumes from its checkpoint. ``compile`` trains through ``torch.compile``.
    ``tensorboard``: a folder for the run's live scalars (a run read back from the store writes none).
    Returns a :class:`RunResult`; raises KeyboardInterrupt after recording an interrupted run.
    """
    spec = spec if isinstance(spec, RunSpec) else from_dict(spec)
    if tensorboard is not None:
        tb.require()  # before any training
    if isinstance(store, (str, os.PathLike)):  # a store this call opens, it closes (its WAL files go with it)
        with contextlib.closing(Store(store)) as db:
            return run(
                spec,
                db,
                force=force,
                checkpoint_dir=checkpoint_dir,
                checkpoint_interval=checkpoint_interval,
                on_progress=on_progress,
                compile=compile,
                tensorboard=tensorboard,
            )
    db = store
    if not force and (stored := lookup(db, spec)) is not None:
        return stored
    ckpt = checkpoint_file(db, spec, checkpoint_dir) if db is not None and checkpoint_interval is not None else None
    writer = db if distributed.rank() == 0 else None  # under torchrun, rank 0 alone writes the store
    result = execute(
        spec,
        ckpt,
        checkpoint_interval=checkpoint_interval or 0.0,
        resume=not force,
        on_progress=on_progress,
        on_start=(lambda: start(writer, spec)) if writer is not None else None,
        compile=compile,
        store_id=db.store_id if db is not None else None,
        tensorboard=tensorboard,
    )
    if writer is not None:
        record(writer, result)
    if result.status == "interrupted":
        raise KeyboardInterrupt(result)
    return result
