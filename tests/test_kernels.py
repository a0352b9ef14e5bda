"""rethink.kernels: exact solves against float64 references, the minimum-norm property, the memory
guard, feature maps, the label-noise sweep, linear SGD and the two commands."""

import json
import re

import numpy as np
import pytest
import torch

from rethink.cli import main
from rethink.errors import UserError
from rethink.kernels import budget, features
from rethink.kernels.experiment import KernelConfig, run_kernel
from rethink.kernels.functions import Kernel, default_bandwidth
from rethink.kernels.linear_sgd import LinearSGDConfig, linear_sgd
from rethink.kernels.solve import KernelData, cho_solve, cholesky_, interpolate, kernel_matmul


def blobs(n=300, d=20, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(classes, d))[y] + rng.normal(size=(n, d))
    return torch.from_numpy(x), torch.nn.functional.one_hot(torch.from_numpy(y), classes).double()


def dense(kernel, data):
    k = kernel.block(data.x, data.x, data.sq, data.sq)
    k.diagonal().copy_(kernel.diagonal(data.x, data.sq))
    return k


def test_blocked_cholesky_matches_lapack_and_never_reads_above_the_diagonal_blocks():
    x, y = blobs(n=300)
    kernel = Kernel("gaussian", 4.0)
    k = dense(kernel, KernelData.from_inputs(kernel, x, x.mean(0))).float()
    for block in (64, 100, 512):  # dividing n, not dividing n, larger than n
        a = k.tril() + torch.full_like(k, float("nan")).triu(1)  # what lies above the diagonal is never used
        cholesky_(a, block)
        assert torch.allclose(a.tril(), torch.linalg.cholesky(k), atol=2e-5)
        assert torch.allclose(cho_solve(a, y, block), torch.linalg.solve(k.double(), y), rtol=1e-3, atol=1e-3)
        above = torch.ones_like(k, dtype=torch.bool).triu(block)  # above the diagonal blocks: never written
        assert torch.isnan(a[above]).all()


@pytest.mark.parametrize("name,bandwidth", [("gaussian", 4.0), ("laplacian", 8.0), ("polynomial", 6.0)])
def test_exact_solution_matches_a_float64_reference(monkeypatch, name, bandwidth):
    monkeypatch.setattr("rethink.kernels.solve.TILE", 128)  # several tiles, one of them ragged
    x, y = blobs(n=300)
    kernel = Kernel(name, bandwidth, degree=3)
    data = KernelData.from_inputs(kernel, x, x.mean(0))
    k = dense(kernel, data)
    v = torch.randn(300, 3, dtype=torch.float64)
    assert torch.allclose(kernel_matmul(kernel, data, v), k @ v, rtol=1e-12, atol=1e-12)
    sol = interpolate(kernel, data, y, block=64)
    reference = torch.linalg.solve(k, y)
    assert torch.linalg.norm(sol.alpha - reference) / torch.linalg.norm(reference) < 1e-8
    assert torch.linalg.norm(k @ sol.alpha - y) / torch.linalg.norm(y) < 1e-10
    assert sol.history[-1] < 1e-10 and sol.history[0] > sol.history[-1]  # CG improved on the float32 solve
    assert sol.rkhs_norm() == pytest.approx(float(torch.sqrt((reference * (k @ reference)).sum())), rel=1e-8)


def test_ridge_solves_the_regularized_system():
    x, y = blobs(n=200)
    kernel = Kernel("gaussian", 4.0)
    data = KernelData.from_inputs(kernel, x, x.mean(0))
    sol = interpolate(kernel, data, y, ridge=0.5)
    k = dense(kernel, data)
    reference = torch.linalg.solve(k + 0.5 * torch.eye(200, dtype=torch.float64), y)
    assert torch.allclose(sol.alpha, reference, rtol=1e-8, atol=1e-10)
    assert sol.residual(y) < 1e-10
    assert torch.allclose(sol.k_alpha, k @ reference, atol=1e-9)  # the fit, without the ridge term
    assert sol.rkhs_norm() == pytest.approx(float(torch.sqrt((reference * (k @ reference)).sum())), rel=1e-8)


def test_linear_kernel_interpolant_is_the_pseudo_inverse_solution():
    x, y = blobs(n=40, d=100)  # n < d: infinitely many interpolants
    kernel = Kernel("linear")
    sol = interpolate(kernel, KernelData.from_inputs(kernel, x), y)
    w = x.T @ sol.alpha
    assert torch.allclose(w, torch.linalg.pinv(x) @ y, atol=1e-10)
    assert sol.rkhs_norm() == pytest.approx(float(torch.linalg.norm(w)), rel=1e-10)
    null = torch.randn(100, 4, dtype=torch.float64)
    null -= torch.linalg.pinv(x) @ (x @ null)  # another interpolant: w + null
    assert torch.allclose(x @ (w + null), y, atol=1e-9)
    assert torch.linalg.norm(w + null) > torch.linalg.norm(w)


def test_gaussian_interpolant_has_the_least_rkhs_norm_among_interpolants():
    """Over centres X plus extra points Z, every interpolant sum_j beta_j k(., e_j) has RKHS norm
    beta^T K_EE beta at least that of the solution on X alone (the representer theorem)."""
    x, y = blobs(n=60, d=5)
    z = torch.randn(30, 5, dtype=torch.float64)
    kernel = Kernel("gaussian", 2.0)
    data = KernelData.from_inputs(kernel, x, x.mean(0))
    sol = interpolate(kernel, data, y)
    e = torch.cat([x, z])
    ext = KernelData.from_inputs(kernel, e, x.mean(0))
    k_ee = dense(kernel, ext)
    k_xe = k_ee[:60]
    _, _, vh = torch.linalg.svd(k_xe)
    null = vh[60:].T  # K_XE @ null = 0
    beta_min = torch.cat([sol.alpha, torch.zeros(30, 4, dtype=torch.float64)])
    for seed in range(3):
        beta = beta_min + null @ torch.randn(30, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert torch.allclose(k_xe @ beta, y, atol=1e-8)
        assert float((beta * (k_ee @ beta)).sum()) > sol.rkhs_norm() ** 2


def test_default_bandwidth_follows_the_scale_of_the_inputs():
    x, _ = blobs(n=200)
    for name in ("gaussian", "laplacian", "polynomial"):
        assert default_bandwidth(name, 3 * x) == pytest.approx(3 * default_bandwidth(name, x))
    assert default_bandwidth("linear", x) is None


def test_kernel_arguments_are_checked():
    with pytest.raises(UserError, match="choose one of: gaussian"):
        Kernel("rbf", 1.0)
    with pytest.raises(UserError, match="does not apply to the linear kernel"):
        Kernel("linear", 1.0)
    with pytest.raises(UserError, match="must be a positive number"):
        Kernel("gaussian", -1.0)


@pytest.mark.parametrize("huge_pages", [False, True])
def test_memory_guard_names_the_largest_n_that_fits(monkeypatch, huge_pages):
    monkeypatch.setattr(budget, "_huge_pages_always", lambda: huge_pages)
    monkeypatch.setattr(budget, "available_bytes", lambda: 6 * budget.GB)
    monkeypatch.setattr(budget, "resident_bytes", lambda: 1 * budget.GB)
    need = budget.memory_needed(60_000, 784, 10_000, 10)
    matrix = (4 if huge_pages else 2) * 60_000**2  # only the lower triangle is touched
    assert matrix < need < 1.3 * matrix
    max_n = budget.largest_n(784, 10_000, 10, 6 * budget.GB)
    assert (
        budget.memory_needed(max_n, 784, 10_000, 10) <= 6 * budget.GB < budget.memory_needed(max_n + 1, 784, 10_000, 10)
    )
    with pytest.raises(UserError, match=f"use --train-size {max_n} or less"):
        budget.check_fits(60_000, 784, 10_000, 10)
    assert budget.check_fits(max_n, 784, 10_000, 10).max_n == max_n
    capped = budget.largest_n(784, 10_000, 10, 3 * budget.GB)  # --max-memory 4 GB with 1 GB resident
    with pytest.raises(UserError, match=f"more than --max-memory 4 GB allows.*--train-size {capped} or less"):
        budget.check_fits(capped + 1, 784, 10_000, 10, max_memory_gb=4)
    # --max-memory below what the process already holds: the fix is the flag, and its value fits
    with pytest.raises(UserError, match=r"use --max-memory (\S+) or more") as e:
        budget.check_fits(10_000, 784, 10_000, 10, max_memory_gb=0.5)
    assert "free some memory" not in str(e.value)
    suggested = float(re.search(r"--max-memory (\S+) or more", str(e.value)).group(1))
    assert budget.check_fits(10_000, 784, 10_000, 10, max_memory_gb=suggested).n == 10_000
    with pytest.raises(UserError, match=f"use --train-size {max_n} or less$"):  # the machine itself is short
        budget.check_fits(60_000, 784, 10_000, 10, max_memory_gb=20)


def test_memory_guard_refuses_before_building_in_the_command(monkeypatch, capsys):
    monkeypatch.setattr(budget, "_huge_pages_always", lambda: False)
    room = budget.memory_needed(1200, 64, 360, 10)  # digits: d = 64, 360 test images, 10 classes
    monkeypatch.setattr(budget, "available_bytes", lambda: room)
    assert main(["kernel", "--dataset", "digits", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rethink: error: n = 1,437 needs about") and "use --train-size 1200 or less" in err


def test_random_conv_features_shape_determinism_and_batches(monkeypatch):
    x = torch.rand(25, 3, 12, 12)
    f = features.random_conv(x, filters=16, size=5, pool=2, seed=1)
    assert f.shape == (25, 16 * 2 * 2) and f.dtype == torch.float32 and (f >= 0).all()
    assert torch.equal(f, features.random_conv(x, filters=16, size=5, pool=2, seed=1))
    assert not torch.allclose(f, features.random_conv(x, filters=16, size=5, pool=2, seed=2))
    monkeypatch.setattr(features, "BATCH_VALUES", 7 * 16 * 8 * 8)  # batches of 7, 7, 7, 4: the same numbers
    assert torch.allclose(f, features.random_conv(x, filters=16, size=5, pool=2, seed=1), atol=1e-6)
    with pytest.raises(UserError, match="--filter-size 13 is larger than the 12x12 images"):
        features.random_conv(x, size=13)


def test_gabor_features_shape_and_determinism(monkeypatch):
    x = torch.rand(9, 1, 28, 28)
    f = features.gabor(x, orientations=4, scales=2, pool=7)
    assert f.shape == (9, 4 * 2 * 7 * 7) and torch.isfinite(f).all()
    assert torch.equal(f, features.gabor(x, orientations=4, scales=2, pool=7))
    monkeypatch.setattr(features, "BATCH_VALUES", 4 * 2 * 16 * 28 * 28)  # batches of 4, 4, 1
    assert torch.allclose(f, features.gabor(x, orientations=4, scales=2, pool=7), atol=1e-6)
    bank = features.gabor_bank(4, 2)
    assert bank.shape[0] == 2 * 4 * 2 and bank.sum(dim=(1, 2, 3)).abs().max() < 1e-6  # blind to constants
    assert features.gabor(torch.rand(2, 3, 16, 16), orientations=2, scales=1, pool=4).shape == (2, 3 * 2 * 16)


def test_run_kernel_fits_digits_exactly():
    r = run_kernel(KernelConfig(dataset="digits", train_size=600, test_size=200), log=lambda m: None)
    assert r.n == 600 and r.n_test == 200 and r.d == 64
    assert r.train_error == 0 and r.residual < 1e-10 and r.test_error < 0.05
    assert r.rkhs_norm > 0 and r.peak_memory_gb > 0 and r.cg_iterations >= 1


def test_linear_kernel_with_more_points_than_dimensions_is_refused():
    with pytest.raises(UserError, match="rank at most 64"):
        run_kernel(KernelConfig(dataset="digits", kernel="linear", train_size=100), log=lambda m: None)


def test_kernel_command_json(capsys):
    assert (
        main(
            [
                "kernel",
                "--dataset",
                "digits",
                "--train-size",
                "500",
                "--test-size",
                "100",
                "--randomize",
                "random-labels",
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    for key in ("n", "train_error", "test_error", "rkhs_norm", "residual", "seconds", "peak_memory_gb"):
        assert key in out
    assert out["n"] == 500 and out["train_error"] == 0.0 and out["residual"] < 1e-8
    assert out["test_error"] > 0.6  # random labels: chance on the test set
    assert "train error" in captured.err  # the table goes to stderr with --json


def test_kernel_command_user_errors(capsys):
    assert main(["kernel", "--dataset", "digits", "--kernel", "rbf"]) == 2
    assert "unknown --kernel 'rbf'; choose one of: gaussian" in capsys.readouterr().err
    assert main(["kernel", "--dataset", "digits", "--p", "0.5"]) == 2
    assert "only applies to --randomize partial-labels" in capsys.readouterr().err
    assert main(["kernel", "--dataset", "digits", "--features", "gabor", "--pool", "0"]) == 2
    assert "--pool 0 must be a positive whole number" in capsys.readouterr().err


def test_norm_grows_with_label_noise(tmp_path, capsys):
    out = tmp_path / "noise"
    assert (
        main(
            [
                "kernel",
                "--dataset",
                "digits",
                "--train-size",
                "400",
                "--test-size",
                "200",
                "--p-sweep",
                "0,0.5,1",
                "--out",
                str(out),
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    rows = summary["rows"]
    assert [r["p"] for r in rows] == [0, 0.5, 1]
    assert all(r["train_error"] == 0 and r["residual"] < 1e-8 for r in rows)
    norms = [r["rkhs_norm"] for r in rows]
    errors = [r["test_error"] for r in rows]
    assert norms[0] < norms[1] < norms[2] and errors[0] < errors[1] < errors[2]
    for name in ("norm_vs_noise.png", "norm_vs_noise.svg", "norm_vs_noise.md", "README.md"):
        assert (out / name).is_file()


def test_sgd_from_zero_converges_to_the_minimum_norm_solution_and_an_outside_start_does_not():
    r = linear_sgd(LinearSGDConfig(dataset="digits", train_size=30, steps=20_000, record_every=1000))
    zero, outside = r.runs["W0 = 0"], r.runs["W0 outside the span"]
    assert r.n == 30 and r.d == 64
    assert zero["to_span"].max() < 1e-12 * r.min_norm  # never leaves the span of the data
    assert zero["to_min_norm"][-1] < 1e-3 * r.min_norm < zero["to_min_norm"][0]
    assert np.allclose(outside["to_span"], r.outside, rtol=1e-9)  # its out-of-span part never changes
    assert outside["to_min_norm"].min() >= r.outside * (1 - 1e-9) and r.outside > 0.5 * r.min_norm
    assert outside["loss"][-1] < 1e-6  # it interpolates too, with a larger norm


def test_linear_sgd_command_writes_figure_and_table(tmp_path, capsys):
    out = tmp_path / "sgd"
    assert (
        main(
            ["linear-sgd", "--dataset", "digits", "--train-size", "20", "--steps", "2000", "--out", str(out), "--json"]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 20 and result["final"]["W0 = 0"]["to_span"] < 1e-12
    for name in ("linear_sgd.png", "linear_sgd.svg", "linear_sgd.md"):
        assert (out / name).is_file()
    assert main(["linear-sgd", "--dataset", "digits", "--train-size", "64"]) == 2
    assert "needs fewer examples than dimensions" in capsys.readouterr().err
