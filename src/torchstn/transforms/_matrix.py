"""The matrix families: translation, attention, similarity, affine, projective and 3-D affine."""

from __future__ import annotations

import torch

from torchstn._validation import check_positive
from torchstn.transforms._base import MatrixTransform

# The identities are built from torch.eye, not from literals (torch.tensor), which
# torch.jit.trace would warn about each time a cascade starts from the identity.

__all__ = ["Affine", "Affine1D", "Affine3D", "Attention", "Projective", "Similarity", "Translation"]


def _from_rows(params: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Rows of an affine matrix -> homogeneous ``(B, rows + 1, cols)`` with a last row ``0 ... 0 1``."""
    b = params.shape[0]
    last = params.new_zeros(b, 1, cols)
    last[:, 0, -1] = 1
    return torch.cat([params.reshape(b, rows, cols), last], dim=1)


class Translation(MatrixTransform):
    r"""Translation, ``P = 2``: ``(tx, ty)``.

    .. math:: x_s = x_t + t_x, \quad y_s = y_t + t_y

    Convention:
        Normalised (x, y) in [-1, 1], output to input (a positive ``tx`` reads the
        input further right, so the content moves left). Same ``align_corners`` for
        grid and sampler.

    Example:
        >>> Translation().matrix(torch.tensor([[0.5, -0.25]]))
        tensor([[[ 1.0000,  0.0000,  0.5000],
                 [ 0.0000,  1.0000, -0.2500],
                 [ 0.0000,  0.0000,  1.0000]]])
    """

    num_params = 2

    def _identity(self) -> torch.Tensor:
        return torch.zeros(2, dtype=torch.float64, device="cpu")

    def _matrix(self, params: torch.Tensor) -> torch.Tensor:
        return _from_rows(Translation._rows(self, params), 2, 3)

    def _rows(self, params: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(2, dtype=params.dtype, device=params.device).expand(params.shape[0], 2, 2)
        return torch.cat([eye, params[:, :, None]], 2)

    def _from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix[:, :2, 2] / matrix[:, 2:, 2]

    def _map(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return points + params[:, None, :]


class Attention(MatrixTransform):
    r"""Isotropic scale and translation (the paper's attention), ``P = 3``: ``(s, tx, ty)``.

    .. math:: x_s = s\,x_t + t_x, \quad y_s = s\,y_t + t_y

    ``s < 1`` zooms in on a window of the input of half-width ``s`` centred at ``(tx, ty)``.

    Convention:
        Normalised (x, y) in [-1, 1], output to input; same ``align_corners`` for grid
        and sampler.
    """

    num_params = 3

    def _identity(self) -> torch.Tensor:
        return torch.eye(1, 3, dtype=torch.float64, device="cpu").reshape(3)  # (s, tx, ty) = (1, 0, 0)

    def _matrix(self, params: torch.Tensor) -> torch.Tensor:
        return _from_rows(Attention._rows(self, params), 2, 3)

    def _rows(self, params: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(2, dtype=params.dtype, device=params.device)
        return torch.cat([params[:, :1, None] * eye, params[:, 1:, None]], 2)

    def _from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        m = matrix / matrix[:, 2:, 2:]
        return torch.stack([0.5 * (m[:, 0, 0] + m[:, 1, 1]), m[:, 0, 2], m[:, 1, 2]], 1)

    def _map(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return points * params[:, None, :1] + params[:, None, 1:]


class Similarity(MatrixTransform):
    r"""Rotation, isotropic scale and translation, ``P = 4``: ``(s, α, tx, ty)``, α in radians.

    .. math::
        \begin{pmatrix} x_s \\ y_s \end{pmatrix} =
        s \begin{pmatrix} \cos α & -\sin α \\ \sin α & \cos α \end{pmatrix}
        \begin{pmatrix} x_t \\ y_t \end{pmatrix} + \begin{pmatrix} t_x \\ t_y \end{pmatrix}

    Convention:
        Normalised (x, y) in [-1, 1], output to input, so a positive α rotates the
        *content* counterclockwise on screen (y points down: with α = π/2 a dot at 3
        o'clock moves to 12 o'clock). The rotation acts on normalised
        coordinates, as ``affine_grid`` does: on a non-square image it is a rotation of
        the normalised square. Same ``align_corners`` for grid and sampler.
    """

    num_params = 4

    def _identity(self) -> torch.Tensor:
        return torch.eye(1, 4, dtype=torch.float64, device="cpu").reshape(4)  # (s, α, tx, ty) = (1, 0, 0, 0)

    def _matrix(self, params: torch.Tensor) -> torch.Tensor:
        return _from_rows(Similarity._rows(self, params), 2, 3)

    def _rows(self, params: torch.Tensor) -> torch.Tensor:
        s, angle, tx, ty = params.unbind(1)
        c, n = s * torch.cos(angle), s * torch.sin(angle)
        return torch.stack([c, -n, tx, n, c, ty], 1).view(-1, 2, 3)

    def _from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        m = matrix / matrix[:, 2:, 2:]
        c = 0.5 * (m[:, 0, 0] + m[:, 1, 1])
        n = 0.5 * (m[:, 1, 0] - m[:, 0, 1])
        # at scale 0, s = α = 0 with gradient 0: hypot's and atan2's derivatives are 0/0 there, and
        # their NaN would reach every input of the stack (the translation's gradient too)
        zero = (c == 0) & (n == 0)
        c = torch.where(zero, 1.0, c)
        scale, angle = torch.hypot(c, n).masked_fill(zero, 0.0), torch.atan2(n, c).masked_fill(zero, 0.0)
        return torch.stack([scale, angle, m[:, 0, 2], m[:, 1, 2]], 1)


class Affine(MatrixTransform):
    r"""General 2-D affine map, ``P = 6``: the rows of the ``2 x 3`` matrix, as ``affine_grid`` takes it.

    .. math::
        \begin{pmatrix} x_s \\ y_s \end{pmatrix} =
        \begin{pmatrix} θ_{11} & θ_{12} & θ_{13} \\ θ_{21} & θ_{22} & θ_{23} \end{pmatrix}
        \begin{pmatrix} x_t \\ y_t \\ 1 \end{pmatrix}

    Convention:
        Normalised (x, y) in [-1, 1], output to input (``src_from_dst``); the grid
        equals ``F.affine_grid(params.view(-1, 2, 3), ...)`` for both values of
        ``align_corners``, to a unit in the last place (its pixel centres are the exact
        fractions rounded once, ``affine_grid``'s those of ``torch.linspace``). Same
        ``align_corners`` for grid and sampler.

    Example:
        >>> Affine().identity()
        tensor([1., 0., 0., 0., 1., 0.])
    """

    num_params = 6

    def _identity(self) -> torch.Tensor:
        return torch.eye(2, 3, dtype=torch.float64, device="cpu").reshape(6)

    def _matrix(self, params: torch.Tensor) -> torch.Tensor:
        return _from_rows(params, 2, 3)

    def _rows(self, params: torch.Tensor) -> torch.Tensor:
        return params.reshape(-1, 2, 3)

    def _from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        return (matrix[:, :2, :] / matrix[:, 2:, 2:]).flatten(1)


class Projective(MatrixTransform):
    r"""Homography, ``P = 8``: the first eight entries of the ``3 x 3`` matrix ``H``, row-major, ``H[2, 2] = 1``.

    .. math::
        x_s = \frac{h_{11} x_t + h_{12} y_t + h_{13}}{w}, \quad
        y_s = \frac{h_{21} x_t + h_{22} y_t + h_{23}}{w}, \quad
        w = h_{31} x_t + h_{32} y_t + 1

    Division guard: where ``|w| < eps`` the division uses ``sign(w) * eps`` instead
    (``w = 0`` counts as positive), so grids stay finite (points near the horizon land
    far outside [-1, 1] and sample padding). Inside the guard the gradient with
    respect to ``w`` is zero.

    Args:
        eps: the smallest ``|w|`` used in the division.

    Convention:
        Normalised (x, y) in [-1, 1], output to input (``src_from_dst``). Same
        ``align_corners`` for grid and sampler. A homography with ``H[2, 2] = 0`` (it
        sends the centre to the horizon) has no parameters in this form:
        :meth:`~MatrixTransform.params_from_matrix` refuses it (``ValueError``), and
        ``inverse`` and ``compose`` give non-finite parameters where their result is one.
    """

    num_params = 8
    projective = True

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = check_positive("eps", eps)

    def _identity(self) -> torch.Tensor:
        return torch.eye(3, dtype=torch.float64, device="cpu").reshape(9)[:8]

    def _matrix(self, params: torch.Tensor) -> torch.Tensor:
        # a non-finite entry makes the whole matrix NaN (+ 0 elsewhere, the same values): an
        # infinite h31 or h32 gives every point an infinite w, and x / w = 0 read the centre,
        # a finite output of a non-finite θ (sampling/csrc/fast_call.cpp's homographies too)
        poison = (params - params).sum(1, keepdim=True)
        return (torch.cat([params, params.new_ones(params.shape[0], 1)], 1) + poison).reshape(params.shape[0], 3, 3)

    def _from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        return (matrix / matrix[:, 2:, 2:]).flatten(1)[:, :8]

    def __repr__(self) -> str:
        return f"Projective(eps={self.eps:g})"


class Affine3D(MatrixTransform):
    r"""General 3-D affine map, ``P = 12``: the rows of the ``3 x 4`` matrix, as 5-D ``affine_grid`` takes it.

    Convention:
        Normalised (x, y, z) in [-1, 1], x along the width, y along the height, z
        along the depth of a ``(B, C, D, H, W)`` volume; output to input. The grid
        equals ``F.affine_grid(params.view(-1, 3, 4), (B, C, D, H, W))`` to a unit in the
        last place (see :class:`Affine`).
    """

    num_params = 12
    ndim = 3

    def _identity(self) -> torch.Tensor:
        return torch.eye(3, 4, dtype=torch.float64, device="cpu").reshape(12)

    def _matrix(self, params: torch.Tensor) -> torch.Tensor:
        return _from_rows(params, 3, 4)

    def _rows(self, params: torch.Tensor) -> torch.Tensor:
        return params.reshape(-1, 3, 4)

    def _from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        return (matrix[:, :3, :] / matrix[:, 3:, 3:]).flatten(1)


class Affine1D(MatrixTransform):
    r"""1-D affine map for signals ``(B, C, L)``, ``P = 2``: ``(a, b)`` with ``x_s = a x_t + b``.

    Scale and shift of the time axis, the transformation the P-STN paper applies to
    time series.

    Convention:
        Normalised x in [-1, 1] along the length, output to input; grids are
        ``(B, L, 1)`` and the sampler reads ``(B, C, L)`` signals.
    """

    num_params = 2
    ndim = 1

    def _identity(self) -> torch.Tensor:
        return torch.eye(1, 2, dtype=torch.float64, device="cpu").reshape(2)  # (a, b) = (1, 0)

    def _matrix(self, params: torch.Tensor) -> torch.Tensor:
        return _from_rows(params, 1, 2)

    def _rows(self, params: torch.Tensor) -> torch.Tensor:
        return params.reshape(-1, 1, 2)

    def _from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        return (matrix[:, :1, :] / matrix[:, 1:, 1:]).flatten(1)
