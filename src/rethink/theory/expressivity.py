"""Theorem 1 of Zhang et al. (2017): a two-layer ReLU network with 2n + d weights that represents
any targets on n distinct points in R^d, built in O(n log n) and checked in float64.

The network is c(x) = sum_j w_j max(<a, x> - b_j, 0). With the projections x_i = <a, z_i> sorted
and b interleaving them, (c(z_i))_i = A w with A_ij = max(x_i - b_j, 0) lower triangular (Lemma 1).

How the float64 network is made to reproduce its targets:

* **Integer direction, exact projections.** The entries of ``a`` are random integers in [-M, M].
  When every input is an integer multiple of a power of two u (true of all float32 data, e.g.
  pixels k/255 stored as float32, where u = 2^-31) and M * sum_k max_i |z_ik| <= 2^51 u, every
  partial sum of <a, z> is a multiple of u below 2^51 u in magnitude, so float64 computes every
  projection exactly, in any summation order, in any block of any size. Ties between distinct
  points are then seen exactly (and a new direction drawn), and the hidden activations of the
  network are exactly the entries of A. When the inputs have no such grid (e.g. float64 noise),
  M = 2^20 and projections closer than their float64 rounding bound count as ties.
* **b_j = x_{j-1}**, the limit of the paper's interleaving b_{j-1} < x_{j-1} < b_j. A stays lower
  triangular (max(0, 0) = 0), its diagonal x_i - b_i is the whole gap to the previous point (the
  largest min_i (x_i - b_i) an interleaving allows), and c becomes the piecewise-linear
  interpolant of the sorted targets, whose slopes (y_i - y_{i-1}) / gap_i never exceed the target
  steps over the smallest gap. Any b_j strictly inside a gap makes the slopes follow the recursion
  S_j = (y_j - y_{j-1} - S_{j-1} (b_j - x_{j-1})) / (x_j - b_j), which can grow from step to step;
  with midpoints it never decays, and the float64 sums lose about a thousand times more accuracy.
* **Linear-time solve.** A^-1 = D diag(1 / gap) D with D the first difference, so w is two
  differences and a division: O(n) after the sort, no n x n matrix.

The remaining rounding is in the output layer's sum, of order eps * max|y_i - y_{i-1}| * (range of
projections) / (smallest gap); :func:`verify` measures it on the network itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .base import TwoLayerReLU, as_tensor, flatten64
from .deep import deepen

MAX_DIRECTION = 2**20  # entries of a are integers in [-M, M], M at most this
MIN_EXACT_DIRECTION = 2**10  # below this an exact integer direction collides too often
EXACT_LIMIT = 2.0**51  # |<a, z>| / u stays below this, so b and x - b stay below 2^53 u
ATTEMPTS = 8  # directions tried before a collision is reported
BLOCK_ELEMENTS = 2**22  # float64 elements per block when projecting or evaluating (32 MiB)
U = 2.0**-53  # float64 unit roundoff


@dataclass(frozen=True)
class Construction:
    """What :func:`construct` did and the numbers that tell how well conditioned it is."""

    n: int  # sample points given
    units: int  # distinct points = hidden units of Theorem 1's network
    d: int
    outputs: int  # 1 (scalar targets) or K
    depth: int
    num_params: int  # 2 units + d (scalar), d + units + units K; structural nonzeros for depth > 2
    exact_projection: bool  # projections computed exactly in float64 (see the module docstring)
    direction_bound: int  # entries of a are integers in [-M, M]
    attempts: int  # directions drawn until the projections separated the points
    min_gap: float | None  # smallest gap between sorted projections (None for one point)
    min_gap_relative: float | None  # the same over the range of the projections
    min_diagonal: float  # min_i (x_i - b_i): Lemma 1's smallest eigenvalue of A
    condition: float  # ||A||_inf ||A^-1||_inf, computed exactly in O(n)
    norm_a: float
    norm_b: float
    norm_w: float
    max_abs_w: float
    seconds: float


def as_targets(y, n: int) -> torch.Tensor:
    """Targets as float64: (n,) for one output, (n, K) for K outputs."""
    t = as_tensor(y).to(torch.float64)
    if t.ndim not in (1, 2) or len(t) != n:
        raise UserError(f"targets have shape {tuple(t.shape)}; give one target per point, shape ({n},) or ({n}, K)")
    if not bool(torch.isfinite(t).all()):
        raise UserError("the targets contain NaN or infinite values; give finite targets")
    return t


def one_hot(labels, num_classes: int) -> torch.Tensor:
    """Class labels 0..K-1 as float64 one-hot rows (the targets of the K-output network)."""
    return torch.nn.functional.one_hot(as_tensor(labels).long(), num_classes).to(torch.float64)


def _rows_per_block(width: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(width, 1))


def _by_blocks(fn, x: torch.Tensor, width: int) -> torch.Tensor:
    """``fn`` applied to blocks of rows of ``x`` (about BLOCK_ELEMENTS / width rows each), the
    results written into one preallocated tensor. (Keeping every block's small result alive
    instead would pin the freed block buffers in the heap, so memory would grow with the number
    of blocks.)"""
    step = _rows_per_block(width)
    out = None
    for i in range(0, len(x), step):
        block = fn(x[i : i + step])
        if out is None:
            out = block.new_empty((len(x), *block.shape[1:]))
        out[i : i + step] = block
    return out


def _grid(x: torch.Tensor) -> tuple[float | None, torch.Tensor]:
    """(u, column maxima of |x|): u is a power of two that divides every entry, None when no grid
    coarse enough is known (float64 values that are not float32 values). Rejects non-finite
    inputs. Reads ``x`` in blocks."""
    colmax = torch.zeros(x.shape[1], dtype=torch.float64)
    smallest, single = math.inf, True
    step = _rows_per_block(x.shape[1])
    for i in range(0, len(x), step):
        xb = x[i : i + step]
        if xb.dtype == torch.float64:
            single = single and torch.equal(xb, xb.float().double())
        xb = xb.abs()
        colmax = torch.maximum(colmax, xb.amax(0).double())  # NaN and inf propagate
        smallest = min(smallest, float(torch.where(xb > 0, xb, math.inf).amin()))
    if not bool(torch.isfinite(colmax).all()):
        raise UserError("the inputs contain NaN or infinite values; give finite inputs")
    if not x.is_floating_point() or smallest == math.inf:
        return 1.0, colmax  # integers, or all zeros
    if not single:
        return None, colmax
    # A float32 value v has 24 significant bits, so it is a multiple of 2^(floor(log2 |v|) - 23).
    return math.ldexp(1.0, math.floor(math.log2(smallest)) - 23), colmax


def _project(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """<a, x_i> for every row, in float64 blocks (the network's own first layer)."""
    return _by_blocks(lambda xb: flatten64(xb) @ a, x, x.shape[1])


def _rounding_bound(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """A bound on |fl(<a, x_i>) - <a, x_i>| for any summation order: gamma_d sum_k |a_k x_ik|."""
    d = x.shape[1]
    gamma = d * U / (1 - d * U)
    return _by_blocks(lambda xb: flatten64(xb).abs() @ a.abs(), x, d) * gamma


def _separate(x, targets, p, order, tol):
    """The sorted points to keep (duplicates merged), or None when distinct points tie.

    Consecutive sorted projections closer than ``tol`` (0 when exact) form clusters; a cluster of
    identical inputs with equal targets keeps one point, identical inputs with different targets
    cannot be represented, and distinct inputs in a cluster need another direction.
    """
    ps, ts = p[order], tol[order]
    close = (ps[1:] - ps[:-1]) <= ts[1:] + ts[:-1]
    if not bool(close.any()):
        return order
    runs = np.flatnonzero(np.diff(np.concatenate([[0], close.numpy().astype(np.int8), [0]])))
    keep = torch.ones(len(order), dtype=torch.bool)
    collided = False
    for start, stop in zip(runs[::2], runs[1::2]):
        idx = order[start : stop + 1]
        rows, inverse = torch.unique(flatten64(x[idx]), dim=0, return_inverse=True)
        for g in range(len(rows)):
            same = idx[inverse == g]
            differ = (targets[same] != targets[same[0]]).reshape(len(same), -1).any(1)
            if bool(differ.any()):
                i, j = sorted((int(same[0]), int(same[differ][0])))
                raise UserError(
                    f"points {i} and {j} are identical inputs with different targets, so no "
                    "function (and no network) can represent the sample; remove one of them or "
                    "give them the same target"
                )
        collided |= len(rows) > 1
        keep[start + 1 : stop + 1] = False
    return None if collided else order[keep]


def _spacing(ps: torch.Tensor) -> float:
    """x_1 - b_1: the power of two nearest the mean gap (for one point: at least |x_1|, or 1)."""
    if len(ps) > 1:
        return math.ldexp(1.0, round(math.log2(float(ps[-1] - ps[0]) / (len(ps) - 1))))
    v = abs(float(ps[0]))
    return math.ldexp(1.0, math.ceil(math.log2(v))) if v > 0 else 1.0


def solve(ps: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b, w, diagonal) for sorted distinct projections ``ps`` and their targets, in O(n).

    b_1 = x_1 - s, b_j = x_{j-1}; A w = y is solved as w = D diag(1 / (x - b)) D y.
    """
    b = torch.cat([ps[:1] - _spacing(ps), ps[:-1]])
    diagonal = ps - b  # as the network computes it: exact when the projections are
    steps = torch.diff(ys, dim=0, prepend=torch.zeros_like(ys[:1]))
    slopes = steps / (diagonal[:, None] if ys.ndim == 2 else diagonal)
    w = torch.diff(slopes, dim=0, prepend=torch.zeros_like(slopes[:1]))
    if not bool(torch.isfinite(w).all()):
        raise UserError(
            "the output weights overflow float64 (targets too large for the gaps between the "
            "projected points); scale the targets down"
        )
    return b, w, diagonal


def condition(ps: torch.Tensor, b: torch.Tensor, diagonal: torch.Tensor) -> float:
    """||A||_inf ||A^-1||_inf of Lemma 1's matrix, exactly, in O(n).

    The largest row of A is the last, sum_j (x_n - b_j); row i of A^-1 = D diag(1 / diagonal) D
    has absolute sum 2 / diag_i + 2 / diag_{i-1} (1 / diag_1 for the first row, 2 / diag_2 + 1 /
    diag_1 for the second).
    """
    inv = 1.0 / diagonal
    rows = 2 * inv
    rows[0] = inv[0]
    rows[1:] += 2 * inv[:-1]
    if len(rows) > 1:
        rows[1] -= inv[0]
    return float((ps[-1] - b).sum()) * float(rows.max())


def _direction(x: torch.Tensor, targets: torch.Tensor, exact: bool, bound: int, seed: int):
    """A random integer direction ``a`` (entries within ``bound``) along which the distinct points
    project apart beyond rounding: ``a``, the projections, the points kept and the attempts taken."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    for attempt in range(1, ATTEMPTS + 1):
        a = torch.from_numpy(rng.integers(-bound, bound + 1, d).astype(np.float64))
        p = _project(x, a)
        tol = torch.zeros(n, dtype=torch.float64) if exact else _rounding_bound(x, a)
        kept = _separate(x, targets, p, torch.argsort(p, stable=True), tol)
        if kept is not None:
            return a, p, kept, attempt
    raise UserError(
        f"{ATTEMPTS} random directions left distinct points within float64 rounding of each "
        "other; the points are too close together to be told apart in float64"
    )


def construct(x, y, *, depth: int = 2, seed: int = 0) -> nn.Module:
    """A float64 network that reproduces targets ``y`` on the points ``x`` (N, ...).

    ``y`` of shape (N,) gives Theorem 1's network with exactly 2 n + d weights (n distinct points;
    identical points with equal targets are merged); class labels are the numbers 0..K-1, read
    back by rounding. ``y`` of shape (N, K), e.g. :func:`one_hot` labels, gives K outputs sharing
    ``a`` and ``b`` (d + n + n K weights), read back by argmax. ``depth`` > 2 returns the same
    function as a deeper, narrower network (:func:`rethink.theory.deep.deepen`). ``seed`` fixes
    the direction. The result carries a :class:`Construction` as ``.construction``.
    """
    t0 = time.perf_counter()
    x = as_tensor(x)
    if x.ndim == 0 or x.numel() == 0:
        raise UserError(f"the sample has shape {tuple(x.shape)}; give at least one point with at least one coordinate")
    x = x.reshape(len(x), -1)
    n, d = x.shape
    if depth < 2:
        raise UserError(f"depth {depth} is too small; Theorem 1's network has depth 2 (give 2 or more)")
    targets = as_targets(y, n)
    unit, colmax = _grid(x)
    # Largest M with M sum_k max_i |x_ik| <= 2^51 u: then every projection is exact (module docstring).
    exact_bound = 0.0 if unit is None else EXACT_LIMIT * unit / max(float(colmax.sum()), unit)
    exact = exact_bound >= MIN_EXACT_DIRECTION
    bound = int(min(MAX_DIRECTION, exact_bound)) if exact else MAX_DIRECTION
    a, p, kept, attempts = _direction(x, targets, exact, bound, seed)
    ps, ys = p[kept], targets[kept]
    b, w, diagonal = solve(ps, ys)
    net = TwoLayerReLU(a, b, w)
    if depth > 2:
        net = deepen(net, depth)
    gaps = ps[1:] - ps[:-1]
    net.construction = Construction(
        n=n,
        units=len(ps),
        d=d,
        outputs=1 if ys.ndim == 1 else ys.shape[1],
        depth=depth,
        num_params=sum(q.numel() for q in net.parameters()),
        exact_projection=exact,
        direction_bound=bound,
        attempts=attempts,
        min_gap=float(gaps.min()) if len(gaps) else None,
        min_gap_relative=float(gaps.min() / (ps[-1] - ps[0])) if len(gaps) else None,
        min_diagonal=float(diagonal.min()),
        condition=condition(ps, b, diagonal),
        norm_a=float(a.norm()),
        norm_b=float(b.norm()),
        norm_w=float(w.norm()),
        max_abs_w=float(w.abs().max()),
        seconds=time.perf_counter() - t0,
    )
    return net


@dataclass(frozen=True)
class Verification:
    fit_fraction: float  # targets reproduced: |c - y| < 1/2 (scalar), argmax (K outputs)
    max_residual: float  # max |c(z_i) - y_i| over points and outputs
    seconds: float  # evaluating the network on the points


@torch.inference_mode()
def evaluate(net: nn.Module, x) -> torch.Tensor:
    """The network's outputs on every row of ``x``, in float64 blocks of bounded memory."""
    return _by_blocks(net, as_tensor(x), net.width)


def _targets_for(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The targets in the network's output shape: class labels become one-hot rows for K outputs."""
    if out.ndim == 2 and targets.ndim == 1:
        k = out.shape[1]
        if not bool((targets == targets.round()).all() and (targets >= 0).all() and (targets < k).all()):
            raise UserError(
                f"the network has {k} outputs, so it reads class labels 0..{k - 1} or one-hot targets "
                f"of shape (N, {k}); these targets are neither"
            )
        return one_hot(targets, k)
    if out.shape[1:] != targets.shape[1:]:
        raise UserError(
            f"the network has {1 if out.ndim == 1 else out.shape[1]} output(s) but the targets have shape "
            f"{tuple(targets.shape)}; give the targets it was built for (a scalar network: the labels "
            "as numbers, shape (N,))"
        )
    return targets


def verify(net: nn.Module, x, y) -> Verification:
    """Evaluate the network itself in float64 on the points and compare with the targets.

    ``y`` is what the network was built for; a K-output network also takes class labels 0..K-1.
    """
    targets = as_targets(y, len(x))
    t0 = time.perf_counter()
    out = evaluate(net, x)
    seconds = time.perf_counter() - t0
    targets = _targets_for(out, targets)
    if targets.ndim == 1:
        fit = (out - targets).abs() < 0.5
    else:
        fit = out.argmax(1) == targets.argmax(1)
    return Verification(float(fit.double().mean()), float((out - targets).abs().max()), seconds)


def predict(net: nn.Module, x) -> torch.Tensor:
    """Class predictions as integers (int64): the rounded output (scalar network) or the argmax (K outputs)."""
    out = evaluate(net, x)
    return out.round().long() if out.ndim == 1 else out.argmax(1)
