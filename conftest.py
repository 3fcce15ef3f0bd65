import doctest

import pytest
import torch
from _pytest.doctest import DoctestItem

import torchstn

#: Why each docstring example that is shown but never run (every line ``+SKIP``) is not run.
#: pytest's own reason, "all tests skipped by +SKIP option", names neither the example nor why;
#: a new all-skipped example without an entry here stops the collection.
SKIPPED_EXAMPLES = {
    "torchstn.engine._rundir.load_model": "needs a trained run directory (runs/demo/st-cnn-aff, written by "
    "`torchstn demo`); tests/engine load trained runs",
    "torchstn.data._datasets.get_dataset": "needs the MNIST files (--data-dir, TORCHSTN_DATA or a download); "
    "tests/data runs it on the real files",
    "torchstn.data._mnist.load_mnist": "needs the MNIST files (root, TORCHSTN_DATA or a download); "
    "tests/data runs it on the real files",
    "torchstn.data._generate.distorted_mnist": "needs the MNIST files (root, TORCHSTN_DATA or a download); "
    "tests/data runs it on the real files",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every all-``+SKIP`` docstring example its reason (:data:`SKIPPED_EXAMPLES`), shown by ``-rs``."""
    for item in items:
        if not isinstance(item, DoctestItem) or item.dtest is None:
            continue
        examples = item.dtest.examples
        if examples and all(example.options.get(doctest.SKIP) for example in examples):
            reason = SKIPPED_EXAMPLES.get(item.name)
            if reason is None:
                raise pytest.UsageError(
                    f"the docstring example of {item.name} is all +SKIP: say why in conftest.py's SKIPPED_EXAMPLES"
                )
            item.add_marker(pytest.mark.skip(reason=f"example of {item.name} shown, not run: {reason}"))


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
