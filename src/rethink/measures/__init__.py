"""Generalization measures of a trained network (MEASURES.md sec. 1 and 2): norms, margins, flatness,
size and optimization speed, each a registered pure function of a :class:`Context`.

``compute(model, x, y, init=..., evals=...)`` returns ``{name: value}`` for every requested measure,
values plain JSON types (int, float, None, or a list of floats for a distribution measure), plus the
key ``"_unsupported"``, always present: ``{name: message}`` for each measure that cannot handle one of
the model's layers (its value is then None). Add a measure with one decorated function, see
:mod:`rethink.measures.registry`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# Importing the families registers their measures, in this order (the order names are listed in).
# isort: off
from rethink.measures import norms, margins, optimization, flatness  # noqa: F401

# isort: on
from rethink.measures.context import Context
from rethink.measures.layers import UnsupportedLayer
from rethink.measures.registry import DISTRIBUTIONS, MEASURES, measure

__all__ = ["compute", "Context", "UnsupportedLayer", "MEASURES", "DISTRIBUTIONS", "measure"]

UNSUPPORTED = "_unsupported"


def compute(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    init: nn.Module | None = None,
    evals: Iterable[dict] = (),
    measures: Iterable[str] | None = None,
    percentile: float = 10.0,
) -> dict:
    """The measures named in ``measures`` (all registered ones by default) of ``model`` (put in eval
    mode) on training inputs ``x`` and training labels ``y``; an unknown name is a UserError naming
    the nearest. All measures share one forward pass over ``x``."""
    names = [MEASURES.canonical(n) for n in (MEASURES.names() if measures is None else measures)]
    model.eval()
    if init is not None:
        init.eval()
    ctx = Context(model=model, x=x, y=y, init=init, evals=list(evals), percentile=percentile)
    result: dict = {}
    unsupported: dict[str, str] = {}
    for name in names:
        try:
            result[name] = _plain(MEASURES[name](ctx))
        except UnsupportedLayer as e:
            result[name] = None
            unsupported[name] = str(e.for_measure(name))
    result[UNSUPPORTED] = unsupported
    return result


def _plain(value):
    """A measure's value as plain Python (JSON-able) types."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return float(value)
