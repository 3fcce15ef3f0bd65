"""Property checks for transforms and samplers, shipped so users can test their own.

Each checker raises ``AssertionError`` with a message saying which property failed.

Example:
    >>> from torchstn.testing import check_transform
    >>> check_transform(stn.Affine(), stn.Affine().identity(batch=3) + 0.1)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch

from torchstn._validation import check_bool, check_floating, check_number, check_tensor, first_line
from torchstn.sampling import sample, warp
from torchstn.transforms import MatrixTransform, Transform, base_grid

__all__ = ["check_sampler", "check_transform"]


def _close(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 1e-5) -> None:
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    if not torch.allclose(actual, expected, atol=atol, rtol=rtol, equal_nan=True):  # (NaN where both have it)
        err = (actual - expected).abs().max().item()
        raise AssertionError(f"{name}: max abs difference {err:.3g} > atol {atol:g}")


def _recording() -> contextlib.AbstractContextManager:
    """Gradients recorded whatever the caller's mode (under ``torch.no_grad`` or
    ``inference_mode`` a correct transform failed its gradcheck)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    return stack


def check_transform(
    transform: Transform,
    params: torch.Tensor,
    size: Sequence[int] | None = None,
    *,
    align_corners: bool = False,
    gradcheck: bool = True,
    compile: bool = False,
) -> None:
    """Check the properties every transform must have, at ``params`` ``(B, P)``.

    - the grid is :meth:`~Transform.transform_points` applied to the base grid;
    - batched equals one-by-one, and an empty batch gives an empty grid;
    - ``params`` is not modified in place; dtype and device are preserved;
    - the identity parameters give the identity grid;
    - for a matrix family (:class:`~torchstn.transforms.MatrixTransform`): the matrix maps
      points as ``transform_points`` does, and ``params_from_matrix``, ``compose`` and
      ``inverse`` give the matrix, the product and the inverse (compared as matrices);
    - with ``gradcheck``: the grid and ``transform_points`` have the right float64
      gradient with respect to ``params`` (finite differences,
      :func:`torch.autograd.gradcheck`), and :func:`~torchstn.warp`, whatever path it
      takes (the fused kernel reads a matrix family's rows, not its grid), gives the
      values and gradients of :func:`~torchstn.sample` on that grid (compared exactly,
      near ``params`` but off the bilinear sampler's kinks at pixel centres, where finite
      differences fail, e.g. at the identity);
    - optionally, ``torch.compile`` of the grid equals eager.

    Any other exception a transform's method raises on the way (a shape that does not
    broadcast, a method left unimplemented) comes out as an ``AssertionError`` too, naming
    the check it stopped and chained to the original.
    """
    # the caller's own arguments first: a wrong one was reported as a failure of the transform under test
    if not isinstance(transform, Transform):
        raise TypeError(f"transform must be a Transform, got {type(transform).__name__}")
    check_floating("params", check_tensor("params", params, ndim=2))  # (the transform's own checks come below)
    for name, flag in (("align_corners", align_corners), ("gradcheck", gradcheck), ("compile", compile)):
        check_bool(name, flag)
    stage = ["the grid"]  # the check under way, which _check_transform moves on
    try:
        _check_transform(transform, params, size, align_corners, gradcheck, compile, stage)
    except AssertionError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the transform's code raised
        raise AssertionError(f"{type(transform).__name__} failed while checking {stage[0]}: "
                             f"{type(error).__name__}: {error}") from error


def _check_transform(transform: Transform, params: torch.Tensor, size: Sequence[int] | None, align_corners: bool,
                     gradcheck: bool, compile: bool, stage: list[str]) -> None:
    n = transform.ndim
    size = tuple(size) if size is not None else (5, 7, 6)[-n:] if n > 1 else (9,)
    # a copy's values and version counter (an in-place op that kept the values broke every backward
    # through it; an inference tensor has no counter, so there only the values)
    probe = params.clone()
    version = None if probe.is_inference() else probe._version
    grid = transform.grid(probe, size, align_corners)
    if not torch.equal(probe, params) or (version is not None and probe._version != version):
        raise AssertionError("grid modified params in place")
    if grid.dtype != params.dtype or grid.device != params.device:
        raise AssertionError(f"grid has dtype/device {grid.dtype}/{grid.device}, params {params.dtype}/{params.device}")
    b = params.shape[0]
    atol = 1e-5 if params.dtype == torch.float32 else 1e-10 if params.dtype == torch.float64 else 1e-2
    base = base_grid(size, align_corners, device=params.device, dtype=params.dtype)
    points = transform.transform_points(params, base.expand(b, -1, -1))
    _close("grid vs transform_points", grid.reshape(b, math.prod(size), n), points, atol)
    singles = torch.cat([transform.grid(params[i : i + 1], size, align_corners) for i in range(b)]) if b else grid
    _close("batched vs one-by-one", grid, singles, atol)
    empty = transform.grid(params[:0], size, align_corners)
    if empty.shape != (0, *size, n):
        raise AssertionError(f"empty batch gives shape {tuple(empty.shape)}")
    stage[0] = "the identity"
    ident = transform.grid(transform.identity(b, params.device, params.dtype), size, align_corners)
    _close("identity params vs base grid", ident.reshape(b, math.prod(size), n), base.expand(b, -1, -1), atol)
    if isinstance(transform, MatrixTransform) and b:
        stage[0] = "the matrix algebra (matrix, params_from_matrix, compose, inverse)"
        _check_matrix_algebra(transform, params, atol)
    if gradcheck and b:
        stage[0] = "the gradients and warp"
        with _recording():
            _check_gradients(transform, params[:2].detach().double(), size, align_corners)
    if compile:
        stage[0] = "torch.compile"
        compiled = torch.compile(lambda p: transform.grid(p, size, align_corners), fullgraph=False)
        _close("torch.compile vs eager", compiled(params), grid, atol)


def _check_matrix_algebra(transform: MatrixTransform, params: torch.Tensor, atol: float) -> None:
    """A matrix family's :meth:`~MatrixTransform.matrix` maps the points as
    :meth:`~Transform.transform_points` does, and ``params_from_matrix``, ``compose`` and
    ``inverse`` agree with it (compared as matrices: parameters need not be unique)."""
    n = transform.ndim

    def up_to_scale(m: torch.Tensor) -> torch.Tensor:  # (a homography's matrix is one up to scale)
        return m / m[:, -1:, -1:] if transform.projective else m

    def matrix_of(p: torch.Tensor) -> torch.Tensor:
        return up_to_scale(transform.matrix(p))

    matrix = matrix_of(params)
    generator = torch.Generator(device=params.device).manual_seed(0)
    points = torch.rand(params.shape[0], 4, n, dtype=params.dtype, device=params.device, generator=generator) * 1.6 - 0.8
    mapped = torch.cat([points, torch.ones_like(points[..., :1])], -1) @ matrix.transpose(1, 2)
    _close("matrix vs transform_points", transform.transform_points(params, points),
           mapped[..., :n] / mapped[..., n:], atol, rtol=1e-4)
    _close("matrix of params_from_matrix vs matrix", matrix_of(transform.params_from_matrix(matrix)), matrix, atol,
           rtol=1e-4)
    # a second operand of its own (params reversed equalled params for one row or equal rows, where
    # compose in the wrong order passed)
    other = transform.identity(params.shape[0], dtype=params.dtype, device=params.device) + 0.05 * torch.randn(
        params.shape, dtype=params.dtype, device=params.device, generator=generator)
    product = up_to_scale(matrix @ matrix_of(other))
    _close("matrix of compose vs product of matrices", matrix_of(transform.compose(params, other)), product, atol,
           rtol=1e-4)
    back = up_to_scale(matrix_of(transform.inverse(params)) @ matrix)
    _close("matrix of inverse times matrix vs identity", back, torch.eye(n + 1).to(back).expand_as(back), atol,
           rtol=1e-4)


def _check_gradients(transform: Transform, p64: torch.Tensor, size: tuple[int, ...], align_corners: bool) -> None:
    """The float64 gradients of :func:`check_transform`: the grid's and ``transform_points``'
    by finite differences, ``warp``'s against ``sample`` on the grid, exactly."""
    n = transform.ndim
    generator = torch.Generator(device=p64.device).manual_seed(0)
    points = torch.rand(p64.shape[0], 4, n, dtype=torch.float64, device=p64.device, generator=generator) * 1.6 - 0.8
    for name, fn in (("grid", lambda p: transform.grid(p, size, align_corners)),
                     ("transform_points", lambda p: transform.transform_points(p, points))):
        try:
            torch.autograd.gradcheck(fn, (p64.clone().requires_grad_(),), eps=1e-6, atol=1e-5)
        except RuntimeError as err:  # (torch's GradcheckError is one)
            first = first_line(err)
            raise AssertionError(f"gradcheck of {name} wrt params failed (finite differences disagree with "
                                 f"autograd): {first}") from None
    x = torch.rand(p64.shape[0], 2, *size, dtype=torch.float64, device=p64.device, generator=generator)
    weight = torch.randn(p64.shape[0], 2, *size, dtype=torch.float64, device=p64.device, generator=generator)
    # off the sampler's kinks (at the identity every point is a pixel centre, where a rounding
    # difference between two exact paths picks the other one-sided difference)
    nudged = p64 + 1e-4 * torch.randn(p64.shape, dtype=torch.float64, device=p64.device, generator=generator)
    results = []
    for fn in (lambda p: warp(x, p, transform, size, align_corners=align_corners),
               lambda p: sample(x, transform.grid(p, size, align_corners), align_corners=align_corners)):
        leaf = nudged.clone().requires_grad_()
        out = fn(leaf)
        (out * weight).sum().backward()
        results.append((out.detach(), leaf.grad))
    _close("warp vs sample on the grid", results[0][0], results[1][0], 1e-10)
    _close("gradient of warp vs of sample on the grid", results[0][1], results[1][1], 1e-8)


def check_sampler(
    fn: Callable[..., torch.Tensor],
    reference: Callable[..., torch.Tensor],
    x: torch.Tensor,
    grid: torch.Tensor,
    *,
    atol: float = 1e-5,
    **options: object,
) -> None:
    """Check a sampler ``fn(x, grid, **options)`` against ``reference`` in values and both gradients.

    Also checks that neither input is modified in place and that the output keeps the
    dtype of ``x``. ``atol`` bounds the values and the input's gradient; the grid's gradient,
    which is its gradient with respect to pixel coordinates times half the image's size (the
    unnormalisation), is compared at ``10 * atol`` times that factor (a fixed bound failed two
    correct float32 samplers at 224 pixels, 1.5e-3 apart in a gradient of magnitude 1e2).
    """
    check_floating("x", check_tensor("x", x))  # (the caller's arguments, named: None failed on .detach())
    check_floating("grid", check_tensor("grid", grid))
    check_number("atol", atol, low=0.0)
    outs, grads = [], []
    with _recording():
        x0, g0 = x.detach().clone(), grid.detach().clone()
        for f in (fn, reference):
            name = getattr(f, "__name__", f)
            xi, gi = x0.clone().requires_grad_(), g0.clone().requires_grad_()
            versions = xi._version, gi._version
            out = f(xi, gi, **options)
            unchanged = all(torch.allclose(t.detach(), t0, rtol=0, atol=0, equal_nan=True)  # (NaN is not NaN)
                            for t, t0 in ((xi, x0), (gi, g0)))
            if (xi._version, gi._version) != versions or not unchanged:
                raise AssertionError(f"{name} modified its input in place")
            if out.grad_fn is None:
                raise AssertionError(f"{name} gives an output without a gradient (no autograd graph)")
            weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
            (out * weight).sum().backward()
            for what, leaf in (("the input", xi), ("the grid", gi)):
                if leaf.grad is None:
                    raise AssertionError(f"{name} gives no gradient with respect to {what}")
            if out.dtype != x.dtype:
                raise AssertionError(f"output dtype {out.dtype} != input dtype {x.dtype}")
            outs.append(out.detach())
            grads.append((xi.grad, gi.grad))
    _close("output", outs[0], outs[1], atol)
    _close("gradient wrt input", grads[0][0], grads[1][0], atol)
    _close("gradient wrt grid", grads[0][1], grads[1][1], atol * 10 * max(1.0, max(x.shape[2:]) / 2))
