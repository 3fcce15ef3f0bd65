"""Fixtures of the sampler tests."""

import re
import warnings
from types import ModuleType

import pytest

from torchstn.sampling import fused_status


def skip_unless_built(what: str, error: object) -> None:
    """Skip a kernel's tests where it could not be built (no compiler, no ninja, no Python
    headers), but fail where the compiler ran and rejected the kernel's own source (a
    diagnostic "<file>.cpp:<line>:<column>: error:"): a kernel that stops compiling must not
    turn its tests into skips and the suite green. (torch says "Error building extension" for
    a missing compiler too, so that alone does not tell them apart.)"""
    if re.search(r"\.cpp:\d+:\d+: error:", str(error)):
        pytest.fail(f"{what} did not compile: {error}")
    pytest.skip(f"{what} could not be built here: {error}")


@pytest.fixture(scope="module")
def fused_kernel() -> None:
    """Build (or load from torch's extension cache) the fused 2-D kernel once per module; skip where it cannot be built."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        status = fused_status()
        if not status.available:
            skip_unless_built("the fused kernel", status.error)


@pytest.fixture(scope="module")
def fused3d_kernel() -> None:
    """The same for the fused 3-D kernel (which hands itself to the compiled call once both are loaded)."""
    from torchstn.sampling import _fused3d

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if not _fused3d.fused3d_available():
            skip_unless_built("the fused 3-D kernel", _fused3d._library.state.get("error"))


def record_calls(monkeypatch: pytest.MonkeyPatch, module: ModuleType, *names: str) -> list[str]:
    """Wrap ``module``'s functions ``names`` so that each call appends its name to the returned
    list, then runs the function: which kernel entry point a call took."""
    record: list[str] = []
    for name in names:
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: record.append(_n) or _f(*a, **k))
    return record
