"""Model registry: build a network by name, or import the user's own.

``build(name, input_shape, num_classes, **options)`` returns a plain ``torch.nn.Module`` that
maps float32 NCHW tensors of shape ``(N, *input_shape)`` to logits ``(N, num_classes)``.
``name`` is a registered name (see :func:`describe`) or ``package.module:factory``, where
``factory(input_shape, num_classes)`` returns an ``nn.Module``.

Builders never seed: call ``torch.manual_seed`` (or fork the RNG) before :func:`build` to fix
the initialization.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

import torch
from torch import nn

from rethink.errors import UserCodeError, UserError
from rethink.models.registry import MODELS, Factory, register

# Importing the families registers their models, in this order (the order names are listed in).
# isort: off
from rethink.models import mlp, alexnet, inception, inception_v3  # noqa: F401
# isort: on

__all__ = ["build", "register", "model_names", "describe", "num_params", "options_of", "MODELS"]

USER_MODEL_FORM = "--model mypkg.nets:make_model, where make_model(input_shape, num_classes) returns a torch.nn.Module"
TRACEBACK_HINT = "rethink --debug or RETHINK_DEBUG=1 shows its traceback"


def model_names() -> list[str]:
    """Registered model names, in registration order."""
    return MODELS.names()


def describe() -> list[tuple[str, str]]:
    """``(name, description)`` for every registered model, in registration order."""
    return MODELS.describe()


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
        raise UserError(f"model name must be a non-empty string, got {name!r}; choose one of: {', '.join(MODELS)}")
    name = name.strip()
    if ":" in name:
        return _build_user_model(name, input_shape, num_classes, options)
    factory = _lookup(name)
    allowed = _option_names(factory)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        takes = ", ".join(allowed) if allowed else "no options"
        raise UserError(f"model {name!r} has no option {unknown[0]!r}; it takes: {takes}")
    return factory(input_shape, num_classes, **options)


def _lookup(name: str) -> Factory:
    if name in MODELS:
        return MODELS[name]
    # A dotted name is most likely a user model missing its ':', so the message shows that form.
    own = f"; to use your own model write package.module:factory, e.g. {USER_MODEL_FORM}" if "." in name else ""
    raise UserError(MODELS.unknown(name) + own)


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
        raise UserError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module; expected {USER_MODEL_FORM}")
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
