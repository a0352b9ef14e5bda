"""The S / S' pair for empirical SGD stability (rethink.memorization.stability; MEASURES.md sec. 6)."""

import math

import numpy as np
import pytest
import torch

from rethink.errors import UserError
from rethink.memorization import Pair, choose_pairs, normalized_distance, positions, replace_one

N, EPOCHS = 12, 4


def dataset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3, 2, 2)).astype(np.float32)
    y = rng.integers(0, 10, N)
    pool_x = rng.normal(size=(5, 3, 2, 2)).astype(np.float32) + 100.0  # unmistakably outside S
    pool_y = np.arange(5) + 20
    orders = [torch.randperm(N, generator=torch.Generator().manual_seed(e)) for e in range(EPOCHS)]
    return x, y, pool_x, pool_y, orders


def test_s_prime_differs_from_s_in_exactly_one_example():
    x, y, pool_x, pool_y, orders = dataset()
    x_before, y_before = x.copy(), y.copy()
    pair = replace_one(x, y, pool_x, pool_y, 7, 3, orders)
    assert isinstance(pair, Pair) and (pair.k, pair.outside) == (7, 3)
    rows = np.flatnonzero((pair.x != x).reshape(N, -1).any(axis=1))
    assert rows.tolist() == [7] and np.flatnonzero(pair.y != y).tolist() == [7]
    assert np.array_equal(pair.x[7], pool_x[3]) and pair.y[7] == pool_y[3]
    assert np.array_equal(x, x_before) and np.array_equal(y, y_before)  # S itself untouched
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(pair.orders, orders))  # same order


def test_the_replacement_sits_where_k_sat_in_every_epoch():
    x, y, pool_x, pool_y, orders = dataset()
    pair = replace_one(x, y, pool_x, pool_y, 4, 0, orders)
    assert len(pair.positions) == EPOCHS
    assert len(set(pair.positions.tolist())) > 1  # the orders differ across epochs, so do the positions
    for epoch, order in enumerate(orders):
        stream_s, stream_s2 = x[order.numpy()], pair.x[pair.orders[epoch]]  # what each run draws, in order
        differs = np.flatnonzero((stream_s != stream_s2).reshape(N, -1).any(axis=1))
        assert differs.tolist() == [pair.positions[epoch]]
        assert np.array_equal(stream_s2[pair.positions[epoch]], pool_x[0])
        assert int(order[pair.positions[epoch]]) == 4


def test_torch_tensors_work_too():
    x, y, pool_x, pool_y, orders = dataset()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    pair = replace_one(tx, ty, torch.from_numpy(pool_x), torch.from_numpy(pool_y), 0, 1, orders)
    assert isinstance(pair.x, torch.Tensor) and torch.equal(tx, torch.from_numpy(x))
    assert torch.equal(pair.x[1:], tx[1:]) and torch.equal(pair.x[0], torch.from_numpy(pool_x[1]))


def test_positions_finds_k_in_each_order():
    orders = [np.array([2, 0, 1]), np.array([0, 1, 2]), np.array([1, 2, 0])]
    assert positions(orders, 0).tolist() == [1, 0, 2]


def test_an_order_that_is_not_a_permutation_is_rejected():
    x, y, pool_x, pool_y, _ = dataset()
    with pytest.raises(ValueError, match="permutation"):
        replace_one(x, y, pool_x, pool_y, 0, 0, [np.zeros(N, int)])


def test_choose_pairs_distinct_and_in_range():
    pairs = choose_pairs(N, 5, 5, np.random.default_rng(1))
    ks, outs = zip(*pairs)
    assert len(set(ks)) == 5 and len(set(outs)) == 5
    assert all(0 <= k < N for k in ks) and sorted(outs) == list(range(5))
    assert pairs == choose_pairs(N, 5, 5, np.random.default_rng(1))


@pytest.mark.parametrize(
    "pairs, pool, expected",
    [
        (13, 100, "--stability-pairs 13 is more than the 12 training examples"),
        (6, 5, "--stability-pairs 6 is more than the 5 outside examples"),
        (0, 5, "--stability-pairs 0 must be at least 1"),
    ],
)
def test_too_many_pairs_is_one_user_error_line(pairs, pool, expected):
    with pytest.raises(UserError) as err:
        choose_pairs(N, pool, pairs, np.random.default_rng(0))
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)
    assert "pass --stability-pairs" in str(err.value)


def test_normalized_distance():
    w = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0, 4.0]])]  # ||w|| = 5
    w2 = [torch.tensor([3.0, 1.0]), torch.tensor([[0.0, 4.0]])]  # ||w - w'|| = 1
    assert normalized_distance(w, w2) == pytest.approx(0.2)
    assert normalized_distance(w2, w) == pytest.approx(1 / math.sqrt(26))  # normalized by the first
    assert normalized_distance(w, w) == 0.0
    model = torch.nn.Linear(3, 2)
    assert normalized_distance(model.parameters(), [p.detach() * 1.5 for p in model.parameters()]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shapes"):
        normalized_distance(w, [torch.zeros(2), torch.zeros(2)])
    with pytest.raises(ValueError, match="parameters"):
        normalized_distance(w, w[:1])
