"""Figure 2b of the paper: Inception with and without batch norm, every explicit regularizer off;
training and test accuracy over training, with the best test accuracy so far shaded (what early
stopping could gain)."""

from __future__ import annotations

import numpy as np

from ..report import Figure, Table
from .common import LABELS, add_recipe, fmt, group, make_spec, mean_std

MODELS = ("inception", "inception-nobn")


def specs_2b(proto, options, seeds):
    return [
        make_spec(proto, options, m, s, randomize="none", stop_on_fit=False, epochs=proto.budget_of(m))
        for m in MODELS
        for s in range(seeds)
    ]


def render_2b(results, proto, options, seeds):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    rows = []
    for ax, (model, rs) in zip(axes, group(results, lambda r: r.spec.model).items()):
        n = min(len(r.evals) for r in rs)
        steps = np.array([e["step"] for e in rs[0].evals[:n]]) / 1000
        train = np.array([[e["train_acc"] for e in r.evals[:n]] for r in rs]).mean(0)
        test = np.array([[e["test_acc"] for e in r.evals[:n]] for r in rs]).mean(0)
        best = np.maximum.accumulate(test)
        ax.plot(steps, train, label="train")
        ax.plot(steps, test, label="test")
        ax.fill_between(steps, test, best, color="C1", alpha=0.25, label="best test so far (early stopping)")
        ax.set(title=LABELS[model], xlabel="thousand steps", ylim=(0, 1.01))
        ax.legend(fontsize=8, loc="lower right")
        final = mean_std([r.summary["test_acc"] for r in rs])
        best_each = mean_std([max(e["test_acc"] for e in r.evals) for r in rs])
        train_final = mean_std([r.summary["train_acc"] for r in rs])
        rows.append(
            [
                LABELS[model],
                fmt(*train_final, 2, 100, seeds),
                fmt(*final, 2, 100, seeds),
                fmt(*best_each, 2, 100, seeds),
                fmt(best_each[0] - final[0], 0, 2, 100),
            ]
        )
    axes[0].set_ylabel("accuracy")
    caption = (
        f"{LABELS['inception']} with and without batch norm, true labels, no weight decay, dropout or "
        f"augmentation. {proto.caption(options, results)} Mean over {seeds} seed(s)."
    )
    table = Table(
        "figure2b",
        ["model", "final train acc %", "final test acc %", "best test acc %", "early-stopping gain (points)"],
        rows,
        caption,
        [
            "Paper (Figure 2b, CIFAR-10): batch norm is worth 3-4 points of test accuracy; "
            "early stopping gains little on CIFAR-10."
        ],
    )
    return [Figure("figure2b", fig, caption)], [table]


add_recipe(
    "figure2b", "Inception with and without batch norm: accuracy curves, early-stopping gain", specs_2b, render_2b
)
