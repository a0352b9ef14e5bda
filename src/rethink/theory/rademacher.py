"""Empirical Rademacher complexity, from below: fit random +-1 labels and see how well it goes.

For a classifier f with outputs +-1 and labels sigma_i = +-1, (1/n) sum_i sigma_i f(z_i) = 1 - 2 *
training error. Training finds some function of the class, not the best one, so the mean of
1 - 2 * training error over draws of sigma is a lower bound on the empirical Rademacher complexity
of what the model and its training procedure reach (PAPER.md section 6). The sample is fixed (the
spec's subset and preprocessing); each draw takes new labels, a new initialization and a new batch
order (the spec with seed + draw) and trains through the ordinary engine with a two-class head.

``model = "theorem1"`` builds Theorem 1's network for each draw instead of training, which fits
every draw: exactly 1.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

import torch

from ..api import build_model, prepare, resolve_device, train_config
from ..errors import UserError
from ..models import num_params
from ..seeding import generator
from ..spec import RunSpec, from_dict
from ..train.engine import TrainData, train
from .expressivity import construct, verify

THEOREM1 = "theorem1"


@dataclass
class Rademacher:
    spec: RunSpec
    n: int
    num_params: int
    values: list[float]  # 1 - 2 * training error, one per draw
    statuses: list[str]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def to_json(self) -> dict:
        return {
            "mean": self.mean,
            "std": self.std,
            "min": min(self.values),
            "max": max(self.values),
            "draws": len(self.values),
            "values": self.values,
            "statuses": self.statuses,
            "n": self.n,
            "num_params": self.num_params,
            "spec": self.spec.to_dict(),
        }


def rademacher(spec: RunSpec | dict, draws: int = 5, on_draw=None) -> Rademacher:
    """Estimate from ``draws`` fits of random +-1 labels on the spec's training set.

    ``on_draw(i, value, status)`` is called after each draw.
    """
    spec = spec if isinstance(spec, RunSpec) else from_dict(spec)
    if draws < 1:
        raise UserError(f"--draws {draws} must be a positive whole number")
    if spec.randomize in ("partial-labels", "random-labels"):
        raise UserError(
            f"--randomize {spec.randomize} does nothing here (each draw takes its own random +-1 "
            "labels); drop it, or give an input randomization"
        )
    device = resolve_device(spec.device)
    torch.set_flush_denormal(True)  # as rethink.run does: denormals slow CPU training down
    prepared = prepare(spec, device)
    base = prepared.data
    if not isinstance(base, TrainData):
        raise UserError("rademacher needs the training set in memory (its labels are replaced per draw); drop --stream")
    n = len(base.y_train)
    result = Rademacher(spec, n, 0, [], [])
    for i in range(draws):
        draw = spec.replace(seed=spec.seed + i)
        rng = generator(draw.seed, "randomize")
        signs = torch.as_tensor(rng.integers(0, 2, n), device=device)  # class 1: +1, class 0: -1
        if spec.model == THEOREM1:
            x, targets = base.x_train.cpu(), 2.0 * signs.cpu().double() - 1
            net = construct(x, targets, seed=draw.seed)
            train_acc, status, params = verify(net, x, targets).fit_fraction, "constructed", net.construction.num_params
        else:
            test_signs = torch.as_tensor(rng.integers(0, 2, len(base.y_test)), device=device)
            data = dataclasses.replace(
                base, y_train=signs, y_test=test_signs, y_train_true=signs, changed=torch.zeros_like(base.changed)
            )
            model = build_model(draw, prepared.input_shape, 2).to(device)
            run = train(model, data, train_config(draw))
            train_acc, status, params = run.evals[-1]["train_acc"], run.status, num_params(model)
        value = 2 * train_acc - 1  # = 1 - 2 * training error
        result.values.append(value)
        result.statuses.append(status)
        result.num_params = params
        if on_draw:
            on_draw(i, value, status)
    return result
