"""tests/cuda: the backend and gradient checks on a GPU, one command: ``python -m pytest -q tests/cuda``.

Every test here runs with ``device`` = CUDA (this ``device`` fixture overrides the one of
``tests/conftest.py``, whose checkers are collected here again) or, where CUDA is not
available, is skipped with :data:`NO_CUDA` as its reason (``pytest -rs`` lists it).
"""

import pytest
import torch

#: the skip reason of every test in tests/cuda on a machine without CUDA
NO_CUDA = "CUDA is not available on this machine"

#: ``pytestmark = needs_cuda`` in each module of tests/cuda
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda")
