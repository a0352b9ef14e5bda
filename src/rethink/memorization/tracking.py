"""Per-example memorization records and their statistics (MEASURES.md sec. 5).

The record is a matrix ``correct[e, i]``: at evaluation ``e`` (taken at training step ``steps[e]``),
is training example ``i`` classified as its *training* label (the run's label, corrupted or not)?
Sec. 5: "Per-example record at every evaluation: is example i classified as its training label?
From it: the first-learned evaluation, forgetting events (learned, then misclassified later;
Toneva et al.), never-learned examples; separately for clean and corrupted (label changed)
examples."

Definitions used here (sec. 5 says "first-learned", not "learned and stays learned"):

- first learned: the step of the first evaluation at which the example is correct; -1 if never.
- forgetting event (Toneva et al. 2019): correct at evaluation e, incorrect at evaluation e + 1.
- never learned: incorrect at every evaluation.
- corrupted: the label was changed by the randomization (``Randomized.changed``), clean otherwise.

Storage: one evaluation's record is ``pack(correct_e)`` (``ceil(n / 8)`` bytes, numpy ``packbits``
with ``bitorder="little"``: example i is bit ``i % 8`` of byte ``i // 8``, bit 0 the least
significant; unused high bits of the last byte are 0) and optionally ``pack_losses(loss_e)``
(``n`` bytes, log-scale codes).
"""

from __future__ import annotations

import numpy as np

NEVER = -1  # first_learned's value for an example never classified correctly


def pack(correct: np.ndarray) -> bytes:
    """A 1-D bool array of n as ``ceil(n / 8)`` bytes, little bit order (example i = bit i % 8 of
    byte i // 8)."""
    bits = np.asarray(correct, dtype=bool)
    if bits.ndim != 1:
        raise ValueError(f"pack takes a 1-D array, got shape {bits.shape}")
    return np.packbits(bits, bitorder="little").tobytes()


def unpack(data: bytes, n: int) -> np.ndarray:
    """The inverse of :func:`pack`: a bool array of ``n``."""
    if len(data) != (n + 7) // 8:
        raise ValueError(f"{len(data)} bytes cannot hold exactly {n} packed bits ({(n + 7) // 8} bytes)")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n, bitorder="little").astype(bool)


# Losses are stored as one byte each: the code c in 0..254 stands for LOSS_MIN * LOSS_STEP**c (log scale,
# so every loss from 1e-4 to 100 keeps its value within 2.8%), 255 for a loss that is not finite. Float16
# (2 bytes) left a store at 2 MB per 100 evaluations of 10,000 examples, twice the budget.
LOSS_MIN, LOSS_MAX = 1e-4, 100.0
LOSS_STEP = (LOSS_MAX / LOSS_MIN) ** (1 / 254)


def pack_losses(losses: np.ndarray) -> bytes:
    """Per-example losses as one byte each (log-scale codes, see ``LOSS_MIN``): losses at or below
    1e-4 become 1e-4, at or above 100 become 100, a non-finite one stays inf."""
    x = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(x)
    codes = np.log(np.clip(np.where(finite, x, 1.0), LOSS_MIN, LOSS_MAX) / LOSS_MIN) / np.log(LOSS_STEP)
    return np.where(finite, np.rint(codes), 255).astype(np.uint8).tobytes()


def unpack_losses(data: bytes) -> np.ndarray:
    """The inverse of :func:`pack_losses`, as float32 (each loss within 2.8% of the packed one, clipped
    to [1e-4, 100]; inf for a non-finite one)."""
    codes = np.frombuffer(data, dtype=np.uint8).astype(np.float64)
    values = LOSS_MIN * LOSS_STEP**codes
    return np.where(codes == 255, np.inf, values).astype(np.float32)


def _check(correct: np.ndarray, steps: np.ndarray | None = None) -> np.ndarray:
    correct = np.asarray(correct)
    if correct.ndim != 2 or correct.dtype != bool:
        raise ValueError(f"correct must be a 2-D bool array (evaluation, example), got {correct.dtype} {correct.shape}")
    if steps is not None and len(steps) != correct.shape[0]:
        raise ValueError(f"{len(steps)} steps for {correct.shape[0]} evaluations")
    return correct


def first_learned(correct: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Per example, ``steps[e]`` of the first evaluation e at which it is correct; -1 if never (sec. 5)."""
    correct = _check(correct, steps)
    if correct.shape[0] == 0:
        return np.full(correct.shape[1], NEVER, dtype=np.int64)
    first = correct.argmax(axis=0)  # index of the first True (0 when there is none)
    return np.where(correct.any(axis=0), np.asarray(steps, dtype=np.int64)[first], NEVER)


def forgetting_events(correct: np.ndarray) -> np.ndarray:
    """Per example, the number of correct -> incorrect transitions between consecutive evaluations
    (Toneva et al. 2019; sec. 5)."""
    correct = _check(correct)
    return (correct[:-1] & ~correct[1:]).sum(axis=0).astype(np.int64)


def never_learned(correct: np.ndarray) -> np.ndarray:
    """Bool mask of the examples incorrect at every evaluation (sec. 5)."""
    return ~_check(correct).any(axis=0)


def fraction_learned(correct: np.ndarray, mask: np.ndarray | None = None, *, cumulative: bool = False) -> np.ndarray:
    """Per evaluation, the fraction of the group ``mask`` (default: every example) classified as its
    training label at that evaluation; with ``cumulative=True`` the fraction learned at or before it
    (first-learned, so it never decreases). NaN for an empty group (sec. 5)."""
    correct = _check(correct)
    group = correct if mask is None else correct[:, np.asarray(mask, dtype=bool)]
    if group.shape[1] == 0:
        return np.full(correct.shape[0], np.nan)
    if cumulative:
        group = np.logical_or.accumulate(group, axis=0)
    return group.mean(axis=1)


def learned_order(correct: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Example indices from first learned to last learned; ties by index, never-learned last (by index)."""
    first = first_learned(correct, steps)
    key = np.where(first == NEVER, np.iinfo(np.int64).max, first)
    return np.argsort(key, kind="stable")


def _median_step(first: np.ndarray) -> float | None:
    learned = first[first != NEVER]
    return float(np.median(learned)) if len(learned) else None


def _group(correct: np.ndarray, first: np.ndarray, events: np.ndarray, mask: np.ndarray) -> dict:
    return {
        "examples": int(mask.sum()),
        "never_learned": int((first[mask] == NEVER).sum()),
        "median_first_learned_step": _median_step(first[mask]),
        "forgetting_events": int(events[mask].sum()),
        "forgotten_examples": int((events[mask] > 0).sum()),
        "fraction_correct": [float(v) for v in fraction_learned(correct, mask)],
        "fraction_learned": [float(v) for v in fraction_learned(correct, mask, cumulative=True)],
    }


def summary(correct: np.ndarray, steps: np.ndarray, corrupted_mask: np.ndarray) -> dict:
    """Plain-JSON statistics per group (sec. 5): ``{"steps", "clean", "corrupted", "median_ratio"}``.

    Each group: examples, never_learned (count), median_first_learned_step (median over the group's
    learned examples; None if none), forgetting_events (total), forgotten_examples (at least one
    event), fraction_correct and fraction_learned (curves per evaluation, see
    :func:`fraction_learned`). ``median_ratio`` = corrupted median / clean median, None when either
    is None or the clean median is 0.
    """
    correct = _check(correct, steps)
    corrupted = np.asarray(corrupted_mask, dtype=bool)
    if corrupted.shape != (correct.shape[1],):
        raise ValueError(f"corrupted_mask has shape {corrupted.shape}, expected ({correct.shape[1]},)")
    first, events = first_learned(correct, steps), forgetting_events(correct)
    clean = _group(correct, first, events, ~corrupted)
    bad = _group(correct, first, events, corrupted)
    a, b = bad["median_first_learned_step"], clean["median_first_learned_step"]
    return {
        "steps": [int(s) for s in steps],
        "clean": clean,
        "corrupted": bad,
        "median_ratio": a / b if a is not None and b else None,
    }
