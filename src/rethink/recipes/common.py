"""What the recipes share: the recipe registry, per-scale protocols, spec construction, aggregation over seeds."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import UserError
from ..registry import Registry
from ..spec import RunSpec

SCALES = ("smoke", "cpu", "paper")

# The paper's models at each scale, as (registry name, width). Narrower versions keep CPU runs short.
PAPER_MODELS = ("inception", "inception-nobn", "alexnet", "mlp1x512", "mlp3x512")
LABELS = {
    "inception": "Inception",
    "inception-nobn": "Inception w/o BatchNorm",
    "alexnet": "AlexNet",
    "mlp1x512": "MLP 1x512",
    "mlp3x512": "MLP 3x512",
}


@dataclass(frozen=True)
class Protocol:
    """The settings of one scale. Every recipe prints them in its captions."""

    scale: str
    dataset: str
    train_size: int | None
    test_size: int | None
    widths: dict = field(default_factory=dict)  # model -> width multiplier (1 when absent)
    train_sizes: dict = field(default_factory=dict)  # model -> its own training-set size
    datasets: dict = field(default_factory=dict)  # model -> its own dataset (default files), whatever --dataset says
    lrs: dict = field(default_factory=dict)  # model -> its initial learning rate (the paper's when absent)
    lr_decay: float = 0.95
    epochs: int = 100  # the cap of runs that stop when they fit
    budget_epochs: int = 100  # runs that train to the end of their budget (Table 1, Figure 2b)
    budgets: dict = field(default_factory=dict)  # model -> its own budget_epochs
    whole_budget: bool = True  # Table 1's runs train to the end of their budget (False: until they fit)
    eval_every: int | None = None
    eval_epochs: dict = field(default_factory=dict)  # model -> evaluated every this many epochs instead
    compiled: tuple = ()  # models trained through torch.compile unless --compile/--no-compile says otherwise
    fit_threshold: float = 1.0
    p_levels: tuple = tuple(round(0.1 * i, 1) for i in range(11))
    model_p_levels: dict = field(default_factory=dict)  # model -> its own corruption levels (Figure 1b, 1c)
    weight_decay: float = 5e-4  # the paper gives no value for Table 1
    note: str = ""  # what the scale changes from the paper, in one sentence for the captions

    def p_levels_of(self, model: str) -> tuple:
        return self.model_p_levels.get(model, self.p_levels)

    def budget_of(self, model: str) -> int:
        return self.budgets.get(model, self.budget_epochs)

    def caption(self, options: dict, results) -> str:
        """:meth:`describe` for a caption: the data ``options`` name, the settings of the models in ``results``."""
        return self.describe(options.get("dataset"), {r.spec.model for r in results})

    def describe(self, data: str | None = None, models=None) -> str:
        """The settings in words; with ``models``, only the per-model settings of those models (the
        ones in the figure or table the caption is for)."""
        if models is not None:

            def own(d):
                return {m: v for m, v in d.items() if m in models}

            return replace(
                self,
                widths=own(self.widths),
                train_sizes=own(self.train_sizes),
                datasets=own(self.datasets),
                lrs=own(self.lrs),
                eval_epochs=own(self.eval_epochs),
                budgets=own(self.budgets),
                model_p_levels=own(self.model_p_levels),
                compiled=tuple(m for m in self.compiled if m in models),
            ).describe(data)
        size = f"{self.train_size or 'all'} train / {self.test_size or 'all'} test images" + (
            " (" + ", ".join(f"{LABELS.get(m, m)}: {n}" for m, n in self.train_sizes.items()) + " train)"
            if self.train_sizes
            else ""
        )
        widths = ", ".join(f"{LABELS.get(m, m)} at width {w:g}" for m, w in self.widths.items() if w != 1)
        decay = (
            "constant learning rate (decay 1)" if self.lr_decay == 1 else f"learning rate x{self.lr_decay:g} per epoch"
        )
        evals = f"every {self.eval_every} steps" if self.eval_every else "every epoch"
        if self.eval_epochs:
            evals += f" ({', '.join(f'{LABELS.get(m, m)}: every {k} epochs' for m, k in self.eval_epochs.items())})"
        own = "".join(f" ({LABELS.get(m, m)}: {d})" for m, d in self.datasets.items())
        rates = ", ".join(f"{LABELS.get(m, m)} at {lr:g}" for m, lr in self.lrs.items())
        rates = f"the paper's initial rates (0.1 Inception, 0.01 others){' except ' + rates if rates else ''}"
        own_levels = ", ".join(f"{LABELS.get(m, m)}: {_levels(ps)}" for m, ps in self.model_p_levels.items())
        levels = f" Corruption levels p = {_levels(self.p_levels)} ({own_levels})." if own_levels else ""
        own_budgets = "".join(f", {LABELS.get(m, m)} {b}" for m, b in self.budgets.items())
        return (
            f"Scale '{self.scale}': {data or self.dataset}{own}, {size}"
            + (f"; {widths}" if widths else "; the paper's models at full width")
            + f"; SGD momentum 0.9, batch 128, {rates}, {decay}; "
            f"budget {self.epochs} epochs ({self.budget_epochs}{own_budgets} for runs not stopped at a fit); "
            f"fit threshold {100 * self.fit_threshold:g}% training accuracy, "
            f"evaluated {evals}."
            + levels
            + (
                " " + ", ".join(LABELS.get(m, m) for m in self.compiled) + " trained through torch.compile."
                if self.compiled
                else ""
            )
            + (f" {self.note}" if self.note else "")
        )


def _levels(ps) -> str:
    return ", ".join(f"{p:g}" for p in ps)


PROTOCOLS = {
    # What a new user runs first, under a minute per recipe on 2 CPU cores: the embedded digits set,
    # narrow conv nets on 256 images (their step is mostly fixed overhead, whatever the width, so few),
    # MLPs on all 1,437 at the demo's rate 0.1 (on 256 images p = 0.5 fitted after p = 1), AlexNet at
    # 0.02 (at 0.01 it memorizes slower), Inception w/o BN at 0.01 (at 0.03 and up it stays at chance).
    # Budgets in epochs let the random-label runs of Table 1 fit; its runs end when they fit, which
    # keeps it within the minute.
    "smoke": Protocol(
        "smoke",
        "digits",
        256,
        360,
        widths={"inception": 0.125, "inception-nobn": 0.125, "alexnet": 0.25, "mlp3x512": 0.25},
        train_sizes={"mlp1x512": 1437, "mlp3x512": 1437},
        lrs={"alexnet": 0.02, "inception-nobn": 0.01, "mlp1x512": 0.1, "mlp3x512": 0.1},
        lr_decay=1.0,
        epochs=400,
        budget_epochs=60,
        budgets={"alexnet": 400, "inception-nobn": 200, "mlp1x512": 400, "mlp3x512": 400},
        whole_budget=False,
        eval_epochs={"inception": 2, "inception-nobn": 2, "alexnet": 2},
        p_levels=(0.0, 0.5, 1.0),
        note="A smoke test of the paper's qualitative effects, not of its numbers: 8x8 grayscale "
        "digits (10 classes) instead of CIFAR-10, a few hundred images, narrow models.",
    ),
    # About an hour at most on 2 CPU cores per recipe: a CIFAR-10 subset, narrower conv nets,
    # constant rate. No CIFAR-10 files at the default places? Pass --dataset imagefolder
    # --data-dir cifar10-jpeg.tar.gz (the JPEG copy) or --dataset cifar10 --data-dir DIR.
    # The MLPs get more images: 3,000 are memorized in ~24 epochs whatever the labels (no slowdown).
    "cpu": Protocol(
        "cpu",
        "cifar10",
        3000,
        1000,
        widths={"inception": 0.125, "inception-nobn": 0.125, "alexnet": 0.25},
        train_sizes={"mlp1x512": 25000, "mlp3x512": 25000},
        lr_decay=1.0,
        epochs=300,
        budget_epochs=60,
        p_levels=(0.0, 0.25, 0.5, 0.75, 1.0),
        compiled=("inception",),
    ),  # 2.3x faster compiled (benchmarks/engine_choices.py --only compile)
    # The paper's own setting: CIFAR-10, full size, full models, lr x0.95 per epoch.
    "paper": Protocol("paper", "cifar10", None, None, lr_decay=0.95, epochs=100, budget_epochs=100),
}


def protocol(scale: str) -> Protocol:
    if scale not in PROTOCOLS:
        raise UserError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    return PROTOCOLS[scale]


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    specs: Callable  # (protocol, options, seeds) -> list[RunSpec]
    render: Callable  # (results, protocol, options, seeds) -> (figures, tables)
    protocols: dict = field(default_factory=dict)  # scale -> this recipe's own protocol (default: the scale's)
    # (store, results, protocol, log) -> None: computes and stores what render reads from each
    # result's ``measures`` after the sweep (None: render reads the runs alone)
    measure: Callable | None = None

    def protocol(self, scale: str):
        return self.protocols.get(scale) or protocol(scale)


#: Recipe name -> :class:`Recipe`; each recipe module adds its own with :func:`add_recipe`.
RECIPES: Registry[Recipe] = Registry("recipe")


def add_recipe(
    name: str,
    description: str,
    specs: Callable,
    render: Callable,
    protocols: dict | None = None,
    measure: Callable | None = None,
) -> Recipe:
    """Register recipe ``name``: ``specs(protocol, options, seeds)`` gives its runs, ``render(results,
    protocol, options, seeds)`` its (figures, tables); ``protocols`` maps a scale to its own protocol;
    ``measure``: see :class:`Recipe`."""
    recipe = Recipe(name, description, specs, render, dict(protocols or {}), measure)
    return RECIPES.add(name, recipe, description)


def make_spec(proto: Protocol, options: dict, model: str, seed: int, **fields) -> RunSpec:
    """A run of ``model`` under the scale's protocol; ``options`` may override the dataset (not a
    model's own, ``Protocol.datasets``)."""
    own = model in proto.datasets  # read from its default places: --data-dir names the other models' files
    base = dict(
        dataset=proto.datasets[model] if own else options.get("dataset") or proto.dataset,
        data_dir=None if own else options.get("data_dir"),
        train_size=proto.train_sizes.get(model, proto.train_size),
        test_size=proto.test_size,
        model=model,
        width=proto.widths.get(model, 1.0),
        lr=proto.lrs.get(model),
        lr_decay=proto.lr_decay,
        epochs=proto.epochs,
        eval_every=proto.eval_every,
        fit_threshold=proto.fit_threshold,
        seed=seed,
    )
    base.update(fields)
    spec = RunSpec(**base)
    if model in proto.eval_epochs:  # in steps of the spec's own batch size and (the scale's) training-set size
        spec = spec.replace(eval_every=proto.eval_epochs[model] * math.ceil(spec.train_size / spec.batch_size))
    return spec


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt(mean: float, std: float, digits: int = 2, scale: float = 1.0, seeds: int = 1) -> str:
    """'m ± s' (or 'm' with one seed); '' for nan."""
    if not np.isfinite(mean):
        return ""
    m = f"{mean * scale:.{digits}f}"
    return f"{m} ± {std * scale:.{digits}f}" if seeds > 1 else m


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def group(results, key) -> dict:
    """Results grouped by ``key(result)`` in first-seen order."""
    out: dict = {}
    for r in results:
        out.setdefault(key(r), []).append(r)
    return out
