"""``rethink demo``: the six randomization tests and a short p sweep on the embedded digits set.

An MLP (one hidden layer of 512) is trained with the paper's optimizer (SGD, momentum 0.9, batch
128) at a constant learning rate until it fits its training set, once per test. The table and a
three-panel figure laid out like the paper's Figure 1 (learning curves, time to fit vs p, test
error vs p) are written to the output folder.
"""

from __future__ import annotations

import math
import os
import sys
import time

from .api import run
from .spec import RunSpec

BASE = RunSpec(dataset="digits", model="mlp1x512", lr=0.1, lr_decay=1.0, epochs=400, seed=0)
TESTS = ["none", "random-labels", "shuffled-pixels", "random-pixels", "gaussian"]
P_LEVELS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def demo_specs() -> list[tuple[str, RunSpec]]:
    specs = [(t if t != "none" else "true labels", BASE.replace(randomize=t)) for t in TESTS]
    specs += [(f"partial labels p={p:g}", BASE.replace(randomize="partial-labels", p=p)) for p in P_LEVELS[1:-1]]
    return specs


def demo(out: str = "demo-out", store: str | None = None) -> list:
    from tqdm import tqdm

    os.makedirs(out, exist_ok=True)
    store = store or os.path.join(out, "demo.sqlite")
    t0 = time.perf_counter()
    results = []
    specs = demo_specs()
    with tqdm(specs, file=sys.stderr, unit="run", desc="demo") as bar:
        for name, spec in bar:
            bar.set_postfix_str(name)
            results.append((name, run(spec, store)))
    rows = []
    for name, r in results:
        ttf = r.time_to_fit
        rows.append(
            [
                name,
                r.status,
                f"{100 * r.train_acc:.1f}",
                f"{100 * r.test_acc:.1f}",
                f"{ttf['epochs']:.0f}" if ttf else "-",
                f"{ttf['steps']}" if ttf else "-",
                f"{ttf['seconds']:.1f}" if ttf else "-",
            ]
        )
    header = ["test", "status", "train acc %", "test acc %", "epochs to fit", "steps to fit", "seconds to fit"]
    table = _markdown(rows, header)
    caption = (
        f"digits ({results[0][1].summary['n_train']} train / {results[0][1].summary['n_test']} test images, 8x8), "
        f"MLP 1x512, SGD momentum 0.9, batch 128, lr 0.1 constant, stop at 100% training accuracy "
        f"(checked every epoch), seed 0."
    )
    with open(os.path.join(out, "demo.md"), "w") as f:
        f.write(f"# rethink demo\n\n{caption}\n\n{table}\n")
    png = plot_demo(results, os.path.join(out, "demo.png"), caption)
    print(table, file=sys.stderr)
    print(
        f"\n{caption}\nwrote {os.path.join(out, 'demo.md')}, {png} and {store} in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )
    return results


def _markdown(rows, header) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# Each learning curve's look: true labels and shuffled pixels (and random pixels and Gaussian)
# fall on top of each other on digits, so every curve gets its own line style and marker.
CURVE_STYLES = {
    "true labels": ("-", "o"),
    "random-labels": ("--", "s"),
    "shuffled-pixels": (":", "^"),
    "random-pixels": ("-.", "D"),
    "gaussian": ((0, (6, 2, 1, 2, 1, 2)), "v"),
}


def smooth(values, window: int):
    """The centred mean of ``values`` over ``window`` points, narrowed near both ends so that the
    first and last points stay as they are (no lag, no pull towards the middle)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(len(v))
    half = np.minimum(np.minimum(window // 2, i), len(v) - 1 - i)
    return (c[i + half + 1] - c[i - half]) / (2 * half + 1)


def demo_figure(results, caption: str):
    """The three-panel figure: (a) learning curves, (b) time to fit vs p, (c) test error vs p."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    curves = [(name, r) for name, r in results if not name.startswith("partial")]
    for k, (name, r) in enumerate(curves):
        losses = np.asarray(r.step_losses)
        steps = np.arange(1, len(losses) + 1)
        ls, marker = CURVE_STYLES[name]
        (raw,) = a.plot(steps, losses, lw=0.6, alpha=0.3)
        # smoothed over one epoch of steps; markers spaced along the drawn line, offset per curve
        per_epoch = math.ceil(r.summary["n_train"] / r.spec.batch_size)
        a.plot(
            steps,
            smooth(losses, per_epoch),
            color=raw.get_color(),
            ls=ls,
            lw=1.6,
            marker=marker,
            ms=5,
            markevery=(0.02 + 0.015 * k, 0.12),
            label=name,
        )
    a.set_xscale("log")
    a.set(xlabel="step (log scale)", ylabel="training loss", title="(a) learning curves")
    a.set_ylim(0, 1.45 * a.get_ylim()[1])  # room above the curves for the legend
    a.legend(
        fontsize=8,
        loc="upper right",
        ncol=2,
        title="faint: each step; bold: mean over an epoch's steps",
        title_fontsize=7,
    )
    by_p = {0.0: results[0][1], 1.0: results[1][1]}
    by_p.update({r.spec.p: r for name, r in results if name.startswith("partial")})
    ps = sorted(by_p)
    base = by_p[0.0].time_to_fit["steps"] if by_p[0.0].time_to_fit else None
    rel = [by_p[p].time_to_fit["steps"] / base if base and by_p[p].time_to_fit else np.nan for p in ps]
    b.plot(ps, rel, "o-")
    b.set(xlabel="label corruption p", ylabel="time to fit / time at p = 0", title="(b) convergence slowdown")
    c.plot(ps, [1 - by_p[p].test_acc for p in ps], "o-", label="test error")
    c.axhline(0.9, color="gray", ls="--", label="chance")
    c.set(xlabel="label corruption p", ylabel="test error", title="(c) generalization error growth", ylim=(0, 1))
    c.legend(fontsize=8)
    fig.suptitle(caption, fontsize=8)
    fig.tight_layout()
    return fig


def plot_demo(results, path: str, caption: str) -> str:
    import matplotlib.pyplot as plt

    fig = demo_figure(results, caption)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
