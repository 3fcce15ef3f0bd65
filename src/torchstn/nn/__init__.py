"""Spatial transformer modules and localisation-net builders (layer 3)."""

from __future__ import annotations

from torchstn.nn._cascade import CascadedSpatialTransformer
from torchstn.nn._conv import DIRECT_INPUT_GRAD_MAX_CHANNELS, Conv1d, Conv2d, conv1d, conv2d
from torchstn.nn._localization import IdentityRegressor, conv_localization, declare_input, make_regressor
from torchstn.nn._parallel import ParallelSpatialTransformers
from torchstn.nn._param_groups import param_groups
from torchstn.nn._probabilistic import Distribution, ProbabilisticSpatialTransformer, total_kl
from torchstn.nn._spatial_transformer import SamplerKeywords, SpatialTransformer

__all__ = [
    "CascadedSpatialTransformer",
    "Conv1d",
    "Conv2d",
    "DIRECT_INPUT_GRAD_MAX_CHANNELS",
    "Distribution",
    "IdentityRegressor",
    "ParallelSpatialTransformers",
    "ProbabilisticSpatialTransformer",
    "SamplerKeywords",
    "SpatialTransformer",
    "conv1d",
    "conv2d",
    "conv_localization",
    "declare_input",
    "make_regressor",
    "param_groups",
    "total_kl",
]
