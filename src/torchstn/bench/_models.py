"""The networks of the training-step case: ST-CNN and the same CNN with no transformer."""

from __future__ import annotations

from torch import nn

from torchstn.models import create_model

__all__ = ["training_models"]


def training_models(size: int = 28) -> tuple[nn.Module, nn.Module, str]:
    """``(st_cnn, cnn, source)``: the paper's ST-CNN (affine) and the bare CNN it is built on.

    Both take ``(B, 1, size, size)`` and return 10 logits; ``source`` names them for the
    report.

    Example:
        >>> st_cnn, cnn, source = training_models()
        >>> len(st_cnn.transformers), len(cnn.transformers)
        (1, 0)
    """
    st_cnn = create_model("st-cnn-aff", input_size=size)
    cnn = create_model("cnn", input_size=size)
    return st_cnn, cnn, 'create_model("st-cnn-aff") vs create_model("cnn")'
