"""Fixtures of the data tests: an isolated cache (the real MNIST is ``mnist_dir`` of tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """No test reads or writes the user's cache or follows their TORCHSTN_DATA."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("TORCHSTN_CACHE", str(cache))
    monkeypatch.delenv("TORCHSTN_DATA", raising=False)
    return cache
