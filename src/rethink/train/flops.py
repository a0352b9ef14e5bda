"""The arithmetic one training step needs, counted from a model's linear and convolution layers.

Forward, weight gradients, and input gradients of every layer but the first (whose input needs
no gradient): 2 FLOPs per multiply-add of each ``nn.Linear`` and ``nn.Conv2d``. Element-wise
work (biases, activations, pooling, normalization, the optimizer) is left out: it is memory
traffic, not arithmetic, and small next to the products.
"""

from __future__ import annotations

import torch
from torch import nn


def step_flops(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> int:
    """FLOPs of one SGD step of ``model`` on a batch of ``batch_size`` inputs of ``input_shape``.

    Runs one forward pass on two zero inputs (in eval mode, on the model's device, which may be
    "meta") to see every layer's shapes; the model's state and the random streams are untouched.
    """
    total = 0

    def count(module, args, out):
        nonlocal total
        if isinstance(module, nn.Linear):
            macs = module.in_features * module.out_features * out[0].numel() // module.out_features
        else:
            kh, kw = module.kernel_size
            macs = out[0].numel() * module.in_channels // module.groups * kh * kw
        # forward + weight gradient, and the input gradient where the input needs one
        total += 2 * macs * (3 if args[0].requires_grad else 2)

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    handles = [m.register_forward_hook(count) for m in layers]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            model(torch.zeros((2, *input_shape), device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total * batch_size
