"""Critical sample ratio by LASS (rethink.memorization.csr; MEASURES.md sec. 5)."""

import math

import pytest
import torch
from torch import nn

from rethink.errors import UserError
from rethink.memorization import critical_sample_ratio, is_critical, lass_constants

SEARCH = {"radius": 0.1, "alpha": 0.05, "beta": 0.01}


def boundary_model(at: float = 0.5) -> nn.Module:
    """Two inputs, two classes: class 1 exactly when x[0] > ``at`` (the second input is ignored)."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.0, -10.0 * at]))
    return model


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def point(x0: float) -> torch.Tensor:
    return torch.tensor([x0, 0.3])


@pytest.mark.parametrize("x0, label", [(0.45, 0), (0.41, 0), (0.55, 1), (0.59, 1)])
def test_a_point_within_the_radius_of_the_boundary_is_critical(x0, label):
    assert is_critical(boundary_model(), point(x0), label, generator=gen(), **SEARCH)


@pytest.mark.parametrize("x0, label", [(0.38, 0), (0.0, 0), (0.62, 1), (1.0, 1)])
def test_a_point_farther_than_the_radius_is_not_critical_even_with_huge_steps(x0, label):
    model = boundary_model()
    assert not is_critical(model, point(x0), label, 0.1, generator=gen(), alpha=1.0, beta=1.0, iterations=20)


def test_the_constants_are_on_the_0_255_scale():
    assert lass_constants(255.0) == pytest.approx((0.3, 0.25, 0.2))
    assert lass_constants(1.0) == pytest.approx((0.3 / 255, 0.25 / 255, 0.2 / 255))
    unit = boundary_model(0.5)  # [0, 1] pixels: r = 0.3 / 255
    assert is_critical(unit, point(0.5 - 0.1 / 255), 0, generator=gen())
    assert not is_critical(unit, point(0.5 - 0.5 / 255), 0, generator=gen())
    raw = boundary_model(127.5)  # 0-255 pixels: r = 0.3
    assert is_critical(raw, point(127.5 - 0.1), 0, generator=gen(), pixel_scale=255.0)
    assert not is_critical(raw, point(127.5 - 0.5), 0, generator=gen(), pixel_scale=255.0)


def test_the_box_is_on_the_pixels_before_preprocessing():
    model = boundary_model(50.0)  # the boundary at pixel 0.5 once the pixels are scaled by 100
    scale = lambda v: v * 100  # noqa: E731
    assert is_critical(model, point(0.45), 0, generator=gen(), preprocess=scale, **SEARCH)
    assert not is_critical(model, point(0.38), 0, generator=gen(), preprocess=scale, **SEARCH)


def mixture(near: int, far: int) -> torch.Tensor:
    """``near`` points 0.01..0.05 from the boundary at 0.5, ``far`` points 0.2..0.45 from it, both sides."""
    g = gen(123)
    side = lambda m: torch.where(torch.rand(m, generator=g) < 0.5, -1.0, 1.0)  # noqa: E731
    d = torch.cat([0.01 + 0.04 * torch.rand(near, generator=g), 0.2 + 0.25 * torch.rand(far, generator=g)])
    x0 = 0.5 + torch.cat([side(near), side(far)]) * d
    return torch.stack([x0, torch.rand(near + far, generator=g)], dim=1)


def test_csr_of_a_known_mixture_is_the_known_fraction():
    x = mixture(30, 70)
    assert critical_sample_ratio(boundary_model(), x, generator=gen(), **SEARCH) == pytest.approx(0.3)
    assert critical_sample_ratio(boundary_model(), x, generator=gen(), batch_size=7, **SEARCH) == pytest.approx(0.3)
    assert critical_sample_ratio(boundary_model(), mixture(0, 10), generator=gen(), **SEARCH) == 0.0
    assert math.isnan(critical_sample_ratio(boundary_model(), x[:0], generator=gen(), **SEARCH))


def test_csr_is_deterministic_given_the_generator():
    x = torch.stack([torch.full((200,), 0.41), torch.zeros(200)], dim=1)  # borderline: the noise decides
    noisy = {"radius": 0.1, "alpha": 0.0, "beta": 0.05, "iterations": 2}
    runs = [critical_sample_ratio(boundary_model(), x, generator=gen(s), **noisy) for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert 0.0 < runs[0] < 1.0


def test_the_model_is_left_as_it_was():
    model = boundary_model().train()
    before = [p.detach().clone() for p in model.parameters()]
    critical_sample_ratio(model, mixture(5, 5), generator=gen(), **SEARCH)
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("radius", [0.0, -0.3, float("nan")])
def test_a_radius_that_is_not_positive_is_one_user_error_line(radius):
    for call in (
        lambda: is_critical(boundary_model(), point(0.45), 0, radius, generator=gen()),
        lambda: critical_sample_ratio(boundary_model(), mixture(2, 2), radius=radius, generator=gen()),
    ):
        with pytest.raises(UserError) as err:
            call()
        message = str(err.value)
        assert message.startswith(f"--csr-radius {radius} must be positive") and "\n" not in message
        assert "pass --csr-radius R with R > 0" in message
