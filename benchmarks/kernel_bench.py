"""Exact kernel interpolation of full Fashion-MNIST (n = 60,000) and how close the in-place
factorization comes to this machine's matrix-multiply peak, measured in the same run.

    flock /tmp/rethink-cpu.lock .venv/bin/python benchmarks/kernel_bench.py [--n 60000] [--lapack 16000]

Prints the float32/float64 multiply peaks (best of several 4096^3 products, before and after the
solve), wall time and peak memory of each stage, the factorization's GFLOP/s as a fraction of the
float32 peak, and the errors, residual and norm. ``--lapack N`` also factors an N x N kernel
matrix with LAPACK (scipy's in-place potrf, torch's MKL potrf that allocates a second matrix) and
with ours, for comparison at a size where two matrices fit.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rethink.kernels.budget import gemm_gflops
from rethink.kernels.experiment import KernelConfig, peak_memory_gb, run_kernel


def peak(dtype) -> float:
    gemm_gflops.cache_clear()
    return gemm_gflops(dtype, size=4096, repeats=5)


def lapack_comparison(n: int) -> dict:
    """Seconds and GFLOP/s of three Cholesky factorizations of the same n x n float32 kernel matrix."""
    import scipy.linalg

    from rethink.data import load_dataset
    from rethink.kernels.functions import Kernel, default_bandwidth
    from rethink.kernels.solve import KernelData, build_kernel, cholesky_

    x = torch.from_numpy(load_dataset("fashion-mnist").x_train[:n].reshape(n, -1))
    kernel = Kernel("gaussian", default_bandwidth("gaussian", x))
    k = build_kernel(kernel, KernelData.from_inputs(kernel, x, x.double().mean(0)), torch.empty(n, n))
    a = torch.empty_like(k)
    out = {}
    for name, factor in (
        ("ours (in place)", lambda: cholesky_(a)),
        (
            "scipy potrf (in place)",
            lambda: scipy.linalg.cholesky(a.numpy().T, lower=True, overwrite_a=True, check_finite=False),
        ),
        ("torch.linalg.cholesky (MKL, second matrix)", lambda: torch.linalg.cholesky(a)),
    ):
        a.copy_(k)
        t = time.perf_counter()
        factor()
        seconds = time.perf_counter() - t
        out[name] = {"seconds": seconds, "gflops": n**3 / 3 / seconds / 1e9}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60_000, help="training points (default: all 60,000)")
    ap.add_argument("--lapack", type=int, default=0, metavar="N", help="also compare with LAPACK at N x N")
    args = ap.parse_args()

    before = {"float32": peak(torch.float32), "float64": peak(torch.float64)}
    print(
        f"matmul peak before: float32 {before['float32']:.0f} GFLOP/s, float64 {before['float64']:.0f} GFLOP/s "
        f"({torch.get_num_threads()} threads)",
        flush=True,
    )
    r = run_kernel(KernelConfig(dataset="fashion-mnist", train_size=args.n), log=lambda m: print(m, flush=True))
    after = peak(torch.float32)
    best = max(before["float32"], after)
    s = r.stage_seconds
    print(f"n = {r.n:,}, d = {r.d}, kernel {r.kernel}")
    print(
        f"kernel matrix {s['kernel']:.0f} s | factorization {s['factor']:.0f} s | CG {s['solve']:.0f} s "
        f"({r.cg_iterations} steps) | test predictions {s['test']:.0f} s | total {r.seconds:.0f} s"
    )
    print(
        f"factorization: {r.factor_gflops:.0f} GFLOP/s = {r.factor_gflops / best:.2f} of the float32 matmul peak "
        f"({before['float32']:.0f} before, {after:.0f} after the solve)"
    )
    print(f"peak memory {r.peak_memory_gb:.1f} GB (the matrix's lower triangle alone {2 * r.n**2 / 1e9:.1f} GB)")
    print(
        f"train error {r.train_error:.4f}, test error {r.test_error:.4f}, relative residual {r.residual:.1e}, "
        f"RKHS norm {r.rkhs_norm:.1f}; residual history {', '.join(f'{h:.1e}' for h in r.residual_history)}"
    )
    result = {
        "matmul_gflops_before": before,
        "matmul_float32_gflops_after": after,
        "factor_fraction_of_peak": r.factor_gflops / best,
        **r.to_json(),
    }
    if args.lapack:
        result["lapack"] = lapack_comparison(args.lapack)
        for name, v in result["lapack"].items():
            print(
                f"n = {args.lapack:,}: {name}: {v['seconds']:.1f} s, {v['gflops']:.0f} GFLOP/s "
                f"({v['gflops'] / best:.2f} of peak)"
            )
        print(f"peak memory with the comparison {peak_memory_gb():.1f} GB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
