"""Memorization of a stored run (``rethink memorization``): its per-example records (``--track-examples``)
read back, split into clean and corrupted examples (the run's own randomization, drawn again from its
seed), summarized (:func:`rethink.memorization.tracking.summary`) and drawn."""

from __future__ import annotations

import numpy as np
import torch

from rethink import api
from rethink.errors import UserError
from rethink.memorization.tracking import learned_order, summary, unpack, unpack_losses
from rethink.report import Figure, Output, Table
from rethink.spec import from_dict
from rethink.store import Store

SHOWN = 16  # examples learned first and last, listed and drawn


def records(db: Store, run_id: str) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """A stored run's row, evaluation steps, correct matrix (evaluation x example) and losses; a
    UserError naming the fix when the run is missing or was trained without ``--track-examples``."""
    run = db.get_run(run_id)
    if run is None:
        raise UserError(f"run {run_id!r} is not in the store {db.path}; 'rethink runs --store {db.path}' lists them")
    rows = db.examples(run_id)
    if not rows:
        raise UserError(
            f"run {run_id} has no per-example records; train it again with --track-examples "
            "(a new run id: the flag is part of the spec)"
        )
    n = len(unpack_losses(rows[0]["loss"]))
    steps = np.array([r["step"] for r in rows], dtype=np.int64)
    correct = np.stack([unpack(r["correct"], n) for r in rows])
    losses = np.stack([unpack_losses(r["loss"]) for r in rows])
    return run, steps, correct, losses


def memorization(db: Store, run_id: str) -> tuple[dict, api.Prepared]:
    """The memorization summary of stored run ``run_id`` (MEASURES.md sec. 5): per group (clean and
    corrupted examples) the first-learned steps, forgetting events, never-learned count and the
    curves of the fraction learned, the corrupted / clean ratio of median first-learned steps, and
    the indices of the examples learned first and last; with the run's data, prepared again from its
    spec (:func:`rethink.api.prepare`), whose training images :func:`memorization_output` draws."""
    run, steps, correct, losses = records(db, run_id)  # a run without records fails before the data loads
    prepared = api.prepare(from_dict(run["spec"]), torch.device("cpu"))
    changed = prepared.data.changed.cpu().numpy().astype(bool)
    out = summary(correct, steps, changed)
    order = learned_order(correct, steps)
    out.update(
        run_id=run_id,
        learned_first=[int(i) for i in order[:SHOWN]],
        learned_last=[int(i) for i in order[-SHOWN:]],
        final_loss={
            "clean": float(np.median(losses[-1][~changed])) if (~changed).any() else None,
            "corrupted": float(np.median(losses[-1][changed])) if changed.any() else None,
        },
    )
    return out, prepared


def memorization_output(result: dict, images: torch.Tensor | None = None) -> Output:
    """The summary as a table and a figure: fraction learned vs steps for clean and corrupted
    examples (Arpit et al.'s "signal first, noise later"); with ``images`` (the training images),
    the examples learned first and last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ("clean", "corrupted")
    rows = [
        [
            g,
            str(result[g]["examples"]),
            _num(result[g]["median_first_learned_step"]),
            str(result[g]["never_learned"]),
            str(result[g]["forgetting_events"]),
            str(result[g]["forgotten_examples"]),
        ]
        for g in groups
    ]
    ratio = result["median_ratio"]
    table = Table(
        "memorization",
        ["examples", "count", "median first-learned step", "never learned", "forgetting events", "forgotten"],
        rows,
        f"Run {result['run_id']}: when its training examples were first classified as their training label. "
        f"Corrupted / clean median first-learned step: {_num(ratio, 2)}.",
        [
            "First learned: the first evaluation at which the example is classified as its training label; a "
            "forgetting event: correct at one evaluation, wrong at the next (Toneva et al.); MEASURES.md sec. 5."
        ],
    )
    fig, axes = plt.subplots(1, 3 if images is not None else 1, figsize=(13 if images is not None else 5, 3.8))
    axes = np.atleast_1d(axes)
    for g in groups:
        if result[g]["examples"]:
            axes[0].plot(result["steps"], result[g]["fraction_learned"], label=f"{g} ({result[g]['examples']})")
    axes[0].set(xlabel="step", ylabel="fraction learned", ylim=(0, 1.02), title="learned at least once")
    axes[0].legend(fontsize=8)
    if images is not None:
        for ax, key in zip(axes[1:], ("learned_first", "learned_last")):
            ax.imshow(_grid(images[result[key]]), cmap="gray")
            ax.set(title=key.replace("_", " "), xticks=[], yticks=[])
    fig.tight_layout()
    return Output("memorization", "store", [table], [Figure("memorization", fig, table.caption)], [])


def _num(x, digits: int = 0) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _grid(images: torch.Tensor) -> np.ndarray:
    """Up to 16 images (N, C, H, W) as one 4 x 4 grayscale mosaic, each scaled to [0, 1]."""
    x = images.float().mean(1)  # channels to gray
    lo, hi = x.amin((1, 2), keepdim=True), x.amax((1, 2), keepdim=True)
    x = ((x - lo) / (hi - lo).clamp(min=1e-8)).numpy()
    side, (h, w) = 4, x.shape[1:]
    mosaic = np.ones((side * (h + 1), side * (w + 1)))
    for i, img in enumerate(x[: side * side]):
        r, c = divmod(i, side)
        mosaic[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    return mosaic
