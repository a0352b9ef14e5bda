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
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.transforms import augment, standardize
from ..distributed import Shard
from ..seeding import torch_seed
from . import threads
from .fused_mlp import fused_step
from .loop import Loop, Member, TrainConfig, TrainResult, param_groups, restored, stop_on_signals, stop_requested

__all__ = ["TrainConfig", "TrainData", "TrainResult", "evaluate", "speed_settings", "stop_requested", "train"]

# Evaluation batches (measured, benchmarks/engine_choices.py): large ones for models without
# convolutions; small ones for convolutional models, whose activations then stay in cache.
EVAL_BATCH = 2048
CONV_EVAL_BATCH = 128
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
# Plain MLPs train with the fused step of rethink.train.fused_mlp (measured faster,
# benchmarks/train_speed.py), unless compiled, under autocast or data-parallel.
FUSED_MLP = True


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

    def batches(
        self,
        perm,
        batch_size: int,
        kinds: tuple[str, ...],
        aug_gen,
        shard: Shard,
        first: int = 0,
        aug_state: torch.Tensor | None = None,
    ):
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

    def evaluate(self, model: torch.nn.Module, shard: Shard, track: bool = False) -> dict:
        """:func:`evaluate` on rank 0, its numbers shared with every rank."""
        return shard.broadcast(evaluate(model, self, track) if shard.rank == 0 else None)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay as :func:`rethink.train.loop.param_groups` assigns it."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(param_groups(params, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, fused=True)


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


def predict(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy and predicted classes over a whole set, in eval mode and batches of
    :func:`eval_batch` examples."""
    loss, preds, _ = predict_each(model, x, y, False)
    return loss, preds


@torch.inference_mode()
def predict_each(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, each: bool = True):
    """:func:`predict`, and with ``each`` also every example's cross-entropy (else None)."""
    was_training = model.training
    model.eval()
    size = eval_batch(model)
    total, losses, preds = torch.zeros((), device=x.device, dtype=torch.float64), [], []
    for i in range(0, len(x), size):
        logits = model(x[i : i + size]).float()
        total += F.cross_entropy(logits, y[i : i + size], reduction="sum").double()
        if each:
            losses.append(F.cross_entropy(logits, y[i : i + size], reduction="none"))
        preds.append(logits.argmax(1))
    model.train(was_training)
    return float(total) / max(len(x), 1), torch.cat(preds), torch.cat(losses) if each else None


def evaluate(model: torch.nn.Module, data: TrainData, track: bool = False) -> dict:
    """Loss and accuracy on the full training set (its training labels) and the test set; on
    the corrupted part against its noisy and its true labels, and on the clean part; with
    ``track``, also each training example's record (:func:`stacked_metrics`)."""
    train_loss, p_train, each = predict_each(model, data.x_train, data.y_train, track)
    test_loss, p_test = predict(model, data.x_test, data.y_test)
    return metrics(data, train_loss, p_train, test_loss, p_test, each)


def metrics(
    data: TrainData, train_loss: float, p_train: torch.Tensor, test_loss: float, p_test: torch.Tensor, each=None
) -> dict:
    """An evaluation's numbers from the mean losses and predicted classes on both sets."""
    one = [t.unsqueeze(0) for t in (data.y_train, data.y_train_true, data.changed, p_train, data.y_test, p_test)]
    return stacked_metrics(*one, [train_loss], [test_loss], None if each is None else each.unsqueeze(0))[0]


def example_record(correct: torch.Tensor, each: torch.Tensor) -> dict:
    """One model's record: which training examples it classifies as their training label (a
    bitset) and their losses (one byte each), :mod:`rethink.memorization.tracking`'s format."""
    from ..memorization.tracking import pack, pack_losses

    return {"correct": pack(correct.cpu().numpy()), "loss": pack_losses(each.float().cpu().numpy())}


def stacked_metrics(
    y_train, y_true, changed, p_train, y_test, p_test, train_loss: list, test_loss: list, each=None, tracked=None
) -> list[dict]:
    """:func:`metrics` for K models at once: every tensor has a leading dimension of K (their
    training labels, true labels, changed masks and predictions; test labels and predictions),
    and all K rows are read back from the device in one transfer. ``each`` (K x n per-example
    training losses): the rows of the models ``tracked`` (a list of K bools; all by default) get
    ``examples``, their :func:`example_record`."""
    correct, correct_true, test_correct = p_train == y_train, p_train == y_true, p_test == y_test
    counts = torch.stack(
        [
            correct.sum(1),
            (correct & changed).sum(1),
            (correct_true & changed).sum(1),
            (correct & ~changed).sum(1),
            changed.sum(1),
            test_correct.sum(1),
        ],
        1,
    ).tolist()
    n, n_test = y_train.shape[1], y_test.shape[1]

    def ratio(a, b):
        return a / b if b else None

    rows = [
        {
            "train_loss": tl,
            "train_acc": ratio(ok, n),
            "test_loss": vl,
            "test_acc": ratio(test_ok, n_test),
            "corrupted_acc_noisy": ratio(noisy, k),
            "corrupted_acc_true": ratio(true, k),
            "clean_acc": ratio(clean, n - k),
        }
        for (ok, noisy, true, clean, k, test_ok), tl, vl in zip(counts, train_loss, test_loss)
    ]
    if each is not None:
        for q, keep in enumerate(tracked or [True] * len(rows)):
            if keep:
                rows[q]["examples"] = example_record(correct[q], each[q])
    return rows


class _Solo:
    """One model's arithmetic for the loop: in place, data-parallel under torchrun, the fused step
    for plain MLPs, optionally compiled."""

    def __init__(self, m: Member, shard: Shard):
        model, cfg, device = m.model, m.cfg, m.data.device
        self.model, self.data, self.cfg, self.shard = model, m.data, cfg, shard
        if channels_last(model):
            model.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(model, cfg)
        torch.manual_seed(torch_seed(cfg.seed, "dropout"))  # dropout draws from the global stream
        if m.resume is not None:
            model.load_state_dict(m.resume["model"])
            self.opt.load_state_dict(m.resume["optimizer"])
            torch.set_rng_state(m.resume["torch_rng"].cpu())
            if device.type == "cuda" and m.resume.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(m.resume["cuda_rng"].cpu(), device)
        self.net = shard.wrap(model, device)
        if cfg.compile:
            self.net = torch.compile(self.net, dynamic=False)  # an epoch's last, smaller batch: its own graph
        self.fused = None
        if FUSED_MLP and not cfg.compile and shard.world == 1 and not uses_bf16(cfg, device):
            self.fused = fused_step(model, self.opt)
        model.train()
        self.aug_gens = None

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def new_epoch(self, epoch: int, first: int, aug_states: list | None) -> None:
        cfg, device, n = self.cfg, self.data.device, len(self.data.y_train)
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * cfg.lr_decay**epoch
        order = torch.Generator().manual_seed(torch_seed(cfg.seed, "order", epoch))
        perm = torch.randperm(n, generator=order).to(device)
        if cfg.augment:
            self.aug_gens = [torch.Generator(device=device).manual_seed(torch_seed(cfg.seed, "augment", epoch))]
        self.batches = self.data.batches(
            perm,
            cfg.batch_size,
            cfg.augment,
            self.aug_gens and self.aug_gens[0],
            self.shard,
            first,
            aug_states[0] if aug_states else None,
        )
        if self.shard.world > 1:  # each rank its own dropout masks, reproducible after a resume
            torch.manual_seed(torch_seed(cfg.seed, "dropout", epoch, self.shard.rank))
        self.losses = torch.empty(math.ceil(n / cfg.batch_size), device=device)

    def step(self, b: int) -> None:
        xb, yb, count = next(self.batches)
        if self.fused is not None:
            loss = self.fused(xb, yb)
        else:
            with autocast(self.cfg, xb.device):
                loss = self.shard.loss(self.net(xb), yb, count)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.losses[b] = loss.detach()

    def finite(self, b: int) -> list[bool]:
        return [self.shard.finite(self.losses[b])]

    def epoch_losses(self, q: int, first: int, end: int) -> list[float]:
        return self.shard.mean(self.losses[first:end]).tolist()  # the global batches' losses

    def evaluate(self) -> list[dict]:
        with autocast(self.cfg, self.data.device):
            if self.cfg.track_examples:  # (streamed data, which cannot be tracked, takes no track argument)
                return [self.data.evaluate(self.model, self.shard, track=True)]
            return [self.data.evaluate(self.model, self.shard)]

    def state(self, q: int) -> tuple[dict, dict]:
        return self.model.state_dict(), self.opt.state_dict()

    def release(self, positions: list[int]) -> None:
        pass  # the model trained in place


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
    board=None,
) -> TrainResult:
    """Train ``model`` with SGD until it fits, its budget ends, or its loss diverges.

    ``resume`` is a state written by an earlier call's checkpoint (same model, data and config);
    training continues from its place (an epoch's end, or a step inside an epoch) with the same
    random streams, so the result equals an uninterrupted run. ``on_progress(step, total_steps,
    last_eval)`` is called after evaluations. ``checkpoint_extra`` is stored in every checkpoint
    (e.g. the run id, to check it on resume). Checkpoints are written at the end of an epoch once
    ``checkpoint_interval`` seconds have passed since the last one (0: every epoch), at the end of
    training (marked ``finished``), and when SIGINT or SIGTERM stops it (after the current step,
    see :func:`rethink.train.loop.stop_on_signals`; the result is then "interrupted"). Their time
    counts neither as training nor as evaluation time. ``board`` (a
    :class:`rethink.tensorboard.Board`) gets the step losses and evaluations as they come. Call
    :func:`speed_settings` first for the engine's full speed on CPUs (the command line does).
    """
    shard = Shard.current()  # this rank's part under torchrun; the whole batch otherwise
    member = Member(model, data, cfg, checkpoint_path, resume, checkpoint_extra, board)
    res, place = restored(resume)

    def report(step, total, ended, rows):
        if rows and on_progress:
            on_progress(step, total, rows[0])

    # under torchrun the ranks would have to agree on the step to stop at: Ctrl-C ends them at once
    with threads.registered(), stop_on_signals(shard.world == 1):
        Loop(
            [member],
            [res],
            place,
            lambda members: _Solo(member, shard),
            checkpoint_interval,
            report,
            writes=shard.rank == 0,
        ).run()
    return res
