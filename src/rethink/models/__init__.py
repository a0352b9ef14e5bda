"""Model registry: build a network by name, or import the user's own.

``build(name, input_shape, num_classes, **options)`` returns a plain ``torch.nn.Module`` that
maps float32 NCHW tensors of shape ``(N, *input_shape)`` to logits ``(N, num_classes)``.
``name`` is a registered name (see :func:`describe`) or ``package.module:factory``, where
``factory(input_shape, num_classes)`` returns an ``nn.Module``.

Builders never seed: call ``torch.manual_seed`` (or fork the RNG) before :func:`build` to fix
the initialization.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from typing import Callable

import torch
from torch import nn

from rethink.errors import UserCodeError, UserError
from rethink.models import alexnet as _alexnet
from rethink.models import inception as _inception
from rethink.models import inception_v3 as _inception_v3
from rethink.models import mlp as _mlp

__all__ = ["build", "register", "model_names", "describe", "num_params"]

Factory = Callable[..., nn.Module]

_REGISTRY: dict[str, tuple[Factory, str]] = {}

USER_MODEL_FORM = (
    "--model mypkg.nets:make_model, where make_model(input_shape, num_classes) returns a torch.nn.Module"
)
TRACEBACK_HINT = "rethink --debug or RETHINK_DEBUG=1 shows its traceback"


def register(name: str, description: str) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(input_shape, num_classes, *, option=default, ...)``.

    Options are the factory's keyword parameters after the first two; :func:`build` rejects
    any other option with a :class:`UserError`.
    """
    if not name or ":" in name or name != name.strip():
        raise ValueError(f"invalid model name {name!r}: must be non-empty, without ':' or surrounding spaces")

    def decorator(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = (factory, " ".join(description.split()))
        return factory

    return decorator


def model_names() -> list[str]:
    """Registered model names, in registration order."""
    return list(_REGISTRY)


def describe() -> list[tuple[str, str]]:
    """``(name, description)`` for every registered model, in registration order."""
    return [(name, desc) for name, (_, desc) in _REGISTRY.items()]


def num_params(module: nn.Module) -> int:
    """Number of trainable parameters (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def options_of(name: str) -> list[str]:
    """The option names a registered model accepts."""
    return _option_names(_lookup(name))


def build(name: str, input_shape: tuple[int, int, int], num_classes: int, **options) -> nn.Module:
    """Build model ``name`` for inputs ``(C, H, W)`` and ``num_classes`` output logits.

    Raises :class:`UserError` for an unknown name, an unknown or invalid option, or a user
    model (``package.module:factory``) that cannot be imported or does not return an nn.Module.
    """
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"model name must be a non-empty string, got {name!r}; choose one of: {', '.join(_REGISTRY)}")
    name = name.strip()
    if ":" in name:
        return _build_user_model(name, input_shape, num_classes, options)
    factory = _lookup(name)
    allowed = _option_names(factory)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        takes = ", ".join(allowed) if allowed else "no options"
        raise UserError(
            f"model {name!r} has no option {unknown[0]!r}; it takes: {takes}"
        )
    return factory(input_shape, num_classes, **options)


def _lookup(name: str) -> Factory:
    try:
        return _REGISTRY[name][0]
    except KeyError:
        pass
    valid = list(_REGISTRY)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    if not close:
        close = [v for v in valid if v.lower() == name.lower()]
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    own = ""
    if "." in name:
        own = f" To use your own model write package.module:factory, e.g. {USER_MODEL_FORM}."
    raise UserError(f"unknown model {name!r}; {hint}valid models: {', '.join(valid)}.{own}")


def _option_names(factory: Factory) -> list[str]:
    params = list(inspect.signature(factory).parameters.values())[2:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _import_module(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Console scripts do not put the working directory on sys.path; a user running
        # `rethink ... --model mynets:make` from the folder holding mynets.py expects it found.
        top = module_name.split(".")[0]
        cwd = os.getcwd()
        on_disk = os.path.exists(os.path.join(cwd, top + ".py")) or os.path.isdir(os.path.join(cwd, top))
        if e.name == top and on_disk and cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)
            return importlib.import_module(module_name)
        raise


def _build_user_model(spec: str, input_shape, num_classes, options: dict) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name or not attr or ":" in attr:
        raise UserError(f"bad user model {spec!r}: expected package.module:factory, e.g. {USER_MODEL_FORM}")
    try:
        module = _import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is reported as the user's mistake
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        raise UserError(
            f"could not import module {module_name!r} for model {spec!r} ({detail}); "
            f"make it importable (installed or on PYTHONPATH) and use {USER_MODEL_FORM}"
        ) from e
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise UserError(
                f"module {module_name!r} has no attribute {attr!r} for model {spec!r}; expected {USER_MODEL_FORM}"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise UserError(f"{spec!r} is a {type(factory).__name__}, not callable; expected {USER_MODEL_FORM}")
    shape = tuple(int(d) for d in input_shape)
    args = (shape, int(num_classes))
    try:
        inspect.signature(factory).bind(*args, **options)
    except TypeError as e:
        given = f" and options {', '.join(options)}" if options else ""
        raise UserError(
            f"{spec!r} cannot be called as factory(input_shape, num_classes){given} ({e}); expected {USER_MODEL_FORM}"
        ) from e
    except ValueError:
        pass  # no signature available (e.g. some builtins): just call it
    try:
        model = factory(*args, **options) if options else factory(*args)
    except Exception as e:  # noqa: BLE001 - the user's own code failed, not rethink
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        raise UserCodeError(f"model factory {spec!r} raised {detail}; fix the factory ({TRACEBACK_HINT})") from e
    if not isinstance(model, nn.Module):
        raise UserError(
            f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module; expected {USER_MODEL_FORM}"
        )
    _check_output(spec, model, shape, int(num_classes))
    return model


def _check_output(spec: str, model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Run a dummy batch of 2 through a user model and check it returns (2, num_classes) logits.

    Runs in eval mode under no_grad with a forked RNG, so it changes neither the model's
    state (BN statistics, training flag) nor the global random stream.
    """
    try:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = model.training
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            try:
                out = model(torch.zeros((2, *input_shape), dtype=torch.float32, device=device))
            finally:
                model.train(was_training)
    except Exception as e:  # noqa: BLE001
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        raise UserError(
            f"model {spec!r} failed on a dummy batch of shape {(2, *input_shape)} ({detail}); "
            f"it must map float32 (N, C, H, W) inputs to (N, {num_classes}) logits ({TRACEBACK_HINT})"
        ) from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"model {spec!r} returned {got} for a batch of shape {(2, *input_shape)}; "
            f"it must return logits of shape (N, {num_classes})"
        )


register("mlp", "multilayer perceptron; options hidden (units per layer, default (512,)), dropout, width")(_mlp.mlp)
register("mlp1x512", "MLP with one hidden layer of 512 units (paper's MLP 1x512)")(_mlp.mlp1x512)
register("mlp3x512", "MLP with three hidden layers of 512 units (paper's MLP 3x512)")(_mlp.mlp3x512)
register("alexnet", "paper's small AlexNet: 2x [conv5x5 64, max-pool, LRN], FC 384, FC 192")(_alexnet.alexnet)
register("inception", "paper's small Inception with batch norm (shift only)")(_inception.inception)
register("inception-nobn", "paper's small Inception without batch norm (conv biases instead)")(_inception.inception_nobn)
register("inception-v3", "Inception V3 for ImageNet (torchvision's), inputs of 75x75 or more; option dropout; "
         "needs rethink[imagenet]")(_inception_v3.inception_v3)
