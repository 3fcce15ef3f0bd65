"""The grid-generator interface shared by every transform family, and the cached base grid.

The cache itself, and the questions about tracing and ``torch.func``, are :mod:`torchstn._tracing`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from torchstn._tracing import (
    autocast_off,
    batched_gradient,
    cached,
    constant,
    constant_result,
    device_type_of,
    differentiable_vjp,
    eager_tensors,
    outside_jit_trace,
    outside_modes,
    tracing_or_faking,
)
from torchstn._validation import (
    HALF_DTYPES,
    _index,
    check_bool,
    check_float_dtype,
    check_floating,
    check_int,
    check_params,
    check_positive,
    check_scale_entry,
    check_size,
    check_tensor,
    sizes_traced,
)

__all__ = ["MatrixTransform", "Transform", "base_grid", "interleaved_operator", "linear_grid", "matrix_grid"]


def _linspace(steps: int | torch.Tensor, align_corners: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised pixel-centre (or, with ``align_corners``, pixel-corner) coordinates along one
    axis of ``n = steps`` pixels: ``(2 i + 1 - n) / n`` (``/ max(n - 1, 1)``), each rounded once
    from the exact fraction (in float64, then to ``dtype``). ``torch.linspace``, which
    ``affine_grid`` uses, is up to a unit in the last place off: 24,637 of the 79,800 float64
    points of the sizes 1-399, 191 in float32, which moved nearest-mode ties by a pixel
    (the fused kernel computes the same fractions). A size that ``torch.jit.trace`` records
    (a 0-d tensor, see :func:`_traced_size`) is computed in the trace, for every input."""
    i = torch.arange(steps, device=device, dtype=torch.float64)
    if isinstance(steps, torch.Tensor):
        span = (steps - 1).clamp_min(1) if align_corners else steps
    else:
        span = max(steps - 1, 1) if align_corners else steps
    return ((2 * i + 1 - steps) / span).to(dtype)


def _default_device() -> torch.device:
    """torch's default device, which factories such as ``torch.zeros`` follow; under
    ``torch.compile``, which cannot trace ``torch.get_default_device`` (a graph break; an error
    with ``fullgraph=True``), the device of an empty tensor, which follows it too."""
    return torch.empty(0).device if torch.compiler.is_compiling() else torch.get_default_device()


def _traced_size(size: Sequence[int | torch.Tensor]) -> bool:
    """True for the sizes of a tensor under ``torch.jit.trace`` (0-d tensors, see
    :func:`torchstn._validation.check_size`): the grid is then computed from them inside
    the trace, uncached, so a traced warp follows its input's size."""
    return any(isinstance(s, torch.Tensor) for s in size)


def _build_base_grid(
    size: tuple[int, ...], align_corners: bool, homogeneous: bool, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    axes = [_linspace(s, align_corners, device, dtype) for s in size]  # (D,) H, W
    mesh = torch.meshgrid(*axes, indexing="ij")
    # points in (x, y[, z]) order: the last spatial axis is x
    columns = [m.reshape(-1) for m in reversed(mesh)]
    if homogeneous:
        columns.append(torch.ones_like(columns[0]))
    return torch.stack(columns, dim=-1).contiguous()


def base_grid(
    size: Sequence[int],
    align_corners: bool = False,
    *,
    homogeneous: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The identity sampling grid of an output of spatial ``size``, flattened to points.

    Args:
        size: output spatial size ``(H, W)`` or ``(D, H, W)`` (``(L,)`` for signals).
        align_corners: as in :func:`torch.nn.functional.grid_sample`.
        homogeneous: append a column of ones (for matrix transforms).
        device: device of the result (default: torch's default device).
        dtype: floating dtype of the result (default: torch's default dtype).

    Returns:
        ``(N, ndim)`` (or ``(N, ndim + 1)``) points, ``N = prod(size)``, in row-major
        order over ``size``.

    Convention:
        Points are ``(x, y[, z])``: x along the width (last axis), y along the height,
        normalised to [-1, 1]. With ``align_corners=False`` they are pixel centres
        ``(2i + 1) / W - 1``; with ``True`` the extreme pixel centres sit at -1 and 1.
        The result is cached per (size, align_corners, device, dtype); do not modify it.

    Example:
        >>> base_grid((1, 2))
        tensor([[-0.5000,  0.0000],
                [ 0.5000,  0.0000]])
    """
    check_bool("align_corners", align_corners)  # ("False" from a config file is not True)
    check_bool("homogeneous", homogeneous)
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    device = torch.device(device) if device is not None else _default_device()
    if not isinstance(size, (tuple, list)):
        raise TypeError(f"size must be a sequence of 1 to 3 ints (L,), (H, W) or (D, H, W), got {type(size).__name__}")
    if sizes_traced() and _traced_size(size):
        return _build_base_grid(tuple(size), align_corners, homogeneous, device, dtype)
    # checked at every call, and the cache keyed on the checked ints: 2.5 was truncated to 2, an
    # integer dtype gave a grid of zeros, and (2.0, 3) passed once (2, 3) was cached
    check_float_dtype("dtype", dtype)
    if len(size) not in (1, 2, 3):
        raise ValueError(f"size must be (L,), (H, W) or (D, H, W), got {tuple(size)!r}")
    size = _checked_size(size, len(size))
    key = ("base", size, align_corners, homogeneous, device, dtype)
    return cached(key, lambda: _build_base_grid(size, align_corners, homogeneous, device, dtype))


def _checked_size(size: Sequence[int], ndim: int) -> tuple[int, ...]:
    """``check_size("size", size, ndim)``, free for the sizes torchstn's own callers pass (a tuple of
    positive ints, whose length the caller checks): the grids call it on every call."""
    if type(size) is tuple and all(type(s) is int and s > 0 for s in size):
        return size
    return check_size("size", size, ndim)


def interleaved_operator(base: torch.Tensor, outputs: int) -> torch.Tensor:
    """``K`` of shape ``(outputs * F, N * outputs)`` with ``(coefficients (B, outputs * F) @ K)``
    ``.view(B, N, outputs) == base (N, F) @ coefficients.view(B, outputs, F).T``.

    It turns a grid that is linear in its coefficients into one dense matmul whose result
    is already laid out as the interleaved ``(B, *size, ndim)`` grid the sampler reads.
    """
    n, f = base.shape
    op = base.new_zeros(outputs, f, n, outputs)
    for j in range(outputs):
        op[j, :, :, j] = base.T
    return op.reshape(outputs * f, n * outputs)


def linear_grid(coefficients: torch.Tensor, operator: torch.Tensor, outputs: int) -> torch.Tensor:
    """``coefficients (B, outputs, F)`` through an :func:`interleaved_operator`: ``(B, N, outputs)``.

    One product per sample (a batched matmul against the operator broadcast over the batch), as
    ``F.affine_grid``'s: a sample's grid has the same bits in any batch. One ``(B, outputs F)``
    matmul gave batches of 1 to 3 other float32 roundings than larger ones (another kernel),
    so a sample's nearest pixel at a tie depended on the batch it came in. The batched product
    takes 1.02-1.65x the matmul's time (``Affine.grid``, 1 thread, ``timeit``, 2026-12-06: 1x28x28
    and 1x224x224 1.03-1.08x, 64x64x64 1.02x, 32x224x224 1.21x, 64x28x28 1.42x, 256x28x28
    1.65x), and the fused kernel, which warps θ without a grid, is not concerned.
    """
    b = coefficients.shape[0]
    rows = coefficients.reshape(b, 1, operator.shape[0])  # (an empty batch too)
    return torch.bmm(rows, operator.expand(b, *operator.shape)).view(b, operator.shape[1] // outputs, outputs)


class Transform(ABC):
    """A parameterised map from output (target) coordinates to input (source) coordinates.

    A transform is pure tensor maths with no learnable state: ``params`` of shape
    ``(B, num_params)`` come from a localisation net (or anywhere else) and the
    transform turns them into a sampling grid for :func:`torchstn.sample`.

    Convention:
        Coordinates are normalised to [-1, 1], ``(x, y)`` with x along the width
        (``(x, y, z)`` in 3-D, z along the depth). The map goes from output points to
        input points (``T_θ(G)`` of the paper, as ``affine_grid`` does), so the grid
        says, for every output pixel, where in the input to read. The same
        ``align_corners`` flag must be given to :meth:`grid` and to the sampler.
    """

    #: number of parameters ``P``
    num_params: int
    #: number of spatial dimensions (2 for images, 3 for volumes, 1 for signals)
    ndim: int = 2

    @property
    def name(self) -> str:
        return type(self).__name__

    @abstractmethod
    def _identity(self) -> torch.Tensor:
        """The identity parameters as a float64 ``(P,)`` CPU tensor (made on the CPU also under
        another default device: ``torch.device("meta")`` has no values to copy)."""

    def _identity_values(self) -> torch.Tensor:
        """:meth:`_identity`, made on the CPU whatever torch's default device (a user's family that
        made it with the default device failed under ``torch.device("meta")``: no values to copy)
        and checked to be ``(P,)`` (a ``(1, P)`` start broke the localisation net's bias with a
        broadcast error)."""
        p = self._identity()
        if isinstance(p, torch.Tensor) and p.device.type != "cpu":  # (made with another default device)
            with torch.device("cpu"):
                p = self._identity()
        if not isinstance(p, torch.Tensor) or (not torch.jit.is_tracing() and tuple(p.shape) != (self.num_params,)):
            got = f"shape {tuple(p.shape)}" if isinstance(p, torch.Tensor) else type(p).__name__
            raise TypeError(f"{self.name}._identity() must return a tensor of shape ({self.num_params},) "
                            f"(num_params), got {got}")
        return p

    @abstractmethod
    def _map(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Map ``points`` ((N, ndim) shared, or (B, N, ndim)) with ``params`` (B, P) -> (B, N, ndim)."""

    def identity(
        self, batch: int | None = None, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Parameters of the identity map: ``(P,)``, or ``(B, P)`` when ``batch`` is given, on
        ``device`` (default: torch's default device, as ``torch.zeros``) in ``dtype`` (default:
        torch's default dtype)."""
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        device = device if device is not None else _default_device()
        check_float_dtype("dtype", dtype)
        p = constant(self._identity_values)  # (a TPS's control points: real tensors, also under a fake mode)
        device = torch.device(device)
        if device.type != "cpu" and not (tracing_or_faking() or torch.jit.is_tracing()):
            # made on the device once (a copy from the host waits for the device: cascades and the
            # P-STN's KL ask for the identity in every forward pass), a fresh copy of it each call;
            # a tracer or a fake mode records the copy instead (no device work to save there)
            if device.index is None and device.type != "meta":  # ("cuda" is the current device's)
                device = torch.device(device.type, torch.get_device_module(device.type).current_device())
            key = ("identity", tuple(p.tolist()), device, dtype)
            p = cached(key, lambda: p.to(device=device, dtype=dtype))
            if batch is None:
                return p.clone()
        else:
            p = p.to(device=device, dtype=dtype)
        if batch is None:
            return p
        # (traced by torch.jit.trace: a tensor; by torch.export or torch.compile: a symbolic int)
        if sizes_traced() or isinstance(batch, torch.SymInt):
            return p.expand(batch, -1).clone()
        index = _index(batch)  # (an integer-like, a numpy int, as sizes take them; not a bool or a float)
        return p.expand(check_int("batch", batch if index is None else index, 0), -1).clone()

    def check_params(self, params: object, name: str = "params") -> torch.Tensor:
        """Validate a ``(B, P)`` parameter tensor for this family and return it."""
        return check_params(name, params, self.num_params, self.name)

    def transform_points(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Map output-frame ``points`` ``(B, N, ndim)`` to input-frame points ``(B, N, ndim)``.

        This is the map :meth:`grid` applies to every output pixel centre, computed as it
        is (in the dtype of ``params`` and ``points``, under ``torch.autocast`` too).
        """
        params = self.check_params(params)
        self._check_points(params, points)
        with autocast_off(device_type_of(params)):
            return self._map(params, points)

    def _check_points(self, params: torch.Tensor, points: torch.Tensor) -> None:
        """``points`` ``(B, N, ndim)`` of the dtype of the checked ``params`` ``(B, P)``."""
        check_tensor("points", points, ndim=3)
        check_floating("points", points)
        if points.dtype != params.dtype:
            raise TypeError(f"params and points must have the same dtype, got {params.dtype} and {points.dtype}")
        if points.device != params.device:  # (a meta points tensor gave uninitialised CPU memory from the matmul)
            raise ValueError(f"points must be on the device of params ({params.device}), got {points.device}")
        if not sizes_traced() and (points.shape[0] != params.shape[0] or points.shape[-1] != self.ndim):
            raise ValueError(
                f"points must have shape ({params.shape[0]}, N, {self.ndim}) to match params of shape "
                f"{tuple(params.shape)}, got {tuple(points.shape)}"
            )

    def grid(
        self, params: torch.Tensor, size: Sequence[int], align_corners: bool = False, *, check: bool = True
    ) -> torch.Tensor:
        """The sampling grid ``(B, *size, ndim)`` for an output of spatial ``size``, in the dtype of
        ``params`` (under ``torch.autocast`` too: autocast would compute it in low precision).

        Args:
            params: ``(B, P)`` transformation parameters.
            size: output spatial size, ``(H, W)`` (``(D, H, W)`` in 3-D).
            align_corners: as in :func:`torch.nn.functional.grid_sample`; give the
                sampler the same value.
            check: validate ``params`` and ``size``. ``False`` is for callers that have
                already done so (:func:`torchstn.warp` checks its arguments once); then
                ``params`` must be a ``(B, P)`` floating tensor and ``size`` a tuple of
                ``ndim`` positive ints.
        """
        if check:
            params = self.check_params(params)
            size = check_size("size", size, self.ndim)
            check_bool("align_corners", align_corners)
        with autocast_off(device_type_of(params)):  # (a bfloat16 grid misplaces points by up to 2^-8 of the image)
            if _traced_size(size):
                points = self._traced_grid_points(params, size, align_corners)
            else:
                points = self._grid_points(params, size, align_corners)
                expected = (params.shape[0], math.prod(size), self.ndim)
                if not sizes_traced() and points.shape != expected:  # (a user's _map: reshaped, it scrambled)
                    raise ValueError(f"{type(self).__name__}._map must return points (B, N, {self.ndim}) = "
                                     f"{expected} for this grid, got {tuple(points.shape)}")
        return points.reshape(params.shape[0], *size, self.ndim)

    def _grid_points(self, params: torch.Tensor, size: tuple[int, ...], align_corners: bool) -> torch.Tensor:
        base = base_grid(size, align_corners, device=params.device, dtype=params.dtype)
        return self._map(params, base)

    def _traced_grid_points(self, params: torch.Tensor, size: tuple[torch.Tensor, ...], align_corners: bool) -> torch.Tensor:
        """:meth:`_grid_points` for the sizes ``torch.jit.trace`` records: the plain map of a base
        grid that the trace computes for every input size (the cached operators hold one size)."""
        return self._map(params, base_grid(size, align_corners, device=params.device, dtype=params.dtype))

    def __repr__(self) -> str:
        return f"{self.name}()"


class MatrixTransform(Transform):
    """A transform given by a homogeneous matrix: ``(B, ndim + 1, ndim + 1)``.

    Subclasses say how parameters become a matrix (:meth:`matrix`) and back
    (:meth:`params_from_matrix`); composition and inversion follow in closed form.
    """

    #: the map divides by the homogeneous coordinate (projective) or not (affine)
    projective: bool = False
    #: a projective map's smallest ``|w|`` in that division (:class:`~torchstn.Projective` takes
    #: it as an argument; a user's projective family without one failed every grid)
    eps: float = 1e-6

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A family's shortcuts from its parameters (``_rows``, ``_map``) stand for its own
        ``_matrix``: a subclass that redefines ``_matrix`` without them gets the generic ones,
        read through its ``_matrix`` (a ``Translation`` subclass with another matrix was warped
        with its parent's rows by the fused kernel, and mapped its points with its parent's map);
        one that redefines ``_rows`` alone (an affine family) gets the matrix of its rows. Its
        parent's ``_from_matrix`` reads a matrix back into the parent's parameters (``compose``,
        ``inverse``, ``params_from_matrix``): without its own, that is checked to invert the
        subclass's matrix (a half-unit translation composed to half of a + b)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        inherited = getattr(cls, "_from_matrix", None)
        if ({"_matrix", "_rows"} & own.keys() and "_from_matrix" not in own
                and not getattr(inherited, "__isabstractmethod__", False)):
            if inherited is not MatrixTransform._checked_from_matrix:  # (a grandchild keeps the family's own)
                cls._inherited_from_matrix = inherited  # type: ignore[attr-defined]
            cls._from_matrix = MatrixTransform._checked_from_matrix  # type: ignore[method-assign]
        if "_matrix" in own:
            for name in ("_rows", "_map"):
                if name not in own:
                    setattr(cls, name, getattr(MatrixTransform, name))
        elif "_rows" in own and not cls.projective:
            cls._matrix = MatrixTransform._matrix_of_rows  # type: ignore[method-assign]
            if "_map" not in own:
                cls._map = MatrixTransform._map  # type: ignore[method-assign]

    def _checked_from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """The parent's ``_from_matrix`` for a subclass with its own matrix, once it is shown to
        invert that matrix (a subclass that changes only how the matrix is computed): tried on a
        few float64 parameters near the identity, so that a matrix outside the family is
        projected as the parent projects it (see :func:`_parent_inverts`)."""
        if not _parent_inverts(self):
            raise NotImplementedError(
                f"{type(self).__name__} redefines its matrix (_matrix or _rows) but not _from_matrix, and its "
                "parent's does not invert it; params_from_matrix, compose and inverse read a matrix back into "
                "parameters with it: define _from_matrix"
            )
        return self._inherited_from_matrix(matrix)  # type: ignore[attr-defined]

    def _try_parent_inverse(self) -> bool:
        steps = torch.linspace(-0.2, 0.2, 3 * self.num_params, dtype=torch.float64, device="cpu")
        params = self._identity_values().to(torch.float64) + steps.view(3, self.num_params)
        wanted = self._matrix(params)
        back = self._matrix(self._inherited_from_matrix(wanted))  # type: ignore[attr-defined]
        if self.projective:  # (a homography's matrix, up to scale)
            back, wanted = back / back[:, -1:, -1:], wanted / wanted[:, -1:, -1:]
        return bool(torch.allclose(back, wanted, rtol=1e-9, atol=1e-9))

    def _matrix_of_rows(self, params: torch.Tensor) -> torch.Tensor:
        """The homogeneous matrix of an affine family's :meth:`_rows` (last row ``0 ... 0 1``)."""
        rows = self._rows(params)
        last = torch.zeros_like(rows[:, :1])
        last[:, 0, -1] = 1
        return torch.cat([rows, last], 1)

    @abstractmethod
    def _matrix(self, params: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` -> ``(B, ndim + 1, ndim + 1)`` without validation."""

    @abstractmethod
    def _from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """``(B, ndim + 1, ndim + 1)`` -> ``(B, P)`` without validation."""

    def _rows(self, params: torch.Tensor) -> torch.Tensor:
        """:meth:`affine_rows` without validation (a family whose parameters are the rows returns a view)."""
        return self._matrix(params)[:, : self.ndim]

    def matrix(self, params: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """The homogeneous matrix ``src_from_dst`` of shape ``(B, ndim + 1, ndim + 1)``.

        ``check=False`` skips the validation of ``params`` (:meth:`Transform.grid` says when).
        """
        return self._matrix(self.check_params(params) if check else params)

    def affine_rows(self, params: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """The first ``ndim`` rows of :meth:`matrix`, ``(B, ndim, ndim + 1)``: ``[A | t]``.

        All an affine family needs to map a point (``x_s = A x_t + t``), and what
        :func:`torch.nn.functional.affine_grid` takes as ``theta``; a projective map also
        needs the last row (use :meth:`matrix`). ``check=False`` skips the validation of
        ``params`` (:meth:`Transform.grid` says when). For the families whose parameters are
        the rows (:class:`~torchstn.Affine`, :class:`~torchstn.Affine3D`,
        :class:`~torchstn.Affine1D`) the result is a view of ``params``, as ``theta.view``
        would be: writing into it writes into ``params``.

        Example:
            >>> from torchstn.transforms import Attention
            >>> Attention().affine_rows(torch.tensor([[0.5, 0.1, -0.2]]))
            tensor([[[ 0.5000,  0.0000,  0.1000],
                     [ 0.0000,  0.5000, -0.2000]]])
        """
        return self._rows(self.check_params(params) if check else params)

    def params_from_matrix(self, matrix: torch.Tensor, name: str = "matrix") -> torch.Tensor:
        """Parameters of a matrix of this family (the inverse of :meth:`matrix`).

        The matrix is assumed to lie in the family up to its scale: it is divided by its last
        entry (which the parameters fix to 1), and parts outside the family are dropped.
        ``name`` is what the errors call it (:func:`~torchstn.warp`'s matrix form: ``"params"``).

        Raises:
            ValueError: a matrix's last entry is 0 (no parameters: the division gave inf or NaN).
        """
        n = self.ndim + 1
        check_tensor(name, matrix, ndim=3)
        check_floating(name, matrix)
        if not sizes_traced() and matrix.shape[1:] != (n, n):
            raise ValueError(f"{name} for {self.name} must have shape (B, {n}, {n}), got {tuple(matrix.shape)}")
        check_scale_entry(name, matrix)
        return self._from_matrix(matrix)

    def compose(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Parameters of ``matrix(a) @ matrix(b)``.

        Warping by ``compose(a, b)`` equals warping by ``a`` and then warping the
        result by ``b``: the output point ``g`` reads the input at ``M_a M_b g``.
        ``a`` and ``b`` must have one dtype; the product is computed in it, under autocast too.
        A cascade that refines its estimate with a step ``dp`` predicted on the
        warped image therefore updates ``p <- compose(p, dp)``.
        """
        a = self.check_params(a, "a")
        b = self.check_params(b, "b")
        if not sizes_traced() and a.shape[0] != b.shape[0]:
            raise ValueError(f"a and b must have the same batch size, got {a.shape[0]} and {b.shape[0]}")
        if a.dtype != b.dtype or a.device != b.device:
            raise TypeError(f"a and b must have the same dtype and device, got {a.dtype} on {a.device} and "
                            f"{b.dtype} on {b.device}")
        with autocast_off(device_type_of(a)):  # (the product in the parameters' own precision)
            return self._from_matrix(self._matrix(a) @ self._matrix(b))

    def inverse(self, params: torch.Tensor) -> torch.Tensor:
        """Parameters of the inverse map: ``compose(p, inverse(p))`` is the identity.

        Raises ``ValueError`` naming the first sample whose matrix is singular to working
        precision: no inverse, or one that does not give the identity back to within the square
        root of its dtype's epsilon (eager calls; under a tracer ``torch.linalg.inv`` raises its
        own error for an exact zero pivot). Non-finite parameters give NaN. Computed in the
        parameters' precision (float32 for half precision), under ``torch.autocast`` too."""
        params = self.check_params(params)
        if params.dtype in HALF_DTYPES:  # (torch.linalg inverts float32 and wider)
            return self.inverse(params.float()).to(params.dtype)
        with autocast_off(device_type_of(params)):  # (a bfloat16 residual called well-conditioned matrices singular)
            matrix = self._matrix(params)
            if not eager_tensors(matrix) or matrix.is_meta:  # (a meta tensor has no values to check)
                return self._from_matrix(torch.linalg.inv(matrix))
            finite = torch.isfinite(matrix).flatten(1).all(1)
            eye = torch.eye(self.ndim + 1, dtype=matrix.dtype, device=matrix.device)
            inverse, info = torch.linalg.inv_ex(torch.where(finite[:, None, None], matrix, eye))
            with torch.no_grad():  # (LU's pivots miss a rank lost to rounding; the residual does not)
                # of the linear part where the family is affine: the translation's units do not matter
                k = self.ndim + 1 if self.projective else self.ndim
                residual = (inverse[:, :k, :k] @ matrix[:, :k, :k] - eye[:k, :k]).abs().flatten(1).amax(1)
                singular = torch.nonzero(finite & ((info != 0) | ~(residual <= torch.finfo(matrix.dtype).eps ** 0.5)))
            if len(singular):
                first = int(singular[0, 0])
                raise ValueError(f"params: the matrix of sample {first} is singular (it has no inverse at "
                                 f"{matrix.dtype}'s precision): {matrix[first].tolist()}")
            return self._from_matrix(torch.where(finite[:, None, None], inverse, torch.nan))

    def _map(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        if self.projective and params.dtype in HALF_DTYPES:  # (p / eps overflows float16: computed in float32)
            return _finite_half(self._map(params.float(), points.float()), params.dtype)
        m = self._matrix(params)
        n = self.ndim
        if self.projective:
            ones = points.new_ones(points.shape[:-1] + (1,))
            hom = torch.matmul(torch.cat([points, ones], dim=-1), m.transpose(1, 2))
            return hom[..., :n] / _guard(hom[..., n:], self.eps)
        # affine: x' = A x + t as one batched matmul
        return torch.matmul(points, m[:, :n, :n].transpose(1, 2)) + m[:, None, :n, n]

    def _grid_points(self, params: torch.Tensor, size: tuple[int, ...], align_corners: bool) -> torch.Tensor:
        if self.projective:
            return matrix_grid(self._matrix(params), size, align_corners, eps=self.eps).flatten(1, -2)
        # an affine grid reads the rows alone: no homogeneous matrix built around them (a cat per
        # call), the same values: a batch-1 28x28 grid of Affine 26-28 -> 17 us, Similarity 45 -> 31 us, an
        # 8x8x8 one of Affine3D 27-28 -> 17-18 us (timeit, 2026-12-05)
        return matrix_grid(self._rows(params), size, align_corners).flatten(1, -2)


def _operator(size: tuple[int, ...], align_corners: bool, like: torch.Tensor, repeat: bool = False) -> torch.Tensor:
    """The cached operator of the ``n`` rows of a matrix (or, with ``repeat``, of one row written ``n`` times)."""
    device, dtype, rows = like.device, like.dtype, len(size)

    def build() -> torch.Tensor:
        base = base_grid(size, align_corners, homogeneous=True, device=device, dtype=dtype)
        if repeat:
            return interleaved_operator(base, 1).repeat_interleave(rows, dim=1)
        return interleaved_operator(base, rows)

    return cached(("matrix", size, bool(align_corners), rows, repeat, device, dtype), build)


def matrix_grid(
    matrix: torch.Tensor, size: Sequence[int], align_corners: bool = False, *, eps: float | None = None
) -> torch.Tensor:
    r"""The sampling grid ``(B, *size, n)`` of ``src_from_dst`` matrices; the matrix's values are
    not checked (its type, dtype and shape, the size and ``eps`` are).

    Args:
        matrix: ``(B, n, n + 1)`` affine rows or ``(B, n + 1, n + 1)`` homogeneous
            matrices (``n = len(size)``), floating point; an affine map reads only the first
            ``n`` rows, a projective one (``eps`` given) needs the whole matrix.
        size: output spatial size ``(H, W)`` or ``(D, H, W)``.
        align_corners: as in :func:`torch.nn.functional.grid_sample`.
        eps: ``None`` for an affine map; for a projective one the guard of the
            homogeneous coordinate ``w`` (:class:`~torchstn.Projective`), ``> 0``: the points
            are ``p / w`` with ``|w| >= eps``, sign kept.

    The grid is linear in the matrix rows: one dense ``(B, n (n + 1)) @ (n (n + 1), N n)``
    matmul against a cached operator writes it directly in the sampler's interleaved
    layout (``F.affine_grid``'s batched ``(N, 3) @ (3, 2)`` products are several times
    slower on CPU). Differentiable to every order.

    Convention:
        Normalised (x, y[, z]) in [-1, 1], output to input, the same ``align_corners``
        for grid and sampler.
    """
    # every grid of a matrix family comes here: the callers' arguments pass on attribute checks alone
    if not (type(matrix) is torch.Tensor and matrix.dim() == 3 and matrix.is_floating_point()):
        check_floating("matrix", check_tensor("matrix", matrix, ndim=3))  # (a list failed on .dim())
    if eps is not None and not (type(eps) is float and 0 < eps < math.inf):  # (eps = 0 gave non-finite grids)
        check_positive("eps", eps)
    if type(align_corners) is not bool:  # (checked at every call: the cache held the grid of bool("False"))
        check_bool("align_corners", align_corners)
    # a float or bool size was truncated to another one, silently
    size = _checked_size(size, matrix.shape[-1] - 1)
    size = tuple(int(s) for s in size)  # (the 0-d tensors of a traced size, recorded as they are now)
    n = len(size)
    rows = (n, n + 1) if eps is None else (n + 1,)  # (a projective grid of affine rows failed in a matmul)
    if not sizes_traced() and (matrix.shape[2] != n + 1 or matrix.shape[1] not in rows):
        allowed = f"(B, {n}, {n + 1}) or (B, {n + 1}, {n + 1})" if eps is None else f"(B, {n + 1}, {n + 1}) with eps"
        raise ValueError(f"matrix must have shape {allowed} for a size of {n} dimensions, got {tuple(matrix.shape)}")
    if eps is not None and matrix.dtype in HALF_DTYPES:  # (p / eps overflows float16: points computed in float32)
        return _finite_half(matrix_grid(matrix.float(), size, align_corners, eps=eps), matrix.dtype)
    operator = _operator(size, align_corners, matrix)
    if eps is None:
        points = linear_grid(matrix[:, :n, :], operator, n)
    else:  # eager calls take the closed-form backward, tracers the plain expression
        project = _ProjectiveGrid.apply if eager_tensors(matrix) else _projective_points
        points = project(matrix, operator, _operator(size, align_corners, matrix, repeat=True), eps)
    return points.view(matrix.shape[0], *size, n)


def _projective_points(m: torch.Tensor, operator: torch.Tensor, w_operator: torch.Tensor, eps: float) -> torch.Tensor:
    """``p / guard(w)`` as plain differentiable operations (what :class:`_ProjectiveGrid` computes).

    The homogeneous coordinate ``w`` comes from a second matmul that writes it once per grid
    component, ``(B, N, n)``: the division is then elementwise on equal shapes. Slicing ``w``
    out of one ``(B, N, n + 1)`` result and broadcasting it was measured 2x slower
    forward+backward (an innermost loop of length ``n``, and a zero-fill and copy per slice
    in the backward).
    """
    n = m.shape[1] - 1
    return linear_grid(m[:, :n, :], operator, n) / _guard(linear_grid(m[:, n:, :], w_operator, n), eps)


class _ProjectiveGrid(torch.autograd.Function):
    r"""The projective grid ``hom[..., :n] / guard(w)`` with a closed-form backward.

    Forward: the two matmuls of :func:`matrix_grid` (the rows of ``x``,
    ``y``, and ``w`` written once per component), then the guard and the division: the
    same values, bit for bit, as the plain expression. Backward, with ``g = guard(w)``
    and ``o = p / g`` the output:

    .. math::
        \frac{\partial L}{\partial p} = \frac{\bar o}{g}, \qquad
        \frac{\partial L}{\partial w} = -\frac{\bar o}{g}\, o \cdot [\,|w| \ge ε\,]

    (inside the guard ``g`` is the constant ``±ε``, so ``w`` gets no gradient, as autograd
    gives the plain ``torch.where``), then one matmul per operator back to the matrix rows.
    Autograd of the plain expression takes about 12 kernels with full-size zero fills;
    this takes four elementwise passes and two small matmuls. When the gradient's own
    graph is asked for (``create_graph=True``), the backward is the plain expression's
    instead (:func:`differentiable_vjp`), so higher-order gradients are exact.
    """

    @staticmethod
    def forward(ctx, m: torch.Tensor, operator: torch.Tensor, w_operator: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        n = m.shape[1] - 1
        points = linear_grid(m[:, :n, :], operator, n)
        w = linear_grid(m[:, n:, :], w_operator, n)
        # The sign-keeping guard without boolean masks (those run 2-5x slower on CPU), and in
        # place: a fresh full-size tensor costs its page faults, more than the arithmetic.
        # Adding 0.0 turns -0.0 into +0.0, which _guard counts as positive.
        g = w.add_(0.0).abs().clamp_min_(eps).copysign_(w)
        out = points.div_(g)
        ctx.save_for_backward(m, operator, w_operator, w, g, out)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        m, operator, w_operator, w, g, out = ctx.saved_tensors
        if torch.is_grad_enabled() or batched_gradient(grad_out):  # (graph wanted; or no in-place on a batch)
            grad_m = differentiable_vjp(
                lambda m: _projective_points(m, operator, w_operator, ctx.eps), (m,), grad_out, (True,)
            )[0]
            return grad_m, None, None, None
        b, n = out.shape[0], out.shape[-1]
        grad_points = grad_out / g
        # 1 where |w| >= eps (w is used as is), 0 inside the guard; exact, no boolean pass:
        # sign(|w| - eps) is -1, 0 or 1 (x != y implies x - y != 0 with subnormals)
        grad_w = w.abs().sub_(ctx.eps).sign_().add_(1).clamp_max_(1).mul_(grad_points).mul_(out)
        rows = torch.mm(grad_points.flatten(1), operator.T).view(b, n, n + 1)
        w_row = torch.mm(grad_w.flatten(1), w_operator.T).neg_().view(b, 1, n + 1)
        return torch.cat([rows, w_row], 1), None, None, None


def _finite_half(points: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Projective ``points`` computed in float32, in the half-precision ``dtype`` of their
    parameters: clamped to its largest finite value first, so the grid stays finite as the guard
    promises (``p / eps`` is ``(1 / 8) / 1e-6`` on an 8-wide image, above float16's 65504)."""
    largest = torch.finfo(dtype).max
    return points.clamp(-largest, largest).to(dtype)


def _guard(w: torch.Tensor, eps: float) -> torch.Tensor:
    """Keep ``|w| >= eps`` with its sign (0 counts as positive) so a division stays finite."""
    small = w.abs() < eps
    # eps as 0-d tensors of w's dtype: python scalars would make a float32 eps (rounded) in float64
    return torch.where(small, torch.where(w < 0, w.new_full((), -eps), w.new_full((), eps)), w)


def _attributes(transform: MatrixTransform) -> tuple[Any, ...]:
    """What ``transform``'s matrix may depend on beyond its parameters: its attributes, a tensor by
    its identity and version counter (an in-place change moves it; no values read, so nothing is
    copied from a device or out of a fake or meta tensor), others by their ``repr``."""
    items = []
    for name, value in sorted(vars(transform).items()):
        if name != "_parent_inverts":
            if isinstance(value, torch.Tensor):
                items.append((name, id(value), None if value.is_inference() else value._version))
            else:
                items.append((name, repr(value)))
    return tuple(items)


@constant_result
def _parent_inverts(transform: MatrixTransform) -> bool:
    """Whether the parent family's ``_from_matrix`` inverts ``transform``'s own matrix, tried
    once for each state of its attributes (:func:`_attributes`): a stored yes outlived a change
    of the attribute its matrix reads, and ``compose`` gave half of a + b. Tried on real tensors
    outside every mode and tracer (under ``torch.compile``, ``torch.func`` or export the check
    had been skipped: a wrong ``compose`` where eager raises; ``torch.jit.trace`` must not
    record it). A constant for ``torch.compile``, which runs it while tracing: a compiled call
    reads the answer again where dynamo's guards recompile it (Python attributes), not after an
    in-place change of a tensor attribute."""
    with outside_modes(), torch.no_grad(), outside_jit_trace():
        state = _attributes(transform)
        kept = transform.__dict__.get("_parent_inverts")
        if kept is None or kept[0] != state:
            kept = transform.__dict__["_parent_inverts"] = (state, transform._try_parent_inverse())
    return kept[1]

