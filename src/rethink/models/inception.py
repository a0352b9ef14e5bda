"""The small Inception of Zhang et al. (2017), appendix figure 3 (after Krizhevsky-scale CIFAR nets).

Conv module: conv (no bias) -> batch norm with a learnable shift but no scale -> ReLU.
Inception(c1, c3): a 1x1 conv module (c1) and a 3x3 conv module (c3, padding 1), concatenated.
Downsample(c3): a 3x3 stride-2 conv module (c3) and a 3x3 stride-2 max-pool, concatenated.
Both downsample branches use padding 1, so a side of ``n`` becomes ``ceil(n / 2)``
(28 -> 14 -> 7, 32 -> 16 -> 8, 8 -> 4 -> 2).

Network: Conv(96, 3x3) -> Inc(32,32) -> Inc(32,48) -> Down(80) -> Inc(112,48) -> Inc(96,64)
-> Inc(80,80) -> Inc(48,96) -> Down(96) -> Inc(176,160) -> Inc(176,160) -> global mean pool
-> (dropout) -> linear. ``inception-nobn`` removes every batch norm and gives the convolutions
a bias instead, which keeps the parameter count (1,649,402 for 3x28x28 and 10 classes), and
starts them from He's initialization (see :class:`ConvModule`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from rethink.models._common import GlobalAvgPool, check_dropout, check_input, check_width, dropout_layer, scaled
from rethink.models.registry import register


class ShiftBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with a learnable per-channel shift (``bias``) and no scale (``weight`` is None).

    Like TF's ``batch_norm(scale=False)``. Still an ``nn.BatchNorm2d`` (running statistics,
    ``eval()``, ``isinstance`` checks all behave as usual).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False, track_running_stats=True)
        self.bias = nn.Parameter(torch.zeros(num_features))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if isinstance(getattr(self, "bias", None), nn.Parameter):
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", scale=False, shift=True"


class ConvModule(nn.Sequential):
    """conv -> ShiftBatchNorm2d -> ReLU, or conv (with bias) -> ReLU when ``batch_norm`` is False.
    Without batch norm the convolution starts from He's initialization (normal, fan-in, zero bias):
    PyTorch's default keeps a third of the signal's variance per layer, so twenty layers without a
    normalization hand the classifier nothing and the network stays at chance."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, batch_norm: bool = True
    ):
        layers: list[tuple[str, nn.Module]] = [
            ("conv", nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=not batch_norm))
        ]
        if batch_norm:
            layers.append(("bn", ShiftBatchNorm2d(out_ch)))
        else:
            nn.init.kaiming_normal_(layers[0][1].weight, nonlinearity="relu")
            nn.init.zeros_(layers[0][1].bias)
        layers.append(("relu", nn.ReLU()))
        super().__init__(OrderedDict(layers))
        self.out_channels = out_ch


class InceptionModule(nn.Module):
    """1x1 conv module (c1) and 3x3 conv module (c3), concatenated on channels."""

    def __init__(self, in_ch: int, c1: int, c3: int, batch_norm: bool = True):
        super().__init__()
        self.branch1 = ConvModule(in_ch, c1, 1, batch_norm=batch_norm)
        self.branch3 = ConvModule(in_ch, c3, 3, padding=1, batch_norm=batch_norm)
        self.out_channels = c1 + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x)], dim=-3)


class DownsampleModule(nn.Module):
    """3x3 stride-2 conv module (c3) and 3x3 stride-2 max-pool, concatenated on channels."""

    def __init__(self, in_ch: int, c3: int, batch_norm: bool = True):
        super().__init__()
        self.conv = ConvModule(in_ch, c3, 3, stride=2, padding=1, batch_norm=batch_norm)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.out_channels = c3 + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.pool(x)], dim=-3)


# (kind, channels...) after the stem Conv(96, 3x3).
_LAYOUT = [
    ("inc", 32, 32),
    ("inc", 32, 48),
    ("down", 80),
    ("inc", 112, 48),
    ("inc", 96, 64),
    ("inc", 80, 80),
    ("inc", 48, 96),
    ("down", 96),
    ("inc", 176, 160),
    ("inc", 176, 160),
]


def _build(input_shape, num_classes, dropout, width, batch_norm: bool) -> nn.Sequential:
    (c, _h, _w), num_classes = check_input(input_shape, num_classes)
    width = check_width(width)
    p = check_dropout(dropout)
    stem = ConvModule(c, scaled(96, width), 3, padding=1, batch_norm=batch_norm)
    layers: list[tuple[str, nn.Module]] = [("stem", stem)]
    ch = stem.out_channels
    n_inc = n_down = 0
    for kind, *sizes in _LAYOUT:
        if kind == "inc":
            n_inc += 1
            mod = InceptionModule(ch, scaled(sizes[0], width), scaled(sizes[1], width), batch_norm=batch_norm)
            layers.append((f"inc{n_inc}", mod))
        else:
            n_down += 1
            mod = DownsampleModule(ch, scaled(sizes[0], width), batch_norm=batch_norm)
            layers.append((f"down{n_down}", mod))
        ch = mod.out_channels
    layers += [("pool", GlobalAvgPool()), ("drop", dropout_layer(p)), ("out", nn.Linear(ch, num_classes))]
    return nn.Sequential(OrderedDict(layers))


@register("inception", "paper's small Inception with batch norm (shift only)")
def inception(input_shape, num_classes, *, dropout: float = 0.0, width: float = 1.0) -> nn.Sequential:
    """The paper's small Inception with batch norm (shift only). ``dropout`` acts before the last layer."""
    return _build(input_shape, num_classes, dropout, width, batch_norm=True)


@register("inception-nobn", "paper's small Inception without batch norm (conv biases instead)")
def inception_nobn(input_shape, num_classes, *, dropout: float = 0.0, width: float = 1.0) -> nn.Sequential:
    """The small Inception without batch norm (conv biases instead). ``dropout`` acts before the last layer."""
    return _build(input_shape, num_classes, dropout, width, batch_norm=False)
