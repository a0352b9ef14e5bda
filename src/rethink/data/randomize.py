"""The six randomization tests of Zhang et al. (2017), Section 2, as pure functions.

Every function takes arrays and an explicit ``numpy.random.Generator`` and returns new arrays; the
caller draws them once per run and keeps them fixed for every epoch. Pixel permutations move pixel
positions (all channels of a position together). Inputs are raw images (N, C, H, W) before
preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError

KINDS = ("none", "partial-labels", "random-labels", "shuffled-pixels", "random-pixels", "gaussian")


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
    if kind not in KINDS:
        raise UserError(f"unknown randomization {kind!r}; choose one of {', '.join(KINDS)}")
    # Independent child streams, so that e.g. the label draws never depend on the test set size.
    label_rng, test_label_rng, pixel_rng, test_pixel_rng = rng.spawn(4)
    n = len(y_train)
    y_new, replaced, changed = y_train.copy(), np.zeros(n, bool), np.zeros(n, bool)
    x_tr, x_te, y_te = x_train, x_test, y_test
    if kind in ("partial-labels", "random-labels"):
        p_eff = 1.0 if kind == "random-labels" else p
        y_new, replaced, changed = corrupt_labels(y_train, num_classes, p_eff, label_rng)
        if test_labels == "corrupted":
            y_te, _, _ = corrupt_labels(y_test, num_classes, p_eff, test_label_rng)
    elif kind == "shuffled-pixels":
        x_tr, x_te_perm, _ = shuffled_pixels(x_train, x_test, pixel_rng)
        x_te = x_te_perm if test_inputs == "randomized" else x_test
    elif kind == "random-pixels":
        x_tr = random_pixels(x_train, pixel_rng)
        if test_inputs == "randomized":
            x_te = random_pixels(x_test, test_pixel_rng)
    elif kind == "gaussian":
        mean, std = channel_moments(x_train)
        x_tr = gaussian_images(n, x_train.shape[1:], mean, std, pixel_rng)
        if test_inputs == "randomized":
            x_te = gaussian_images(len(x_test), x_test.shape[1:], mean, std, test_pixel_rng)
    return Randomized(x_tr, y_new, x_te, y_te, replaced, changed, y_train)
