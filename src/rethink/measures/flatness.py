"""Flatness measures of Jiang et al. 2020 (MEASURES.md sec. 2): PAC-Bayes sigma and the bounds built
on it, its magnitude-aware form, and worst-case sharpness.

w is every parameter of the model (``named_parameters``: weights, biases and batch-norm scale and
shift), raw, with batch norm NOT folded: the noise is added to the parameters the network actually
computes with, and ||w||^2, ||w - w0||^2 are taken over the same vector. Buffers (batch-norm running
statistics) are neither perturbed nor counted. Accuracy is measured on the full ``ctx.x`` / ``ctx.y``
(the caller picks the subset) with the model in eval mode. The user's model is never modified: the
perturbed weights go through ``torch.func.functional_call``.

The searches return None when the perturbation at the top of the interval does not lower training
accuracy by TARGET_DROP - TOLERANCE (e.g. a model already at chance): no sigma or alpha exists there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from rethink.errors import UserError
from rethink.measures.context import Context
from rethink.measures.registry import measure

TARGET_DROP = 0.1  # the training-accuracy drop that defines sigma and alpha
TOLERANCE = 0.01  # the bisection stops once the drop is within this of TARGET_DROP
LOW, HIGH = 0.0, 2.0  # the bisection interval for sigma, sigma' and alpha, alpha'
STEPS = 15  # bisection steps
DRAWS = 10  # Monte Carlo noise draws per bisection step (accuracy averaged over them)
SEED = 0  # seed of the torch.Generator every noise estimate restarts from
EPS = 1e-3  # eps of the magnitude-aware noise std sqrt(sigma'^2 w_i^2 + eps^2) and box alpha' (|w_i| + eps)
ASCENT_STEPS = 10  # projected sign-gradient ascent steps per alpha (sharpness)
ASCENT_FRACTION = 0.25  # ascent step size as a fraction of alpha (of the box half-width)
BATCH = 2048  # examples per forward pass

Params = dict[str, torch.Tensor]


def parameters(model: nn.Module) -> Params:
    """w: every parameter of ``model`` by name, detached (no batch-norm folding; buffers excluded)."""
    return {name: p.detach() for name, p in model.named_parameters()}


def noise_std(w: torch.Tensor, sigma: float, magnitude: bool) -> torch.Tensor | float:
    """The noise std (not variance) of each weight: sigma, or sqrt(sigma'^2 w_i^2 + eps^2) magnitude-aware (eq. 56)."""
    return torch.sqrt(sigma**2 * w.pow(2) + EPS**2) if magnitude else sigma


def perturbation(params: Params, sigma: float, generator: torch.Generator, magnitude: bool = False) -> Params:
    """One draw of u ~ N(0, diag(std^2)) with std = noise_std(w, sigma): std multiplies a standard normal."""
    return {
        name: noise_std(w, sigma, magnitude) * torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype)
        for name, w in params.items()
    }


def accuracy(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> float:
    """Training accuracy of ``model`` run with weights ``params``, in batches of BATCH."""
    device = next(iter(params.values())).device
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(x), BATCH):
            out = functional_call(model, params, (x[start : start + BATCH].to(device),))
            correct += int((out.argmax(1) == y[start : start + BATCH].to(device)).sum())
    return correct / len(x)


def noisy_accuracy(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    magnitude: bool,
    draws: int = DRAWS,
) -> float:
    """Mean training accuracy over ``draws`` noise draws; the generator restarts at SEED so that every
    sigma scales the same standard-normal draws (the estimate is deterministic and monotone-friendly)."""
    generator = torch.Generator(device=next(iter(params.values())).device).manual_seed(SEED)
    total = 0.0
    for _ in range(draws):
        noise = perturbation(params, sigma, generator, magnitude)
        total += accuracy(model, {n: w + noise[n] for n, w in params.items()}, x, y)
    return total / draws


def bisect(drop_at: Callable[[float], float]) -> float | None:
    """The largest s in [LOW, HIGH] with drop_at(s) = TARGET_DROP +- TOLERANCE, by STEPS bisection steps
    (the midpoint of the last interval if none landed within TOLERANCE); None when drop_at(HIGH) is
    below TARGET_DROP - TOLERANCE."""
    if drop_at(HIGH) < TARGET_DROP - TOLERANCE:
        return None
    low, high = LOW, HIGH
    for _ in range(STEPS):
        mid = (low + high) / 2
        drop = drop_at(mid)
        if abs(drop - TARGET_DROP) <= TOLERANCE:
            return mid
        low, high = (low, mid) if drop > TARGET_DROP else (mid, high)
    return (low + high) / 2


def _cached(ctx: Context, key: str, compute: Callable[[], object]):
    """``compute()`` once per context: several measures share sigma and alpha."""
    cache = vars(ctx).setdefault("_flatness_cache", {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _setup(ctx: Context) -> tuple[nn.Module, Params, torch.Tensor, torch.Tensor, float]:
    """The model (eval mode), w, x, y (long) and the unperturbed training accuracy."""
    ctx.model.eval()  # Context's own forward pass does the same; eval mode is what accuracy is measured in
    params = parameters(ctx.model)
    y = torch.as_tensor(ctx.y).long()
    base = _cached(ctx, "base_accuracy", lambda: accuracy(ctx.model, params, ctx.x, y))
    return ctx.model, params, ctx.x, y, base


def _sigma(ctx: Context, magnitude: bool) -> float | None:
    model, params, x, y, base = _setup(ctx)
    return bisect(lambda s: base - noisy_accuracy(model, params, x, y, s, magnitude))


def pacbayes_sigma_of(ctx: Context) -> float | None:
    """sigma of MEASURES.md sec. 2, cached on ``ctx``: the largest std sigma of N(0, sigma^2 I) noise on
    every parameter that lowers training accuracy by TARGET_DROP (bisection; None if unreachable)."""
    return _cached(ctx, "pacbayes_sigma", lambda: _sigma(ctx, magnitude=False))


def pacbayes_mag_sigma_of(ctx: Context) -> float | None:
    """sigma' (eq. 56, 57, 61), cached on ``ctx``: as sigma with noise std sqrt(sigma'^2 w_i^2 + eps^2)."""
    return _cached(ctx, "pacbayes_mag_sigma", lambda: _sigma(ctx, magnitude=True))


def _squared_norm(tensors: Params) -> float:
    return float(sum(t.double().pow(2).sum() for t in tensors.values()))


def _bound(ctx: Context, squared_norm: float) -> float | None:
    """squared_norm / (4 sigma^2) + ln(m / sigma) + 10 (eq. 48, 49)."""
    sigma = pacbayes_sigma_of(ctx)
    if sigma is None:
        return None
    return squared_norm / (4 * sigma**2) + math.log(len(ctx.x) / sigma) + 10


@measure("pacbayes_sigma", "largest std sigma of Gaussian noise on all parameters dropping train accuracy by 0.1")
def pacbayes_sigma(ctx: Context) -> float | None:
    """sigma (MEASURES.md sec. 2): bisection on [0, 2], 15 steps, 10 draws; None if unreachable."""
    return pacbayes_sigma_of(ctx)


@measure("pacbayes_init", "||w - w0||^2 / (4 sigma^2) + ln(m / sigma) + 10, all parameters (eq. 48); None without init")
def pacbayes_init(ctx: Context) -> float | None:
    """||w - w0||^2 / (4 sigma^2) + ln(m / sigma) + 10 (eq. 48), w = all raw parameters."""
    if ctx.init is None:
        return None
    w, w0 = parameters(ctx.model), parameters(ctx.init)
    if [(n, t.shape) for n, t in w.items()] != [(n, t.shape) for n, t in w0.items()]:
        raise UserError("init does not have the model's architecture; pass the same network at initialization")
    # Subtract in float64 so that a tiny distance from init is not lost to float32 rounding.
    return _bound(ctx, _squared_norm({n: w[n].double() - w0[n].to(w[n].device).double() for n in w}))


@measure("pacbayes_orig", "||w||^2 / (4 sigma^2) + ln(m / sigma) + 10, all parameters (eq. 49)")
def pacbayes_orig(ctx: Context) -> float | None:
    """||w||^2 / (4 sigma^2) + ln(m / sigma) + 10 (eq. 49), w = all raw parameters."""
    return _bound(ctx, _squared_norm(parameters(ctx.model)))


@measure("pacbayes_flatness", "1 / sigma^2 (eq. 53)")
def pacbayes_flatness(ctx: Context) -> float | None:
    """1 / sigma^2 (eq. 53)."""
    sigma = pacbayes_sigma_of(ctx)
    return None if sigma is None else 1 / sigma**2


@measure("pacbayes_mag_sigma", "sigma' with noise std sqrt(sigma'^2 w_i^2 + 1e-6) per parameter (eq. 56, 57, 61)")
def pacbayes_mag_sigma(ctx: Context) -> float | None:
    """sigma' (eq. 56, 57, 61): noise std sqrt(sigma'^2 w_i^2 + eps^2), eps = 1e-3, same bisection."""
    return pacbayes_mag_sigma_of(ctx)


@measure("pacbayes_mag_flatness", "1 / sigma'^2, magnitude-aware (eq. 61)")
def pacbayes_mag_flatness(ctx: Context) -> float | None:
    """1 / sigma'^2 (eq. 61)."""
    sigma = pacbayes_mag_sigma_of(ctx)
    return None if sigma is None else 1 / sigma**2


def worst_accuracy(
    model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, alpha: float, magnitude: bool
) -> float:
    """Training accuracy after ASCENT_STEPS projected sign-gradient ascent steps (size ASCENT_FRACTION
    of the box) on the summed training cross-entropy, starting at delta = 0, inside the box
    |delta_i| <= alpha, or alpha (|w_i| + eps) magnitude-aware (MEASURES.md sec. 2)."""
    device = next(iter(params.values())).device
    box = {n: alpha * (w.abs() + EPS) if magnitude else torch.full_like(w, alpha) for n, w in params.items()}
    delta = {n: torch.zeros_like(w) for n, w in params.items()}
    for _ in range(ASCENT_STEPS):
        grads = {n: torch.zeros_like(w) for n, w in params.items()}
        for start in range(0, len(x), BATCH):
            d = {n: t.clone().requires_grad_(True) for n, t in delta.items()}
            out = functional_call(
                model, {n: w + d[n] for n, w in params.items()}, (x[start : start + BATCH].to(device),)
            )
            loss = F.cross_entropy(out, y[start : start + BATCH].to(device), reduction="sum")
            for n, g in zip(d, torch.autograd.grad(loss, list(d.values()), allow_unused=True)):
                if g is not None:
                    grads[n] += g
        # Sign steps then clamping: the projection onto the box.
        delta = {n: torch.clamp(delta[n] + ASCENT_FRACTION * box[n] * grads[n].sign(), -box[n], box[n]) for n in delta}
    return accuracy(model, {n: w + delta[n] for n, w in params.items()}, x, y)


def _alpha(ctx: Context, magnitude: bool) -> float | None:
    model, params, x, y, base = _setup(ctx)
    return bisect(lambda a: base - worst_accuracy(model, params, x, y, a, magnitude))


@measure("sharpness", "worst-case sharpness 1/alpha: box |delta_i| <= alpha on all parameters (sec. 2)")
def sharpness(ctx: Context) -> float | None:
    """1 / alpha (MEASURES.md sec. 2), alpha the largest box half-width in which projected gradient
    ascent raises training error by 0.1 (bisection on [0, 2], 15 steps); None if unreachable."""
    alpha = _cached(ctx, "sharpness_alpha", lambda: _alpha(ctx, magnitude=False))
    return None if alpha is None else 1 / alpha


@measure("sharpness_mag", "magnitude-aware sharpness 1/alpha': box |delta_i| <= alpha' (|w_i| + 1e-3) (sec. 2)")
def sharpness_mag(ctx: Context) -> float | None:
    """1 / alpha' (MEASURES.md sec. 2): as sharpness with the box |delta_i| <= alpha' (|w_i| + eps)."""
    alpha = _cached(ctx, "sharpness_mag_alpha", lambda: _alpha(ctx, magnitude=True))
    return None if alpha is None else 1 / alpha
