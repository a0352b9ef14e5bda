"""The network's linear layers, in forward order, with batch norm folded in (MEASURES.md sec. 1).

Norm measures see a network as layers W_1..W_d: every ``nn.Linear`` and ``nn.Conv2d``, with an
``nn.BatchNorm1d/2d`` that directly follows one folded into it and biases excluded. Modules without
parameters of their own (activations, pooling, flatten, dropout, local response norm, containers)
pass through; any other module with parameters raises :class:`UnsupportedLayer`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rethink.errors import UserError

POWER_TOL = 1e-8  # relative change per iteration, well below the 1e-6 relative accuracy wanted
POWER_MAX_ITERS = 20000


class UnsupportedLayer(UserError):
    """A measure met a layer it cannot handle; callers report it per measure instead of crashing."""

    def __init__(self, layer_type: str, path: str, measure: str = "X", why: str = ""):
        self.layer_type, self.path, self.why = layer_type, path, why
        super().__init__(f"measure {measure} is not supported for layer {layer_type} ({path or 'the model'}){why}")

    def for_measure(self, measure: str) -> UnsupportedLayer:
        """The same error, naming ``measure``."""
        return UnsupportedLayer(self.layer_type, self.path, measure, self.why)


@dataclass
class Layer:
    """One linear map W_i: ``kind`` is "linear" or "conv"; ``weight`` is float64 with batch norm
    folded in; for convolutions the geometry and ``in_shape`` (C, H, W) of the input seen in training."""

    path: str
    kind: str
    weight: torch.Tensor
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    in_shape: tuple[int, ...] | None = None
    bn_path: str | None = None  # the folded batch norm, if any

    def with_weight(self, weight: torch.Tensor) -> Layer:
        """This layer's geometry with another weight (e.g. W - W^0)."""
        return Layer(**{**self.__dict__, "weight": weight})


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding_mode != "zeros":
        raise UnsupportedLayer(type(conv).__name__, "", why=f": padding_mode {conv.padding_mode!r}")
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise UnsupportedLayer(type(conv).__name__, "", why=": asymmetric 'same' padding")
        return (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)


def extract(model: nn.Module, in_shapes: dict[str, tuple[int, ...]] | None = None) -> list[Layer]:
    """The folded layers of ``model`` in ``model.modules()`` order (forward order for sequential
    networks; branch by branch for inception). BN folding: W' = W * gamma / sqrt(running_var + eps)
    per output channel (gamma = 1 without a scale). ``in_shapes`` maps conv paths to input shapes."""
    layers: list[Layer] = []
    previous = None  # the last leaf module with weights or without, to check that BN directly follows a layer
    for path, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if isinstance(module, nn.Linear):
                layer = Layer(path, "linear", module.weight.detach().double().clone())
            else:
                try:
                    padding = _conv_padding(module)
                except UnsupportedLayer as e:
                    raise UnsupportedLayer(e.layer_type, path, why=e.why) from None
                shape = (in_shapes or {}).get(path)
                weight = module.weight.detach().double().clone()
                geometry = {"stride": tuple(module.stride), "dilation": tuple(module.dilation), "groups": module.groups}
                layer = Layer(path, "conv", weight, padding=padding, in_shape=shape, **geometry)
            layers.append(layer)
            previous = module
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if module.running_var is None:
                raise UnsupportedLayer(type(module).__name__, path, why=": no running statistics to fold")
            if not isinstance(previous, (nn.Linear, nn.Conv2d)) or layers[-1].weight.shape[0] != module.num_features:
                raise UnsupportedLayer(type(module).__name__, path, why=": batch norm must directly follow a layer")
            var = module.running_var.detach().double()
            gamma = module.weight.detach().double() if module.weight is not None else torch.ones_like(var)
            scale = gamma / torch.sqrt(var + module.eps)
            last = layers[-1]
            last.weight = last.weight * scale.reshape(-1, *[1] * (last.weight.dim() - 1))
            last.bn_path = path
            previous = module
        elif own:
            raise UnsupportedLayer(type(module).__name__, path)
        elif not list(module.children()):
            previous = module  # a parameter-free leaf: passes through, but a BN after it is not foldable
    return layers


@contextlib.contextmanager
def recording_input_shapes(model: nn.Module):
    """Within the block, each conv's input shape (C, H, W) on its first call goes into the yielded dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):

            def hook(_module, inputs, _output, path=path):
                shapes.setdefault(path, tuple(inputs[0].shape[1:]))

            handles.append(module.register_forward_hook(hook))
    try:
        yield shapes
    finally:
        for h in handles:
            h.remove()


def _conv(layer: Layer, v: torch.Tensor) -> torch.Tensor:
    return F.conv2d(v, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def _conv_t(layer: Layer, u: torch.Tensor, in_hw: tuple[int, int]) -> torch.Tensor:
    """The adjoint of :func:`_conv`: conv_transpose2d with output padding restoring the input size."""
    out_hw = u.shape[-2:]
    k = layer.weight.shape[-2:]
    extra = [
        in_hw[i] - ((out_hw[i] - 1) * layer.stride[i] - 2 * layer.padding[i] + layer.dilation[i] * (k[i] - 1) + 1)
        for i in range(2)
    ]
    return F.conv_transpose2d(u, layer.weight, None, layer.stride, layer.padding, extra, layer.groups, layer.dilation)


def spectral_norm(layer: Layer) -> float:
    """||W||_2: the largest singular value of a linear layer's matrix, or the operator norm of a
    convolution as a linear map on inputs of the layer's training input size (MEASURES.md sec. 1),
    by power iteration on conv2d / conv_transpose2d in float64 from a fixed start."""
    if layer.kind == "linear":
        return float(torch.linalg.matrix_norm(layer.weight, ord=2))
    if layer.in_shape is None:
        raise UnsupportedLayer("Conv2d", layer.path, why=": it was not called in the forward pass")
    c, h, w = layer.in_shape
    if not torch.any(layer.weight):
        return 0.0
    # the start is drawn on the CPU so it is the same on every device
    v = torch.randn((1, c, h, w), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = v.to(layer.weight.device)
    v /= v.norm()
    sigma2 = 0.0
    for _ in range(POWER_MAX_ITERS):
        # one step of power iteration on W^T W; ||W^T W v|| for a unit v tends to sigma^2 from below
        v = _conv_t(layer, _conv(layer, v), (h, w))
        new = float(v.norm())
        if new == 0.0:
            return 0.0
        v /= new
        if abs(new - sigma2) <= POWER_TOL * new:
            sigma2 = new
            break
        sigma2 = new
    return math.sqrt(sigma2)
