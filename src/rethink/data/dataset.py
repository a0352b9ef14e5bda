"""The array container every data source returns."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays plus metadata.

    ``x_*`` are float32 arrays of shape (N, C, H, W) holding raw pixels scaled to [0, 1] (the
    paper's "divide by 255"); ``y_*`` are int64 class indices in [0, num_classes).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    checksum: str
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def replace(self, **changes) -> Dataset:
        return replace(self, **changes)


def array_checksum(*arrays: np.ndarray) -> str:
    """A short, stable checksum of arrays (shape, dtype and bytes)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def binarize(ds: Dataset) -> Dataset:
    """Two classes: 1 for the upper half of ``ds``'s classes (``y >= num_classes // 2``), 0 for the
    lower, as Dziugaite & Roy's binary MNIST ("digit > 4" against the rest)."""
    cut = ds.num_classes // 2
    names = [ds.class_names[:cut], ds.class_names[cut:]]
    return ds.replace(
        y_train=(ds.y_train >= cut).astype(np.int64),
        y_test=(ds.y_test >= cut).astype(np.int64),
        num_classes=2,
        class_names=tuple(f"{n[0]}..{n[-1]}" if len(n) > 1 else n[0] for n in names),
    )
