"""What a user would write instead of torchstn: ``F.affine_grid + F.grid_sample``, and kornia.

The benchmark only means something if every contender does the same work, so this
module converts torchstn's parameters into each peer's conventions and the tests check
(``tests/bench/test_peers.py``) that each peer returns the image ``torchstn.warp``
returns for the same transform.

Conventions bridged here:

* torchstn's θ maps *normalised output* points to *normalised input* points
  (``src_from_dst``, as ``F.affine_grid``).
* kornia's ``warp_affine``/``warp_perspective`` take a matrix in **pixel** coordinates
  mapping the *input* to the *output* (``dst_from_src``) and normalise and invert it
  themselves; they default to ``align_corners=True``, so the same flag is passed
  explicitly.
* kornia's TPS (``get_tps_transform`` + ``warp_image_tps``) is solved per call from
  point pairs in the normalised frame, called as kornia documents for a warp that
  sends the output-frame control points to input-frame targets (torchstn's TPS θ).
  kornia places the spline's kernel centres at the *targets* (they move with θ),
  torchstn at the fixed output-frame control points, so the two splines interpolate
  the same correspondences (both send every control point to its target) and
  coincide exactly when θ is affine, but differ in between for a general θ. The
  work per call is the same kind: a kernel of K centres at every output pixel and
  a sampler, plus kornia's per-sample (K + 3) linear solve, which is part of
  kornia's TPS warp.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from torchstn.transforms import MatrixTransform, ThinPlateSpline

__all__ = [
    "affine_rows",
    "kornia_available",
    "kornia_tps",
    "kornia_tps_points",
    "kornia_version",
    "kornia_warp_affine",
    "kornia_warp_perspective",
    "pixel_from_normalized",
    "pixel_matrix_dst_from_src",
    "torch_affine_warp",
    "tps_controls",
]


def kornia_available() -> bool:
    """Whether kornia can be imported (the optional ``bench`` extra)."""
    try:
        import kornia  # noqa: F401
    except ImportError:
        return False
    return True


def kornia_version() -> str | None:
    """kornia's version, or ``None`` when it is not installed."""
    try:
        import kornia
    except ImportError:
        return None
    return str(kornia.__version__)


def pixel_from_normalized(
    size: Sequence[int], align_corners: bool, *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The ``(3, 3)`` matrix taking normalised ``(x, y, 1)`` to pixel ``(x, y, 1)`` for an image of ``size = (H, W)``.

    Convention:
        Pixel ``(0, 0)`` is the centre of the top-left pixel. With
        ``align_corners=False`` the normalised coordinate of pixel ``i`` is
        ``(2i + 1) / W - 1`` (±1 are the outer edges), with ``True`` it is
        ``2i / (W - 1) - 1`` (±1 are the outer pixel centres), as in
        :func:`torch.nn.functional.grid_sample`.
    """
    h, w = size
    if align_corners:
        sx, sy = (w - 1) / 2, (h - 1) / 2
        tx, ty = sx, sy
    else:
        sx, sy = w / 2, h / 2
        tx, ty = (w - 1) / 2, (h - 1) / 2
    rows = [[sx, 0.0, tx], [0.0, sy, ty], [0.0, 0.0, 1.0]]
    return torch.tensor(rows, device=device, dtype=dtype if dtype is not None else torch.get_default_dtype())


def pixel_matrix_dst_from_src(
    src_from_dst: torch.Tensor, in_size: Sequence[int], out_size: Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """Turn torchstn's normalised ``src_from_dst`` ``(B, 3, 3)`` into kornia's pixel ``dst_from_src``.

    ``M = P_out @ inv(A) @ inv(P_in)`` with ``P`` from :func:`pixel_from_normalized`
    and ``A = src_from_dst``; computed in float64 and returned in ``A``'s dtype.
    """
    a = src_from_dst.to(torch.float64)
    p_in = pixel_from_normalized(in_size, align_corners, device=a.device, dtype=torch.float64)
    p_out = pixel_from_normalized(out_size, align_corners, device=a.device, dtype=torch.float64)
    m = p_out @ torch.linalg.inv(a) @ torch.linalg.inv(p_in)
    return m.to(src_from_dst.dtype)


def torch_affine_warp(
    x: torch.Tensor, theta: torch.Tensor, size: Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """``F.grid_sample(x, F.affine_grid(theta, ...))``: the plain-PyTorch warp.

    Args:
        x: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        theta: ``(B, 2, 3)`` or ``(B, 3, 4)`` ``src_from_dst`` rows, as ``affine_grid`` takes.
        size: output spatial size.
        align_corners: given to both functions.
    """
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *size], align_corners=align_corners)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


def kornia_warp_affine(
    x: torch.Tensor, matrix: torch.Tensor, size: Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """kornia's ``warp_affine`` with a pixel ``dst_from_src`` matrix ``(B, 2, 3)``."""
    from kornia.geometry.transform import warp_affine

    return warp_affine(x, matrix, dsize=tuple(size), align_corners=align_corners)


def kornia_warp_perspective(
    x: torch.Tensor, matrix: torch.Tensor, size: Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """kornia's ``warp_perspective`` with a pixel ``dst_from_src`` homography ``(B, 3, 3)``."""
    from kornia.geometry.transform import warp_perspective

    return warp_perspective(x, matrix, dsize=tuple(size), align_corners=align_corners)


def kornia_tps(x: torch.Tensor, controls: torch.Tensor, targets: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """kornia's TPS warp: solve the spline from the point pairs, then warp.

    Args:
        x: ``(B, C, H, W)``; the output has the same size (kornia's TPS warp keeps it).
        controls: ``(B, K, 2)`` output-frame control points (normalised).
        targets: ``(B, K, 2)`` input-frame positions they map to (torchstn's TPS θ
            reshaped); kornia uses them as the kernel centres.
        align_corners: the normalised frame of both point sets and the sampler.
    """
    from kornia.geometry.transform import get_tps_transform, warp_image_tps

    kernel_weights, affine_weights = get_tps_transform(controls, targets)
    return warp_image_tps(x, targets, kernel_weights, affine_weights, align_corners=align_corners)


def kornia_tps_points(
    points: torch.Tensor, controls: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Where kornia's TPS of :func:`kornia_tps` sends output-frame ``points`` ``(B, N, 2)``."""
    from kornia.geometry.transform import get_tps_transform, warp_points_tps

    kernel_weights, affine_weights = get_tps_transform(controls, targets)
    return warp_points_tps(points, targets, kernel_weights, affine_weights)


def affine_rows(transform: MatrixTransform, params: torch.Tensor) -> torch.Tensor:
    """The ``(B, n, n + 1)`` rows ``F.affine_grid`` takes, from the family's matrix."""
    n = transform.ndim
    return transform.matrix(params)[:, :n, :]


def tps_controls(transform: ThinPlateSpline, batch: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The ``(B, K, 2)`` output-frame control points of ``transform``, for kornia."""
    return transform.control_points.to(device=device, dtype=dtype).expand(batch, -1, -1).contiguous()
