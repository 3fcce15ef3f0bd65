"""The sampler: grids and inputs to outputs, with interchangeable backends.

Layer 2 of torchstn; imports only :mod:`torchstn.transforms`.
"""

from __future__ import annotations

from torchstn.sampling._fused import FusedStatus, fused_applies, fused_status
from torchstn.sampling._options import SamplerOptions
from torchstn.sampling._sample import (
    BACKEND_CHOICES,
    BACKENDS,
    MODES,
    PADDINGS,
    Backend,
    BackendName,
    Mode,
    Padding,
    reference_sample,
    sample,
    warp,
)

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "MODES",
    "PADDINGS",
    "Backend",
    "BackendName",
    "FusedStatus",
    "Mode",
    "Padding",
    "SamplerOptions",
    "fused_applies",
    "fused_status",
    "reference_sample",
    "sample",
    "warp",
]
