"""The model registry: each model family's module registers its factories here with :func:`register`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from rethink.registry import Registry

Factory = Callable[..., nn.Module]

#: Registered name -> ``factory(input_shape, num_classes, *, option=default, ...)``.
MODELS: Registry[Factory] = Registry("model")


def register(name: str, description: str, aliases: tuple[str, ...] = ()) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(input_shape, num_classes, *, option=default, ...)``.

    Options are the factory's keyword parameters after the first two; :func:`rethink.models.build`
    rejects any other option with a :class:`~rethink.errors.UserError`.
    """
    if not name or ":" in name or name != name.strip():
        raise ValueError(f"invalid model name {name!r}: must be non-empty, without ':' or surrounding spaces")
    return MODELS.register(name, description, aliases)
