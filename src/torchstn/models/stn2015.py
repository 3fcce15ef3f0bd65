"""The models of the STN paper: Jaderberg et al., *Spatial Transformer Networks* (NIPS 2015).

Distorted MNIST (section 4.1, Table 1; appendix A.1): the ``fcn`` and ``cnn`` baselines and
the ``st-fcn-*`` / ``st-cnn-*`` models with an affine (``aff``), projective (``proj``) or
thin-plate-spline (``tps``) transformer. MNIST addition (appendix A.3):
``st-cnn-addition``. Several transformers in parallel (section 4.3, the CUB-200-2011
structure): ``2x-st-cnn`` and ``4x-st-cnn``.

The paper (section 4.1 and appendix A.1) fixes: ReLU everywhere and a softmax
classifier; the CNN is ``conv 9x9 -> max-pool -> conv 7x7 -> max-pool -> FC ->
softmax``; the ST-CNN localisation net is two 5x5 convolutions with 20 filters on the
input downsampled by 2, with 2x2 max-pooling between them, then a 20-unit FC layer;
the ST-FCN localisation net is a small FCN; affine (6), projective (8) and 16-point
thin-plate-spline (32) transformers; for RTS and cluttered MNIST the transformer's
output is average-pooled by 2 before the classifier.

Where the paper is silent we chose, and every builder takes the choice as an argument:

* convolutions are zero-padded to keep their size ("same"), so the same CNN runs on
  28x28, 42x42, 60x60 and the 21x21/30x30 pooled transformer outputs;
* the CNN has 32 filters in both convolutions and a 128-unit FC layer before the
  softmax layer; the FCN has two hidden layers of 128 units;
* the ST-FCN localisation net has two hidden layers of 32 units; the ST-CNN one
  downsamples by 2x2 average-pooling and its convolutions are unpadded;
* the transformer samples an output of the input's size (``output_size``) and the
  pooling factor ``pool`` defaults to 1 (pass ``pool=2`` for RTS and cluttered).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchstn._tracing import eager_tensors
from torchstn._validation import check_choice, check_input, check_int, check_number, check_positive
from torchstn.models._base import STClassifier, as_size, feature_width
from torchstn.models._registry import forwards_kwargs, register_model
from torchstn.nn import (
    CascadedSpatialTransformer, Conv2d, ParallelSpatialTransformers, SpatialTransformer, conv_localization, declare_input,
)
from torchstn.sampling import Mode, Padding, SamplerOptions
from torchstn.transforms import Affine, Attention, Projective, ThinPlateSpline, Transform

__all__ = [
    "PartsClassifier",
    "cnn",
    "cnn_classifier",
    "fcn",
    "fcn_classifier",
    "st_cnn_2x",
    "st_cnn_4x",
    "st_cnn_addition",
    "st_cnn_aff",
    "st_cnn_localization",
    "st_cnn_proj",
    "st_cnn_tps",
    "st_fcn_aff",
    "st_fcn_localization",
    "st_fcn_proj",
    "st_fcn_tps",
]


# ---------------------------------------------------------------------------- building blocks


def _widths(name: str, hidden: int | Sequence[int]) -> tuple[int, ...]:
    """Sizes per layer (hidden FC widths, filter counts, kernel sizes) given as one int (one layer) or one
    per layer, each an int >= 1 (``name[i]`` in the message); ``()``: no layer."""
    if isinstance(hidden, Sequence) and not isinstance(hidden, str):
        return tuple(check_int(f"{name}[{i}]", width, 1) for i, width in enumerate(hidden))
    return (check_int(name, hidden, 1),)


def _mlp(in_features: int, hidden: Sequence[int], out_features: int | None, dropout: float = 0.0) -> list[nn.Module]:
    """``Flatten -> [FC -> ReLU] * len(hidden) [-> Dropout(dropout)] [-> FC(out_features)]``."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    if dropout:
        layers.append(nn.Dropout(dropout))
    if out_features is not None:
        layers.append(nn.Linear(in_features, out_features))
    return layers


def fcn_classifier(
    in_channels: int, input_size: tuple[int, int], num_classes: int, hidden: int | Sequence[int] = (128, 128)
) -> nn.Sequential:
    """``Flatten -> [FC -> ReLU] * len(hidden) -> FC(num_classes)``: ``(B, C, H, W) -> (B, num_classes)``;
    ``hidden``: one int (one hidden layer) or a width per layer."""
    widths = _widths("hidden", hidden)
    return nn.Sequential(*_mlp(in_channels * input_size[0] * input_size[1], widths, num_classes))


def cnn_classifier(
    in_channels: int,
    input_size: tuple[int, int],
    num_classes: int,
    channels: Sequence[int] = (32, 32),
    kernel_sizes: Sequence[int] = (9, 7),
    hidden: int = 128,
    dropout: float = 0.0,
) -> nn.Sequential:
    """``[conv k x k (same) -> max-pool 2 -> ReLU] * n -> FC(hidden) -> ReLU -> FC(num_classes)``.

    ``(B, C, H, W) -> (B, num_classes)``; ``hidden=0`` drops the hidden FC layer;
    ``dropout > 0`` drops that fraction of the last FC layer's inputs while training.
    """
    dropout = check_number("dropout", dropout)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    # (named here: torch's messages blamed groups, len() of an int or the input size)
    channels, kernel_sizes = _widths("channels", channels), _widths("kernel_sizes", kernel_sizes)
    hidden = check_int("hidden", hidden, 0)
    if len(channels) != len(kernel_sizes):
        raise ValueError(f"channels and kernel_sizes must have the same length, got {channels} and {kernel_sizes}")
    layers: list[nn.Module] = []
    c = in_channels
    for out, k in zip(channels, kernel_sizes):
        layers += [Conv2d(c, out, k, padding=k // 2), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
        c = out
    features = feature_width(nn.Sequential(*layers), in_channels, input_size, "CNN classifier")
    return nn.Sequential(*layers, *_mlp(features, (hidden,) if hidden else (), num_classes, dropout))


def st_fcn_localization(
    in_channels: int, input_size: tuple[int, int], hidden: int | Sequence[int] = (32, 32)
) -> nn.Sequential:
    """The ST-FCN localisation net: ``Flatten -> [FC -> ReLU] * len(hidden)``, ``(B, C, H, W) -> (B, hidden[-1])``;
    ``hidden``: one int (one layer) or a width per layer."""
    net = nn.Sequential(*_mlp(in_channels * input_size[0] * input_size[1], _widths("hidden", hidden), None))
    return declare_input(net, in_channels, input_size)


def st_cnn_localization(
    in_channels: int, input_size: tuple[int, int], channels: int = 20, kernel_size: int = 5, hidden: int = 20,
    pool: int = 2,
) -> nn.Sequential:
    """The ST-CNN localisation net of the paper's appendix A.1.

    ``avg-pool pool -> conv k x k (channels) -> max-pool 2 -> ReLU -> conv k x k (channels) -> ReLU
    -> FC(hidden) -> ReLU``: ``(B, C, H, W) -> (B, hidden)``; the paper downsamples its input
    by ``pool=2`` (``pool=1``: no pooling, the layers keep their names). Needs
    inputs of at least 28x28 with the default 5x5 kernels and ``pool=2``.
    """
    check_int("pool", pool, 1)
    convs = nn.Sequential(
        _ChannelsLastPool(pool),
        Conv2d(in_channels, channels, kernel_size),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
        Conv2d(channels, channels, kernel_size),
        nn.ReLU(inplace=True),
    )
    features = feature_width(convs, in_channels, input_size, "ST-CNN localisation net")
    net = nn.Sequential(*convs, nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(inplace=True))
    return declare_input(net, in_channels, input_size)


class _ChannelsLastPool(nn.AvgPool2d):
    """The localisation net's ``avg-pool pool`` (none for 1), handing on a channels_last tensor on the CPU.

    The net's convolutions and max-pool then run in that format: its training step (B = 256,
    28x28) 1.4-1.6x faster, torch's NCHW max-pool there alone 2.9 against 0.45 ms (one
    thread; the same values to float rounding). A one-channel tensor counts as channels_last
    to torch with either strides, and oneDNN reads NCHW strides as NCHW: it is copied. Under a
    tracer, compiler or ``torch.func`` transform (which cannot ask a layout inside ``vmap``),
    and in ``torch.jit.script``, the tensor is handed on as it is.
    """

    def __init__(self, pool: int) -> None:
        super().__init__(pool)
        self.pools = pool > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                         self.divisor_override) if self.pools else x
        if torch.jit.is_scripting():
            return y
        return self._channels_last(y)

    @torch.jit.unused
    def _channels_last(self, y: torch.Tensor) -> torch.Tensor:
        if y.dim() != 4 or y.device.type != "cpu" or not eager_tensors(y):
            return y
        out = y.contiguous(memory_format=torch.channels_last)
        return out if out.stride(1) == 1 else y.clone(memory_format=torch.channels_last)


def _pooled(size: tuple[int, int], pool: int) -> tuple[int, int]:
    check_int("pool", pool, 1)
    return (size[0] // pool, size[1] // pool)


# ---------------------------------------------------------------------------- baselines


@register_model("fcn")
def fcn(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10,
    hidden: int | Sequence[int] = (128, 128), pool: int = 1,
) -> STClassifier:
    """FCN baseline (STN paper, section 4.1, Table 1; appendix A.1).

    ``Flatten -> FC 128 -> ReLU -> FC 128 -> ReLU -> FC num_classes`` (softmax in the
    loss). The widths are our choice (``hidden``: one int for one layer, or a width per
    layer). ``pool`` average-pools the input first (the same classifier then serves as the
    baseline of an ST-FCN with that ``pool``).

    Example:
        >>> stn.create_model("fcn", input_size=42)(torch.rand(2, 1, 42, 42)).shape
        torch.Size([2, 10])
    """
    size = as_size("input_size", input_size)
    return STClassifier(
        fcn_classifier(in_channels, _pooled(size, pool), num_classes, hidden),
        pool=pool, input_shape=(in_channels, *size), num_classes=num_classes,
    )


@register_model("cnn")
def cnn(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10,
    channels: Sequence[int] = (32, 32), kernel_sizes: Sequence[int] = (9, 7), hidden: int = 128, pool: int = 1,
    dropout: float = 0.0,
) -> STClassifier:
    """CNN baseline (STN paper, section 4.1, Table 1; appendix A.1).

    ``conv 9x9 (32, same) -> max-pool 2 -> ReLU -> conv 7x7 (32, same) -> max-pool 2 ->
    ReLU -> FC 128 -> ReLU -> FC num_classes``. The paper gives the kernel sizes and
    the layer order; filter counts, padding and the FC width are our choice. ``pool``
    average-pools the input first (the classifier of an ST-CNN with that ``pool``);
    ``dropout`` (default none, as in the paper) drops inputs of the last FC layer.

    Example:
        >>> stn.create_model("cnn", input_size=60)(torch.rand(2, 1, 60, 60)).shape
        torch.Size([2, 10])
    """
    size = as_size("input_size", input_size)
    return STClassifier(
        cnn_classifier(in_channels, _pooled(size, pool), num_classes, channels, kernel_sizes, hidden, dropout),
        pool=pool, input_shape=(in_channels, *size), num_classes=num_classes,
    )


# ---------------------------------------------------------------------------- ST-FCN and ST-CNN


def _st_classifier(
    transform: type[Transform],
    localization: Callable[[int, tuple[int, int]], nn.Module],
    classifier: Callable[..., nn.Module],
    *,
    in_channels: int,
    input_size: int | Sequence[int],
    num_classes: int,
    num_transformers: int,
    pool: int,
    output_size: int | Sequence[int] | None,
    sampler: SamplerOptions,
    classifier_kwargs: dict[str, Any],
    start: Sequence[float] | None = None,
    steps: int = 1,
) -> STClassifier:
    """What every ST-FCN and ST-CNN is: ``num_transformers`` transformers of the family
    ``transform``, each with its own ``localization(in_channels, input_size)``, their outputs
    concatenated, average-pooled by ``pool``, then ``classifier``; each starts at θ ``start``
    (default: the identity). ``steps > 1`` makes each transformer a recurrent
    inverse-compositional cascade of that many steps (one localisation net, shared)."""
    size = as_size("input_size", input_size)
    out_size = size if output_size is None else as_size("output_size", output_size)
    check_int("num_transformers", num_transformers, 1)
    steps = check_int("steps", steps, 1)
    if steps > 1 and start is not None:
        raise ValueError("a cascade (steps > 1) starts at the identity; it takes no zoom")

    def transformer() -> SpatialTransformer:
        if steps == 1:
            return SpatialTransformer(transform(), localization(in_channels, size), out_size, start=start,
                                      sampler=sampler)
        return CascadedSpatialTransformer(transform(), localization(in_channels, out_size), steps, output_size=out_size,
                                          sampler=sampler)

    transformers = [transformer() for _ in range(num_transformers)]
    head = classifier(in_channels * num_transformers, _pooled(out_size, pool), num_classes, **classifier_kwargs)
    return STClassifier(head, transformers, pool=pool, input_shape=(in_channels, *size), num_classes=num_classes)


def _fcn_localization(loc_hidden: int | Sequence[int] | None) -> Callable[[int, tuple[int, int]], nn.Module]:
    """The ST-FCN localisation net with ``loc_hidden`` units (one int or a width per layer; default 32, 32)."""
    widths = (32, 32) if loc_hidden is None else _widths("loc_hidden", loc_hidden)
    return lambda in_channels, size: st_fcn_localization(in_channels, size, widths)


def _cnn_localization(
    loc_hidden: int | None, loc_channels: int = 20, loc_pool: int = 2
) -> Callable[[int, tuple[int, int]], nn.Module]:
    """The ST-CNN localisation net with a ``loc_hidden``-unit FC layer (default 20, the paper's),
    ``loc_channels`` filters per convolution and its input downsampled by ``loc_pool`` (the paper's 20 and 2)."""
    hidden = 20 if loc_hidden is None else check_int("loc_hidden", loc_hidden, 1)
    channels, pool = check_int("loc_channels", loc_channels, 1), check_int("loc_pool", loc_pool, 1)
    return lambda in_channels, size: st_cnn_localization(in_channels, size, channels=channels, hidden=hidden, pool=pool)


def _st_fcn_localization(
    loc: str, loc_hidden: int | Sequence[int] | None
) -> Callable[[int, tuple[int, int]], nn.Module]:
    """An ST-FCN's localisation net: ``loc="fcn"`` (:func:`_fcn_localization`) or ``"cnn"``
    (:func:`_cnn_localization`)."""
    if check_choice("loc", loc, ("fcn", "cnn")) == "cnn":
        return _cnn_localization(loc_hidden)  # type: ignore[arg-type]
    return _fcn_localization(loc_hidden)


def _zoomed(zoom: float) -> list[float] | None:
    """The affine start θ at ``zoom`` about the centre (``None``: the identity, the default start)."""
    zoom = check_number("zoom", zoom)
    if not zoom > 0:
        raise ValueError(f"zoom must be positive, got {zoom}")
    return None if zoom == 1 else [zoom, 0.0, 0.0, 0.0, zoom, 0.0]


@register_model("st-fcn-aff")
@forwards_kwargs(fcn_classifier)
def st_fcn_aff(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10, num_transformers: int = 1,
    pool: int = 1, output_size: int | Sequence[int] | None = None, loc_hidden: int | Sequence[int] | None = None,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False, zoom: float = 1.0,
    loc: str = "fcn", **classifier_kwargs: Any,
) -> STClassifier:
    """ST-FCN Aff (STN paper, section 4.1, Table 1; appendix A.1): an affine transformer before the FCN.

    The transformer (6 parameters) has an FCN localisation net (``FC 32 -> ReLU -> FC 32 ->
    ReLU``, our widths) and samples ``output_size``; its output, average-pooled by ``pool``
    (the paper's ``pool=2`` on RTS and cluttered MNIST), goes to the ``fcn`` baseline's
    classifier. ``num_transformers=2`` runs two transformers in parallel on the input and
    concatenates their outputs along channels (the paper's 2xST-FCN for MNIST addition).
    ``loc="cnn"`` gives each transformer the ST-CNN's localisation net instead
    (:func:`st_cnn_localization`), as tensorpack's reproduction of MNIST addition builds
    its 2xST-FCN; the classifier stays the FCN.

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(H, W)``).
        num_transformers: transformers in parallel.
        pool: average-pooling factor after the transformer(s).
        output_size: size the transformer samples (default: ``input_size``).
        loc: ``"fcn"`` (the default) or ``"cnn"``: the localisation net.
        loc_hidden: width(s) of the localisation net's hidden FC layers (with ``loc="cnn"``
            the one FC layer's, default 20).
        zoom: the transformer starts at this zoom about the centre (θ ``(zoom, 0, 0,
            0, zoom, 0)``): below 1 it starts on a central crop of the input.
        mode, padding, align_corners: sampling options of the transformer
            (:class:`~torchstn.sampling.SamplerOptions`).
        **classifier_kwargs: passed to :func:`fcn_classifier` (``hidden``).

    Example:
        >>> m = stn.create_model("st-fcn-aff", input_size=42, pool=2)
        >>> m(torch.rand(2, 1, 42, 42)).shape, m.transform_input(torch.rand(2, 1, 42, 42)).shape
        (torch.Size([2, 10]), torch.Size([2, 1, 21, 21]))
    """
    return _st_classifier(
        Affine, _st_fcn_localization(loc, loc_hidden), fcn_classifier,
        in_channels=in_channels, input_size=input_size, num_classes=num_classes, num_transformers=num_transformers,
        pool=pool, output_size=output_size,
        sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
        classifier_kwargs=classifier_kwargs, start=_zoomed(zoom),
    )


@register_model("st-fcn-proj")
@forwards_kwargs(fcn_classifier)
def st_fcn_proj(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10, num_transformers: int = 1,
    pool: int = 1, output_size: int | Sequence[int] | None = None, loc_hidden: int | Sequence[int] | None = None,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False, loc: str = "fcn",
    **classifier_kwargs: Any,
) -> STClassifier:
    """ST-FCN Proj (STN paper, section 4.1, Table 1): :func:`st_fcn_aff` with a projective transformer.

    The homography has 8 parameters; everything else, arguments included, is as in
    :func:`st_fcn_aff`, but for ``zoom`` (the transformer starts at the identity).

    Example:
        >>> stn.create_model("st-fcn-proj").transformers[0].transform.num_params
        8
    """
    return _st_classifier(
        Projective, _st_fcn_localization(loc, loc_hidden), fcn_classifier, in_channels=in_channels,
        input_size=input_size, num_classes=num_classes, num_transformers=num_transformers, pool=pool,
        output_size=output_size, sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
        classifier_kwargs=classifier_kwargs,
    )


@register_model("st-fcn-tps")
@forwards_kwargs(fcn_classifier)
def st_fcn_tps(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10, num_transformers: int = 1,
    pool: int = 1, output_size: int | Sequence[int] | None = None, loc_hidden: int | Sequence[int] | None = None,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False, loc: str = "fcn",
    **classifier_kwargs: Any,
) -> STClassifier:
    """ST-FCN TPS (STN paper, section 4.1, Table 1): :func:`st_fcn_aff` with a thin-plate spline.

    The spline has 16 control points on a 4x4 grid (32 parameters); everything else,
    arguments included, is as in :func:`st_fcn_aff`, but for ``zoom`` (the transformer starts at the identity).

    Example:
        >>> stn.create_model("st-fcn-tps").transformers[0].transform.num_params
        32
    """
    return _st_classifier(
        ThinPlateSpline, _st_fcn_localization(loc, loc_hidden), fcn_classifier, in_channels=in_channels,
        input_size=input_size, num_classes=num_classes, num_transformers=num_transformers, pool=pool,
        output_size=output_size, sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
        classifier_kwargs=classifier_kwargs,
    )


@register_model("st-cnn-aff")
@forwards_kwargs(cnn_classifier)
def st_cnn_aff(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10, num_transformers: int = 1,
    pool: int = 1, output_size: int | Sequence[int] | None = None, loc_hidden: int | None = None,
    loc_channels: int = 20, loc_pool: int = 2,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False, zoom: float = 1.0,
    steps: int = 1, **classifier_kwargs: Any,
) -> STClassifier:
    """ST-CNN Aff (STN paper, section 4.1, Table 1; appendix A.1): an affine transformer before the CNN.

    The transformer (6 parameters) has the paper's ST-CNN localisation net
    (:func:`st_cnn_localization`: ``avg-pool 2 -> conv 5x5 (20) -> max-pool 2 -> ReLU ->
    conv 5x5 (20) -> ReLU -> FC 20 -> ReLU``) and samples ``output_size``; its output,
    average-pooled by ``pool`` (the paper's ``pool=2`` on RTS and cluttered MNIST), goes
    to the ``cnn`` baseline's classifier. ``num_transformers=2`` runs two transformers in
    parallel and concatenates their outputs along channels (see ``st-cnn-addition``).

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(H, W)``).
        num_transformers: transformers in parallel.
        pool: average-pooling factor after the transformer(s).
        output_size: size the transformer samples (default: ``input_size``).
        loc_hidden: width of the localisation net's FC layer (default 20).
        loc_channels: filters of each of its convolutions (default 20, the paper's).
        loc_pool: the average-pooling of its input (default 2, the paper's; 1 gives it the
            input at full resolution).
        zoom: the transformer starts at this zoom about the centre (θ ``(zoom, 0, 0,
            0, zoom, 0)``): below 1 it starts on a central crop of the input.
        steps: ``> 1`` makes the transformer a recurrent inverse-compositional cascade
            (:class:`~torchstn.nn.CascadedSpatialTransformer`, IC-STN): its one
            localisation net looks ``steps`` times, at the input warped by the estimate
            so far, and the classifier sees one resampling of the input. Not in the paper.
        mode, padding, align_corners: sampling options of the transformer
            (:class:`~torchstn.sampling.SamplerOptions`).
        **classifier_kwargs: passed to :func:`cnn_classifier` (``channels``,
            ``kernel_sizes``, ``hidden``, ``dropout``).

    Example:
        >>> m = stn.create_model("st-cnn-aff", input_size=42, pool=2)
        >>> m(torch.rand(2, 1, 42, 42)).shape, m.transform_input(torch.rand(2, 1, 42, 42)).shape
        (torch.Size([2, 10]), torch.Size([2, 1, 21, 21]))
    """
    return _st_classifier(
        Affine, _cnn_localization(loc_hidden, loc_channels, loc_pool), cnn_classifier, in_channels=in_channels,
        input_size=input_size, num_classes=num_classes, num_transformers=num_transformers, pool=pool,
        output_size=output_size, sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
        classifier_kwargs=classifier_kwargs,
        start=_zoomed(zoom), steps=steps,
    )


@register_model("st-cnn-proj")
@forwards_kwargs(cnn_classifier)
def st_cnn_proj(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10, num_transformers: int = 1,
    pool: int = 1, output_size: int | Sequence[int] | None = None, loc_hidden: int | None = None,
    loc_channels: int = 20, loc_pool: int = 2,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False, steps: int = 1,
    **classifier_kwargs: Any,
) -> STClassifier:
    """ST-CNN Proj (STN paper, section 4.1, Table 1): :func:`st_cnn_aff` with a projective transformer.

    The homography has 8 parameters; everything else, arguments included, is as in
    :func:`st_cnn_aff`.

    Example:
        >>> stn.create_model("st-cnn-proj").transformers[0].transform.num_params
        8
    """
    return _st_classifier(
        Projective, _cnn_localization(loc_hidden, loc_channels, loc_pool), cnn_classifier, in_channels=in_channels,
        input_size=input_size, num_classes=num_classes, num_transformers=num_transformers, pool=pool,
        output_size=output_size, sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
        classifier_kwargs=classifier_kwargs, steps=steps,
    )


@register_model("st-cnn-tps")
@forwards_kwargs(cnn_classifier)
def st_cnn_tps(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10, num_transformers: int = 1,
    pool: int = 1, output_size: int | Sequence[int] | None = None, loc_hidden: int | None = None,
    loc_channels: int = 20, loc_pool: int = 2,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False, **classifier_kwargs: Any,
) -> STClassifier:
    """ST-CNN TPS (STN paper, section 4.1, Table 1): :func:`st_cnn_aff` with a thin-plate spline.

    The spline has 16 control points on a 4x4 grid (32 parameters); the paper's best model
    on every distortion. Everything else, arguments included, is as in :func:`st_cnn_aff`.

    Example:
        >>> stn.create_model("st-cnn-tps").transformers[0].transform.num_params
        32
    """
    return _st_classifier(
        ThinPlateSpline, _cnn_localization(loc_hidden, loc_channels, loc_pool), cnn_classifier, in_channels=in_channels,
        input_size=input_size, num_classes=num_classes, num_transformers=num_transformers, pool=pool,
        output_size=output_size, sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
        classifier_kwargs=classifier_kwargs,
    )


# ---------------------------------------------------------------------------- parallel transformers


@register_model("st-cnn-addition")
@forwards_kwargs(st_cnn_aff)
def st_cnn_addition(
    *, in_channels: int = 2, input_size: int | Sequence[int] = 42, num_classes: int = 19, num_transformers: int = 2,
    **kwargs: Any,
) -> STClassifier:
    """2xST-CNN for two-digit MNIST addition (STN paper, appendix A.3).

    Two affine transformers in parallel on the 2-channel 42x42 input (one digit per
    channel); each has its own localisation net, sees both channels and warps both, so
    each can learn to straighten one digit. Their outputs are concatenated (4 channels)
    and a CNN classifies the sum (19 classes, 0..18). The pieces are those of
    :func:`st_cnn_aff`; ``**kwargs`` go to it (``pool``, ``hidden``, ...).

    Example:
        >>> m = stn.create_model("st-cnn-addition")
        >>> m(torch.rand(2, 2, 42, 42)).shape, m.transform_input(torch.rand(2, 2, 42, 42)).shape
        (torch.Size([2, 19]), torch.Size([2, 4, 42, 42]))
    """
    return st_cnn_aff(in_channels=in_channels, input_size=input_size, num_classes=num_classes,
                      num_transformers=num_transformers, **kwargs)


def _small_backbone(in_channels: int) -> nn.Module:
    """Default part backbone: ``[conv 3x3 -> ReLU -> max-pool 2] x 2 -> global average pool``, 64 features."""
    return nn.Sequential(
        Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def _part_offsets(k: int, spread: float = 0.25) -> list[tuple[float, float]]:
    """``k`` starting centres on a regular grid over ``[-spread, spread]^2`` (row-major)."""
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    at = lambda i, n: 0.0 if n == 1 else spread * (2 * i / (n - 1) - 1)  # noqa: E731
    return [(at(i % cols, cols), at(i // cols, rows)) for i in range(k)]


class PartsClassifier(nn.Module):
    """``K`` spatial transformers in parallel, a backbone per part, one linear classifier.

    The structure of the STN paper's 2x/4xST-CNN on CUB-200-2011 (section 4.3): each
    transformer crops a part of the image, each crop goes through its own backbone and
    the features are concatenated into the softmax classifier.

    Attributes:
        parallel: the :class:`~torchstn.nn.ParallelSpatialTransformers` (``merge="list"``).
        transformers: its ``K`` transformers (what the engine inspects).
        backbones: the ``K`` feature extractors.
        classifier: ``Linear(sum of feature widths, num_classes)``.
    """

    def __init__(
        self,
        transformers: Sequence[SpatialTransformer],
        backbones: Sequence[nn.Module],
        classifier: nn.Module,
        *,
        input_shape: tuple[int, int, int],
        num_classes: int,
    ) -> None:
        super().__init__()
        if len(backbones) != len(transformers):
            raise ValueError(f"need one backbone per transformer, got {len(backbones)} and {len(transformers)}")
        self.parallel = ParallelSpatialTransformers(transformers, merge="list")
        self.backbones = nn.ModuleList(backbones)
        self.classifier = classifier
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)

    @property
    def transformers(self) -> nn.ModuleList:
        return self.parallel.transformers

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """The ``K`` crops concatenated along channels: ``(B, K * C, h, w)``."""
        return torch.cat(self.parallel(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        x = check_input(x, self.input_shape, len(self.input_shape) + 1, "the model")
        features = [backbone(crop).flatten(1) for backbone, crop in zip(self.backbones, self.parallel(x))]
        return self.classifier(torch.cat(features, dim=1))


def _parts_model(
    k: int, *, in_channels: int, input_size: int | Sequence[int], num_classes: int,
    crop_size: int | Sequence[int] | None, scale: float, backbone: Callable[[int], nn.Module] | None,
    sampler: SamplerOptions,
) -> PartsClassifier:
    """``k`` attention transformers, each starting on its own region at zoom ``scale``, a backbone per part."""
    size = as_size("input_size", input_size)
    crop = as_size("crop_size", crop_size) if crop_size is not None else (size[0] // 2, size[1] // 2)
    scale = check_positive("scale", scale)  # (the window's size: 0 sees one point, below 0 the image mirrored)
    if backbone is not None and not callable(backbone):
        raise TypeError(f"backbone must be a callable in_channels -> nn.Module, got {type(backbone).__name__}")
    make_backbone = backbone if backbone is not None else _small_backbone
    transformers = []
    for tx, ty in _part_offsets(k):
        localization = conv_localization(in_channels, size)  # each part starts on its own region:
        transformers.append(SpatialTransformer(Attention(), localization, crop, start=[scale, tx, ty], sampler=sampler))
    backbones = [make_backbone(in_channels) for _ in range(k)]
    for made in backbones:
        if not isinstance(made, nn.Module):
            raise TypeError(f"backbone must return an nn.Module, got {type(made).__name__}")
    width = sum(feature_width(b, in_channels, crop, "part backbone") for b in backbones)
    return PartsClassifier(
        transformers, backbones, nn.Linear(width, num_classes), input_shape=(in_channels, *size),
        num_classes=num_classes,
    )


@register_model("2x-st-cnn")
def st_cnn_2x(
    *, in_channels: int = 3, input_size: int | Sequence[int] = 64, num_classes: int = 200,
    crop_size: int | Sequence[int] | None = None, scale: float = 0.5, backbone: Callable[[int], nn.Module] | None = None,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False,
) -> PartsClassifier:
    """2xST-CNN: two attention transformers in parallel, a backbone per part (STN paper, section 4.3).

    The CUB-200-2011 structure: each transformer (attention: isotropic scale +
    translation, its own localisation net) crops ``crop_size`` from the input, each crop
    goes through its own backbone (Inception in the paper; here any module factory), and
    the concatenated features feed one linear softmax classifier. The parts start at
    scale ``scale`` centred on a grid over [-0.25, 0.25]^2 so that they can specialise.

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(H, W)``).
        crop_size: output size of each transformer (default: half the input).
        scale: initial zoom of every part (its window is ``scale`` of the input; > 0).
        backbone: ``in_channels -> nn.Module`` mapping a crop to features ``(B, F)``
            (default: a small 2-layer CNN with global average pooling, 64 features).
        mode, padding, align_corners: sampling options
            (:class:`~torchstn.sampling.SamplerOptions`).

    Example:
        >>> m = stn.create_model("2x-st-cnn", in_channels=3, input_size=64, num_classes=5)
        >>> m(torch.rand(2, 3, 64, 64)).shape, len(m.transformers)
        (torch.Size([2, 5]), 2)
    """
    return _parts_model(
        2, in_channels=in_channels, input_size=input_size, num_classes=num_classes, crop_size=crop_size, scale=scale,
        backbone=backbone, sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
    )


@register_model("4x-st-cnn")
def st_cnn_4x(
    *, in_channels: int = 3, input_size: int | Sequence[int] = 64, num_classes: int = 200,
    crop_size: int | Sequence[int] | None = None, scale: float = 0.5, backbone: Callable[[int], nn.Module] | None = None,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False,
) -> PartsClassifier:
    """4xST-CNN: :func:`st_cnn_2x` with four parts (STN paper, section 4.3, Table 3).

    The four parts start on a 2x2 grid of centres over [-0.25, 0.25]^2; the arguments are
    those of :func:`st_cnn_2x`.

    Example:
        >>> m = stn.create_model("4x-st-cnn", in_channels=3, input_size=64, num_classes=5)
        >>> m(torch.rand(2, 3, 64, 64)).shape, len(m.transformers)
        (torch.Size([2, 5]), 4)
    """
    return _parts_model(
        4, in_channels=in_channels, input_size=input_size, num_classes=num_classes, crop_size=crop_size, scale=scale,
        backbone=backbone, sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
    )
