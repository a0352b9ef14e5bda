"""The batched engine: K independent models trained in lockstep in one process.

Each model keeps everything that is its own: its data (subset, randomization), initialization,
batch order, augmentation stream, stop rules, results and checkpoint. Only the arithmetic is
shared: the parameters (and batch-norm statistics) are stacked along a new leading dimension, and
one vectorized forward and backward pass serves all K, so that small models, whose steps are
mostly fixed per-step overhead, share it: plain MLPs take the fused step of
:mod:`rethink.train.fused_mlp` on batched products, other models ``torch.func.functional_call``
under ``vmap``.

A model trained here follows the trajectory of the same model trained alone by
:func:`rethink.train.engine.train` to float tolerance (the batched products sum in another
order), and its checkpoints have the same format, so either engine resumes the other's run.
Models of different sizes share a batch where zero padding is exact for their architecture: the
caller passes a ``template`` with the padded shapes (e.g. the widest MLP); a padded unit has zero
weights in and out, so it gets zero gradients and stays zero. Models that finish (fit, converge,
diverge) leave the batch and the rest go on. Dropout is refused (vmap's ``randomness="error"``):
its masks come from one global stream, which K models cannot share and still follow their own
trajectories.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..data.transforms import augment, standardize
from ..seeding import torch_seed
from . import engine, fused_mlp, threads
from .engine import (
    _RESUMED,
    TrainConfig,
    TrainData,
    TrainResult,
    _done,
    _finish,
    _sync,
    autocast,
    checkpoint_state,
    eval_batch,
    make_optimizer,
    position,
    record_eval,
    resume_place,
    save_checkpoints,
    speed_settings,
    stacked_metrics,
    stop_on_signals,
    stop_requested,
    uses_bf16,
)

# Evaluation chunks of fused MLP batches: about this many activations of the widest layer, all
# members together (16 MB of float32: one pass over digits-sized sets, a few over CIFAR-sized).
EVAL_ELEMENTS = 1 << 22
# Settings every model of a batch shares (they step together); the others may differ per model.
SHARED = ("lr", "lr_decay", "momentum", "weight_decay", "batch_size", "epochs", "max_steps", "augment", "eval_every",
          "bf16")


@dataclass
class Member:
    """One model of a batch: its module (initial weights in, final weights out), data and settings."""

    model: nn.Module
    data: TrainData
    cfg: TrainConfig
    checkpoint_path: str | None = None
    resume: dict | None = None  # a checkpoint of this model, written by either engine
    checkpoint_extra: dict | None = None


def train_batched(members: list[Member], *, template: nn.Module | None = None,
                  checkpoint_interval: float = 60.0, on_progress=None) -> list[TrainResult]:
    """Train every member until it fits, its budget ends or its loss diverges; their results in order.

    ``template`` is the architecture the batch runs (default: the first member's); every member's
    parameters must fit inside its shapes (they are zero-padded to them). Checkpoints are written
    as :func:`rethink.train.engine.train` writes them, and SIGINT or SIGTERM stops training as
    there (after the current step, every active member checkpointed). Members resumed from
    checkpoints of different places (epoch, step in it) train as separate batches, one after another.
    ``on_progress(step, total_steps, finished)`` is called after evaluations and when members leave
    (``finished``: how many members have ended so far).
    """
    for m in members:
        for name in SHARED:
            if getattr(m.cfg, name) != getattr(members[0].cfg, name):
                raise ValueError(f"the models of a batch must share {name}: {getattr(m.cfg, name)!r} != "
                                 f"{getattr(members[0].cfg, name)!r}")
    speed_settings()
    template = copy.deepcopy(template if template is not None else members[0].model).to("meta")
    restored = [_restore(m) for m in members]
    results = [res for res, _, _ in restored]
    steps_per_epoch = math.ceil(len(members[0].data.y_train) / members[0].cfg.batch_size)
    interrupted = False
    with threads.registered(), stop_on_signals():
        for start in sorted({place for _, place, _ in restored}):
            part = [i for i, (_, place, _) in enumerate(restored) if place == start]
            if interrupted:  # Ctrl-C: the batches not started yet end as interrupted too
                for i in part:
                    results[i].status = "interrupted"
                    _finish(results[i], steps_per_epoch)
                continue
            ended = sum(1 for _, place, _ in restored if place < start)  # the earlier parts' members
            report = (lambda step, total, done, k=ended: on_progress(step, total, k + done)) if on_progress else None
            interrupted = _Lockstep([members[i] for i in part], [results[i] for i in part], template, report).run(
                start, [restored[i][2] for i in part], [(members[i].resume or {}).get("aug_rng") for i in part],
                checkpoint_interval)
    return results


def _restore(m: Member) -> tuple[TrainResult, tuple[int, int], dict]:
    """A member's result so far, the place it starts at (epoch, step in it), and its momentum
    buffers by parameter name."""
    res = TrainResult(status="budget")
    if m.resume is None:
        return res, (0, 0), {}
    m.model.load_state_dict(m.resume["model"])
    opt = make_optimizer(m.model, m.cfg)
    opt.load_state_dict(m.resume["optimizer"])
    for k in _RESUMED:
        setattr(res, k, m.resume["result"][k])
    res.checkpoint_step = res.steps
    return res, resume_place(m.resume), {name: opt.state[p].get("momentum_buffer")
                                         for name, p in m.model.named_parameters()}


class _Lockstep:
    """Members that start at the same epoch, trained as one batch."""

    def __init__(self, members: list[Member], results: list[TrainResult], template: nn.Module, on_progress=None):
        self.members, self.results, self.template = members, results, template
        self.on_progress = on_progress  # (step, total_steps, members ended)
        self.cfg = cfg = members[0].cfg
        self.device = members[0].data.x_train.device
        self.n = len(members[0].data.y_train)
        self.steps_per_epoch = math.ceil(self.n / cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        self.epoch = self.step = 0
        self.first = self.batches_done = 0  # this epoch's first batch (resumed inside it: not 0), batches done

    # -- the loop (engine.train's, for K models) -------------------------------------------------
    def run(self, place: tuple[int, int], momenta: list[dict], aug_states: list, checkpoint_interval: float) -> bool:
        """Train to the end from ``place`` (epoch, batches done in it); True when interrupted."""
        cfg = self.cfg
        self.active = []  # member indices, in the order of the stack
        for i, (m, res) in enumerate(zip(self.members, self.results)):
            if res.steps >= self.total_steps or _done(res, m.cfg):  # resumed from its last checkpoint
                self._end(i)
            else:
                self.active.append(i)
        if not self.active:
            return False
        self.stack = _Stack(self.template, [self.members[i] for i in self.active], [momenta[i] for i in self.active],
                            cfg)
        self.step = self.results[self.active[0]].steps
        start_epoch, start_batch = place
        self.epoch, self.batches_done = place
        self.segment_start = last_ckpt = time.perf_counter()
        try:
            if self.step == 0:
                self._eval()
                self._leave(self._done_positions())
            for epoch in range(start_epoch, cfg.epochs):
                if self.step >= self.total_steps or not self.active:
                    break
                self.epoch = epoch
                self.first = self.batches_done = start_batch if epoch == start_epoch else 0
                self.stack.new_epoch(cfg.lr * cfg.lr_decay**self.epoch, [self.members[i].cfg.seed for i in self.active],
                                     self.epoch, self.steps_per_epoch,
                                     [aug_states[i] for i in self.active] if self.first else None)
                for b in range(self.first, self.steps_per_epoch):
                    if self.step >= self.total_steps:
                        break
                    self.stack.step(b, [self.members[i].data for i in self.active])
                    self.step += 1
                    self.batches_done = b + 1
                    if self.step % self.eval_every == 0 or self.step == self.total_steps:
                        for i in self.active:
                            self.results[i].steps = self.step
                        finite = torch.isfinite(self.stack.losses[:, b]).tolist()  # the one sync, at evaluations
                        self._leave([q for q, ok in enumerate(finite) if not ok])
                        if not self.active:
                            break
                        self._eval()
                        self._leave(self._done_positions())
                        if not self.active:
                            break
                    if stop_requested() is not None:
                        break
                if not self.active:
                    break
                losses = self.stack.losses[:, self.first : self.batches_done]
                self._leave([q for q, ok in enumerate(losses.isfinite().all(1).tolist()) if not ok])
                for q, i in enumerate(self.active):
                    self.results[i].step_losses.extend(self.stack.losses[q, self.first : self.batches_done].tolist())
                    self.results[i].steps = self.step
                if self.step >= self.total_steps or not self.active:
                    break
                if stop_requested() is not None:  # checkpoint where training stands (unless saved there), stop
                    self._save([q for q, i in enumerate(self.active)
                                if self.step > (self.results[i].checkpoint_step or 0)])
                    for i in self.active:
                        self.results[i].status = "interrupted"
                        _finish(self.results[i], self.steps_per_epoch)
                    return True
                if time.perf_counter() - last_ckpt >= checkpoint_interval:
                    self._save(range(len(self.active)))
                    last_ckpt = time.perf_counter()
        except KeyboardInterrupt:  # a second signal: no time to checkpoint
            for i in self.active:
                self.results[i].status = "interrupted"
                _finish(self.results[i], self.steps_per_epoch)
            return True
        self._save(range(len(self.active)), finished=True)
        for q, i in enumerate(self.active):
            self.stack.unstack(q, self.members[i])
            self._end(i)
        return False

    # -- pieces ------------------------------------------------------------------------------------
    def _pause(self) -> float:
        """Training time stops: it is added to every active member's."""
        _sync(self.device)
        t = time.perf_counter()
        for i in self.active:
            self.results[i].train_seconds += t - self.segment_start
        return t

    def _eval(self) -> None:
        t0 = self._pause()
        rows = self.stack.evaluate()
        for i, row in zip(self.active, rows):
            res = self.results[i]
            record_eval(res, self.members[i].cfg, {"step": self.step, "epoch": self.step / self.steps_per_epoch,
                                                   "seconds": res.train_seconds, "lr": self.stack.lr, **row},
                        self.steps_per_epoch, self.eval_every)
        self.segment_start = time.perf_counter()
        for i in self.active:
            self.results[i].eval_seconds += self.segment_start - t0
        self._progress()

    def _progress(self) -> None:
        if self.on_progress:
            self.on_progress(self.step, self.total_steps, len(self.members) - len(self.active))

    def _done_positions(self) -> list[int]:
        return [q for q, i in enumerate(self.active) if _done(self.results[i], self.members[i].cfg)]

    def _save(self, positions, finished: bool = False) -> None:
        """Checkpoint the members at these stack positions (those with a checkpoint path), all
        files written before the first rename, as engine.train writes them."""
        positions = [q for q in positions if self.members[self.active[q]].checkpoint_path]
        if not positions:
            return
        self._pause()
        save_checkpoints([self._checkpoint(q, finished) for q in positions])
        self.segment_start = time.perf_counter()

    def _checkpoint(self, q: int, finished: bool) -> tuple[str, dict]:
        """The checkpoint of the member at position ``q``, as engine.train writes it: (path, state)."""
        m, res = self.members[self.active[q]], self.results[self.active[q]]
        optimizer = self.stack.unstack(q, m)
        res.checkpoint_step = self.step
        return m.checkpoint_path, checkpoint_state(
            m.model.state_dict(), optimizer, res, position(self.epoch, self.batches_done, self.steps_per_epoch),
            self.stack.gens[q] if self.stack.gens else None, self.device, finished, m.checkpoint_extra)

    def _leave(self, positions: list[int]) -> None:
        """The members at these stack positions end here, as engine.train ends a run that stops
        inside an epoch: this epoch's losses, a last checkpoint (marked finished), their final
        weights into their modules."""
        if not positions:
            return
        self._pause()
        for q in positions:
            i = self.active[q]
            res = self.results[i]
            epoch_losses = (self.stack.losses[q, self.first : self.batches_done].tolist()
                            if self.batches_done > self.first else [])  # (none at step 0: no epoch begun)
            res.step_losses.extend(epoch_losses)
            res.steps = self.step
            if not all(math.isfinite(v) for v in epoch_losses):
                res.status = "diverged"
            if self.members[i].checkpoint_path:
                save_checkpoints([self._checkpoint(q, finished=True)])
            self.stack.unstack(q, self.members[i])
            self._end(i)
        keep = [q for q in range(len(self.active)) if q not in positions]
        self.active = [self.active[q] for q in keep]
        if keep:
            self.stack.keep(keep)
        self.segment_start = time.perf_counter()
        self._progress()

    def _end(self, i: int) -> None:
        res = self.results[i]
        if res.status not in ("diverged", "converged"):
            res.status = "fitted" if res.time_to_fit and self.members[i].cfg.stop_on_fit else "budget"
        _finish(res, self.steps_per_epoch)


def _pad(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``t`` in the leading corner of zeros of ``shape``."""
    if t.shape == shape:
        return t.detach().clone()
    out = t.new_zeros(shape)
    out[tuple(slice(0, d) for d in t.shape)] = t.detach()
    return out


class _Stack:
    """The active members' parameters, momentum, buffers, data and per-epoch state, stacked on a
    leading dimension (one row per member, in the order of the batch)."""

    def __init__(self, template: nn.Module, members: list[Member], momenta: list[dict], cfg: TrainConfig):
        self.template, self.cfg = template, cfg
        own = [dict(m.model.named_parameters()) for m in members]
        own_buffers = [dict(m.model.named_buffers()) for m in members]
        self.shapes = [{k: v.shape for k, v in p.items()} for p in own]
        self.params = {k: torch.stack([_pad(p[k], t.shape) for p in own]).requires_grad_()
                       for k, t in template.named_parameters()}
        self.buffers = {k: torch.stack([_pad(b[k], t.shape) for b in own_buffers]) for k, t in template.named_buffers()}
        momentum = {k: torch.stack([_pad(mo[k], t.shape) for mo in momenta])
                    for k, t in template.named_parameters() if all(mo.get(k) is not None for mo in momenta)}
        self.x_train = torch.stack([m.data.x_train for m in members])
        self.y_train = torch.stack([m.data.y_train for m in members])
        self.x_test = torch.stack([m.data.x_test for m in members])
        self.y_test = torch.stack([m.data.y_test for m in members])
        self.y_true = torch.stack([m.data.y_train_true for m in members])
        self.changed = torch.stack([m.data.changed for m in members])
        self.lr = cfg.lr
        self.order = self.losses = self.gens = None
        self.rows = torch.arange(len(members), device=self.x_train.device)[:, None]
        self.mlp = (engine.FUSED_MLP and fused_mlp.is_plain_mlp(template)
                    and not uses_bf16(cfg, self.x_train.device))
        self._make_optimizer(momentum)
        self.vmapped = vmap(lambda p, b, x: functional_call(template, (p, b), (x,)), randomness="error")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits, class-major (K, classes, B), for its inputs (K, B, ...)."""
        if self.fused is not None:
            return fused_mlp.forward(list(self.params.values()), x)
        return self.vmapped(self.params, self.buffers, x).transpose(1, 2)

    def _make_optimizer(self, momentum: dict) -> None:
        """SGD as engine.make_optimizer sets it up, over the stacked tensors (a member's weights
        are the stacked tensors of 3+ dims)."""
        decay = [p for p in self.params.values() if p.ndim > 2]
        no_decay = [p for p in self.params.values() if p.ndim <= 2]
        self.opt = torch.optim.SGD([{"params": decay, "weight_decay": self.cfg.weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}],
                                   lr=self.lr, momentum=self.cfg.momentum, fused=True)
        for k, buf in momentum.items():
            self.opt.state[self.params[k]]["momentum_buffer"] = buf
        self.fused = fused_mlp.FusedStep(list(self.params.values()), self.opt) if self.mlp else None

    def new_epoch(self, lr: float, seeds: list[int], epoch: int, steps: int, aug_states: list | None = None) -> None:
        """This epoch's learning rate, every member's batch order and augmentation stream (resumed
        inside the epoch: ``aug_states``, the streams' states there)."""
        self.lr = lr
        for g in self.opt.param_groups:
            g["lr"] = lr
        device = self.x_train.device
        self.order = torch.stack([torch.randperm(self.y_train.shape[1], generator=torch.Generator().manual_seed(
            torch_seed(s, "order", epoch))) for s in seeds]).to(device)
        if self.cfg.augment:
            self.gens = [torch.Generator(device=device).manual_seed(torch_seed(s, "augment", epoch)) for s in seeds]
            for gen, state in zip(self.gens, aug_states or []):
                gen.set_state(state.cpu())
        self.losses = torch.empty(len(seeds), steps, device=device)

    def step(self, b: int, data: list[TrainData]) -> None:
        """One SGD step of every member on its ``b``-th batch of the epoch."""
        bs = self.cfg.batch_size
        idx = self.order[:, b * bs : (b + 1) * bs]
        flat = (self.rows * self.y_train.shape[1] + idx).flatten()  # rows of the stacked sets, one index_select
        yb = self.y_train.flatten().index_select(0, flat).view(idx.shape)
        if self.cfg.augment:
            xb = torch.stack([_augmented(d, i, self.cfg.augment, g) for d, i, g in zip(data, idx, self.gens)])
        else:
            xb = self.x_train.flatten(0, 1).index_select(0, flat).view(*idx.shape, *self.x_train.shape[2:])
        if self.fused is not None:
            self.losses[:, b] = self.fused(xb, yb)
            return
        with autocast(self.cfg, xb.device):
            logits = self.logits(xb)
        losses = F.cross_entropy(logits.float(), yb, reduction="none").mean(1)
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # each model's gradient is that of its own loss
        self.opt.step()
        self.losses[:, b] = losses.detach()

    @torch.inference_mode()
    def _predict(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], torch.Tensor]:
        """Every member's mean cross-entropy and predicted classes on its own set (eval mode), in
        chunks of about ``EVAL_ELEMENTS`` activations of the widest layer for all K together."""
        k, n = y.shape
        if self.fused is not None:
            chunk = max(1, EVAL_ELEMENTS // (k * max(p.shape[1] for p in self.params.values())))
        else:
            chunk = max(1, eval_batch(self.template) // k)
        total, preds = torch.zeros(k, device=x.device, dtype=torch.float64), []
        if self.fused is None:  # (a plain MLP has no layer that trains and evaluates differently)
            self.template.eval()
        for i in range(0, n, chunk):
            with autocast(self.cfg, x.device):
                logits = self.logits(x[:, i : i + chunk]).float()
            total += F.cross_entropy(logits, y[:, i : i + chunk], reduction="none").sum(1).double()
            preds.append(logits.max(1).indices)  # argmax over a non-inner dimension: measured 15x slower
        if self.fused is None:
            self.template.train()
        return (total / max(n, 1)).tolist(), torch.cat(preds, 1)

    def evaluate(self) -> list[dict]:
        """engine.evaluate's numbers for every member."""
        train_loss, p_train = self._predict(self.x_train, self.y_train)
        test_loss, p_test = self._predict(self.x_test, self.y_test)
        return stacked_metrics(self.y_train, self.y_true, self.changed, p_train, self.y_test, p_test,
                               train_loss, test_loss)

    def keep(self, positions: list[int]) -> None:
        """Only the members at these positions go on."""
        idx = torch.tensor(positions, device=self.x_train.device)
        momentum = {k: self.opt.state[p]["momentum_buffer"][idx] for k, p in self.params.items()
                    if self.opt.state[p].get("momentum_buffer") is not None}
        self.params = {k: p.detach()[idx].requires_grad_() for k, p in self.params.items()}
        self.buffers = {k: b[idx] for k, b in self.buffers.items()}
        self._make_optimizer(momentum)
        self.rows = self.rows[: len(positions)]
        self.shapes = [self.shapes[q] for q in positions]
        self.x_train, self.y_train, self.x_test, self.y_test, self.y_true, self.changed = (
            t[idx] for t in (self.x_train, self.y_train, self.x_test, self.y_test, self.y_true, self.changed))
        if self.order is not None:
            self.order, self.losses = self.order[idx], self.losses[idx]
        if self.gens is not None:
            self.gens = [self.gens[q] for q in positions]

    def unstack(self, q: int, member: Member) -> dict:
        """Write the weights of the member at position ``q`` into its module (its own shapes,
        padding cut off) and return its optimizer's state dict, as engine.train checkpoints it."""
        def own(t, shape):
            return t[q][tuple(slice(0, d) for d in shape)].detach().clone()

        shapes = self.shapes[q]
        state = {k: own(p, shapes[k]) for k, p in self.params.items()}
        own_buffers = dict(member.model.named_buffers())
        saved = member.model.state_dict().keys()  # not the non-persistent buffers (constants)
        state.update({k: own(b, own_buffers[k].shape) for k, b in self.buffers.items() if k in saved})
        member.model.load_state_dict(state)
        opt = make_optimizer(member.model, member.cfg)
        for g in opt.param_groups:
            g["lr"] = self.lr
        for k, p in member.model.named_parameters():
            buf = self.opt.state[self.params[k]].get("momentum_buffer")
            if buf is not None:
                opt.state[p]["momentum_buffer"] = own(buf, shapes[k])
        return opt.state_dict()


def _augmented(d: TrainData, idx: torch.Tensor, kinds: tuple[str, ...], gen: torch.Generator) -> torch.Tensor:
    """A member's augmented batch, as TrainData.batches makes it."""
    x = augment(d.x_train_raw[idx], kinds, d.crop, gen)
    return standardize(x) if d.standardize else x
