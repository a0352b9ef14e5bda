"""The small AlexNet of Zhang et al. (2017), after the TensorFlow CIFAR-10 tutorial model.

Two blocks of [conv 5x5 (64, same padding) -> ReLU -> max-pool 3x3/2 -> local response norm],
then fully connected 384 -> ReLU -> 192 -> ReLU -> linear to the classes.

Pooling uses ``padding=1`` so every pool maps a side of ``n`` to ``ceil(n / 2)`` (28 -> 14 -> 7,
32 -> 16 -> 8, 8 -> 4 -> 2), the output size of TF "SAME" pooling. PyTorch pads symmetrically
(with -inf) where TF pads the odd pixel at the bottom/right, so windows sit one pixel earlier on
even inputs; shapes and parameter counts are identical.

``LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1)``: PyTorch divides ``alpha`` by
``size``, so this equals the tutorial's ``tf.nn.lrn(depth_radius=4, bias=1, alpha=0.001/9,
beta=0.75)``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from rethink.models._common import check_dropout, check_input, check_width, dropout_layer, scaled

LRN_SIZE = 9
LRN_ALPHA = 0.001
LRN_BETA = 0.75
LRN_K = 1.0


def _pooled(n: int) -> int:
    """Side length after the 3x3 stride-2 max-pool with padding 1: ceil(n / 2)."""
    return (n + 2 - 3) // 2 + 1


def alexnet(input_shape, num_classes, *, dropout: float = 0.0, width: float = 1.0) -> nn.Sequential:
    """The paper's small AlexNet (1,387,786 parameters for 3x28x28 inputs and 10 classes).

    ``width`` scales the filters (64) and the hidden units (384, 192); ``dropout`` is applied
    after each fully connected hidden layer's ReLU.
    """
    (c, h, w), num_classes = check_input(input_shape, num_classes)
    width = check_width(width)
    p = check_dropout(dropout)
    filters, fc1, fc2 = scaled(64, width), scaled(384, width), scaled(192, width)
    feature_layers: list[tuple[str, nn.Module]] = []
    in_ch = c
    for i in (1, 2):
        feature_layers += [
            (f"conv{i}", nn.Conv2d(in_ch, filters, kernel_size=5, padding=2, bias=True)),
            (f"relu{i}", nn.ReLU()),
            (f"pool{i}", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
            (f"norm{i}", nn.LocalResponseNorm(size=LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K)),
        ]
        in_ch = filters
    flat = filters * _pooled(_pooled(h)) * _pooled(_pooled(w))
    classifier = [
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(flat, fc1)),
        ("relu1", nn.ReLU()),
        ("drop1", dropout_layer(p)),
        ("fc2", nn.Linear(fc1, fc2)),
        ("relu2", nn.ReLU()),
        ("drop2", dropout_layer(p)),
        ("out", nn.Linear(fc2, num_classes)),
    ]
    return nn.Sequential(
        OrderedDict([("features", nn.Sequential(OrderedDict(feature_layers))), ("classifier", nn.Sequential(OrderedDict(classifier)))])
    )
