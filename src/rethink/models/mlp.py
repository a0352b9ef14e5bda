"""Multilayer perceptrons: flatten -> [Linear -> ReLU (-> Dropout)] * k -> Linear."""

from __future__ import annotations

import numbers
from collections import OrderedDict

from torch import nn

from rethink.errors import UserError
from rethink.models._common import check_dropout, check_input, check_width, dropout_layer, scaled
from rethink.models.registry import register


def _check_hidden(hidden) -> tuple[int, ...]:
    if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
        hidden = (hidden,)
    try:
        units = tuple(hidden)
    except TypeError:
        units = None
    if units is None or not all(isinstance(u, numbers.Integral) and not isinstance(u, bool) and u >= 1 for u in units):
        raise UserError(
            f"hidden must be a tuple of positive ints (units per hidden layer), got {hidden!r}; e.g. hidden=(512, 512)"
        )
    return tuple(int(u) for u in units)


@register("mlp", "multilayer perceptron; options hidden (units per layer, default (512,)), dropout, width")
def mlp(input_shape, num_classes, *, hidden=(512,), dropout: float = 0.0, width: float = 1.0) -> nn.Sequential:
    """An MLP on the flattened input.

    ``hidden`` gives the units of each hidden layer (``()`` gives a linear model); ``width``
    scales them; ``dropout`` is applied after each hidden ReLU.
    """
    (c, h, w), num_classes = check_input(input_shape, num_classes)
    units = [scaled(u, check_width(width)) for u in _check_hidden(hidden)]
    p = check_dropout(dropout)
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    fan_in = c * h * w
    for i, u in enumerate(units, start=1):
        layers += [(f"fc{i}", nn.Linear(fan_in, u)), (f"relu{i}", nn.ReLU()), (f"drop{i}", dropout_layer(p))]
        fan_in = u
    layers.append(("out", nn.Linear(fan_in, num_classes)))
    return nn.Sequential(OrderedDict(layers))


@register("mlp1x512", "MLP with one hidden layer of 512 units (paper's MLP 1x512)")
def mlp1x512(input_shape, num_classes, *, dropout: float = 0.0, width: float = 1.0) -> nn.Sequential:
    """The paper's MLP 1x512: one hidden layer of 512 units."""
    return mlp(input_shape, num_classes, hidden=(512,), dropout=dropout, width=width)


@register("mlp3x512", "MLP with three hidden layers of 512 units (paper's MLP 3x512)")
def mlp3x512(input_shape, num_classes, *, dropout: float = 0.0, width: float = 1.0) -> nn.Sequential:
    """The paper's MLP 3x512: three hidden layers of 512 units."""
    return mlp(input_shape, num_classes, hidden=(512, 512, 512), dropout=dropout, width=width)
