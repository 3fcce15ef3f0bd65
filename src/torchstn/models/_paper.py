"""The distorted-MNIST architectures of the STN paper (Jaderberg et al., 2015, appendix A.1).

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

from collections.abc import Sequence

from torch import nn

from torchstn.models._base import STClassifier, as_size, feature_shape
from torchstn.models._registry import forwards_kwargs, register_model
from torchstn.nn import SpatialTransformer, declare_input
from torchstn.transforms import Affine, Projective, ThinPlateSpline, Transform

__all__ = [
    "cnn",
    "cnn_classifier",
    "fcn",
    "fcn_classifier",
    "st_cnn_aff",
    "st_cnn_localization",
    "st_cnn_proj",
    "st_cnn_tps",
    "st_fcn_aff",
    "st_fcn_localization",
    "st_fcn_proj",
    "st_fcn_tps",
]


def _mlp(in_features: int, hidden: Sequence[int], out_features: int | None) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    if out_features is not None:
        layers.append(nn.Linear(in_features, out_features))
    return layers


def fcn_classifier(
    in_channels: int, input_size: tuple[int, int], num_classes: int, hidden: Sequence[int] = (128, 128)
) -> nn.Sequential:
    """``Flatten -> [FC -> ReLU] * len(hidden) -> FC(num_classes)``: ``(B, C, H, W) -> (B, num_classes)``."""
    return nn.Sequential(*_mlp(in_channels * input_size[0] * input_size[1], hidden, num_classes))


def cnn_classifier(
    in_channels: int,
    input_size: tuple[int, int],
    num_classes: int,
    channels: Sequence[int] = (32, 32),
    kernel_sizes: Sequence[int] = (9, 7),
    hidden: int = 128,
) -> nn.Sequential:
    """``[conv k x k (same) -> max-pool 2 -> ReLU] * n -> FC(hidden) -> ReLU -> FC(num_classes)``.

    ``(B, C, H, W) -> (B, num_classes)``; ``hidden=0`` drops the hidden FC layer.
    """
    if len(channels) != len(kernel_sizes):
        raise ValueError(f"channels and kernel_sizes must have the same length, got {channels} and {kernel_sizes}")
    layers: list[nn.Module] = []
    c = in_channels
    for out, k in zip(channels, kernel_sizes):
        layers += [nn.Conv2d(c, out, k, padding=k // 2), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
        c = out
    convs = nn.Sequential(*layers)
    features = int(_prod(feature_shape(convs, in_channels, input_size, "CNN classifier")))
    return nn.Sequential(*layers, *_mlp(features, (hidden,) if hidden else (), num_classes))


def _pooled(size: tuple[int, int], pool: int) -> tuple[int, int]:
    if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
        raise ValueError(f"pool must be a positive int, got {pool!r}")
    return (size[0] // pool, size[1] // pool)


def _widths(widths: int | Sequence[int]) -> tuple[int, ...]:
    return (widths,) if isinstance(widths, int) else tuple(widths)


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def st_fcn_localization(in_channels: int, input_size: tuple[int, int], hidden: Sequence[int] = (32, 32)) -> nn.Sequential:
    """The ST-FCN localisation net: ``Flatten -> [FC -> ReLU] * len(hidden)``, ``(B, C, H, W) -> (B, hidden[-1])``."""
    net = nn.Sequential(*_mlp(in_channels * input_size[0] * input_size[1], hidden, None))
    return declare_input(net, in_channels, input_size)


def st_cnn_localization(
    in_channels: int, input_size: tuple[int, int], channels: int = 20, kernel_size: int = 5, hidden: int = 20
) -> nn.Sequential:
    """The ST-CNN localisation net of the paper's appendix A.1.

    ``avg-pool 2 -> conv k x k (channels) -> max-pool 2 -> ReLU -> conv k x k (channels) -> ReLU
    -> FC(hidden) -> ReLU``: ``(B, C, H, W) -> (B, hidden)``. Needs inputs of at least
    28x28 with the default 5x5 kernels.
    """
    convs = nn.Sequential(
        nn.AvgPool2d(2),
        nn.Conv2d(in_channels, channels, kernel_size),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, kernel_size),
        nn.ReLU(inplace=True),
    )
    features = _prod(feature_shape(convs, in_channels, input_size, "ST-CNN localisation net"))
    net = nn.Sequential(*convs, nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(inplace=True))
    return declare_input(net, in_channels, input_size)


@register_model("fcn")
def fcn(
    *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10,
    hidden: Sequence[int] = (128, 128), pool: int = 1,
) -> STClassifier:
    """FCN baseline (STN paper, section 4.1, Table 1; appendix A.1).

    ``Flatten -> FC 128 -> ReLU -> FC 128 -> ReLU -> FC num_classes`` (softmax in the
    loss). The widths are our choice (``hidden``). ``pool`` average-pools the input
    first (the same classifier then serves as the baseline of an ST-FCN with that ``pool``).

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
) -> STClassifier:
    """CNN baseline (STN paper, section 4.1, Table 1; appendix A.1).

    ``conv 9x9 (32, same) -> max-pool 2 -> ReLU -> conv 7x7 (32, same) -> max-pool 2 ->
    ReLU -> FC 128 -> ReLU -> FC num_classes``. The paper gives the kernel sizes and
    the layer order; filter counts, padding and the FC width are our choice. ``pool``
    average-pools the input first (the classifier of an ST-CNN with that ``pool``).

    Example:
        >>> stn.create_model("cnn", input_size=60)(torch.rand(2, 1, 60, 60)).shape
        torch.Size([2, 10])
    """
    size = as_size("input_size", input_size)
    return STClassifier(
        cnn_classifier(in_channels, _pooled(size, pool), num_classes, channels, kernel_sizes, hidden),
        pool=pool, input_shape=(in_channels, *size), num_classes=num_classes,
    )


_TRANSFORMS: dict[str, tuple[str, type[Transform]]] = {
    "aff": ("affine (6 parameters)", Affine),
    "proj": ("projective (8 parameters)", Projective),
    "tps": ("16-point thin-plate spline (4x4 control points, 32 parameters)", ThinPlateSpline),
}

_DOC = """{title} (STN paper, section 4.1, Table 1; appendix A.1).

    {num} spatial transformer(s) with a {transform} transform, {loc}, then the
    {classifier} baseline on the transformer's output (average-pooled by ``pool``;
    use ``pool=2`` for RTS and cluttered MNIST as the paper does). With
    ``num_transformers=2`` the transformers run in parallel on the input and their
    outputs are concatenated along channels (the paper's 2xST-FCN for MNIST addition).
    See :mod:`torchstn.models._paper` for what the paper fixes and what we chose.

    Args:
        in_channels, input_size, num_classes: the data (``input_size``: ``S`` or ``(H, W)``).
        num_transformers: transformers in parallel.
        pool: average-pooling factor after the transformer(s).
        output_size: size the transformer samples (default: ``input_size``).
        loc_hidden: width(s) of the localisation net's hidden FC layer(s).
        mode, padding, align_corners: sampling options of the transformer.
        **classifier_kwargs: passed to the {classifier} classifier (``hidden``, ...).

    Example:
        >>> m = stn.create_model("{name}", input_size=42, pool=2)
        >>> m(torch.rand(2, 1, 42, 42)).shape, m.transform_input(torch.rand(2, 1, 42, 42)).shape
        (torch.Size([2, 10]), torch.Size([2, 1, 21, 21]))
"""

_LOC_TEXT = {
    "fcn": "whose localisation net is an FCN (``FC 32 -> ReLU -> FC 32 -> ReLU``, our widths)",
    "cnn": (
        "whose localisation net is ``avg-pool 2 -> conv 5x5 (20) -> max-pool 2 -> ReLU -> "
        "conv 5x5 (20) -> ReLU -> FC 20 -> ReLU`` (as in the paper)"
    ),
}


def _make_st_builder(kind: str, key: str):  # type: ignore[no-untyped-def]
    description, transform_cls = _TRANSFORMS[key]
    name = f"st-{kind}-{key}"

    def builder(
        *, in_channels: int = 1, input_size: int | Sequence[int] = 28, num_classes: int = 10,
        num_transformers: int = 1, pool: int = 1, output_size: int | Sequence[int] | None = None,
        loc_hidden: int | Sequence[int] | None = None, mode: str = "bilinear", padding: str = "zeros",
        align_corners: bool = False, **classifier_kwargs: object,
    ) -> STClassifier:
        size = as_size("input_size", input_size)
        out_size = size if output_size is None else as_size("output_size", output_size)
        if not isinstance(num_transformers, int) or num_transformers < 1:
            raise ValueError(f"num_transformers must be a positive int, got {num_transformers!r}")
        transformers = []
        for _ in range(num_transformers):
            if kind == "fcn":
                hidden = (32, 32) if loc_hidden is None else _widths(loc_hidden)
                loc = st_fcn_localization(in_channels, size, hidden)
            else:
                loc = st_cnn_localization(in_channels, size, hidden=20 if loc_hidden is None else int(loc_hidden))  # type: ignore[arg-type]
            transformers.append(
                SpatialTransformer(transform_cls(), loc, out_size, mode=mode, padding=padding, align_corners=align_corners)  # type: ignore[arg-type]
            )
        head_channels = in_channels * num_transformers
        head_size = _pooled(out_size, pool)
        make_head = fcn_classifier if kind == "fcn" else cnn_classifier
        head = make_head(head_channels, head_size, num_classes, **classifier_kwargs)  # type: ignore[arg-type]
        return STClassifier(head, transformers, pool=pool, input_shape=(in_channels, *size), num_classes=num_classes)

    builder.__name__ = builder.__qualname__ = name.replace("-", "_")
    forwards_kwargs(fcn_classifier if kind == "fcn" else cnn_classifier)(builder)  # **classifier_kwargs
    builder.__doc__ = _DOC.format(
        title=f"ST-{kind.upper()} {key.capitalize()}", num="One or more", transform=description,
        loc=_LOC_TEXT[kind], classifier=kind.upper(), name=name,
    )
    register_model(name)(builder)
    return builder


st_fcn_aff = _make_st_builder("fcn", "aff")
st_fcn_proj = _make_st_builder("fcn", "proj")
st_fcn_tps = _make_st_builder("fcn", "tps")
st_cnn_aff = _make_st_builder("cnn", "aff")
st_cnn_proj = _make_st_builder("cnn", "proj")
st_cnn_tps = _make_st_builder("cnn", "tps")
