"""The training loop, written once for both engines.

:class:`Loop` runs K models (one for :func:`rethink.train.engine.train`, K in lockstep for
:func:`rethink.train.batched.train_batched`) through one schedule: epochs of batches, evaluations
every ``eval_every`` steps, the stop rules (fitted, converged, diverged, budget, interrupted), the
train/evaluation stopwatch, checkpoints and each run's end status. The arithmetic is a *stepper*'s
(:class:`Stepper`): the engines differ only there.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..spec import RunSpec

_RESUMED = ("status", "evals", "step_losses", "time_to_fit", "steps", "train_seconds", "eval_seconds", "examples")


@dataclass
class TrainConfig:
    """The settings of the SGD loop; defaults are :class:`rethink.spec.RunSpec`'s."""

    lr: float
    lr_decay: float = RunSpec.lr_decay
    momentum: float = RunSpec.momentum
    weight_decay: float = RunSpec.weight_decay
    batch_size: int = RunSpec.batch_size
    epochs: int = RunSpec.epochs
    max_steps: int | None = RunSpec.max_steps
    augment: tuple[str, ...] = RunSpec.augment
    eval_every: int | None = RunSpec.eval_every  # steps; None: at the end of every epoch
    fit_threshold: float = RunSpec.fit_threshold
    stop_on_fit: bool = RunSpec.stop_on_fit
    stop_loss: float | None = RunSpec.stop_loss
    track_examples: bool = RunSpec.track_examples
    seed: int = RunSpec.seed
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
    examples: list[dict] = field(default_factory=list)  # per evaluation with track_examples: step, correct, loss


@dataclass
class Member:
    """One model the loop trains: its module (initial weights in, final weights out), data and settings."""

    model: torch.nn.Module
    data: object  # rethink.train.engine.TrainData or a streaming source with the same methods
    cfg: TrainConfig
    checkpoint_path: str | None = None
    resume: dict | None = None  # a checkpoint of this model, written by either engine
    checkpoint_extra: dict | None = None  # stored in every checkpoint (e.g. the run id)
    board: object | None = None  # live scalars (rethink.tensorboard.Board): step losses, evaluations


def param_groups(params: list[torch.Tensor], weight_decay: float, lead: int = 0) -> list[dict]:
    """SGD's parameter groups: weight decay on weights (tensors of 2+ dims), not on biases or BN
    shifts; ``lead``: leading dimensions stacked in front of each model's own (the batched engine's)."""
    decay = [p for p in params if p.ndim - lead > 1]
    no_decay = [p for p in params if p.ndim - lead <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- checkpoints --------------------------------------------------------------------------------


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


def checkpoint_state(
    model_state: dict,
    optimizer_state: dict,
    res: TrainResult,
    place: tuple[int, int],
    aug_gen,
    device: torch.device,
    finished: bool,
    extra: dict | None,
) -> dict:
    """What a checkpoint holds, in either engine: weights, optimizer (momentum), results so far
    (this epoch's losses included), its place (``epoch``, ``batch``) and, inside an epoch, the
    random streams' states there; ``finished``: the run ended (no resuming it)."""
    epoch, batch = place
    return {
        **(extra or {}),
        "epoch": epoch,
        "batch": batch,
        "finished": finished,
        "model": model_state,
        "optimizer": optimizer_state,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "aug_rng": aug_gen.get_state() if batch and aug_gen is not None else None,
        "result": {k: getattr(res, k) for k in _RESUMED},
    }


def resume_place(resume: dict | None) -> tuple[int, int]:
    """Where a checkpoint resumes: (epoch, batches done in it); checkpoints without ``batch``
    (older versions) were all written at an epoch's end."""
    return (0, 0) if resume is None else (resume["epoch"], resume.get("batch", 0))


def restored(resume: dict | None) -> tuple[TrainResult, tuple[int, int]]:
    """A run's result so far and the place it starts at, from its checkpoint (or a fresh start)."""
    res = TrainResult(status="budget")
    if resume is not None:
        for k in _RESUMED:
            setattr(res, k, resume["result"].get(k, getattr(res, k)))  # checkpoints before a key: its default
        res.checkpoint_step = res.steps
    return res, resume_place(resume)


# -- stopping on signals ----------------------------------------------------------------------------

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


# -- the loop -------------------------------------------------------------------------------------


def record_eval(res: TrainResult, cfg: TrainConfig, row: dict, steps_per_epoch: int, eval_every: int) -> None:
    """Append an evaluation row and apply the rules it can trigger: time to fit, converged."""
    res.evals.append(row)
    if res.time_to_fit is None and row["train_acc"] >= cfg.fit_threshold - 1e-12:
        res.time_to_fit = {
            "steps": row["step"],
            "epochs": row["step"] / steps_per_epoch,
            "seconds": res.train_seconds,
            "resolution_steps": eval_every,
        }
    if cfg.stop_loss is not None and row["train_loss"] <= cfg.stop_loss:
        res.status = "converged"


def done(res: TrainResult, cfg: TrainConfig) -> bool:
    """Whether a stop rule has ended training: fitted (and stopping on fit) or converged."""
    return bool(res.time_to_fit and cfg.stop_on_fit) or res.status == "converged"


class Stepper(Protocol):
    """The arithmetic of the models a loop trains, addressed by position (0..K-1, in the order of
    the members still training)."""

    lr: float  # this epoch's learning rate
    aug_gens: list | None  # each position's augmentation stream this epoch (None: no augmentation)

    def new_epoch(self, epoch: int, first: int, aug_states: list | None) -> None:
        """Learning rate, batch orders and augmentation streams of ``epoch``, starting at batch
        ``first`` (resumed inside the epoch: ``aug_states``, the streams' states there)."""

    def step(self, b: int) -> None:
        """One SGD step of every model on its ``b``-th batch of the epoch; its loss kept on the device."""

    def finite(self, b: int) -> list[bool]:
        """Whether each model's loss at batch ``b`` is finite (reads it back from the device)."""

    def epoch_losses(self, q: int, first: int, end: int) -> list[float]:
        """Model ``q``'s losses of batches ``first`` to ``end`` of this epoch."""

    def evaluate(self) -> list[dict]:
        """Every model's evaluation (loss and accuracies on the full training and test sets)."""

    def state(self, q: int) -> tuple[dict, dict]:
        """Model ``q``'s weights and optimizer state, as a checkpoint holds them."""

    def release(self, positions: list[int]) -> None:
        """The models at these positions leave: their final weights go into their modules."""


@dataclass
class Loop:
    """Train ``members`` (their results so far in ``results``) from ``place`` (epoch, batches done
    in it) to their ends. ``make_stepper(members)`` builds the arithmetic for the members that
    still train. ``on_progress(step, total_steps, ended, rows)`` is called after evaluations
    (``rows``: theirs) and after members leave (``rows`` None); ``writes``: this process writes
    the checkpoints (rank 0 under torchrun)."""

    members: list[Member]
    results: list[TrainResult]
    place: tuple[int, int]
    make_stepper: Callable[[list[Member]], Stepper]
    checkpoint_interval: float = 60.0
    on_progress: Callable | None = None
    writes: bool = True

    def __post_init__(self):
        cfg = self.cfg = self.members[0].cfg
        self.device = self.members[0].data.device
        self.steps_per_epoch = math.ceil(len(self.members[0].data.y_train) / cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        self.epoch, self.first = self.place
        self.batches_done = self.first
        self.step = self.results[0].steps
        self.active = list(range(len(self.members)))  # positions -> member indices, of those still training

    def run(self) -> bool:
        """Train to the end; True when a signal interrupted training."""
        cfg, start_epoch, start_batch = self.cfg, *self.place
        self.active = [
            i
            for i, (m, r) in enumerate(zip(self.members, self.results))
            if r.steps < self.total_steps and not done(r, m.cfg)
        ]  # others ended at their last checkpoint
        for i in set(range(len(self.members))) - set(self.active):
            self.end(i)
        if not self.active:
            return False
        self.stepper = self.make_stepper([self.members[i] for i in self.active])
        self.segment_start = self.last_checkpoint = time.perf_counter()  # training time accrues from here
        self.paused_at = None
        try:
            if self.step == 0:
                self.evaluate()
            for self.epoch in range(start_epoch, cfg.epochs):
                if self.step >= self.total_steps or not self.active:
                    break
                self.first = self.batches_done = start_batch if self.epoch == start_epoch else 0
                self.stepper.new_epoch(
                    self.epoch,
                    self.first,
                    [(self.members[i].resume or {}).get("aug_rng") for i in self.active] if self.first else None,
                )
                for b in range(self.first, self.steps_per_epoch):
                    if self.step >= self.total_steps:
                        break
                    self.stepper.step(b)
                    self.step, self.batches_done = self.step + 1, b + 1
                    if self.step % self.eval_every == 0 or self.step == self.total_steps:
                        self.leave([q for q, ok in enumerate(self.stepper.finite(b)) if not ok])  # the one sync
                        if self.active:
                            self.evaluate()
                        if not self.active:
                            break
                    if stop_requested() is not None:
                        break
                self.end_epoch()
                if self.step >= self.total_steps or not self.active:
                    break
                if stop_requested() is not None:  # checkpoint where training stands, unless saved there
                    self.save(
                        [q for q, i in enumerate(self.active) if self.step > (self.results[i].checkpoint_step or 0)]
                    )
                    return self.interrupt()
                if time.perf_counter() - self.last_checkpoint >= self.checkpoint_interval:
                    self.save(range(len(self.active)))
                    self.last_checkpoint = self.go_on()
        except KeyboardInterrupt:  # a second signal: no time to checkpoint
            return self.interrupt()
        self.leave(list(range(len(self.active))))
        return False

    def pause(self) -> float:
        """Training time stops (unless stopped already): it is added to every active member's."""
        if self.paused_at is None:
            sync(self.device)
            self.paused_at = time.perf_counter()
            for i in self.active:
                self.results[i].train_seconds += self.paused_at - self.segment_start
        return self.paused_at

    def go_on(self) -> float:
        """Training time runs again (after a pause)."""
        if self.paused_at is not None:
            self.segment_start, self.paused_at = time.perf_counter(), None
        return self.segment_start

    def evaluate(self) -> None:
        """Evaluate every active member, record it, and let those a stop rule ends leave."""
        t0 = self.pause()
        rows = self.stepper.evaluate()
        for i, row in zip(self.active, rows):
            res = self.results[i]
            res.steps = self.step
            if "examples" in row:  # per-example records travel beside the evaluation rows
                res.examples.append({"step": self.step, **row.pop("examples")})
            record_eval(
                res,
                self.members[i].cfg,
                {
                    "step": self.step,
                    "epoch": self.step / self.steps_per_epoch,
                    "seconds": res.train_seconds,
                    "lr": self.stepper.lr,
                    **row,
                },
                self.steps_per_epoch,
                self.eval_every,
            )
            if self.members[i].board is not None:
                self.members[i].board.evaluation(res.evals[-1])
        t1 = self.go_on()
        for i in self.active:
            self.results[i].eval_seconds += t1 - t0
        self.progress(rows)
        self.leave([q for q, i in enumerate(self.active) if done(self.results[i], self.members[i].cfg)])

    def end_epoch(self) -> None:
        """Record this epoch's losses; the members with a non-finite one leave (diverged)."""
        if not self.active or self.batches_done <= self.first:
            return
        losses = [self.stepper.epoch_losses(q, self.first, self.batches_done) for q in range(len(self.active))]
        for q, i in enumerate(self.active):
            self.add_losses(i, losses[q])
            self.results[i].steps = self.step
        self.first = self.batches_done  # recorded up to here
        self.leave([q for q, loss in enumerate(losses) if not all(map(math.isfinite, loss))], diverged=True)

    def add_losses(self, i: int, losses: list[float]) -> None:
        """Record member ``i``'s losses of its next steps (and pass them to its board)."""
        res, board = self.results[i], self.members[i].board
        if board is not None:
            board.step_losses(len(res.step_losses) + 1, losses)
        res.step_losses.extend(losses)

    def leave(self, positions: list[int], diverged: bool = False) -> None:
        """The members at these positions end here: the epoch's losses not yet recorded, their
        status, a last checkpoint (marked finished) and their final weights into their modules."""
        if not positions:
            return
        self.pause()
        for q in positions:
            res = self.results[self.active[q]]
            if self.batches_done > self.first:
                losses = self.stepper.epoch_losses(q, self.first, self.batches_done)
                self.add_losses(self.active[q], losses)
                diverged = not all(map(math.isfinite, losses))
            res.steps = self.step
            if diverged:
                res.status = "diverged"
            self.end(self.active[q])
        self.save(positions, finished=True)
        self.stepper.release(positions)
        self.active = [i for q, i in enumerate(self.active) if q not in positions]
        self.go_on()
        self.progress(None)

    def save(self, positions, finished: bool = False) -> None:
        """Checkpoint the members at these positions (those with a checkpoint path), every file
        written before the first rename; its time counts neither as training nor as evaluation
        (the clock stays paused: the caller goes on)."""
        positions = [q for q in positions if self.members[self.active[q]].checkpoint_path] if self.writes else []
        if not positions:
            return
        self.pause()
        place = position(self.epoch, self.batches_done, self.steps_per_epoch)
        items = []
        for q in positions:
            m, res = self.members[self.active[q]], self.results[self.active[q]]
            res.checkpoint_step = self.step
            gen = self.stepper.aug_gens[q] if self.stepper.aug_gens else None
            items.append(
                (
                    m.checkpoint_path,
                    checkpoint_state(
                        *self.stepper.state(q), res, place, gen, self.device, finished, m.checkpoint_extra
                    ),
                )
            )
        save_checkpoints(items)

    def end(self, i: int) -> None:
        """Member ``i``'s end status (unless diverged or converged) and epochs."""
        res = self.results[i]
        if res.status not in ("diverged", "converged"):
            res.status = "fitted" if res.time_to_fit and self.members[i].cfg.stop_on_fit else "budget"
        res.epochs = res.steps / self.steps_per_epoch

    def interrupt(self) -> bool:
        """The members still training end as interrupted."""
        for i in self.active:
            self.results[i].status = "interrupted"
            self.results[i].epochs = self.results[i].steps / self.steps_per_epoch
        return True

    def progress(self, rows: list[dict] | None) -> None:
        if self.on_progress:
            self.on_progress(self.step, self.total_steps, len(self.members) - len(self.active), rows)
