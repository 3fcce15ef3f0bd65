"""OpenCV as a benchmark peer: ``cv2.warpAffine`` / ``cv2.warpPerspective`` on float32 images, per sample.

What an OpenCV user would write for torchstn's work: one call per image, ``(H, W, C)``
float32 arrays (converted once, outside the timed call), the pixel matrix that maps
*output* pixels to *input* pixels with ``WARP_INVERSE_MAP``, bilinear, ``BORDER_CONSTANT``
with 0 (torch's zeros padding). OpenCV has no gradient and no 3-D warp.

OpenCV before 5.0 rounds every source point to 1/32 of a pixel (``INTER_BITS``), which
moves float32 outputs by about 1e-2 from the exact bilinear value; the benchmark's
check then reports the mismatch and does not time it (install ``opencv-python-headless>=5``).
OpenCV 5.0 samples exactly with 1, 3 and 4 channels, but still rounds with 2 (measured:
1.3e-2 from ``F.grid_sample``), which the check reports the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchstn.bench import _peers

__all__ = ["opencv_version", "opencv_warp"]


def opencv_version() -> str | None:
    """OpenCV's version, or ``None`` when ``cv2`` cannot be imported."""
    return _peers.module_version("cv2")


def opencv_warp(
    x: torch.Tensor,
    src_from_dst: torch.Tensor,
    size: Sequence[int],
    align_corners: bool = False,
    *,
    threads: int | None = None,
) -> tuple[Callable[[], list[Any]], Callable[[list[Any]], torch.Tensor]]:
    """``(run, to_torch)``: ``run()`` warps every image of ``x`` with OpenCV, ``to_torch`` stacks the result.

    Args:
        x: ``(B, C, H, W)`` float32 CPU images, ``C <= 4`` (converted to ``(H, W, C)`` arrays here, once).
        src_from_dst: normalised matrices: ``(B, 2, 3)`` affine rows
            (``warpAffine``) or ``(B, 3, 3)`` homographies (``warpPerspective``).
        size: output ``(H, W)``.
        align_corners: the normalised frame of ``src_from_dst``, as in ``F.grid_sample``
            (OpenCV itself samples in pixels, where both conventions are the same).
        threads: ``cv2.setNumThreads`` (process-wide), when given.

    Returns:
        ``run`` (what is timed: a list of ``(H, W[, C])`` float32 arrays) and ``to_torch``
        (that list as a ``(B, C, H, W)`` tensor).
    """
    import cv2

    if threads is not None:
        cv2.setNumThreads(threads)
    b, c = x.shape[:2]
    h, w = size
    images = [t.permute(1, 2, 0).contiguous().numpy() for t in x.detach().to(torch.float32)]
    affine = src_from_dst.shape[1] == 2
    if affine:
        last = torch.tensor([0.0, 0.0, 1.0], dtype=src_from_dst.dtype, device=src_from_dst.device)
        src_from_dst = torch.cat([src_from_dst, last.expand(b, 1, 3)], 1)
    matrix = _peers.pixel_matrix_src_from_dst(src_from_dst, x.shape[2:], size, align_corners)
    matrices = list(matrix[:, :2].numpy() if affine else matrix.numpy())
    call = cv2.warpAffine if affine else cv2.warpPerspective
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP

    def run() -> list[Any]:
        return [
            call(image, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            for image, m in zip(images, matrices)
        ]

    def to_torch(outputs: list[Any]) -> torch.Tensor:
        return torch.stack([torch.from_numpy(o).reshape(h, w, c).permute(2, 0, 1) for o in outputs])

    return run, to_torch
