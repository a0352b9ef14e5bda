"""Tests of the Dziugaite & Roy PAC-Bayes certificate against /work/shared/MEASURES.md section 3."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from rethink import pacbayes as pb


def test_formula_check_0161_for_any_grid_point():
    # MEASURES.md: kl^-1(0.028 | B_RE), KL = 5144, m = 55,000, delta = 0.025 gives 0.161; the lambda term
    # 2 ln(b ln(c / lambda)) = 2 ln j is at most 2 ln(5e4) / 54,999 = 4e-4 in B_RE, so every j rounds to 0.161.
    for j in [1, 2, 10, 100, 369, 1000, 10_000, 50_000]:
        bre = pb.b_re(5144.0, 55_000, pb.grid_lambda(j), delta=0.025)
        assert round(pb.kl_inverse(0.028, bre), 3) == 0.161, j
    # Without the lambda term (j = 1) the bound is 0.16075; counting 2 ln b twice still rounds to 0.161.
    assert pb.kl_inverse(0.028, pb.b_re(5144.0, 55_000, pb.grid_lambda(1))) == pytest.approx(0.160752, abs=1e-6)


def test_monte_carlo_term_numbers():
    # MEASURES.md: e_N = 0.03, delta' = 0.01 gives e_up = 0.087 (N = 200), 0.051 (N = 1,000), 0.0315 (N = 150,000).
    def e_up(n):
        return pb.certificate(0.03, n, kl=0.0, m=1000, lam=pb.grid_lambda(1), delta_prime=0.01)["e_up"]

    assert round(e_up(200), 3) == 0.087
    assert round(e_up(1000), 3) == 0.051
    assert round(e_up(150_000), 4) == 0.0315


def test_kl_inverse_edges_and_monotone():
    assert pb.kl_inverse(0.0, 0.0) == 0.0
    assert pb.kl_inverse(0.3, 0.0) == 0.3
    v = pb.kl_inverse(0.0, 0.1)
    assert math.isfinite(v) and 0.0 < v < 1.0
    assert v == pytest.approx(1 - math.exp(-0.1), rel=1e-9)  # kl(0 || p) = -ln(1 - p)
    assert pb.kl_inverse(1.0, 0.5) == 1.0
    assert pb.kl_inverse(0.2, 100.0) == 1.0
    cs = np.linspace(0.0, 2.0, 41)
    vals = [pb.kl_inverse(0.05, c) for c in cs]
    assert all(a <= b for a, b in zip(vals, vals[1:]))
    for c in [0.01, 0.3]:  # the result sits on the constraint kl(q || p) = c
        assert pb.kl_bernoulli(0.05, pb.kl_inverse(0.05, c)) == pytest.approx(c, rel=1e-6)


def test_kl_bernoulli_conventions():
    assert pb.kl_bernoulli(0.0, 0.0) == pytest.approx(0.0, abs=1e-9)  # p is clipped to 1e-12
    assert pb.kl_bernoulli(1.0, 1.0) == pytest.approx(0.0, abs=1e-9)
    assert math.isfinite(pb.kl_bernoulli(0.5, 0.0))
    assert pb.kl_bernoulli(0.2, 0.5) == pytest.approx(0.2 * math.log(0.4) + 0.8 * math.log(1.6))


def test_kl_gaussian_direct_and_zero():
    w = np.array([0.5, -1.0, 2.0])
    w0 = np.array([0.0, 0.5, 1.0])
    s = np.array([0.1, 0.2, 0.3])
    lam = 0.4
    # Direct sum of the per-coordinate KL of N(w_i, s_i) from N(w0_i, lam).
    direct = sum(0.5 * (si / lam + (wi - w0i) ** 2 / lam - 1 + math.log(lam / si)) for wi, w0i, si in zip(w, w0, s))
    assert pb.kl_gaussian(w, w0, s, lam) == pytest.approx(direct, rel=1e-12)
    assert pb.kl_gaussian(w0, w0, np.full(3, lam), lam) == pytest.approx(0.0, abs=1e-12)
    t = pb.kl_gaussian_torch(
        torch.tensor(w), torch.tensor(w0), torch.log(torch.tensor(s)), torch.tensor(math.log(lam), dtype=torch.float64)
    )
    assert float(t) == pytest.approx(direct, rel=1e-12)


def test_b_re_lambda_term_once():
    m, kl = 1000, 50.0
    base = pb.b_re(kl, m, pb.grid_lambda(1))  # j = 1: the lambda term is 2 ln 1 = 0, no stray 2 ln b
    assert base * (m - 1) == pytest.approx(kl + math.log(math.pi**2 * m / (6 * 0.025)), rel=1e-12)
    for j in [2, 50, 700]:
        extra = (pb.b_re(kl, m, pb.grid_lambda(j)) - base) * (m - 1)
        assert extra == pytest.approx(2 * math.log(j), rel=1e-9)


def test_grid_helpers_and_certificate_needs_grid_lambda():
    assert pb.grid_lambda(1) == pytest.approx(0.1 * math.exp(-0.01))
    assert pb.nearest_grid(pb.grid_lambda(368.4)) == (368, 369)
    assert pb.nearest_grid(0.5) == (1, 2)  # above the grid: the first two points
    with pytest.raises(ValueError):
        pb.certificate(0.1, 100, 10.0, 1000, pb.grid_lambda(3.5))
    c = pb.certificate(0.1, 100, 10.0, 1000, pb.grid_lambda(7))
    assert c["j"] == 7 and c["confidence"] == pytest.approx(0.965)


def test_delta_prime_correction_applied():
    one = pb.certificate(0.03, 1, 100.0, 10_000, pb.grid_lambda(5))
    many = pb.certificate(0.03, 1000, 100.0, 10_000, pb.grid_lambda(5))
    assert one["e_up"] > 0.9 and many["e_up"] < 0.06
    assert one["bound"] > many["bound"]


def test_kl_gradient_reaches_mean():
    # The known fault computed ||w - w0||^2 from constants; here d KL / d w = (w - w0) / lambda.
    w0 = torch.zeros(5)
    w = torch.linspace(-1, 1, 5).requires_grad_(True)
    kl = pb.kl_gaussian_torch(w, w0, torch.full((5,), -4.0), torch.tensor(-3.0))
    (g,) = torch.autograd.grad(kl, w)
    assert torch.allclose(g, (w - w0).detach() / math.exp(-3.0))
    assert g.abs().sum() > 0


def _toy(seed=0, n=200):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    x[:, 0] += torch.sign(x[:, 0])  # a margin of 1 around the separating line x0 = 0
    y = (x[:, 0] > 0).long()
    return x, y


@pytest.mark.parametrize("outputs", [1, 2])
def test_bound_end_to_end(outputs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, outputs))
    init = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, outputs))
    init.load_state_dict(model.state_dict())
    x, y = _toy(0)
    xt, yt = _toy(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        pb.surrogate_loss(model(x), y).backward()
        opt.step()
    r = pb.bound(model, init, x, y, xt, yt, steps=200, samples=20, lr=1e-2, batch_size=50, seed=0)
    assert 0.0 < r["bound"] <= 1.0
    assert r["bound"] >= r["e_up"] >= r["e_mc"]
    assert math.isfinite(r["kl"]) and r["kl"] >= 0.0
    assert r["j"] >= 1 and r["lambda"] == pytest.approx(pb.grid_lambda(r["j"]))
    assert r["m"] == 200 and r["n_samples"] == 20
    assert 0.0 <= r["snn_test_error"] <= 1.0


def test_objective_moves_mean_by_kl():
    # With no data term, the optimizer still pulls w toward w0 through the KL (the known fault would not move w).
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    init = nn.Linear(2, 1)
    x, y = _toy(0, n=100)
    w_before = pb.flat_params(model)
    w0 = pb.flat_params(init)
    post = pb.optimize_posterior(
        model, w0, lambda out, yb: out.sum() * 0.0, x, y, steps=50, lr=1e-2, batch_size=50, seed=0
    )
    assert (post["w"] - w0).norm() < (w_before - w0).norm()
