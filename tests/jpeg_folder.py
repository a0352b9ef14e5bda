"""A tiny ImageNet-style folder of generated JPEG files, for the streaming and Table 2 tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_jpeg_folder(
    root: Path, classes: int = 3, train_per_class: int = 8, val_per_class: int = 4, seed: int = 0
) -> Path:
    """``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` of assorted sizes (like ImageNet's), each
    class a colour of its own under noise, so that a network can learn them."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([255 * (k % 3 == c) for c in range(3)], dtype=float)
            for i in range(per_class):
                h, w = rng.integers(40, 90, size=2)
                img = 0.6 * colour + rng.normal(60, 40, (h, w, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{split}_{k}_{i}.JPEG", quality=90)
    return root
