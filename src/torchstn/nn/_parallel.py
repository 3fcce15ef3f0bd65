"""Parallel spatial transformers: several heads attending to the same input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

from torchstn._validation import check_choice, sizes_traced
from torchstn.nn._spatial_transformer import SpatialTransformer

__all__ = ["ParallelSpatialTransformers"]

Merge = Literal["concat", "list"]
MERGES: tuple[str, ...] = get_args(Merge)


class ParallelSpatialTransformers(nn.Module):
    r"""``K`` spatial transformers applied to the same input, each with its own localisation net.

    Jaderberg et al. (2015) use two or four transformers in parallel so that each one
    attends to a different part of the input: one digit each in the MNIST addition
    task (appendix A.3), head and body of a bird in CUB-200-2011 (section 4.3):

    .. math:: V_k = \mathcal{T}_{θ_k}(U), \quad θ_k = f_{loc,k}(U), \quad k = 1 \dots K

    Args:
        transformers: the ``K`` modules, usually :class:`~torchstn.nn.SpatialTransformer`
            (any module mapping ``(B, C, ...)`` to a warped tensor works; those with a
            ``predict_params`` / ``last_params`` expose their ``θ_k``).
        merge: ``"concat"`` joins the outputs along channels, ``(B, sum_k C_k, ...)``
            (they must share their spatial size); ``"list"`` returns the ``K`` outputs.

    Attributes:
        last_params: ``[θ_1, ..., θ_K]`` of the last forward pass (``None`` entries for
            modules that do not record one).

    Example:
        >>> heads = [stn.SpatialTransformer("affine", stn.conv_localization(2, (42, 42))) for _ in range(2)]
        >>> par = stn.ParallelSpatialTransformers(heads, merge="concat")
        >>> par(torch.rand(3, 2, 42, 42)).shape
        torch.Size([3, 4, 42, 42])
        >>> [tuple(t.shape) for t in par.predict_params(torch.rand(3, 2, 42, 42))]
        [(3, 6), (3, 6)]
    """

    def __init__(self, transformers: Sequence[nn.Module], merge: Merge = "concat") -> None:
        super().__init__()
        if isinstance(transformers, nn.Module) or not isinstance(transformers, Sequence):
            raise TypeError(f"transformers must be a sequence of modules, got {type(transformers).__name__}")
        if len(transformers) == 0:
            raise ValueError("transformers must be a non-empty sequence of nn.Module, got an empty one")
        if not all(isinstance(t, nn.Module) for t in transformers):
            raise TypeError(f"transformers must be a sequence of nn.Module, got {[type(t).__name__ for t in transformers]}")
        self.transformers = nn.ModuleList(transformers)
        self.merge = check_choice("merge", merge, MERGES)

    @property
    def last_params(self) -> list[torch.Tensor | None]:
        return [getattr(t, "last_params", None) for t in self.transformers]

    def predict_params(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        """``[θ_1, ..., θ_K]``, each ``(B, P_k)``; ``None`` for a module without ``predict_params``
        (as :attr:`last_params` has)."""
        return [t.predict_params(x) if hasattr(t, "predict_params") else None for t in self.transformers]

    def forward(
        self, x: torch.Tensor, return_params: bool = False
    ) -> torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor | list[torch.Tensor], list[torch.Tensor | None]]:
        """Warp ``x`` by every transformer.

        Returns:
            ``(B, sum_k C_k, *size)`` for ``merge="concat"``, the list of ``K`` outputs for
            ``"list"``; with ``return_params=True`` also ``[θ_1, ..., θ_K]``.
        """
        # θ as each head returns it in this pass: its last_params is not recorded under torch.export,
        # where reading it gave the θ of the last eager call, frozen as constants (or None); another
        # module's last_params, if it keeps one, read after its call
        pairs = [t(x, return_params=True) if return_params and isinstance(t, SpatialTransformer)
                 else (t(x), getattr(t, "last_params", None)) for t in self.transformers]
        outs = [out for out, _ in pairs]
        if self.merge == "concat":
            if not sizes_traced():  # (traced sizes are tensors)
                # compared with the first output's, not gathered in a set: torch.export's symbolic
                # sizes cannot be hashed (a dynamic batch failed to export)
                first = outs[0].shape
                if any(o.shape[2:] != first[2:] for o in outs):
                    raise ValueError(
                        f"merge='concat' needs outputs of one spatial size, got {[tuple(o.shape[2:]) for o in outs]}; "
                        "give the transformers the same output_size or use merge='list'"
                    )
                if any(o.shape[0] != first[0] for o in outs):
                    raise ValueError(
                        f"merge='concat' needs outputs of one batch size, got {[o.shape[0] for o in outs]} (a "
                        "P-STN head gives samples x batch outputs); use merge='list'"
                    )
            merged: torch.Tensor | list[torch.Tensor] = torch.cat(outs, dim=1)
        else:
            merged = outs
        if not return_params:
            return merged
        return merged, [theta for _, theta in pairs]

    def extra_repr(self) -> str:
        return f"K={len(self.transformers)}, merge={self.merge!r}"
