r"""The reference sampler: bilinear (trilinear in 3-D) and nearest, gradients written out by hand.

This is the readable definition of what every backend must compute. For an output
point with unnormalised source coordinate :math:`u` (one per axis), the kernel reads
the :math:`2^n` neighbours :math:`q = \lfloor u \rfloor + o`, :math:`o \in \{0, 1\}^n`,
with weights

.. math:: w_q(u) = \prod_d \bigl(o_d\, f_d + (1 - o_d)(1 - f_d)\bigr), \qquad f_d = u_d - \lfloor u_d \rfloor

so that :math:`V = \sum_q w_q(u)\, U_q` and

.. math::
    \frac{\partial V}{\partial U_q} = w_q(u), \qquad
    \frac{\partial V}{\partial u_d} = \sum_q U_q\, (2 o_d - 1) \prod_{e \ne d} w_{q,e}(u).

The floor is piecewise constant, so its derivative is taken as 0 everywhere,
including at integers (a sub-gradient). At an integer coordinate :math:`u_d = k`
the neighbours are :math:`k` and :math:`k + 1`, so :math:`\partial V/\partial u_d`
is the *right-sided* difference :math:`U_{k+1} - U_k`: the one-sided derivative
from above, which is also what ``torch.nn.functional.grid_sample`` returns.

Nearest sampling is piecewise constant in the grid: its gradient with respect to the
grid is zero everywhere (exactly, not a sub-gradient choice), and with respect to
the input it routes each output gradient to the one pixel read. Rounding is half to
even, as ``grid_sample`` does.

A grid point that is not finite (NaN or ±Inf in any coordinate) reads no pixel: its
output is NaN in every channel, its gradient is NaN, and it adds nothing to the
gradient with respect to the input. This is torchstn's policy on every backend.

The backward pass is written with differentiable operations, so autograd
differentiates it again: second- and higher-order gradients (``create_graph=True``)
are exact, with the same sub-gradient conventions.

The forward derivative (forward-mode AD: ``torch.autograd.forward_ad``, ``torch.func.jvp``,
``jacfwd``, ``hessian``) is the same sum read the other way: the tangent of the input sampled
at the grid, plus :math:`\sum_d \partial V/\partial u_d\, \dot u_d` for the grid's tangent.
Every sampler call that carries a tangent is sampled here (:func:`~torchstn.sample` and
:func:`~torchstn.warp` hand it over from any backend: ``F.grid_sample`` and the fused
kernels have no forward derivative).
"""

from __future__ import annotations

import itertools
import math

import torch

from torchstn._tracing import autocast_enabled, autocast_off, device_type_of, exporting, nested_forward_ad
from torchstn._validation import HALF_DTYPES
from torchstn.sampling._grid_sample import nan_where_not_finite

__all__ = ["reference_kernel"]


def _unnormalize(grid: torch.Tensor, size: int, align_corners: bool) -> tuple[torch.Tensor, float]:
    """Normalised coordinate -> pixel index, and the constant derivative of that map."""
    if align_corners:
        scale = (size - 1) / 2
        return (grid + 1) * scale, scale
    return ((grid + 1) * size - 1) / 2, size / 2


def _clip(u: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip to ``[0, size - 1]``; derivative 1 strictly inside, 0 where clipped: also through
    autograd (the plain operations' path), where a clamp passed 1 on the bounds themselves (a
    border-padded identity's edge pixels: jacfwd(jacfwd) differed from the Function's)."""
    inside = (u > 0) & (u < size - 1)
    return torch.where(inside, u, u.detach().clamp(0, size - 1)), inside.to(u.dtype)


def _reflect(u: torch.Tensor, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reflect ``u`` into ``[low, high]`` by mirroring at both ends; derivative ±1."""
    span = high - low
    if span <= 0:
        return torch.zeros_like(u), torch.zeros_like(u)
    v = u - low
    sign = torch.where(v < 0, -1.0, 1.0).to(u.dtype)
    v = v.abs()
    flips = torch.floor(v / span)
    extra = v - flips * span
    even = torch.remainder(flips, 2) == 0
    out = torch.where(even, low + extra, high - extra)
    return out, sign * torch.where(even, 1.0, -1.0).to(u.dtype)


def _source_index(
    grid: torch.Tensor, size: int, padding: str, align_corners: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinate of one axis after padding, and ``d(coordinate)/d(grid)``."""
    u, scale = _unnormalize(grid, size, align_corners)
    # a finite point whose pixel coordinate overflows (a grid near the dtype's largest value)
    # lies far outside: kept finite, so that it reads what every point that far out reads
    limit = torch.finfo(u.dtype).max / 4
    u = u.clamp(-limit, limit)
    grad = torch.full_like(u, scale)
    if padding == "border":
        u, d = _clip(u, size)
        grad = grad * d
    elif padding == "reflection":
        low, high = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
        u, d = _reflect(u, low, high)
        u, d2 = _clip(u, size)
        grad = grad * d * d2
    return u, grad


class _Corners:
    """Per-corner linear indices, validity masks and weight factors for one grid."""

    def __init__(self, x_shape: torch.Size, grid: torch.Tensor, padding: str, align_corners: bool, mode: str) -> None:
        spatial = list(x_shape[2:])  # (D,) H, W
        n = len(spatial)
        # (B, N): points with finite coordinates; the others read nothing (a stand-in of 0 keeps
        # the index arithmetic defined) and are set to NaN by the caller
        self.finite = torch.isfinite(grid).all(-1)
        grid = torch.where(self.finite[..., None], grid, 0.0)
        # grid's last axis is (x, y[, z]) = reversed spatial axes
        self.coords: list[torch.Tensor] = []
        self.dcoords: list[torch.Tensor] = []
        for d in range(n):
            size = spatial[n - 1 - d]
            u, du = _source_index(grid[..., d], size, padding, align_corners)
            self.coords.append(u)
            self.dcoords.append(du)
        self.sizes = [spatial[n - 1 - d] for d in range(n)]  # per grid component
        strides = [1] * n
        for d in range(1, n):
            strides[d] = strides[d - 1] * self.sizes[d - 1]
        self.strides = strides
        self.mode = mode
        self.n = n
        if mode == "nearest":
            self.base = [torch.round(u) for u in self.coords]  # half to even, as grid_sample
            self.offsets = [(0,) * n]
        else:
            self.base = [torch.floor(u) for u in self.coords]
            self.offsets = list(itertools.product((0, 1), repeat=n))
        self.frac = [u - b for u, b in zip(self.coords, self.base)]

    def corner(self, offset: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Linear index (B, N), validity (B, N) and per-axis weight factors of one corner."""
        lin = torch.zeros_like(self.base[0], dtype=torch.long)
        valid = self.finite
        factors = []
        for d, o in enumerate(offset):  # (out of place throughout: vmap may batch one operand only)
            idx = self.base[d] + o
            valid = valid & (idx >= 0) & (idx <= self.sizes[d] - 1)
            lin = lin + idx.clamp(0, self.sizes[d] - 1).long() * self.strides[d]
            if self.mode == "nearest":  # 1, on the grid's graph (zero derivative): under create_graph the
                # input's gradient stays attached to the grid, as F.grid_sample's does (ones_like cut it)
                factors.append(self.frac[d] * 0 + 1)
            else:
                factors.append(self.frac[d] if o else 1 - self.frac[d])
        return lin, valid, factors

    @staticmethod
    def read(xf: torch.Tensor, lin: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The pixels ``(B, C, N)`` of one corner of ``xf`` ``(B, C, pixels)``: 0 where the corner
        lies outside, as ``F.grid_sample`` reads no pixel there (the index is clamped to the
        edge, and 0 times a NaN or Inf pixel there would be NaN; with border and reflection
        padding only a corner of weight 0 lies outside)."""
        value = xf.gather(2, lin[:, None].expand(xf.shape[0], xf.shape[1], -1))
        return torch.where(valid[:, None], value, 0.0)


def _flat(grid: torch.Tensor) -> torch.Tensor:
    """``(B, *size, ndim)`` as ``(B, N, ndim)``. (``reshape``, here and in :func:`_flat_space`:
    autograd's batched gradients, ``jacobian(vectorize=True)`` among them, have no ``flatten``.)"""
    return grid.reshape(grid.shape[0], math.prod(grid.shape[1:-1]), grid.shape[-1])  # (no -1: B may be 0)


def _flat_space(t: torch.Tensor) -> torch.Tensor:
    """``(B, C, *size)`` as ``(B, C, N)``."""
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


class _ReferenceSample(torch.autograd.Function):
    """The hand-written forward, backward and forward derivative (``jvp``); ``setup_context`` and a
    generated vmap rule (all plain torch operations) let ``torch.func`` transforms (``vmap``,
    ``grad``, ``jacrev``, ``jvp``, ``jacfwd``, ``hessian``) run it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str, align_corners: bool) -> torch.Tensor:  # type: ignore[override]
        b, c = x.shape[:2]
        corners = _Corners(x.shape, _flat(grid), padding, align_corners, mode)
        xf = _flat_space(x)
        out = x.new_zeros(b, c, corners.base[0].shape[1])
        for offset in corners.offsets:
            lin, valid, factors = corners.corner(offset)
            weight = torch.stack(factors).prod(0)
            value = corners.read(xf, lin, valid)
            out = out + weight[:, None] * value
        out = torch.where(corners.finite[:, None], out, float("nan"))
        return out  # (B, C, N): see reference_kernel

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:  # type: ignore[override]  # noqa: ANN001
        x, grid, *options = inputs
        ctx.save_for_backward(x, grid)
        ctx.save_for_forward(x, grid)
        ctx.options = tuple(options)

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor | None, grid_tangent: torch.Tensor | None, *_):  # type: ignore[override]  # noqa: ANN001
        """The forward derivative: the tangent of ``x`` sampled at the grid, plus each point's
        ``dV/du`` (the backward's per-channel factor, before its sum over channels) times the
        grid's tangent; NaN where the point is not finite. Written with differentiable
        operations, as the backward, so forward-over-reverse (``torch.func.hessian``) works."""
        x, grid = ctx.saved_tensors
        mode, padding, align_corners = ctx.options
        b, c = x.shape[:2]
        corners = _Corners(x.shape, _flat(grid), padding, align_corners, mode)
        xf = _flat_space(x)
        out = x.new_zeros(b, c, corners.base[0].shape[1])
        with_grid = grid_tangent is not None and mode != "nearest"  # (nearest: piecewise constant in the grid)
        if with_grid:
            # d(pixel coordinate) per axis: the grid's tangent through the unnormalisation and padding
            tangent = _flat(grid_tangent)
            du = [tangent[..., d] * corners.dcoords[d] for d in range(corners.n)]
        for offset in corners.offsets:
            lin, valid, factors = corners.corner(offset)
            if x_tangent is not None:
                weight = torch.stack(factors).prod(0)
                out = out + weight[:, None] * corners.read(_flat_space(x_tangent), lin, valid)
            if with_grid:
                rate = torch.zeros_like(factors[0])
                for d in range(corners.n):
                    others = [f for e, f in enumerate(factors) if e != d]
                    partial = torch.stack(others).prod(0) if others else torch.ones_like(rate)
                    rate = rate + partial * du[d] * (1.0 if offset[d] else -1.0)
                out = out + rate[:, None] * corners.read(xf, lin, valid)
        out = torch.where(corners.finite[:, None], out, float("nan"))
        return out  # (B, C, N): see reference_kernel

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        x, grid = ctx.saved_tensors
        mode, padding, align_corners = ctx.options
        b, c = x.shape[:2]
        corners = _Corners(x.shape, _flat(grid), padding, align_corners, mode)
        go = _flat_space(grad_out)
        xf = _flat_space(x)
        grad_x = torch.zeros_like(xf) if ctx.needs_input_grad[0] else None
        grad_u = [corners.frac[0] * 0 for _ in range(corners.n)]  # (on the grid's graph, as the factors)
        for offset in corners.offsets:
            lin, valid, factors = corners.corner(offset)
            index = lin[:, None].expand(b, c, -1)
            if grad_x is not None:
                weight = torch.stack(factors).prod(0)
                grad_x = grad_x.scatter_add(2, index, torch.where(valid[:, None], weight[:, None] * go, 0.0))
            if mode == "nearest" or not ctx.needs_input_grad[1]:
                continue
            # sum over channels of dL/dV * U_q, then the derivative of the weight per axis
            g_val = (go * corners.read(xf, lin, valid)).sum(1)
            for d in range(corners.n):
                others = [f for e, f in enumerate(factors) if e != d]
                partial = torch.stack(others).prod(0) if others else torch.ones_like(g_val)
                grad_u[d] = grad_u[d] + g_val * partial * (1.0 if offset[d] else -1.0)
        grad_grid = None
        if ctx.needs_input_grad[1]:
            grad_grid = torch.stack([gu * du for gu, du in zip(grad_u, corners.dcoords)], -1)
            grad_grid = torch.where(corners.finite[..., None], grad_grid, float("nan")).reshape(grid.shape)
        if grad_x is not None:
            grad_x = grad_x.reshape(x.shape)
        return grad_x, grad_grid, None, None, None


def reference_kernel(
    x: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding: str = "zeros", align_corners: bool = False
) -> torch.Tensor:
    """Sample ``x`` (B, C, *in) at ``grid`` (B, *out, n) with the hand-written kernel, arguments
    checked already (:func:`~torchstn.sampling.sample`'s ``backend="reference"``; the public name
    is :func:`~torchstn.reference_sample`, which checks them)."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(
            f"mode {mode!r} is not implemented by backend='reference' (bilinear and nearest are); "
            "use backend='torch' for bicubic"
        )
    if autocast_enabled(device_type_of(x)):
        # as F.grid_sample there (an operator autocast runs in float32): float16 and bfloat16 in
        # float32, the output in float32, the Function recorded outside autocast (its backward runs
        # without it, and scattered float32 products into the bfloat16 input's gradient: an error)
        with autocast_off(device_type_of(x)):
            x, grid = (t.float() if t.dtype in HALF_DTYPES else t for t in (x, grid))
            return reference_kernel(x, grid, mode, padding, align_corners)
    shape = (*x.shape[:2], *grid.shape[1:-1])
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or exporting() or nested_forward_ad():
        # the forward's plain operations, which the compiler, the tracer or the exporter records
        # and autograd differentiates (dynamo refused the Function's jvp under fullgraph=True, a
        # traced or exported program cannot hold a Python Function, and nested forward-mode
        # transforms drop the second-order terms of its jvp: nested_forward_ad); the same
        # values, and the same gradients but for the sub-gradient at integer pixel coordinates. Compiled, a non-finite
        # point keeps its NaN location gradient, as torch_sample's does.
        return nan_where_not_finite(_ReferenceSample.forward(x, grid, mode, padding, align_corners).view(shape), grid)
    # shaped outside the Function: a view made inside it cannot be modified in place
    # (out.relu_(), nn.ReLU(inplace=True) after a transformer)
    return _ReferenceSample.apply(x, grid, mode, padding, align_corners).view(shape)
