"""The networks of the training-step case: ST-CNN and the same CNN with no transformer."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["training_models"]


def _fallback_models(size: int) -> tuple[nn.Module, nn.Module]:
    """The paper's MNIST CNN and ST-CNN (affine), for when the model registry is not installed."""
    from torchstn.nn import SpatialTransformer
    from torchstn.transforms import Affine

    def cnn() -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(1, 32, 9, padding=4), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(32, 32, 7, padding=3), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.LazyLinear(128), nn.ReLU(), nn.Linear(128, 10),
        )

    loc = nn.Sequential(
        nn.AvgPool2d(2), nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(20, 20, 5), nn.ReLU(),
        nn.Flatten(), nn.LazyLinear(20), nn.ReLU(),
    )
    st_cnn = nn.Sequential(SpatialTransformer(Affine(), loc, in_features=20), cnn())
    return st_cnn, cnn()


def training_models(size: int = 28) -> tuple[nn.Module, nn.Module, str]:
    """``(st_cnn, cnn, source)``: the ST-CNN (affine) and the bare CNN it is built on.

    Both take ``(B, 1, size, size)`` and return 10 logits. ``source`` says where they
    came from: the model registry (``create_model("st-cnn-aff")`` and
    ``create_model("cnn")``) when it is installed, else a local copy of the paper's
    architecture. Lazy layers are materialised before returning.
    """
    try:
        from torchstn.models import create_model
    except ImportError:
        st_cnn, cnn = _fallback_models(size)
        source = "local copy of the paper's CNN / ST-CNN (model registry not installed)"
    else:
        st_cnn = create_model("st-cnn-aff", input_size=size)
        cnn = create_model("cnn", input_size=size)
        source = 'create_model("st-cnn-aff") vs create_model("cnn")'
    with torch.no_grad():
        probe = torch.zeros(2, 1, size, size)
        st_cnn(probe)
        cnn(probe)
    return st_cnn, cnn, source
