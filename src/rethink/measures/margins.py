"""Margin measures (MEASURES.md sec. 1): the training margins, gamma, and Bartlett, Foster and
Telgarsky's (2017) spectral complexity R_A and normalized margins."""

from __future__ import annotations

import math

import torch

from rethink.measures.context import Context
from rethink.measures.norms import exp, log_product
from rethink.measures.registry import measure


@measure("margin", "gamma: the percentile-th (default 10th) percentile of the training margins")
def margin(ctx: Context) -> float:
    """gamma = the ``ctx.percentile``-th percentile of margin_i = f(x_i)[y_i] - max_{j != y_i} f(x_i)[j]
    over the training set, y the run's training labels (MEASURES.md sec. 1, notation and eq. 22)."""
    return ctx.margin


@measure("margins", "the training margins f(x_i)[y_i] - max_{j != y_i} f(x_i)[j], one per example", distribution=True)
def margins(ctx: Context) -> list[float]:
    """margin_i for every training example, in the order of ``ctx.x`` (MEASURES.md notation)."""
    return [float(v) for v in ctx.margins]


def _norm_2_1(matrix: torch.Tensor) -> float:
    """||A^T||_{2,1}: the sum of the l2 norms of the columns of A (out x in)."""
    return float(matrix.reshape(matrix.shape[0], -1).norm(dim=0).sum())


@measure("spectral_complexity", "Bartlett et al.'s R_A, reference M_i = initialization (zero without init)")
def spectral_complexity(ctx: Context) -> float:
    """R_A = (prod_i rho_i ||A_i||_sigma) (sum_i ||A_i^T - M_i^T||_{2,1}^{2/3} / ||A_i||_sigma^{2/3})^{3/2}
    (MEASURES.md sec. 1, Bartlett et al. 2017) with rho_i = 1 and M_i = W_i^0 (zero without ``init``).
    For a convolution ||A||_sigma is the operator norm of the convolution, while the (2,1) norm is
    taken on the kernel reshaped to (out, in * k * k), summing the l2 norms of its columns."""
    sigmas = ctx.spectral_norms
    if any(s == 0 for s in sigmas):
        return 0.0  # some layer maps everything to zero: the network is constant
    refs = ctx.init_layers or [None] * len(ctx.layers)
    terms = []
    for layer, ref, sigma in zip(ctx.layers, refs, sigmas):
        diff = layer.weight if ref is None else layer.weight - ref.weight
        terms.append((_norm_2_1(diff) / sigma) ** (2 / 3))
    total = sum(terms)
    if total == 0:
        return 0.0
    return exp(log_product(sigmas) + 1.5 * math.log(total))


@measure(
    "normalized_margins",
    "margin_i / (R_A ||X||_2 / m) for every training example (Bartlett et al.'s Figure 2)",
    distribution=True,
)
def normalized_margins(ctx: Context) -> list[float] | None:
    """margin_i / (R_A ||X||_2 / m), ||X||_2 = sqrt(sum_i ||x_i||^2) (MEASURES.md sec. 1): the margin
    over the scale R_A ||X||_2 / m that Bartlett et al.'s bound divides by (their Figure 2); None when
    R_A is 0 or inf."""
    r_a = spectral_complexity(ctx)
    if r_a == 0 or not math.isfinite(r_a):
        return None
    m = len(ctx.x)
    x_norm = float(ctx.x.double().pow(2).sum().sqrt())
    return [float(v) * m / (r_a * x_norm) for v in ctx.margins]
