"""``rethink linear-sgd``: SGD on least squares finds the minimum-norm solution (Section 5).

With fewer examples than dimensions (n < d), X W = Y has many solutions. Every SGD update is a
combination of data points, so SGD started from W = 0 never leaves the span of the data, and the
only interpolating W in that span is the pseudo-inverse solution W* = X^+ Y, the one of minimum
norm. A start W0 outside the span keeps its out-of-span part (I - P) W0 forever and converges to
W* + (I - P) W0 instead. Both runs see the same examples in the same order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..api import resolve_crop
from ..data import load_dataset, subset
from ..data.transforms import preprocess
from ..errors import UserError
from ..flags import help_of, option
from ..report import Figure, Output, Table
from ..seeding import generator
from ..spec import RunSpec
from .features import compute_features


@dataclass(frozen=True)
class LinearSGDConfig:
    """One ``rethink linear-sgd`` experiment; each field is one of its flags (see flags.py)."""

    dataset: str = option("fashion-mnist", help_of(RunSpec, "dataset"))
    data_dir: str | None = option(None, help_of(RunSpec, "data_dir"))
    train_size: int = option(100, "n, fewer than the input dimensions")
    preprocess: str = option(
        "standard", "standard (per-image standardization: a far better conditioned X than raw pixels) or none"
    )
    features: str = option("none", "none or random-conv/gabor (more dimensions)")
    steps: int = option(100_000, "SGD steps")
    batch_size: int = option(1, "examples per step")
    lr: float | None = option(None, "constant learning rate (default: 1 / max |x_i|^2, stable for every batch)")
    record_every: int = option(500, "record the distances every N steps")
    seed: int = option(0, "seed for the subset, the outside start and the order")

    def __post_init__(self):
        if self.preprocess not in ("none", "standard"):
            raise UserError(f"--preprocess {self.preprocess!r} is not valid; choose none or standard")
        for name in ("train_size", "steps", "batch_size", "record_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)} must be a positive whole number")
        if self.batch_size > self.train_size:
            raise UserError(f"--batch-size {self.batch_size} is larger than --train-size {self.train_size}")
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"--lr {self.lr} must be positive (or left out: 1 / max |x_i|^2)")


@dataclass(frozen=True)
class LinearSGDOutputs:
    """``rethink linear-sgd``'s flags beyond the experiment: where the results go."""

    out: str = option("results/linear_sgd", "output folder for the figure and table")
    json: bool = option(False, "print the final distances as one JSON object on stdout")


@dataclass
class LinearSGDResult:
    steps: np.ndarray  # the recorded steps
    runs: dict  # start name -> {"to_min_norm", "to_span", "loss"}: arrays over the recorded steps
    min_norm: float  # |W*|
    outside: float  # |(I - P) W0| of the start outside the span
    n: int
    d: int
    lr: float


def _data(cfg: LinearSGDConfig) -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    ds = subset(ds, cfg.train_size, None, generator(cfg.seed, "subset"))
    x = preprocess(
        torch.from_numpy(ds.x_train), resolve_crop("auto", ds.x_train.shape[-1]), cfg.preprocess == "standard"
    )
    x = compute_features(cfg.features, x, seed=cfg.seed).double().numpy()
    n, d = x.shape
    if n >= d:
        raise UserError(
            f"linear-sgd needs fewer examples than dimensions, but n = {n} >= d = {d}; "
            f"use --train-size {d - 1} or less, or --features random-conv"
        )
    return x, np.eye(ds.num_classes)[ds.y_train]


def linear_sgd(cfg: LinearSGDConfig) -> LinearSGDResult:
    """Run SGD from both starts; numpy, since its per-step products are tiny (torch's threads cost more)."""
    x, y = _data(cfg)
    n, d = x.shape
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    if s[-1] <= s[0] * 1e-10:
        raise UserError(f"the {n} training inputs are linearly dependent; use a smaller --train-size")
    w_star = vh.T @ ((u.T @ y) / s[:, None])  # X^+ Y
    basis = vh.T  # orthonormal basis of the data span (d, n)

    def to_span(w):
        return float(np.linalg.norm(w - basis @ (basis.T @ w)))

    w0 = generator(cfg.seed, "init").standard_normal((d, y.shape[1]))
    w0 *= np.linalg.norm(w_star) / np.linalg.norm(w0)  # as large as W*, almost all of it outside the span
    lr = cfg.lr if cfg.lr is not None else 1.0 / float((x * x).sum(1).max())
    order = generator(cfg.seed, "order")
    epochs = -(-cfg.steps * cfg.batch_size // n)
    batches = np.concatenate([order.permutation(n) for _ in range(epochs)])
    starts = {"W0 = 0": np.zeros_like(w0), "W0 outside the span": w0.copy()}
    runs = {name: {"to_min_norm": [], "to_span": [], "loss": []} for name in starts}
    recorded = []
    for step in range(cfg.steps + 1):
        if step % cfg.record_every == 0 or step == cfg.steps:
            recorded.append(step)
            for name, w in starts.items():
                runs[name]["to_min_norm"].append(float(np.linalg.norm(w - w_star)))
                runs[name]["to_span"].append(to_span(w))
                runs[name]["loss"].append(0.5 * float(((x @ w - y) ** 2).sum(1).mean()))
        if step == cfg.steps:
            break
        idx = batches[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        xb, yb = x[idx], y[idx]
        for w in starts.values():
            w -= (lr / cfg.batch_size) * (xb.T @ (xb @ w - yb))
        if not np.isfinite(starts["W0 = 0"]).all():
            raise UserError(f"SGD diverged at step {step} with --lr {lr:g}; use a smaller --lr")
    runs = {name: {k: np.array(v) for k, v in r.items()} for name, r in runs.items()}
    return LinearSGDResult(np.array(recorded), runs, float(np.linalg.norm(w_star)), to_span(w0), n, d, lr)


def report(cfg: LinearSGDConfig, result: LinearSGDResult) -> Output:
    """A table of where each start ends and a figure of its distances over steps."""
    caption = (
        f"{cfg.dataset}, n = {result.n} examples in d = {result.d} dimensions (preprocess {cfg.preprocess}, "
        f"features {cfg.features}), one-hot targets, squared loss; SGD with batch {cfg.batch_size}, "
        f"constant learning rate {result.lr:.3g}, {cfg.steps:,} steps, seed {cfg.seed}. |W*| = "
        f"{result.min_norm:.4g} (W* = X^+ Y, the minimum-norm solution); the second start has "
        f"|(I - P) W0| = {result.outside:.4g} outside the data span."
    )
    rows = [
        [
            name,
            f"{r['loss'][-1]:.2e}",
            f"{r['to_min_norm'][-1]:.3e}",
            f"{r['to_min_norm'][-1] / result.min_norm:.2e}",
            f"{r['to_span'][-1]:.3e}",
        ]
        for name, r in result.runs.items()
    ]
    table = Table(
        "linear_sgd",
        ["start", "final training loss", "|W - W*|", "|W - W*| / |W*|", "distance to the data span"],
        rows,
        caption,
    )
    return Output("linear_sgd", f"n={result.n}", [table], [Figure("linear_sgd", _plot(result), caption)], [asdict(cfg)])


def _plot(result: LinearSGDResult):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-17  # an exact zero cannot be drawn on a log axis
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in result.runs.items():
        a.semilogy(result.steps, np.maximum(r["to_min_norm"], floor), label=name)
        b.semilogy(result.steps, np.maximum(r["to_span"], floor), label=name)
    a.axhline(result.outside, color="gray", lw=0.8, ls=":", label="|(I - P) W0|")
    a.set(xlabel="SGD step", ylabel="|W - W*|", title="(a) distance to the minimum-norm solution")
    b.set(xlabel="SGD step", ylabel="|W - P W|", title="(b) distance to the span of the data")
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig
