"""Flatness measures (MEASURES.md sec. 2) on linear models whose accuracy under noise is known in
closed form."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from rethink.measures import Context, compute, flatness

NAMES = [
    "pacbayes_sigma",
    "pacbayes_init",
    "pacbayes_orig",
    "pacbayes_flatness",
    "pacbayes_mag_sigma",
    "pacbayes_mag_flatness",
    "sharpness",
    "sharpness_mag",
]


def separable(scale: float = 2.0, d: int = 10, m: int = 400):
    """A 2-class linear model with training accuracy 1 on ``m`` points kept at |x.u| >= 0.5."""
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(d, generator=gen)
    u /= u.norm()
    x = torch.randn(3 * m, d, generator=gen)
    x = x[(x @ u).abs() >= 0.5][:m]
    y = (x @ u > 0).long()
    model = nn.Linear(d, 2)
    with torch.no_grad():
        model.weight.copy_(torch.stack([-scale * u, scale * u]))
        model.bias.zero_()
    return model.eval(), x, y


def expected_accuracy(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, sigma: float) -> float:
    """E accuracy under N(0, sigma^2) noise (std sigma) on every weight and bias: the logit difference
    gets noise of std sigma sqrt(2 (||x||^2 + 1)), so example i stays correct with probability
    Phi(margin_i / that std)."""
    with torch.no_grad():
        logits = model(x).double()
    margin = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, 1 - y[:, None]).squeeze(1)
    std = sigma * torch.sqrt(2 * (x.double().pow(2).sum(1) + 1))
    return float(torch.special.ndtr(margin / std).mean())


def test_sigma_bisection_lands_within_tolerance_with_sigma_as_the_std():
    model, x, y = separable(1.0)
    ctx = Context(model=model, x=x, y=y)
    sigma = flatness.pacbayes_sigma(ctx)
    assert sigma is not None and 0 < sigma < 2
    # Independent of the Monte Carlo: with sigma^2 as the std the search would return sqrt(0.31) = 0.56,
    # where the true drop is 0.2.
    assert 1 - expected_accuracy(model, x, y, sigma) == pytest.approx(flatness.TARGET_DROP, abs=0.03)
    params = flatness.parameters(model)
    many = flatness.noisy_accuracy(model, params, x, y, sigma, magnitude=False, draws=200)
    assert 1 - many == pytest.approx(flatness.TARGET_DROP, abs=0.03)
    assert flatness.pacbayes_flatness(ctx) == pytest.approx(1 / sigma**2)


def test_the_noise_std_is_sigma_not_sigma_squared():
    gen = torch.Generator().manual_seed(0)
    w = {"w": torch.zeros(400, 500)}
    assert float(flatness.perturbation(w, 0.5, gen)["w"].std()) == pytest.approx(0.5, rel=0.01)
    w = {"w": torch.full((400, 500), 3.0)}
    got = float(flatness.perturbation(w, 0.5, gen, magnitude=True)["w"].std())
    assert got == pytest.approx(math.sqrt(0.25 * 9 + 1e-6), rel=0.01)


def test_pacbayes_bounds_follow_eq_48_and_49_from_the_returned_sigma():
    model, x, y = separable()
    init = nn.Linear(10, 2).eval()
    assert flatness.pacbayes_init(Context(model=model, x=x, y=y)) is None
    ctx = Context(model=model, x=x, y=y, init=init)
    sigma = flatness.pacbayes_sigma(ctx)
    pairs = [(a.detach().double(), b.detach().double()) for a, b in zip(model.parameters(), init.parameters())]
    dist = sum(float((a - b).pow(2).sum()) for a, b in pairs)
    norm = sum(float(a.pow(2).sum()) for a, _ in pairs)
    tail = math.log(len(x) / sigma) + 10
    assert flatness.pacbayes_init(ctx) == pytest.approx(dist / (4 * sigma**2) + tail, rel=1e-9)
    assert flatness.pacbayes_orig(ctx) == pytest.approx(norm / (4 * sigma**2) + tail, rel=1e-9)


def test_no_measure_changes_the_model_and_all_are_finite():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    model.train()(torch.randn(64, 6))  # non-trivial running statistics
    model.eval()
    x = torch.randn(200, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = compute(model, x, y, init=copy.deepcopy(model), measures=NAMES)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    for name in NAMES:
        assert got[name] is not None and math.isfinite(got[name]) and got[name] > 0, (name, got[name])
    assert got["pacbayes_init"] == pytest.approx(math.log(200 / got["pacbayes_sigma"]) + 10)


def test_a_wider_margin_is_less_sharp_and_flatter():
    values = []
    for scale in (1.0, 4.0):
        model, x, y = separable(scale)
        values.append(compute(model, x, y, measures=["sharpness", "pacbayes_flatness", "pacbayes_mag_sigma"]))
    assert 0 < values[1]["sharpness"] < values[0]["sharpness"] / 2
    assert 0 < values[1]["pacbayes_flatness"] < values[0]["pacbayes_flatness"] / 4
    # The magnitude-aware noise scales with the weights, so scaling them changes little (eps aside).
    assert values[1]["pacbayes_mag_sigma"] == pytest.approx(values[0]["pacbayes_mag_sigma"], rel=0.2)


def test_a_model_at_chance_has_no_sigma_or_alpha():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 2, generator=gen)
    y = torch.arange(1000) % 2
    model = nn.Linear(2, 2).eval()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    got = compute(model, x, y, measures=NAMES)
    assert {k: v for k, v in got.items() if k != "_unsupported"} == dict.fromkeys(NAMES)
