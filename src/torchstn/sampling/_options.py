"""``SamplerOptions``: the sampler's four options as one validated, immutable value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from torchstn.sampling._sample import (
    Backend,
    Mode,
    Padding,
    check_mode_fits,
    check_options,
    sample_checked_options,
    warp_checked_options,
)
from torchstn.transforms import Transform

__all__ = ["SamplerOptions"]


@dataclass(frozen=True)
class SamplerOptions:
    """How a sampler reads its input: ``mode``, ``padding``, ``align_corners`` and ``backend``.

    One value to hand to a module or a model builder instead of four keywords threaded
    by hand. The options are validated once, when the object is made; it is immutable,
    hashable, picklable and deep-copyable, so a module can keep it as configuration.

    Args:
        mode: ``"bilinear"``, ``"nearest"`` or ``"bicubic"``, as in :func:`~torchstn.sample`.
        padding: ``"zeros"``, ``"border"`` or ``"reflection"``.
        align_corners: as in :func:`torch.nn.functional.grid_sample`; the same flag is
            given to the grid and to the sampler.
        backend: ``"auto"`` (the fastest correct kernel for the input), ``"torch"``,
            ``"fused"`` or ``"reference"``, as in :func:`~torchstn.sample` (whose ``None``
            is ``"auto"``, here too).

    Example:
        >>> options = SamplerOptions(padding="border")
        >>> x = torch.rand(2, 1, 8, 8)
        >>> out = options.warp(x, stn.Affine().identity(batch=2), "affine")
        >>> torch.allclose(out, stn.warp(x, stn.Affine().identity(batch=2), "affine", padding="border"))
        True
    """

    mode: Mode = "bilinear"
    padding: Padding = "zeros"
    align_corners: bool = False
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        if self.backend is None:  # (sample's and warp's None: SamplerOptions refused it)
            object.__setattr__(self, "backend", "auto")
        check_options(self.mode, self.padding, self.backend, self.align_corners)

    def check_ndim(self, ndim: int) -> None:
        """Refuse these options for inputs with ``ndim`` spatial dimensions where every call would refuse
        them (``mode="bicubic"`` in 3-D), with the message of :func:`~torchstn.sample`: a module that
        knows its transform's rank checks it where it is built, not in its first forward pass.

        Raises:
            ValueError: ``mode`` cannot sample such inputs.
        """
        check_mode_fits(ndim + 2, self.mode)

    def sample(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """:func:`~torchstn.sample` of ``x`` at ``grid`` with these options (checked once, when made)."""
        return sample_checked_options(x, grid, self.mode, self.padding, self.align_corners, self.backend)

    def warp(
        self, x: torch.Tensor, params: torch.Tensor, transform: Transform | str, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """:func:`~torchstn.warp` of ``x`` by ``params`` of ``transform`` with these options (checked once, when made)."""
        return warp_checked_options(x, params, transform, size, self.mode, self.padding, self.align_corners, self.backend)
