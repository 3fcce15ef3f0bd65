"""What every registry model is: optional spatial transformers in front of a classifier.

The engine reads three things from any model: ``transformers`` (an ``nn.ModuleList``
of :class:`~torchstn.SpatialTransformer`, empty for a plain network),
:meth:`STClassifier.transform_input` (what the classifier sees) and the ``input_shape``
/ ``num_classes`` it was built for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from torchstn._validation import check_input, check_int, check_size, first_line
from torchstn.nn import SpatialTransformer

__all__ = ["STClassifier", "as_size", "feature_shape", "feature_width"]


def as_size(name: str, size: int | Sequence[int]) -> tuple[int, int]:
    """An image size given as ``S`` or ``(H, W)`` -> ``(H, W)``."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    height, width = check_size(name, size, 2)
    return height, width


def feature_shape(module: nn.Module, in_channels: int, input_size: tuple[int, int], what: str) -> tuple[int, ...]:
    """Shape ``(C, ...)`` of ``module``'s output for one ``(in_channels, *input_size)`` input.

    Raises ``ValueError`` naming ``what`` and the input size when the input is too
    small for the layers (a convolution or pooling would produce an empty map).
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, in_channels, *input_size))
    except RuntimeError as err:
        raise ValueError(
            f"input_size {input_size} is too small for the {what} ({first_line(err)})"
        ) from None
    finally:
        module.train(was_training)
    if out.numel() == 0:
        raise ValueError(f"input_size {input_size} is too small for the {what}: its output is empty")
    return tuple(out.shape[1:])


def feature_width(module: nn.Module, in_channels: int, input_size: tuple[int, int], what: str) -> int:
    """Width of ``module``'s flattened output for one ``(in_channels, *input_size)`` input
    (what the fully connected layer after it takes); errors as :func:`feature_shape`."""
    return math.prod(feature_shape(module, in_channels, input_size, what))


class STClassifier(nn.Module):
    """Spatial transformers (zero or more) in parallel, an optional pooling, then a classifier.

    ``forward(x)`` is ``classifier(pool(cat([st(x) for st in transformers], dim=1)))``;
    with no transformer it is ``classifier(pool(x))``.

    Args:
        classifier: maps ``(B, C', H', W')`` to logits ``(B, num_classes)``.
        transformers: spatial transformers applied to the input, outputs
            concatenated along channels (``C' = C * len(transformers)``).
        pool: average-pooling factor applied to the transformers' output (to the input
            when there is no transformer); 1: none.
        input_shape: ``(C, H, W)`` the model is built for.
        num_classes: number of output classes.

    Attributes:
        transformers: ``nn.ModuleList`` of :class:`~torchstn.SpatialTransformer`.
        input_shape: ``(C, H, W)``.
        num_classes: ``int``.
    """

    def __init__(
        self,
        classifier: nn.Module,
        transformers: Sequence[SpatialTransformer] = (),
        *,
        pool: int = 1,
        input_shape: tuple[int, int, int],
        num_classes: int,
    ) -> None:
        super().__init__()
        check_int("pool", pool, 1)
        self.transformers = nn.ModuleList(transformers)
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.classifier = classifier
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the classifier sees: ``(B, C * len(transformers), H', W')`` (the pooled ``x`` without transformers)."""
        if len(self.transformers) == 0:
            return self.pool(x)
        warped = [st(x) for st in self.transformers]
        out = warped[0] if len(warped) == 1 else torch.cat(warped, dim=1)
        return self.pool(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, C, H, W)``.

        Raises:
            TypeError, ValueError: ``x`` is not a floating tensor of shape ``(B, *input_shape)``.
        """
        return self.classifier(self.transform_input(self.checked(x)))

    def checked(self, x: torch.Tensor) -> torch.Tensor:
        """``x``, checked to be a floating tensor ``(B, *input_shape)`` (what the model was built for)."""
        return check_input(x, self.input_shape, len(self.input_shape) + 1, "the model")
