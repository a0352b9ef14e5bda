"""A fused training step for plain MLPs: a hand-written backward pass and the optimizer's kernel.

For an MLP (flatten, then linear layers with biases and ReLUs between them) the backward pass is
written out by hand rather than recorded by autograd: every product writes into gradient tensors
kept from step to step, the logits are computed class-major (classes x batch), so that softmax
and cross-entropy run along contiguous memory (5-10x faster than over rows of ten classes), and
the update is :class:`torch.optim.SGD`'s own fused kernel (``torch._fused_sgd_``), one call per
parameter group. No graph, no fresh gradient tensors, a third of the per-step dispatch: a small
MLP's step on a CPU is largely those (benchmarks/engine_choices.py).

The arithmetic is autograd's and the optimizer's, its sums in another order, so a run follows the
autograd step's trajectory to float tolerance (tests/test_speed_choices.py), and its numbers do
not depend on the thread count (no product accumulates into an existing tensor, which MKL splits
differently with other thread counts). Momentum buffers live in the optimizer's state, so
checkpoints keep their format and either path resumes the other's. The same code steps K models
stacked on a leading dimension (the batched engine): the products become batched products, each
model's loss its own mean.
"""

from __future__ import annotations

import torch
from torch import nn


def is_plain_mlp(model: nn.Module) -> bool:
    """Whether ``model`` is a plain MLP: a Sequential of Flatten, then Linear layers with biases and
    ReLUs between them (Identity placeholders aside)."""
    kinds = [type(m) for m in model.children() if not isinstance(m, nn.Identity)]
    hidden = (len(kinds) - 2) // 2
    return (
        isinstance(model, nn.Sequential)
        and kinds == [nn.Flatten] + [nn.Linear, nn.ReLU] * hidden + [nn.Linear]
        and all(m.bias is not None for m in model.children() if isinstance(m, nn.Linear))
    )


def forward(params: list[torch.Tensor], x: torch.Tensor, keep: bool = False):
    """The logits, class-major (K x classes x B), for inputs ``x`` (K x B x ...) of K stacked MLPs
    whose parameters are ``params`` (w1, b1, w2, b2, ..., each with a leading K). Class-major,
    softmax and cross-entropy run along contiguous memory (measured 5-10x faster than over rows of
    ten classes). With ``keep``, also every layer's input."""
    h = x.flatten(2)
    inputs = []
    for i in range(0, len(params) - 2, 2):
        inputs.append(h)
        h = torch.baddbmm(params[i + 1].unsqueeze(1), h, params[i].mT).relu_()
    inputs.append(h)
    logits = torch.baddbmm(params[-1].unsqueeze(-1), params[-2], h.mT)
    return (logits, inputs) if keep else logits


class FusedStep:
    """SGD steps on the mean cross-entropy for the MLP parameters ``params`` (w1, b1, ..., stacked
    or not), with the settings and momentum buffers of ``opt``, an SGD optimizer over exactly them."""

    def __init__(self, params: list[torch.Tensor], opt: torch.optim.SGD):
        self.params, self.opt = params, opt
        group = {p: g for g in opt.param_groups for p in g["params"]}
        if set(group) != set(params) or any(g["nesterov"] or g["dampening"] or g["maximize"] for g in opt.param_groups):
            raise ValueError("the fused MLP step needs plain momentum SGD over exactly the MLP's parameters")
        # one model runs as a stack of one, through the same code and kernels as a batch (equal
        # matrices give equal bits here, though MKL may split a batch's products differently)
        self.stacked = params[0].ndim == 3
        self.views = params if self.stacked else [p.unsqueeze(0) for p in params]
        self.grads = [torch.empty_like(v) for v in self.views]  # written in place every step
        self.flat_grads = self.grads if self.stacked else [g[0] for g in self.grads]  # the parameters' shapes
        # per parameter group: its parameters' positions
        self.groups = [(g, [i for i, p in enumerate(params) if group[p] is g]) for g in opt.param_groups]
        self.minus_one: dict = {}  # by label shape: the -1s that turn softmax into its gradient

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step on inputs ``x`` and labels ``y`` (B, or K x B); the loss before the step
        (a scalar, or one per model)."""
        params, grads = self.views, self.grads
        if not self.stacked:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        logits, inputs = forward(params, x, keep=True)
        logp = torch.log_softmax(logits, -2)
        rows = y.unsqueeze(-2)
        loss = -logp.gather(-2, rows).mean((-2, -1))
        minus_one = self.minus_one.get(rows.shape)
        if minus_one is None:
            minus_one = self.minus_one[rows.shape] = torch.full(rows.shape, -1.0, dtype=logp.dtype, device=logp.device)
        g = logp.exp_().scatter_add_(-2, rows, minus_one).div_(y.shape[-1])  # (softmax - one_hot(y)) / B
        g = g.mT  # batch-major: B x classes
        for i in range(len(params) - 2, -1, -2):
            h = inputs[i // 2]
            torch.bmm(g.mT, h, out=grads[i])
            torch.sum(g, -2, out=grads[i + 1])
            if i:  # the gradient for the layer below
                g = torch.ops.aten.threshold_backward(torch.bmm(g, params[i]), h, 0.0)
        for group, mine in self.groups:  # the optimizer's own fused kernel, as its step() calls it
            if not mine:
                continue
            momentum = group["momentum"]
            state = [self.opt.state[self.params[i]] for i in mine]
            first = momentum != 0 and all(st.get("momentum_buffer") is None for st in state)  # as SGD decides
            if first:
                for st, i in zip(state, mine):
                    st["momentum_buffer"] = torch.empty_like(self.params[i])
            torch._fused_sgd_(
                [self.params[i] for i in mine],
                [self.flat_grads[i] for i in mine],
                [st["momentum_buffer"] for st in state] if momentum else [],
                weight_decay=group["weight_decay"],
                momentum=momentum,
                lr=group["lr"],
                dampening=0.0,
                nesterov=False,
                maximize=False,
                is_first_step=first,
            )
        return loss if self.stacked else loss[0]


def fused_step(model: nn.Module, opt: torch.optim.SGD) -> FusedStep | None:
    """The fused step for ``model`` when it is a plain MLP whose parameters ``opt`` trains, else None."""
    if not is_plain_mlp(model):
        return None
    params = [t for m in model.children() if isinstance(m, nn.Linear) for t in (m.weight, m.bias)]
    try:
        return FusedStep(params, opt)
    except ValueError:
        return None
