"""Shared fixtures: the device and floating dtype every numerical test runs with, and the real MNIST.

Seeded random grids, θ, inputs and a regressor perturbation are plain functions in
``tests/_helpers.py``; the CLI runner is the ``cli`` fixture of ``tests/cli/conftest.py``.
"""

from pathlib import Path

import pytest
import torch

from tests._helpers import HAS_MNIST, MNIST_DIR, NO_MNIST


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_devices())
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture
def atol(dtype: torch.dtype) -> float:
    """Absolute tolerance for results computed in ``dtype``."""
    return {torch.float64: 1e-10, torch.float32: 1e-5}[dtype]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The directory of the four MNIST IDX files; the test is skipped where they are missing."""
    if not HAS_MNIST:
        pytest.skip(NO_MNIST)
    return MNIST_DIR
