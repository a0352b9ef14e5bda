"""Memorization dynamics and stability, the pure definitions (MEASURES.md sec. 5 and 6).

- :mod:`~rethink.memorization.tracking`: per-example records (packed bits, float16 losses) and the
  statistics over them: first-learned step, forgetting events, never-learned examples, learning
  curves per group (sec. 5).
- :mod:`~rethink.memorization.csr`: Arpit et al.'s critical sample ratio by LASS (sec. 5).
- :mod:`~rethink.memorization.stability`: the S / S' pair for empirical SGD stability and the
  normalized parameter distance (sec. 6).

Nothing here trains, stores or parses flags: the training loop's hook, the store and the command
line call these functions.
"""

from rethink.memorization.csr import check_radius, critical_sample_ratio, is_critical, lass_constants
from rethink.memorization.stability import Pair, choose_pairs, normalized_distance, positions, replace_one
from rethink.memorization.tracking import (
    first_learned,
    forgetting_events,
    fraction_learned,
    learned_order,
    never_learned,
    pack,
    pack_losses,
    summary,
    unpack,
    unpack_losses,
)

__all__ = [
    "Pair",
    "check_radius",
    "choose_pairs",
    "critical_sample_ratio",
    "first_learned",
    "forgetting_events",
    "fraction_learned",
    "is_critical",
    "lass_constants",
    "learned_order",
    "never_learned",
    "normalized_distance",
    "pack",
    "pack_losses",
    "positions",
    "replace_one",
    "summary",
    "unpack",
    "unpack_losses",
]
