"""The model registry: paper architectures by name (timm/torchvision style).

Builders are functions with keyword-only arguments, registered under a lower-case,
dash-separated name. :func:`create_model` drops ``None`` overrides, so a command line
whose options default to ``None`` never overrides a model's own defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar, overload

from torch import nn

__all__ = ["create_model", "get_model_builder", "list_models", "register_model"]

Builder = Callable[..., nn.Module]
_B = TypeVar("_B", bound=Builder)

_REGISTRY: dict[str, Builder] = {}


def _add(name: str, builder: Builder) -> None:
    if not isinstance(name, str) or not name or name != name.lower() or " " in name or "_" in name:
        raise ValueError(f"model name must be lower-case with dashes (e.g. 'st-cnn-aff'), got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"a model named {name!r} is already registered (by {_REGISTRY[name].__module__})")
    if not callable(builder):
        raise TypeError(f"a model builder must be callable, got {type(builder).__name__}")
    _REGISTRY[name] = builder


@overload
def register_model(name: str) -> Callable[[_B], _B]: ...
@overload
def register_model(name: _B) -> _B: ...
def register_model(name):  # type: ignore[no-untyped-def]
    """Register a model builder under a name; a name used twice is an error.

    Use as ``@register_model("st-cnn-aff")`` or bare ``@register_model`` (the
    function's name with ``_`` turned into ``-``). The builder takes keyword-only
    arguments and returns an ``nn.Module``.

    Example:
        >>> @register_model("my-net")
        ... def my_net(*, width: int = 8) -> torch.nn.Module:
        ...     return torch.nn.Linear(width, 2)
        >>> create_model("my-net", width=4, bias=None)  # None overrides are ignored
        Linear(in_features=4, out_features=2, bias=True)
        >>> unregister = _REGISTRY.pop("my-net")  # (keep the doctest from leaking)
    """
    if callable(name) and not isinstance(name, str):
        _add(name.__name__.replace("_", "-"), name)
        return name

    def decorator(builder: _B) -> _B:
        _add(name, builder)
        return builder

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` keeps names containing it.

    Example:
        >>> [m for m in list_models("st-cnn") if m.endswith("aff")]
        ['st-cnn-aff']
    """
    names = sorted(_REGISTRY)
    return [n for n in names if pattern in n] if pattern else names


def get_model_builder(name: str) -> Builder:
    """The builder registered under ``name`` (``ValueError`` naming the known models otherwise)."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **overrides: object) -> nn.Module:
    """Build a registered model; ``None`` overrides are ignored.

    Args:
        name: a name from :func:`list_models`, e.g. ``"st-cnn-aff"``.
        **overrides: keyword arguments of the builder (``in_channels``,
            ``input_size``, ``num_classes``, ...); ``None`` values are dropped.

    Raises:
        ValueError: unknown model name.
        TypeError: an override the builder does not take (the message lists those it does).

    Example:
        >>> model = create_model("st-cnn-aff", input_size=42, num_classes=None)
        >>> model(torch.rand(2, 1, 42, 42)).shape
        torch.Size([2, 10])
    """
    builder = get_model_builder(name)
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    params = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(
                f"model {name!r} got unknown argument(s) {unknown}; it takes {sorted(params)}"
            )
    return builder(**kwargs)
