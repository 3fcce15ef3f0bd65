"""Shared fixtures: the device and floating dtype every numerical test runs with."""

import pytest
import torch


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
