"""Beyond the paper: which bounds go vacuous under label noise, and which measure tracks the gap.

A grid of MLPs (corruption p x width x weight decay x seeds), all trained to the same stop rule (100%
training accuracy or the epoch cap); then every registered measure of each run (MEASURES.md sec. 1-2),
Dziugaite & Roy's PAC-Bayes certificate (sec. 3) of one run per p, and the correlations (sec. 4).
Draws (1) each measure against p with the "vacuous" line, (2) Bartlett et al.'s normalized margins
for true vs random labels (their Figure 2, here) and (3) the tau / psi table, best measures first.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..measures import MEASURES
from ..measures.correlate import correlate_runs, correlation_output
from ..measures.stored import FINISHED, bound_run, measure_run, stored_values
from ..report import Figure, Table
from .common import PROTOCOLS, add_recipe, group, make_spec, mean_std

MODEL = "mlp1x512"
# Bound-shaped measures (a bound of the form error <= train error + sqrt(v / m)), shown as sqrt(v / m)
# as Jiang et al. normalize them across runs (MEASURES.md sec. 1): at 1 or above the bound says nothing.
BOUND_LIKE = (
    "spectral_product_over_margin",
    "spectral_sum_over_margin",
    "frobenius_product_over_margin",
    "frobenius_sum_over_margin",
    "path_norm_over_margin",
    "pacbayes_init",
    "pacbayes_orig",
)
TABLED = ("pacbayes_init", "spectral_sum_over_margin")  # the normalized measures in the table beside p
# Per scale: the grid's widths (multipliers of the 512 hidden units) and weight decays, and the
# certificate's budget (posterior steps, weight samples), for the seed-0 run of the first width
# without weight decay at each p.
GRIDS = {
    "smoke": {"widths": (0.5, 1.0), "weight_decays": (0.0, 5e-4), "steps": 300, "samples": 20},
    "cpu": {"widths": (0.5, 1.0, 2.0), "weight_decays": (0.0, 5e-4), "steps": 2000, "samples": 50},
    "paper": {"widths": (0.5, 1.0, 2.0), "weight_decays": (0.0, 5e-4), "steps": 20000, "samples": 200},
}
PROTOCOLS_MEASURES = {
    "smoke": replace(PROTOCOLS["smoke"], train_sizes={MODEL: 1437}, lrs={MODEL: 0.1}, p_levels=(0.0, 0.5, 1.0)),
    "cpu": replace(
        PROTOCOLS["cpu"],
        dataset="fashion-mnist",
        train_size=4000,
        test_size=2000,
        train_sizes={},
        widths={},
        compiled=(),
        epochs=300,
        note="Fashion-MNIST (Debian's dataset-fashion-mnist) instead of CIFAR-10, 4,000 training images.",
    ),
    "paper": replace(
        PROTOCOLS["paper"],
        dataset="fashion-mnist",
        lr_decay=1.0,
        epochs=300,
        p_levels=(0.0, 0.25, 0.5, 0.75, 1.0),
        note="All 60,000 Fashion-MNIST training images.",
    ),
}


def specs(proto, options, seeds):
    grid = GRIDS[proto.scale]
    return [
        make_spec(proto, options, MODEL, s, randomize="partial-labels", p=p, width=w, weight_decay=wd)
        for p in proto.p_levels
        for w in grid["widths"]
        for wd in grid["weight_decays"]
        for s in range(seeds)
    ]


def _certified(results, proto) -> list:
    """The runs that get a certificate: seed 0, the first width, no weight decay, one per p."""
    grid = GRIDS[proto.scale]
    return [
        r
        for r in results
        if r.spec.seed == 0 and r.spec.width == grid["widths"][0] and r.spec.weight_decay == 0.0
        if r.status in FINISHED
    ]


def measure(db, results, proto, log=print) -> None:
    """Every registered measure of each finished run (default options), then the certificate of the
    runs :func:`_certified` picks; what the store already has is not computed again."""
    have = stored_values(db, {r.run_id for r in results})
    todo = [r for r in results if r.status in FINISHED and not set(MEASURES.names()) <= set(have.get(r.run_id, {}))]
    for i, r in enumerate(todo, 1):
        log(f"measures of run {r.run_id} ({i}/{len(todo)})")
        measure_run(db, r.run_id)
    grid = GRIDS[proto.scale]
    for r in _certified(results, proto):
        if "pacbayes_bound" not in have.get(r.run_id, {}):
            bound_run(db, r.run_id, steps=grid["steps"], samples=grid["samples"], log=log)


def _normalized(name: str, value, m: int):
    if value is None or not math.isfinite(value):
        return None
    return math.sqrt(max(value, 0.0) / m) if name in BOUND_LIKE else value


def _panels(results) -> list[str]:
    """The certificate, then the numeric measures some run has, in registry order (params, fixed by
    the width, and the sigmas, drawn as their flatness 1 / sigma^2, left out)."""
    names = ["pacbayes_bound", "pacbayes_kl", *MEASURES.names()]
    left_out = ("params", "pacbayes_sigma", "pacbayes_mag_sigma")
    return [n for n in names if n not in left_out and any(isinstance(r.measures.get(n), int | float) for r in results)]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure_vs_p(results, caption):
    plt = _plt()
    names = ["gap", *_panels(results)]
    cols = 5
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    configs = group(results, lambda r: (r.spec.width, r.spec.weight_decay))
    for ax, name in zip(axes.flat, names):
        for (width, wd), rs in configs.items():
            by_p = group(rs, lambda r: r.spec.p)
            ps, ys = [], []
            for p, prs in sorted(by_p.items()):
                vals = [_value(r, name) for r in prs]
                mean, _ = mean_std([v for v in vals if v is not None])
                if np.isfinite(mean):
                    ps.append(p)
                    ys.append(mean)
            if ys:
                ax.plot(ps, ys, marker="o", markersize=3, label=f"width {width:g}, wd {wd:g}")
        if name == "pacbayes_bound":
            chance = next(r.measures["_pacbayes"]["chance_error"] for r in results if r.measures.get("_pacbayes"))
            ax.axhline(chance, color="red", linestyle="--", linewidth=1, label="vacuous (guessing)")
            ax.set_ylim(0.0, 1.02)
        elif name in BOUND_LIKE:
            ax.axhline(1.0, color="red", linestyle="--", linewidth=1, label="vacuous")
        title = "certificate" if name == "pacbayes_bound" else name
        ax.set_title(f"sqrt({title} / m)" if name in BOUND_LIKE else title, fontsize=8)
        ax.tick_params(labelsize=7)
        if name in BOUND_LIKE or name.endswith("flatness") or name.startswith(("sharpness", "spectral", "frob")):
            ax.set_yscale("log")
        ax.set_xlabel("p", fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    if len(names) > 1:
        axes.flat[1].legend(fontsize=6)
    fig.tight_layout()
    return Figure("measures_vs_p", fig, caption)


def _value(r, name: str):
    if name == "gap":
        return r.train_acc - r.test_acc if r.train_acc is not None and r.test_acc is not None else None
    return _normalized(name, r.measures.get(name), r.measures.get("_examples") or r.spec.train_size)


def _figure_margins(results, proto, caption):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    runs = sorted(_certified(results, proto), key=lambda r: r.spec.p)
    cmap = plt.get_cmap("plasma")
    for r in runs:
        values = r.measures.get("normalized_margins")
        if values:
            color = cmap(0.85 * r.spec.p)
            ax.hist(values, bins=60, density=True, histtype="step", color=color, label=f"p = {r.spec.p:g}")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set(xlabel="normalized margin  margin_i m / (R_A ||X||_2)", ylabel="density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return Figure("normalized_margins", fig, caption)


def _table_vs_p(results, proto, seeds) -> Table:
    rows = []
    certified = {r.spec.p: r for r in _certified(results, proto)}
    for p, rs in sorted(group(results, lambda r: r.spec.p).items()):
        train, test = mean_std([r.train_acc for r in rs]), mean_std([r.test_acc for r in rs])
        cert = (certified.get(p).measures.get("_pacbayes") if p in certified else None) or {}
        rows.append(
            [
                f"{p:g}",
                str(len(rs)),
                f"{100 * train[0]:.1f}",
                f"{100 * test[0]:.1f}",
                f"{100 * (train[0] - test[0]):.1f}",
                *(f"{cert[k]:.3f}" if k in cert else "" for k in ("bound", "e_mc", "snn_test_error")),
                f"{cert['kl']:,.0f}" if "kl" in cert else "",
                *(_cell(mean_std([_value(r, n) for r in rs])[0]) for n in TABLED),
            ]
        )
    return Table(
        "measures_vs_p",
        [
            "p",
            "runs",
            "train acc %",
            "test acc %",
            "gap (points)",
            "certificate",
            "SNN train error",
            "SNN test error",
            "KL",
            *(f"sqrt({n} / m)" for n in TABLED),
        ],
        rows,
        notes=[
            "Accuracies and measures: mean over the runs at each p (every width, weight decay and seed). "
            "Certificate (Dziugaite & Roy, MEASURES.md sec. 3, probability 0.965): of the seed-0 run of the "
            "first width without weight decay; vacuous at or above the error of guessing."
        ],
    )


def _cell(x) -> str:
    return f"{x:.3g}" if x is not None and np.isfinite(x) else ""


def render(results, proto, options, seeds):
    results = [r for r in results if r.status in FINISHED and r.measures]
    if not results:
        return [], []
    grid = GRIDS[proto.scale]
    protocol = (
        f"MLP 1x512 at widths {', '.join(f'{w:g}' for w in grid['widths'])} (hidden units x 512), weight decay "
        f"{', '.join(f'{wd:g}' for wd in grid['weight_decays'])}, p = {', '.join(f'{p:g}' for p in proto.p_levels)}, "
        f"{seeds} seed(s). {proto.caption(options, results)} Measures on each run's whole training set with its "
        f"training labels; certificate: {grid['steps']} posterior steps, {grid['samples']} weight samples."
    )
    vs_p = (
        "Generalization gap, PAC-Bayes certificate and every measure against the label corruption p (mean over "
        "seeds per width and weight decay). Bound-shaped measures v are drawn as sqrt(v / m): a bound "
        "error <= train error + sqrt(v / m) is vacuous at or above the red line, and the constants and log "
        f"factors of the published bounds are left out. {protocol}"
    )
    margins = (
        "Bartlett et al.'s normalized margins (margin over R_A ||X||_2 / m, reference matrices at "
        "initialization) of the training set, one run per p (seed 0, the first width, no weight decay): "
        f"random labels push the distribution towards zero (their Figure 2). {protocol}"
    )
    result = correlate_runs(
        [{"run_id": r.run_id, "spec": r.spec.to_dict(), "summary": r.summary} for r in results],
        {r.run_id: r.measures for r in results},
    )
    corr = correlation_output(result)
    table = replace(corr.tables[0], name="measures_correlation", caption=corr.tables[0].caption + " " + protocol)
    tau = replace(corr.figures[0], name="measures_tau", caption=corr.figures[0].caption + " " + protocol)
    figures = [_figure_vs_p(results, vs_p), _figure_margins(results, proto, margins), tau]
    return figures, [replace(_table_vs_p(results, proto, seeds), caption=vs_p), table]


add_recipe(
    "measures",
    "generalization measures and the PAC-Bayes certificate against label noise; which measure tracks the gap",
    specs,
    render,
    PROTOCOLS_MEASURES,
    measure=measure,
)
