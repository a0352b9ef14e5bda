"""Command-line flags made from dataclasses: each field is a flag, with the field's default as the
flag's default and ``metadata["help"]`` as its help, so neither is written twice.

A field's type picks the flag's kind: ``int`` and ``float`` (also ``| None``) parse as such, a
``bool`` is a switch to its other value (``--x``, or ``--no-x`` when the default is True; ``bool |
None`` gives both ``--x`` and ``--no-x``), anything else stays text unless the metadata says how to
parse it (argparse's ``type``, e.g. :func:`floats`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing


def option(default=dataclasses.MISSING, help: str = "", **flag) -> typing.Any:
    """A dataclass field that is also a flag; ``flag`` holds argparse's keywords for it (``type``,
    ``choices``, ``metavar``, ``action``) and ``name``: the flag when it is not ``--field-name``, or
    the field's own name to make it positional. No default makes the flag required."""
    return dataclasses.field(default=default, metadata={"help": help, **flag})


def add_flags(
    parser: argparse.ArgumentParser, cls: type, names=None, defaults: dict | None = None, overlay: bool = False
) -> None:
    """Add a flag to ``parser`` for each field of the dataclass ``cls`` (or each one in ``names``).

    ``defaults`` replaces some fields' defaults for this parser. With ``overlay``, a flag that is not
    given stays out of the namespace and a given value stays text: the values are laid over a
    file's and checked together (RunSpec's flags over a ``--spec`` file).
    """
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if names is None or f.name in names:
            suppress = overlay and f.name not in defaults
            _add(parser, f, hints[f.name], defaults.get(f.name, f.default), suppress)


def _add(parser: argparse.ArgumentParser, f: dataclasses.Field, hint, default, suppress: bool) -> None:
    kwargs = {k: v for k, v in f.metadata.items() if k not in ("help", "name")}
    name = f.metadata.get("name", "--" + f.name.replace("_", "-"))
    kind = _kind(hint)
    if kind is bool and default is None:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind is bool:
        kwargs["action"] = "store_false" if default else "store_true"
        name = f.metadata.get("name", "--no-" + name[2:] if default else name)
    elif kind in (int, float) and not suppress:
        kwargs.setdefault("type", kind)
    help = (f.metadata.get("help", "") + _shown(default)).replace("%", "%%")
    if not name.startswith("-"):  # positional: argparse takes its dest from the name
        parser.add_argument(name, help=help, **kwargs)
        return
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = argparse.SUPPRESS if suppress else default
    parser.add_argument(name, dest=f.name, help=help, **kwargs)


def _kind(hint) -> type | None:
    """The type of a field, ``X | None`` read as ``X``; None for other unions."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return hint


def _shown(default) -> str:
    if default is None or default is dataclasses.MISSING or isinstance(default, bool) or default == ():
        return ""
    return f" (default: {default})"


def build(cls: type, args: argparse.Namespace):
    """The dataclass ``cls`` made from the parsed flags of its fields."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def seconds(text: str) -> float:
    """A finite number of seconds, 0 or more: with NaN no checkpoint would ever be written."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0 (0: every epoch), e.g. 60")
    return value


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of numbers, e.g. 0,0.2,0.4") from None


def int_or_text(text: str) -> int | str:
    """A side length or a word (``--crop 28``, ``--crop auto``)."""
    return int(text) if text.isdigit() else text


def help_of(cls: type, name: str) -> str:
    """The help of field ``name`` of ``cls``, for a flag of another command that means the same."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)
