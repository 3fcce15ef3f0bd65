"""Fixtures of the data tests: the real MNIST beside the clone, and an isolated cache."""

from __future__ import annotations

from pathlib import Path

import pytest

#: ``../shared/data/mnist`` beside the repository (where CI and the developers have it)
MNIST_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the MNIST files are not at {MNIST_DIR} (../shared/data/mnist beside the repository)")
    return MNIST_DIR


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """No test reads or writes the user's cache or follows their TORCHSTN_DATA."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("TORCHSTN_CACHE", str(cache))
    monkeypatch.delenv("TORCHSTN_DATA", raising=False)
    return cache
