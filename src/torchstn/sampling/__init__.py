"""The sampler: grids and inputs to outputs, with interchangeable backends.

Layer 2 of torchstn; imports only :mod:`torchstn.transforms`.
"""

from __future__ import annotations

from torchstn.sampling._reference import reference_sample
from torchstn.sampling._sample import BACKENDS, MODES, PADDINGS, Mode, Padding, sample, warp

__all__ = ["BACKENDS", "MODES", "PADDINGS", "Mode", "Padding", "reference_sample", "sample", "warp"]
