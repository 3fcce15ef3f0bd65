"""Cascaded spatial transformers: the plain cascade and the (inverse) compositional STN."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchstn._tracing import exporting
from torchstn._validation import caller_stacklevel, check_bool, check_floating, check_int, check_tensor, sizes_traced
from torchstn.nn._spatial_transformer import (
    SamplerKeywords,
    SpatialTransformer,
    Unpack,
    _declared_input,
    _OutputSize,
    _own_features,
)
from torchstn.sampling import SamplerOptions
from torchstn.transforms import MatrixTransform, Transform

__all__ = ["CascadedSpatialTransformer"]


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every layer re-initialised (its own random weights)."""
    clone = copy.deepcopy(module)
    for m in clone.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return clone


def _kept_by_copies(module: nn.Module) -> list[str]:
    """The parameters of ``module`` that :func:`_fresh_copy` cannot re-initialise: those of
    modules without ``reset_parameters()`` (a user's net holding its weights as plain
    ``nn.Parameter``), which every copy keeps."""
    return [f"{prefix}.{name}" if prefix else name
            for prefix, m in module.named_modules() if not callable(getattr(m, "reset_parameters", None))
            for name, _ in m.named_parameters(recurse=False)]


class _CascadeOutputSize(_OutputSize):
    """A cascade's ``output_size``, also checked against its steps' localisation nets once the
    cascade is built (set later, an unfit size blamed ``x`` in the next forward pass)."""

    def checked(self, module: Any, value: object) -> tuple[int, ...] | None:
        size = super().checked(module, value)
        if "num_steps" in module.__dict__:  # (built: the constructor checks its own)
            module._check_warps_fit(size)
        return size


class CascadedSpatialTransformer(SpatialTransformer):
    r"""``steps`` spatial transformers in series, each refining the warp of the last.

    Step ``k`` looks at the input warped by the current estimate ``p`` and predicts an
    update ``Δp_k`` (its regressor starts at the identity, so a new cascade is the
    identity warp). The estimate is updated by composition,

    .. math:: M(p_{k+1}) = M(p_k)\, M(Δp_k),

    i.e. ``p <- transform.compose(p, Δp)``: warping by the composed parameters equals
    warping by ``p`` and then warping that result by ``Δp``, which is what the step
    saw and corrected. The two modes differ only in what is propagated:

    - ``compositional=False`` (the plain cascade, "STN stacked in series"): the image
      itself is propagated; each step resamples the previous step's *output*, so pixels
      pushed outside the frame (and the blur of each interpolation) are lost for good.
    - ``compositional=True`` (c-STN / IC-STN, Lin & Lucey 2017, sections 3.2-3.3): the
      *parameters* are propagated; every step warps the *original* input by the current
      ``p`` and the output is one resampling of the original by the final ``p``, so
      nothing is lost at the borders ("boundary effect", section 3.1).

    Given the same predictions both modes reach the same ``p``; with ``share=True`` all
    steps use one localisation net and regressor (the recurrent IC-STN, section 3.3),
    with ``share=False`` each step has its own (c-STN, section 3.2). The authors' code
    composes on the other side (``M(Δp) M(p)``, the update acting in the input frame);
    a learned predictor can express either, and this side keeps the plain and
    compositional cascades geometrically identical.

    Args:
        transform: a :class:`~torchstn.transforms.MatrixTransform` (or its name); a
            compositional cascade needs its ``compose``. A plain cascade also accepts
            other families (e.g. TPS), without a total ``θ``.
        localization: the localisation net of the steps: one module (shared, or
            deep-copied and re-initialised per step when ``share=False``: a warning names
            the parameters of modules without ``reset_parameters()``, which keep their values), or a
            sequence of ``steps`` modules (``share=False``).
        steps: number of refinement steps ``N >= 1``.
        compositional: propagate parameters (True) or warped images (False).
        share: one localisation net and regressor for all steps.
        output_size: spatial size of the output; ``None`` keeps the input's. The steps
            look at warps of this size (the current output); only the first step of a
            plain cascade sees the input itself. A localisation net that declares its
            input (:func:`~torchstn.nn.declare_input`) and sees these warps (every step's
            in a compositional cascade, the later steps' in a plain one) must be built
            for this size: ``ValueError`` otherwise.
        in_features, sampler, **sampler_keywords: as in
            :class:`~torchstn.nn.SpatialTransformer` (one sampler for every step).

    Attributes:
        localization, regressor: the predictor of the first step (of every step when
            shared), as in :class:`~torchstn.nn.SpatialTransformer`.
        refiners: the :class:`~torchstn.nn.SpatialTransformer` predictors of steps
            ``2 .. N`` when not shared (empty when shared).
        last_params: total ``θ`` ``(B, P)`` of the last forward pass (warping the
            original input by it gives the compositional output), with its graph as
            in :class:`~torchstn.nn.SpatialTransformer`; ``None`` for a plain cascade of a
            non-matrix family.
        last_step_params: the ``N`` updates ``Δθ_k`` ``(B, P)`` of the last forward pass.

    Convention:
        ``θ`` maps output points to input points (normalised (x, y), ``src_from_dst``);
        the same ``align_corners`` is used for every grid and sampler.

    Example:
        >>> loc = stn.conv_localization(1, (28, 28))
        >>> ic = stn.CascadedSpatialTransformer(stn.Projective(), loc, steps=4)
        >>> x = torch.rand(2, 1, 28, 28)
        >>> torch.allclose(ic(x), x, atol=1e-5)  # identity-initialised steps
        True
        >>> len(ic.last_step_params), ic.last_params.shape
        (4, torch.Size([2, 8]))
    """

    last_params: torch.Tensor | None
    last_step_params: list[torch.Tensor]
    output_size = _CascadeOutputSize()

    def __init__(
        self,
        transform: Transform | str,
        localization: nn.Module | Sequence[nn.Module],
        steps: int = 4,
        compositional: bool = True,
        share: bool = True,
        output_size: Sequence[int] | None = None,
        *,
        in_features: int | None = None,
        sampler: SamplerOptions | None = None,
        **sampler_keywords: Unpack[SamplerKeywords],
    ) -> None:
        check_int("steps", steps, 1)
        check_bool("compositional", compositional)
        check_bool("share", share)
        if isinstance(localization, nn.Module):
            locs = [localization] if share else [localization] + [_fresh_copy(localization) for _ in range(steps - 1)]
            kept = [] if share or steps == 1 else _kept_by_copies(localization)
            if kept:
                warnings.warn(
                    f"share=False: the localization net's {', '.join(kept)} belong to modules without "
                    "reset_parameters(), so every step's copy starts from the same values; pass one net per step "
                    "to give each its own", UserWarning, stacklevel=caller_stacklevel())
        elif isinstance(localization, Sequence) and all(isinstance(m, nn.Module) for m in localization):
            if share or len(localization) != steps:
                raise ValueError(
                    f"a sequence of localization nets needs share=False and one net per step ({steps}), "
                    f"got {len(localization)} with share={share}"
                )
            locs = list(localization)
        else:
            raise TypeError(f"localization must be an nn.Module or a sequence of them, got {type(localization).__name__}")
        super().__init__(transform, locs[0], output_size, in_features=in_features, sampler=sampler, **sampler_keywords)
        if compositional and not isinstance(self.transform, MatrixTransform):
            raise TypeError(
                f"a compositional cascade needs a MatrixTransform (it composes parameters), got {self.transform.name}; "
                "use compositional=False to resample at every step instead"
            )
        self.refiners = nn.ModuleList(
            SpatialTransformer(self.transform, loc, output_size, in_features=in_features, sampler=self.sampler)
            for loc in locs[1:]
        )
        self.num_steps = steps
        self.compositional = compositional
        self.share = share
        # the nets that see warps of output_size: every step's in a compositional cascade, the
        # steps' after the first in a plain one
        self._check_warps_fit(self.output_size)
        self.last_step_params = []

    def predict_step(self, k: int, view: torch.Tensor) -> torch.Tensor:
        """The update ``Δθ_k`` ``(B, P)`` that step ``k`` (0-based) predicts from its view of the input."""
        if k == 0 or self.share:
            return super().predict_params(view)
        return self.refiners[k - 1].predict_params(view)

    def _check_warps_fit(self, output_size: tuple[int, ...] | None) -> None:
        """Refuse an ``output_size`` that a localisation net seeing warps of that size was not built for
        (where the cascade is built, and where ``output_size`` is set later: _CascadeOutputSize)."""
        if not _own_features(self):  # (a subclass may give its nets another view of the warps)
            return
        nets = [self.localization, *(step.localization for step in self.refiners)]
        _check_nets_fit(output_size, nets if self.compositional or self.share else nets[1:], self.compositional,
                        self.num_steps)

    @property
    def has_total_params(self) -> bool:
        """Whether the steps compose to one total ``θ`` (:meth:`predict_params`, ``last_params``):
        for a matrix family; a plain cascade of another (a TPS) has none."""
        return isinstance(self.transform, MatrixTransform)

    def _cascade(
        self, x: torch.Tensor, init_params: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """Run the steps: (output, total θ or None, per-step updates)."""
        transform = self.transform
        # (x itself before the identity is made from its batch, device and dtype: an integer x was
        # reported as a "dtype" the caller never passed)
        check_floating("x", check_tensor("x", x, ndim=transform.ndim + 2))
        composable = self.has_total_params
        p = init_params
        if p is not None:  # (named: transform_input's own check said "params")
            p = transform.check_params(p, "init_params")
            if not sizes_traced() and p.shape[0] != x.shape[0]:
                raise ValueError(f"init_params must have the batch size of x ({x.shape[0]}), got {tuple(p.shape)}")
            if p.device != x.device:  # (the warp's check named "params")
                raise ValueError(f"init_params must be on the device of x ({x.device}), got {p.device}")
        if p is None and composable:
            p = transform.identity(x.shape[0], x.device, x.dtype)
        updates: list[torch.Tensor] = []
        if self.compositional:
            for k in range(self.num_steps):
                dp = self.predict_step(k, self.transform_input(x, p))
                p = transform.compose(p, dp.to(p.dtype))  # (autocast: a bfloat16 step, a float32 total)
                updates.append(dp)
            return self.transform_input(x, p), p, updates
        current = x if init_params is None else self.transform_input(x, init_params)
        for k in range(self.num_steps):
            dp = self.predict_step(k, current)
            current = self.transform_input(current, dp)
            p = transform.compose(p, dp.to(p.dtype)) if composable else None
            updates.append(dp)
        return current, p, updates

    def predict_params(self, x: torch.Tensor, *, init_params: torch.Tensor | None = None) -> torch.Tensor:
        """The total ``θ`` ``(B, P)`` the cascade reaches on ``x`` (starting from ``init_params``)."""
        if not self.has_total_params:
            raise TypeError(f"a total θ needs a MatrixTransform, this cascade uses {self.transform.name}")
        return self._cascade(x, init_params)[1]

    def forward(
        self, x: torch.Tensor, return_params: bool = False, *, init_params: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Refine the warp of ``x`` in ``N`` steps.

        Args:
            x: input ``(B, C, H, W)`` (``(B, C, D, H, W)``, ``(B, C, L)`` for 3-D / 1-D
                transforms).
            init_params: optional starting ``θ`` ``(B, P)`` (e.g. the known perturbation
                of the IC-STN experiment, section 4.2): the compositional cascade starts
                its estimate there on the *original* ``x``; the plain cascade first
                resamples ``x`` by it.
            return_params: also return the total ``θ``.

        Returns:
            the output ``(B, C, *output_size)``, or ``(output, θ)``.
        """
        out, params, updates = self._cascade(x, init_params)
        if not exporting():  # an exported program keeps no record of its pass
            self.last_params, self.last_step_params = params, updates
        return (out, params) if return_params else out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, steps={self.num_steps}, compositional={self.compositional}, share={self.share}"


def _check_nets_fit(output_size: tuple[int, ...] | None, nets: Sequence[nn.Module], compositional: bool,
                    steps: int) -> None:
    """Refuse an ``output_size`` that a localisation net seeing the warps of that size was not built
    for: the first forward pass blamed ``x``, naming a shape the caller had not passed (the
    module's own warp)."""
    if output_size is None or (not compositional and steps == 1):
        return
    for net in nets:
        declared = _declared_input(net)
        if declared is not None and tuple(declared[1:]) != tuple(output_size):
            which = ("in a compositional cascade every step" if compositional
                     else "in a plain cascade each step after the first")
            raise ValueError(
                f"output_size={tuple(output_size)}: {which} runs its localisation net on the current warp of that "
                f"size, but the net is built for "
                f"input_size={tuple(declared[1:])}: give output_size={tuple(declared[1:])}, or a net built for "
                f"{tuple(output_size)}"
            )
