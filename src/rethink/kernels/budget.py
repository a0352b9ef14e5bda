"""How much memory and time an exact solve needs, checked before anything large is allocated.

Memory: the n x n float32 array dominates. Only its lower triangle (and the diagonal tiles) is
ever written, and Linux backs anonymous memory page by page when it is first written, so it
costs about 2 n^2 bytes, or all 4 n^2 where transparent huge pages are set to "always". The rest
is the data in float64, a handful of (n, columns) float64 vectors, the factorization's float32
panels and a few float64 tiles. Time: the flops of each stage divided by this machine's
matrix-multiply speed, measured here with a short probe.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import time
from dataclasses import dataclass

import torch

from ..errors import UserError
from .solve import FACTOR_BLOCK, TILE

GB = 1e9
#: CG steps assumed by the time estimate (measured with the default Gaussian bandwidth: 2 at
#: n = 16,000 and at n = 60,000 on Fashion-MNIST).
ASSUMED_CG_STEPS = 3
#: Seconds per kernel entry beyond the multiply (distance, exp, stores); measured here at n = 30,000.
SECONDS_PER_ENTRY = 4e-9
#: Fraction of the float32 multiply speed the factorization reaches (measured: 0.84 to 0.94).
FACTOR_EFFICIENCY = 0.85


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), else total RAM."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc/self/statm), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _huge_pages_always() -> bool:
    try:
        with open(THP_SETTING) as f:
            return "[always]" in f.read()
    except OSError:
        return False


def matrix_bytes(n: int) -> int:
    """Resident bytes of the n x n float32 array: the lower triangle, plus per row at most a
    diagonal tile and a page beyond it (all of it with 2 MB transparent huge pages)."""
    if _huge_pages_always():
        return 4 * n * n
    return 2 * n * (n + 1) + 4 * n * (TILE + 1024)


def memory_needed(n: int, d: int, n_test: int, columns: int) -> int:
    """Bytes an exact solve of n points in d dimensions adds to the process: the matrix, per
    point its float64 inputs, about ten float64 CG vectors and the factorization's panel and its
    copies, and a few float64 tiles and the test inputs."""
    per_point = 8 * d + 10 * 8 * columns + 3 * 4 * FACTOR_BLOCK
    fixed = 4 * 8 * TILE * TILE + n_test * (8 * d + 8 * columns)
    return matrix_bytes(n) + per_point * n + fixed


def largest_n(d: int, n_test: int, columns: int, budget: float) -> int:
    """The largest n with memory_needed(n, ...) <= budget (0 if none)."""
    lo, hi = 0, 1
    while memory_needed(hi, d, n_test, columns) <= budget:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # memory_needed(lo) <= budget < memory_needed(hi), or lo = 0
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if memory_needed(mid, d, n_test, columns) <= budget else (lo, mid)
    return lo


@functools.cache
def gemm_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    """Matrix-multiply speed in GFLOP/s: the best of ``repeats`` size^3 products."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm up
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


@dataclass
class Estimate:
    n: int
    memory_gb: float  # what the solve adds to the process
    resident_gb: float  # the process before it
    budget_gb: float  # what it may add: available memory (or --max-memory less resident)
    max_n: int  # the largest n that fits the budget
    seconds: float  # rough total time

    def describe(self) -> str:
        return (
            f"needs about {self.memory_gb + self.resident_gb:.1f} GB "
            f"({self.resident_gb:.1f} GB in use + {self.memory_gb:.1f} GB) and about "
            f"{self.seconds / 60:.1f} min; n up to {self.max_n:,} fits"
        )


def estimate_seconds(n: int, d: int, n_test: int) -> float:
    """Rough time: kernel (half the tiles), factorization, CG products, test predictions."""
    f32, f64 = gemm_gflops(torch.float32) * 1e9, gemm_gflops(torch.float64) * 1e9
    half_pass = n * n * d / f64 + n * n / 2 * SECONDS_PER_ENTRY  # symmetric: half the tiles
    factor = n**3 / 3 / (FACTOR_EFFICIENCY * f32)
    test = 2 * n * n_test * d / f64 + n * n_test * SECONDS_PER_ENTRY
    return half_pass * (ASSUMED_CG_STEPS + 3) + factor + test


def check_fits(n: int, d: int, n_test: int, columns: int, max_memory_gb: float | None = None) -> Estimate:
    """The estimate for this solve; raises UserError, naming the largest n that fits, if it does not."""
    resident = resident_bytes()
    available = budget = available_bytes()
    if max_memory_gb is not None:
        budget = min(budget, max_memory_gb * GB - resident)
    need = memory_needed(n, d, n_test, columns)
    max_n = largest_n(d, n_test, columns, budget)
    if need > budget:
        limit = f"--max-memory {max_memory_gb:g} GB" if max_memory_gb is not None else "the memory available now"
        fixes = [f"--train-size {max_n} or less"] if max_n else []
        if max_memory_gb is not None and need <= available:  # the flag, not the machine, is what is short
            fixes.append(f"--max-memory {math.ceil((need + resident) / GB * 10) / 10:g} or more")
        raise UserError(
            f"n = {n:,} needs about {(need + resident) / GB:.1f} GB (the float32 kernel matrix alone "
            f"{matrix_bytes(n) / GB:.1f} GB), more than {limit} allows "
            f"({(budget + resident) / GB:.3g} GB); "
            + ("use " + ", or ".join(fixes) if fixes else "free some memory first")
        )
    return Estimate(n, need / GB, resident / GB, budget / GB, max_n, estimate_seconds(n, d, n_test))
