r"""The fused CPU backend: a C++/OpenMP bilinear sampler that reads θ instead of a grid.

For a 2-D matrix transform (translation, attention, similarity, affine, projective)
:func:`torchstn.warp` with this backend computes every output pixel's source point from
the ``(B, 3, 3)`` matrix inside the kernel, so the grid is never written to memory, and
its backward accumulates :math:`\partial L/\partial x` and :math:`\partial L/\partial θ`
in one pass over the output (no grid gradient either). :func:`torchstn.sample` with this
backend runs the same kernel on a given grid.

The source is ``csrc/fused_warp2d.cpp``: plain C++ with a C interface and no torch
headers, built on first use by :func:`torch.utils.cpp_extension.load` into torch's
extension cache (about a second with g++; later processes load the cached library) and
called through :mod:`ctypes`. Its arithmetic follows ATen's ``grid_sample`` so that it
agrees with every other backend. If the build fails (no compiler, no ``ninja``), one
warning says why and every call falls back to the ``"torch"`` backend.

Scope: CPU, float32/float64, bilinear, every padding and both ``align_corners``; other
modes, devices and dtypes, 3-D, and calls under ``torch.jit.trace``, ONNX export,
``torch.compile`` or ``torch.export`` use the grid path with ``F.grid_sample``.
Threads: ``torch.get_num_threads()``; the forward splits output rows, the backward splits
the batch (each sample's input gradient and θ gradient belong to one thread).
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from torchstn.transforms._base import base_grid, cached

__all__ = ["applies", "fused_available", "fused_sample", "fused_warp"]

_SOURCE = Path(__file__).with_name("csrc") / "fused_warp2d.cpp"
_ABI = 2
_PADDING = {"zeros": 0, "border": 1, "reflection": 2}
_GRID, _AFFINE, _PROJECTIVE = 0, 1, 2

_lock = threading.Lock()
_state: dict[str, object] = {}

_i64, _int, _dbl, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_void_p
_FORWARD_ARGS = [_int, _ptr, _ptr, _ptr, _ptr, _dbl, _ptr] + [_i64] * 6 + [_int, _int, _int]
_BACKWARD_ARGS = [_int, _ptr, _ptr, _ptr, _ptr, _dbl, _ptr, _ptr, _ptr] + [_i64] * 6 + [_int, _int, _int]


def _build() -> ctypes.CDLL:
    from torch.utils import cpp_extension  # imports setuptools; only when the backend is first used

    # AVX2 where torch itself uses it (its loops vectorise 8 floats at a time), else the
    # baseline ISA; the name keeps the two builds apart in a shared extension cache
    isa = "avx2" if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else "base"
    flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math"] + (["-mavx2", "-mfma"] if isa == "avx2" else [])
    path = cpp_extension.load(
        name=f"torchstn_fused_warp2d_v{_ABI}_{isa}",
        sources=[str(_SOURCE)],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        verbose=False,
    )
    lib = ctypes.CDLL(path)
    if lib.torchstn_warp2d_abi_version() != _ABI:
        raise RuntimeError(f"{path} is a stale build (ABI {lib.torchstn_warp2d_abi_version()}, expected {_ABI})")
    for dtype in ("f32", "f64"):
        forward, backward = getattr(lib, f"torchstn_warp2d_{dtype}_forward"), getattr(lib, f"torchstn_warp2d_{dtype}_backward")
        forward.argtypes, forward.restype = _FORWARD_ARGS, _int
        backward.argtypes, backward.restype = _BACKWARD_ARGS, _int
    return lib


#: (backward, dtype) -> the kernel's entry point, filled by _library()
_ENTRY: dict[tuple[bool, torch.dtype], ctypes._CFuncPtr] = {}


def _library() -> ctypes.CDLL | None:
    """The compiled kernel, built on the first call; ``None`` (after one warning) if it cannot be built."""
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state:
            try:
                lib = _build()
                for dtype, suffix in ((torch.float32, "f32"), (torch.float64, "f64")):
                    _ENTRY[False, dtype] = getattr(lib, f"torchstn_warp2d_{suffix}_forward")
                    _ENTRY[True, dtype] = getattr(lib, f"torchstn_warp2d_{suffix}_backward")
                _state["lib"] = lib
            except Exception as error:  # noqa: BLE001 - any build failure means: fall back
                _state["lib"] = None
                _state["error"] = error
                warnings.warn(
                    "torchstn: the fused CPU sampler could not be built, so backend='fused' (and 'auto' where "
                    "it would pick it) falls back to F.grid_sample. It needs a C++ compiler with OpenMP (g++) "
                    f"and ninja (pip install ninja). The error: {type(error).__name__}: {error}",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _state["lib"]  # type: ignore[return-value]


def fused_available() -> bool:
    """True if the fused kernel is built (building it now if needed); False after a failed build."""
    return _library() is not None


def applies(x: torch.Tensor, mode: str) -> bool:
    """Whether the kernel covers this input: bilinear, a float32/float64 CPU image (B, C, H, W)
    with non-empty H and W (F.grid_sample reports empty ones) and int32 pixel offsets."""
    return (
        mode == "bilinear"
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.dim() == 4
        and 0 < x.shape[2] * x.shape[3] < 2**31 - x.shape[3]
    )


def _ptr_of(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None and t.numel() else None


def _coordinates(size: tuple[int, int], align_corners: bool, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output pixels' normalised x (Wo,) and y (Ho,), taken from torchstn's base grid."""
    h, w = size

    def build() -> torch.Tensor:
        base = base_grid(size, align_corners, device=like.device, dtype=like.dtype)
        return torch.cat([base[:w, 0], base[::w, 1]]).contiguous()

    xy = cached(("fused-xy", size, bool(align_corners), like.device, like.dtype), build)
    return xy[:w], xy[w:]


def _call(
    backward: bool, location: int, x: torch.Tensor, loc: torch.Tensor, xs: torch.Tensor | None,
    ys: torch.Tensor | None, eps: float, buffer: torch.Tensor, grad_x: torch.Tensor | None,
    grad_loc: torch.Tensor | None, size: tuple[int, int], padding: str, align_corners: bool,
) -> None:
    b, c, h, w = x.shape
    args = [location, _ptr_of(x), _ptr_of(loc), _ptr_of(xs), _ptr_of(ys), eps, _ptr_of(buffer)]
    if backward:
        args += [_ptr_of(grad_x), _ptr_of(grad_loc)]
    fn = _ENTRY[backward, x.dtype]  # callers check fused_available() first
    status = fn(*args, b, c, h, w, size[0], size[1], _PADDING[padding], int(align_corners), torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"fused warp kernel failed with status {status}")


class _FusedWarp(torch.autograd.Function):
    """``x`` (B, C, H, W) sampled where ``loc`` says: a grid (B, Ho, Wo, 2), affine rows (B, 2, 3) or a homography (B, 3, 3)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: torch.Tensor, loc: torch.Tensor, location: int, size: tuple[int, int], padding: str,
        align_corners: bool, eps: float,
    ) -> torch.Tensor:
        x, loc = x.contiguous(), loc.contiguous()
        xs, ys = (None, None) if location == _GRID else _coordinates(size, align_corners, x)
        out = x.new_empty(x.shape[0], x.shape[1], *size)
        _call(False, location, x, loc, xs, ys, eps, out, None, None, size, padding, align_corners)
        ctx.save_for_backward(x, loc)
        ctx.options = (location, size, padding, align_corners, eps)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        x, loc = ctx.saved_tensors
        location, size, padding, align_corners, eps = ctx.options
        xs, ys = (None, None) if location == _GRID else _coordinates(size, align_corners, x)
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None  # zeroed by the kernel
        grad_loc = torch.empty_like(loc) if ctx.needs_input_grad[1] else None
        if grad_x is not None or grad_loc is not None:
            _call(True, location, x, loc, xs, ys, eps, grad_out.contiguous(), grad_x, grad_loc, size, padding,
                  align_corners)
        return grad_x, grad_loc, None, None, None, None, None


def fused_sample(x: torch.Tensor, grid: torch.Tensor, padding: str, align_corners: bool) -> torch.Tensor:
    """Bilinear sampling of ``x`` (B, C, H, W) at ``grid`` (B, Ho, Wo, 2) with the fused kernel (no validation)."""
    return _FusedWarp.apply(x, grid, _GRID, tuple(grid.shape[1:3]), padding, align_corners, 0.0)


def fused_warp(
    x: torch.Tensor, matrix: torch.Tensor, size: tuple[int, int], padding: str, align_corners: bool,
    projective: bool = False, eps: float = 0.0,
) -> torch.Tensor:
    """Bilinear warp of ``x`` (B, C, H, W) by a ``src_from_dst`` matrix, no grid in memory.

    ``matrix``: the rows ``(B, 2, 3)`` of an affine map, or with ``projective`` the
    homography ``(B, 3, 3)`` whose ``w`` is guarded by ``eps`` as :class:`~torchstn.Projective` does.
    """
    return _FusedWarp.apply(x, matrix, _PROJECTIVE if projective else _AFFINE, size, padding, align_corners, eps)
