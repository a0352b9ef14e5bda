"""The S / S' pair of empirical SGD stability (Hardt, Recht, Singer 2016; MEASURES.md sec. 6).

Sec. 6: "train twice with the same initialization and the same example order, on S and on S' that
differs in one example (replace example k by a fresh one); record the parameter distance
||w_t - w'_t|| (normalized by ||w_t||) against steps".

Construction: S' is a copy of S whose row k (input and label) is the outside example; every other
row is identical and in the same place. Both runs use the same per-epoch permutations of the indices
0..n-1 (the engine's example order depends only on n and the seed), so the outside example is drawn
in S' at exactly the positions where example k is drawn in S, in every epoch, and every other
position draws the identical example in both runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rethink.errors import UserError


@dataclass(frozen=True)
class Pair:
    """S' for one replaced example: train on ``(x, y)`` with ``orders`` beside S with the same orders."""

    k: int  # index in S of the replaced example
    outside: int  # index in the outside pool of the example that replaces it
    x: Any  # S' inputs: S's with row k replaced (numpy array or torch tensor, as given)
    y: Any  # S' labels, likewise
    orders: tuple[np.ndarray, ...]  # per epoch, the example order (a permutation of 0..n-1): S's own
    positions: np.ndarray  # per epoch, the position in that epoch's order where row k is drawn


def _copy(a: Any) -> Any:
    return a.clone() if isinstance(a, torch.Tensor) else np.array(a, copy=True)


def _order(order: Any, n: int) -> np.ndarray:
    o = order.cpu().numpy() if isinstance(order, torch.Tensor) else np.asarray(order)
    if o.shape != (n,) or not np.array_equal(np.sort(o), np.arange(n)):
        raise ValueError(f"an epoch's order must be a permutation of 0..{n - 1}, got shape {o.shape}")
    return o.astype(np.int64)


def positions(orders: Sequence[Any], k: int) -> np.ndarray:
    """Per epoch, the position of example ``k`` in that epoch's order (sec. 6)."""
    return np.array([int(np.flatnonzero(np.asarray(o) == k)[0]) for o in orders], dtype=np.int64)


def replace_one(x: Any, y: Any, pool_x: Any, pool_y: Any, k: int, outside: int, orders: Sequence[Any]) -> Pair:
    """S' of sec. 6: ``(x, y)`` with row ``k`` replaced by ``(pool_x[outside], pool_y[outside])``, the
    same per-epoch ``orders`` (copied), and where row k sits in each. Inputs are not modified."""
    n = len(x)
    if len(y) != n or len(pool_x) != len(pool_y):
        raise ValueError(f"inputs and labels differ in length: {n} vs {len(y)}, pool {len(pool_x)} vs {len(pool_y)}")
    if not (0 <= k < n and 0 <= outside < len(pool_x)):
        raise ValueError(f"k={k} must index the {n} examples and outside={outside} the pool of {len(pool_x)}")
    x2, y2 = _copy(x), _copy(y)
    x2[k], y2[k] = pool_x[outside], pool_y[outside]
    same = tuple(_order(o, n) for o in orders)
    return Pair(k, outside, x2, y2, same, positions(same, k))


def choose_pairs(n: int, pool_size: int, pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``pairs`` (k, outside) index pairs: distinct training examples k, each replaced by a distinct
    outside example (sec. 6: "repeat over several k"), drawn from ``rng``."""
    if pairs < 1:
        raise UserError(f"--stability-pairs {pairs} must be at least 1; pass --stability-pairs 1 or more")
    if pairs > n:
        raise UserError(
            f"--stability-pairs {pairs} is more than the {n} training examples (each pair replaces a "
            f"different one); pass --stability-pairs {n} or fewer"
        )
    if pairs > pool_size:
        raise UserError(
            f"--stability-pairs {pairs} is more than the {pool_size} outside examples (each pair needs a "
            f"fresh one); pass --stability-pairs {pool_size} or fewer"
        )
    ks = rng.choice(n, size=pairs, replace=False)
    outs = rng.choice(pool_size, size=pairs, replace=False)
    return [(int(k), int(o)) for k, o in zip(ks, outs)]


def normalized_distance(params_a: Iterable[Any], params_b: Iterable[Any]) -> float:
    """||w - w'|| / ||w|| (sec. 6), w = ``params_a`` and w' = ``params_b`` flattened together, in
    float64. ||w|| = 0 gives inf, or 0.0 when w' = w as well."""
    a, b = list(params_a), list(params_b)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} parameters against {len(b)}")
    diff = norm = 0.0
    for p, q in zip(a, b):
        p, q = torch.as_tensor(p).detach().double(), torch.as_tensor(q).detach().double()
        if p.shape != q.shape:
            raise ValueError(f"parameter shapes differ: {tuple(p.shape)} vs {tuple(q.shape)}")
        diff += float(((p - q.to(p.device)) ** 2).sum())
        norm += float((p**2).sum())
    if norm == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return math.sqrt(diff) / math.sqrt(norm)
