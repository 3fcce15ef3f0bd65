"""The ``"torch"`` backend: ``F.grid_sample`` with torchstn's policy for non-finite points."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from torchstn._tracing import functorch_active

__all__ = ["torch_sample"]


def torch_sample(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str, align_corners: bool) -> torch.Tensor:
    """``F.grid_sample``, where a grid point that is not finite (NaN, ±Inf) gives NaN.

    For 2-D bilinear and bicubic sampling with zeros padding ``F.grid_sample`` on the CPU
    already returns NaN there, and an eager call goes straight to it; but the gradient of a
    point with one non-finite coordinate is NaN in the other coordinate only, so where the
    grid's gradient is wanted such a grid takes the careful path below. Off the CPU (CUDA's
    kernel reads such a point as one far outside: 0), under a compiler (inductor's
    grid_sampler_2d reads it so too) and in a traced or exported graph (whose runtime may read
    it so: onnxruntime's GridSample gave finite values), a term that is NaN exactly there, with
    a NaN gradient in both coordinates, is added to the output instead (both coordinates'
    gradients NaN, as on every backend, and no wait for the device).
    Elsewhere it does not (torch 2.13, CPU): nearest reads 0 or an
    arbitrary pixel, border and reflection an arbitrary pixel for ±Inf and crash the
    process for NaN, and 3-D sampling reads 0 with a zero gradient. There a grid with a
    non-finite point is sampled at a finite stand-in and the non-finite points are then set
    to NaN in every channel, with a NaN gradient for those grid points and none from them
    for ``x``. A finite point so far out that its pixel coordinate overflows (a float32
    grid near 3e38) gives NaN there too, and crashes the process in the backward of 2-D
    bilinear reflection; the stand-in holds it at :func:`_far` (beyond which no
    coordinate has a fraction of a pixel left), where it reads what far points read (not
    in a 2-D bilinear or bicubic sampling with zeros padding and no gradient, which goes
    straight to ``F.grid_sample``: a NaN there, never a crash). Which
    grids need the careful path is told by the grid's sum of squares (one fast reduction,
    ``torch.dot``: as fast as the sum that told non-finite points alone, which one huge
    point does not overflow; ``isfinite(grid).all()`` cost a quarter of a 3-D
    ``grid_sample``): it is not finite if a point is not or lies past about 1.8e19
    (float32), and then the careful path gives the same values. Under a tracer or a
    ``torch.func`` transform, which cannot branch on data, and off the CPU, where reading the
    sum would wait for the device, every such call takes the careful path.
    """
    if functorch_active():
        # torch.func.vmap's rule for grid_sample (torch 2.13) mislabels the result when x and the
        # grid carry their vmapped dimension at different places ((B, V, ...) for (V, B, ...));
        # copies hold it first in both (contiguous() keeps a view whose slices are contiguous)
        x, grid = x.clone(memory_format=torch.contiguous_format), grid.clone(memory_format=torch.contiguous_format)
    direct = grid.dim() == 4 and padding == "zeros" and mode != "nearest"
    grid_gradient = grid.requires_grad and torch.is_grad_enabled()
    if direct and _on_cpu(grid) and not grid_gradient and not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
        # (the CPU's returns NaN there; inductor's returns 0, and a traced or exported graph runs elsewhere)
        return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align_corners)
    if direct and not _cpu_eager(grid):
        # Off the CPU F.grid_sample reads a non-finite point as one far outside (0, with a zero
        # gradient: CUDA's kernel; inductor's forward too), and under torch.compile its gradient
        # of (nan, 0.2) is [0, nan]: a term that is NaN, with a NaN gradient in both coordinates,
        # exactly at the non-finite points (and 0 elsewhere) is added, without waiting for the
        # device. So in the graphs torch.jit.trace and torch.export record: their runtimes read it as
        # CUDA does (onnxruntime's GridSample: a finite value)
        out = F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align_corners)
        return nan_where_not_finite(out, grid)
    # on the CPU F.grid_sample returns NaN there, but its gradient of (nan, 0.2) is [0, nan]:
    # where the grid's gradient is wanted _moderate decides (a non-finite grid takes the careful
    # path below), 1.03-1.04x the forward+backward
    # (off the CPU the careful path, always: _moderate's answer would wait for the device)
    if _cpu_eager(grid) and _moderate(grid):
        return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align_corners)
    finite = torch.isfinite(grid).all(-1, keepdim=True)  # (B, *out, 1)
    far = _far(grid.dtype)
    stand_in = torch.where(finite, grid.clamp(-far, far), 0.0)
    out = F.grid_sample(x, stand_in, mode=mode, padding_mode=padding, align_corners=align_corners)
    # NaN at the non-finite points, differentiable there (the grid gets NaN) and only there
    poison = torch.where(finite, 0.0, grid).sum(-1) * float("nan")  # (B, *out)
    return torch.where(finite.squeeze(-1).unsqueeze(1), out, poison.unsqueeze(1))


def _on_cpu(grid: torch.Tensor) -> bool:
    return grid.is_cpu


def _cpu_eager(grid: torch.Tensor) -> bool:
    """A CPU grid whose values may decide the path (:func:`_eager`)."""
    return _on_cpu(grid) and _eager(grid)


def nan_where_not_finite(out: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``out`` ``(B, C, *out)`` sampled at ``grid`` plus a term that is 0 at a finite point and NaN
    at one with a coordinate that is not, whose gradient with respect to both coordinates of that
    point is NaN, 0 elsewhere (a finite point however far out adds 0: its coordinates times 0 do).
    What a sampler adds where its own kernel does not follow torchstn's policy for non-finite
    points (CUDA's grid_sample, compiled code), and in the graphs ``torch.jit.trace`` and
    ``torch.export`` record, whose runtimes may not either (onnxruntime's GridSample read a NaN
    θ's points as 0.066, where eager gave NaN, from both ONNX exporters; a TorchScript file can
    run on CUDA). Its price there, measured on an exported ``st-cnn-aff`` at batch 64 in
    onnxruntime (one thread, 2026-12-04): 18.4-19.2 ms against 16.5-16.8 ms without it, its
    nodes 2.1 ms against GridSample's 0.6 ms; a cheaper form (the grid times 0, summed) is
    what inductor folded to 0, which an exported program compiled by AOTInductor could meet."""
    # 0, or NaN where a coordinate is not finite: chosen by torch.where, which inductor keeps (it
    # folded the grid times 0 this was, and with it the NaN gradient, to 0)
    bad = torch.where(torch.isfinite(grid.detach()).all(-1, keepdim=True), 0.0, float("nan")).to(grid.dtype)
    return out + (grid * bad).sum(-1).unsqueeze(1)


def _moderate(grid: torch.Tensor) -> bool:
    """Whether the grid's sum of squares is finite: every point finite, none past about
    1.8e19 (float32; 1.3e154 float64), so none that :func:`_far` would hold."""
    flat = grid.reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):  # (torch.dot of bfloat16: 200x the float32 one)
        flat = flat.float()
    # (the Python float's test: bool(torch.isfinite(...)) took 6 µs of a small call, .item() 1.3 µs)
    return math.isfinite(torch.dot(flat, flat).item())


def _far(dtype: torch.dtype) -> float:
    """How far out the stand-in holds a grid point: ``F.grid_sample``'s pixel coordinate
    ``(g + 1) * size / 2`` cannot overflow below it for any size up to 2^31 (it computes
    float16 and bfloat16 grids in float32)."""
    return torch.finfo(torch.promote_types(dtype, torch.float32)).max / 2**32


def _eager(grid: torch.Tensor) -> bool:
    """Whether the grid's values may decide the path: not under a tracer, nor inside a
    ``torch.func`` transform (``vmap`` cannot branch on a batched value), nor under a dispatch
    mode (``make_fx`` traces there), and values there are (a meta tensor has none)."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or functorch_active() or torch._C._len_torch_dispatch_stack() > 0 or grid.is_meta)
