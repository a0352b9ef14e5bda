"""The six randomization tests of Zhang et al. (2017), Section 2, as pure functions.

Every function takes arrays and an explicit ``numpy.random.Generator`` and returns new arrays; the
caller draws them once per run and keeps them fixed for every epoch. Pixel permutations move pixel
positions (all channels of a position together). Inputs are raw images (N, C, H, W) before
preprocessing. A new test is one function decorated with ``KINDS.register``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..registry import Registry


@dataclass(frozen=True)
class Randomized:
    """A randomized training/test set and which training labels were touched."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    replaced: np.ndarray  # bool (n_train,): label drawn anew (u_i < p)
    changed: np.ndarray  # bool (n_train,): new label differs from the true one
    y_train_true: np.ndarray  # the original training labels


def corrupt_labels(y: np.ndarray, num_classes: int, p: float, rng: np.random.Generator):
    """Replace each label with a uniform class with probability ``p``.

    Nested across p: every example draws one uniform number u_i and one class r_i whatever p is,
    and takes r_i when u_i < p. The same generator state therefore corrupts a superset of examples
    as p grows. Returns (new labels, replaced mask, changed mask).
    """
    if not 0.0 <= p <= 1.0:
        raise UserError(f"p = {p} is outside [0, 1]; give a corruption probability such as --p 0.5")
    u = rng.random(len(y))
    r = rng.integers(0, num_classes, size=len(y))
    replaced = u < p
    new = np.where(replaced, r, y).astype(np.int64)
    return new, replaced, new != y


def permute_pixels(x: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Move pixel positions of every image by one permutation of the H*W positions."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w)


def shuffled_pixels(x_train: np.ndarray, x_test: np.ndarray, rng: np.random.Generator):
    """One random permutation of pixel positions, applied to every train AND test image."""
    perm = rng.permutation(x_train.shape[2] * x_train.shape[3])
    return permute_pixels(x_train, perm), permute_pixels(x_test, perm), perm


def random_pixels(x: np.ndarray, rng: np.random.Generator, chunk: int = 4096) -> np.ndarray:
    """An independent permutation of pixel positions for each image."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    out = np.empty_like(flat)
    for start in range(0, n, chunk):  # chunks bound the memory of the permutation table
        stop = min(start + chunk, n)
        perms = rng.permuted(np.broadcast_to(np.arange(h * w), (stop - start, h * w)), axis=1)
        out[start:stop] = np.take_along_axis(flat[start:stop], perms[:, None, :], axis=2)
    return out.reshape(n, c, h, w)


def channel_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over all images and positions (float64)."""
    x64 = x.astype(np.float64, copy=False)
    return x64.mean(axis=(0, 2, 3)), x64.std(axis=(0, 2, 3))


def gaussian_images(n: int, shape, mean: np.ndarray, std: np.ndarray, rng: np.random.Generator):
    """``n`` images of Gaussian noise with the given per-channel mean and standard deviation."""
    c = shape[0]
    noise = rng.standard_normal((n, *shape), dtype=np.float32)
    return noise * std.reshape(1, c, 1, 1).astype(np.float32) + mean.reshape(1, c, 1, 1).astype(np.float32)


@dataclass(frozen=True)
class Inputs:
    """What a randomization test is given: the clean data, the options, and four independent streams
    (so that e.g. the label draws never depend on the test set size)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    p: float
    test_labels: str
    test_inputs: str
    label_rng: np.random.Generator
    test_label_rng: np.random.Generator
    pixel_rng: np.random.Generator
    test_pixel_rng: np.random.Generator


#: Test name -> ``apply(Inputs) -> dict`` of the :class:`Randomized` fields it changes.
KINDS: Registry[Callable[[Inputs], dict]] = Registry("randomization")


@KINDS.register("none", "the true data")
def _none(d: Inputs) -> dict:
    return {}


def _labels(d: Inputs, p: float) -> dict:
    y_train, replaced, changed = corrupt_labels(d.y_train, d.num_classes, p, d.label_rng)
    out = dict(y_train=y_train, replaced=replaced, changed=changed)
    if d.test_labels == "corrupted":
        out["y_test"] = corrupt_labels(d.y_test, d.num_classes, p, d.test_label_rng)[0]
    return out


@KINDS.register("partial-labels", "each training label replaced by a uniform class with probability p")
def _partial_labels(d: Inputs) -> dict:
    return _labels(d, d.p)


@KINDS.register("random-labels", "every training label replaced by a uniform class")
def _random_labels(d: Inputs) -> dict:
    return _labels(d, 1.0)


@KINDS.register("shuffled-pixels", "one permutation of pixel positions, the same for every image")
def _shuffled_pixels(d: Inputs) -> dict:
    x_train, x_test, _ = shuffled_pixels(d.x_train, d.x_test, d.pixel_rng)
    return dict(x_train=x_train, x_test=x_test if d.test_inputs == "randomized" else d.x_test)


@KINDS.register("random-pixels", "an independent permutation of pixel positions for each image")
def _random_pixels(d: Inputs) -> dict:
    out = dict(x_train=random_pixels(d.x_train, d.pixel_rng))
    if d.test_inputs == "randomized":
        out["x_test"] = random_pixels(d.x_test, d.test_pixel_rng)
    return out


@KINDS.register("gaussian", "Gaussian noise images with the training set's per-channel mean and deviation")
def _gaussian(d: Inputs) -> dict:
    mean, std = channel_moments(d.x_train)
    out = dict(x_train=gaussian_images(len(d.y_train), d.x_train.shape[1:], mean, std, d.pixel_rng))
    if d.test_inputs == "randomized":
        out["x_test"] = gaussian_images(len(d.x_test), d.x_test.shape[1:], mean, std, d.test_pixel_rng)
    return out


def randomize(
    kind: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    p: float = 0.0,
    test_labels: str = "clean",
    test_inputs: str = "randomized",
) -> Randomized:
    """Apply one of the six tests. Drawn once from ``rng``; call it once per run.

    ``test_labels``: "clean" (the paper) or "corrupted" (test labels corrupted with the same p).
    ``test_inputs``: for the pixel and Gaussian tests, "randomized" treats test images like the
    training images (shuffled pixels: the same permutation; random pixels: a permutation per image;
    gaussian: noise with the training moments), "clean" leaves them untouched.
    """
    apply = KINDS[kind]
    inputs = Inputs(x_train, y_train, x_test, y_test, num_classes, p, test_labels, test_inputs, *rng.spawn(4))
    n = len(y_train)
    out = dict(
        x_train=x_train,
        y_train=y_train.copy(),
        x_test=x_test,
        y_test=y_test,
        replaced=np.zeros(n, bool),
        changed=np.zeros(n, bool),
    )
    out.update(apply(inputs))
    return Randomized(**out, y_train_true=y_train)


def randomize_dataset(kind: str, ds, rng: np.random.Generator, **options) -> Randomized:
    """:func:`randomize` on the splits of a :class:`rethink.data.Dataset`."""
    return randomize(kind, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes, rng, **options)
