"""The models of the IC-STN paper: Lin & Lucey, *Inverse Compositional Spatial Transformer
Networks* (CVPR 2017, arXiv 1612.03897).

The perturbed-MNIST experiment (section 4.2, Table 1): ``icstn-cnn``, ``icstn-stn``,
``c-stn-1``, ``ic-stn-1``, ``ic-stn-2``, ``ic-stn-4`` on 28x28 digits, with a homography
warp, the geometric predictor ``conv 7x7 (4) -> conv 7x7 (8) -> max-pool -> FC 48 -> FC 8``
(last layer zero-initialised, i.e. the identity) and the classifier ``conv 9x9 (3) -> FC
10`` after the warp. Their forward takes the experiment's known perturbation as
``init_params``: the compositional models start their estimate there on the *original*
digit, the STN and CNN baselines see the digit resampled by it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchstn.models._base import STClassifier, as_size, feature_width
from torchstn.models._registry import register_model
from torchstn.nn import CascadedSpatialTransformer, Conv2d, declare_input
from torchstn.sampling import Mode, Padding, SamplerOptions, warp
from torchstn.transforms import Projective

__all__ = [
    "PerturbedClassifier",
    "c_stn_1",
    "ic_stn_1",
    "ic_stn_2",
    "ic_stn_4",
    "icstn_classifier",
    "icstn_cnn",
    "icstn_full_cnn",
    "icstn_predictor",
    "icstn_stn",
]


def icstn_predictor(in_channels: int, input_size: tuple[int, int]) -> nn.Sequential:
    """The IC-STN geometric predictor up to its last hidden layer (section 4.2).

    ``conv 7x7 (4) -> ReLU -> conv 7x7 (8) -> ReLU -> max-pool 2 -> FC 48 -> ReLU``
    (unpadded, as the authors' code); the :class:`~torchstn.nn.SpatialTransformer`
    appends the zero-initialised ``FC 8``. ``(B, C, H, W) -> (B, 48)``.
    """
    convs = nn.Sequential(
        Conv2d(in_channels, 4, 7), nn.ReLU(inplace=True), Conv2d(4, 8, 7), nn.ReLU(inplace=True), nn.MaxPool2d(2)
    )
    width = feature_width(convs, in_channels, input_size, "IC-STN geometric predictor")
    return declare_input(nn.Sequential(*convs, nn.Flatten(), nn.Linear(width, 48), nn.ReLU(inplace=True)),
                         in_channels, input_size)


def icstn_classifier(in_channels: int, input_size: tuple[int, int], num_classes: int) -> nn.Sequential:
    """The IC-STN classifier after the warp: ``conv 9x9 (3, unpadded) -> ReLU -> FC num_classes``."""
    conv = nn.Sequential(Conv2d(in_channels, 3, 9), nn.ReLU(inplace=True))
    width = feature_width(conv, in_channels, input_size, "IC-STN classifier")
    return nn.Sequential(*conv, nn.Flatten(), nn.Linear(width, num_classes))


def icstn_full_cnn(in_channels: int, input_size: tuple[int, int], num_classes: int) -> nn.Sequential:
    """The IC-STN paper's CNN baseline, of about the STN's capacity (39,079 parameters at 28x28).

    ``conv 3x3 (3) -> conv 3x3 (6) -> max-pool 2 -> conv 3x3 (9) -> conv 3x3 (12) -> FC 48
    -> FC num_classes``, unpadded, ReLU after every layer but the last.
    """
    relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
    convs = nn.Sequential(
        Conv2d(in_channels, 3, 3), relu(), Conv2d(3, 6, 3), relu(), nn.MaxPool2d(2),
        Conv2d(6, 9, 3), relu(), Conv2d(9, 12, 3), relu(),
    )
    width = feature_width(convs, in_channels, input_size, "IC-STN CNN baseline")
    return nn.Sequential(*convs, nn.Flatten(), nn.Linear(width, 48), relu(), nn.Linear(48, num_classes))


class PerturbedClassifier(STClassifier):
    """An :class:`~torchstn.models.STClassifier` whose forward also takes the known initial warp ``init_params``.

    IC-STN's perturbed-MNIST protocol (section 4.2) gives the network the original digit
    and the perturbation ``p_init`` (a homography): a cascade starts its estimate at
    ``p_init``; a model without transformers classifies the digit resampled by it.
    Without ``init_params`` it is a plain :class:`~torchstn.models.STClassifier` on the given images.
    """

    def transform_input(self, x: torch.Tensor, init_params: torch.Tensor | None = None) -> torch.Tensor:
        if init_params is None:
            return super().transform_input(x)
        if len(self.transformers) == 0:
            return super().transform_input(warp(x, init_params, Projective()))
        return self.pool(self.transformers[0](x, init_params=init_params))

    def forward(self, x: torch.Tensor, init_params: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, num_classes)``; ``init_params`` ``(B, 8)`` is the known perturbation."""
        return self.classifier(self.transform_input(self.checked(x), init_params))


def _icstn(
    steps: int, compositional: bool, share: bool, *, in_channels: int, input_size: int | Sequence[int],
    num_classes: int, sampler: SamplerOptions,
) -> PerturbedClassifier:
    """The predictor in a homography cascade of ``steps``, then the IC-STN classifier."""
    size = as_size("input_size", input_size)
    cascade = CascadedSpatialTransformer(
        Projective(), icstn_predictor(in_channels, size), steps=steps, compositional=compositional, share=share,
        sampler=sampler,
    )
    return PerturbedClassifier(
        icstn_classifier(in_channels, size, num_classes), [cascade], input_shape=(in_channels, *size),
        num_classes=num_classes,
    )


@register_model("icstn-cnn")
def icstn_cnn(*, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10) -> PerturbedClassifier:
    """IC-STN paper's CNN baseline (Lin & Lucey 2017, section 4.2, Table 1): no transformer.

    See :func:`icstn_full_cnn`; 39,079 parameters at 28x28, as the paper's table.

    Example:
        >>> sum(p.numel() for p in stn.create_model("icstn-cnn").parameters())
        39079
    """
    size = as_size("input_size", input_size)
    return PerturbedClassifier(
        icstn_full_cnn(in_channels, size, num_classes), input_shape=(in_channels, *size), num_classes=num_classes
    )


@register_model("icstn-stn")
def icstn_stn(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False,
) -> PerturbedClassifier:
    """STN baseline of the IC-STN paper (section 4.2, Table 1): one homography transformer on the image.

    The geometric predictor (:func:`icstn_predictor`) sees the perturbed image and the
    classifier (:func:`icstn_classifier`) sees that image resampled again: intensities,
    not parameters, are propagated. 39,048 parameters at 28x28.

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(H, W)``).
        mode, padding, align_corners: sampling options of the warps
            (:class:`~torchstn.sampling.SamplerOptions`).

    Example:
        >>> sum(p.numel() for p in stn.create_model("icstn-stn").parameters())
        39048
    """
    return _icstn(1, False, True, in_channels=in_channels, input_size=input_size, num_classes=num_classes,
                  sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners))


@register_model("c-stn-1")
def c_stn_1(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10, steps: int = 1,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False,
) -> PerturbedClassifier:
    """Compositional STN (c-STN, IC-STN paper sections 3.2 and 4.2): parameters are propagated.

    Each of ``steps`` predictors (not shared) looks at the original input warped by the
    current estimate and its update is composed into it; the classifier sees one
    resampling of the original. With one step it has the STN's architecture and capacity.

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(H, W)``).
        steps: number of compositional steps, each with its own predictor.
        mode, padding, align_corners: sampling options of the warps
            (:class:`~torchstn.sampling.SamplerOptions`).
    """
    return _icstn(steps, True, False, in_channels=in_channels, input_size=input_size, num_classes=num_classes,
                  sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners))


@register_model("ic-stn-1")
def ic_stn_1(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False,
) -> PerturbedClassifier:
    """IC-STN with one recurrent warp (Lin & Lucey 2017, sections 3.3 and 4.2, Table 1).

    One geometric predictor refines the homography by composition, starting from the
    known perturbation; the classifier sees one resampling of the original. Same
    capacity as the STN baseline (``icstn-stn``), from which it differs only in
    propagating parameters instead of images.

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(H, W)``).
        mode, padding, align_corners: sampling options of the warps
            (:class:`~torchstn.sampling.SamplerOptions`).
    """
    return _icstn(1, True, True, in_channels=in_channels, input_size=input_size, num_classes=num_classes,
                  sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners))


@register_model("ic-stn-2")
def ic_stn_2(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False,
) -> PerturbedClassifier:
    """IC-STN with two recurrent warps (Lin & Lucey 2017, sections 3.3 and 4.2, Table 1).

    :func:`ic_stn_1` applied twice: the one geometric predictor, shared by both steps,
    looks at the original warped by the current estimate and composes its update into
    it. Same capacity as the STN baseline; the arguments are those of :func:`ic_stn_1`.
    """
    return _icstn(2, True, True, in_channels=in_channels, input_size=input_size, num_classes=num_classes,
                  sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners))


@register_model("ic-stn-4")
def ic_stn_4(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False,
) -> PerturbedClassifier:
    """IC-STN with four recurrent warps (Lin & Lucey 2017, sections 3.3 and 4.2, Table 1): the
    paper's best model on perturbed MNIST.

    :func:`ic_stn_1` applied four times with one shared predictor. Same capacity as the
    STN baseline; the arguments are those of :func:`ic_stn_1`.

    Example:
        >>> stn.create_model("ic-stn-4").transformers[0].num_steps
        4
    """
    return _icstn(4, True, True, in_channels=in_channels, input_size=input_size, num_classes=num_classes,
                  sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners))
