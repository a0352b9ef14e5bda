"""Depth k (Appendix C of the paper): the function of Theorem 1's network, computed by a depth-k
ReLU network of width O(n / k) per layer with O(n + d) nonzero weights.

Layout, for depth k >= 3 and G = k - 2 groups of about n / G of the n hidden units:

* layer 1 computes t = max(<a, x> - b_1, 0): d weights, one unit;
* hidden layer l + 1 (l = 1..G) holds t again (one weight, while later layers need it), group l's
  units max(t - (b_j - b_1), 0) = max(<a, x> - b_j, 0) (one weight and one bias each: every
  b_j >= b_1, so when <a, x> < b_1 both sides are 0), and for l >= 2 the running output so far as
  the pair max(s, 0), max(-s, 0) per output (s = sum of group l - 1's contributions w_j u_j plus
  the previous pair's difference);
* the output layer adds group G's contributions to the last pair's difference.

So the deep network computes exactly the same function as the two-layer one, everywhere, not only
on the sample; on lattice data (exact projections and differences) its units take exactly the same
values, otherwise each differs by the rounding of two more subtractions. Layers are
stored sparse: each holds only its structural nonzeros, and those (plus the biases) are what
``num_params`` counts: d + 1 plus, per unit, one weight and one bias in and K (last group) or 2K
(earlier groups) weights out, plus O(k K): between d + 3n and d + 4n + O(k) for one output.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .base import TwoLayerReLU, flatten64


class SparseLinear(nn.Module):
    """x -> x W^T + bias with W (out x in) stored as its structural nonzeros only."""

    def __init__(self, rows, cols, values, shape: tuple[int, int], bias: torch.Tensor | None):
        super().__init__()
        rows, cols = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
        order = torch.argsort(rows * shape[1] + cols)  # row-major and unique: a coalesced COO tensor
        self.register_buffer("indices", torch.stack([rows[order], cols[order]]))
        self.values = nn.Parameter(torch.as_tensor(values, dtype=torch.float64)[order])
        self.bias = None if bias is None else nn.Parameter(bias)
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sparse_coo_tensor(self.indices, self.values, self.shape, is_coalesced=True, check_invariants=False)
        out = torch.sparse.mm(w, x.T).T
        return out if self.bias is None else out + self.bias


class DeepReLU(nn.Module):
    """A stack of sparse layers with ReLU between them (none after the last), in float64."""

    def __init__(self, layers: list[SparseLinear], scalar: bool):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.scalar = scalar

    @property
    def width(self) -> int:
        return max(layer.shape[0] for layer in self.layers)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def forward(self, x) -> torch.Tensor:
        h = flatten64(x)
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h))
        out = self.layers[-1](h)
        return out[:, 0] if self.scalar else out


class _Layer:
    """Collects one sparse layer's units (with their biases) and nonzero weights."""

    def __init__(self):
        self.rows, self.cols, self.vals, self.bias = [], [], [], []
        self.width = 0

    def units(self, count: int, bias) -> np.ndarray:
        """Append ``count`` units; returns their positions."""
        self.bias.append(np.broadcast_to(np.asarray(bias, dtype=np.float64), (count,)))
        self.width += count
        return np.arange(self.width - count, self.width)

    def connect(self, rows, cols, values) -> None:
        self.rows.append(rows), self.cols.append(cols), self.vals.append(values)

    def add_sum(self, rows, units, weights, pair, sign: float) -> None:
        """rows[k] += sign * (sum_j weights[j, k] units_j + pair[0][k] - pair[1][k])."""
        k_out = len(rows)
        self.connect(np.tile(rows, len(units)), np.repeat(units, k_out), sign * weights.ravel())
        if pair is not None:
            self.connect(rows, pair[0], np.full(k_out, sign))
            self.connect(rows, pair[1], np.full(k_out, -sign))

    def build(self, in_width: int, bias: bool = True) -> SparseLinear:
        return SparseLinear(
            np.concatenate(self.rows),
            np.concatenate(self.cols),
            np.concatenate(self.vals),
            (self.width, in_width),
            torch.from_numpy(np.concatenate(self.bias)) if bias else None,
        )


def deepen(net: TwoLayerReLU, depth: int) -> DeepReLU:
    """The depth-``depth`` network (>= 3) computing the same function as ``net``."""
    a, b, w = net.a.detach(), net.b.detach(), net.w.detach()
    n, scalar = len(b), w.ndim == 1
    if depth - 2 > n:
        raise UserError(
            f"depth {depth} needs at least {depth - 2} distinct points (one group per middle layer); "
            f"use a depth of at most {n + 2}"
        )
    w = (w[:, None] if scalar else w).numpy()
    k_out = w.shape[1]
    offsets = (b - b[0]).numpy()
    first = _Layer()
    t = first.units(1, -float(b[0]))
    first.connect(np.zeros(len(a), dtype=np.int64), np.arange(len(a)), a.numpy())
    layers = [first.build(len(a))]
    groups = np.array_split(np.arange(n), depth - 2)
    prev = None  # (positions of the previous group's units, their indices), then the pair
    pair = None
    for depth_at, group in enumerate(groups, start=1):
        layer = _Layer()
        t_next = None
        if depth_at < len(groups):  # carry t to the next layer
            t_next = layer.units(1, 0.0)
            layer.connect(t_next, t, np.ones(1))
        units = layer.units(len(group), -offsets[group])
        layer.connect(units, np.repeat(t, len(group)), np.ones(len(group)))
        pair_next = None
        if prev is not None:
            pair_next = layer.units(2 * k_out, 0.0).reshape(2, k_out)  # max(s, 0), max(-s, 0)
            for sign, rows in ((1.0, pair_next[0]), (-1.0, pair_next[1])):
                layer.add_sum(rows, prev[0], w[prev[1]], pair, sign)
        layers.append(layer.build(layers[-1].shape[0]))
        t, prev, pair = t_next, (units, group), pair_next
    out = _Layer()
    out.add_sum(out.units(k_out, 0.0), prev[0], w[prev[1]], pair, 1.0)
    layers.append(out.build(layers[-1].shape[0], bias=False))
    return DeepReLU(layers, scalar)
