"""The measure registry: a measure is one decorated pure function ``fn(ctx) -> float | None | list``.

Adding a measure::

    from rethink.measures.registry import measure

    @measure("my_measure", "one line saying what it is")
    def my_measure(ctx):
        return float(ctx.margin)

``distribution=True`` marks a measure whose value is a list (one number per training example).
"""

from __future__ import annotations

from collections.abc import Callable

from rethink.registry import Registry

MEASURES: Registry[Callable] = Registry("measure")
DISTRIBUTIONS: set[str] = set()  # names of measures whose value is a per-example list


def measure(name: str, description: str, *, distribution: bool = False) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(ctx)`` as measure ``name``."""

    def add(fn: Callable) -> Callable:
        MEASURES.add(name, fn, description)
        if distribution:
            DISTRIBUTIONS.add(name)
        return fn

    return add
