"""Localisation-net pieces: the identity-initialised regressor and a default conv net builder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchstn._validation import check_size
from torchstn.transforms import Transform

__all__ = ["IdentityRegressor", "conv_localization", "declare_input", "make_regressor"]


class IdentityRegressor(nn.Linear):
    """The last layer of a localisation net: weights 0, bias the transform's identity.

    A new spatial transformer therefore starts as the identity warp, whatever its
    input; training moves it away from there.
    """

    def __init__(self, in_features: int, transform: Transform) -> None:
        self._identity_values = transform.identity(dtype=torch.float64).tolist()
        super().__init__(in_features, transform.num_params)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        with torch.no_grad():
            self.bias.copy_(torch.tensor(self._identity_values, dtype=self.bias.dtype))


class _LazyIdentityRegressor(nn.LazyLinear):
    """:class:`IdentityRegressor` whose ``in_features`` is read from the first input."""

    cls_to_become = IdentityRegressor  # type: ignore[assignment]

    def __init__(self, transform: Transform) -> None:
        self._identity_values = transform.identity(dtype=torch.float64).tolist()
        super().__init__(transform.num_params)

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.in_features != 0:
            IdentityRegressor.reset_parameters(self)  # type: ignore[arg-type]


def declare_input(net: nn.Module, in_channels: int, input_size: Sequence[int]) -> nn.Module:
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
    net.input_shape = (int(in_channels), *(int(s) for s in input_size))
    return net


def _last_linear_width(module: nn.Module) -> int | None:
    widths = [m.out_features for m in module.modules() if isinstance(m, nn.Linear)]
    return widths[-1] if widths else None


def make_regressor(localization: nn.Module, transform: Transform, in_features: int | None = None) -> nn.Linear:
    """The identity-initialised regressor that follows ``localization``.

    ``in_features`` is, in order: the argument; the width of the last ``nn.Linear`` in
    ``localization`` (its features are that layer's output); otherwise it is inferred
    lazily from the first batch (run one forward pass before building the optimiser).
    """
    width = in_features if in_features is not None else _last_linear_width(localization)
    if width is None:
        return _LazyIdentityRegressor(transform)
    if not isinstance(width, int) or width <= 0:
        raise ValueError(f"in_features must be a positive int, got {width!r}")
    return IdentityRegressor(width, transform)


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
    if not isinstance(in_channels, int) or in_channels <= 0:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if len(channels) != len(kernel_sizes):
        raise ValueError(
            f"channels and kernel_sizes must have the same length, got {len(channels)} and {len(kernel_sizes)}"
        )
    if not isinstance(input_size, Sequence) or len(input_size) not in (2, 3):
        raise ValueError(f"input_size must be (H, W) or (D, H, W), got {input_size!r}")
    size = list(check_size("input_size", tuple(input_size), len(input_size)))
    conv, pool = (nn.Conv2d, nn.MaxPool2d) if len(size) == 2 else (nn.Conv3d, nn.MaxPool3d)
    layers: list[nn.Module] = []
    c = in_channels
    for out, k in zip(channels, kernel_sizes):
        layers.append(conv(c, out, k, padding=k // 2))
        if k % 2 == 0:  # an even kernel with padding k // 2 grows the map by one
            size = [s + 1 for s in size]
        if min(size) >= 4:
            layers.append(pool(2))
            size = [s // 2 for s in size]
        layers.append(nn.ReLU(inplace=True))
        c = out
    features = c * int(torch.tensor(size).prod())
    layers += [nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(inplace=True)]
    return declare_input(nn.Sequential(*layers), in_channels, input_size)
