"""Models of the transformer variants: IC-STN on perturbed MNIST, parallel ST-CNNs, P-STN.

* IC-STN (Lin & Lucey, CVPR 2017, section 4.2, Table 1): ``icstn-cnn``, ``icstn-stn``,
  ``c-stn-1``, ``ic-stn-1``, ``ic-stn-2``, ``ic-stn-4`` on 28x28 perturbed MNIST, with
  a homography warp, the geometric predictor ``conv 7x7 (4) -> conv 7x7 (8) -> max-pool
  -> FC 48 -> FC 8`` (last layer zero-initialised, i.e. the identity) and the classifier
  ``conv 9x9 (3) -> FC 10`` after the warp. Their forward takes the experiment's known
  perturbation as ``init_params``: the compositional models start their estimate there
  on the *original* digit, the STN and CNN baselines see the digit resampled by it.
* Parallel transformers (Jaderberg et al., 2015): ``st-cnn-addition`` (two-digit MNIST
  addition, appendix A.3) and ``2x-st-cnn`` / ``4x-st-cnn`` (the CUB-200-2011
  structure of section 4.3, for any backbone).
* P-STN (Schwöbel et al., arXiv 2004.03637): ``p-stn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from torchstn.models._base import STClassifier, as_size, feature_shape
from torchstn.models._paper import cnn_classifier, st_cnn_aff, st_cnn_localization
from torchstn.models._registry import forwards_kwargs, register_model
from torchstn.nn import (
    CascadedSpatialTransformer,
    ParallelSpatialTransformers,
    ProbabilisticSpatialTransformer,
    SpatialTransformer,
    conv_localization,
)
from torchstn.sampling import warp
from torchstn.transforms import Attention, Projective

__all__ = [
    "PSTNClassifier",
    "PartsClassifier",
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
    "p_stn",
    "st_cnn_2x",
    "st_cnn_4x",
    "st_cnn_addition",
]


def _flat(module: nn.Module, in_channels: int, size: tuple[int, int], what: str) -> int:
    return math.prod(feature_shape(module, in_channels, size, what))


# ---------------------------------------------------------------------------- IC-STN


def icstn_predictor(in_channels: int, input_size: tuple[int, int]) -> nn.Sequential:
    """The IC-STN geometric predictor up to its last hidden layer (section 4.2).

    ``conv 7x7 (4) -> ReLU -> conv 7x7 (8) -> ReLU -> max-pool 2 -> FC 48 -> ReLU``
    (unpadded, as the authors' code); the :class:`~torchstn.nn.SpatialTransformer`
    appends the zero-initialised ``FC 8``. ``(B, C, H, W) -> (B, 48)``.
    """
    convs = nn.Sequential(
        nn.Conv2d(in_channels, 4, 7), nn.ReLU(inplace=True), nn.Conv2d(4, 8, 7), nn.ReLU(inplace=True), nn.MaxPool2d(2)
    )
    width = _flat(convs, in_channels, input_size, "IC-STN geometric predictor")
    return nn.Sequential(*convs, nn.Flatten(), nn.Linear(width, 48), nn.ReLU(inplace=True))


def icstn_classifier(in_channels: int, input_size: tuple[int, int], num_classes: int) -> nn.Sequential:
    """The IC-STN classifier after the warp: ``conv 9x9 (3, unpadded) -> ReLU -> FC num_classes``."""
    conv = nn.Sequential(nn.Conv2d(in_channels, 3, 9), nn.ReLU(inplace=True))
    width = _flat(conv, in_channels, input_size, "IC-STN classifier")
    return nn.Sequential(*conv, nn.Flatten(), nn.Linear(width, num_classes))


def icstn_full_cnn(in_channels: int, input_size: tuple[int, int], num_classes: int) -> nn.Sequential:
    """The IC-STN paper's CNN baseline, of about the STN's capacity (39,079 parameters at 28x28).

    ``conv 3x3 (3) -> conv 3x3 (6) -> max-pool 2 -> conv 3x3 (9) -> conv 3x3 (12) -> FC 48
    -> FC num_classes``, unpadded, ReLU after every layer but the last.
    """
    relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
    convs = nn.Sequential(
        nn.Conv2d(in_channels, 3, 3), relu(), nn.Conv2d(3, 6, 3), relu(), nn.MaxPool2d(2),
        nn.Conv2d(6, 9, 3), relu(), nn.Conv2d(9, 12, 3), relu(),
    )
    width = _flat(convs, in_channels, input_size, "IC-STN CNN baseline")
    return nn.Sequential(*convs, nn.Flatten(), nn.Linear(width, 48), relu(), nn.Linear(48, num_classes))


class PerturbedClassifier(STClassifier):
    """An :class:`STClassifier` whose forward also takes the known initial warp ``init_params``.

    IC-STN's perturbed-MNIST protocol (section 4.2) gives the network the original digit
    and the perturbation ``p_init`` (a homography): a cascade starts its estimate at
    ``p_init``; a model without transformers classifies the digit resampled by it.
    Without ``init_params`` it is a plain :class:`STClassifier` on the given images.
    """

    def transform_input(self, x: torch.Tensor, init_params: torch.Tensor | None = None) -> torch.Tensor:
        if init_params is None:
            return super().transform_input(x)
        if len(self.transformers) == 0:
            return super().transform_input(warp(x, init_params, Projective()))
        return self.pool(self.transformers[0](x, init_params=init_params))

    def forward(self, x: torch.Tensor, init_params: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, num_classes)``; ``init_params`` ``(B, 8)`` is the known perturbation."""
        return self.classifier(self.transform_input(x, init_params))


def _icstn(
    steps: int, compositional: bool, share: bool, *, in_channels: int, input_size: int | Sequence[int],
    num_classes: int, mode: str, padding: str, align_corners: bool,
) -> PerturbedClassifier:
    size = as_size("input_size", input_size)
    cascade = CascadedSpatialTransformer(
        Projective(), icstn_predictor(in_channels, size), steps=steps, compositional=compositional, share=share,
        mode=mode, padding=padding, align_corners=align_corners,  # type: ignore[arg-type]
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


_ICSTN_ARGS = """
    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(H, W)``).
        mode, padding, align_corners: sampling options of the warps."""


@register_model("icstn-stn")
def icstn_stn(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10,
    mode: str = "bilinear", padding: str = "zeros", align_corners: bool = False,
) -> PerturbedClassifier:
    """STN baseline of the IC-STN paper (section 4.2, Table 1): one homography transformer on the image.

    The geometric predictor (:func:`icstn_predictor`) sees the perturbed image and the
    classifier (:func:`icstn_classifier`) sees that image resampled again: intensities,
    not parameters, are propagated. 39,048 parameters at 28x28.

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(H, W)``).
        mode, padding, align_corners: sampling options of the warps.

    Example:
        >>> sum(p.numel() for p in stn.create_model("icstn-stn").parameters())
        39048
    """
    return _icstn(1, False, True, in_channels=in_channels, input_size=input_size, num_classes=num_classes,
                  mode=mode, padding=padding, align_corners=align_corners)


@register_model("c-stn-1")
def c_stn_1(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10, steps: int = 1,
    mode: str = "bilinear", padding: str = "zeros", align_corners: bool = False,
) -> PerturbedClassifier:
    """Compositional STN (c-STN, IC-STN paper section 3.2 and 4.2): parameters are propagated.

    Each of ``steps`` predictors (not shared) looks at the original input warped by the
    current estimate and its update is composed into it; the classifier sees one
    resampling of the original. With one step it has the STN's architecture and capacity.

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(H, W)``).
        steps: number of compositional steps, each with its own predictor.
        mode, padding, align_corners: sampling options of the warps.
    """
    return _icstn(steps, True, False, in_channels=in_channels, input_size=input_size, num_classes=num_classes,
                  mode=mode, padding=padding, align_corners=align_corners)


def _make_ic_stn(steps: int) -> Callable[..., PerturbedClassifier]:
    def builder(
        *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10,
        mode: str = "bilinear", padding: str = "zeros", align_corners: bool = False,
    ) -> PerturbedClassifier:
        return _icstn(steps, True, True, in_channels=in_channels, input_size=input_size, num_classes=num_classes,
                      mode=mode, padding=padding, align_corners=align_corners)

    name = f"ic-stn-{steps}"
    builder.__name__ = builder.__qualname__ = name.replace("-", "_")
    builder.__doc__ = (
        f"IC-STN with {steps} recurrent warp(s) (Lin & Lucey 2017, sections 3.3 and 4.2, Table 1).\n\n"
        "    One geometric predictor (shared by every step) refines the homography by composition;\n"
        "    the classifier sees one resampling of the original. Same capacity as the STN baseline.\n"
        + _ICSTN_ARGS
    )
    register_model(name)(builder)
    return builder


ic_stn_1 = _make_ic_stn(1)
ic_stn_2 = _make_ic_stn(2)
ic_stn_4 = _make_ic_stn(4)


# ---------------------------------------------------------------------------- parallel


@register_model("st-cnn-addition")
@forwards_kwargs(st_cnn_aff)
def st_cnn_addition(
    *, in_channels: int = 2, input_size: int | Sequence[int] = 42, num_classes: int = 19, num_transformers: int = 2,
    **kwargs: object,
) -> STClassifier:
    """2xST-CNN for two-digit MNIST addition (STN paper, appendix A.3).

    Two affine transformers in parallel on the 2-channel 42x42 input (one digit per
    channel); each has its own localisation net, sees both channels and warps both, so
    each can learn to straighten one digit. Their outputs are concatenated (4 channels)
    and a CNN classifies the sum (19 classes, 0..18). The pieces are those of
    ``st-cnn-aff`` (see :mod:`torchstn.models._paper`); ``**kwargs`` go to it
    (``pool``, ``hidden``, ...).

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
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
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
        features = [backbone(crop).flatten(1) for backbone, crop in zip(self.backbones, self.parallel(x))]
        return self.classifier(torch.cat(features, dim=1))


def _parts_model(
    k: int, *, in_channels: int, input_size: int | Sequence[int], num_classes: int,
    crop_size: int | Sequence[int] | None, scale: float, backbone: Callable[[int], nn.Module] | None,
    mode: str, padding: str, align_corners: bool,
) -> PartsClassifier:
    size = as_size("input_size", input_size)
    crop = as_size("crop_size", crop_size) if crop_size is not None else (size[0] // 2, size[1] // 2)
    make_backbone = backbone if backbone is not None else _small_backbone
    transformers = []
    for tx, ty in _part_offsets(k):
        st = SpatialTransformer(
            Attention(), conv_localization(in_channels, size), crop, mode=mode, padding=padding,  # type: ignore[arg-type]
            align_corners=align_corners,
        )
        with torch.no_grad():  # each part starts on its own region (the weights stay zero)
            st.regressor.bias.copy_(torch.tensor([scale, tx, ty]))
        transformers.append(st)
    backbones = [make_backbone(in_channels) for _ in range(k)]
    width = sum(_flat(b, in_channels, crop, "part backbone") for b in backbones)
    return PartsClassifier(
        transformers, backbones, nn.Linear(width, num_classes), input_shape=(in_channels, *size),
        num_classes=num_classes,
    )


_PARTS_DOC = """{k}xST-CNN: {k} attention transformers in parallel, a backbone per part (STN paper, section 4.3).

    The CUB-200-2011 structure: each transformer (attention: isotropic scale +
    translation, its own localisation net) crops ``crop_size`` from the input, each crop
    goes through its own backbone (Inception in the paper; here any module factory), and
    the concatenated features feed one linear softmax classifier. The parts start at
    scale ``scale`` centred on a grid over [-0.25, 0.25]^2 so that they can specialise.

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(H, W)``).
        crop_size: output size of each transformer (default: half the input).
        scale: initial zoom of every part (its window is ``scale`` of the input).
        backbone: ``in_channels -> nn.Module`` mapping a crop to features ``(B, F)``
            (default: a small 2-layer CNN with global average pooling, 64 features).
        mode, padding, align_corners: sampling options.

    Example:
        >>> m = stn.create_model("{k}x-st-cnn", in_channels=3, input_size=64, num_classes=5)
        >>> m(torch.rand(2, 3, 64, 64)).shape, len(m.transformers)
        (torch.Size([2, 5]), {k})
"""


def _make_parts_builder(k: int) -> Callable[..., PartsClassifier]:
    def builder(
        *, in_channels: int = 3, input_size: int | Sequence[int] = 64, num_classes: int = 200,
        crop_size: int | Sequence[int] | None = None, scale: float = 0.5,
        backbone: Callable[[int], nn.Module] | None = None, mode: str = "bilinear", padding: str = "zeros",
        align_corners: bool = False,
    ) -> PartsClassifier:
        return _parts_model(k, in_channels=in_channels, input_size=input_size, num_classes=num_classes,
                            crop_size=crop_size, scale=scale, backbone=backbone, mode=mode, padding=padding,
                            align_corners=align_corners)

    builder.__name__ = builder.__qualname__ = f"st_cnn_{k}x"
    builder.__doc__ = _PARTS_DOC.format(k=k)
    register_model(f"{k}x-st-cnn")(builder)
    return builder


st_cnn_2x = _make_parts_builder(2)
st_cnn_4x = _make_parts_builder(4)


# ---------------------------------------------------------------------------- P-STN


class PSTNClassifier(STClassifier):
    """An :class:`STClassifier` around one :class:`~torchstn.nn.ProbabilisticSpatialTransformer`.

    The classifier sees the ``S`` sampled warps of each input; the output is the log of
    the predictive distribution averaged over them (P-STN, section 3), so
    ``cross_entropy(model(x), y)`` is the paper's data term; add
    :func:`torchstn.nn.total_kl` for the KL term.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(B, num_classes)``, averaged over the sampled transformations."""
        return self.transformers[0].marginalize(self.classifier(self.transform_input(x)))


@register_model("p-stn")
def p_stn(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10,
    transform: str = "similarity", distribution: str = "student-t", samples: int = 1, test_samples: int = 10,
    kl_weight: float = 1e-4, prior_alpha: float = 1.0, prior_beta: float = 1.0, init_scale: float = 0.08,
    mode: str = "bilinear", padding: str = "zeros", align_corners: bool = False,
) -> PSTNClassifier:
    """P-STN for MNIST-sized images (Schwöbel et al., arXiv 2004.03637, sections 3 and 5).

    A :class:`~torchstn.nn.ProbabilisticSpatialTransformer` (Student-t θ with a Gamma
    precision, KL between Gammas; or ``distribution="gaussian"``) in front of the STN
    paper's CNN. The defaults follow the authors' MNIST runs: a 4-parameter similarity
    (rotation, scale, translation), one sample per input in training and 10 at test
    time, prior Gamma(1, 1), ``kl_weight`` 1e-4 (they tune it from 1e-5 to 1e-3 with the
    training set size). The localisation net is the STN paper's ST-CNN one and the
    classifier the ``cnn`` baseline's (our choices; the paper's networks differ per
    experiment).

    Example:
        >>> m = stn.create_model("p-stn", samples=3)
        >>> probs = m(torch.rand(2, 1, 28, 28)).exp()  # a distribution per input
        >>> torch.allclose(probs.sum(1), torch.ones(2))
        True
        >>> bool(stn.nn.total_kl(m) > 0)
        True
    """
    size = as_size("input_size", input_size)
    pst = ProbabilisticSpatialTransformer(
        transform, st_cnn_localization(in_channels, size), samples=samples, test_samples=test_samples,
        distribution=distribution, kl_weight=kl_weight, prior_alpha=prior_alpha, prior_beta=prior_beta,  # type: ignore[arg-type]
        init_scale=init_scale, mode=mode, padding=padding, align_corners=align_corners,  # type: ignore[arg-type]
    )
    return PSTNClassifier(
        cnn_classifier(in_channels, size, num_classes), [pst], input_shape=(in_channels, *size), num_classes=num_classes
    )
