"""Preprocessing (Appendix A of the paper) and batched, on-device augmentation.

Preprocessing works on torch tensors (N, C, H, W) so that the same code serves the fixed
evaluation copies and the per-batch augmented training images.
"""

from __future__ import annotations

import math

import torch

AUGMENTATIONS = ("crop", "flip", "color")


def center_crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """The central ``size`` x ``size`` window (TensorFlow's central crop offsets)."""
    h, w = x.shape[-2:]
    if size is None or (size >= h and size >= w):
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardization with TensorFlow's semantics.

    (x - mean) / max(std, 1 / sqrt(num_elements)), mean and (population) std over each image's
    pixels and channels.
    """
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, correction=0, keepdim=True)
    adjusted = torch.clamp(std, min=1.0 / math.sqrt(flat.shape[1]))
    return ((flat - mean) / adjusted).reshape(x.shape)


def preprocess(x: torch.Tensor, crop: int | None, standardize_images: bool) -> torch.Tensor:
    """Centre crop, then (optionally) per-image standardization. ``x`` holds pixels in [0, 1]."""
    x = center_crop(x, crop)
    return standardize(x) if standardize_images else x


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A random ``size`` x ``size`` window per image; images no larger than ``size`` are padded.

    32x32 originals give random 28x28 windows (the paper's crop); images no larger than the window
    are zero-padded by an eighth of their side, at least 1 pixel, first so that the window can move
    (28 -> 36: shifts of up to 4 pixels; 8x8 digits -> 10: shifts of up to 1 pixel).
    """
    n, c, h, w = x.shape
    if h <= size and w <= size:
        pad = max(1, round(h / 8))
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        n, c, h, w = x.shape
    tops = torch.randint(0, h - size + 1, (n,), generator=gen, device=x.device)
    lefts = torch.randint(0, w - size + 1, (n,), generator=gen, device=x.device)
    rows = (tops[:, None] + torch.arange(size, device=x.device))[:, None, :, None]
    cols = (lefts[:, None] + torch.arange(size, device=x.device))[:, None, None, :]
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return x[idx_n, idx_c, rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def random_color(
    x: torch.Tensor,
    gen: torch.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.05,
) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue per image (pixels in [0, 1], clipped).

    Brightness adds a uniform delta in [-brightness, brightness]; contrast and saturation scale
    by a factor in [1 - a, 1 + a] around the image mean and the grey level; hue rotates the
    chroma plane by up to ``hue`` of a full turn. Grey images get brightness and contrast only.
    """
    n, c = x.shape[:2]
    dev = x.device

    def uniform(a):
        return (torch.rand(n, generator=gen, device=dev) * 2 - 1) * a

    x = x + uniform(brightness)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + uniform(contrast))[:, None, None, None] + mean
    if c == 3:
        yiq = torch.einsum("ij,njhw->nihw", _RGB2YIQ.to(dev, x.dtype), x)
        angle = uniform(hue) * 2 * math.pi
        cos, sin = torch.cos(angle), torch.sin(angle)
        scale = 1 + uniform(saturation)
        i, q = yiq[:, 1], yiq[:, 2]
        i2 = (cos[:, None, None] * i - sin[:, None, None] * q) * scale[:, None, None]
        q2 = (sin[:, None, None] * i + cos[:, None, None] * q) * scale[:, None, None]
        yiq = torch.stack([yiq[:, 0], i2, q2], dim=1)
        x = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB2YIQ).to(dev, x.dtype), yiq)
    return x.clamp(0.0, 1.0)


def augment(x: torch.Tensor, kinds: tuple[str, ...], crop: int | None, gen: torch.Generator) -> torch.Tensor:
    """Augment a batch of raw images (pixels in [0, 1]); crops to ``crop`` either way.

    With "crop" the window is random; without it, central. Colour changes come before the crop
    so that they see the same pixels whatever the window.
    """
    if "color" in kinds:
        x = random_color(x, gen)
    if "crop" in kinds:
        x = random_crop(x, crop or x.shape[-1], gen)
    else:
        x = center_crop(x, crop)
    if "flip" in kinds:
        x = random_flip(x, gen)
    return x
