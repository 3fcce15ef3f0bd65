"""The STN paper's 3-D model: Jaderberg et al., *Spatial Transformer Networks* (NIPS 2015,
section 4 and appendix, "MNIST 3-D": digits extruded into 60x60x60 volumes).

The paper extends the transformer to 3-D: a 3-D affine transformer samples the volume,
the sampled volume is flattened along depth into a 2-D image, and a 2-D classifier
reads it; the transformer thus learns the viewpoint from which the projection shows
the digit. The paper gives no layer sizes nor a number. Ours (every choice an argument):

* ``st-cnn-3d-aff``: a :class:`~torchstn.transforms.Affine3D` transformer whose
  localisation net (:func:`volume_localization`) reads the volume average-pooled by 3
  (20^3), two padded 3-D convolutions (8 filters of 5^3, 16 of 3^3) with 2x max-pooling,
  a 32-unit FC layer with batch normalisation before its ReLU; it samples an output of
  the input's size;
* the projection along depth is a sum (``projection="sum"``; ``"mean"`` and ``"max"``
  too), so a face-on slab of the extruded digit adds up along its thickness;
* the 2-D classifier is the STN paper's CNN baseline (:func:`~torchstn.models.stn2015.cnn_classifier`),
  after average-pooling the projection by ``pool`` (2 in the experiment: 30x30 images);
* ``cnn-3d``: the same projection, pooling and classifier without the transformer (the
  raw volume projected along depth), the baseline.

Inputs are volumes ``(B, C, D, H, W)``; the classifier sees ``(B, C, H', W')``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from torchstn._validation import check_bool, check_choice, check_int, check_size
from torchstn.models._base import STClassifier
from torchstn.models._registry import forwards_kwargs, register_model
from torchstn.models.stn2015 import cnn_classifier
from torchstn.nn import SpatialTransformer, conv_localization, declare_input
from torchstn.sampling import Mode, Padding, SamplerOptions
from torchstn.transforms import Affine3D

__all__ = ["PROJECTIONS", "DepthProjection", "VolumeClassifier", "cnn_3d", "st_cnn_3d_aff", "volume_localization"]

Projection = Literal["sum", "mean", "max"]
#: how a volume is flattened along depth
PROJECTIONS: tuple[str, ...] = ("sum", "mean", "max")


def _as_volume_size(name: str, size: int | Sequence[int]) -> tuple[int, int, int]:
    """A volume size given as ``S`` or ``(D, H, W)`` -> ``(D, H, W)``."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size, size)
    depth, height, width = check_size(name, size, 3)
    return depth, height, width


class DepthProjection(nn.Module):
    """Flatten volumes ``(B, C, D, H, W)`` along depth into images ``(B, C, H, W)``.

    Args:
        mode: ``"sum"`` (an X-ray-like projection), ``"mean"`` or ``"max"`` (maximum intensity).

    Example:
        >>> v = torch.zeros(1, 1, 4, 2, 2); v[0, 0, 1:3, 0, 1] = 1.0
        >>> DepthProjection("sum")(v)[0, 0].tolist(), DepthProjection("max")(v)[0, 0].tolist()
        ([[0.0, 2.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]])
    """

    def __init__(self, mode: Projection = "sum") -> None:
        super().__init__()
        self.mode = check_choice("projection", mode, PROJECTIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"a depth projection takes volumes (B, C, D, H, W), got shape {tuple(x.shape)}")
        if self.mode == "sum":
            return x.sum(2)
        if self.mode == "mean":
            return x.mean(2)
        return x.amax(2)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class VolumeClassifier(STClassifier):
    """3-D spatial transformers (zero or more), a projection along depth, pooling, a 2-D classifier.

    ``forward(x)`` is ``classifier(pool(project(cat([st(x) for st in transformers], dim=1))))``;
    without a transformer, ``classifier(pool(project(x)))``.

    Args:
        classifier: maps ``(B, C', H', W')`` to logits.
        transformers: 3-D spatial transformers of the volume.
        projection: ``"sum"``, ``"mean"`` or ``"max"`` along depth (:class:`DepthProjection`).
        pool: average-pooling factor of the projected image; 1: none.
        input_shape: ``(C, D, H, W)``.
        num_classes: number of classes.
    """

    def __init__(
        self, classifier: nn.Module, transformers: Sequence[SpatialTransformer] = (), *, projection: Projection = "sum",
        pool: int = 1, input_shape: tuple[int, int, int, int], num_classes: int,
    ) -> None:
        super().__init__(classifier, transformers, pool=pool, input_shape=input_shape,  # type: ignore[arg-type]
                         num_classes=num_classes)
        self.project = DepthProjection(projection)

    def transform_volume(self, x: torch.Tensor) -> torch.Tensor:
        """The volume the projection flattens: the transformers' outputs ``(B, C * len(transformers), D', H', W')``
        (``x`` itself without transformers)."""
        if len(self.transformers) == 0:
            return x
        warped = [st(x) for st in self.transformers]
        return warped[0] if len(warped) == 1 else torch.cat(warped, dim=1)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the classifier sees: the projected, pooled volume ``(B, C', H', W')``."""
        return self.pool(self.project(self.transform_volume(x)))


def volume_localization(
    in_channels: int, input_size: Sequence[int], *, downsample: int = 3, channels: Sequence[int] = (8, 16),
    kernel_sizes: Sequence[int] = (5, 3), hidden: int = 32, batch_norm: bool = True,
) -> nn.Sequential:
    """A small 3-D localisation net: ``avg-pool downsample -> [conv (same) -> max-pool 2 -> ReLU] * n -> FC -> BN -> ReLU``.

    ``(B, C, D, H, W) -> (B, hidden)``. The average pooling first keeps the convolutions
    cheap on 60^3 volumes (20^3 after it); the layers after it are
    :func:`~torchstn.nn.conv_localization`'s, with ``batch_norm`` a
    :class:`~torch.nn.BatchNorm1d` between the FC layer and its ReLU. Without it the FC
    layer died on ``mnist-3d``: a sparse volume (2.4% of the pooled voxels lit) gives
    features so small that the FC biases decide its pre-activations, Adam moved them
    below 0, and after 936 steps of ``torchstn reproduce stn-3d`` every unit was 0 for
    every input (two seeds): the transformer had become one fixed warp. Batch
    normalisation keeps the pre-activations centred on the batch (Adam at lr 1e-3, batch
    32, 250 steps: the largest standard deviation of a θ parameter over a batch reached
    0.29 with it, 0.055 without, while the share of live units without it fell from 66%
    to 21%).

    Example:
        >>> volume_localization(1, (60, 60, 60))(torch.rand(2, 1, 60, 60, 60)).shape
        torch.Size([2, 32])
    """
    size = _as_volume_size("input_size", tuple(input_size))
    check_int("downsample", downsample, 1)
    reduced = tuple(s // downsample for s in size)
    if min(reduced) < 1:
        raise ValueError(f"input_size {size} is smaller than downsample={downsample}")
    convs = list(conv_localization(in_channels, reduced, channels=channels, kernel_sizes=kernel_sizes, hidden=hidden))
    if check_bool("batch_norm", batch_norm):  # between the FC layer and its ReLU, the last two layers
        convs.insert(len(convs) - 1, nn.BatchNorm1d(hidden))
    net = nn.Sequential(nn.AvgPool3d(downsample) if downsample > 1 else nn.Identity(), *convs)
    return declare_input(net, in_channels, size)


def _pooled(size: tuple[int, int], pool: int) -> tuple[int, int]:
    check_int("pool", pool, 1)
    return (size[0] // pool, size[1] // pool)


@register_model("cnn-3d")
@forwards_kwargs(cnn_classifier)
def cnn_3d(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 60, num_classes: int = 10,
    projection: Projection = "sum", pool: int = 1, **classifier_kwargs: Any,
) -> VolumeClassifier:
    """The 3-D experiment's baseline (STN paper, appendix, MNIST 3-D): the raw volume
    projected along depth, then the STN paper's 2-D CNN.

    ``project (sum along depth) -> avg-pool pool -> conv 9x9 (32) -> max-pool 2 -> ReLU ->
    conv 7x7 (32) -> max-pool 2 -> ReLU -> FC 128 -> ReLU -> FC num_classes`` on volumes
    ``(B, C, D, H, W)``: exactly the classifier of ``st-cnn-3d-aff`` without its transformer.

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(D, H, W)``).
        projection: ``"sum"``, ``"mean"`` or ``"max"`` along depth.
        pool: average-pooling factor of the projected image.
        **classifier_kwargs: passed to :func:`~torchstn.models.stn2015.cnn_classifier`
            (``channels``, ``kernel_sizes``, ``hidden``).

    Example:
        >>> m = stn.create_model("cnn-3d", input_size=24, pool=2)
        >>> m(torch.rand(2, 1, 24, 24, 24)).shape, m.transform_input(torch.rand(2, 1, 24, 24, 24)).shape
        (torch.Size([2, 10]), torch.Size([2, 1, 12, 12]))
    """
    size = _as_volume_size("input_size", input_size)
    head = cnn_classifier(in_channels, _pooled(size[1:], pool), num_classes, **classifier_kwargs)
    return VolumeClassifier(head, projection=projection, pool=pool, input_shape=(in_channels, *size),
                            num_classes=num_classes)


@register_model("st-cnn-3d-aff")
@forwards_kwargs(cnn_classifier)
def st_cnn_3d_aff(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 60, num_classes: int = 10,
    projection: Projection = "sum", pool: int = 1, output_size: int | Sequence[int] | None = None,
    loc_hidden: int = 32, loc_batch_norm: bool = True, mode: Mode = "bilinear", padding: Padding = "zeros",
    align_corners: bool = False, **classifier_kwargs: Any,
) -> VolumeClassifier:
    """ST-CNN 3-D (STN paper, appendix, MNIST 3-D): a 3-D affine transformer, a projection along depth, a 2-D CNN.

    The transformer (:class:`~torchstn.transforms.Affine3D`, 12 parameters, the
    identity at the start; localisation net :func:`volume_localization`) samples a
    volume of ``output_size`` (default the input's) with trilinear interpolation; the
    volume is flattened along depth (``projection``), average-pooled by ``pool``, and
    classified by the ``cnn-3d`` baseline's 2-D CNN. What the transformer learns is the
    view: it turns and scales the volume so that its projection shows the digit.

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(D, H, W)``).
        projection: ``"sum"``, ``"mean"`` or ``"max"`` along depth.
        pool: average-pooling factor of the projected image.
        output_size: ``(D, H, W)`` the transformer samples (``S`` for a cube).
        loc_hidden: width of the localisation net's FC layer.
        loc_batch_norm: batch normalisation between that layer and its ReLU
            (:func:`volume_localization`: without it the layer died on ``mnist-3d``).
        mode, padding, align_corners: sampling options of the transformer.
        **classifier_kwargs: passed to :func:`~torchstn.models.stn2015.cnn_classifier`.

    Example:
        >>> m = stn.create_model("st-cnn-3d-aff", input_size=24, pool=2).eval()
        >>> x = torch.rand(2, 1, 24, 24, 24)
        >>> base = stn.create_model("cnn-3d", input_size=24, pool=2)
        >>> torch.allclose(m.transform_input(x), base.transform_input(x), atol=1e-5)  # the identity at the start
        True
    """
    size = _as_volume_size("input_size", input_size)
    out_size = size if output_size is None else _as_volume_size("output_size", output_size)
    st = SpatialTransformer(
        Affine3D(), volume_localization(in_channels, size, hidden=check_int("loc_hidden", loc_hidden, 1),
                                        batch_norm=loc_batch_norm), out_size,
        sampler=SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
    )
    head = cnn_classifier(in_channels, _pooled(out_size[1:], pool), num_classes, **classifier_kwargs)
    return VolumeClassifier(head, [st], projection=projection, pool=pool, input_shape=(in_channels, *size),
                            num_classes=num_classes)
