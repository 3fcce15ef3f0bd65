"""The time-series models of the P-STN paper: Schwöbel et al., *Probabilistic Spatial
Transformer Networks* (arXiv 2004.03637, section 5, UCR time series).

A 1-D CNN classifier (``cnn1d``), the same with a spatial transformer on the time axis
in front (``st-cnn1d-aff``: scale and shift, :class:`~torchstn.transforms.Affine1D`;
``st-cnn1d-cpab``: diffeomorphic warps, :class:`~torchstn.transforms.CPAB1D`, the authors'
choice for time series), and their probabilistic versions (``pstn-cnn1d-aff``,
``pstn-cnn1d-cpab``, :class:`~torchstn.nn.ProbabilisticSpatialTransformer`).
Inputs are series ``(B, C, L)`` (``C = 1`` for the univariate UCR archive).

The layers follow the authors' released time-series code (their UAI experiment
scripts): the classifier is five unpadded 1-D convolutions (kernels 8, 8, 5, 5, 3) each
followed by BatchNorm and ReLU, global average pooling, dropout 0.25 and a linear layer;
the baseline CNN has 164, 256, 256, 256, 256 filters and the transformer models'
classifier 196, 256, 256, 256, 64 (the authors balance the parameter counts that way).
The localisation net is three unpadded convolutions (64 filters of 8, 164 of 5, 64 of
3), each with BatchNorm and ReLU, global average pooling and dropout 0.5; the regressor
(and for P-STN the spread head) reads its 64 features. The authors train with Adam (lr
1e-3, the localisation net at a tenth), batch 16, 200 epochs, P-STN with 10 samples of
θ in training and at test time and a KL weight chosen per data set (0 to 1e-3).

Our choices, each an argument: ``conv_padding="same"`` pads the convolutions to keep the
length, so series shorter than the unpadded stack needs (about 32 steps, e.g.
ItalyPowerDemand's 24) still work; the widths (``channels``, ``loc_channels``) can be
reduced for a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from torchstn._validation import check_choice, check_int, check_number, check_positive, check_size
from torchstn.models._base import STClassifier, feature_width
from torchstn.models._registry import register_model
from torchstn.models.pstn2020 import PSTNClassifier
from torchstn.nn import Conv1d, Distribution, ProbabilisticSpatialTransformer, SpatialTransformer, declare_input
from torchstn.sampling import Mode, Padding, SamplerOptions
from torchstn.transforms import CPAB1D, Affine1D, Transform

__all__ = [
    "CNN1D_CHANNELS",
    "CPAB_TESSELLATION",
    "CNN1D_KERNELS",
    "LOC1D_CHANNELS",
    "LOC1D_KERNELS",
    "ST_CNN1D_CHANNELS",
    "as_length",
    "cnn1d",
    "cnn1d_classifier",
    "cnn1d_localization",
    "pstn_cnn1d_aff",
    "pstn_cnn1d_cpab",
    "scaled",
    "st_cnn1d_aff",
    "st_cnn1d_cpab",
]

#: the authors' baseline CNN: filters and kernel sizes of its five convolutions
CNN1D_CHANNELS: tuple[int, ...] = (164, 256, 256, 256, 256)
CNN1D_KERNELS: tuple[int, ...] = (8, 8, 5, 5, 3)
#: the classifier behind the authors' STN and P-STN (fewer filters last: the localisation net's share)
ST_CNN1D_CHANNELS: tuple[int, ...] = (196, 256, 256, 256, 64)
#: the authors' localisation net: filters and kernel sizes of its three convolutions
LOC1D_CHANNELS: tuple[int, ...] = (64, 164, 64)
LOC1D_KERNELS: tuple[int, ...] = (8, 5, 3)

ConvPadding = Literal["valid", "same"]


def as_length(name: str, size: int | Sequence[int]) -> tuple[int]:
    """A series length given as ``L`` or ``(L,)`` -> ``(L,)``."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size,)
    (length,) = check_size(name, size, 1)
    return (length,)


def scaled(channels: Sequence[int], width: float, name: str = "channels") -> tuple[int, ...]:
    """Filter counts (each an int >= 1, ``name[i]`` in the message) times ``width``, rounded, at least 1.

    Example:
        >>> scaled((164, 256, 64), 0.5)
        (82, 128, 32)
    """
    width = check_positive("width", width)
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
        raise TypeError(f"{name} must be a sequence of ints (a filter count per convolution), got {channels!r}")
    # (each checked before the scaling: -3 became 1 and 16.5 became 16 without a word)
    return tuple(max(1, round(check_int(f"{name}[{i}]", c, 1) * width)) for i, c in enumerate(channels))


def _conv_stack(
    in_channels: int, channels: Sequence[int], kernel_sizes: Sequence[int], conv_padding: ConvPadding, what: str
) -> list[nn.Module]:
    """``[Conv1d -> BatchNorm1d -> ReLU] * n``, unpadded (``"valid"``) or length-keeping (``"same"``)."""
    check_choice("conv_padding", conv_padding, ("valid", "same"))
    if len(channels) != len(kernel_sizes) or not channels:
        raise ValueError(
            f"{what}: channels and kernel_sizes must be non-empty and of the same length, got {tuple(channels)} "
            f"and {tuple(kernel_sizes)}"
        )
    layers: list[nn.Module] = []
    c = in_channels
    for i, (out, k) in enumerate(zip(channels, kernel_sizes)):
        out, k = check_int(f"channels[{i}]", out, 1), check_int(f"kernel_sizes[{i}]", k, 1)
        if conv_padding == "same":  # k - 1 zeros, the odd one on the right (as padding="same", without its copy warning)
            layers.append(nn.ConstantPad1d(((k - 1) // 2, k // 2), 0.0))
        layers += [Conv1d(c, out, k), nn.BatchNorm1d(out), nn.ReLU(inplace=True)]
        c = out
    return layers


def cnn1d_classifier(
    in_channels: int,
    length: tuple[int],
    num_classes: int,
    channels: Sequence[int] = CNN1D_CHANNELS,
    kernel_sizes: Sequence[int] = CNN1D_KERNELS,
    *,
    dropout: float = 0.25,
    conv_padding: ConvPadding = "valid",
) -> nn.Sequential:
    """``[conv -> BatchNorm -> ReLU] * n -> global average pool -> Dropout -> FC``: ``(B, C, L) -> (B, num_classes)``.

    Raises ``ValueError`` naming the length when the series is too short for unpadded
    convolutions (use ``conv_padding="same"``).
    """
    convs = nn.Sequential(*_conv_stack(in_channels, channels, kernel_sizes, conv_padding, "classifier"))
    feature_width(convs, in_channels, length, "classifier (or use conv_padding='same')")  # a clear error if too short
    dropout = check_number("dropout", dropout, 0.0, 1.0)
    return nn.Sequential(*convs, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(int(channels[-1]), num_classes))


def cnn1d_localization(
    in_channels: int,
    length: tuple[int],
    channels: Sequence[int] = LOC1D_CHANNELS,
    kernel_sizes: Sequence[int] = LOC1D_KERNELS,
    *,
    dropout: float = 0.5,
    conv_padding: ConvPadding = "valid",
) -> nn.Sequential:
    """The authors' 1-D localisation net: ``[conv -> BatchNorm -> ReLU] * 3 -> global average pool -> Dropout``.

    ``(B, C, L) -> (B, channels[-1])`` features for the regressor; the input shape is
    declared (:func:`~torchstn.nn.declare_input`), so a series of another length fails
    with a message naming it.
    """
    convs = nn.Sequential(*_conv_stack(in_channels, channels, kernel_sizes, conv_padding, "localisation net"))
    feature_width(convs, in_channels, length, "localisation net (or use conv_padding='same')")
    dropout = check_number("dropout", dropout, 0.0, 1.0)
    net = nn.Sequential(*convs, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Dropout(dropout))
    return declare_input(net, in_channels, length)


@register_model("cnn1d")
def cnn1d(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 150, num_classes: int = 2,
    channels: Sequence[int] = CNN1D_CHANNELS, kernel_sizes: Sequence[int] = CNN1D_KERNELS, width: float = 1.0,
    dropout: float = 0.25, conv_padding: ConvPadding = "valid",
) -> STClassifier:
    """The 1-D CNN baseline of the P-STN paper's time-series experiments (section 5; the authors' code).

    ``[conv 1-D (164, 256, 256, 256, 256 filters of 8, 8, 5, 5, 3) -> BatchNorm -> ReLU]
    -> global average pool -> Dropout 0.25 -> FC num_classes`` on series ``(B, C, L)``.

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``L`` or ``(L,)``).
        channels, kernel_sizes: filters and kernel size of each convolution.
        width: multiplies every filter count (rounded, at least 1): 0.5 costs about a
            quarter of the authors' network.
        dropout: before the last layer.
        conv_padding: ``"valid"`` (unpadded, the authors') or ``"same"`` (for short series).

    Example:
        >>> m = stn.create_model("cnn1d", input_size=150, channels=(8, 8, 8, 8, 8))
        >>> m(torch.randn(4, 1, 150)).shape
        torch.Size([4, 2])
    """
    length = as_length("input_size", input_size)
    head = cnn1d_classifier(in_channels, length, num_classes, scaled(channels, width), kernel_sizes, dropout=dropout,
                            conv_padding=conv_padding)
    return STClassifier(head, input_shape=(in_channels, *length), num_classes=num_classes)


def _transformer_parts(
    in_channels: int, input_size: int | Sequence[int], num_classes: int, channels: Sequence[int],
    loc_channels: Sequence[int], width: float, dropout: float, conv_padding: ConvPadding,
) -> tuple[tuple[int], nn.Module, int, nn.Module]:
    """The length, the localisation net, its feature width and the classifier of a 1-D transformer model."""
    length = as_length("input_size", input_size)
    loc_channels = scaled(loc_channels, width, "loc_channels")
    loc = cnn1d_localization(in_channels, length, loc_channels, conv_padding=conv_padding)
    head = cnn1d_classifier(in_channels, length, num_classes, scaled(channels, width), dropout=dropout,
                            conv_padding=conv_padding)
    return length, loc, loc_channels[-1], head


def _st_1d(
    transform: Transform | str, in_channels: int, input_size: int | Sequence[int], num_classes: int,
    channels: Sequence[int], loc_channels: Sequence[int], width: float, dropout: float, conv_padding: ConvPadding,
    sampler: SamplerOptions,
) -> STClassifier:
    """A 1-D spatial transformer of ``transform`` before the 1-D CNN (``st-cnn1d-*``)."""
    length, loc, features, head = _transformer_parts(
        in_channels, input_size, num_classes, channels, loc_channels, width, dropout, conv_padding
    )
    st = SpatialTransformer(transform, loc, in_features=features, sampler=sampler)
    return STClassifier(head, [st], input_shape=(in_channels, *length), num_classes=num_classes)


def _pstn_1d(
    transform: Transform | str, in_channels: int, input_size: int | Sequence[int], num_classes: int,
    channels: Sequence[int], loc_channels: Sequence[int], width: float, dropout: float, conv_padding: ConvPadding,
    sampler: SamplerOptions, **probabilistic: Any,
) -> PSTNClassifier:
    """A 1-D probabilistic spatial transformer of ``transform`` before the 1-D CNN (``pstn-cnn1d-*``);
    ``probabilistic``: :class:`~torchstn.nn.ProbabilisticSpatialTransformer`'s keywords."""
    length, loc, features, head = _transformer_parts(
        in_channels, input_size, num_classes, channels, loc_channels, width, dropout, conv_padding
    )
    pst = ProbabilisticSpatialTransformer(transform, loc, in_features=features, sampler=sampler, **probabilistic)
    return PSTNClassifier(head, [pst], input_shape=(in_channels, *length), num_classes=num_classes)


@register_model("st-cnn1d-aff")
def st_cnn1d_aff(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 150, num_classes: int = 2,
    channels: Sequence[int] = ST_CNN1D_CHANNELS, loc_channels: Sequence[int] = LOC1D_CHANNELS, width: float = 1.0,
    dropout: float = 0.25,     conv_padding: ConvPadding = "valid", transform: Transform | str | None = None, mode: Mode = "bilinear",
    padding: Padding = "border", align_corners: bool = False,
) -> STClassifier:
    """STN on time series (P-STN paper, section 5; the authors' code): a transformer of the time axis before the 1-D CNN.

    The localisation net (:func:`cnn1d_localization`) predicts θ of ``transform``
    (default :class:`~torchstn.transforms.Affine1D`, ``x_s = a x_t + b``: a scale and a
    shift of time; the identity at the start), the series is resampled there, and the
    classifier (:func:`cnn1d_classifier` with 196, 256, 256, 256, 64 filters) reads it.
    Outside the series the sampler repeats its end values (``padding="border"``,
    our choice: a z-normalised series has no natural zero).

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``L`` or ``(L,)``).
        channels: the classifier's filters (kernel sizes 8, 8, 5, 5, 3).
        loc_channels: the localisation net's filters (kernel sizes 8, 5, 3).
        width: multiplies every filter count, the localisation net's too (rounded, at least 1).
        dropout: of the classifier.
        conv_padding: of the convolutions: ``"valid"`` (the authors') or ``"same"``.
        transform: any 1-D transform family (``None``: ``Affine1D``).
        mode, padding, align_corners: sampling options of the warp
            (:class:`~torchstn.sampling.SamplerOptions`).

    Example:
        >>> m = stn.create_model("st-cnn1d-aff", input_size=64, channels=(8,) * 5, loc_channels=(8, 8, 8)).eval()
        >>> x = torch.randn(3, 1, 64)
        >>> m(x).shape, torch.allclose(m.transform_input(x), x, atol=1e-5)  # starts as the identity
        (torch.Size([3, 2]), True)
    """
    return _st_1d(
        Affine1D() if transform is None else transform, in_channels, input_size, num_classes, channels, loc_channels,
        width, dropout, conv_padding, SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
    )


@register_model("pstn-cnn1d-aff")
def pstn_cnn1d_aff(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 150, num_classes: int = 2,
    channels: Sequence[int] = ST_CNN1D_CHANNELS, loc_channels: Sequence[int] = LOC1D_CHANNELS, width: float = 1.0,
    dropout: float = 0.25,     conv_padding: ConvPadding = "valid", transform: Transform | str | None = None, distribution: Distribution = "student-t",
    samples: int = 10, test_samples: int = 10, kl_weight: float = 1e-4, prior_alpha: float = 1.0,
    prior_beta: float = 1.0, init_scale: float = 0.08, mode: Mode = "bilinear", padding: Padding = "border",
    align_corners: bool = False,
) -> PSTNClassifier:
    """P-STN on time series (P-STN paper, sections 3 and 5; the authors' code).

    ``st-cnn1d-aff`` with a distribution over θ: a
    :class:`~torchstn.nn.ProbabilisticSpatialTransformer` (Student-t θ with a Gamma prior
    on its precision, as the authors' time-series runs) draws ``samples`` warps of each
    series in training and ``test_samples`` at test time (10 and 10, the authors'); the
    output combines them as :class:`~torchstn.models.pstn2020.PSTNClassifier` says, and
    :func:`torchstn.nn.total_kl` is the regulariser the engine adds (``kl_weight``: the
    authors use 0 to 1e-3 per data set, 1e-4 most often).

    Args:
        in_channels, input_size, num_classes, channels, loc_channels, width, dropout, conv_padding, transform,
            mode, padding, align_corners: as in ``st-cnn1d-aff``.
        distribution, samples, test_samples, kl_weight, prior_alpha, prior_beta, init_scale: as in
            :class:`~torchstn.nn.ProbabilisticSpatialTransformer` (``init_scale`` 0.08 is about
            the authors' ``var_init=-5``).

    Example:
        >>> m = stn.create_model("pstn-cnn1d-aff", input_size=64, channels=(8,) * 5, loc_channels=(8, 8, 8),
        ...                      samples=3)
        >>> probs = m.eval()(torch.randn(2, 1, 64)).exp()
        >>> torch.allclose(probs.sum(1), torch.ones(2)), bool(stn.nn.total_kl(m) > 0)
        (True, True)
    """
    return _pstn_1d(
        Affine1D() if transform is None else transform, in_channels, input_size, num_classes, channels, loc_channels,
        width, dropout, conv_padding, SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
        samples=samples, test_samples=test_samples, distribution=distribution, kl_weight=kl_weight,
        prior_alpha=prior_alpha, prior_beta=prior_beta, init_scale=init_scale,
    )


# ---------------------------------------------------------------------------- CPAB (diffeomorphic) versions

#: the authors' tessellation of the time axis for their CPAB time-series runs (zero boundary: P = K - 1 = 9)
CPAB_TESSELLATION = 10


@register_model("st-cnn1d-cpab")
def st_cnn1d_cpab(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 150, num_classes: int = 2,
    channels: Sequence[int] = ST_CNN1D_CHANNELS, loc_channels: Sequence[int] = LOC1D_CHANNELS, width: float = 1.0,
    dropout: float = 0.25, conv_padding: ConvPadding = "valid", tessellation: int = CPAB_TESSELLATION,
    zero_boundary: bool = True, mode: Mode = "bilinear", padding: Padding = "border", align_corners: bool = False,
) -> STClassifier:
    """STN with diffeomorphic time warps (P-STN paper, section 5: the authors' time-series runs use CPAB).

    ``st-cnn1d-aff`` with a :class:`~torchstn.transforms.CPAB1D` transformer: θ (``K - 1``
    values with the zero boundary) sets a continuous piecewise-affine velocity field on
    ``K = tessellation`` cells of the time axis, integrated in closed form into an
    increasing, invertible warp (θ = 0, the identity, at the start). The authors use
    ``K = 10`` with the zero boundary (the series' ends stay in place).

    Args:
        tessellation, zero_boundary: of :class:`~torchstn.transforms.CPAB1D`.
        in_channels, input_size, num_classes, channels, loc_channels, width, dropout, conv_padding,
            mode, padding, align_corners: as in ``st-cnn1d-aff``.

    Example:
        >>> m = stn.create_model("st-cnn1d-cpab", input_size=64, width=0.05).eval()
        >>> x = torch.randn(2, 1, 64)
        >>> m.transformers[0].transform.num_params, torch.allclose(m.transform_input(x), x, atol=1e-5)
        (9, True)
    """
    return _st_1d(
        CPAB1D(tessellation, zero_boundary), in_channels, input_size, num_classes, channels, loc_channels, width,
        dropout, conv_padding, SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
    )


@register_model("pstn-cnn1d-cpab")
def pstn_cnn1d_cpab(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 150, num_classes: int = 2,
    channels: Sequence[int] = ST_CNN1D_CHANNELS, loc_channels: Sequence[int] = LOC1D_CHANNELS, width: float = 1.0,
    dropout: float = 0.25, conv_padding: ConvPadding = "valid", tessellation: int = CPAB_TESSELLATION,
    zero_boundary: bool = True, distribution: Distribution = "student-t", samples: int = 10, test_samples: int = 10,
    kl_weight: float = 1e-4, prior_alpha: float = 1.0, prior_beta: float = 1.0, prior_length_scale: float = 0.1,
    prior_variance: float = 1.0, init_scale: float = 0.08, mode: Mode = "bilinear", padding: Padding = "border",
    align_corners: bool = False,
) -> PSTNClassifier:
    """P-STN with diffeomorphic time warps (P-STN paper, sections 3 and 5; the authors' time-series runs).

    ``pstn-cnn1d-aff`` with a :class:`~torchstn.transforms.CPAB1D` transformer (``K = 10``
    cells, zero boundary, as the authors). The distribution over θ is the authors'
    Student-t with a Gamma prior on its precision (``distribution="student-t"``), or
    ``"gaussian"`` with the CPAB smoothness prior as the KL's prior: θ ~ N(0, Σ),
    Σ = :meth:`~torchstn.transforms.CPAB1D.prior_covariance` (``prior_length_scale``,
    ``prior_variance``).

    Args:
        tessellation, zero_boundary: of :class:`~torchstn.transforms.CPAB1D`.
        prior_length_scale, prior_variance: the smoothness prior (``distribution="gaussian"`` only).
        in_channels, input_size, num_classes, channels, loc_channels, width, dropout, conv_padding,
            distribution, samples, test_samples, kl_weight, prior_alpha, prior_beta, init_scale,
            mode, padding, align_corners: as in ``pstn-cnn1d-aff``.

    Example:
        >>> m = stn.create_model("pstn-cnn1d-cpab", input_size=64, width=0.05, samples=2, distribution="gaussian")
        >>> torch.allclose(m.eval()(torch.randn(2, 1, 64)).exp().sum(1), torch.ones(2))  # (evaluation: a distribution)
        True
        >>> m.transformers[0].prior_precision.shape
        torch.Size([9, 9])
    """
    transform = CPAB1D(tessellation, zero_boundary)
    prior = None
    if check_choice("distribution", distribution, ("student-t", "gaussian")) == "gaussian":
        # (in float64: its precision is its inverse, and a float32 covariance near the accepted
        # condition number of 1e6 put a float64 model's KL 0.45% off; on the CPU: values under meta too)
        prior = transform.prior_covariance(prior_length_scale, prior_variance, device="cpu", dtype=torch.float64)
    try:
        return _pstn_1d(
            transform, in_channels, input_size, num_classes, channels, loc_channels, width, dropout, conv_padding,
            SamplerOptions(mode=mode, padding=padding, align_corners=align_corners), samples=samples,
            test_samples=test_samples, distribution=distribution, kl_weight=kl_weight, prior_alpha=prior_alpha,
            prior_beta=prior_beta, prior_covariance=prior, init_scale=init_scale,
        )
    except ValueError as err:  # (it named prior_covariance, which this builder's caller does not pass)
        if prior is None or not str(err).startswith("prior_covariance"):
            raise
        raise ValueError(
            f"prior_length_scale={prior_length_scale:g} over tessellation={tessellation} gives a smoothness prior the "
            f"KL cannot use (its covariance, CPAB1D.prior_covariance: {err}); a shorter prior_length_scale or fewer "
            "cells make it better conditioned"
        ) from None
