"""Theorem 1's construction, its depth-k version, and the Rademacher estimate."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rethink.cli import main
from rethink.data import load_dataset
from rethink.errors import UserError
from rethink.theory import construct, evaluate, expressivity, one_hot, predict, verify
from rethink.theory.rademacher import rademacher

U = 2.0**-53
FASHION = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist is not installed"
)


@st.composite
def samples(draw, max_n=40, max_d=6):
    """(x, targets): distinct points, on an integer lattice scaled by 2^k (float32 or float64, so
    projected exactly) or float64 values with all 53 bits (projected with rounding), possibly with
    near-ties; targets real (one column or several) or class labels."""
    n, d = draw(st.integers(1, max_n)), draw(st.integers(1, max_d))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["lattice32", "lattice64", "float64", "near-ties"]))
    scale = 2.0 ** draw(st.integers(-30, 30))
    if kind == "float64":
        x = rng.standard_normal((n, d)) * scale
    else:
        x = rng.integers(-50, 51, (n, d)).astype(np.float64) * scale
    if kind == "near-ties":  # copies of the first points moved by one part in 2^10 .. 2^40
        m = n // 2
        x[m : 2 * m] = x[:m] * (1 + 2.0 ** -draw(st.integers(10, 40)))
    x = np.unique(x.astype(np.float32) if kind == "lattice32" else x, axis=0)
    x = x[rng.permutation(len(x))]
    target = draw(st.sampled_from(["real", "labels", "columns"]))
    if target == "labels":
        y = rng.integers(0, 10, len(x)).astype(np.float64)
    else:
        y = rng.uniform(-1e3, 1e3, len(x) if target == "real" else (len(x), 3))
    return x, y


def rounding_bound(net, x, y, exact=None) -> np.ndarray:
    """A bound on |c(z_i) - y_i| from float64 rounding alone, per point (and output).

    With exact projections every hidden activation r_ij = max(x_i - b_j, 0) is exact, so only
    the output layer rounds: the dot product by gamma_(n+1) sum_j |w_j| r_ij in any summation order,
    the weights by the same order plus 2 eps per target step (3 eps n max|y| covers all steps).
    Rounded projections (``exact`` False; default: as the construction's) add, per point,
    2 delta_i sum_j |w_j| with delta_i the projection's rounding bound (a unit can also switch on
    by up to 2 delta_i).
    """
    a, b, w = (t.detach().numpy() for t in (net.a, net.b, net.w))
    x64 = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n, d = len(b), x64.shape[1]
    r = np.maximum((x64 @ a)[:, None] - b[None, :], 0)
    bound = 1.01 * (n + 3) * U * (r @ np.abs(w)) + 6 * n * U * np.abs(y).max()
    if not (net.construction.exact_projection if exact is None else exact):
        delta = d * U / (1 - d * U) * (np.abs(x64) @ np.abs(a))
        delta = delta[:, None] if w.ndim == 2 else delta
        bound = bound + 2.01 * delta * np.abs(w).sum(0)
    return bound


def deep_rounding_bound(shallow, x, y, exact=None) -> np.ndarray:
    """A bound on |deep(z_i) - y_i| (or on the deep and shallow outputs' difference).

    The deep network computes each unit as max(max(p - b_1, 0) - (b_j - b_1), 0): three rounded
    subtractions where the two-layer one has one, so each unit may differ by up to
    U (|p - b_1| + |b_j - b_1| + |p - b_j|) (exact on lattice data), and its sums are regrouped
    across layers, which twice the two-layer bound covers.
    """
    a, b, w = (t.detach().numpy() for t in (shallow.a, shallow.b, shallow.w))
    p = np.asarray(x, dtype=np.float64).reshape(len(x), -1) @ a
    spread = np.abs(p - b[0])[:, None] + np.abs(b - b[0])[None, :] + np.abs(p[:, None] - b[None, :])
    return 2 * rounding_bound(shallow, x, y, exact) + 1.01 * U * (spread @ np.abs(w))


def residuals(net, x, y) -> np.ndarray:
    return np.abs(evaluate(net, x).numpy() - y)


@settings(max_examples=80, deadline=None)
@given(samples())
def test_reproduces_any_targets_with_exact_weight_count(sample):
    x, y = sample
    net = construct(x, y)
    n, d = x.shape
    c = net.construction
    assert c.units == n and c.depth == 2
    width = 1 if y.ndim == 1 else y.shape[1]
    assert c.num_params == sum(p.numel() for p in net.parameters()) == d + n + n * width
    if y.ndim == 1:
        assert c.num_params == 2 * n + d
    assert c.exact_projection == np.array_equal(x.astype(np.float32), x)  # float32 values are projected exactly
    r = residuals(net, x, y)
    assert np.all(r <= rounding_bound(net, x, y))
    check = verify(net, x, y)
    assert check.max_residual == r.max()
    if y.ndim == 1:
        assert check.fit_fraction == np.mean(r < 0.5)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 300), st.integers(-40, 40), st.integers(0, 2**32 - 1))
def test_well_separated_points_are_fitted_to_high_precision(n, k, seed):
    rng = np.random.default_rng(seed)
    x = (rng.choice(10 * n, n, replace=False).astype(np.float32) * 2.0**k)[:, None]
    y = rng.integers(-10, 11, n).astype(np.float64)
    net = construct(x, y)
    assert net.construction.exact_projection and net.construction.min_gap_relative >= 1 / (10 * n)
    assert residuals(net, x, y).max() <= 1e-9


def test_lemma1_matrix_is_lower_triangular_and_solved_in_linear_time():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (30, 5)).astype(np.float32) / 255, rng.uniform(-5, 5, 30)
    net = construct(x, y)
    a, b, w = (t.detach().numpy() for t in (net.a, net.b, net.w))
    p = np.sort(x.astype(np.float64) @ a)
    A = np.maximum(p[:, None] - b[None, :], 0)
    assert np.array_equal(A, np.tril(A)) and np.all(np.diag(A) > 0)
    assert np.diag(A).min() == net.construction.min_diagonal
    assert net.construction.min_gap == np.diff(p).min()
    np.testing.assert_allclose(np.linalg.solve(A, A @ w), w, rtol=1e-7)
    np.testing.assert_allclose(A @ w, y[np.argsort(x.astype(np.float64) @ a)], rtol=0, atol=1e-9)
    np.testing.assert_allclose(net.construction.condition, np.linalg.cond(A, np.inf), rtol=1e-6)


def test_projections_of_pixels_are_exact_in_any_order():
    """k/255 stored as float32: the integer direction gives the same projection whatever the
    order of the sum or the size of the block, equal to the exact sum."""
    rng = np.random.default_rng(1)
    x = (rng.integers(0, 256, (200, 784)) / 255).astype(np.float32)
    net = construct(x, rng.integers(0, 10, 200))
    assert net.construction.exact_projection and net.construction.direction_bound > 1000
    a = net.a.detach()
    x64 = torch.from_numpy(x).double()
    exact = [math.fsum(row * a.numpy()) for row in x64.numpy()]  # the products are exact; fsum rounds once
    assert (x64 @ a).tolist() == exact
    assert (x64.flip(1) @ a.flip(0)).tolist() == exact
    assert torch.cat([x64[i : i + 7] @ a for i in range(0, 200, 7)]).tolist() == exact


def test_one_point_one_dimension_and_zero():
    for x, y in (([[3.0]], [7.5]), ([[0.0]], [-2.0]), ([[1e-30]], [1e30])):
        net = construct(x, y)
        assert net.construction.num_params == 3
        assert float(evaluate(net, x)[0]) == y[0]


@settings(max_examples=40, deadline=None)
@given(samples(max_n=20), st.data())
def test_duplicates_with_equal_targets_are_merged(sample, data):
    x, y = sample
    copies = data.draw(st.lists(st.integers(0, len(x) - 1), min_size=1, max_size=10))
    xd, yd = np.concatenate([x, x[copies]]), np.concatenate([y, y[copies]])
    net = construct(xd, yd)
    assert net.construction.n == len(xd) and net.construction.units == len(x)
    assert net.construction.num_params == len(x) * (1 + (1 if y.ndim == 1 else y.shape[1])) + x.shape[1]
    assert np.all(residuals(net, xd, yd) <= rounding_bound(net, xd, yd))
    yd[-1] = yd[-1] + 1  # the last copy now disagrees with its original
    with pytest.raises(UserError, match="identical inputs with different targets"):
        construct(xd, yd)


def test_ties_between_distinct_points_draw_a_new_direction(monkeypatch):
    monkeypatch.setattr(expressivity, "MAX_DIRECTION", 1)  # a in {-1, 0, 1}^3: ties are likely
    x, y = np.eye(3), np.array([0.0, 1.0, 2.0])
    net = construct(x, y, seed=3)
    assert net.construction.attempts > 1 and verify(net, x, y).fit_fraction == 1.0
    monkeypatch.setattr(expressivity, "MAX_DIRECTION", 0)  # every point projects to 0
    with pytest.raises(UserError, match="too close together"):
        construct(x, y)


def test_bad_inputs():
    with pytest.raises(UserError, match="NaN or infinite"):
        construct([[np.nan]], [1.0])
    with pytest.raises(UserError, match="at least one point"):
        construct(np.zeros((0, 3)), [])
    with pytest.raises(UserError, match="one target per point"):
        construct(np.zeros((3, 2)), [1.0, 2.0])
    with pytest.raises(UserError, match="depth"):
        construct(np.eye(2), [1.0, 2.0], depth=1)
    with pytest.raises(UserError, match="at most 4"):
        construct(np.eye(2), [1.0, 2.0], depth=5)


@settings(max_examples=40, deadline=None)
@given(samples(max_n=30), st.integers(3, 12))
def test_depth_k_computes_the_same_function_with_few_nonzeros(sample, depth):
    x, y = sample
    n, d = x.shape
    depth = min(depth, n + 2)
    shallow, deep = construct(x, y), construct(x, y, depth=depth)
    k_out = 1 if y.ndim == 1 else y.shape[1]
    assert deep.depth == depth == deep.construction.depth
    assert deep.construction.num_params <= d + 1 + (2 + 2 * k_out) * n + 6 * k_out * depth
    assert deep.width <= -(-n // (depth - 2)) + 1 + 2 * k_out
    r_deep = residuals(deep, x, y)
    assert np.all(r_deep <= deep_rounding_bound(shallow, x, y))
    z = np.random.default_rng(0).standard_normal((50, d)) * np.abs(x).max()  # off the sample too
    difference = np.abs(evaluate(shallow, z).numpy() - evaluate(deep, z).numpy())
    both = deep_rounding_bound(shallow, z, y, exact=False) + rounding_bound(shallow, z, y, exact=False)
    assert np.all(difference <= both)


@FASHION
def test_fashion_mnist_random_labels_one_hot_and_scalar():
    ds = load_dataset("fashion-mnist")
    x, labels = ds.x_train[:5000], np.random.default_rng(0).integers(0, 10, 5000)
    for targets in (labels, one_hot(labels, 10)):
        net = construct(x, targets)
        check = verify(net, x, targets)
        assert net.construction.exact_projection and check.fit_fraction == 1.0 and check.max_residual < 1e-4


def test_verify_and_predict_take_labels_or_one_hot_and_predict_integers():
    ds = load_dataset("digits")
    x, labels = ds.x_train[:300], ds.y_train[:300]
    k_outputs, scalar = construct(x, one_hot(labels, 10)), construct(x, labels)
    for net in (k_outputs, scalar):
        predicted = predict(net, x)
        assert predicted.dtype == torch.int64 and torch.equal(predicted, torch.as_tensor(labels))
    by_labels, by_one_hot = verify(k_outputs, x, labels), verify(k_outputs, x, one_hot(labels, 10))
    assert by_labels.fit_fraction == by_one_hot.fit_fraction == 1.0
    assert by_labels.max_residual == by_one_hot.max_residual < 1e-6
    with pytest.raises(UserError, match="one-hot targets of shape"):
        verify(k_outputs, x, labels + 0.5)  # not class labels
    with pytest.raises(UserError, match=r"1 output\(s\) but the targets have shape \(300, 10\)"):
        verify(scalar, x, one_hot(labels, 10))
    with pytest.raises(UserError, match=r"10 output\(s\) but the targets have shape \(300, 3\)"):
        verify(k_outputs, x, one_hot(labels % 3, 3))


@FASHION
def test_construct_cli_json(capsys):
    assert (
        main(
            [
                "construct",
                "--dataset",
                "fashion-mnist",
                "--train-size",
                "3000",
                "--test-size",
                "500",
                "--randomize",
                "random-labels",
                "--json",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    for key in (
        "n",
        "d",
        "num_params",
        "fit_fraction",
        "max_residual",
        "min_gap",
        "seconds",
        "verify_seconds",
        "test_acc",
    ):
        assert key in out
    assert out["n"] == 3000 and out["d"] == 784 and out["num_params"] == 2 * 3000 + 784
    assert out["fit_fraction"] == 1.0 and out["max_residual"] < 1e-4 and 0 <= out["test_acc"] < 0.3
    assert "targets reproduced: 100.0000%" in captured.err


def test_construct_cli_one_hot_depth_and_errors(capsys):
    assert main(["construct", "--dataset", "digits", "--outputs", "onehot", "--depth", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fit_fraction"] == 1.0 and out["depth"] == 3 and out["test_acc"] > 0.1
    assert main(["construct", "--dataset", "digits", "--depth", "0"]) == 2
    assert "depth 0 is too small" in capsys.readouterr().err


def test_rademacher_theorem1_is_exactly_one_and_training_is_a_lower_bound(capsys):
    r = rademacher({"dataset": "digits", "train_size": 300, "model": "theorem1"}, draws=3)
    assert r.values == [1.0, 1.0, 1.0] and r.statuses == ["constructed"] * 3
    spec = {
        "dataset": "digits",
        "train_size": 200,
        "test_size": 50,
        "hidden": (16,),
        "model": "mlp",
        "epochs": 2,
        "lr": 0.05,
        "lr_decay": 1.0,
    }
    r = rademacher(spec, draws=2)
    assert len(r.values) == 2 and all(-1 <= v <= 1 for v in r.values) and r.num_params == 64 * 16 + 16 + 16 * 2 + 2
    assert r.values[0] < 1.0  # two epochs of a 16-unit MLP do not fit random labels
    with pytest.raises(UserError, match="does nothing here"):
        rademacher({**spec, "randomize": "random-labels"})
    assert (
        main(
            [
                "rademacher",
                "--dataset",
                "digits",
                "--train-size",
                "100",
                "--model",
                "theorem1",
                "--draws",
                "2",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["mean"] == 1.0 and out["std"] == 0.0 and out["draws"] == 2
