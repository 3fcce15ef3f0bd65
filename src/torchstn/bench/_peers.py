"""What a user would write instead of torchstn: ``F.affine_grid + F.grid_sample``, kornia, OpenCV, JAX.

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
* OpenCV's ``warpAffine``/``warpPerspective`` with ``WARP_INVERSE_MAP`` take the pixel
  matrix mapping *output* pixels to *input* pixels, ``P_in · θ · P_out⁻¹``
  (:func:`pixel_matrix_src_from_dst`; ``torchstn.bench._opencv``).
* The JAX peer takes torch's normalised θ as it is (``torchstn.bench._jax``).

OpenCV and JAX are checked against :func:`torch_matrix_warp` (``F.affine_grid +
F.grid_sample``) with :func:`relative_error` before they are timed.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from torchstn.transforms import ThinPlateSpline

__all__ = [
    "kornia_available",
    "kornia_tps",
    "kornia_tps_points",
    "kornia_version",
    "kornia_warp_affine",
    "kornia_warp_perspective",
    "module_version",
    "pixel_from_normalized",
    "pixel_matrix_dst_from_src",
    "pixel_matrix_src_from_dst",
    "relative_error",
    "torch_affine_warp",
    "torch_matrix_warp",
    "tps_controls",
]


def kornia_available() -> bool:
    """Whether kornia can be imported (the optional ``bench`` extra)."""
    try:
        import kornia  # noqa: F401
    except ImportError:
        return False
    return True


def module_version(name: str) -> str | None:
    """The ``__version__`` of the module ``name`` (importing it), or ``None`` when it cannot be imported."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return str(module.__version__)


def kornia_version() -> str | None:
    """kornia's version, or ``None`` when it is not installed."""
    return module_version("kornia")


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


def pixel_matrix_src_from_dst(
    src_from_dst: torch.Tensor, in_size: Sequence[int], out_size: Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """torchstn's normalised ``src_from_dst`` ``(B, 3, 3)`` as a float64 **pixel** ``src_from_dst``.

    ``M = P_in @ A @ inv(P_out)`` with ``P`` from :func:`pixel_from_normalized` and
    ``A = src_from_dst``: OpenCV's matrix with ``WARP_INVERSE_MAP``.

    Example:
        >>> shift = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
        >>> pixel_matrix_src_from_dst(shift, (4, 8), (4, 8))[0, 0].tolist()  # half the width: 2 pixels
        [1.0, 0.0, 2.0]
    """
    a = src_from_dst.to(torch.float64)
    p_in = pixel_from_normalized(in_size, align_corners, device=a.device, dtype=torch.float64)
    p_out = pixel_from_normalized(out_size, align_corners, device=a.device, dtype=torch.float64)
    return p_in @ a @ torch.linalg.inv(p_out)


def pixel_matrix_dst_from_src(
    src_from_dst: torch.Tensor, in_size: Sequence[int], out_size: Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """Turn torchstn's normalised ``src_from_dst`` ``(B, 3, 3)`` into kornia's pixel ``dst_from_src``.

    The inverse of :func:`pixel_matrix_src_from_dst` (``P_out @ inv(A) @ inv(P_in)``),
    computed in float64 and returned in ``A``'s dtype.
    """
    m = torch.linalg.inv(pixel_matrix_src_from_dst(src_from_dst, in_size, out_size, align_corners))
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


def torch_matrix_warp(
    x: torch.Tensor, matrix: torch.Tensor, size: Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """The plain-PyTorch warp by a matrix in either form, the reference of the peers outside torch.

    Args:
        x: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        matrix: ``(B, n, n + 1)`` affine rows (:func:`torch_affine_warp`) or an ``(B, n + 1, n + 1)``
            homography: ``F.affine_grid``'s identity points mapped through it and divided by
            their last coordinate, then ``F.grid_sample``.
        size: output spatial size.
        align_corners: given to both functions.

    Example:
        >>> x = torch.rand(2, 3, 5, 6)
        >>> h = torch.eye(3).expand(2, 3, 3)
        >>> torch.allclose(torch_matrix_warp(x, h, (5, 6)), torch_matrix_warp(x, h[:, :2], (5, 6)))
        True
    """
    b, n = x.shape[0], x.dim() - 2
    if matrix.shape[1] == n:
        return torch_affine_warp(x, matrix, size, align_corners)
    eye = torch.eye(n, n + 1, device=x.device, dtype=x.dtype).expand(b, n, n + 1)
    base = F.affine_grid(eye, [b, x.shape[1], *size], align_corners=align_corners).reshape(b, -1, n)
    points = torch.cat([base, torch.ones_like(base[..., :1])], -1) @ matrix.transpose(1, 2)
    grid = (points[..., :n] / points[..., n:]).reshape(b, *size, n)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected| / max(1, max |expected|)``; ``inf`` for a NaN or a shape mismatch.

    Example:
        >>> relative_error(torch.tensor([1.0, 200.0]), torch.tensor([1.0, 201.0]))
        0.004975124378109453
    """
    if actual.shape != expected.shape:
        return math.inf
    if not expected.numel():
        return 0.0
    actual, expected = actual.detach().to(expected.dtype), expected.detach()
    scale = max(1.0, expected.abs().max().item())
    return torch.nan_to_num((actual - expected).abs(), nan=math.inf).max().item() / scale


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


def tps_controls(transform: ThinPlateSpline, batch: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The ``(B, K, 2)`` output-frame control points of ``transform``, for kornia."""
    return transform.control_points.to(device=device, dtype=dtype).expand(batch, -1, -1).contiguous()
