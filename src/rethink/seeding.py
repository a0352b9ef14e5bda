"""Separate, named random streams derived from one run seed.

Each purpose has a fixed index, so adding a stream never changes the others: the same seed
gives the same subset, randomization and initialization whatever else a spec changes.
"""

from __future__ import annotations

import numpy as np

STREAMS = {"subset": 0, "randomize": 1, "init": 2, "order": 3, "augment": 4, "dropout": 5}


def generator(seed: int, purpose: str, *extra: int) -> np.random.Generator:
    """A numpy Generator for one purpose (and e.g. one epoch, via ``extra``)."""
    return np.random.default_rng(np.random.SeedSequence([seed, STREAMS[purpose], *extra]))


def torch_seed(seed: int, purpose: str, *extra: int) -> int:
    """A 63-bit integer seed for torch generators, derived like :func:`generator`."""
    ss = np.random.SeedSequence([seed, STREAMS[purpose], *extra])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], np.uint64))
