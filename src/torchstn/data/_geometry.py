"""Geometry helpers of the generators: seeded streams, digit outlines, fitting tests, homographies.

Nothing here warps an image: every warp goes through :func:`torchstn.warp` /
:func:`torchstn.sample`. These helpers decide *where* a digit goes so that the
whole digit stays on its canvas.

Convention:
    Points are ``(x, y)``, normalised to [-1, 1] (x along the width), pixel centres
    at ``(2i + 1) / W - 1`` (``align_corners=False``). Parameters map canvas
    (output) points to digit (input) points, so the *forward* map that carries the
    digit onto the canvas is their inverse.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F

from torchstn.sampling import sample
from torchstn.transforms import MatrixTransform, ThinPlateSpline

__all__ = [
    "canvas_bound",
    "digit_outline",
    "fits_matrix",
    "fits_tps",
    "forward_points",
    "homography_from_points",
    "make_generator",
    "uniform",
]


def make_generator(*keys: object) -> torch.Generator:
    """A CPU generator seeded from ``keys`` (e.g. ``(seed, kind, split, epoch)``) via SHA-256.

    Different keys give unrelated streams, so the train and test splits (or two
    epochs) never share a draw, and the stream does not depend on torch's global seed.
    """
    digest = hashlib.sha256(json.dumps([str(k) for k in keys]).encode()).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator


def uniform(n: int, low: float, high: float, generator: torch.Generator, *shape: int) -> torch.Tensor:
    """``n`` (times ``shape``) float64 draws from U(low, high)."""
    return low + (high - low) * torch.rand(n, *shape, generator=generator, dtype=torch.float64)


def digit_outline(images: torch.Tensor, dilate: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Points whose convex hull holds the digit's bilinear footprint, for each image.

    The ink mask (pixels > 0) is dilated by ``dilate`` pixels (a square structuring
    element), and of each row only the leftmost and rightmost dilated pixel centres are
    kept: their convex hull equals that of the whole dilated mask. With ``dilate=1`` the
    hull contains the open square of half-width one pixel around each ink pixel, which
    is everything a bilinear sampler can read from the ink, so an affine or projective
    map that keeps these points inside a box keeps the digit's footprint inside it.

    Args:
        images: ``(N, H, W)`` uint8 (or any dtype, ink is ``> 0``).
        dilate: dilation in input pixels (0: the ink pixel centres themselves).

    Returns:
        ``(points, valid)``: ``(N, 2 (H + 2 dilate), 2)`` float64 normalised input
        coordinates and ``(N, 2 (H + 2 dilate))`` bool (rows without ink are invalid).
        An image without ink yields its centre as one valid point.
    """
    n, h, w = images.shape
    ink = (images > 0).to(torch.uint8)
    has = (images > 0).any(2)  # (N, H)
    inf = float(w + 4 * dilate + 4)
    # first / last ink column of each row (+-inf for rows without ink)
    first = torch.where(has, ink.argmax(2).double(), inf)
    last = torch.where(has, (w - 1 - ink.flip(2).argmax(2)).double(), -inf)
    if dilate > 0:
        # a dilated row spans the union of the 2d + 1 rows around it, widened by d on each side
        pad = 2 * dilate
        last = F.max_pool1d(F.pad(last[:, None], (pad, pad), value=-inf), 2 * dilate + 1, stride=1)[:, 0] + dilate
        first = -F.max_pool1d(F.pad(-first[:, None], (pad, pad), value=-inf), 2 * dilate + 1, stride=1)[:, 0] - dilate
    rows = last >= first  # (N, H + 2d)
    ys = (2 * (torch.arange(h + 2 * dilate, dtype=torch.float64) - dilate) + 1) / h - 1
    xs = torch.cat([first, last], 1).clamp(-dilate, w - 1 + dilate)
    points = torch.stack([(2 * xs + 1) / w - 1, torch.cat([ys, ys]).expand(n, -1)], -1)
    valid = torch.cat([rows, rows], 1)
    empty = ~valid.any(1)
    if empty.any():
        points[empty, 0] = 0.0
        valid[empty, 0] = True
    return points, valid


def canvas_bound(size: int, border: float) -> float:
    """Normalised half-width of the box the footprint must stay inside.

    ``border = 0``: nothing of the digit falls off the canvas (a canvas extended by a
    pixel would be blank outside the original); ``border = 1``: also the outermost
    pixel ring of the canvas stays blank; in general the box passes through the centres
    of the pixels ``border`` pixels in from the edge.
    """
    return 1.0 - (2.0 * border - 1.0) / size


def forward_points(transform: MatrixTransform, params: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry digit points onto the canvas: apply the inverse of ``params``.

    Returns:
        ``(canvas_points (B, N, 2), ok (B, N))``; ``ok`` is False where a projective map
        sends the point through or beyond its horizon (``w <= 0``).
    """
    inverse = torch.linalg.inv(transform.matrix(params))
    hom = torch.cat([points, points.new_ones(points.shape[:-1] + (1,))], -1) @ inverse.transpose(1, 2)
    w = hom[..., 2:]
    return hom[..., :2] / w.clamp_min(1e-12), w[..., 0] > 1e-12


def fits_matrix(
    transform: MatrixTransform,
    params: torch.Tensor,
    points: torch.Tensor,
    valid: torch.Tensor,
    bound: float,
) -> torch.Tensor:
    """Whether each digit's outline, carried onto the canvas, stays within ``|x|, |y| < bound``.

    Exact for affine and projective maps (a convex hull maps into the hull of the
    mapped points when ``w > 0`` on all of them). ``params (B, P)``, ``points (B, N, 2)``
    and ``valid (B, N)`` as from :func:`digit_outline`. Returns ``(B,)`` bool.
    """
    mapped, ok = forward_points(transform, params, points)
    inside = (mapped.abs() < bound).all(-1) & ok
    return (inside | ~valid).all(1)


def fits_tps(
    transform: ThinPlateSpline,
    params: torch.Tensor,
    images: torch.Tensor,
    size: int,
    border: float,
    ring: int,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Whether a thin-plate-spline warp leaves the pixels around the canvas blank, and ink on the canvas.

    The warp is rendered (through the sampler) on a canvas extended by ``ring`` pixels on
    each side, using that a thin-plate spline is unchanged by a uniform scaling of its
    domain (control points scaled by ``1 / rho`` give the same map on the larger grid),
    and the pixels outside the box of :func:`canvas_bound` must all be exactly zero.

    Args:
        transform: the spline family of ``params``.
        params: ``(B, P)``.
        images: ``(B, 1, H, W)`` float digits.
        size: canvas side in pixels.
        border: as in :func:`canvas_bound` (an integer number of pixels here).
        ring: how many pixels beyond the canvas edge are checked.
        mode: the sampler's mode, the samples' own (bicubic reaches a pixel further than bilinear).

    Returns:
        ``(B,)`` bool.
    """
    outer = size + 2 * ring
    rho = outer / size
    control = transform.control_points / rho
    wide = ThinPlateSpline(control=control, regularization=transform.regularization)
    grid = wide.grid(params.to(images.dtype), (outer, outer))
    rendered = sample(images, grid, mode=mode)[:, 0]
    inner = int(ring + round(border))
    mask = torch.ones(outer, outer, dtype=torch.bool)
    if outer - 2 * inner > 0:
        mask[inner : outer - inner, inner : outer - inner] = False
    blank = (rendered[:, mask] < 0.5 / 255).all(1)
    # and the canvas not blank: a digit warped wholly beyond the checked ring passed (e at sigma=100:
    # 29 of 300 blank samples). (Asking every ink pixel to be read by some canvas point instead
    # refused 6 of the 60,000 first draws at the default sigma, digits whole but shrunk between
    # the points.)
    shown = (rendered[:, ring : ring + size, ring : ring + size] >= 0.5 / 255).flatten(1).any(1)
    return blank & shown


def homography_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The homography ``H`` (``H[2, 2] = 1``) with ``H src_i ~ dst_i`` for four point pairs.

    Args:
        src: ``(B, 4, 2)`` points, no three collinear.
        dst: ``(B, 4, 2)`` their images.

    Returns:
        ``(B, 3, 3)`` in the dtype of ``src`` (solve in float64 for accuracy).

    Example:
        >>> sq = torch.tensor([[[-1.0, -1], [1, -1], [1, 1], [-1, 1]]], dtype=torch.float64)
        >>> h = homography_from_points(sq, 2 * sq + 0.5)[0]
        >>> torch.allclose(h, torch.tensor([[2.0, 0, 0.5], [0, 2, 0.5], [0, 0, 1]], dtype=torch.float64))
        True
    """
    b = src.shape[0]
    x, y = src.unbind(-1)
    u, v = dst.unbind(-1)
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    system = torch.cat([rows_u, rows_v], 1)  # (B, 8, 8)
    rhs = torch.cat([u, v], 1)  # (B, 8)
    h = torch.linalg.solve(system, rhs)
    return torch.cat([h, h.new_ones(b, 1)], 1).reshape(b, 3, 3)
