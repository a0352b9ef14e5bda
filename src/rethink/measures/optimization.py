"""Optimization-speed measures from the run's evaluation rows (Jiang et al. 2020's "steps to reach
a loss" measures): how long training took to fit the (possibly random) labels."""

from __future__ import annotations

from rethink.measures.context import Context
from rethink.measures.registry import measure


def first_step(evals: list[dict], loss: float, after: int | None = None) -> int | None:
    """The first evaluation step (at or after ``after``) whose train_loss <= ``loss``; None if none."""
    rows = sorted((r for r in evals if r.get("train_loss") is not None), key=lambda r: r["step"])
    for row in rows:
        if (after is None or row["step"] >= after) and row["train_loss"] <= loss:
            return int(row["step"])
    return None


@measure("steps_to_loss_0.1", "first evaluation step with train_loss <= 0.1 (None if never)")
def steps_to_loss_01(ctx: Context) -> int | None:
    """The first evaluated step whose training loss is at most 0.1; None if it never was."""
    return first_step(ctx.evals, 0.1)


@measure("steps_0.1_to_0.01", "steps from train_loss <= 0.1 to train_loss <= 0.01 (None if not reached)")
def steps_01_to_001(ctx: Context) -> int | None:
    """Steps from the first evaluation with training loss <= 0.1 to the first (at or after it) with
    <= 0.01; None if either is never reached."""
    start = first_step(ctx.evals, 0.1)
    end = None if start is None else first_step(ctx.evals, 0.01, after=start)
    return None if end is None else end - start
