"""Critical sample ratio of Arpit et al. 2017 (MEASURES.md sec. 5).

Sec. 5: "x is critical when some x' with ||x' - x||_inf <= r changes the predicted class; CSR =
fraction of critical examples. Search (LASS): x' <- clip(x' + alpha sign(grad) + beta N(0, 1)) into
the box, a few iterations; alpha = 0.25, beta = 0.2, r = 0.3 on the 0-255 pixel scale (divide by 255
for [0, 1] pixels; apply before per-image standardization)."

Choices where sec. 5 leaves one:

- grad is the gradient with respect to x' of the cross-entropy of the model's output against the
  predicted class of the unperturbed x (ascended: the step moves away from that class).
- ITERATIONS = 10 ("a few iterations"); x is critical as soon as any iterate's predicted class
  differs (the search stops counting an example once it is found critical).
- clip is into the box [x - r, x + r] only, not into the valid pixel range (sec. 5 names the box).
- The box, alpha and beta live on the pixel scale: ``pixel_scale`` is a full-intensity pixel's value
  in ``x`` (a floating tensor: 1.0 for [0, 1] pixels, 255.0 for raw values) and ``preprocess`` (e.g. per-image
  standardization) is applied to x' before the model, never to the box.
- The noise N(0, 1) is drawn from the caller's ``torch.Generator`` (CPU or the data's device), so a
  result is deterministic given the generator's state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rethink.errors import UserError

RADIUS = 0.3  # r, on the 0-255 pixel scale (sec. 5)
ALPHA = 0.25  # step size, same scale
BETA = 0.2  # noise scale, same scale
ITERATIONS = 10  # "a few iterations": our choice
BATCH = 1024  # examples searched at once by critical_sample_ratio


def lass_constants(pixel_scale: float = 1.0) -> tuple[float, float, float]:
    """``(r, alpha, beta)`` of sec. 5 on an input scale where a full pixel is ``pixel_scale``."""
    f = pixel_scale / 255.0
    return RADIUS * f, ALPHA * f, BETA * f


def check_radius(radius: float) -> None:
    """A UserError line unless ``radius`` > 0."""
    if not radius > 0:
        raise UserError(
            f"--csr-radius {radius} must be positive: it is the half-width r of the L-inf box around each "
            "input (MEASURES.md sec. 5: r = 0.3 on the 0-255 pixel scale, 0.3/255 for [0, 1] pixels); "
            "pass --csr-radius R with R > 0"
        )


def _predict(model: nn.Module, x: torch.Tensor, preprocess: Callable) -> torch.Tensor:
    with torch.no_grad():
        return model(preprocess(x)).argmax(dim=1)


def _search(model, x, y_pred, radius, alpha, beta, iterations, preprocess, generator) -> torch.Tensor:
    """LASS over a batch: a bool tensor, True where some iterate changed the predicted class."""
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    xp = x.detach().clone()
    for _ in range(iterations):
        xp.requires_grad_(True)
        loss = F.cross_entropy(model(preprocess(xp)), y_pred, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xp)
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
        xp = torch.clamp(xp.detach() + alpha * grad.sign() + beta * noise, x - radius, x + radius)
        found |= _predict(model, xp, preprocess) != y_pred
    return found


def _lass(model, x, y_pred, radius, alpha, beta, iterations, pixel_scale, preprocess, generator) -> torch.Tensor:
    """Fill in the sec. 5 defaults, check them, run :func:`_search` in eval mode (the model's mode is
    restored after). ``y_pred`` None: the model's own prediction on ``x``."""
    r0, a0, b0 = lass_constants(pixel_scale)
    radius = r0 if radius is None else radius
    check_radius(radius)
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    alpha, beta = a0 if alpha is None else alpha, b0 if beta is None else beta
    preprocess = preprocess or (lambda v: v)
    training = model.training
    model.eval()
    try:
        y_pred = _predict(model, x, preprocess) if y_pred is None else y_pred
        return _search(model, x, y_pred, radius, alpha, beta, iterations, preprocess, generator)
    finally:
        model.train(training)


def is_critical(
    model: nn.Module,
    x: torch.Tensor,
    y_pred: int,
    radius: float | None = None,
    *,
    generator: torch.Generator,
    alpha: float | None = None,
    beta: float | None = None,
    iterations: int = ITERATIONS,
    pixel_scale: float = 1.0,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> bool:
    """Whether LASS finds an x' in the L-inf box of ``radius`` around the single example ``x`` (no
    batch dimension) whose predicted class differs from ``y_pred`` (sec. 5). ``radius``, ``alpha``,
    ``beta`` default to :func:`lass_constants` (``pixel_scale``)."""
    y = torch.tensor([int(y_pred)], device=x.device)
    args = (radius, alpha, beta, iterations, pixel_scale, preprocess, generator)
    return bool(_lass(model, x.unsqueeze(0), y, *args)[0])


def critical_sample_ratio(
    model: nn.Module,
    x: torch.Tensor,
    *,
    generator: torch.Generator,
    radius: float | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    iterations: int = ITERATIONS,
    pixel_scale: float = 1.0,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = BATCH,
) -> float:
    """CSR (sec. 5): the fraction of the examples ``x`` (a batch) that are critical with respect to
    the model's own predicted class; NaN for no examples. Searched ``batch_size`` at a time, so the
    result is deterministic given the generator's state and ``batch_size``."""
    check_radius(lass_constants(pixel_scale)[0] if radius is None else radius)
    args = (radius, alpha, beta, iterations, pixel_scale, preprocess, generator)
    chunks = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
    critical = sum(int(_lass(model, xb, None, *args).sum()) for xb in chunks)
    return critical / len(x) if len(x) else float("nan")
