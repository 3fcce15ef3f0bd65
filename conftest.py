import pytest
import torch

import torchstn


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["stn"] = torchstn


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread per test process.

    Tests use small tensors, where OpenMP start-up and oversubscription of a shared
    2-core machine cost far more than a second thread gains (seen: 5.7 s -> 0.07 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
