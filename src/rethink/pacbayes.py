"""Dziugaite & Roy (2017) non-vacuous PAC-Bayes certificate for a trained network.

Follows /work/shared/MEASURES.md section 3 exactly:

* posterior Q = N(w, diag(s)), prior P = N(w0, lambda I), w0 = the initialization;
* lambda on the grid c exp(-j / b), integer j >= 1, c = 0.1, b = 100, union bound weights 6 / (pi^2 j^2);
* B_RE(Q) = [KL + 2 ln(b ln(c / lambda)) + ln(pi^2 m / (6 delta))] / (m - 1), delta = 0.025;
* certificate: e_up = kl^-1(e_N | ln(2 / delta') / N), bound = kl^-1(e_up | B_RE), confidence 1 - delta - delta'.

The known faults of the public code listed in MEASURES.md section 3 are avoided: the KL distance term is
computed from the live posterior mean (so w gets a KL gradient), 2 ln(b ln(c / lambda)) is counted once,
the objective uses the same delta = 0.025 as the certificate, the Monte Carlo term always gets the delta'
correction, and kl^-1 is a bisection that is defined (no NaN) at q = 0 and q = 1.

The pure-math functions are float64 and need no torch; the optimization works for any ``nn.Module`` through
``torch.func.functional_call`` on one flat parameter vector.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

DELTA = 0.025  # MEASURES.md section 3: confidence of the PAC-Bayes term, in the objective and in the bound
DELTA_PRIME = 0.01  # MEASURES.md section 3: confidence of the Monte Carlo term
GRID_B = 100.0
GRID_C = 0.1
_P_EPS = 1e-12  # keeps ln p and ln(1 - p) finite so kl(q || p) is defined at the ends of [0, 1]


# ---------------------------------------------------------------------------------------------------------
# Pure math (float64)
# ---------------------------------------------------------------------------------------------------------


def kl_bernoulli(q: float, p: float) -> float:
    """kl(q || p) between Bernoulli(q) and Bernoulli(p) (MEASURES.md section 3), with 0 ln 0 = 0.

    p is clipped to [1e-12, 1 - 1e-12] so the value is finite for every q, p in [0, 1].
    """
    q = float(q)
    p = min(max(float(p), _P_EPS), 1.0 - _P_EPS)
    out = 0.0
    if q > 0.0:
        out += q * math.log(q / p)
    if q < 1.0:
        out += (1.0 - q) * math.log((1.0 - q) / (1.0 - p))
    return out


def kl_inverse(q: float, c: float, iters: int = 200) -> float:
    """kl^-1(q | c) = sup { p in [q, 1] : kl(q || p) <= c } by bisection (MEASURES.md section 3).

    Defined at q = 0 and q = 1 (no Newton step, so no NaN); returns q for c = 0 and is monotone in c.
    The upper end of the final bracket is returned, so the result never understates the sup.
    """
    q = float(q)
    c = float(c)
    if not (0.0 <= q <= 1.0) or c < 0.0 or math.isnan(c):
        raise ValueError(f"kl_inverse needs q in [0, 1] and c >= 0, got q={q}, c={c}")
    if c == 0.0 or q == 1.0:
        return q
    lo, hi = q, 1.0
    if kl_bernoulli(q, hi) <= c:
        return 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:  # the bracket cannot shrink further in float64
            break
        if kl_bernoulli(q, mid) <= c:
            lo = mid
        else:
            hi = mid
    return hi


def kl_gaussian(w, w0, s, lam: float) -> float:
    """KL(Q || P) for Q = N(w, diag(s)), P = N(w0, lam I), in float64 (MEASURES.md section 3).

    KL = 1/2 [ (||s||_1 + ||w - w0||^2) / lam - D + D ln(lam) - sum_i ln(s_i) ], s = posterior variances.
    """
    w = np.asarray(w, dtype=np.float64).ravel()
    w0 = np.asarray(w0, dtype=np.float64).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    d = w.size
    dist = float(np.sum((w - w0) ** 2))
    return 0.5 * ((float(np.sum(s)) + dist) / lam - d + d * math.log(lam) - float(np.sum(np.log(s))))


def grid_lambda(j: float, b: float = GRID_B, c: float = GRID_C) -> float:
    """The prior variance lambda = c exp(-j / b) of grid point j (MEASURES.md section 3)."""
    return c * math.exp(-j / b)


def grid_j(lam: float, b: float = GRID_B, c: float = GRID_C) -> float:
    """The (real) grid index j = b ln(c / lambda), the inverse of :func:`grid_lambda`."""
    return b * math.log(c / lam)


def nearest_grid(lam: float, b: float = GRID_B, c: float = GRID_C) -> tuple[int, int]:
    """The two neighbouring integer grid points (j_lo, j_lo + 1), both >= 1, around lambda (MEASURES.md sec. 3)."""
    j = max(grid_j(lam, b, c), 1.0)
    lo = int(math.floor(j))
    return lo, lo + 1


def b_re(kl: float, m: int, lam: float, delta: float = DELTA, b: float = GRID_B, c: float = GRID_C) -> float:
    """B_RE = [KL + 2 ln(b ln(c / lam)) + ln(pi^2 m / (6 delta))] / (m - 1) (MEASURES.md section 3).

    The lambda term 2 ln(b ln(c / lam)) = 2 ln(j) is counted once (the public code's known fault: twice).
    Formula check of MEASURES.md: kl_inverse(0.028, b_re(5144, 55_000, grid_lambda(j), 0.025)) rounds to 0.161
    for every grid point j from 1 (lambda term 0, bound 0.16075) to 50,000 (term 2 ln j <= 21.7, i.e. <= 4e-4
    in B_RE), because B_RE ~ 0.0938 there is dominated by KL / (m - 1); the paper's j is not needed.
    """
    j = grid_j(lam, b, c)
    if j < 1.0 - 1e-9:
        raise ValueError(f"lambda={lam} is above the grid (j={j} < 1)")
    lam_term = 2.0 * math.log(b * math.log(c / lam))
    return (kl + lam_term + math.log(math.pi**2 * m / (6.0 * delta))) / (m - 1)


def certificate(
    train_error_mc: float,
    n_samples: int,
    kl: float,
    m: int,
    lam: float,
    delta: float = DELTA,
    delta_prime: float = DELTA_PRIME,
) -> dict:
    """The Dziugaite & Roy certificate from a Monte Carlo training error (MEASURES.md section 3).

    e_up = kl^-1(e_N | ln(2 / delta') / N) bounds the SNN training error; the bound is kl^-1(e_up | B_RE)
    with B_RE computed from ``kl`` and ``lam``, which must be a grid point (the one the KL was computed
    with); it holds with probability 1 - delta - delta'.
    """
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    j = grid_j(lam)
    if abs(j - round(j)) > 1e-6 or round(j) < 1:
        raise ValueError(f"lambda={lam} is not a grid point (j={j}); round it with nearest_grid first")
    e_up = kl_inverse(train_error_mc, math.log(2.0 / delta_prime) / n_samples)
    bre = b_re(kl, m, lam, delta)
    return {
        "bound": kl_inverse(e_up, bre),
        "e_mc": float(train_error_mc),
        "e_up": e_up,
        "B_RE": bre,
        "kl": float(kl),
        "lambda": float(lam),
        "j": int(round(j)),
        "m": int(m),
        "n_samples": int(n_samples),
        "delta": delta,
        "delta_prime": delta_prime,
        "confidence": 1.0 - delta - delta_prime,
    }


# ---------------------------------------------------------------------------------------------------------
# Optimization of the posterior (torch)
# ---------------------------------------------------------------------------------------------------------


def surrogate_loss(out, y):
    """Differentiable surrogate of the 0-1 error, in bits (MEASURES.md section 3).

    A single-logit output uses the logistic loss / ln 2; a K-class head uses cross-entropy / ln 2.
    """
    if out.ndim == 1 or out.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(out.reshape(-1), y.reshape(-1).to(out.dtype)) / math.log(2.0)
    return F.cross_entropy(out, y.long()) / math.log(2.0)


def _errors(out, y):
    """0-1 errors (a single logit predicts class 1 when positive; a K-class head by argmax)."""
    if out.ndim == 1 or out.shape[-1] == 1:
        pred = (out.reshape(-1) > 0).long()
    else:
        pred = out.argmax(dim=-1)
    return (pred != y.reshape(-1).long()).sum()


def kl_gaussian_torch(w, w0, log_s, log_lam):
    """Differentiable KL(Q || P) of :func:`kl_gaussian` from ln s and ln lambda (MEASURES.md section 3).

    The distance ||w - w0||^2 uses the live mean ``w`` so the KL gradient reaches it (a known fault used
    constants here).
    """
    d = w.numel()
    lam = torch.exp(log_lam)
    dist = torch.sum((w - w0) ** 2)
    return 0.5 * ((torch.sum(torch.exp(log_s)) + dist) / lam - d + d * log_lam - torch.sum(log_s))


def _b_re_torch(kl, m, log_lam, delta=DELTA, b=GRID_B, c=GRID_C):
    """Differentiable B_RE of :func:`b_re`, with the grid index clamped to j >= 1 while lambda wanders."""
    j = torch.clamp(b * (math.log(c) - log_lam), min=1.0)
    return (kl + 2.0 * torch.log(j) + math.log(math.pi**2 * m / (6.0 * delta))) / (m - 1)


def _functional(model):
    """A function f(flat_params, x) evaluating ``model`` with the given flat trainable parameters."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
    sizes = [int(math.prod(sh)) for sh in shapes]

    def f(flat, x):
        parts = torch.split(flat, sizes)
        params = {n: t.view(sh) for n, t, sh in zip(names, parts, shapes)}
        return functional_call(model, params, (x,))

    return f


def flat_params(model):
    """All trainable parameters of ``model`` flattened into one detached vector."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def optimize_posterior(
    model,
    init_params,
    loss_fn: Callable | None,
    x,
    y,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 100,
    seed: int = 0,
    m: int | None = None,
    rho0: float = -3.0,
    delta: float = DELTA,
) -> dict:
    """Optimize the Gaussian posterior N(w, diag(s)) around ``model``'s trained weights (MEASURES.md sec. 3).

    Objective per step: surrogate error of ONE reparameterized weight sample on a mini-batch plus
    sqrt(B_RE(Q) / 2), with the same delta = 0.025 as the certificate, optimized by RMSprop over
    (w, varsigma, rho), s = exp(2 varsigma), lambda = exp(2 rho).

    Initialization (our documented choice): w = the trained weights; varsigma = ln |w| (so each weight's
    posterior standard deviation starts at its own magnitude), with |w| clipped to >= 1e-4 so zero weights get
    a finite variance; rho = rho0 = -3, i.e. lambda0 = exp(-6) ~ 2.5e-3 (grid j ~ 369, well inside the grid).
    At the end lambda is rounded to whichever of its two neighbouring grid points gives the smaller B_RE
    (in float64), which is the smaller certificate since e_up does not depend on lambda.

    ``init_params`` is the flat prior mean w0 (the initialization); ``m`` defaults to ``len(x)``. The model is
    put in eval mode so the posterior is over weights only. Returns a dict with w, s (float32 tensors), and
    float64 kl, lambda, j, B_RE, plus the last objective value.
    """
    loss_fn = loss_fn or surrogate_loss
    m = len(x) if m is None else int(m)
    model.eval()
    f = _functional(model)
    w_trained = flat_params(model)
    dev = w_trained.device
    w0 = init_params.detach().to(dev, w_trained.dtype).reshape(-1)
    if w0.numel() != w_trained.numel():
        raise ValueError(f"init_params has {w0.numel()} entries, the model {w_trained.numel()}")

    gen = torch.Generator(device="cpu").manual_seed(seed)
    w = w_trained.clone().requires_grad_(True)
    varsigma = torch.log(w_trained.abs().clamp(min=1e-4)).requires_grad_(True)
    rho = torch.tensor(float(rho0), device=dev, requires_grad=True)
    opt = torch.optim.RMSprop([w, varsigma, rho], lr=lr)

    obj, batches = float("nan"), _minibatches(len(x), batch_size, gen)
    for _ in range(steps):
        idx = next(batches)
        xb, yb = x[idx].to(dev), y[idx].to(dev)
        eps = torch.randn(w.shape, generator=gen).to(dev, w.dtype)
        sample = w + torch.exp(varsigma) * eps
        kl = kl_gaussian_torch(w, w0, 2.0 * varsigma, 2.0 * rho)
        loss = loss_fn(f(sample, xb), yb) + torch.sqrt(_b_re_torch(kl, m, 2.0 * rho, delta) / 2.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        obj = float(loss.detach())

    w_fin, s_fin = w.detach(), torch.exp(2.0 * varsigma.detach())
    best = _on_grid(w_fin, w0, s_fin, math.exp(2.0 * float(rho.detach())), m, delta)
    return {"w": w_fin, "s": s_fin, "objective": obj, "m": m, **best}


def _minibatches(n: int, batch_size: int, gen: torch.Generator):
    """Mini-batch indices without end: a fresh permutation per epoch, so every example is visited equally."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for pos in range(0, max(n - batch_size, 0) + 1, batch_size):
            yield perm[pos : pos + batch_size]


def _on_grid(w, w0, s, lam: float, m: int, delta: float) -> dict:
    """lambda rounded to whichever neighbouring grid point gives the smaller B_RE (float64): j,
    lambda, KL and B_RE there."""
    w_np, w0_np, s_np = (t.double().cpu().numpy() for t in (w, w0, s))
    best = None
    for j in nearest_grid(lam):
        lam_j = grid_lambda(j)
        kl_j = kl_gaussian(w_np, w0_np, s_np, lam_j)
        cand = {"j": j, "lambda": lam_j, "kl": kl_j, "B_RE": b_re(kl_j, m, lam_j, delta)}
        if best is None or cand["B_RE"] < best["B_RE"]:
            best = cand
    return best


def mc_error(model, w, s, x, y, n_samples: int, seed: int = 0, batch_size: int = 1000) -> float:
    """Monte Carlo 0-1 error of the SNN: the mean over ``n_samples`` weight draws from N(w, diag(s)).

    Each draw is evaluated on the whole of (x, y), in batches (MEASURES.md section 3, e_N).
    """
    model.eval()
    f = _functional(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    std = torch.sqrt(s)
    wrong = 0
    with torch.no_grad():
        for _ in range(n_samples):
            sample = w + std * torch.randn(w.shape, generator=gen).to(w.device, w.dtype)
            for i in range(0, len(x), batch_size):
                xb, yb = x[i : i + batch_size].to(w.device), y[i : i + batch_size].to(w.device)
                wrong += int(_errors(f(sample, xb), yb))
    return wrong / (n_samples * len(x))


def snn_test_error(model, w, s, x_test, y_test, n_samples: int, seed: int = 1, batch_size: int = 1000) -> float:
    """Monte Carlo 0-1 error of the SNN on a test set (same as :func:`mc_error`, different data and seed)."""
    return mc_error(model, w, s, x_test, y_test, n_samples, seed=seed, batch_size=batch_size)


def bound(
    model,
    init_model,
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    steps: int,
    samples: int,
    lr: float = 1e-3,
    batch_size: int = 100,
    seed: int = 0,
    loss_fn: Callable | None = None,
    delta: float = DELTA,
    delta_prime: float = DELTA_PRIME,
) -> dict:
    """Optimize the posterior, estimate its errors by Monte Carlo, and certify (MEASURES.md section 3).

    ``model`` holds the trained weights (the posterior mean's start), ``init_model`` the initialization w0
    (the prior mean). ``samples`` is N, the number of weight draws for e_N and for the SNN test error.
    Returns a plain dict: bound, kl, lambda, j, e_mc, e_up, snn_test_error, B_RE, m, n_samples, confidence,
    seconds.
    """
    t0 = time.perf_counter()
    w0 = flat_params(init_model)
    post = optimize_posterior(
        model,
        w0,
        loss_fn,
        x_train,
        y_train,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        delta=delta,
    )
    e_mc = mc_error(model, post["w"], post["s"], x_train, y_train, samples, seed=seed + 1)
    test = snn_test_error(model, post["w"], post["s"], x_test, y_test, samples, seed=seed + 2)
    cert = certificate(e_mc, samples, post["kl"], post["m"], post["lambda"], delta, delta_prime)
    return {
        "bound": cert["bound"],
        "kl": cert["kl"],
        "lambda": cert["lambda"],
        "j": cert["j"],
        "e_mc": e_mc,
        "e_up": cert["e_up"],
        "snn_test_error": test,
        "B_RE": cert["B_RE"],
        "m": cert["m"],
        "n_samples": samples,
        "confidence": cert["confidence"],
        "seconds": time.perf_counter() - t0,
    }
