"""The model registry: paper architectures by name (timm/torchvision style).

Builders are functions with keyword-only arguments, registered under a lower-case,
dash-separated name. :func:`create_model` drops ``None`` overrides, so a command line
whose options default to ``None`` never overrides a model's own defaults.
:func:`check_model_args` checks overrides against a builder's signature without
building anything (a CLI calls it before loading data); a builder whose ``**kwargs``
go on to another function declares so with :func:`forwards_kwargs`, so that its
signature lists every argument it really takes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar, overload

from torch import nn

from torchstn._validation import check_int, first_line

__all__ = [
    "check_model_args",
    "create_model",
    "forwards_kwargs",
    "get_model_builder",
    "list_models",
    "model_arguments",
    "register_model",
]

Builder = Callable[..., nn.Module]
_B = TypeVar("_B", bound=Builder)

_REGISTRY: dict[str, Builder] = {}

#: the data's arguments, named alike by every builder, checked once here (ints >= 1) rather than in each
#: builder: ``in_channels=0`` was blamed on input_size by the convolutional ones and built an empty FCN
_DATA_ARGS = ("in_channels", "num_classes")


def _add(name: str, builder: Builder) -> None:
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    if not name or name != name.lower() or " " in name or "_" in name:
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
def register_model(name: str | _B) -> Callable[[_B], _B] | _B:
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
    if callable(name):
        _add(name.__name__.replace("_", "-"), name)
        return name

    def decorator(builder: _B) -> _B:
        _add(name, builder)
        return builder

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` keeps names containing it.

    Example:
        >>> list_models("st-cnn-a")
        ['st-cnn-addition', 'st-cnn-aff']
    """
    if pattern is not None and not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
    names = sorted(_REGISTRY)
    return [n for n in names if pattern in n] if pattern else names


def get_model_builder(name: str) -> Builder:
    """The builder registered under ``name`` (``ValueError`` naming the known models otherwise)."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def forwards_kwargs(target: Callable[..., object], *, passed: Iterable[str] = ()) -> Callable[[_B], _B]:
    """Declare that a builder's ``**kwargs`` go on to ``target``, so its signature lists them.

    The builder's ``__signature__`` becomes its own named parameters followed by
    ``target``'s parameters, keyword-only, except those the builder already names or
    sets itself (``passed``); :func:`create_model`, :func:`model_arguments`,
    ``help()`` and the CLI then see every argument the builder takes. If ``target``
    itself takes ``**kwargs``, so does the declared signature.

    Example:
        >>> def head(features: int, depth: int = 2) -> torch.nn.Module: ...
        >>> @forwards_kwargs(head, passed=["features"])  # net calls head(4 * width, **head_kwargs)
        ... def net(*, width: int = 8, **head_kwargs: object) -> torch.nn.Module: ...
        >>> list(inspect.signature(net).parameters)
        ['width', 'depth']
    """
    skip = set(passed)

    def decorator(builder: _B) -> _B:
        own = inspect.signature(builder)
        params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
        names = {p.name for p in params} | skip
        forwarded = inspect.signature(target).parameters.values()
        params += [p.replace(kind=p.KEYWORD_ONLY) for p in forwarded
                   if p.name not in names and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        params += [p for p in own.parameters.values() if p.kind is p.VAR_KEYWORD
                   and any(q.kind is q.VAR_KEYWORD for q in forwarded)]
        # inspect.signature() reads __signature__, which the type of a function does not declare
        builder.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        return builder

    return decorator


def model_arguments(name: str) -> list[str] | None:
    """The keyword arguments the builder of ``name`` takes, sorted; ``None`` if it takes any.

    Example:
        >>> model_arguments("fcn")
        ['hidden', 'in_channels', 'input_size', 'num_classes', 'pool']
    """
    params = inspect.signature(get_model_builder(name)).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return sorted(params)


def check_model_args(name: str, args: Mapping[str, object]) -> None:
    """Check builder overrides for ``name`` without building the model.

    The same check :func:`create_model` makes, and like it this ignores ``None``
    values; it is cheap, so a command line can call it before loading any data.

    Raises:
        ValueError: unknown model name (the message lists the known ones), or an
            ``in_channels`` or ``num_classes`` below 1.
        TypeError: an argument the builder does not take (the message lists those it
            does), or an ``in_channels`` or ``num_classes`` that is not an int.

    Example:
        >>> check_model_args("fcn", {"widht": 3})
        Traceback (most recent call last):
            ...
        TypeError: model 'fcn' got unknown argument 'widht'; it takes: hidden, in_channels, input_size, num_classes, pool
    """
    accepted = model_arguments(name)
    if accepted is None:
        return
    unknown = sorted(k for k, v in args.items() if v is not None and k not in accepted)
    if unknown:
        raise TypeError(
            f"model {name!r} got unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(accepted)}"
        )
    for data_arg in _DATA_ARGS:  # (the builders check their own options)
        if args.get(data_arg) is not None:
            check_int(data_arg, args[data_arg], 1)


def create_model(name: str, **overrides: object) -> nn.Module:
    """Build a registered model; ``None`` overrides are ignored.

    Args:
        name: a name from :func:`list_models`, e.g. ``"st-cnn-aff"``.
        **overrides: keyword arguments of the builder (``in_channels``,
            ``input_size``, ``num_classes``, ...); ``None`` values are dropped.

    Raises:
        ValueError: unknown model name, or a width or size that builds no layer (``hidden=-5``:
            torch's "negative dimension" error, which named neither the model nor the argument).
        TypeError: an override the builder does not take (the message lists those it
            does; :func:`check_model_args` checks the same without building).

    Example:
        >>> model = create_model("st-cnn-aff", input_size=42, num_classes=None)
        >>> model(torch.rand(2, 1, 42, 42)).shape
        torch.Size([2, 10])
    """
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    check_model_args(name, kwargs)
    try:
        return get_model_builder(name)(**kwargs)
    except RuntimeError as err:
        if "negative dimension" not in str(err):
            raise
        torch_says = first_line(err)
        raise ValueError(f"a width or size among the arguments is negative (torch: {torch_says})") from None
