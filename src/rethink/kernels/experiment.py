"""``rethink kernel``: fit the training labels exactly with a kernel machine (Section 5 of the paper).

data (the project's sources, subset and randomization) -> preprocessing -> optional feature map
-> bandwidth (given or the default rule) -> memory guard -> exact solve of K alpha = one-hot(y)
-> training error, relative residual, test error, RKHS norm, time, peak memory.

A label-noise sweep (:func:`norm_vs_noise`) solves for every p at once: K does not depend on the
labels, so one factorization serves all of them.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..api import resolve_crop
from ..data import load_dataset, subset
from ..data.randomize import KINDS, randomize_dataset
from ..data.transforms import preprocess
from ..errors import UserError
from ..flags import floats, help_of, int_or_text, option
from ..registry import unknown_name
from ..seeding import generator
from ..spec import RunSpec
from . import features as feature_maps
from .budget import Estimate, check_fits
from .functions import KERNELS, Kernel, default_bandwidth
from .solve import KernelData, Progress, Solution, cross_matmul, interpolate, no_progress


@dataclass(frozen=True)
class KernelConfig:
    """Everything that describes one kernel fit; validated on construction. Each field is a flag of
    ``rethink kernel`` (see flags.py)."""

    dataset: str = option(help=help_of(RunSpec, "dataset"))
    data_dir: str | None = option(None, help_of(RunSpec, "data_dir"))
    train_size: int | None = option(None, help_of(RunSpec, "train_size"))
    test_size: int | None = option(None, help_of(RunSpec, "test_size"))
    preprocess: str = option("none", "none (pixels in [0, 1]) or standard (centre crop + per-image standardization)")
    crop: str | int = option("auto", help_of(RunSpec, "crop"), type=int_or_text)
    randomize: str = option("none", help_of(RunSpec, "randomize"))
    p: float = option(0.0, help_of(RunSpec, "p"))
    kernel: str = option("gaussian", ", ".join(KERNELS))
    bandwidth: float | None = option(
        None,
        "the kernel's length scale s (default: a rule on the median pairwise "
        "distance, see docs/theory.md); gaussian exp(-|x-y|^2/(2s^2)), laplacian "
        "exp(-|x-y|/s), polynomial (1 + <x,y>/s^2)^degree",
    )
    degree: int = option(2, "polynomial degree")
    features: str = option("none", f"{', '.join(feature_maps.FEATURES)}: a feature map before the kernel")
    filters: int = option(1024, "random-conv: number of random filters")
    filter_size: int = option(5, "random-conv: filter side")
    pool: int | None = option(
        None, "feature maps: average-pool to a POOL x POOL grid (default 2 for random-conv, 7 for gabor)"
    )
    orientations: int = option(8, "gabor: orientations")
    scales: int = option(3, "gabor: scales, wavelengths 3, 6, 12, ... pixels")
    ridge: float = option(0.0, "add R times the identity to K (0: interpolate)")
    tol: float = option(1e-10, "relative residual at which CG stops")
    max_iter: int = option(30, "CG steps at most")
    seed: int = option(0, "seed for the subset, the randomization and random features")
    max_memory_gb: float | None = option(
        None, "GB this process may use (default: whatever is available)", name="--max-memory"
    )

    def __post_init__(self):
        _check(self)


@dataclass(frozen=True)
class KernelOutputs:
    """``rethink kernel``'s flags beyond the fit: a label-noise sweep, and where the results go."""

    p_sweep: list[float] | None = option(
        None,
        "solve for every label corruption p in the list at once (one "
        "factorization) and write the norm-vs-noise table and figure to --out",
        type=floats,
        metavar="P,P,...",
    )
    out: str = option("results/norm_vs_noise", "output folder for --p-sweep")
    json: bool = option(False, "print the results as one JSON object on stdout")
    quiet: bool = option(False, "no progress bars or estimate")


def _check(c: KernelConfig) -> None:
    for name, value, options in (
        ("preprocess", c.preprocess, ("none", "standard")),
        ("randomize", c.randomize, KINDS),
        ("kernel", c.kernel, KERNELS),
        ("features", c.features, feature_maps.FEATURES),
    ):
        if value not in options:
            raise UserError(unknown_name(f"--{name}", value, options))
    if not 0.0 <= c.p <= 1.0:
        raise UserError(f"--p {c.p} is outside [0, 1]; give a corruption probability such as --p 0.5")
    if c.p and c.randomize != "partial-labels":
        raise UserError(
            f"--p {c.p} only applies to --randomize partial-labels; drop --p or set --randomize partial-labels"
        )
    if not (math.isfinite(c.ridge) and c.ridge >= 0):
        raise UserError(f"--ridge {c.ridge} must be >= 0 (0, the default, is exact interpolation)")
    if not (math.isfinite(c.tol) and 0 < c.tol < 1):
        raise UserError(f"--tol {c.tol} must be in (0, 1), e.g. 1e-10")
    if c.max_iter < 0:
        raise UserError(f"--max-iter {c.max_iter} must be >= 0")
    if c.max_memory_gb is not None and not c.max_memory_gb > 0:
        raise UserError(f"--max-memory {c.max_memory_gb} must be a positive number of GB")
    if c.crop not in ("auto", "none") and (not isinstance(c.crop, int) or c.crop < 1):
        raise UserError(f"--crop {c.crop!r} must be auto, none or a positive side length such as 28")
    if c.seed < 0:
        raise UserError(f"--seed {c.seed} must be >= 0")


@dataclass
class KernelResult:
    n: int
    n_test: int
    d: int  # input dimension after preprocessing and features
    kernel: str  # the kernel as a formula, bandwidth included
    bandwidth: float | None
    train_error: float
    test_error: float
    rkhs_norm: float
    residual: float  # ||K alpha - Y|| / ||Y||, K alpha recomputed in float64
    seconds: float  # wall time of the whole fit, data loading included
    peak_memory_gb: float  # peak resident memory of this process
    stage_seconds: dict
    factor_gflops: float
    cg_iterations: int
    residual_history: list
    estimate: dict

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Inputs:
    """Training and test inputs after preprocessing and the feature map, with their labels."""

    x_train: torch.Tensor  # (n, d) float32
    x_test: torch.Tensor
    y_train: np.ndarray
    y_test: np.ndarray
    num_classes: int
    raw: object  # the Dataset subset before randomization (for label sweeps)


def load_inputs(cfg: KernelConfig) -> Inputs:
    """Load, subset and randomize the data with the run's seed, preprocess, apply the feature map."""
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    ds = subset(ds, cfg.train_size, cfg.test_size, generator(cfg.seed, "subset"), training=True)
    r = randomize_dataset(cfg.randomize, ds, generator(cfg.seed, "randomize"), p=cfg.p)
    crop = resolve_crop(cfg.crop, ds.x_train.shape[-1])
    std = cfg.preprocess == "standard"
    options = dict(
        seed=cfg.seed,
        filters=cfg.filters,
        filter_size=cfg.filter_size,
        pool=cfg.pool,
        orientations=cfg.orientations,
        scales=cfg.scales,
    )

    def inputs(x):
        return feature_maps.compute_features(cfg.features, preprocess(torch.from_numpy(x), crop, std), **options)

    return Inputs(inputs(r.x_train), inputs(r.x_test), r.y_train, r.y_test, ds.num_classes, ds)


def corrupted_labels(cfg: KernelConfig, inputs: Inputs, p: float) -> np.ndarray:
    """The training labels with corruption p, drawn exactly as ``rethink kernel --randomize
    partial-labels --p P`` (and ``rethink run``) draws them with the same seed."""
    ds = inputs.raw
    return randomize_dataset(
        "partial-labels",
        ds,
        generator(cfg.seed, "randomize"),
        p=p,
    ).y_train


def make_kernel(cfg: KernelConfig, x_train: torch.Tensor) -> Kernel:
    bandwidth = cfg.bandwidth
    if bandwidth is None and cfg.kernel != "linear":
        bandwidth = default_bandwidth(cfg.kernel, x_train)
    return Kernel(cfg.kernel, bandwidth, cfg.degree)


def _check_rank(kernel: Kernel, n: int, d: int, ridge: float) -> None:
    """A linear (polynomial) kernel matrix has rank at most d (binom(d + degree, degree))."""
    if ridge or kernel.is_distance:
        return
    rank = d if kernel.name == "linear" else math.comb(d + kernel.degree, kernel.degree)
    if n > rank:
        raise UserError(
            f"the {kernel.name} kernel matrix of {n} points in {d} dimensions has rank at most {rank} "
            f"and cannot be inverted; use --train-size {rank} or less, a --ridge, or another kernel"
        )


def peak_memory_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


@dataclass
class Fit:
    """What one solve gives before it is split into per-label-set results."""

    kernel: Kernel
    solution: Solution
    test_scores: torch.Tensor  # K(test, train) @ alpha
    y: torch.Tensor  # the targets solved for, (n, columns)
    estimate: Estimate


def fit(
    cfg: KernelConfig, label_sets: list[np.ndarray], inputs: Inputs, log=print, progress: Progress = no_progress
) -> Fit:
    """Solve for one-hot targets of every label set in ``label_sets`` at once."""
    x_train, n, d = inputs.x_train, len(inputs.x_train), inputs.x_train.shape[1]
    kernel = make_kernel(cfg, x_train)
    _check_rank(kernel, n, d, cfg.ridge)
    columns = inputs.num_classes * len(label_sets)
    estimate = check_fits(n, d, len(inputs.x_test), columns, cfg.max_memory_gb)
    log(f"kernel {kernel.describe()} on {n} x {d} inputs; {estimate.describe()}")
    center = x_train.double().mean(0) if kernel.is_distance else None
    train = KernelData.from_inputs(kernel, x_train, center)
    y = torch.cat(
        [torch.nn.functional.one_hot(torch.from_numpy(labels), inputs.num_classes) for labels in label_sets], dim=1
    ).double()
    solution = interpolate(kernel, train, y, cfg.ridge, cfg.tol, cfg.max_iter, progress=progress)
    t = time.perf_counter()
    test = KernelData.from_inputs(kernel, inputs.x_test, center)
    scores = cross_matmul(kernel, test, train, solution.alpha)
    solution.seconds["test"] = time.perf_counter() - t
    return Fit(kernel, solution, scores, y, estimate)


def error_rate(scores: torch.Tensor, labels: np.ndarray) -> float:
    return float((scores.argmax(1).numpy() != labels).mean())


def run_kernel(cfg: KernelConfig, log=print, progress: Progress = no_progress) -> KernelResult:
    """Fit the configured training set exactly and measure it (see the module docstring)."""
    t0 = time.perf_counter()
    inputs = load_inputs(cfg)
    f = fit(cfg, [inputs.y_train], inputs, log, progress)
    s = f.solution
    return KernelResult(
        n=len(inputs.x_train),
        n_test=len(inputs.x_test),
        d=inputs.x_train.shape[1],
        kernel=f.kernel.describe(),
        bandwidth=f.kernel.bandwidth,
        train_error=error_rate(s.k_alpha, inputs.y_train),
        test_error=error_rate(f.test_scores, inputs.y_test),
        rkhs_norm=s.rkhs_norm(),
        residual=s.history[-1],
        seconds=time.perf_counter() - t0,
        peak_memory_gb=peak_memory_gb(),
        stage_seconds=s.seconds,
        factor_gflops=s.factor_gflops,
        cg_iterations=s.iterations,
        residual_history=s.history,
        estimate=asdict(f.estimate),
    )
