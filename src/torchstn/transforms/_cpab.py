"""CPAB: 1-D diffeomorphisms from continuous piecewise-affine velocity fields, integrated in closed form.

Freifeld et al., *Transformations Based on Continuous Piecewise-Affine Velocity Fields*
(TPAMI 2017); Detlefsen et al., *Deep Diffeomorphic Transformer Networks* (CVPR 2018).
"""

from __future__ import annotations

import math

import torch

from torchstn._tracing import autocast_off, cached, device_type_of
from torchstn._validation import check_bool, check_int, check_positive
from torchstn.transforms._base import Transform

__all__ = ["CPAB1D"]

# Below a threshold, expm1(z)/z and log1p(u)/u are summed as series: their autograd derivatives
# through the plain quotients lose about eps/z² (relative) near 0, and are 0/0 at it. The
# threshold keeps that loss below 3e-10 in float64 (1e-3) and 5e-5 in float32 (0.05), and
# the few terms below truncate under the dtype's rounding there (1.4e-18 and 2e-9 at most).
def _series_below(x: torch.Tensor) -> float:
    return 1e-3 if x.dtype == torch.float64 else 0.05


def _expm1_ratio(z: torch.Tensor) -> torch.Tensor:
    """``expm1(z) / z`` (1 at 0), stable and exactly differentiable for every ``z``; NaN stays NaN."""
    small = z.abs() < _series_below(z)
    zs = torch.where(small, z, torch.zeros_like(z))
    series = torch.ones_like(z)
    for n in range(4, 0, -1):  # sum_{n <= 4} z^n / (n + 1)!, Horner
        series = 1 + zs * series / (n + 1)
    zl = torch.where(small, torch.ones_like(z), z)  # the quotient is never evaluated at 0 (its gradient would be NaN)
    return torch.where(small, series, torch.expm1(zl) / zl)


def _log1p_ratio(u: torch.Tensor) -> torch.Tensor:
    """``log1p(u) / u`` (1 at 0) for ``u > -1``, stable and exactly differentiable; NaN stays NaN."""
    small = u.abs() < _series_below(u)
    us = torch.where(small, u, torch.zeros_like(u))
    series = torch.full_like(u, 1.0 / 6)
    for n in range(5, 0, -1):  # sum_{n <= 5} (-u)^n / (n + 1), Horner
        series = 1.0 / n - us * series
    ul = torch.where(small, torch.ones_like(u), u)
    return torch.where(small, series, torch.log1p(ul) / ul)


def _constraints(cells: int, zero_boundary: bool) -> torch.Tensor:
    """The rows ``L`` (float64, ``(R, 2K)``) with ``L A = 0`` for the cell coefficients ``A = (a_0, b_0, a_1, b_1, ...)``.

    Continuity at the ``K - 1`` interior vertices ``x_j``: ``a_{j-1} x_j + b_{j-1} = a_j x_j + b_j``;
    with ``zero_boundary`` also ``v(-1) = 0`` and ``v(1) = 0``.
    """
    vertices = torch.linspace(-1.0, 1.0, cells + 1, dtype=torch.float64)
    rows = []
    for j in range(1, cells):
        row = torch.zeros(2 * cells, dtype=torch.float64)
        row[2 * j - 2 : 2 * j] = torch.stack([vertices[j], torch.ones((), dtype=torch.float64)])
        row[2 * j : 2 * j + 2] = -row[2 * j - 2 : 2 * j]
        rows.append(row)
    if zero_boundary:
        for cell, x in ((0, -1.0), (cells - 1, 1.0)):
            row = torch.zeros(2 * cells, dtype=torch.float64)
            row[2 * cell : 2 * cell + 2] = torch.tensor([x, 1.0], dtype=torch.float64)
            rows.append(row)
    return torch.stack(rows) if rows else torch.zeros(0, 2 * cells, dtype=torch.float64)


def _basis(cells: int, zero_boundary: bool) -> torch.Tensor:
    """An orthonormal basis ``(2K, P)`` (float64) of the null space of :func:`_constraints`, the same on every machine.

    The null space is spanned by the vertices' tent functions (the field that is 1 at one
    vertex, 0 at the others, linear in between): each is continuous, so lies in it, and
    there are as many (``K + 1``, or the ``K - 1`` interior ones with a zero boundary) as
    the null space's dimension. Their QR factorisation, with the signs fixed so that ``R``
    has a positive diagonal, is unique: unlike the SVD's null vectors it does not depend
    on the LAPACK build, so a trained θ means the same field everywhere.
    """
    vertices = torch.linspace(-1.0, 1.0, cells + 1, dtype=torch.float64)
    width = 2.0 / cells
    tents = []
    for j in range(1, cells) if zero_boundary else range(cells + 1):
        coefficients = torch.zeros(cells, 2, dtype=torch.float64)
        if j > 0:  # rising on cell j - 1: (x - x_{j-1}) / w
            coefficients[j - 1] = torch.stack([torch.tensor(1 / width, dtype=torch.float64), -vertices[j - 1] / width])
        if j < cells:  # falling on cell j: (x_{j+1} - x) / w
            coefficients[j] = torch.stack([torch.tensor(-1 / width, dtype=torch.float64), vertices[j + 1] / width])
        tents.append(coefficients.reshape(-1))
    q, r = torch.linalg.qr(torch.stack(tents, 1))
    return q * torch.sign(torch.diagonal(r))


def _cell_of(x: torch.Tensor, cells: int) -> torch.Tensor:
    """The cell index of each point (the end cells extend to ±∞; NaN gets cell 0 and stays NaN)."""
    return ((x + 1) * (cells / 2)).floor().clamp(0, cells - 1).nan_to_num(0).long()


def _travel_time(distance: torch.Tensor, v: torch.Tensor, a: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The time to move ``distance`` inside one cell from a point of velocity ``v`` (slope ``a``), ``inf`` where not ``valid``.

    ``log(v_end / v) / a = (distance / v) · log1p(u) / u`` with ``u = a · distance / v = v_end / v - 1``:
    finite and exactly differentiable also for ``a = 0``. Where ``valid`` is false the inputs
    are replaced by harmless ones first, so no NaN reaches the gradient through ``where``.
    Nor is a cell end valid whose velocity rounds to 0 (``u = -1``: a vertex where the field
    vanishes, computed as a residue of the near end's sign): never reached, its ``log1p(-1)``
    would send 0 x inf = NaN into the gradient.
    """
    v_safe = torch.where(valid, v, torch.ones_like(v))
    u = a * distance / v_safe
    valid = valid & (u > -1)
    u = torch.where(valid, u, torch.zeros_like(v))
    return torch.where(valid, distance / v_safe * _log1p_ratio(u), torch.full_like(v, math.inf))


def _integrate(coefficients: torch.Tensor, x: torch.Tensor, time: float = 1.0) -> torch.Tensor:
    """``φ(x, time)`` of the field with cell coefficients ``(B, K, 2)`` for points ``(B, N)``, in closed form.

    A trajectory is monotone: it moves in the direction ``d`` of its starting velocity and
    enters the cells ``c + d, c + 2d, ...`` one after the other, until the velocity would
    change sign (it then never reaches the next edge) or the time runs out. Its arrival at
    the ``m``-th edge is the analytic time to the first edge plus the traversal times of the
    whole cells in between, which depend on θ only (vertex to vertex, ``(B, K)``, computed
    once). The number of edges reached before ``time`` picks the last cell, where the
    in-cell solution finishes with the time left: a fixed number of vectorised operations
    whatever the path (``(B, N, K - 1)`` arrival times), no loop over crossings.
    The cell index is discrete (no gradient); θ reaches the result through the arrival
    times and the last in-cell solution, which are differentiable.
    """
    batch, cells = coefficients.shape[:2]
    width = 2.0 / cells
    slopes, offsets = coefficients[..., 0], coefficients[..., 1]  # (B, K)
    vertices = torch.arange(cells + 1, device=x.device, dtype=x.dtype) * width - 1
    # traversal time of each whole cell, in the direction of its flow (inf where the flow stops inside)
    v_left, v_right = slopes * vertices[:-1] + offsets, slopes * vertices[1:] + offsets
    rightward = v_left > 0
    through = (rightward & (v_right > 0)) | ((v_left < 0) & (v_right < 0))
    span = torch.where(rightward, torch.full_like(v_left, width), torch.full_like(v_left, -width))
    traversal = _travel_time(span, torch.where(rightward, v_left, v_right), slopes, through)
    # each point: its cell, direction and time to its first edge
    cell = _cell_of(x, cells)
    a, b = slopes.gather(1, cell), offsets.gather(1, cell)
    v = a * x + b
    forward = v > 0
    direction = forward.long() - (v < 0).long()  # +1, -1, or 0 for a point at rest
    edge = (cell + forward.long()).to(x.dtype) * width - 1
    v_edge = a * edge + b
    # no edge beyond the end cells (logic, not a where of booleans: onnxruntime has no such Where)
    bounded = (forward & (cell < cells - 1)) | (~forward & (cell > 0) & (v < 0))
    # the edge is reached iff the velocity keeps its sign up to it (else the point stops at v = 0 before it)
    first = _travel_time(edge - x, v, a, bounded & (v_edge != 0) & ((v_edge > 0) == forward))
    # the cells entered next, c + m d for m = 1 .. K - 1, and the arrival at the edge entering each
    steps = torch.arange(1, cells, device=x.device)
    entered = cell[..., None] + direction[..., None] * steps  # (B, N, K - 1)
    exists = (entered >= 0) & (entered < cells)
    crossing = traversal.gather(1, entered.clamp(0, cells - 1).flatten(1)).view(entered.shape)
    crossing = torch.where(exists, crossing, torch.full_like(crossing, math.inf))
    before = torch.cat([torch.zeros_like(crossing[..., :1]), crossing[..., :-1].cumsum(-1)], -1)
    arrival = torch.where(exists, first[..., None] + before, torch.full_like(crossing, math.inf))
    t = torch.full_like(x, time)
    crossed = (arrival < t[..., None]).sum(-1)  # arrivals increase with m: the edges reached in time
    moved = crossed > 0
    last = cell + direction * crossed
    entry = (last + (direction < 0).long()).to(x.dtype) * width - 1  # the edge the point entered its last cell by
    if cells > 1:
        reached = arrival.gather(-1, (crossed - 1).clamp_min(0)[..., None])[..., 0]
    else:  # one cell: no edge to cross, no arrival to read
        reached = torch.zeros_like(x)
    x = torch.where(moved, entry, x)
    t = torch.where(moved, t - reached, t)
    a, b = slopes.gather(1, last), offsets.gather(1, last)
    # ψ(x, t) = e^{ta} x + (e^{ta} - 1) b / a  =  x + t (a x + b) expm1(t a) / (t a). e^{ta} is
    # held below the square root of the dtype's largest number (1.8e19 in float32): a point the
    # flow carries further (only outside [-1, 1], without zero_boundary) lies so far out that it
    # reads what far points read, and stays finite, as its gradient does (an overflow to inf was
    # a NaN sample, and a NaN θ-gradient for the batch); at a point at rest (a x + b = 0: the
    # domain's ends with zero_boundary) the product is 0, where it was 0 · inf
    v = a * x + b
    z = (t * a).clamp(max=math.log(torch.finfo(x.dtype).max) / 2)
    return x + t * v * _expm1_ratio(z)


class CPAB1D(Transform):
    r"""Diffeomorphic 1-D warps (CPAB): the flow of a continuous piecewise-affine velocity field.

    The interval [-1, 1] is cut into ``K`` equal cells; on cell ``c`` the velocity is
    affine, :math:`v(x) = a_c x + b_c`, and continuous across the cells (with
    ``zero_boundary``, also :math:`v(-1) = v(1) = 0`). θ holds the coordinates of the
    cell coefficients :math:`A = (a_0, b_0, \dots, a_{K-1}, b_{K-1}) = B θ` in an
    orthonormal basis ``B`` of that constraint space, ``P = K - 1`` (``K + 1`` without
    the zero boundary). The warp is the field integrated for unit time,

    .. math::
        T_θ(x) = φ_θ(x, 1), \qquad \frac{\partial φ_θ(x, t)}{\partial t} = v_θ(φ_θ(x, t)),
        \quad φ_θ(x, 0) = x,

    in closed form: inside a cell :math:`ψ(x, t) = e^{t a} x + (e^{t a} - 1) \frac{b}{a}`
    (:math:`x + t b` for :math:`a = 0`), and a point that reaches the cell's edge
    :math:`x_e` does so at :math:`t_e = \frac{1}{a} \log \frac{a x_e + b}{a x + b}`, then
    continues in the next cell for the time left (Freifeld et al., TPAMI 2017). The map
    is a diffeomorphism, increasing, and :math:`T_{-θ} = T_θ^{-1}`; with
    ``zero_boundary`` it fixes -1 and 1. Gradients with respect to θ are exact (autograd
    through the closed form; the cell index is discrete and the hitting times carry θ).

    The basis is the QR of the vertices' tent functions with signs fixed, computed once in
    float64 and cached per device and dtype: the same on every machine, so a learned θ
    keeps its meaning. :meth:`prior_covariance` is the smoothness prior the CPAB and
    P-STN authors put on θ.

    Args:
        tessellation: the number of cells ``K``.
        zero_boundary: pin the velocity to 0 at -1 and 1 (the endpoints stay fixed).

    Convention:
        Normalised x in [-1, 1] along the length, output to input: the grid holds
        :math:`T_θ(x)` for every output sample position ``x``, the point of the input
        ``(B, C, L)`` signal to read; grids are ``(B, L, 1)``. The same
        ``align_corners`` goes to grid and sampler. Outside [-1, 1] the end cells'
        fields extend.

    Example:
        >>> cpab = CPAB1D(tessellation=4)
        >>> cpab.num_params, cpab.identity()
        (3, tensor([0., 0., 0.]))
        >>> theta = torch.tensor([[1.0, 0.0, -1.0]])
        >>> x = torch.tensor([[[-1.0], [0.0], [1.0]]])
        >>> cpab.transform_points(theta, x).squeeze(-1)  # endpoints fixed
        tensor([[-1.0000, -0.1010,  1.0000]])
        >>> back = cpab.transform_points(-theta, cpab.transform_points(theta, x))
        >>> torch.allclose(back, x, atol=1e-6)  # T_{-θ} inverts T_θ
        True
    """

    ndim = 1

    def __init__(self, tessellation: int = 8, zero_boundary: bool = True) -> None:
        self.zero_boundary = check_bool("zero_boundary", zero_boundary)
        # with a zero boundary one cell leaves no free field (P = K - 1)
        self.tessellation = check_int("tessellation", tessellation, 2 if self.zero_boundary else 1)
        # computed once, in float64, on the CPU (under torch.device("meta") too), as a plain tensor (a
        # transform built under torch.inference_mode() is used in any mode later)
        with torch.device("cpu"), torch.inference_mode(False):
            self._basis64 = _basis(self.tessellation, self.zero_boundary)
        self.num_params = self._basis64.shape[1]

    def _identity(self) -> torch.Tensor:
        return torch.zeros(self.num_params, dtype=torch.float64, device="cpu")

    def basis(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The orthonormal basis ``B`` ``(2K, P)``: cell coefficients ``A = B θ`` (cached; do not modify it)."""
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = ("cpab-basis", self.tessellation, self.zero_boundary, device, dtype)
        return cached(key, lambda: self._basis64.to(device=device, dtype=dtype))

    def velocity_coefficients(self, params: torch.Tensor) -> torch.Tensor:
        """The cell coefficients ``(B, K, 2)``: ``(a_c, b_c)`` with :math:`v(x) = a_c x + b_c` on cell ``c``,
        in the dtype of ``params`` (under ``torch.autocast`` too)."""
        params = self.check_params(params)
        with autocast_off(device_type_of(params)):  # (autocast ran B θ in bfloat16)
            return self._coefficients(params)

    def _coefficients(self, params: torch.Tensor) -> torch.Tensor:
        coefficients = (params @ self.basis(params.device, params.dtype).T).view(params.shape[0], self.tessellation, 2)
        if not self.zero_boundary:
            return coefficients
        # B θ meets v(-1) = b_0 - a_0 = 0 and v(1) = a + b = 0 only to rounding: a residue of
        # 1e-15 at an end, carried by e^{ta} (large slopes), threw -1 far outside the domain in
        # float64. The end cells' offsets are set from their slopes, so the ends are exactly at
        # rest (the same values up to that rounding, and the same gradient).
        first, last = coefficients[:, :1, 0], coefficients[:, -1:, 0]
        return torch.cat([torch.stack([first, first], -1), coefficients[:, 1:-1], torch.stack([last, -last], -1)], 1)

    def velocity(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """The velocity field :math:`v_θ` at ``points`` ``(B, N, 1)``: ``(B, N, 1)`` (``points``
        checked as :meth:`transform_points` checks them, and computed as it is, under ``torch.autocast`` too)."""
        params = self.check_params(params)
        self._check_points(params, points)
        with autocast_off(device_type_of(params)):
            coefficients = self._coefficients(params)
            x = points[..., 0]
            cell = _cell_of(x, self.tessellation)
            a, b = coefficients[..., 0].gather(1, cell), coefficients[..., 1].gather(1, cell)
            return (a * x + b).unsqueeze(-1)

    def _map(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(params.dtype, points.dtype)
        x = points[..., 0].to(dtype)
        x = x.expand(params.shape[0], -1) if x.dim() == 1 else x  # a base grid shared by the batch
        return _integrate(self._coefficients(params).to(dtype), x).unsqueeze(-1)

    def prior_covariance(
        self,
        length_scale: float = 0.1,
        variance: float = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        r"""The covariance ``(P, P)`` of the Gaussian smoothness prior on θ.

        A squared-exponential kernel over the cell centres :math:`c_i` correlates the
        coefficients of nearby cells (slopes with slopes, offsets with offsets), and the
        basis projects it onto θ:

        .. math::
            Σ_A[(i, p), (j, q)] = σ^2 \exp\!\Big(-\frac{(c_i - c_j)^2}{2 ℓ^2}\Big) δ_{pq},
            \qquad Σ_θ = B^\top Σ_A B.

        It is the prior of libcpab/difw's ``covariance_cpa`` that the P-STN authors use,
        with two differences: ``variance`` is :math:`σ^2` (their ``output_variance`` is
        squared: pass its square), and the kernel takes the squared distance between
        centres, as a squared-exponential kernel does (theirs takes the distance).
        θ ~ N(0, Σ_θ) draws smooth warps (``torch.distributions.MultivariateNormal``).
        For a P-STN, pass it to
        ``ProbabilisticSpatialTransformer(..., distribution="gaussian", prior_covariance=Σ_θ)``:
        its KL is then :math:`\mathrm{KL}(\mathcal N(μ, \mathrm{diag}\,σ^2) \,\|\, \mathcal N(0, Σ_θ))`.
        The matrix grows ill-conditioned as ``ℓ`` exceeds a few cell widths (a property of
        the kernel; e.g. ``K = 8``, ``ℓ = 1``: condition number 1e8), which the P-STN
        refuses beyond 1e6: add a multiple of the identity then.

        Args:
            length_scale: ``ℓ``, how fast the correlation decays with the distance between
                cell centres (in the normalised [-1, 1] units; a cell is ``2 / K`` wide).
            variance: ``σ²``, the prior variance of each cell coefficient.
            device, dtype: of the result (computed in float64).

        Example:
            >>> cov = CPAB1D(tessellation=8).prior_covariance(length_scale=0.3, variance=0.5)
            >>> cov.shape, bool(torch.linalg.eigvalsh(cov).min() > 0)
            (torch.Size([7, 7]), True)
        """
        ell = check_positive("length_scale", length_scale)
        sigma2 = check_positive("variance", variance)
        k = self.tessellation
        centres = (torch.arange(k, dtype=torch.float64, device="cpu") + 0.5) * (2.0 / k) - 1
        kernel = sigma2 * torch.exp(-((centres[:, None] - centres[None, :]) ** 2) / (2 * ell**2))
        cov_a = torch.kron(kernel, torch.eye(2, dtype=torch.float64, device="cpu"))  # (a_c, b_c) interleaved, as A
        cov = self._basis64.T @ cov_a @ self._basis64
        cov = (cov + cov.T) / 2
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        return cov.to(device=device, dtype=dtype)

    def __repr__(self) -> str:
        return f"CPAB1D(tessellation={self.tessellation}, zero_boundary={self.zero_boundary})"
