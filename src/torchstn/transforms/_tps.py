"""Thin-plate spline grid generator with the θ-independent part precomputed."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from torchstn._tracing import cached, outside_modes
from torchstn._validation import _type_name, check_number
from torchstn.transforms._base import Transform, base_grid, interleaved_operator

__all__ = ["ThinPlateSpline"]


def _kernel(points: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """Radial basis ``U(r) = r² log r²`` between ``points`` (..., N, 2) and ``control`` (K, 2) -> (..., N, K)."""
    d2 = (points[..., :, None, :] - control).pow(2).sum(-1)
    # U(0) = 0, its gradient 0 (log of 1 where d2 = 0, then masked). Not a clamp at finfo.tiny:
    # an ONNX export folded the float64 tiny to float32 0, and 0 * log(0) made the grid NaN at
    # every control point
    inside = d2 > 0
    return torch.where(inside, d2 * torch.log(torch.where(inside, d2, torch.ones_like(d2))), torch.zeros_like(d2))


def _basis(points: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """``[U(|p - c_k|)_k, 1, x, y]`` for each point: (..., N, K + 3)."""
    ones = points.new_ones(points.shape[:-1] + (1,))
    return torch.cat([_kernel(points, control), ones, points], dim=-1)


def _solution(
    key: tuple[float, ...], regularization: float, solution: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``W`` of shape (K + 3, K) with ``coefficients = W @ targets`` on ``device`` in ``dtype``, cached.

    ``solution``: ``W`` in float64 (solved once, when the transform is made); ``key``: the
    control points as a tuple, which with ``regularization`` identifies it.
    """
    return cached(("tps-solution", key, regularization, device, dtype), lambda: solution.to(device=device, dtype=dtype))


#: a spline system conditioned worse than this is refused (1-norm, rows and columns scaled to a
#: largest entry of 1, so that the units of the points and of λ count far less: a 4 x 4 grid
#: reads 407 at unit scale and λ = 0, 147 at λ = 1, 2871 with its points 300 times wider; a
#: 30 x 30 grid 2.9e6): control points 1e-7 off one line read
#: 1.2e14, 1e-8 off 1.2e16 (whose identity θ warped 0.5 off the identity), 1e-6 off 1.2e12
#: (1.4e-5 off)
MAX_CONDITION = 1e14


def _condition(system: torch.Tensor) -> float:
    """The 1-norm condition number of ``system`` with its rows, then its columns, scaled to a largest entry of 1."""
    rows = system / system.abs().amax(1, keepdim=True)
    return float(torch.linalg.cond(rows / rows.abs().amax(0, keepdim=True), p=1))


def _system(c: torch.Tensor, regularization: float) -> torch.Tensor:
    """The spline system ``[[U + λI, P], [Pᵀ, 0]]`` of the (K, 2) float64 control points ``c``."""
    k = c.shape[0]
    p = torch.cat([torch.ones(k, 1, dtype=torch.float64), c], 1)
    system = torch.zeros(k + 3, k + 3, dtype=torch.float64)
    system[:k, :k] = _kernel(c, c) + regularization * torch.eye(k, dtype=torch.float64)
    system[:k, k:] = p
    system[k:, :k] = p.T
    return system


def _solve(c: torch.Tensor, regularization: float) -> torch.Tensor:
    """The spline system's solution for the (K, 2) float64 control points ``c``, in float64."""
    k = c.shape[0]
    rhs = torch.zeros(k + 3, k, dtype=torch.float64)
    rhs[:k] = torch.eye(k, dtype=torch.float64)
    return torch.linalg.solve(_system(c, regularization), rhs)


def _check_solvable(points: torch.Tensor, regularization: float) -> torch.Tensor:
    """The spline system's solution for these (K, 2) float64 points (:func:`_solve`), or a
    ``ValueError`` naming ``control`` when the system is singular.

    The system ``[[U + λI, P], [Pᵀ, 0]]`` is invertible exactly when ``P = [1, x, y]``
    has rank 3 (not all points on one line: the affine part is determined) and
    ``U + λI`` is definite on the null space of ``Pᵀ``. For distinct points ``U`` is,
    so with ``λ = 0`` only duplicates break it (two equal rows); ``λ > 0`` makes the
    block definite even then. The float64 solve is tried last for anything else.
    """
    affine = torch.cat([torch.ones_like(points[:, :1]), points], 1)
    if torch.linalg.matrix_rank(affine) < 3:
        raise ValueError(
            f"control must hold points not all on one line, got {points.shape[0]} points on one line "
            f"{_preview(points)}: the affine part of the spline is then undetermined and its system singular"
        )
    if regularization == 0:
        same = (points[:, None, :] == points[None, :, :]).all(-1).triu(1).nonzero()
        if len(same):
            i, j = same[0].tolist()
            x, y = points[i].tolist()
            raise ValueError(
                f"control must hold distinct points when regularization=0, got points {i} and {j} both at "
                f"({x:g}, {y:g}): the spline system is singular; remove the duplicate or use regularization > 0"
            )
    try:
        solution = _solve(points, regularization)
    except torch.linalg.LinAlgError as err:
        raise ValueError(f"control {_preview(points)} gives a singular spline system ({err})") from None
    condition = _condition(_system(points, regularization))
    if not torch.isfinite(solution).all() or not condition <= MAX_CONDITION:
        raise ValueError(
            f"control {_preview(points)} gives a spline system too ill-conditioned to solve (condition number "
            f"{condition:.3g}, more than {MAX_CONDITION:g}): points nearly on one line or nearly coincident"
        )
    return solution


def _preview(points: torch.Tensor, limit: int = 4) -> str:
    """The first ``limit`` points as a short list for a message."""
    shown = ", ".join(f"({x:g}, {y:g})" for x, y in points[:limit].tolist())
    return f"[{shown}{', ...' if points.shape[0] > limit else ''}]"


def _grid_operator(
    key: tuple[float, ...],
    regularization: float,
    control: torch.Tensor,
    solution: torch.Tensor,
    size: tuple[int, ...],
    align_corners: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``G`` (N, K), ``grid = G @ targets``, as the ``(2 K, 2 N)`` operator that takes the parameters
    as they are (``x0, y0, x1, ...``) to the interleaved grid: everything that does not depend on θ.

    ``control``: the (K, 2) float64 points; ``key``, ``regularization`` and ``solution`` as in :func:`_solution`.
    Its rows in the parameters' order spare each call a transposed copy of them: a batch-1 28x28
    grid 13.2 -> 7.2 us, the same bits (timeit, 2026-12-05).
    """

    def build() -> torch.Tensor:
        base = base_grid(size, align_corners, device="cpu", dtype=torch.float64)
        g = _basis(base, control) @ solution  # (N, K)
        k = g.shape[1]  # interleaved_operator's rows (x0..xK-1, y0..yK-1) in the parameters' order
        operator = interleaved_operator(g, 2).view(2, k, -1).transpose(0, 1).reshape(2 * k, -1)
        return operator.to(device=device, dtype=dtype)

    return cached(("tps-grid", key, regularization, size, align_corners, device, dtype), build)


def _points_as_tensor(control: object) -> object:
    """``control`` given as ``(K, 2)`` points in an array or nested lists, as a float64 tensor;
    a tensor or a ``(rows, cols)`` size unchanged; anything else refused by name (an int or
    ``None`` failed with "object is not iterable", an array of points was read as a size)."""
    if isinstance(control, torch.Tensor):
        return control
    if isinstance(control, str) or not isinstance(control, (Sequence, np.ndarray)):
        raise TypeError(f"control must be (rows, cols) or (K, 2) points (a tensor, an array or nested lists), "
                        f"got {_type_name(control)}")
    try:
        points = np.asarray(control, dtype=np.float64)
    except (TypeError, ValueError):  # (ragged lists, entries that are no numbers: judged as a size below)
        return control
    return torch.from_numpy(points) if points.ndim == 2 else control


class ThinPlateSpline(Transform):
    r"""Thin-plate spline through ``K`` control points, ``P = 2K``.

    The parameters are the *input-frame* positions ``(x_k, y_k)`` that the ``K``
    control points of the output frame map to, interleaved
    ``x0, y0, x1, y1, ...``. The map is the spline

    .. math::
        f(p) = a_0 + a_1 x + a_2 y + \sum_k w_k\, U(\lVert p - c_k \rVert), \quad U(r) = r^2 \log r^2

    whose coefficients solve ``[[K + λI, P], [Pᵀ, 0]] [w; a] = [θ; 0]``. That system
    depends on the control points only, so it is solved once (in float64) and cached;
    for a fixed output size the whole grid is ``G @ θ`` with a cached ``(H W, K)``
    matrix ``G`` (kept as the ``(2 K, 2 H W)`` operator that writes the interleaved grid:
    16 K H W bytes in float32, 12 MB at 224x224 with 4 x 4 control points; the cache drops
    its oldest entries beyond 256 MB): one batched matmul per call, linear in θ. With ``regularization = 0``
    each control point lands exactly on its target; ``λ > 0`` trades that for a
    smoother map.

    Args:
        control: ``(rows, cols)`` of a regular control grid spanning [-1, 1] (default
            4 x 4, ordered row by row, x fastest), or explicit ``(K, 2)`` points:
            finite, not all on one line, and distinct unless ``regularization > 0``.
        regularization: the ridge ``λ`` added to the kernel's diagonal.

    Raises:
        ValueError: ``control`` points for which the spline system is singular, found
            at construction, not at the first grid: all on one line (the affine part
            is undetermined, whatever ``λ``), or two equal points with ``λ = 0``
            (``λ > 0`` makes the kernel block definite, so duplicates are solvable
            then). The message says which.

    Convention:
        Normalised (x, y) in [-1, 1], output to input: the identity parameters are
        the control points themselves. Same ``align_corners`` for grid and sampler.

    Example:
        >>> tps = ThinPlateSpline(control=(2, 2))
        >>> tps.identity()
        tensor([-1., -1.,  1., -1., -1.,  1.,  1.,  1.])
    """

    def __init__(self, control: Sequence[int] | Sequence[Sequence[float]] | torch.Tensor | np.ndarray = (4, 4),
                 regularization: float = 0.0) -> None:
        # the control points and the system's solution live on the CPU, also where modules are built
        # under torch.device("meta") or another default device (only grid() moves them), as plain
        # tensors (a transform built under torch.inference_mode() is used in any mode later), real
        # under a FakeTensorMode too (a model built there for shapes or FLOPs)
        with torch.device("cpu"), torch.inference_mode(False), outside_modes():
            control = _points_as_tensor(control)
            if isinstance(control, torch.Tensor):
                if control.dim() != 2 or control.shape[1] != 2 or control.shape[0] < 3:
                    raise ValueError(f"control points must have shape (K, 2) with K >= 3, got {tuple(control.shape)}")
                if control.is_meta:
                    raise ValueError("control is on the meta device, which holds no values: make the control points "
                                     "on the CPU (torch.tensor(..., device='cpu'), also under torch.device('meta'))")
                points = control.detach().to(torch.float64, copy=True).cpu()  # not the caller's storage
                if not torch.isfinite(points).all():
                    raise ValueError(f"control must hold finite points, got {_preview(points)}")
            else:
                whole = all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in control)
                if len(control) != 2 or not whole or not all(n >= 2 for n in control):  # (numpy ints as size's)
                    raise ValueError(f"control must be (rows, cols) with both >= 2, got {tuple(control)!r}")
                rows, cols = (int(n) for n in control)
                ys, xs = torch.meshgrid(
                    torch.linspace(-1, 1, rows, dtype=torch.float64),
                    torch.linspace(-1, 1, cols, dtype=torch.float64),
                    indexing="ij",
                )
                points = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
            regularization = check_number("regularization", regularization, 0)  # (inf: a finite number, not a system)
            # solved now, once, in float64: later calls (also under a tracer) only read it
            self._solution64 = _check_solvable(points, regularization)
            self.control_points: torch.Tensor = points
            self.regularization = regularization
            self.num_params = 2 * points.shape[0]
            self._key = tuple(points.reshape(-1).tolist())

    @property
    def num_control_points(self) -> int:
        return self.control_points.shape[0]

    def _identity(self) -> torch.Tensor:
        return self.control_points.reshape(-1).clone()

    def _map(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        # the operator in float64, rounded once, as the grid's (in float32 it was 200x less accurate
        # near clustered control points); in the points' dtype where the device has no float64
        exact = torch.float64 if params.device.type != "mps" else params.dtype
        w = _solution(self._key, self.regularization, self._solution64, params.device, exact)
        control = self.control_points.to(device=params.device, dtype=exact)
        operator = (_basis(points.to(exact), control) @ w).to(params.dtype)  # (B, N, K)
        return torch.matmul(operator, params.reshape(params.shape[0], self.num_control_points, 2))

    def _grid_points(self, params: torch.Tensor, size: tuple[int, ...], align_corners: bool) -> torch.Tensor:
        g = _grid_operator(
            self._key, self.regularization, self.control_points, self._solution64, size, bool(align_corners),
            params.device, params.dtype,
        )
        # the grid is G @ params[b].view(K, 2) for each b, as one matmul of the parameters as they are
        return torch.mm(params, g).view(params.shape[0], g.shape[1] // 2, 2)

    def _traced_grid_points(self, params: torch.Tensor, size: tuple[torch.Tensor, ...], align_corners: bool) -> torch.Tensor:
        # G in float64, as the cached operator is built, so that the trace gives the eager grid
        base = base_grid(size, align_corners, device=params.device, dtype=torch.float64)
        w = self._solution64.to(params.device)
        g = (_basis(base, self.control_points.to(params.device)) @ w).to(params.dtype)  # (N, K)
        return torch.matmul(g, params.reshape(params.shape[0], self.num_control_points, 2))

    def __repr__(self) -> str:
        return f"ThinPlateSpline(K={self.num_control_points}, regularization={self.regularization:g})"
