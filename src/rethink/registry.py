"""Named things a user picks by name: datasets, models, recipes, executors, kernels, feature maps.

Each kind has one :class:`Registry`; a new entry is one decorated function (or one ``add`` call)
in its own module, and an unknown name gets the same one-line error everywhere, with the nearest
names suggested.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


def suggest(name: object, options: Iterable[str]) -> list[str]:
    """The options nearest to ``name``: close spellings, else the same name in another case."""
    options = list(options)
    near = difflib.get_close_matches(str(name), options, n=3, cutoff=0.5)
    return near or [k for k in options if k.lower() == str(name).lower()]


def unknown_name(kind: str, name: object, options: Iterable[str], near: Iterable[str] | None = None) -> str:
    """The one-line message for a ``kind`` named ``name`` that is not one of ``options``; ``near``
    (default: :func:`suggest`'s) are the names it suggests."""
    options = list(options)
    near = list(suggest(name, options) if near is None else near)
    hint = f"did you mean {' or '.join(map(repr, near))}? " if near else ""
    return f"unknown {kind} {str(name)!r}; {hint}choose one of: {', '.join(options)}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    value: T
    description: str = ""
    aliases: tuple[str, ...] = field(default=())


class Registry(Generic[T]):
    """Name -> entry (value, one-line description, aliases), in registration order.

    ``kind`` names the things in messages ("dataset"); ``listed`` is how the error lists the valid
    names when they are not simply the registered ones (e.g. "imagefolder:PATH")."""

    def __init__(self, kind: str, listed: Callable[[str], str] | None = None):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        self._listed = listed or (lambda name: name)

    def add(self, name: str, value: T, description: str = "", aliases: tuple[str, ...] = ()) -> T:
        """Register ``value`` under ``name`` (and ``aliases``); returns ``value``."""
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.kind} name {name!r}: must be non-empty, without surrounding spaces")
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._entries[name] = Entry(name, value, " ".join(description.split()), tuple(aliases))
        self._aliases.update({a: name for a in aliases})
        return value

    def register(self, name: str, description: str = "", aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda value: self.add(name, value, description, aliases)

    def canonical(self, name: str) -> str:
        """The registered name that ``name`` (a name or an alias) stands for; a :class:`UserError`
        naming the nearest valid names when there is none."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise UserError(self.unknown(name))

    def entry(self, name: str) -> Entry[T]:
        return self._entries[self.canonical(name)]

    def __getitem__(self, name: str) -> T:
        return self.entry(name).value

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def describe(self) -> list[tuple[str, str]]:
        """``(name, description)`` of every entry, in registration order."""
        return [(e.name, e.description) for e in self._entries.values()]

    def unknown(self, name: object) -> str:
        """The one-line message for a name that is not registered."""
        near = dict.fromkeys(self.canonical(k) for k in suggest(name, [*self._entries, *self._aliases]))
        return unknown_name(self.kind, name, map(self._listed, self), map(self._listed, near))
