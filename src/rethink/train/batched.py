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

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..data.transforms import augment, standardize
from ..seeding import torch_seed
from . import engine, fused_mlp, threads
from .engine import TrainData, autocast, eval_batch, make_optimizer, stacked_metrics, uses_bf16
from .loop import Loop, Member, TrainResult, param_groups, restored, stop_on_signals

# Evaluation chunks of fused MLP batches: about this many activations of the widest layer, all
# members together (16 MB of float32: one pass over digits-sized sets, a few over CIFAR-sized).
EVAL_ELEMENTS = 1 << 22
# Settings every model of a batch shares (they step together); the others may differ per model.
SHARED = (
    "lr",
    "lr_decay",
    "momentum",
    "weight_decay",
    "batch_size",
    "epochs",
    "max_steps",
    "augment",
    "eval_every",
    "bf16",
)


def train_batched(
    members: list[Member], *, template: nn.Module | None = None, checkpoint_interval: float = 60.0, on_progress=None
) -> list[TrainResult]:
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
                raise ValueError(
                    f"the models of a batch must share {name}: {getattr(m.cfg, name)!r} != "
                    f"{getattr(members[0].cfg, name)!r}"
                )
    template = copy.deepcopy(template if template is not None else members[0].model).to("meta")
    restored_ = [restored(m.resume) for m in members]
    results = [res for res, _ in restored_]
    interrupted = False
    with threads.registered(), stop_on_signals():
        for start in sorted({place for _, place in restored_}):
            part = [i for i, (_, place) in enumerate(restored_) if place == start]
            ended = sum(1 for _, place in restored_ if place < start)  # the earlier parts' members

            def report(step, total, done, rows, k=ended):
                on_progress(step, total, k + done)

            loop = Loop(
                [members[i] for i in part],
                [results[i] for i in part],
                start,
                lambda active: _Stack(template, active),
                checkpoint_interval,
                report if on_progress else None,
            )
            interrupted = loop.interrupt() if interrupted else loop.run()  # Ctrl-C: later parts end too
    return results


def _momenta(m: Member) -> dict:
    """A resumed member's momentum buffers by parameter name (none for a fresh start)."""
    if m.resume is None:
        return {}
    m.model.load_state_dict(m.resume["model"])
    opt = make_optimizer(m.model, m.cfg)
    opt.load_state_dict(m.resume["optimizer"])
    return {name: opt.state[p].get("momentum_buffer") for name, p in m.model.named_parameters()}


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

    def __init__(self, template: nn.Module, members: list[Member]):
        self.template, self.members, self.cfg = template, members, members[0].cfg
        cfg, momenta = self.cfg, [_momenta(m) for m in members]
        own = [dict(m.model.named_parameters()) for m in members]
        own_buffers = [dict(m.model.named_buffers()) for m in members]
        self.shapes = [{k: v.shape for k, v in p.items()} for p in own]
        self.params = {
            k: torch.stack([_pad(p[k], t.shape) for p in own]).requires_grad_() for k, t in template.named_parameters()
        }
        self.buffers = {k: torch.stack([_pad(b[k], t.shape) for b in own_buffers]) for k, t in template.named_buffers()}
        momentum = {
            k: torch.stack([_pad(mo[k], t.shape) for mo in momenta])
            for k, t in template.named_parameters()
            if all(mo.get(k) is not None for mo in momenta)
        }
        self.x_train = torch.stack([m.data.x_train for m in members])
        self.y_train = torch.stack([m.data.y_train for m in members])
        self.x_test = torch.stack([m.data.x_test for m in members])
        self.y_test = torch.stack([m.data.y_test for m in members])
        self.y_true = torch.stack([m.data.y_train_true for m in members])
        self.changed = torch.stack([m.data.changed for m in members])
        self.lr = cfg.lr
        self.order = self.losses = self.aug_gens = None
        self.rows = torch.arange(len(members), device=self.x_train.device)[:, None]
        self.mlp = engine.FUSED_MLP and fused_mlp.is_plain_mlp(template) and not uses_bf16(cfg, self.x_train.device)
        self._make_optimizer(momentum)
        self.vmapped = vmap(lambda p, b, x: functional_call(template, (p, b), (x,)), randomness="error")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits, class-major (K, classes, B), for its inputs (K, B, ...)."""
        if self.fused is not None:
            return fused_mlp.forward(list(self.params.values()), x)
        return self.vmapped(self.params, self.buffers, x).transpose(1, 2)

    def _make_optimizer(self, momentum: dict) -> None:
        """SGD as engine.make_optimizer sets it up, over the stacked tensors."""
        self.opt = torch.optim.SGD(
            param_groups(list(self.params.values()), self.cfg.weight_decay, lead=1),
            lr=self.lr,
            momentum=self.cfg.momentum,
            fused=True,
        )
        for k, buf in momentum.items():
            self.opt.state[self.params[k]]["momentum_buffer"] = buf
        self.fused = fused_mlp.FusedStep(list(self.params.values()), self.opt) if self.mlp else None

    def new_epoch(self, epoch: int, first: int, aug_states: list | None) -> None:
        """This epoch's learning rate, every member's batch order and augmentation stream (resumed
        inside the epoch: ``aug_states``, the streams' states there)."""
        cfg, seeds, n = self.cfg, [m.cfg.seed for m in self.members], self.y_train.shape[1]
        self.lr = cfg.lr * cfg.lr_decay**epoch
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        device = self.x_train.device
        self.order = torch.stack(
            [
                torch.randperm(
                    self.y_train.shape[1], generator=torch.Generator().manual_seed(torch_seed(s, "order", epoch))
                )
                for s in seeds
            ]
        ).to(device)
        if self.cfg.augment:
            self.aug_gens = [torch.Generator(device=device).manual_seed(torch_seed(s, "augment", epoch)) for s in seeds]
            for gen, state in zip(self.aug_gens, aug_states or []):
                gen.set_state(state.cpu())
        self.losses = torch.empty(len(seeds), math.ceil(n / cfg.batch_size), device=device)

    def step(self, b: int) -> None:
        """One SGD step of every member on its ``b``-th batch of the epoch."""
        bs = self.cfg.batch_size
        idx = self.order[:, b * bs : (b + 1) * bs]
        flat = (self.rows * self.y_train.shape[1] + idx).flatten()  # rows of the stacked sets, one index_select
        yb = self.y_train.flatten().index_select(0, flat).view(idx.shape)
        if self.cfg.augment:
            xb = torch.stack(
                [_augmented(m.data, i, self.cfg.augment, g) for m, i, g in zip(self.members, idx, self.aug_gens)]
            )
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

    def finite(self, b: int) -> list[bool]:
        return torch.isfinite(self.losses[:, b]).tolist()

    def epoch_losses(self, q: int, first: int, end: int) -> list[float]:
        return self.losses[q, first:end].tolist()

    @torch.inference_mode()
    def _predict(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], torch.Tensor, torch.Tensor]:
        """Every member's mean cross-entropy, predicted classes and per-example cross-entropy (K x n)
        on its own set (eval mode), in chunks of about ``EVAL_ELEMENTS`` activations of the widest
        layer for all K together."""
        k, n = y.shape
        if self.fused is not None:
            chunk = max(1, EVAL_ELEMENTS // (k * max(p.shape[1] for p in self.params.values())))
        else:
            chunk = max(1, eval_batch(self.template) // k)
        total, losses, preds = torch.zeros(k, device=x.device, dtype=torch.float64), [], []
        if self.fused is None:  # (a plain MLP has no layer that trains and evaluates differently)
            self.template.eval()
        for i in range(0, n, chunk):
            with autocast(self.cfg, x.device):
                logits = self.logits(x[:, i : i + chunk]).float()
            losses.append(F.cross_entropy(logits, y[:, i : i + chunk], reduction="none"))
            total += losses[-1].sum(1).double()
            preds.append(logits.max(1).indices)  # argmax over a non-inner dimension: measured 15x slower
        if self.fused is None:
            self.template.train()
        return (total / max(n, 1)).tolist(), torch.cat(preds, 1), torch.cat(losses, 1)

    def evaluate(self) -> list[dict]:
        """engine.evaluate's numbers for every member."""
        train_loss, p_train, each = self._predict(self.x_train, self.y_train)
        test_loss, p_test, _ = self._predict(self.x_test, self.y_test)
        tracked = [m.cfg.track_examples for m in self.members]
        return stacked_metrics(
            *(self.y_train, self.y_true, self.changed, p_train, self.y_test, p_test, train_loss, test_loss),
            each if any(tracked) else None,
            tracked,
        )

    def release(self, positions: list[int]) -> None:
        """The members at these positions leave (their weights into their modules); the rest go on."""
        for q in positions:
            self.unstack(q)
        keep = [q for q in range(len(self.members)) if q not in positions]
        if keep:
            self._keep(keep)

    def _keep(self, positions: list[int]) -> None:
        idx = torch.tensor(positions, device=self.x_train.device)
        momentum = {
            k: self.opt.state[p]["momentum_buffer"][idx]
            for k, p in self.params.items()
            if self.opt.state[p].get("momentum_buffer") is not None
        }
        self.params = {k: p.detach()[idx].requires_grad_() for k, p in self.params.items()}
        self.buffers = {k: b[idx] for k, b in self.buffers.items()}
        self._make_optimizer(momentum)
        self.rows = self.rows[: len(positions)]
        self.shapes = [self.shapes[q] for q in positions]
        self.x_train, self.y_train, self.x_test, self.y_test, self.y_true, self.changed = (
            t[idx] for t in (self.x_train, self.y_train, self.x_test, self.y_test, self.y_true, self.changed)
        )
        if self.order is not None:
            self.order, self.losses = self.order[idx], self.losses[idx]
        if self.aug_gens is not None:
            self.aug_gens = [self.aug_gens[q] for q in positions]
        self.members = [self.members[q] for q in positions]

    def state(self, q: int) -> tuple[dict, dict]:
        optimizer = self.unstack(q)
        return self.members[q].model.state_dict(), optimizer

    def unstack(self, q: int) -> dict:
        """Write the weights of the member at position ``q`` into its module (its own shapes,
        padding cut off) and return its optimizer's state dict, as engine.train checkpoints it."""

        def own(t, shape):
            return t[q][tuple(slice(0, d) for d in shape)].detach().clone()

        shapes, member = self.shapes[q], self.members[q]
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
