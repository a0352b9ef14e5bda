"""Feature maps applied to images before the kernel, computed in batches.

* random-conv: one random, untrained convolutional layer (Gaussian filters), ReLU, then average
  pooling to a ``pool`` x ``pool`` grid; the paper used 32,000 random filters on CIFAR-10.
* gabor: the modulus of a bank of complex Gabor wavelets (``orientations`` x ``scales``, on each
  channel), average-pooled to a ``pool`` x ``pool`` grid.

Both take images (N, C, H, W) and return float32 features (N, F). A new feature map is one function
decorated with ``FEATURES.register``, taking the images and the options of :func:`compute_features`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..registry import Registry
from ..seeding import generator

#: Feature map name -> ``fn(x, *, seed, filters, filter_size, pool, orientations, scales)`` -> (N, F) float32.
FEATURES: Registry = Registry("feature map")
BATCH_VALUES = 2**26  # values of the largest intermediate per batch (256 MB in float32)


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"--{name} {value} must be a positive whole number")


def _batched(x: torch.Tensor, fn, values_per_image: int) -> torch.Tensor:
    """fn over batches of ``x`` whose intermediates hold about BATCH_VALUES values."""
    batch = max(1, BATCH_VALUES // values_per_image)
    with torch.no_grad():
        return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def random_conv(x: torch.Tensor, filters: int = 1024, size: int = 5, pool: int = 2, seed: int = 0) -> torch.Tensor:
    """ReLU(conv(x, W)) averaged over a pool x pool grid: (N, filters * pool^2) features.

    W has i.i.d. N(0, 1 / (C size^2)) entries drawn from the run seed's "init" stream (it is the
    layer's initialization), so the same seed gives the same features.
    """
    for name, v in (("filters", filters), ("filter-size", size), ("pool", pool)):
        _positive(name, v)
    c, h, w = x.shape[1:]
    if size > min(h, w):
        raise UserError(f"--filter-size {size} is larger than the {h}x{w} images; use at most {min(h, w)}")
    rng = generator(seed, "init")
    weight = torch.from_numpy(rng.standard_normal((filters, c, size, size), dtype=np.float32))
    weight /= math.sqrt(c * size * size)

    def fn(batch):
        return F.adaptive_avg_pool2d(F.relu(F.conv2d(batch, weight)), pool).flatten(1)

    return _batched(x.float(), fn, filters * (h - size + 1) * (w - size + 1))


def gabor_bank(orientations: int = 8, scales: int = 3) -> torch.Tensor:
    """Complex Gabor wavelets as real filters (2 * orientations * scales, 1, S, S): real parts
    (zero mean), then imaginary parts. Wavelength 3 * 2^s pixels, envelope width 0.56 x wavelength."""
    _positive("orientations", orientations)
    _positive("scales", scales)
    sigma_max = 0.56 * 3 * 2 ** (scales - 1)
    half = math.ceil(2 * sigma_max)
    yy, xx = torch.meshgrid(torch.arange(-half, half + 1.0), torch.arange(-half, half + 1.0), indexing="ij")
    real, imag = [], []
    for s in range(scales):
        wavelength = 3 * 2**s
        sigma = 0.56 * wavelength
        envelope = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
        for o in range(orientations):
            theta = math.pi * o / orientations
            phase = 2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / wavelength
            re = envelope * torch.cos(phase)
            re -= envelope * (re.sum() / envelope.sum())  # no response to a constant image
            norm = envelope.sum()
            real.append(re / norm)
            imag.append(envelope * torch.sin(phase) / norm)
    return torch.stack(real + imag)[:, None].float()


def gabor(x: torch.Tensor, orientations: int = 8, scales: int = 3, pool: int = 7) -> torch.Tensor:
    """|x * Gabor| per channel, averaged over a pool x pool grid: (N, C * orientations * scales * pool^2)."""
    _positive("pool", pool)
    bank = gabor_bank(orientations, scales)
    k = len(bank) // 2
    n, c, h, w = x.shape

    def fn(batch):
        out = F.conv2d(batch.reshape(-1, 1, h, w), bank, padding="same")
        modulus = torch.sqrt(out[:, :k] ** 2 + out[:, k:] ** 2)
        return F.adaptive_avg_pool2d(modulus, pool).reshape(len(batch), -1)

    return _batched(x.float(), fn, 2 * len(bank) * c * h * w)


@FEATURES.register("none", "the pixels, flattened")
def _flattened(x: torch.Tensor, **options) -> torch.Tensor:
    return x.reshape(len(x), -1).float()


@FEATURES.register("random-conv", "one random convolutional layer, ReLU, average pooling (pool 2 by default)")
def _random_conv(
    x: torch.Tensor, *, seed: int, filters: int, filter_size: int, pool: int | None, **options
) -> torch.Tensor:
    return random_conv(x, filters, filter_size, 2 if pool is None else pool, seed)


@FEATURES.register("gabor", "the modulus of a bank of complex Gabor wavelets, average pooling (pool 7 by default)")
def _gabor(x: torch.Tensor, *, orientations: int, scales: int, pool: int | None, **options) -> torch.Tensor:
    return gabor(x, orientations, scales, 7 if pool is None else pool)


def compute_features(
    name: str,
    x: torch.Tensor,
    *,
    seed: int = 0,
    filters: int = 1024,
    filter_size: int = 5,
    pool: int | None = None,
    orientations: int = 8,
    scales: int = 3,
) -> torch.Tensor:
    """The named feature map of images ``x`` (N, C, H, W) as (N, F) float32; "none" flattens."""
    return FEATURES[name](
        x, seed=seed, filters=filters, filter_size=filter_size, pool=pool, orientations=orientations, scales=scales
    )
