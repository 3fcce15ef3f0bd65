"""The spatial transformer module: localisation net + grid generator + sampler."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchstn._validation import check_choice, check_size, check_tensor
from torchstn.nn._localization import make_regressor
from torchstn.sampling import MODES, PADDINGS, Mode, Padding, warp
from torchstn.transforms import Transform, get_transform

__all__ = ["SpatialTransformer"]


class SpatialTransformer(nn.Module):
    r"""A spatial transformer (Jaderberg et al., 2015, section 3).

    ``localization`` maps the input to features; the module appends a linear
    regressor that turns them into the ``(B, P)`` parameters θ of ``transform``
    (weights 0, bias the identity, so a new transformer is the identity warp), then
    generates the grid ``T_θ(G)`` of size ``output_size`` and samples the input there.

    Args:
        transform: a :class:`~torchstn.transforms.Transform` or its name.
        localization: any module mapping the input ``(B, C, H, W)`` to features
            ``(B, ...)`` (flattened before the regressor).
        output_size: spatial size of the output; ``None`` keeps the input's.
        in_features: width of the localisation features; by default the width of the
            last ``nn.Linear`` in ``localization``, else inferred from the first batch.
        mode, padding, align_corners, backend: passed to :func:`torchstn.sample`.

    Attributes:
        last_params: θ of the last forward pass, with its graph (for regularisers
            such as the engine's ``identity_reg``) and for diagnostics; ``None`` before
            the first call. Copies of the module (``copy.deepcopy``, pickle) hold it
            detached.

    The module is a plain ``nn.Module``: ``copy.deepcopy`` (EMA and SWA copies),
    pickle and ``state_dict`` work at any point of training, and the localisation
    net's input is checked against the shape it was built for (see
    :func:`~torchstn.nn.declare_input`).

    Convention:
        θ maps output points to input points in normalised (x, y) coordinates; the same
        ``align_corners`` is used for grid and sampler. Every channel is warped by the
        same grid, so the module works at any depth of a CNN.

    Example:
        >>> loc = stn.conv_localization(1, (28, 28))
        >>> st = stn.SpatialTransformer(stn.Affine(), loc)
        >>> x = torch.rand(4, 1, 28, 28)
        >>> torch.allclose(st(x), x, atol=1e-5)  # a new transformer is the identity
        True
        >>> st.predict_params(x).shape
        torch.Size([4, 6])
    """

    last_params: torch.Tensor | None

    def __init__(
        self,
        transform: Transform | str,
        localization: nn.Module,
        output_size: Sequence[int] | None = None,
        *,
        in_features: int | None = None,
        mode: Mode = "bilinear",
        padding: Padding = "zeros",
        align_corners: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(localization, nn.Module):
            raise TypeError(f"localization must be an nn.Module, got {type(localization).__name__}")
        self.transform = get_transform(transform)
        self.localization = localization
        self.regressor = make_regressor(localization, self.transform, in_features)
        self.output_size = None if output_size is None else check_size("output_size", output_size, self.transform.ndim)
        self.mode = check_choice("mode", mode, MODES)
        self.padding = check_choice("padding", padding, PADDINGS)
        self.align_corners = bool(align_corners)
        self.backend = backend
        self.last_params = None

    def predict_params(self, x: torch.Tensor) -> torch.Tensor:
        """θ for each input: ``(B, P)``."""
        return self.regressor(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The localisation net's features ``(B, F)`` of ``x``, its shape checked first.

        Raises:
            ValueError: ``x`` does not have the rank of the transform's inputs, or not the
                ``(C, *input_size)`` that the localisation net declares
                (:func:`~torchstn.nn.declare_input`), or the features are not
                ``in_features`` wide.
        """
        check_tensor("x", x, ndim=self.transform.ndim + 2)
        expected = getattr(self.localization, "input_shape", None)
        if expected is not None and tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}: the localisation "
                f"net was built for in_channels={expected[0]}, input_size={expected[1:]}"
            )
        features = self.localization(x).flatten(1)
        width = getattr(self.regressor, "in_features", 0)  # 0: a lazy regressor, inferred now
        if width and features.shape[1] != width:
            raise ValueError(
                f"the localisation net gives {features.shape[1]} features for x of shape {tuple(x.shape)}, the "
                f"regressor expects in_features={width}: build the localisation net for this input size"
            )
        return features

    def transform_input(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Warp ``x`` by given parameters with this module's output size and sampling options."""
        return warp(
            x, params, self.transform, self.output_size, self.mode, self.padding, self.align_corners,
            backend=self.backend,
        )

    def forward(self, x: torch.Tensor, return_params: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Warp ``x`` by the θ its localisation net predicts.

        Returns:
            the warped tensor ``(B, C, *output_size)``, or ``(warped, θ)`` with
            ``return_params=True``.
        """
        params = self.predict_params(x)
        self.last_params = params
        out = self.transform_input(x, params)
        return (out, params) if return_params else out

    def __getstate__(self) -> dict[str, object]:
        """What ``copy.deepcopy`` and pickle copy: the module, with the ``last_*`` records of
        the last forward pass detached from its graph (a tensor with a graph cannot be copied)."""
        state = self.__dict__.copy()
        for key, value in state.items():
            if key.startswith("last_"):
                state[key] = _detached(value)
        return state

    def extra_repr(self) -> str:
        return (
            f"transform={self.transform!r}, output_size={self.output_size}, mode={self.mode!r}, "
            f"padding={self.padding!r}, align_corners={self.align_corners}"
        )


def _detached(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value
