"""Preprocessing (Appendix A) and on-device augmentation."""

import math

import numpy as np
import torch

from rethink.data.transforms import (
    augment,
    center_crop,
    preprocess,
    random_color,
    random_crop,
    random_flip,
    standardize,
)


def test_standardize_is_tensorflow_per_image_standardization():
    x = torch.rand(5, 3, 28, 28, dtype=torch.float64)
    out = standardize(x)
    for i in range(5):
        img = x[i].numpy()
        expected = (img - img.mean()) / max(img.std(), 1 / math.sqrt(img.size))
        assert np.allclose(out[i].numpy(), expected)
    # a constant image: std 0, divided by 1/sqrt(N) instead of by zero
    const = torch.full((1, 3, 4, 4), 0.7)
    out = standardize(const)
    assert torch.isfinite(out).all() and out.abs().max() < 1e-4


def test_center_crop_offsets_and_preprocess():
    x = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32)
    c = center_crop(x, 28)
    assert c.shape == (1, 1, 28, 28) and c[0, 0, 0, 0] == 2 * 32 + 2
    assert center_crop(x, None) is x and center_crop(x, 40) is x
    p = preprocess(torch.rand(3, 3, 32, 32), 28, True)
    assert p.shape == (3, 3, 28, 28)
    assert torch.allclose(p.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)
    raw = torch.rand(2, 1, 28, 28)
    assert torch.equal(preprocess(raw, None, False), raw)


def windows(x, size):
    n, c, h, w = x.shape
    return {(t, s): x[..., t : t + size, s : s + size] for t in range(h - size + 1) for s in range(w - size + 1)}


def test_random_crop_takes_windows_of_the_originals():
    x = torch.rand(64, 3, 32, 32)
    out = random_crop(x, 28, torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 28, 28)
    seen = set()
    for i in range(64):
        match = [k for k, v in windows(x[i : i + 1], 28).items() if torch.equal(v[0], out[i])]
        assert match, "every crop is a window of its own original"
        seen.add(match[0])
    assert len(seen) > 10, "windows vary across images"


def test_random_crop_pads_small_images():
    x = torch.rand(16, 1, 28, 28) + 1  # no zeros inside the image
    out = random_crop(x, 28, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert (out == 0).any(), "padding shows at the borders of some crops"


def test_flip_and_color_are_seeded_and_bounded():
    x = torch.rand(200, 3, 8, 8)
    f = random_flip(x, torch.Generator().manual_seed(1))
    flipped = [torch.equal(f[i], x[i].flip(-1)) for i in range(200)]
    assert 60 < sum(flipped) < 140
    assert all(fl or torch.equal(f[i], x[i]) for i, fl in enumerate(flipped))
    c1 = random_color(x, torch.Generator().manual_seed(2))
    c2 = random_color(x, torch.Generator().manual_seed(2))
    assert torch.equal(c1, c2) and c1.min() >= 0 and c1.max() <= 1
    assert not torch.allclose(c1, x)
    gray = random_color(torch.rand(4, 1, 8, 8), torch.Generator().manual_seed(0))
    assert gray.shape == (4, 1, 8, 8)


def test_augment_without_crop_uses_the_centre_window():
    x = torch.rand(4, 3, 32, 32)
    out = augment(x, ("flip",), 28, torch.Generator().manual_seed(0))
    centre = center_crop(x, 28)
    for i in range(4):
        assert torch.equal(out[i], centre[i]) or torch.equal(out[i], centre[i].flip(-1))
