"""Exact kernel interpolation, K alpha = Y, for n up to about 100,000 in 24 GB.

One n x n float32 array, of which only the lower triangle is ever used (the operating system
backs only the pages that are touched, so it costs about 2 n^2 bytes):

1. :func:`build_kernel` writes K tile by tile (each tile computed in float64, stored rounded).
2. :func:`cholesky_` overwrites it with the Cholesky factor L, left-looking and blocked, so that
   nearly all of the n^3 / 3 flops are large float32 matrix multiplies.
3. :func:`pcg` solves the system to float64 accuracy: conjugate gradients on K itself, with
   products K @ V recomputed in float64 from the data (:func:`kernel_matmul`, half the tiles,
   by symmetry) and L L^T as the preconditioner, started from the float32 solution. With a
   well-conditioned K each step gains at least as much as a step of iterative refinement; where
   K is too ill-conditioned for refinement to converge, CG still does.

No ridge term unless asked for: the minimum-norm interpolant is the point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError
from .functions import Kernel

#: Columns per step of the blocked Cholesky (measured at n = 30,000: 512 beats 1,024).
FACTOR_BLOCK = 512
#: Rows per step of the triangular solves (measured: 2,048 takes half the time of 512).
SOLVE_BLOCK = 2048
#: Rows and columns of the float64 tiles of the kernel products (measured: 1,024 is 15% faster
#: than 2,048, whose 32 MB tiles glibc maps and unmaps every time).
TILE = 1024

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def no_progress(stage: str, done: int, total: int) -> None:
    pass


@dataclass
class KernelData:
    """Inputs of a kernel in float64 with their squared row norms (distance kernels: centred)."""

    x: torch.Tensor
    sq: torch.Tensor

    @classmethod
    def from_inputs(cls, kernel: Kernel, x, center: torch.Tensor | None = None) -> KernelData:
        """``center``: for distance kernels, one shift (the training mean) for all data that meet."""
        x = torch.as_tensor(x).reshape(len(x), -1).to(torch.float64, copy=True)
        if kernel.is_distance:
            if center is None:
                raise ValueError("distance kernels need the center shared by training and test data")
            x.sub_(center)
        return cls(x, (x * x).sum(1))


def _tiles(n: int, size: int):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _lower_tiles(kernel: Kernel, data: KernelData, progress: Progress = no_progress, stage: str = ""):
    """(i0, i1, j0, j1, K[i0:i1, j0:j1]) for every float64 tile on or below the diagonal, with
    the diagonal entries exact (no rounding from the distance formula)."""
    tiles = _tiles(len(data.x), TILE)
    diag = kernel.diagonal(data.x, data.sq)
    done, total = 0, len(tiles) * (len(tiles) + 1) // 2
    for i, (i0, i1) in enumerate(tiles):
        for j0, j1 in tiles[: i + 1]:
            blk = kernel.block(data.x[i0:i1], data.x[j0:j1], data.sq[i0:i1], data.sq[j0:j1])
            if i0 == j0:
                blk.diagonal().copy_(diag[i0:i1])
            yield i0, i1, j0, j1, blk
            done += 1
            if stage:
                progress(stage, done, total)


def build_kernel(
    kernel: Kernel, data: KernelData, out: torch.Tensor, ridge: float = 0.0, progress: Progress = no_progress
) -> torch.Tensor:
    """Write K + ridge I into the lower triangle of the float32 ``out`` (n, n), tile by tile.

    Above the diagonal only the diagonal tiles are written: the rest of the upper triangle is
    never touched, so the operating system never gives it memory (see budget.matrix_bytes).
    """
    for i0, i1, j0, j1, blk in _lower_tiles(kernel, data, progress, "kernel matrix"):
        if i0 == j0 and ridge:
            blk.diagonal().add_(ridge)
        out[i0:i1, j0:j1] = blk
    return out


class NotPositiveDefinite(Exception):
    def __init__(self, row: int):
        super().__init__(f"non-positive pivot at row {row}")
        self.row = row


def cholesky_(a: torch.Tensor, block: int = FACTOR_BLOCK, progress: Progress = no_progress) -> torch.Tensor:
    """Overwrite the lower triangle of the symmetric positive definite ``a`` with its Cholesky factor.

    Left-looking: block column k is first brought up to date with one multiply,
    a[k:, k] -= L[k:, :k] @ L[k, :k]^T, then its diagonal block is factored (LAPACK) and the rest
    multiplied by the inverse of that small factor. So all but O(n^2 block) of the n^3 / 3 flops
    are large float32 multiplies. Nothing above the diagonal blocks is read or written (the
    diagonal blocks' upper halves end up zero). Raises :class:`NotPositiveDefinite` at the first
    block with a non-positive pivot.
    """
    n = len(a)
    for k0, k1 in _tiles(n, block):
        diag = a[k0:k1, k0:k1]
        if k0:
            a[k0:, k0:k1].addmm_(a[k0:, :k0], a[k0:k1, :k0].T, alpha=-1.0)
        lkk, info = torch.linalg.cholesky_ex(diag)  # reads the lower triangle only
        if info:
            raise NotPositiveDefinite(k0 + int(info) - 1)
        diag.copy_(lkk)
        if k1 < n:  # a[k1:, k] L_kk^-T as one multiply: much faster than a triangular solve here
            inverse = torch.linalg.solve_triangular(lkk, torch.eye(k1 - k0, dtype=a.dtype), upper=False)
            a[k1:, k0:k1] = a[k1:, k0:k1] @ inverse.T
        progress("cholesky", k1, n)
    return a


def cho_solve(a: torch.Tensor, b: torch.Tensor, block: int = SOLVE_BLOCK) -> torch.Tensor:
    """Solve L L^T x = b with L the lower triangle of ``a`` (float32); ``b`` (n, c) any dtype."""
    y = b.to(a.dtype).clone()
    tiles = _tiles(len(a), block)
    for i0, i1 in tiles:  # forward: L y = b
        if i0:
            y[i0:i1].addmm_(a[i0:i1, :i0], y[:i0], alpha=-1.0)
        y[i0:i1] = torch.linalg.solve_triangular(a[i0:i1, i0:i1], y[i0:i1], upper=False)
    for i0, i1 in reversed(tiles):  # backward: L^T x = y
        if i1 < len(a):
            y[i0:i1].addmm_(a[i1:, i0:i1].T, y[i1:], alpha=-1.0)
        y[i0:i1] = torch.linalg.solve_triangular(a[i0:i1, i0:i1].T, y[i0:i1], upper=True)
    return y.to(b.dtype)


def kernel_matmul(kernel: Kernel, data: KernelData, v: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """(K + ridge I) @ v in float64, K recomputed from the data tile by tile (each tile below the
    diagonal serves both itself and its transpose)."""
    out = torch.zeros_like(v)
    for i0, i1, j0, j1, blk in _lower_tiles(kernel, data):
        out[i0:i1].addmm_(blk, v[j0:j1])
        if i0 != j0:
            out[j0:j1].addmm_(blk.T, v[i0:i1])
    if ridge:
        out.add_(v, alpha=ridge)
    return out


def cross_matmul(kernel: Kernel, a: KernelData, b: KernelData, v: torch.Tensor) -> torch.Tensor:
    """K(a, b) @ v in float64, in tiles (e.g. test points a against training points b)."""
    out = torch.zeros(len(a.x), v.shape[1], dtype=v.dtype)
    for i0, i1 in _tiles(len(a.x), TILE):
        for j0, j1 in _tiles(len(b.x), TILE):
            blk = kernel.block(a.x[i0:i1], b.x[j0:j1], a.sq[i0:i1], b.sq[j0:j1])
            out[i0:i1].addmm_(blk, v[j0:j1])
    return out


@dataclass
class Solution:
    alpha: torch.Tensor  # (n, c) float64
    k_alpha: torch.Tensor  # K @ alpha (the fit at the training points), recomputed in float64
    ridge: float
    iterations: int  # CG steps after the first preconditioned solve
    history: list[float]  # relative residual: float32 solve, each CG step, then recomputed at the end
    seconds: dict[str, float]  # kernel, factor, solve
    factor_gflops: float  # (n^3 / 3) / factor seconds

    def rkhs_norm(self, columns=slice(None)) -> float:
        """sqrt(trace(alpha^T K alpha)) over the given columns."""
        return math.sqrt(max(0.0, float((self.alpha[:, columns] * self.k_alpha[:, columns]).sum())))

    def residual(self, y: torch.Tensor, columns=slice(None)) -> float:
        """||(K + ridge I) alpha - y|| / ||y|| over the given columns."""
        a, y = self.alpha[:, columns], y[:, columns]
        return float(torch.linalg.norm(self.k_alpha[:, columns] + self.ridge * a - y) / torch.linalg.norm(y))


def _ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b per column, 0 where b is not positive (a column that has converged)."""
    return torch.where(b > 0, a / b.clamp(min=torch.finfo(b.dtype).tiny), torch.zeros_like(b))


def pcg(
    kernel: Kernel,
    data: KernelData,
    y: torch.Tensor,
    factor: torch.Tensor,
    ridge: float = 0.0,
    tol: float = 1e-10,
    max_iter: int = 30,
    progress: Progress = no_progress,
):
    """Solve (K + ridge I) alpha = y for every column at once: one CG per column, run in lockstep
    so that they share each pass over K, preconditioned by the float32 factor and started from
    its solution. Stops when every column's relative residual is below ``tol``, then recomputes
    K alpha (without the ridge). Returns alpha, K alpha, the number of CG steps and the residual
    history."""
    y_norm = torch.linalg.norm(y)
    alpha = cho_solve(factor, y)
    r = y - kernel_matmul(kernel, data, alpha, ridge)
    history = [float(torch.linalg.norm(r) / y_norm)]
    z = cho_solve(factor, r)
    p = z.clone()
    rz = (r * z).sum(0)
    it = 0
    while it < max_iter and (_ratio(torch.linalg.norm(r, dim=0), torch.linalg.norm(y, dim=0)) > tol).any():
        q = kernel_matmul(kernel, data, p, ridge)
        step = _ratio(rz, (p * q).sum(0))
        alpha.add_(p * step)
        r.sub_(q * step)
        z = cho_solve(factor, r)
        rz_new = (r * z).sum(0)
        p = z + p * _ratio(rz_new, rz)
        rz = rz_new
        it += 1
        history.append(float(torch.linalg.norm(r) / y_norm))
        progress("conjugate gradients", it, max_iter)
    k_alpha = kernel_matmul(kernel, data, alpha)  # the true product, free of CG's rounding drift
    history.append(float(torch.linalg.norm(k_alpha + ridge * alpha - y) / y_norm))
    return alpha, k_alpha, it, history


def interpolate(
    kernel: Kernel,
    data: KernelData,
    y: torch.Tensor,
    ridge: float = 0.0,
    tol: float = 1e-10,
    max_iter: int = 30,
    block: int = FACTOR_BLOCK,
    progress: Progress = no_progress,
) -> Solution:
    """alpha with (K + ridge I) alpha = y (float64), through the in-place float32 factorization."""
    n = len(data.x)
    seconds = {}
    t = time.perf_counter()
    a = build_kernel(kernel, data, torch.empty(n, n, dtype=torch.float32), ridge, progress)
    seconds["kernel"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        cholesky_(a, block, progress)
    except NotPositiveDefinite as e:
        fix = "pass a smaller --bandwidth" if kernel.is_distance else "use another kernel"
        raise UserError(
            f"the {n} x {n} kernel matrix is not positive definite in float32 ({e}); {fix} "
            "or a small --ridge (e.g. 1e-6)"
        ) from None
    seconds["factor"] = time.perf_counter() - t
    t = time.perf_counter()
    alpha, k_alpha, it, history = pcg(kernel, data, y, a, ridge, tol, max_iter, progress)
    seconds["solve"] = time.perf_counter() - t
    return Solution(alpha, k_alpha, ridge, it, history, seconds, n**3 / 3 / seconds["factor"] / 1e9)
