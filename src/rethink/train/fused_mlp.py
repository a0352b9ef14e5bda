"""A fused training step for plain MLPs: forward, backward and SGD in one pass over the weights.

For an MLP (flatten, then linear layers with biases and ReLUs between them) the step is written
out by hand rather than taken from autograd and the optimizer: each layer's weight gradient is
accumulated straight into its momentum buffer by the matrix product itself
(``buf = momentum * buf + g^T h`` as one ``addmm``), and all parameters are updated by one
``_foreach_add_``. That removes the gradient tensors (a write and a read of every weight per
step) and most of the per-step dispatch, which is much of a small MLP's step on a CPU
(benchmarks/train_speed.py: MLP 1x512 from about 50% to over 60% of the float32 peak).

The arithmetic is :class:`torch.optim.SGD`'s (momentum, dampening 0, weight decay ``wd * w``
added to the momentum, not Nesterov) on the mean cross-entropy, summed in another order, so a
run follows the autograd step's trajectory to float tolerance (tests/test_speed_choices.py).
Momentum buffers live in the optimizer's state, so checkpoints keep their format and either path
resumes the other's. The same code steps K models stacked on a leading dimension (the batched
engine): the products become batched products, each model's loss its own mean.
"""

from __future__ import annotations

import torch
from torch import nn


def is_plain_mlp(model: nn.Module) -> bool:
    """Whether ``model`` is a plain MLP: a Sequential of Flatten, then Linear layers with biases and
    ReLUs between them (Identity placeholders aside)."""
    kinds = [type(m) for m in model.children() if not isinstance(m, nn.Identity)]
    hidden = (len(kinds) - 2) // 2
    return (isinstance(model, nn.Sequential) and kinds == [nn.Flatten] + [nn.Linear, nn.ReLU] * hidden + [nn.Linear]
            and all(m.bias is not None for m in model.children() if isinstance(m, nn.Linear)))


def _t(a: torch.Tensor) -> torch.Tensor:
    """The matrix transpose (of each stacked matrix)."""
    return a.transpose(-2, -1)


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, beta: float) -> torch.Tensor:
    """out = beta * out + a b, one model's matrices or K stacked (beta 0 ignores out's contents)."""
    if a.ndim == 2:
        return torch.addmm(out, a, b, beta=beta, out=out)
    return torch.baddbmm(out, a, b, beta=beta, out=out)


def forward(params: list[torch.Tensor], x: torch.Tensor, keep: bool = False):
    """The logits, class-major, for inputs ``x`` of the MLP whose parameters are ``params`` (w1,
    b1, w2, b2, ...): classes x B for one model (x: B x ...), K x classes x B for K stacked (x: K x
    B x ...). Class-major, softmax and cross-entropy run along contiguous memory (measured 5-10x
    faster than over rows of ten classes). With ``keep``, also every layer's input."""
    h = x.flatten(params[0].ndim - 1)  # stacked weights have a leading dimension
    inputs = []
    for i in range(0, len(params) - 2, 2):
        inputs.append(h)
        w, b = params[i], params[i + 1]
        h = (torch.addmm(b, h, w.t()) if h.ndim == 2 else torch.baddbmm(b.unsqueeze(1), h, _t(w))).relu_()
    inputs.append(h)
    w, b = params[-2], params[-1]
    logits = torch.addmm(b[:, None], w, h.t()) if h.ndim == 2 else torch.baddbmm(b.unsqueeze(-1), w, _t(h))
    return (logits, inputs) if keep else logits


class FusedStep:
    """SGD steps on the mean cross-entropy for the MLP parameters ``params`` (w1, b1, ..., stacked
    or not), with the settings and momentum buffers of ``opt``, an SGD optimizer over exactly them."""

    def __init__(self, params: list[torch.Tensor], opt: torch.optim.SGD):
        self.params, self.opt = params, opt
        group = {p: g for g in opt.param_groups for p in g["params"]}
        if set(group) != set(params) or any(g["nesterov"] or g["dampening"] for g in opt.param_groups):
            raise ValueError("the fused MLP step needs plain momentum SGD over exactly the MLP's parameters")
        self.groups = [group[p] for p in params]
        self.decay = [(i, g["weight_decay"]) for i, g in enumerate(self.groups) if g["weight_decay"]]
        self.minus_one: dict = {}  # by label shape: the -1s that turn softmax into its gradient

    def _buffers(self) -> list[tuple[torch.Tensor, float]]:
        """Every parameter's momentum buffer and the factor on its old contents (0 where the buffer
        is new: the optimizer's first step, or one resumed without momentum)."""
        out = []
        for p, g in zip(self.params, self.groups):
            state = self.opt.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p)
                out.append((state["momentum_buffer"], 0.0))
            else:
                out.append((state["momentum_buffer"], g["momentum"]))
        return out

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step on inputs ``x`` and labels ``y`` (B, or K x B); the loss before the step
        (a scalar, or one per model)."""
        params, buffers = self.params, self._buffers()
        logits, inputs = forward(params, x, keep=True)
        logp = torch.log_softmax(logits, -2)
        rows = y.unsqueeze(-2)
        loss = -logp.gather(-2, rows).mean((-2, -1))
        minus_one = self.minus_one.get(rows.shape)
        if minus_one is None:
            minus_one = self.minus_one[rows.shape] = torch.full(rows.shape, -1.0, dtype=logp.dtype, device=logp.device)
        g = logp.exp_().scatter_add_(-2, rows, minus_one).div_(y.shape[-1])  # (softmax - one_hot(y)) / B
        g = _t(g)  # batch-major: B x classes
        for i in range(len(params) - 2, -1, -2):
            w, h = params[i], inputs[i // 2]
            (wbuf, wbeta), (bbuf, bbeta) = buffers[i], buffers[i + 1]
            _mm(_t(g), h, wbuf, wbeta)  # buf = momentum * buf + g^T h
            torch.add(g.sum(-2), bbuf, alpha=bbeta, out=bbuf)
            if i:  # the gradient for the layer below, with this layer's weights before the update
                g = torch.ops.aten.threshold_backward(torch.matmul(g, w), h, 0.0)
        for i, wd in self.decay:  # + weight decay * parameter
            buffers[i][0].add_(params[i], alpha=wd)
        lrs = [g["lr"] for g in self.groups]
        if all(lr == lrs[0] for lr in lrs):  # w -= lr * buf, in one call
            torch._foreach_add_(params, [b for b, _ in buffers], alpha=-lrs[0])
        else:
            for p, (b, _), lr in zip(params, buffers, lrs):
                p.add_(b, alpha=-lr)
        return loss


def fused_step(model: nn.Module, opt: torch.optim.SGD) -> FusedStep | None:
    """The fused step for ``model`` when it is a plain MLP whose parameters ``opt`` trains, else None."""
    if not is_plain_mlp(model):
        return None
    params = [t for m in model.children() if isinstance(m, nn.Linear) for t in (m.weight, m.bias)]
    try:
        return FusedStep(params, opt)
    except ValueError:
        return None

