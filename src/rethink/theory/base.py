"""What Theorem 1's construction (:mod:`.expressivity`) and its deep version (:mod:`.deep`) share:
the two-layer ReLU network and the float64 view of the inputs both evaluate."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def as_tensor(v) -> torch.Tensor:
    """A tensor as it is; anything else through numpy (so Python floats stay float64)."""
    return v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))


def flatten64(x) -> torch.Tensor:
    """Inputs (N, ...) as a float64 matrix (N, d); float32 values convert exactly."""
    x = as_tensor(x)
    return x.reshape(len(x), -1).to(torch.float64)


class TwoLayerReLU(nn.Module):
    """c(x) = sum_j w_j max(<a, x> - b_j, 0): Theorem 1's network, in float64.

    ``w`` of shape (n,) gives one output per input (shape (N,)); ``w`` of shape (n, K) gives K
    outputs sharing ``a`` and ``b`` (shape (N, K)). Parameters: d + n + n (or n K).
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor):
        super().__init__()
        self.a, self.b, self.w = nn.Parameter(a), nn.Parameter(b), nn.Parameter(w)

    @property
    def width(self) -> int:
        return len(self.b)

    def forward(self, x) -> torch.Tensor:
        h = flatten64(x) @ self.a
        return (h[:, None] - self.b).relu_() @ self.w
