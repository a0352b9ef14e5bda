"""Inception V3, the paper's ImageNet network, as torchvision defines it (an optional extra).

Built without the auxiliary classifier (the engine trains on one output) and without pretrained
weights; ``dropout`` is the rate before the last layer (0 by default; Table 2's "dropout" rows use
0.2, TF-slim's keep probability 0.8). At 299x299 and 1,000 classes it has 23,834,568 parameters.
"""

from __future__ import annotations

from torch import nn

from rethink.errors import UserError
from rethink.models._common import check_dropout, check_input
from rethink.models.registry import register

MIN_SIDE = 75  # the smallest input torchvision's Inception V3 reduces to a valid feature map
EXTRA = "pip install 'rethink[imagenet]'"


@register(
    "inception-v3",
    "Inception V3 for ImageNet (torchvision's), inputs of 75x75 or more; option dropout; needs rethink[imagenet]",
)
def inception_v3(input_shape, num_classes, *, dropout: float = 0.0) -> nn.Module:
    (c, h, w), k = check_input(input_shape, num_classes)
    p = check_dropout(dropout)
    try:
        from torchvision.models import Inception3
    except Exception as e:  # noqa: BLE001 - not installed, or built for another torch (fails on import)
        raise UserError(f"--model inception-v3 needs torchvision ({type(e).__name__}: {e}); {EXTRA}") from None
    if c != 3 or min(h, w) < MIN_SIDE:
        raise UserError(
            f"inception-v3 takes RGB images of at least {MIN_SIDE}x{MIN_SIDE}, not {c}x{h}x{w}; "
            "stream an image folder with --stream --image-size 299 (or at least 75)"
        )
    return Inception3(num_classes=k, aux_logits=False, transform_input=False, init_weights=True, dropout=p)
