"""Fixtures of the sampler tests."""

import warnings

import pytest

from torchstn.sampling import fused_status


@pytest.fixture(scope="module")
def fused_kernel() -> None:
    """Build (or load from torch's extension cache) the fused 2-D kernel once per module; skip where it cannot be built."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        status = fused_status()
        if not status.available:
            pytest.skip(f"the fused kernel could not be built here: {status.error}")
