"""The PyTorch spatial transformer tutorial's network, and its CIFAR-10 sibling.

``tutorial``: an affine spatial transformer in front of LeNet, as in the PyTorch STN
tutorial (MNIST). ``st-cnn-cifar``: the same structure, wider, for CIFAR-10 (the
network of seed ``004``, which follows the tutorial).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from torchstn.models._base import STClassifier, as_size, feature_width
from torchstn.models._registry import register_model
from torchstn.nn import Conv2d, SpatialTransformer, declare_input
from torchstn.sampling import Mode, Padding, SamplerOptions
from torchstn.transforms import Affine

__all__ = ["lenet_classifier", "lenet_localization", "st_cnn_cifar", "tutorial"]


def lenet_classifier(
    in_channels: int,
    input_size: tuple[int, int],
    num_classes: int,
    channels: tuple[int, int],
    kernel_sizes: tuple[int, int],
    hidden: int,
    dropout: float = 0.5,
) -> nn.Sequential:
    """``conv -> max-pool 2 -> ReLU -> conv -> Dropout2d -> max-pool 2 -> ReLU -> FC -> ReLU -> Dropout -> FC``.

    Unpadded convolutions; ``(B, C, H, W) -> (B, num_classes)``.
    """
    convs = nn.Sequential(
        Conv2d(in_channels, channels[0], kernel_sizes[0]),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
        Conv2d(channels[0], channels[1], kernel_sizes[1]),
        nn.Dropout2d(dropout),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
    )
    features = feature_width(convs, in_channels, input_size, "classifier")
    return nn.Sequential(
        *convs, nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def lenet_localization(
    in_channels: int, input_size: tuple[int, int], channels: tuple[int, int], kernel_sizes: tuple[int, int], hidden: int
) -> nn.Sequential:
    """``[conv -> max-pool 2 -> ReLU] * 2 -> FC(hidden) -> ReLU``: ``(B, C, H, W) -> (B, hidden)``."""
    convs = nn.Sequential(
        Conv2d(in_channels, channels[0], kernel_sizes[0]),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
        Conv2d(channels[0], channels[1], kernel_sizes[1]),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
    )
    features = feature_width(convs, in_channels, input_size, "localisation net")
    net = nn.Sequential(*convs, nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(inplace=True))
    return declare_input(net, in_channels, input_size)


def _lenet_st(
    localization: nn.Module, classifier: nn.Module, input_shape: tuple[int, int, int], num_classes: int,
    sampler: SamplerOptions,
) -> STClassifier:
    """An affine spatial transformer with ``localization`` in front of ``classifier``."""
    st = SpatialTransformer(Affine(), localization, sampler=sampler)
    return STClassifier(classifier, [st], input_shape=input_shape, num_classes=num_classes)


@register_model("tutorial")
def tutorial(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10, dropout: float = 0.5,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False,
) -> STClassifier:
    """The PyTorch spatial transformer tutorial's network (an affine ST in front of LeNet).

    Localisation: ``conv 7x7 (8) -> max-pool 2 -> ReLU -> conv 5x5 (10) -> max-pool 2 ->
    ReLU -> FC 32 -> ReLU -> FC 6`` (identity-initialised). Classifier: ``conv 5x5 (10)
    -> max-pool 2 -> ReLU -> conv 5x5 (20) -> Dropout2d -> max-pool 2 -> ReLU -> FC 50 ->
    ReLU -> Dropout -> FC num_classes``. Unpadded convolutions, so the FC widths follow
    the input size (320 and 90 inputs at 28x28). The tutorial trains it with SGD, lr
    0.01, batch 64, for 20 epochs on MNIST.

    Example:
        >>> stn.create_model("tutorial")(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    size = as_size("input_size", input_size)
    return _lenet_st(
        lenet_localization(in_channels, size, (8, 10), (7, 5), 32),
        lenet_classifier(in_channels, size, num_classes, (10, 20), (5, 5), 50, dropout=dropout),
        (in_channels, *size), num_classes, SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
    )


@register_model("st-cnn-cifar")
def st_cnn_cifar(
    *, in_channels: int = 3, input_size: int | Sequence[int] = 32, num_classes: int = 10, dropout: float = 0.5,
    mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False,
) -> STClassifier:
    """An affine ST-CNN for CIFAR-10 (3x32x32), the network of seed ``004`` (DawnOfTransformers).

    Localisation: ``conv 7x7 (64) -> max-pool 2 -> ReLU -> conv 5x5 (128) -> max-pool 2 ->
    ReLU -> FC 256 -> ReLU -> FC 6``. Classifier: ``conv 5x5 (16) -> max-pool 2 -> ReLU ->
    conv 5x5 (32) -> Dropout2d -> max-pool 2 -> ReLU -> FC 1024 -> ReLU -> Dropout -> FC
    num_classes``. At 32x32 the layer shapes and the 1,585,008 parameters match the
    seed's summary table exactly.

    Example:
        >>> m = stn.create_model("st-cnn-cifar")
        >>> m(torch.rand(2, 3, 32, 32)).shape, sum(p.numel() for p in m.parameters())
        (torch.Size([2, 10]), 1585008)
    """
    size = as_size("input_size", input_size)
    return _lenet_st(
        lenet_localization(in_channels, size, (64, 128), (7, 5), 256),
        lenet_classifier(in_channels, size, num_classes, (16, 32), (5, 5), 1024, dropout=dropout),
        (in_channels, *size), num_classes, SamplerOptions(mode=mode, padding=padding, align_corners=align_corners),
    )
