"""What several test files share: where the real MNIST is, and seeded random test inputs.

Import as ``from tests._helpers import ...`` (``tests`` is a package; pytest puts the
repository root on ``sys.path``). The ``mnist_dir`` fixture in ``tests/conftest.py`` is
the usual way to get the MNIST directory; :data:`needs_mnist` is for tests that read
:data:`MNIST_DIR` outside a fixture (a module-level command line, a subprocess).

The random helpers draw in float64 from their own seeded generator and cast afterwards,
so a test sees the same numbers in every dtype and on every device, whatever ran before.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from torch import nn

import torchstn as stn

#: ``../shared/data/mnist`` beside the repository (where CI and the developers have it)
MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
HAS_MNIST = all((MNIST_DIR / f"{name}.gz").is_file() for name in stn.data.MNIST_FILES)
NO_MNIST = f"the MNIST files are not at {MNIST_DIR} (../shared/data/mnist beside the repository)"

#: skip a test (or, as ``pytestmark = needs_mnist``, a module) where the MNIST files are missing
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=NO_MNIST)

Device = torch.device | str
M = TypeVar("M", bound=nn.Module)


def random_grid(
    shape: Sequence[int], dtype: torch.dtype, device: Device = "cpu", *, spread: float = 1.3, seed: int = 0
) -> torch.Tensor:
    """Sampling points uniform in ``[-spread, spread]``: with ``spread > 1`` some fall outside
    ``[-1, 1]``, so every padding mode is exercised."""
    generator = torch.Generator().manual_seed(seed)
    grid = (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * spread
    return grid.to(device=device, dtype=dtype)


def random_input(shape: Sequence[int], dtype: torch.dtype, device: Device = "cpu", *, seed: int = 1) -> torch.Tensor:
    """Standard-normal values of ``shape`` (an image, volume or signal batch)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def random_theta(
    transform: stn.Transform, batch: int, dtype: torch.dtype, device: Device = "cpu", *, scale: float, seed: int = 0
) -> torch.Tensor:
    """``(batch, P)`` parameters near ``transform``'s identity: identity + ``scale`` · N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    noise = scale * torch.randn(batch, transform.num_params, generator=generator, dtype=torch.float64)
    return (transform.identity(batch, dtype=torch.float64) + noise).to(device=device, dtype=dtype)


def random_images(batch: int, shape: Sequence[int] = (1, 28, 28), *, seed: int = 0) -> torch.Tensor:
    """``(batch, *shape)`` float32 images uniform in [0, 1] (``shape`` is ``(C, H, W)``, MNIST's by default)."""
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed))


def perturb(module: M, seed: int = 0) -> M:
    """``module`` with non-zero weights in its :class:`~torchstn.nn.IdentityRegressor` layers
    (0.05 · N(0, 1); they start at zero), so θ depends on the input and the warp is not the
    identity. Returns ``module``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, stn.IdentityRegressor):
                m.weight.copy_(0.05 * torch.randn(m.weight.shape, generator=generator))
    return module


def float32_forwards() -> list[torch.Tensor]:
    """Float32 forwards of the fused 2-D kernel that reach each of its forward paths: affine
    rows, homographies (w crossing 0 in one sample) and grids; 1, 3 and 5 channels (one pass
    up to 4), NCHW and channels_last, wide and narrow (packed) rows, bilinear and nearest,
    the three paddings, both ``align_corners``, a NaN θ and an Inf pixel; and an input beyond
    the 5 MiB from which the bilinear forward fetches rows ahead. The same in every process:
    θ and the images are uniform draws (torch.randn's bits differ between torch's own CPU
    capabilities, torch.rand's do not)."""
    outputs = []
    g = torch.Generator().manual_seed(0)
    options = list(itertools.product(((20, 85), (13, 27)), ("zeros", "border", "reflection"), ("bilinear", "nearest"),
                                     (False, True)))
    for transform in (stn.Affine(), stn.Projective(eps=0.05)):
        theta = transform.identity(3) + 0.4 * (torch.rand(3, transform.num_params, generator=g) - 0.5)
        theta[1, 0] = float("nan")
        if transform.num_params == 8:
            theta[2, 6:] = torch.tensor([-1.3, 0.4])
        for channels in (1, 3, 5):
            x = torch.rand(3, channels, 30, 90, generator=g)
            x[0, :, 10, 20] = float("inf")
            for layout in (torch.contiguous_format, torch.channels_last):
                xl = x.contiguous(memory_format=layout)
                for size, padding, mode, align_corners in options:
                    kwargs = {"padding": padding, "mode": mode, "align_corners": align_corners, "backend": "fused"}
                    outputs.append(stn.warp(xl, theta, transform, size=size, **kwargs))
                    if transform.num_params == 6:  # the same points as a grid
                        outputs.append(stn.sample(xl, transform.grid(theta, size, align_corners), **kwargs))
        # 5.5 MB of 922 KB planes, rotated: the forward fetches rows ahead
        x = torch.rand(6, 1, 480, 480, generator=g)
        rotated = transform.identity(6) + 0.3 * (torch.rand(6, transform.num_params, generator=g) - 0.5)
        outputs.append(stn.warp(x, rotated, transform, size=(150, 190), backend="fused"))
    return outputs
