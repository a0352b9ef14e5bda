"""The training engine: trains one model on tensors that live on the training device.

Reads top to bottom like a plain loop, but keeps the data on the device, indexes batches with a
permutation, augments batches on the device and never waits for the device inside an epoch
(losses stay on the device until the epoch ends or an evaluation needs them). It knows nothing of
specs' files, sweeps or the store: it gets tensors and settings, and returns metrics.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data.transforms import augment, standardize
from ..distributed import Shard
from ..seeding import torch_seed
from . import threads
from .fused_mlp import fused_step

# Evaluation batches (measured, benchmarks/engine_choices.py): large ones for models without
# convolutions; small ones for convolutional models, whose activations then stay in cache.
EVAL_BATCH = 2048
CONV_EVAL_BATCH = 128
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
# Plain MLPs train with the fused step of rethink.train.fused_mlp (measured faster,
# benchmarks/train_speed.py), unless compiled, under autocast or data-parallel.
FUSED_MLP = True
_RESUMED = ("status", "evals", "step_losses", "time_to_fit", "steps", "train_seconds", "eval_seconds")


@dataclass
class TrainData:
    """Tensors on the training device.

    ``x_train``/``x_test`` are preprocessed (fixed evaluation copies). ``x_train_raw`` holds the
    uncropped, unstandardized training images, needed only when augmenting.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    y_train_true: torch.Tensor
    changed: torch.Tensor  # bool: training label differs from the true one
    x_train_raw: torch.Tensor | None = None
    crop: int | None = None
    standardize: bool = True

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def batches(self, perm, batch_size: int, kinds: tuple[str, ...], aug_gen, shard: Shard, first: int = 0,
                aug_state: torch.Tensor | None = None):
        """For every global batch of ``perm`` from the ``first``-th on: this rank's images (augmented
        when ``kinds``) and labels, and the global batch's size. ``aug_gen`` is the epoch's fresh
        augmentation stream; ``aug_state``, when resuming inside an epoch, its state after the first
        ``first`` batches (a checkpoint's). A data source streaming from disk has the same
        ``batches`` and ``evaluate`` (see :mod:`rethink.data.streaming`)."""
        if aug_state is not None:
            aug_gen.set_state(aug_state.cpu())
        for start in range(first * batch_size, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            if kinds:  # augment the whole global batch, so that every rank draws the same numbers
                xb = shard.take(augment(self.x_train_raw[idx], kinds, self.crop, aug_gen))
                xb = standardize(xb) if self.standardize else xb
            else:  # index_select: measured 3x faster than indexing with [] here
                xb = self.x_train.index_select(0, shard.take(idx))
            yield xb, self.y_train.index_select(0, shard.take(idx)), len(idx)

    def evaluate(self, model: torch.nn.Module, shard: Shard) -> dict:
        """:func:`evaluate` on rank 0, its numbers shared with every rank."""
        return shard.broadcast(evaluate(model, self) if shard.rank == 0 else None)


@dataclass
class TrainConfig:
    lr: float
    lr_decay: float = 0.95
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 100
    max_steps: int | None = None
    augment: tuple[str, ...] = ()
    eval_every: int | None = None  # steps; None: at the end of every epoch
    fit_threshold: float = 1.0
    stop_on_fit: bool = True
    stop_loss: float | None = None
    seed: int = 0
    bf16: bool = True  # on CUDA: bf16 autocast, float32 weights (CPU always trains in float32)
    compile: bool = False  # torch.compile the training step's model


@dataclass
class TrainResult:
    status: str  # fitted | converged | budget | diverged | interrupted
    evals: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    time_to_fit: dict | None = None
    steps: int = 0
    epochs: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    checkpoint_step: int | None = None  # the step of the last checkpoint written or resumed from


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on weights (tensors of 2+ dims), not biases or BN shifts."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=True)


def speed_settings() -> None:
    """Process-wide settings the engines train under (measured, benchmarks/engine_choices.py):
    denormal numbers flushed to zero (products of denormals are ~100x slower on these CPUs), and
    glibc's malloc keeping freed memory for reuse, as PyTorch's CUDA allocator does (each step's
    tensors then reuse warm pages instead of faulting fresh ones in: 5-15% faster MLP steps)."""
    torch.set_flush_denormal(True)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


def channels_last(model: torch.nn.Module) -> bool:
    """Whether ``model`` trains in channels_last memory format: convolutional models do (measured
    faster on CPU for the paper's AlexNet and Inception, benchmarks/engine_choices.py)."""
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def eval_batch(model: torch.nn.Module) -> int:
    return CONV_EVAL_BATCH if channels_last(model) else EVAL_BATCH


def uses_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast on CUDA (unless ``cfg.bf16`` is off); float32 elsewhere."""
    return cfg.bf16 and device.type == "cuda"


def autocast(cfg: TrainConfig, device: torch.device):
    return torch.autocast("cuda", torch.bfloat16) if uses_bf16(cfg, device) else contextlib.nullcontext()


@torch.inference_mode()
def predict(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy and predicted classes over a whole set, in eval mode and batches of
    :func:`eval_batch` examples."""
    was_training = model.training
    model.eval()
    size = eval_batch(model)
    total, preds = torch.zeros((), device=x.device, dtype=torch.float64), []
    for i in range(0, len(x), size):
        logits = model(x[i : i + size]).float()
        total += F.cross_entropy(logits, y[i : i + size], reduction="sum").double()
        preds.append(logits.argmax(1))
    model.train(was_training)
    return float(total) / max(len(x), 1), torch.cat(preds)


def evaluate(model: torch.nn.Module, data: TrainData) -> dict:
    """Loss and accuracy on the full training set (its training labels) and the test set; on
    the corrupted part against its noisy and its true labels, and on the clean part."""
    train_loss, p_train = predict(model, data.x_train, data.y_train)
    test_loss, p_test = predict(model, data.x_test, data.y_test)
    return metrics(data, train_loss, p_train, test_loss, p_test)


def metrics(data: TrainData, train_loss: float, p_train: torch.Tensor, test_loss: float, p_test: torch.Tensor) -> dict:
    """An evaluation's numbers from the mean losses and predicted classes on both sets."""
    one = [t.unsqueeze(0) for t in (data.y_train, data.y_train_true, data.changed, p_train, data.y_test, p_test)]
    return stacked_metrics(*one, [train_loss], [test_loss])[0]


def stacked_metrics(y_train, y_true, changed, p_train, y_test, p_test, train_loss: list, test_loss: list) -> list[dict]:
    """:func:`metrics` for K models at once: every tensor has a leading dimension of K (their
    training labels, true labels, changed masks and predictions; test labels and predictions),
    and all K rows are read back from the device in one transfer."""
    correct, correct_true, test_correct = p_train == y_train, p_train == y_true, p_test == y_test
    counts = torch.stack([correct.sum(1), (correct & changed).sum(1), (correct_true & changed).sum(1),
                          (correct & ~changed).sum(1), changed.sum(1), test_correct.sum(1)], 1).tolist()
    n, n_test = y_train.shape[1], y_test.shape[1]

    def ratio(a, b):
        return a / b if b else None

    return [{"train_loss": tl, "train_acc": ratio(ok, n), "test_loss": vl, "test_acc": ratio(test_ok, n_test),
             "corrupted_acc_noisy": ratio(noisy, k), "corrupted_acc_true": ratio(true, k),
             "clean_acc": ratio(clean, n - k)}
            for (ok, noisy, true, clean, k, test_ok), tl, vl in zip(counts, train_loss, test_loss)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def save_checkpoint(path: str, state: dict) -> None:
    """Write atomically: to a temporary file, fsync, then rename over the old checkpoint."""
    save_checkpoints([(path, state)])


def save_checkpoints(items: list[tuple[str, dict]]) -> None:
    """:func:`save_checkpoint` for several runs: every file is written and fsynced before the first
    rename, so a crash leaves them all at the same epoch (unless it falls between the renames)."""
    written = []
    for path, state in items:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        written.append((tmp, path))
    for tmp, path in written:
        os.replace(tmp, path)


def position(epoch: int, batches_done: int, steps_per_epoch: int) -> tuple[int, int]:
    """A checkpoint's place in training: (epoch, batches done in it); the end of an epoch is the
    start of the next, (epoch + 1, 0), the place every checkpoint of older versions names."""
    return (epoch + 1, 0) if batches_done >= steps_per_epoch else (epoch, batches_done)


def checkpoint_state(model_state: dict, optimizer_state: dict, res: TrainResult, place: tuple[int, int],
                     aug_gen, device: torch.device, finished: bool, extra: dict | None) -> dict:
    """What a checkpoint holds, in either engine: weights, optimizer (momentum), results so far
    (this epoch's losses included), its place (``epoch``, ``batch``) and, inside an epoch, the
    random streams' states there; ``finished``: the run ended (no resuming it)."""
    epoch, batch = place
    return {**(extra or {}), "epoch": epoch, "batch": batch, "finished": finished, "model": model_state,
            "optimizer": optimizer_state, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "aug_rng": aug_gen.get_state() if batch and aug_gen is not None else None,
            "result": {k: getattr(res, k) for k in _RESUMED}}


def resume_place(resume: dict | None) -> tuple[int, int]:
    """Where a checkpoint resumes: (epoch, batches done in it); checkpoints without ``batch``
    (older versions) were all written at an epoch's end."""
    return (0, 0) if resume is None else (resume["epoch"], resume.get("batch", 0))


_stop_signal: int | None = None  # the signal that asked the training under way to stop


def stop_requested() -> int | None:
    """The signal (SIGINT or SIGTERM) that asked the last training to stop, or None."""
    return _stop_signal


@contextlib.contextmanager
def stop_on_signals(enabled: bool = True):
    """For the duration of training, SIGINT and SIGTERM only ask it to stop: the loop reads the
    request after each step, checkpoints where it is and ends as interrupted, so that no
    KeyboardInterrupt lands inside an optimizer step. A second signal raises KeyboardInterrupt at
    once. Ignored signals stay ignored; off the main thread (no handlers there) nothing changes."""
    global _stop_signal
    _stop_signal = None
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        global _stop_signal
        if _stop_signal is not None:
            raise KeyboardInterrupt
        _stop_signal = signum

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    old = {sig: h for sig, h in old.items() if h not in (signal.SIG_IGN, None)}
    for sig in old:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def train(
    model: torch.nn.Module,
    data: TrainData,
    cfg: TrainConfig,
    *,
    checkpoint_path: str | None = None,
    resume: dict | None = None,
    on_progress=None,
    checkpoint_extra: dict | None = None,
    checkpoint_interval: float = 60.0,
) -> TrainResult:
    """Train ``model`` with SGD until it fits, its budget ends, or its loss diverges.

    ``resume`` is a state written by an earlier call's checkpoint (same model, data and config);
    training continues from its place (an epoch's end, or a step inside an epoch) with the same
    random streams, so the result equals an uninterrupted run. ``on_progress(step, total_steps,
    last_eval)`` is called after evaluations. ``checkpoint_extra`` is stored in every checkpoint
    (e.g. the run id, to check it on resume). Checkpoints are written at the end of an epoch once
    ``checkpoint_interval`` seconds have passed since the last one (0: every epoch), at the end of
    training (marked ``finished``), and when SIGINT or SIGTERM stops it (after the current step,
    see :func:`stop_on_signals`; the result is then "interrupted"). Their time counts neither as
    training nor as evaluation time.
    """
    speed_settings()
    device = data.device
    shard = Shard.current()  # this rank's part under torchrun; the whole batch otherwise
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    eval_every = cfg.eval_every or steps_per_epoch
    if channels_last(model):
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    res = TrainResult(status="budget")
    start_epoch, start_batch = resume_place(resume)
    torch.manual_seed(torch_seed(cfg.seed, "dropout"))  # dropout draws from the global stream
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["torch_rng"].cpu())
        if device.type == "cuda" and resume.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resume["cuda_rng"].cpu(), device)
        for k in _RESUMED:
            setattr(res, k, resume["result"][k])
        res.checkpoint_step = res.steps
    net = shard.wrap(model, device)
    if cfg.compile:
        net = torch.compile(net, dynamic=False)  # an epoch's last, smaller batch: its own static graph
    fused = None
    if FUSED_MLP and not cfg.compile and shard.world == 1 and not uses_bf16(cfg, device):
        fused = fused_step(model, opt)
    model.train()
    step = res.steps

    def do_eval():
        nonlocal segment_start
        _sync(device)
        t0 = time.perf_counter()
        res.train_seconds += t0 - segment_start
        with autocast(cfg, device):
            row = {"step": step, "epoch": step / steps_per_epoch, "seconds": res.train_seconds,
                   "lr": opt.param_groups[0]["lr"], **data.evaluate(model, shard)}
        record_eval(res, cfg, row, steps_per_epoch, eval_every)
        segment_start = time.perf_counter()
        res.eval_seconds += segment_start - t0
        if on_progress:
            on_progress(step, total_steps, row)
        return row

    def checkpoint(finished: bool):
        nonlocal segment_start, last_ckpt
        if not checkpoint_path or shard.rank != 0:
            return
        _sync(device)
        t0 = time.perf_counter()
        res.train_seconds += t0 - segment_start
        save_checkpoint(checkpoint_path, checkpoint_state(
            model.state_dict(), opt.state_dict(), res, position(epoch, batches_done, steps_per_epoch), aug_gen,
            device, finished, checkpoint_extra))
        res.checkpoint_step = step
        segment_start = last_ckpt = time.perf_counter()

    epoch, batches_done, aug_gen = start_epoch, start_batch, None  # where training stands
    # under torchrun the ranks would have to agree on the step to stop at: Ctrl-C ends them at once
    with threads.registered(), stop_on_signals(shard.world == 1):
        segment_start = last_ckpt = time.perf_counter()  # training time accrues from here to the next pause
        try:
            if step == 0:
                do_eval()
            for epoch in range(start_epoch, cfg.epochs):
                if step >= total_steps or _done(res, cfg):
                    break
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * cfg.lr_decay**epoch
                order = torch.Generator().manual_seed(torch_seed(cfg.seed, "order", epoch))
                perm = torch.randperm(n, generator=order).to(device)
                if cfg.augment:
                    aug_gen = torch.Generator(device=device).manual_seed(torch_seed(cfg.seed, "augment", epoch))
                first = start_batch if epoch == start_epoch else 0  # resumed inside this epoch
                batches = data.batches(perm, cfg.batch_size, cfg.augment, aug_gen, shard, first,
                                       resume.get("aug_rng") if first else None)
                if shard.world > 1:  # each rank its own dropout masks, reproducible after a resume
                    torch.manual_seed(torch_seed(cfg.seed, "dropout", epoch, shard.rank))
                losses = torch.empty(steps_per_epoch, device=device)
                batches_done = first
                for b in range(first, steps_per_epoch):
                    if step >= total_steps:
                        break
                    xb, yb, count = next(batches)
                    if fused is not None:
                        loss = fused(xb, yb)
                    else:
                        with autocast(cfg, device):
                            loss = shard.loss(net(xb), yb, count)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                    losses[b] = loss.detach()
                    step += 1
                    batches_done = b + 1
                    if step % eval_every == 0 or step == total_steps:
                        res.steps = step
                        if not shard.finite(losses[b]):  # the one sync, at evaluations only
                            break
                        do_eval()
                        if _done(res, cfg):
                            break
                    if _stop_signal is not None:
                        break
                epoch_losses = shard.mean(losses[first:batches_done]).tolist()  # the global batches' losses
                res.step_losses.extend(epoch_losses)
                res.steps = step
                if not all(math.isfinite(v) for v in epoch_losses):
                    res.status = "diverged"
                    break
                if step >= total_steps or _done(res, cfg):
                    break
                if _stop_signal is not None:
                    break
                if time.perf_counter() - last_ckpt >= checkpoint_interval:
                    checkpoint(finished=False)
        except KeyboardInterrupt:  # a second signal: no time to checkpoint
            res.status = "interrupted"
            return _finish(res, steps_per_epoch)
        stopped = _stop_signal is not None and res.status != "diverged" and step < total_steps and not _done(res, cfg)
        if stopped:
            if step > (res.checkpoint_step or 0):  # where training stands, unless a checkpoint has it already
                checkpoint(finished=False)
            res.status = "interrupted"
        else:
            if res.status not in ("diverged", "converged"):
                res.status = "fitted" if res.time_to_fit and cfg.stop_on_fit else "budget"
            checkpoint(finished=True)
    return _finish(res, steps_per_epoch)


def record_eval(res: TrainResult, cfg: TrainConfig, row: dict, steps_per_epoch: int, eval_every: int) -> None:
    """Append an evaluation row and apply the rules it can trigger: time to fit, converged."""
    res.evals.append(row)
    if res.time_to_fit is None and row["train_acc"] >= cfg.fit_threshold - 1e-12:
        res.time_to_fit = {"steps": row["step"], "epochs": row["step"] / steps_per_epoch,
                           "seconds": res.train_seconds, "resolution_steps": eval_every}
    if cfg.stop_loss is not None and row["train_loss"] <= cfg.stop_loss:
        res.status = "converged"


def _done(res: TrainResult, cfg: TrainConfig) -> bool:
    """Whether a stop rule has ended training: fitted (and stopping on fit) or converged."""
    return bool(res.time_to_fit and cfg.stop_on_fit) or res.status == "converged"


def _finish(res: TrainResult, steps_per_epoch: int) -> TrainResult:
    res.epochs = res.steps / steps_per_epoch
    return res
