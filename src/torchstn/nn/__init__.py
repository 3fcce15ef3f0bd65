"""Spatial transformer modules and localisation-net builders (layer 3)."""

from __future__ import annotations

from torchstn.nn._localization import IdentityRegressor, conv_localization, make_regressor
from torchstn.nn._spatial_transformer import SpatialTransformer

__all__ = ["IdentityRegressor", "SpatialTransformer", "conv_localization", "make_regressor"]
