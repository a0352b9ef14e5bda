"""What ``rethink construct`` does: build Theorem 1's network for a (randomized) training set,
verify it, and report the numbers."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..api import prepare
from ..errors import UserError
from ..flags import option
from ..spec import RunSpec
from .expressivity import construct, one_hot, predict, verify

OUTPUTS = ("scalar", "onehot")
# The spec's flags that ``rethink construct`` takes, and its own defaults for them: raw pixels are
# integer multiples of a power of two, which the construction projects exactly.
CONSTRUCT_SPEC = ("dataset", "data_dir", "train_size", "test_size", "randomize", "p", "preprocess", "crop", "seed")
CONSTRUCT_DEFAULTS = {"preprocess": "none"}


@dataclass(frozen=True)
class ConstructOptions:
    """``rethink construct``'s flags beyond the spec's."""

    outputs: str = option(
        "scalar",
        "scalar: one output fitting the labels as numbers (2n + d weights); onehot: one "
        "output per class (d + n + nK weights)",
        choices=OUTPUTS,
    )
    depth: int = option(2, "2: Theorem 1's network; K > 2: the same function, width O(n/K)")
    json: bool = option(False, "print the results as JSON on stdout")


@dataclass(frozen=True)
class RademacherOptions:
    """``rethink rademacher``'s flags beyond the spec's."""

    draws: int = option(5, "draws of random labels")
    json: bool = option(False, "print the results as JSON on stdout")
    quiet: bool = option(False, "no per-draw lines")


def construct_report(
    spec: RunSpec, outputs: str = ConstructOptions.outputs, depth: int = ConstructOptions.depth
) -> dict:
    """Build the network for the spec's (subset, randomized, preprocessed) training set.

    Scalar outputs fit the class labels as numbers 0..K-1 (read back by rounding); one-hot outputs
    fit one output per class (read back by argmax). The returned dict is ``--json``'s object.
    """
    if outputs not in OUTPUTS:
        raise UserError(f"--outputs {outputs!r} is not valid; choose one of {', '.join(OUTPUTS)}")
    prepared = prepare(spec, torch.device("cpu"))
    data = prepared.data
    labels = data.y_train
    targets = labels.double() if outputs == "scalar" else one_hot(labels, prepared.num_classes)
    net = construct(data.x_train, targets, depth=depth, seed=spec.seed)
    check = verify(net, data.x_train, targets)
    t0 = time.perf_counter()
    test_acc = float((predict(net, data.x_test) == data.y_test).double().mean())
    c = net.construction
    return {
        "n": c.n,
        "d": c.d,
        "num_params": c.num_params,
        "fit_fraction": check.fit_fraction,
        "max_residual": check.max_residual,
        "min_gap": c.min_gap,
        "seconds": c.seconds,
        "verify_seconds": check.seconds,
        "test_acc": test_acc,
        "test_seconds": time.perf_counter() - t0,
        "units": c.units,
        "outputs": outputs,
        "num_outputs": c.outputs,
        "depth": c.depth,
        "exact_projection": c.exact_projection,
        "direction_bound": c.direction_bound,
        "attempts": c.attempts,
        "min_gap_relative": c.min_gap_relative,
        "min_diagonal": c.min_diagonal,
        "condition": c.condition,
        "weight_norms": {"a": c.norm_a, "b": c.norm_b, "w": c.norm_w, "max_abs_w": c.max_abs_w},
        "spec": {
            k: getattr(spec, k) for k in ("dataset", "train_size", "test_size", "randomize", "p", "preprocess", "seed")
        },
    }


def format_report(r: dict) -> str:
    """The human-readable summary of :func:`construct_report`."""
    gap = (
        "none (one point)" if r["min_gap"] is None else f"{r['min_gap']:.6g} ({r['min_gap_relative']:.3g} of the range)"
    )
    how = "exact (integer direction on the inputs' grid)" if r["exact_projection"] else "rounded (no exact grid)"
    lines = [
        (
            f"points n = {r['n']:,} ({r['units']:,} distinct), d = {r['d']:,}, depth {r['depth']}, "
            f"{r['outputs']} outputs"
        ),
        f"weights: {r['num_params']:,}",
        f"targets reproduced: {100 * r['fit_fraction']:.4f}%  (largest residual {r['max_residual']:.3g})",
        f"smallest gap between projections: {gap}; projections {how}",
        (
            f"min_i (x_i - b_i) = {r['min_diagonal']:.6g}; condition ||A|| ||A^-1|| = {r['condition']:.3g}; "
            f"|a| = {r['weight_norms']['a']:.4g}, |b| = {r['weight_norms']['b']:.4g}, "
            f"|w| = {r['weight_norms']['w']:.4g}"
        ),
        f"construction {r['seconds']:.3f} s, verification {r['verify_seconds']:.3f} s (the network itself, float64)",
        f"test accuracy: {100 * r['test_acc']:.2f}%",
    ]
    return "\n".join(lines)
