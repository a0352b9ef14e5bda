"""Option checks and small layers shared by the built-in model families."""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from rethink.errors import UserError


def check_dropout(p) -> float:
    """The dropout probability as a float in [0, 1), or a UserError."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) < 1.0:
        raise UserError(f"dropout must be a number in [0, 1), got {p!r}; e.g. dropout=0.5")
    return float(p)


def check_width(w) -> float:
    """The width multiplier as a positive finite float, or a UserError."""
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (math.isfinite(w) and w > 0):
        raise UserError(f"width must be a positive number, got {w!r}; e.g. width=0.25 for a 4x narrower model")
    return float(w)


def scaled(units: int, width: float) -> int:
    """``units * width`` rounded half up, at least 1."""
    return max(1, int(math.floor(units * width + 0.5)))


def check_input(input_shape, num_classes) -> tuple[tuple[int, int, int], int]:
    """Validate ``(C, H, W)`` and the class count; return them as plain ints."""
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"input_shape must be (channels, height, width) of positive ints, got {input_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise UserError(f"num_classes must be a positive int, got {num_classes!r}")
    return shape, int(num_classes)


def dropout_layer(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or ``nn.Identity()`` when p == 0 (no RNG use, vmap-friendly).

    Either way the module occupies the same slot, so state_dict keys do not depend on ``p``.
    """
    return nn.Dropout(p) if p > 0 else nn.Identity()


class GlobalAvgPool(nn.Module):
    """Mean over the spatial dimensions: (N, C, H, W) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))
