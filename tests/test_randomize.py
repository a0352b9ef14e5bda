"""The six randomization tests, each definition checked directly (PAPER.md section 1)."""

import numpy as np
import pytest

from rethink.data.randomize import (
    channel_moments,
    corrupt_labels,
    gaussian_images,
    random_pixels,
    randomize,
    shuffled_pixels,
)
from rethink.errors import UserError


def coded_images(n, c=3, h=6, w=5, offset=0):
    """Images whose every pixel value is unique: value = image * 1000 + position, channel-coded."""
    pos = np.arange(h * w, dtype=np.float32).reshape(1, 1, h, w)
    img = (np.arange(offset, offset + n, dtype=np.float32) * 1000).reshape(n, 1, 1, 1)
    ch = (np.arange(c, dtype=np.float32) * 0.1).reshape(1, c, 1, 1)
    return img + pos + ch


def positions(x):
    """The original position index each pixel came from (channel 0)."""
    return (x[:, 0].reshape(len(x), -1) % 1000).round().astype(int)


def test_corrupt_labels_nested_across_p():
    y = np.random.default_rng(1).integers(0, 10, 20000)
    prev_mask, prev_labels = None, None
    for p in [0.0, 0.1, 0.3, 0.5, 0.8, 1.0]:
        labels, replaced, changed = corrupt_labels(y, 10, p, np.random.default_rng(7))
        if prev_mask is not None:
            assert np.all(replaced[prev_mask]), "raising p must only add corrupted examples"
            assert np.array_equal(labels[prev_mask], prev_labels[prev_mask])
        assert np.array_equal(labels[~replaced], y[~replaced])
        prev_mask, prev_labels = replaced, labels


@pytest.mark.parametrize("p", [0.2, 0.5, 1.0])
def test_corrupt_labels_mask_fractions(p):
    n, k = 200_000, 10
    y = np.random.default_rng(0).integers(0, k, n)
    labels, replaced, changed = corrupt_labels(y, k, p, np.random.default_rng(3))
    tol = 4 * np.sqrt(p * (1 - p) / n) + 1e-3
    assert abs(replaced.mean() - p) < tol
    assert abs(changed.mean() - p * (k - 1) / k) < tol
    assert np.array_equal(changed, labels != y)
    assert np.all(replaced[changed])
    # replaced labels are uniform over all classes, the true one included
    counts = np.bincount(labels[replaced], minlength=k) / replaced.sum()
    assert np.abs(counts - 1 / k).max() < 0.01


def test_corrupt_labels_rejects_bad_p():
    with pytest.raises(UserError, match="outside"):
        corrupt_labels(np.zeros(5, int), 10, 1.5, np.random.default_rng())


def test_shuffled_pixels_one_permutation_for_train_and_test():
    xtr, xte = coded_images(20), coded_images(7, offset=500)
    a, b, perm = shuffled_pixels(xtr, xte, np.random.default_rng(0))
    assert not np.array_equal(perm, np.arange(len(perm)))
    for x in (a, b):
        assert np.all(positions(x) == perm[None, :])
    # all channels of a position move together
    assert np.allclose(a[:, 1] - a[:, 0], 0.1, atol=1e-3) and np.allclose(a[:, 2] - a[:, 0], 0.2, atol=1e-3)


def test_random_pixels_each_image_a_permutation_of_its_own_pixels():
    x = coded_images(50)
    out = random_pixels(x, np.random.default_rng(0), chunk=16)  # chunking must not matter
    pos = positions(out)
    for i in range(len(x)):
        assert sorted(pos[i]) == list(range(30)), "a permutation of this image's positions"
        assert np.all(out[i].reshape(3, -1) // 1000 == i), "pixels stay in their own image"
    assert len({tuple(r) for r in pos}) == len(x), "an independent permutation per image"
    assert np.allclose(out[:, 2] - out[:, 0], 0.2, atol=1e-3)
    again = random_pixels(x, np.random.default_rng(0), chunk=7)
    assert np.array_equal(out, again)


def test_gaussian_matches_per_channel_moments():
    rng = np.random.default_rng(0)
    x = np.stack(
        [rng.uniform(0, 1, (400, 8, 8)), rng.uniform(0.2, 0.4, (400, 8, 8)), rng.beta(2, 5, (400, 8, 8))], axis=1
    ).astype(np.float32)
    mean, std = channel_moments(x)
    g = gaussian_images(4000, x.shape[1:], mean, std, np.random.default_rng(1))
    gm, gs = channel_moments(g)
    assert g.dtype == np.float32 and g.shape == (4000, 3, 8, 8)
    assert np.allclose(gm, mean, atol=4e-3) and np.allclose(gs, std, rtol=1e-2)


def kinds_inputs(n=300, n_test=100):
    rng = np.random.default_rng(5)
    return (
        rng.uniform(size=(n, 3, 6, 6)).astype(np.float32),
        rng.integers(0, 10, n),
        rng.uniform(size=(n_test, 3, 6, 6)).astype(np.float32),
        rng.integers(0, 10, n_test),
    )


@pytest.mark.parametrize(
    "kind", ["none", "partial-labels", "random-labels", "shuffled-pixels", "random-pixels", "gaussian"]
)
def test_same_seed_same_result_and_test_labels_clean(kind):
    xtr, ytr, xte, yte = kinds_inputs()
    a = randomize(kind, xtr, ytr, xte, yte, 10, np.random.default_rng(11), p=0.5 if kind == "partial-labels" else 0)
    b = randomize(kind, xtr, ytr, xte, yte, 10, np.random.default_rng(11), p=0.5 if kind == "partial-labels" else 0)
    for f in ("x_train", "y_train", "x_test", "y_test", "replaced", "changed"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert np.array_equal(a.y_test, yte), "test labels are clean by default"
    assert np.array_equal(a.y_train_true, ytr)
    c = randomize(kind, xtr, ytr, xte, yte, 10, np.random.default_rng(12), p=0.5 if kind == "partial-labels" else 0)
    if kind != "none":
        assert not (np.array_equal(a.x_train, c.x_train) and np.array_equal(a.y_train, c.y_train))


def test_test_labels_corrupted_option():
    xtr, ytr, xte, yte = kinds_inputs(n_test=2000)
    r = randomize("random-labels", xtr, ytr, xte, yte, 10, np.random.default_rng(0), test_labels="corrupted")
    assert 0.8 < (r.y_test != yte).mean() < 0.98


def test_test_inputs_option_and_defaults():
    xtr, ytr, xte, yte = kinds_inputs()
    for kind in ("random-pixels", "gaussian", "shuffled-pixels"):
        default = randomize(kind, xtr, ytr, xte, yte, 10, np.random.default_rng(0))
        clean = randomize(kind, xtr, ytr, xte, yte, 10, np.random.default_rng(0), test_inputs="clean")
        assert not np.array_equal(default.x_test, xte)
        assert np.array_equal(clean.x_test, xte)
        assert np.array_equal(default.x_train, clean.x_train), "the test option never changes training data"
        assert np.array_equal(default.y_train, ytr)


def test_unknown_kind_is_user_error():
    xtr, ytr, xte, yte = kinds_inputs()
    with pytest.raises(UserError, match="random-labels"):
        randomize("random-label", xtr, ytr, xte, yte, 10, np.random.default_rng(0))
