"""Models by name: the CLI, studies, server and tests share one vocabulary.

A saved run stores `{"model": name, "model_args": {...}}`; `create(name, **args)` rebuilds it.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch.nn as nn

from digitlab.errors import DigitlabError

_MODELS: dict[str, tuple[str, Callable[..., nn.Module]]] = {}


def register(name: str, task: str):
    """Decorator: make a model constructor available as `name` for `task`."""

    def wrap(fn: Callable[..., nn.Module]):
        _MODELS[name] = (task, fn)
        return fn

    return wrap


def list_models(task: str | None = None) -> list[str]:
    _load_all()
    return sorted(n for n, (t, _) in _MODELS.items() if task is None or t == task)


def defaults(name: str) -> dict:
    """The constructor's keyword defaults of model `name` (the types its model_args should have)."""
    _load_all()
    params = inspect.signature(_MODELS[name][1]).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def create(name: str, task: str | None = None, **model_args) -> nn.Module:
    """Build model `name` from its arguments; with `task`, it must be one of that task's models."""
    _load_all()
    if name not in _MODELS:
        raise DigitlabError(
            f"unknown model {name!r}",
            f"choose one of: {', '.join(list_models())}",
        )
    if task is not None and _MODELS[name][0] != task:
        raise DigitlabError(f"model {name!r} is not a {task} model", f"use one of: {', '.join(list_models(task))}")
    try:
        return _MODELS[name][1](**model_args)
    except TypeError as exc:
        raise DigitlabError(
            f"bad arguments for model {name!r}: {exc}",
            "check the model_args keys (see `digitlab train --help` and the model's docstring)",
        ) from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _load_all() -> None:
    # Importing the model modules runs their @register decorators.
    from digitlab.models import cnn, ensemble, resnet  # noqa: F401

    for optional in ("unet", "siamese"):
        try:
            __import__(f"digitlab.models.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"digitlab.models.{optional}":
                raise
