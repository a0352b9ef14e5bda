"""Norm measures of Jiang et al. 2020 (MEASURES.md sec. 1): size, spectral, Frobenius, distance from
initialization, parameter norm and path norm, on the layers W_1..W_d with batch norm folded and
biases excluded. Products of many norms are summed in log space; a product too large for a float is inf."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from rethink.measures.context import Context
from rethink.measures.registry import measure


def log_product(values: list[float]) -> float:
    """log prod_i v_i (-inf when some v_i is 0)."""
    return -math.inf if any(v == 0 for v in values) else sum(math.log(v) for v in values)


def exp(log_value: float) -> float:
    """exp, giving inf instead of an OverflowError."""
    try:
        return math.exp(log_value)
    except OverflowError:
        return math.inf


def over_margin(value: float, ctx: Context) -> float | None:
    """value / gamma^2; None when gamma <= 0 (the network does not fit that percentile of its training set)."""
    return value / ctx.margin**2 if ctx.margin > 0 else None


def sum_form(log_prod: float, d: int) -> float:
    """d (prod)^(1/d): the sum of the d norms after the rebalancing that minimizes it (sum forms, eq. 29-39)."""
    return d * exp(log_prod / d)


def frobenius_squares(ctx: Context) -> list[float]:
    return [float(layer.weight.pow(2).sum()) for layer in ctx.layers]


@measure("params", "number of parameters (eq. 20)")
def params(ctx: Context) -> int:
    """#params (eq. 20): every parameter of the model, shared ones counted once."""
    return sum(p.numel() for p in ctx.model.parameters())


@measure("spectral_product", "prod_i ||W_i||_2^2, operator norms for convolutions (eq. 29-35)")
def spectral_product(ctx: Context) -> float:
    """prod_i ||W_i||_2^2 (eq. 29-35 family, prod-of-spec)."""
    return exp(2 * log_product(ctx.spectral_norms))


@measure("spectral_product_over_margin", "prod_i ||W_i||_2^2 / gamma^2 (eq. 29-35)")
def spectral_product_over_margin(ctx: Context) -> float | None:
    """prod_i ||W_i||_2^2 / gamma^2 (eq. 29-35 family, prod-of-spec/margin)."""
    return over_margin(spectral_product(ctx), ctx)


@measure("spectral_sum", "d (prod_i ||W_i||_2^2)^(1/d) (eq. 29-35)")
def spectral_sum(ctx: Context) -> float:
    """sum-of-spec, d (prod_i ||W_i||_2^2)^(1/d) (eq. 29-35 family): sum_i ||W_i||_2^2 after balancing the layers."""
    return sum_form(2 * log_product(ctx.spectral_norms), len(ctx.layers))


@measure("spectral_sum_over_margin", "d (prod_i ||W_i||_2^2 / gamma^2)^(1/d) (eq. 29-35)")
def spectral_sum_over_margin(ctx: Context) -> float | None:
    """sum-of-spec/margin, d (prod_i ||W_i||_2^2 / gamma^2)^(1/d) (eq. 29-35 family)."""
    if ctx.margin <= 0:
        return None
    return sum_form(2 * log_product(ctx.spectral_norms) - 2 * math.log(ctx.margin), len(ctx.layers))


@measure("spectral_init_distance", "sum_i ||W_i - W_i^0||_2^2 (eq. 41); None without init")
def spectral_init_distance(ctx: Context) -> float | None:
    """sum_i ||W_i - W_i^0||_2^2 (eq. 41), operator norms for convolutions."""
    dists = ctx.init_spectral_distances
    return None if dists is None else sum(d * d for d in dists)


@measure("frobenius_product", "prod_i ||W_i||_F^2 (eq. 36-39)")
def frobenius_product(ctx: Context) -> float:
    """prod_i ||W_i||_F^2 (eq. 36-39, prod-of-fro)."""
    return exp(log_product(frobenius_squares(ctx)))


@measure("frobenius_product_over_margin", "prod_i ||W_i||_F^2 / gamma^2 (eq. 36-39)")
def frobenius_product_over_margin(ctx: Context) -> float | None:
    """prod_i ||W_i||_F^2 / gamma^2 (eq. 36-39, prod-of-fro/margin)."""
    return over_margin(frobenius_product(ctx), ctx)


@measure("frobenius_sum", "d (prod_i ||W_i||_F^2)^(1/d) (eq. 36-39)")
def frobenius_sum(ctx: Context) -> float:
    """sum-of-fro, d (prod_i ||W_i||_F^2)^(1/d) (eq. 36-39): sum_i ||W_i||_F^2 after balancing the layers."""
    return sum_form(log_product(frobenius_squares(ctx)), len(ctx.layers))


@measure("frobenius_sum_over_margin", "d (prod_i ||W_i||_F^2 / gamma^2)^(1/d) (eq. 36-39)")
def frobenius_sum_over_margin(ctx: Context) -> float | None:
    """sum-of-fro/margin, d (prod_i ||W_i||_F^2 / gamma^2)^(1/d) (eq. 36-39)."""
    if ctx.margin <= 0:
        return None
    return sum_form(log_product(frobenius_squares(ctx)) - 2 * math.log(ctx.margin), len(ctx.layers))


@measure("frobenius_init_distance", "sum_i ||W_i - W_i^0||_F^2 (eq. 40); None without init")
def frobenius_init_distance(ctx: Context) -> float | None:
    """sum_i ||W_i - W_i^0||_F^2 (eq. 40)."""
    if ctx.init_layers is None:
        return None
    return sum(float((a.weight - b.weight).pow(2).sum()) for a, b in zip(ctx.layers, ctx.init_layers))


@measure("param_norm", "sum_i ||W_i||_F^2 (eq. 42)")
def param_norm(ctx: Context) -> float:
    """sum_i ||W_i||_F^2 (eq. 42), on the folded weights without biases."""
    return sum(frobenius_squares(ctx))


def _set_child(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


@measure("path_norm", "sum of the outputs of the network with squared folded weights on an all-ones input (eq. 44)")
def path_norm(ctx: Context) -> float:
    """Path norm (eq. 44): sum_j f_{w^2}(1)[j], running the real network (so branches, pooling and
    local response norm act as trained) in float64, eval mode, with every layer's weight replaced
    by its folded weight squared, every bias zeroed, and each folded batch norm replaced by identity."""
    net = copy.deepcopy(ctx.model).double().eval()
    for layer in ctx.layers:
        module = net.get_submodule(layer.path)
        with torch.no_grad():
            module.weight.copy_(layer.weight.pow(2))
            if module.bias is not None:
                module.bias.zero_()
        if layer.bn_path is not None:
            _set_child(net, layer.bn_path, nn.Identity())
    device = next(net.parameters()).device
    with torch.inference_mode():
        out = net(torch.ones((1, *ctx.x.shape[1:]), dtype=torch.float64, device=device))
    return float(out.sum())


@measure("path_norm_over_margin", "path norm / gamma^2 (eq. 43)")
def path_norm_over_margin(ctx: Context) -> float | None:
    """Path norm / gamma^2 (eq. 43)."""
    return over_margin(path_norm(ctx), ctx)
