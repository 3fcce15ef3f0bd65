"""Localisation-net pieces: the identity-initialised regressor and a default conv net builder."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import TypeVar

import torch
from torch import nn

from torchstn._tracing import outside_modes
from torchstn._validation import check_int, check_module, check_number, check_size
from torchstn.nn._conv import Conv2d
from torchstn.transforms import Transform

__all__ = ["IdentityRegressor", "conv_localization", "declare_input", "make_regressor"]

_Net = TypeVar("_Net", bound=nn.Module)


class IdentityRegressor(nn.Linear):
    """The last layer of a localisation net: weights 0, bias the start values ``θ_0``.

    With ``θ_0`` a transform's identity (what a :class:`~torchstn.nn.SpatialTransformer`
    gives it) a new spatial transformer starts as the identity warp, whatever its input;
    training moves it away from there. Any other ``(P,)`` start works the same way: the
    spread head of :class:`~torchstn.nn.ProbabilisticSpatialTransformer` starts every
    input at one constant spread. Weight normalisations that divide by the weight's norm
    (``torch.nn.utils.parametrizations.weight_norm``, ``spectral_norm``) give 0/0 = NaN on
    these zero weights, as on any zero ``nn.Linear``: apply them to the layers before it.
    Being an ``nn.Linear``, it is also what ``model.apply(init)`` over every ``nn.Linear``
    re-initialises (Xavier weights moved an ST-CNN's θ 1.09 from the identity): skip it
    (``isinstance(m, IdentityRegressor)``) or call its ``reset_parameters()`` afterwards.

    Args:
        in_features: width of the features it reads.
        start: a :class:`~torchstn.transforms.Transform` (its identity θ) or the ``P``
            start values themselves.
    """

    def __init__(self, in_features: int, start: Transform | Sequence[float]) -> None:
        self._start_values = _start_values(start)
        super().__init__(check_int("in_features", in_features, 1), len(self._start_values))

    def reset_parameters(self) -> None:
        _zero_weight_start_bias(self, self._start_values)


class _LazyIdentityRegressor(nn.LazyLinear):
    """:class:`IdentityRegressor` whose ``in_features`` is read from the first input."""

    cls_to_become: type[nn.Linear] = IdentityRegressor

    def __init__(self, start: Transform | Sequence[float]) -> None:
        self._start_values = _start_values(start)
        super().__init__(len(self._start_values))

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.in_features != 0:
            _zero_weight_start_bias(self, self._start_values)


def _start_values(start: Transform | Sequence[float]) -> list[float]:
    """The ``P`` values a regressor's bias starts at: a transform's identity θ, or the given numbers."""
    if isinstance(start, Transform):
        # (cpu: built under torch.device("meta") too; outside the modes: under FakeTensorMode too)
        with outside_modes():
            return start.identity(device="cpu", dtype=torch.float64).tolist()
    if isinstance(start, (str, bytes)) or not isinstance(start, Sequence):
        raise TypeError(f"start must be a Transform or a sequence of numbers, got {type(start).__name__}")
    if len(start) == 0:
        raise ValueError("start must hold at least one value, got an empty sequence")
    values = [check_number(f"start[{i}]", v) for i, v in enumerate(start)]
    largest = torch.finfo(torch.float32).max  # (the bias's dtype: 1e39 became inf and every output NaN)
    for i, v in enumerate(values):
        if abs(v) > largest:
            raise ValueError(f"start[{i}] must fit in float32 (|value| <= {largest:.4g}), got {v!r}")
    return values


def _zero_weight_start_bias(linear: nn.Linear, values: list[float]) -> None:
    nn.init.zeros_(linear.weight)
    with torch.no_grad():
        linear.bias.copy_(torch.tensor(values, dtype=linear.bias.dtype, device=linear.bias.device))


def declare_input(net: _Net, in_channels: int, input_size: Sequence[int]) -> _Net:
    """Record on ``net`` the input it was built for, ``(B, in_channels, *input_size)``, and return it.

    A :class:`~torchstn.nn.SpatialTransformer` checks its input against this shape before
    running the localisation net, so a wrong channel count or size fails with a message
    that names them (instead of a matrix-shape error deep inside the net). Builders of
    localisation nets for a fixed input (:func:`conv_localization`, the paper models') call it.

    Example:
        >>> net = declare_input(nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 16)), 2, (8, 8))
        >>> net.input_shape
        (2, 8, 8)
    """
    check_module("net", net)
    net.input_shape = (check_int("in_channels", in_channels, 1), *_spatial_size(input_size, (1, 2, 3)))
    return net


def _spatial_size(input_size: Sequence[int], ranks: Sequence[int]) -> tuple[int, ...]:
    """Check a spatial input size of one of the ``ranks``: ``(L,)``, ``(H, W)`` or ``(D, H, W)``."""
    *others, last = [{1: "(L,)", 2: "(H, W)", 3: "(D, H, W)"}[r] for r in ranks]
    expected = f"{', '.join(others)} or {last}" if others else last
    if not isinstance(input_size, Sequence) or isinstance(input_size, str):
        raise TypeError(f"input_size must be {expected}, got {type(input_size).__name__}")
    if len(input_size) not in ranks:
        raise ValueError(f"input_size must be {expected}, got {input_size!r}")
    return check_size("input_size", input_size, len(input_size))


def _last_linear_width(module: nn.Module) -> int | None:
    widths = [m.out_features for m in module.modules() if isinstance(m, nn.Linear)]
    return widths[-1] if widths else None


def make_regressor(
    localization: nn.Module, start: Transform | Sequence[float], in_features: int | None = None
) -> nn.Linear:
    """The :class:`IdentityRegressor` that follows ``localization``, its bias at ``start``.

    Args:
        localization: the module whose flattened features the regressor reads.
        start: a :class:`~torchstn.transforms.Transform` (the bias starts at its identity
            θ) or the ``P`` start values themselves.
        in_features: the features' width. By default the width of the last ``nn.Linear``
            in ``localization`` (its features are that layer's output); without one it is
            inferred lazily from the first batch (run one forward pass before building
            the optimiser).
    """
    width = in_features if in_features is not None else _last_linear_width(localization)
    if width is None:
        return _LazyIdentityRegressor(start)
    return IdentityRegressor(check_int("in_features", width, 1), start)


def conv_localization(
    in_channels: int,
    input_size: Sequence[int],
    *,
    channels: Sequence[int] = (8, 10),
    kernel_sizes: Sequence[int] = (7, 5),
    hidden: int = 32,
) -> nn.Sequential:
    """A small default localisation net: ``[conv -> maxpool -> ReLU] * n -> FC -> ReLU``.

    Convolutions are padded to keep the size, and a 2x max-pool follows each while the
    map is at least 4 pixels on its shortest side, so any input size and channel count
    works (2-D images ``(H, W)`` or 3-D volumes ``(D, H, W)``, at any depth of a CNN).
    The defaults follow the PyTorch STN tutorial (8 and 10 filters of 7x7 and 5x5,
    32 hidden units).

    Args:
        in_channels: channels ``C`` of the input.
        input_size: spatial size of the input, ``(H, W)`` or ``(D, H, W)``.
        channels: filters per conv layer.
        kernel_sizes: kernel size per conv layer.
        hidden: width of the fully connected layer (the regressor's input).

    Example:
        >>> net = conv_localization(3, (32, 32))
        >>> net(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 32])
    """
    size = _spatial_size(input_size, (2, 3))
    layers, features = _conv_pool_stack(check_int("in_channels", in_channels, 1), size, channels, kernel_sizes)
    layers += [nn.Flatten(), nn.Linear(features, check_int("hidden", hidden, 1)), nn.ReLU(inplace=True)]
    return declare_input(nn.Sequential(*layers), in_channels, size)


def _conv_pool_stack(
    in_channels: int, size: Sequence[int], channels: Sequence[int], kernel_sizes: Sequence[int]
) -> tuple[list[nn.Module], int]:
    """The layers ``[conv (size kept) -> max-pool 2 while the map is >= 4 -> ReLU] * n`` and the
    width of their flattened output for an input of spatial ``size``."""
    for name, value in (("channels", channels), ("kernel_sizes", kernel_sizes)):
        if isinstance(value, str) or not isinstance(value, Collection):  # (None failed with "has no len()")
            raise TypeError(f"{name} must be a sequence of ints, got {type(value).__name__}")
    if len(channels) != len(kernel_sizes):
        raise ValueError(
            f"channels and kernel_sizes must have the same length, got {len(channels)} and {len(kernel_sizes)}"
        )
    conv, pool = (Conv2d, nn.MaxPool2d) if len(size) == 2 else (nn.Conv3d, nn.MaxPool3d)
    layers: list[nn.Module] = []
    c, size = in_channels, list(size)
    for i, (out, k) in enumerate(zip(channels, kernel_sizes)):
        # (plain ints: numpy's gave the layers numpy paddings and widths)
        out, k = check_int(f"channels[{i}]", out, 1), check_int(f"kernel_sizes[{i}]", k, 1)
        layers.append(conv(c, out, k, padding=k // 2))
        if k % 2 == 0:  # an even kernel with padding k // 2 grows the map by one
            size = [s + 1 for s in size]
        if min(size) >= 4:
            layers.append(pool(2))
            size = [s // 2 for s in size]
        layers.append(nn.ReLU(inplace=True))
        c = out
    return layers, c * math.prod(size)
